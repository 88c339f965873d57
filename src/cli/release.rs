//! The Docker commands on the command line (up, release, envs; backup and backups are in
//! `backups.rs`): one call into
//! `release::`, then print. The locks, plans and prune rules are all `release`'s.

use crate::config::{Color, Config};
use crate::control::client::Client;
use crate::release::{self, envs};

use super::{render, EnvsCmd};

/// Which way `release` goes.
pub enum How<'a> {
    Start(&'a str),
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
        How::Start(v) => release::start(cfg, client, site, v, prefix).await?,
        How::Resume => release::resume(cfg, client, site, prefix).await?,
        How::Abort => release::abort(cfg, client, site, prefix).await?,
    }
    Ok(())
}

pub async fn envs(cfg: &Config, client: &Client, what: &EnvsCmd) -> anyhow::Result<()> {
    match what {
        EnvsCmd::List { site, prefix } => {
            let listing = envs::list(cfg, client, site, prefix.as_deref()).await?;
            print!("{}", render::envs(&listing));
            if let Err(e) = &listing.status {
                println!("(the daemon did not answer, so active/rollback are not shown: {e})");
            }
        }
        EnvsCmd::Prune { site, prefix } => {
            let mut removed = 0;
            let pruned = envs::prune(cfg, client, site, prefix.as_deref(), |p| {
                removed += matches!(p, envs::Pruned::Removed(_)) as usize;
                println!("{}", render::pruned(p));
            })
            .await?;
            if removed == 0 {
                println!("nothing to prune for {site} (prefix {pruned})");
            }
        }
    }
    Ok(())
}
