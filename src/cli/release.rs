//! The Docker commands on the command line (up, release, envs; backup and backups are in
//! `backups.rs`): one call into
//! `release::`, then print. The locks, plans and prune rules are all `release`'s.

use crate::config::{Color, Config};
use crate::control::client::Client;
use crate::release::{self, envs, sync};

use super::{render, EnvsCmd};

/// Which way `release` goes.
pub enum How<'a> {
    Start(&'a str),
    /// `--plan`: say which flow and steps would run; change nothing.
    Plan(&'a str),
    Resume,
    Abort,
}

pub async fn up(
    cfg: &Config,
    client: &Client,
    site: &str,
    version: &str,
    color: Option<Color>,
    prefix: Option<&str>,
) -> anyhow::Result<()> {
    Ok(release::up(cfg, client, site, version, color, prefix).await?)
}

pub async fn release(
    cfg: &Config,
    client: &Client,
    site: &str,
    how: How<'_>,
    prefix: Option<&str>,
) -> anyhow::Result<()> {
    match how {
        How::Start(v) => release::start(cfg, client, site, v, prefix, false).await?,
        How::Plan(v) => release::start(cfg, client, site, v, prefix, true).await?,
        How::Resume => release::resume(cfg, client, site, prefix).await?,
        How::Abort => release::abort(cfg, client, site, prefix).await?,
    }
    Ok(())
}

pub async fn envs(cfg: &Config, client: &Client, what: &EnvsCmd) -> anyhow::Result<()> {
    match what {
        EnvsCmd::List { site, prefix } => {
            sync_first(cfg, client, site, prefix.as_deref()).await;
            let listing = envs::list(cfg, client, site, prefix.as_deref()).await?;
            print!("{}", render::envs(&listing));
            if let Err(e) = &listing.status {
                println!("(the daemon did not answer, so active/rollback are not shown: {e})");
            }
        }
        EnvsCmd::Prune {
            site,
            prefix,
            dry_run,
        } => {
            let mut removed = 0;
            let pruned = envs::prune(cfg, client, site, prefix.as_deref(), *dry_run, |p| {
                removed += !matches!(p, envs::Pruned::Kept(..)) as usize;
                println!("{}", render::pruned(p));
            })
            .await?;
            if removed == 0 {
                println!("nothing to prune for {site} (prefix {pruned})");
            }
        }
        EnvsCmd::Sync { site, prefix, .. } => {
            let sites: Vec<String> = match site {
                Some(s) => vec![s.clone()],
                None => cfg
                    .sites
                    .iter()
                    .filter(|s| s.release.is_some())
                    .map(|s| s.name.clone())
                    .collect(),
            };
            if sites.is_empty() {
                anyhow::bail!(
                    "no site of the config has a [site.release] section: nothing to sync"
                );
            }
            let (mut down, mut failed) = (Vec::new(), Vec::new());
            for s in &sites {
                match sync::sync(cfg, client, s, prefix.as_deref()).await {
                    Ok(rep) => {
                        for l in rep.lines(true) {
                            println!("{l}");
                        }
                        if rep.active_down() {
                            down.push(s.as_str());
                        }
                    }
                    // One site's trouble does not keep --all from the others.
                    Err(e) if sites.len() > 1 => {
                        println!("{s}: not synced: {e}");
                        failed.push(s.as_str());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !down.is_empty() {
                anyhow::bail!(
                    "the active pool of {} points at nothing and was left as it is (see above for what to do)",
                    down.join(", ")
                );
            }
            if !failed.is_empty() {
                anyhow::bail!("could not sync {} (see above)", failed.join(", "));
            }
        }
        EnvsCmd::Watch { sites, every } => release::watch(cfg, client, sites, *every).await?,
    }
    Ok(())
}

/// Before a command that reads or flips pools (`envs list`, `rollback`): a best-effort sync,
/// saying only what changed or is wrong.
pub async fn sync_first(cfg: &Config, client: &Client, site: &str, prefix: Option<&str>) {
    match sync::sync(cfg, client, site, prefix).await {
        Ok(rep) => {
            for l in rep.lines(false) {
                println!("envs sync: {l}");
            }
        }
        Err(e) => println!("envs sync: not done ({e})"),
    }
}
