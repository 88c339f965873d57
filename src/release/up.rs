//! `up SITE --version V`: a first environment of a version in a color (default: the active one),
//! healthy and in that color's pool. No migration runs: a fresh database is initialised by its
//! image at the schema of its version.

use super::context::Release;
use super::journal;
use super::sync;
use super::ReleaseError;
use crate::config::{Color, Config};
use crate::control::client::Client;

pub async fn up(
    cfg: &Config,
    client: &Client,
    site: &str,
    version: &str,
    color: Option<Color>,
    prefix: Option<&str>,
) -> Result<(), ReleaseError> {
    let _lock = journal::lock(cfg, site, "up")?;
    let r = Release::open(cfg, client, site, prefix).await?;
    sync::before(&r, prefix.is_some()).await;
    r.engine.check_images(r.rel, version).await?;
    let st = r.status().await?;
    let color = color.unwrap_or(st.active);
    if let Some(e) = r.find_env(color).await? {
        return Err(ReleaseError::Failed(format!(
            "environment {}-{color} of {site} already exists (version {}); use `switchyard release` for a new version, or `switchyard envs prune` to remove an idle one",
            e.prefix, e.version
        )));
    }
    let p = &r.progress;
    let id = r.env(color, version);
    r.create(&id, true).await?;
    p.line(format_args!(
        "created {}-{color}-* with version {version}",
        r.prefix
    ));
    let addrs = r.web_ready(&id).await?;
    let pool: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    r.set_pool(color, pool.clone()).await?;
    p.line(format_args!(
        "{} healthy at {}; it is now the {color} pool of {site}",
        id.container(&r.rel.web),
        pool.join(" ")
    ));
    let active_empty = st.pools.get(&st.active).is_none_or(|v| v.is_empty());
    if color != st.active && active_empty {
        // Nothing served the active color, so no write can be left behind there.
        r.switch(color, false).await?;
        p.line(format_args!("switched {site} to {color}"));
    } else if color != st.active {
        p.line(format_args!(
            "{color} is idle; `switchyard switch {site} {color}` makes it serve"
        ));
    }
    Ok(())
}
