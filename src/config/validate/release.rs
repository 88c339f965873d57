//! `[site.release]`: the Docker stack of a site (services, web, db, backups), checked like the rest.

use std::time::Duration;

use super::super::raw::{RawRelease, S};
use super::{Ctx, Problem};
use crate::config::{ReleaseConfig, ServiceConfig};

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
        services,
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
}
