//! Entry points of the Docker commands (up, release, envs, backup, backups): find the site, take
//! the lock, connect to the engine, call one function of `steps` or `backup`, print.

use super::docker::{EnvId, EnvInfo};
use super::steps::{self, Ctx};
use super::{backup, human_bytes, journal, Progress, ReleaseError};
use crate::cli::{BackupsCmd, Cmd, EnvsCmd};
use crate::config::{Color, Config, ReleaseConfig, SiteConfig};
use crate::control::api::SiteStatus;
use crate::control::client::Client;

pub async fn run(cmd: &Cmd, cfg: Config, client: Client) -> anyhow::Result<()> {
    Ok(dispatch(cmd, &cfg, &client).await?)
}

fn site_of<'a>(
    cfg: &'a Config,
    name: &str,
) -> Result<(&'a SiteConfig, &'a ReleaseConfig), ReleaseError> {
    let site = cfg
        .site(name)
        .ok_or_else(|| ReleaseError::UnknownSite(name.to_string()))?;
    let rel = site
        .release
        .as_ref()
        .ok_or_else(|| ReleaseError::NoRelease(name.to_string()))?;
    Ok((site, rel))
}

async fn ctx<'a>(
    cfg: &'a Config,
    client: &'a Client,
    site: &str,
    prefix: Option<&String>,
) -> Result<Ctx<'a>, ReleaseError> {
    let (site, rel) = site_of(cfg, site)?;
    let prefix = prefix.cloned().unwrap_or_else(|| rel.prefix.clone());
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ReleaseError::Failed(format!("prefix `{prefix}` must be letters, digits, -, _ or . (it becomes part of container names)")));
    }
    let engine = super::docker::Engine::connect().await?;
    Ok(Ctx {
        cfg,
        site,
        rel,
        client,
        engine,
        progress: Progress::default(),
        prefix,
    })
}

fn parse_color(s: &str) -> Result<Color, ReleaseError> {
    Color::parse(s)
        .ok_or_else(|| ReleaseError::Failed(format!("unknown color `{s}`; use blue or green")))
}

async fn dispatch(cmd: &Cmd, cfg: &Config, client: &Client) -> Result<(), ReleaseError> {
    match cmd {
        Cmd::Up {
            site,
            version,
            color,
            prefix,
        } => {
            let color = color.as_deref().map(parse_color).transpose()?;
            let _lock = journal::lock(cfg, site, "up")?;
            let c = ctx(cfg, client, site, prefix.as_ref()).await?;
            steps::up(&c, version, color).await
        }
        Cmd::Release {
            site,
            version,
            prefix,
            resume,
            abort,
        } => {
            let _lock = journal::lock(cfg, site, "release")?;
            let c = ctx(cfg, client, site, prefix.as_ref()).await?;
            let c = match journal::load(cfg, site)? {
                // --resume / --abort work on the prefix the release was started with.
                Some(j) if (*resume || *abort) && prefix.is_none() => Ctx {
                    prefix: j.prefix,
                    ..c
                },
                _ => c,
            };
            if *abort {
                steps::abort(&c).await
            } else if *resume {
                steps::resume(&c).await
            } else {
                let v = version.as_deref().ok_or_else(|| {
                    ReleaseError::Failed("give --version V (or --resume / --abort)".into())
                })?;
                steps::start(&c, v).await
            }
        }
        Cmd::Envs {
            what: EnvsCmd::List { site, prefix },
        } => {
            let (_, rel) = site_of(cfg, site)?;
            let engine = super::docker::Engine::connect().await?;
            let envs = engine.list(site, prefix.as_deref()).await?;
            let st = site_status(client, site).await;
            print!("{}", render_envs(&envs, st.as_ref().ok(), &rel.prefix));
            if let Err(e) = st {
                println!("(the daemon did not answer, so active/rollback are not shown: {e})");
            }
            Ok(())
        }
        Cmd::Envs {
            what: EnvsCmd::Prune { site, prefix },
        } => {
            let _lock = journal::lock(cfg, site, "envs prune")?;
            if let Some(j) = journal::load(cfg, site)? {
                return Err(ReleaseError::Failed(format!("a release of {site} to {} is unfinished; run `release --resume` or `--abort` before pruning", j.to_version)));
            }
            let c = ctx(cfg, client, site, prefix.as_ref()).await?;
            let st = c.status().await?;
            let envs = c.engine.list(site, Some(&c.prefix)).await?;
            let mut removed = 0;
            for e in &envs {
                if let Some(why) = needed(e, &st, &c.rel.prefix) {
                    println!("kept   {}-{} ({}): {why}", e.prefix, e.color, e.version);
                    continue;
                }
                let id = EnvId {
                    site: site.clone(),
                    prefix: e.prefix.clone(),
                    color: e.color,
                    version: e.version.clone(),
                };
                c.engine.remove_env(&id, Some(c.rel)).await?;
                println!(
                    "removed {}-{} ({}): containers, network and volumes",
                    e.prefix, e.color, e.version
                );
                removed += 1;
            }
            if removed == 0 {
                println!("nothing to prune for {site} (prefix {})", c.prefix);
            }
            Ok(())
        }
        Cmd::Backup { site } => {
            let _lock = journal::lock(cfg, site, "backup")?;
            let c = ctx(cfg, client, site, None).await?;
            let st = c.status().await?;
            let env = c
                .find_env(st.active)
                .await?
                .filter(|e| e.running())
                .ok_or_else(|| {
                    ReleaseError::Failed(format!(
                        "no running environment {}-{} to back up (the active color of {site})",
                        c.prefix, st.active
                    ))
                })?;
            let id = EnvId {
                site: site.clone(),
                prefix: env.prefix,
                color: env.color,
                version: env.version,
            };
            let m = backup::take(&c.engine, c.rel, &id, &c.progress).await?;
            let path = backup::site_dir(c.rel, site).join(&m.file);
            c.progress.line(format_args!(
                "backup verified: {} {} sha256 {}",
                path.display(),
                human_bytes(m.size),
                m.sha256
            ));
            Ok(())
        }
        Cmd::Backups { what } => backups(cfg, what).await,
        _ => Err(ReleaseError::Failed("not a release command".into())),
    }
}

async fn backups(cfg: &Config, what: &BackupsCmd) -> Result<(), ReleaseError> {
    match what {
        BackupsCmd::List { site } => {
            let (_, rel) = site_of(cfg, site)?;
            let list = backup::list(rel, site)?;
            if list.is_empty() {
                println!(
                    "no backups of {site} in {}",
                    backup::site_dir(rel, site).display()
                );
            }
            for e in &list {
                println!("{}", backup::describe(e));
            }
            Ok(())
        }
        BackupsCmd::Verify { site } => {
            let (_, rel) = site_of(cfg, site)?;
            let mut bad = 0;
            let list = backup::list(rel, site)?;
            for e in &list {
                match backup::verify(e).await {
                    Ok(()) => println!("ok      {}", e.stem),
                    Err(why) => {
                        bad += 1;
                        println!("BROKEN  {}: {why}", e.stem);
                    }
                }
            }
            if bad > 0 {
                return Err(ReleaseError::Failed(format!(
                    "{bad} of {} backup(s) of {site} failed verification; do not rely on them",
                    list.len()
                )));
            }
            println!("{} backup(s) of {site} verified", list.len());
            Ok(())
        }
        BackupsCmd::Prune { site } => {
            let (_, rel) = site_of(cfg, site)?;
            let _lock = journal::lock(cfg, site, "backups prune")?;
            let r = backup::prune(rel, site, rel.keep_backups).await?;
            for s in &r.removed {
                println!("removed {s}");
            }
            for (s, why) in &r.broken {
                println!("BROKEN  {s}: {why} (left for you to inspect)");
            }
            println!(
                "kept {} verified backup(s) of {site} (keep_backups = {})",
                r.kept.len(),
                rel.keep_backups
            );
            Ok(())
        }
    }
}

async fn site_status(client: &Client, site: &str) -> Result<SiteStatus, String> {
    let s = client.status().await.map_err(|e| e.to_string())?;
    s.sites
        .into_iter()
        .find(|x| x.name == site)
        .ok_or_else(|| format!("the daemon does not know site `{site}`"))
}

/// Why an environment must stay, or None when prune may remove it.
fn needed(e: &EnvInfo, st: &SiteStatus, config_prefix: &str) -> Option<String> {
    let in_pool = |c: Color| {
        e.web_addr.is_some_and(|a| {
            st.pools
                .get(&c)
                .is_some_and(|p| p.iter().any(|b| b.addr == a.to_string()))
        })
    };
    if in_pool(st.active) || (e.color == st.active && e.prefix == config_prefix) {
        return Some("active".into());
    }
    if st.previous.is_some_and(|p| p != st.active && in_pool(p)) {
        return Some("rollback needs it".into());
    }
    if Color::ALL.iter().any(|c| in_pool(*c)) {
        return Some("in a pool of the proxy".into());
    }
    None
}

fn role(e: &EnvInfo, st: Option<&SiteStatus>, config_prefix: &str) -> String {
    let Some(st) = st else { return "?".into() };
    match needed(e, st, config_prefix) {
        Some(r) if r == "active" => "active".into(),
        Some(r) if r.starts_with("rollback") => "rollback".into(),
        Some(_) => "in a pool".into(),
        None => "idle (prunable)".into(),
    }
}

fn render_envs(envs: &[EnvInfo], st: Option<&SiteStatus>, config_prefix: &str) -> String {
    if envs.is_empty() {
        return "no environments on this Docker engine\n".into();
    }
    let mut s = format!(
        "{:<20} {:<6} {:<12} {:<8} {:<22} {}\n",
        "PREFIX", "COLOR", "VERSION", "STATE", "WEB", "ROLE"
    );
    for e in envs {
        let state = if e.running() { "running" } else { "stopped" };
        let web = e
            .web_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        s += &format!(
            "{:<20} {:<6} {:<12} {:<8} {:<22} {}\n",
            e.prefix,
            e.color.as_str(),
            e.version,
            state,
            web,
            role(e, st, config_prefix)
        );
        for (svc, (name, state)) in &e.containers {
            s += &format!("    {svc:<10} {name} ({state})\n");
        }
    }
    s
}
