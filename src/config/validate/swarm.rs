//! `[site.release] engine` and `[site.release.swarm]`, and the per-service `replicas` and
//! `constraints` that only a swarm reads (issue 20).

use std::collections::BTreeMap;

use super::super::raw::{RawRelease, RawSwarm, S};
use super::Ctx;
use crate::config::{EndpointMode, EngineKind, ServiceConfig, SwarmConfig};

/// The engine of a site's environments, every problem with it reported.
pub(super) fn engine(
    cx: &mut Ctx,
    rr: &S<RawRelease>,
    site: &str,
    services: &[ServiceConfig],
    web: &str,
    db: Option<&str>,
) -> EngineKind {
    let r = rr.get_ref();
    let swarm = match r.engine.as_ref().map(|e| e.get_ref().as_str()) {
        None | Some("local") => false,
        Some("swarm") => true,
        Some(other) => {
            if let Some(e) = &r.engine {
                cx.err(e, format!("engine `{other}` is not one of local, swarm (local: containers on this host's engine; swarm: services on a Docker Swarm, with [site.release.swarm])"));
            }
            return EngineKind::Local;
        }
    };
    if !swarm {
        local_only(cx, rr, site);
        return EngineKind::Local;
    }
    let Some(rs) = &r.swarm else {
        let at = r.engine.as_ref().map(|e| e.span()).unwrap_or(rr.span());
        let line = cx.line(at.start);
        cx.problems.push(super::Problem {
            file: cx.file.clone(),
            line,
            message: format!("site `{site}`: engine = \"swarm\" needs [site.release.swarm] with `nodes` (each node's engine address) and `manager`"),
        });
        return EngineKind::Local;
    };
    services_on_swarm(cx, rr, site, services, db);
    let Some(cfg) = swarm_section(cx, rs, site) else {
        return EngineKind::Local;
    };
    if let (Some(min), Some(m)) = (cfg.min_healthy_web, &rs.get_ref().min_healthy_web) {
        let replicas = services
            .iter()
            .find(|s| s.name == web)
            .map(|s| s.replicas)
            .unwrap_or(1);
        if min > replicas {
            cx.err(m, format!("min_healthy_web = {min} is more than the {replicas} replica(s) of web service `{web}`; lower it or raise the web's `replicas`"));
        }
    }
    EngineKind::Swarm(cfg)
}

/// On the local engine, swarm-only keys are mistakes worth naming.
fn local_only(cx: &mut Ctx, rr: &S<RawRelease>, site: &str) {
    let r = rr.get_ref();
    if let Some(s) = &r.swarm {
        cx.err(s, format!("site `{site}`: [site.release.swarm] is read only with engine = \"swarm\"; add that, or remove the section"));
    }
    for s in &r.services {
        let s = s.get_ref();
        let name = s.name.get_ref();
        if let Some(n) = &s.replicas {
            cx.err(n, format!("service `{name}`: `replicas` needs engine = \"swarm\" (the local engine runs one container per service)"));
        }
        if let Some(c) = &s.constraints {
            cx.err(c, format!("service `{name}`: `constraints` needs engine = \"swarm\" (placement on cluster nodes)"));
        }
    }
}

/// What a swarm needs of the services: data stays with one pinned task.
fn services_on_swarm(
    cx: &mut Ctx,
    rr: &S<RawRelease>,
    site: &str,
    services: &[ServiceConfig],
    db: Option<&str>,
) {
    for (raw, s) in rr.get_ref().services.iter().zip(services) {
        let at = raw.get_ref().replicas.as_ref();
        if s.replicas > 1 && !s.data_volumes.is_empty() {
            match at {
                Some(n) => cx.err(n, format!("service `{}` has data volumes ({}) and {} replicas: each task would keep its own copy on its node; use replicas = 1 and pin it with `constraints`", s.name, s.data_volumes.join(", "), s.replicas)),
                None => cx.err(raw, format!("site `{site}`: service `{}` has data volumes and more than one replica", s.name)),
            }
        }
        if Some(s.name.as_str()) == db && s.replicas > 1 {
            if let Some(n) = at {
                cx.err(n, format!("database service `{}` must have replicas = 1 (backups and restores run in its one task)", s.name));
            }
        }
        let keeps_data =
            !s.volumes.is_empty() && (Some(s.name.as_str()) == db || !s.data_volumes.is_empty());
        if keeps_data && s.constraints.is_empty() {
            cx.err(raw, format!("site `{site}`: service `{}` keeps its data in node-local volumes; pin it to the node that holds them with `constraints = [\"node.labels.NAME==VALUE\"]` (else a rescheduled task starts on an empty volume)", s.name));
        }
        if let Some(c) = &raw.get_ref().constraints {
            for k in c.get_ref() {
                if !(k.contains("==") || k.contains("!=")) {
                    cx.err(c, format!("constraint `{k}` of service `{}` must be ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE (e.g. node.labels.db==1, node.role==manager)", s.name));
                }
            }
        }
    }
}

/// `[site.release.swarm]` checked; None when it cannot be used.
fn swarm_section(cx: &mut Ctx, rs: &S<RawSwarm>, site: &str) -> Option<SwarmConfig> {
    let s = rs.get_ref();
    let mut nodes = BTreeMap::new();
    for (name, addr) in &s.nodes {
        let a = addr.get_ref();
        let ok = ["unix:///", "tcp://", "http://"]
            .iter()
            .any(|p| a.starts_with(p) && a.len() > p.len());
        if !ok {
            cx.err(addr, format!("node `{name}`: engine address `{a}` must be unix:///path/to/docker.sock or tcp://HOST:PORT"));
        }
        nodes.insert(name.clone(), a.clone());
    }
    if nodes.is_empty() {
        cx.err(rs, format!("site `{site}`: [site.release.swarm] needs `nodes = {{ NAME = \"unix:///…sock\" | \"tcp://HOST:PORT\", … }}`, one engine per node that may run a task"));
        return None;
    }
    let manager = match &s.manager {
        Some(m) if nodes.contains_key(m.get_ref()) => m.get_ref().clone(),
        Some(m) => {
            cx.err(
                m,
                format!(
                    "manager `{}` is not one of the nodes ({})",
                    m.get_ref(),
                    nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            return None;
        }
        None if nodes.len() == 1 => nodes.keys().next().cloned().unwrap_or_default(),
        None => {
            cx.err(rs, format!("site `{site}`: [site.release.swarm] needs `manager`, the node whose engine is a swarm manager (one of {})", nodes.keys().cloned().collect::<Vec<_>>().join(", ")));
            return None;
        }
    };
    let endpoint_mode = match s.endpoint_mode.as_ref().map(|e| (e, e.get_ref().as_str())) {
        None | Some((_, "vip")) => EndpointMode::Vip,
        Some((_, "dnsrr")) => EndpointMode::Dnsrr,
        Some((e, other)) => {
            cx.err(e, format!("endpoint_mode `{other}` is not one of vip, dnsrr (dnsrr where the kernel has no IPVS)"));
            EndpointMode::Vip
        }
    };
    let min_healthy_web = s
        .min_healthy_web
        .as_ref()
        .map(|_| cx.count(&s.min_healthy_web, "min_healthy_web", 1, 100, 1) as u32);
    Some(SwarmConfig {
        manager,
        nodes,
        endpoint_mode,
        min_healthy_web,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{EndpointMode, EngineKind};

    const HEAD: &str = "[proxy]\nhttp = \"127.0.0.1:0\"\ncontrol = \"c.sock\"\nstate = \"s.json\"\n[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.release]\n";

    fn load(body: &str) -> Result<crate::config::Config, Vec<String>> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sy-swarm-cfg-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| vec![e.to_string()])?;
        let path = dir.join("t.toml");
        std::fs::write(&path, format!("{HEAD}{body}")).map_err(|e| vec![e.to_string()])?;
        let out = crate::config::load(&path).map_err(|e| e.problems());
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    const SERVICES: &str = "[[site.release.services]]\nname = \"db\"\nimage = \"d:{version}\"\nvolumes = [\"data:/data\"]\nbackup = [\"dump\"]\nrestore = [\"restore\"]\nconstraints = [\"node.labels.db==1\"]\n[[site.release.services]]\nname = \"web\"\nimage = \"w:{version}\"\nreplicas = 2\n";

    #[test]
    fn a_swarm_site_reads_its_nodes_and_services() {
        let cfg = load(&format!("engine = \"swarm\"\n[site.release.swarm]\nmanager = \"n1\"\nnodes = {{ n1 = \"unix:///tmp/n1.sock\", n2 = \"tcp://10.0.0.2:2375\" }}\nendpoint_mode = \"dnsrr\"\nmin_healthy_web = 1\n{SERVICES}"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let rel = cfg.sites[0].release.as_ref().expect("release");
        let EngineKind::Swarm(s) = &rel.engine else {
            panic!("not swarm: {:?}", rel.engine)
        };
        assert_eq!(s.manager_addr(), "unix:///tmp/n1.sock");
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.endpoint_mode, EndpointMode::Dnsrr);
        assert_eq!(s.min_healthy_web, Some(1));
        assert_eq!(rel.services[1].replicas, 2);
        assert_eq!(rel.services[0].constraints, vec!["node.labels.db==1"]);
    }

    #[test]
    fn the_local_engine_is_the_default_and_refuses_swarm_keys() {
        let cfg = load("[[site.release.services]]\nname = \"web\"\nimage = \"w\"\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        let rel = cfg.sites[0].release.as_ref().expect("release");
        assert!(matches!(rel.engine, EngineKind::Local));
        assert_eq!(rel.services[0].replicas, 1);
        let bad = load(SERVICES).err().unwrap_or_default().join("\n");
        assert!(bad.contains("`replicas` needs engine = \"swarm\""), "{bad}");
        assert!(
            bad.contains("`constraints` needs engine = \"swarm\""),
            "{bad}"
        );
    }

    #[test]
    fn swarm_mistakes_are_named() {
        let bad =
            load("engine = \"swarn\"\n[[site.release.services]]\nname = \"web\"\nimage = \"w\"\n")
                .err()
                .unwrap_or_default()
                .join("\n");
        assert!(
            bad.contains("engine `swarn` is not one of local, swarm"),
            "{bad}"
        );
        let bad = load(&format!("engine = \"swarm\"\n{SERVICES}"))
            .err()
            .unwrap_or_default()
            .join("\n");
        assert!(bad.contains("needs [site.release.swarm]"), "{bad}");
        let bad = load(&format!("engine = \"swarm\"\n[site.release.swarm]\nmanager = \"n3\"\nnodes = {{ n1 = \"/tmp/n1.sock\", n2 = \"unix:///n2\" }}\nendpoint_mode = \"ipvs\"\n{SERVICES}")).err().unwrap_or_default().join("\n");
        assert!(
            bad.contains("engine address `/tmp/n1.sock` must be unix://"),
            "{bad}"
        );
        assert!(
            bad.contains("manager `n3` is not one of the nodes (n1, n2)"),
            "{bad}"
        );
        let unpinned =
            SERVICES.replace("constraints = [\"node.labels.db==1\"]\n", "replicas = 2\n");
        let bad = load(&format!("engine = \"swarm\"\n[site.release.swarm]\nnodes = {{ n1 = \"unix:///n1\" }}\nendpoint_mode = \"ipvs\"\nmin_healthy_web = 3\n{unpinned}")).err().unwrap_or_default().join("\n");
        assert!(
            bad.contains("endpoint_mode `ipvs` is not one of vip, dnsrr"),
            "{bad}"
        );
        assert!(
            bad.contains("min_healthy_web = 3 is more than the 2 replica(s)"),
            "{bad}"
        );
        assert!(
            bad.contains("database service `db` must have replicas = 1"),
            "{bad}"
        );
        assert!(
            bad.contains("service `db` keeps its data in node-local volumes; pin it"),
            "{bad}"
        );
    }
}
