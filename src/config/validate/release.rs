//! `[site.release]`: the Docker stack of a site (services, web, db, backups), checked like the rest.

use std::time::Duration;

use super::super::raw::{RawOnline, RawRelease, S};
use super::super::units::parse_size;
use super::{Ctx, Problem};
use crate::config::{Flow, OnlineConfig, ReleaseConfig, ServiceConfig};

pub(super) fn release(cx: &mut Ctx, rr: &S<RawRelease>, site: &str) -> ReleaseConfig {
    let r = rr.get_ref();
    let prefix = r
        .prefix
        .as_ref()
        .map(|p| p.get_ref().clone())
        .unwrap_or_else(|| "w2l-dev".into());
    if let Some(p) = &r.prefix {
        if !valid_docker_name(&prefix) {
            cx.err(p, format!("prefix `{prefix}` must be letters, digits, -, _ or . (it becomes part of container names)"));
        }
    }
    let mut services = Vec::new();
    let mut names = Vec::new();
    for s in &r.services {
        let s_ref = s.get_ref();
        let name = s_ref.name.get_ref().clone();
        if !valid_docker_name(&name) {
            cx.err(
                &s_ref.name,
                format!("service name `{name}` must be letters, digits, -, _ or ."),
            );
        }
        if names.contains(&name) {
            cx.err(&s_ref.name, format!("service `{name}` is listed twice"));
        }
        names.push(name.clone());
        let mut volumes = Vec::new();
        for v in &s_ref.volumes {
            match v.get_ref().split_once(':') {
                Some((vol, mount)) if valid_docker_name(vol) && mount.starts_with('/') => {
                    volumes.push((vol.to_string(), mount.to_string()))
                }
                _ => cx.err(
                    v,
                    format!(
                        "volume `{}` must be NAME:/path (a named volume, one per environment)",
                        v.get_ref()
                    ),
                ),
            }
        }
        let mut data_volumes: Vec<String> = Vec::new();
        for d in &s_ref.data_volumes {
            let v = d.get_ref();
            if data_volumes.contains(v) {
                cx.err(d, format!("data volume `{v}` is listed twice"));
            } else if volumes.iter().any(|(n, _)| n == v) {
                data_volumes.push(v.clone());
            } else {
                let have: Vec<&str> = volumes.iter().map(|(n, _)| n.as_str()).collect();
                cx.err(
                    d,
                    format!(
                        "data volume `{v}` is not one of service `{name}`'s volumes ({}); add `\"{v}:/path\"` to its `volumes`, or name one of those",
                        if have.is_empty() { "it has none".to_string() } else { have.join(", ") }
                    ),
                );
            }
        }
        services.push(ServiceConfig {
            name,
            image: s_ref.image.get_ref().clone(),
            env: s_ref
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            volumes,
            data_volumes,
            command: s_ref.command.clone(),
            backup: s_ref.backup.clone(),
            restore: s_ref.restore.clone(),
            migrate: s_ref.migrate.clone(),
            replicas: cx.count(&s_ref.replicas, "replicas", 1, 100, 1) as u32,
            constraints: s_ref
                .constraints
                .as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_default(),
        });
    }
    if services.is_empty() {
        cx.err(rr, format!("site `{site}`: [site.release] has no [[site.release.services]]; list at least the web service"));
    }
    let web = r
        .web
        .as_ref()
        .map(|w| w.get_ref().clone())
        .unwrap_or_else(|| "web".into());
    if !services.is_empty() && !names.contains(&web) {
        let span = r
            .web
            .as_ref()
            .map(|w| w.span().start)
            .unwrap_or(rr.span().start);
        let line = cx.line(span);
        cx.problems.push(Problem {
            file: cx.file.clone(),
            line,
            message: format!("site `{site}`: web service `{web}` is not among the services ({}); set `web` to the one that takes traffic", names.join(", ")),
        });
    }
    let db = match &r.db {
        Some(d) => Some(d.get_ref().clone()),
        None => services
            .iter()
            .find(|s| s.backup.is_some())
            .map(|s| s.name.clone()),
    };
    if let Some(d) = &db {
        match services.iter().find(|s| &s.name == d) {
            Some(s) if s.backup.is_none() || s.restore.is_none() => cx.err(
                rr,
                format!("site `{site}`: service `{d}` needs both `backup` and `restore` commands"),
            ),
            None if !services.is_empty() => cx.err(
                rr,
                format!("site `{site}`: db service `{d}` is not among the services"),
            ),
            _ => {}
        }
    }
    let web_port = cx.count(&r.web_port, "web_port", 1, 65535, 80) as u16;
    let flow = flow(cx, rr, site, db.as_deref());
    let db_svc = db
        .as_deref()
        .and_then(|d| services.iter().find(|s| s.name == d));
    let online = online(cx, r.online.as_ref(), flow, db_svc, rr.span().start);
    let engine = super::swarm::engine(cx, rr, site, &services, &web, db.as_deref());
    ReleaseConfig {
        prefix,
        backups: cx.path(
            r.backups
                .as_ref()
                .map(|b| b.get_ref().as_str())
                .unwrap_or("backups"),
        ),
        keep_backups: cx.count(&r.keep_backups, "keep_backups", 1, 10_000, 10) as usize,
        web,
        web_port,
        db,
        app_read_only: r
            .app_read_only
            .as_ref()
            .map(|a| (a.get_ref().on.clone(), a.get_ref().off.clone())),
        verify_restore: r.verify_restore.clone(),
        health_timeout: cx.duration(
            &r.health_timeout,
            "health_timeout",
            Duration::from_secs(120),
        ),
        flow,
        online,
        engine,
        services,
    }
}

/// `flow`: freeze (the default), online or auto; the last two need a database service.
fn flow(cx: &mut Ctx, rr: &S<RawRelease>, site: &str, db: Option<&str>) -> Flow {
    let Some(f) = &rr.get_ref().flow else {
        return Flow::Freeze;
    };
    let flow = match f.get_ref().as_str() {
        "freeze" => Flow::Freeze,
        "online" => Flow::Online,
        "auto" => Flow::Auto,
        other => {
            cx.err(f, format!("flow `{other}` is not one of freeze, online, auto (online: copy the database while the site takes writes, freeze only for the last delta; auto: online when the database can do it)"));
            return Flow::Freeze;
        }
    };
    if flow != Flow::Freeze && db.is_none() {
        cx.err(f, format!("site `{site}`: flow `{}` copies a database, but no service has `backup` and `restore` commands; add them to the database service or use flow = \"freeze\"", f.get_ref()));
    }
    flow
}

/// `[site.release.online]`, with its defaults when it is left out.
fn online(
    cx: &mut Ctx,
    ro: Option<&S<RawOnline>>,
    flow: Flow,
    db: Option<&ServiceConfig>,
    fallback: usize,
) -> OnlineConfig {
    let none = RawOnline {
        kind: None,
        user: None,
        password_env: None,
        max_rounds: None,
        freeze_below: None,
        dump: None,
        client: None,
        binlog_tool: None,
        compare: None,
    };
    let o = ro.map(|o| o.get_ref()).unwrap_or(&none);
    if let Some(k) = &o.kind {
        if k.get_ref() != "mariadb" {
            cx.err(k, format!("online kind `{}` is not known; the one kind is \"mariadb\" (MariaDB or MySQL with the binary log on in ROW format)", k.get_ref()));
        }
    }
    let freeze_below = match &o.freeze_below {
        None => 1 << 20,
        Some(v) => parse_size(v.get_ref()).unwrap_or_else(|e| {
            cx.err(v, format!("`freeze_below`: {e}"));
            1 << 20
        }),
    };
    let dump = match (&o.dump, db.and_then(|d| d.backup.as_ref())) {
        (Some(d), _) => d.get_ref().clone(),
        (None, Some(b)) if b.iter().any(|a| a.starts_with("--master-data")) => b.clone(),
        (None, Some(b)) => b
            .iter()
            .cloned()
            .chain(["--master-data=2".into()])
            .collect(),
        (None, None) => Vec::new(),
    };
    if flow != Flow::Freeze && db.is_some() {
        let tool = dump
            .first()
            .map(|t| t.rsplit('/').next().unwrap_or(t))
            .unwrap_or("");
        let at = o
            .dump
            .as_ref()
            .map(|d| d.span().start)
            .or(ro.map(|r| r.span().start))
            .unwrap_or(fallback);
        let problem = if !matches!(tool, "mariadb-dump" | "mysqldump") {
            Some(format!("the online flow's full copy must be a mariadb-dump (or mysqldump) command, but it is {dump:?}; set `dump` in [site.release.online], e.g. [\"mariadb-dump\", \"--all-databases\", \"--single-transaction\", \"--master-data=2\"]"))
        } else if !dump.iter().any(|a| a == "--all-databases" || a == "-A") {
            Some(format!("the online flow replays the whole binary log, so its full copy must hold every database: add `--all-databases` to {dump:?}"))
        } else if !dump.iter().any(|a| a == "--single-transaction") {
            Some(format!("the online flow copies while the site takes writes: add `--single-transaction` to {dump:?}"))
        } else {
            None
        };
        if let Some(msg) = problem {
            let line = cx.line(at);
            cx.problems.push(Problem {
                file: cx.file.clone(),
                line,
                message: msg,
            });
        }
    }
    let word = |cx: &mut Ctx, v: &Option<S<String>>, key: &str, default: &str| match v {
        None => default.to_string(),
        Some(s) if !s.get_ref().is_empty() && !s.get_ref().contains(char::is_whitespace) => {
            s.get_ref().clone()
        }
        Some(s) => {
            cx.err(
                s,
                format!("`{key}` must be one program name, e.g. \"{default}\""),
            );
            default.to_string()
        }
    };
    let password_env = o.password_env.as_ref().map(|p| p.get_ref().clone());
    if let (Some(p), Some(s)) = (&password_env, &o.password_env) {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            cx.err(s, format!("`password_env` is the name of an environment variable of the db container (letters, digits, _), not `{p}`"));
        }
    }
    let compare_all = match &o.compare {
        None => false,
        Some(c) if c.get_ref() == "changed" => false,
        Some(c) if c.get_ref() == "all" => true,
        Some(c) => {
            cx.err(c, format!("compare `{}` is not one of changed, all (changed: inside the window only the tables the last delta touches or that differed while writable; all: every table, the window then grows with the data)", c.get_ref()));
            false
        }
    };
    OnlineConfig {
        compare_all,
        user: o.user.as_ref().map(|u| u.get_ref().clone()),
        password_env,
        max_rounds: cx.count(&o.max_rounds, "max_rounds", 1, 1000, 10) as u32,
        freeze_below,
        dump,
        client: word(cx, &o.client, "client", "mariadb"),
        binlog_tool: word(cx, &o.binlog_tool, "binlog_tool", "mariadb-binlog"),
    }
}

fn valid_docker_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use crate::config::parse_config;

    fn site(web: &str) -> String {
        format!("[proxy]\nhttp = \"127.0.0.1:0\"\ncontrol = \"c.sock\"\nstate = \"s.json\"\n[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.release]\n[[site.release.services]]\nname = \"web\"\nimage = \"w:{{version}}\"\n{web}")
    }

    #[test]
    fn data_volumes_are_among_the_service_volumes() {
        let ok = parse_config(
            std::path::Path::new("t.toml"),
            &site(
                "volumes = [\"images:/srv/images\", \"cache:/c\"]\ndata_volumes = [\"images\"]\n",
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let rel = ok.sites[0].release.as_ref().map(|r| r.data_volumes().len());
        assert_eq!(rel, Some(1));
        let bad = parse_config(
            std::path::Path::new("t.toml"),
            &site("volumes = [\"cache:/c\"]\ndata_volumes = [\"images\", \"cache\", \"cache\"]\n"),
        )
        .err()
        .map(|e| e.problems())
        .unwrap_or_default();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad[0].starts_with("t.toml:13:")
                && bad[0]
                    .contains("data volume `images` is not one of service `web`'s volumes (cache)"),
            "{bad:?}"
        );
        assert!(bad[1].contains("listed twice"), "{bad:?}");
    }

    fn db_site(release: &str, online: &str) -> String {
        format!("[proxy]\nhttp = \"127.0.0.1:0\"\ncontrol = \"c.sock\"\nstate = \"s.json\"\n[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.release]\n{release}\n{online}\n[[site.release.services]]\nname = \"db\"\nimage = \"d\"\nbackup = [\"mariadb-dump\", \"--all-databases\", \"--single-transaction\"]\nrestore = [\"mariadb\"]\n[[site.release.services]]\nname = \"web\"\nimage = \"w:{{version}}\"\n")
    }

    #[test]
    fn the_online_flow_and_its_defaults() {
        use crate::config::Flow;
        let p = std::path::Path::new("t.toml");
        let cfg = parse_config(p, &db_site("", "")).unwrap_or_else(|e| panic!("{e}"));
        let rel = cfg.sites[0]
            .release
            .clone()
            .unwrap_or_else(|| panic!("no release"));
        assert_eq!(rel.flow, Flow::Freeze);
        assert_eq!(rel.online.max_rounds, 10);
        assert_eq!(rel.online.freeze_below, 1 << 20);
        assert_eq!(
            rel.online.dump.last().map(String::as_str),
            Some("--master-data=2"),
            "the backup command, with the binlog position"
        );
        let cfg = parse_config(
            p,
            &db_site(
                "flow = \"online\"",
                "[site.release.online]\nuser = \"backup\"\npassword_env = \"DB_PW\"\nmax_rounds = 3\nfreeze_below = \"64KiB\"",
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let rel = cfg.sites[0]
            .release
            .clone()
            .unwrap_or_else(|| panic!("no release"));
        assert_eq!(rel.flow, Flow::Online);
        assert_eq!(
            (rel.online.max_rounds, rel.online.freeze_below),
            (3, 64 << 10)
        );
        assert_eq!(rel.online.user.as_deref(), Some("backup"));
    }

    #[test]
    fn the_online_flow_refuses_what_it_cannot_replay() {
        let p = std::path::Path::new("t.toml");
        let bad = |release: &str, online: &str| {
            parse_config(p, &db_site(release, online))
                .err()
                .map(|e| e.problems())
                .unwrap_or_default()
        };
        let e = bad("flow = \"sometimes\"", "");
        assert!(
            e.len() == 1
                && e[0].starts_with("t.toml:9:")
                && e[0].contains("not one of freeze, online, auto"),
            "{e:?}"
        );
        let e = bad(
            "flow = \"auto\"",
            "[site.release.online]\ndump = [\"mariadb-dump\", \"wiki\"]",
        );
        assert!(e.len() == 1 && e[0].contains("--all-databases"), "{e:?}");
        let e = bad("flow = \"online\"", "[site.release.online]\ndump = [\"sh\", \"-c\", \"dump\"]\nkind = \"postgres\"\npassword_env = \"a b\"");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e.iter()
                .any(|m| m.contains("online kind `postgres` is not known")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("must be a mariadb-dump")),
            "{e:?}"
        );
        // A freeze flow does not care what the online dump would be.
        assert!(bad("", "[site.release.online]\ndump = [\"sh\"]").is_empty());
    }
}
