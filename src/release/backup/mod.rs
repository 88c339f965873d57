//! Backup sets: the database dump plus an archive of every data volume, taken from the active
//! environment in one read-only window so they agree, each member hashed, fsynced and read back
//! before the set counts; restored whole into a new environment, or not at all. Files are private
//! (0600 in 0700 folders). The layout and the manifest format are in `set.rs` and docs/backups.md.
//!
//! - `set.rs`: the set on disk and its manifest; list (old single-file dumps as one-member sets),
//!   verify member by member, prune whole sets.
//! - `take.rs`: taking a set (stream, hash, fsync, read back, manifest last, rename).
//! - `restore.rs`: checking a set whole, then restoring it into an environment and checking the
//!   restored files against the archives.
//! - `tarlist.rs`: the content listing of a tar stream. `files.rs`: private files, hashing.
//! - `offsite/`: copies of sets in a restic repository (`[backups.offsite]`), and back.
//!
//! Never called on the request path.

pub mod files;
pub mod offsite;
pub mod restore;
pub mod set;
pub mod take;
pub mod tarlist;

use std::path::PathBuf;
use std::time::Instant;

pub use set::{Manifest, Member, MemberCheck, MemberKind, PruneReport, Set};

use super::context::{site_of, Release};
use super::docker::EnvId;
use super::journal;
use super::ReleaseError;
use crate::config::{Config, ReleaseConfig};
use crate::control::client::Client;

pub fn site_dir(rel: &ReleaseConfig, site: &str) -> PathBuf {
    rel.backups.join(site)
}

/// Every set of a site, newest first.
pub fn list(rel: &ReleaseConfig, site: &str) -> Result<Vec<Set>, ReleaseError> {
    set::list(&site_dir(rel, site))
}

/// What `backup SITE` did.
pub struct Taken {
    pub set: Set,
    /// How long the site was read-only for it (None: it was not needed, or already on).
    pub read_only_window: Option<std::time::Duration>,
    /// With `[backups.offsite]`: the copy run made after the set (every pending set).
    pub offsite: Option<offsite::Run>,
}

/// `backup SITE`: a verified set of the active environment, now, under the site's lock (so never
/// during a release). When the set has files besides the dump, the site is read-only from before
/// the first member to after the last (edge and `app_read_only`), so the members agree; unless it
/// already was read-only, in which case it is left as it is.
pub async fn take_now(
    cfg: &Config,
    client: &Client,
    site: &str,
    json: bool,
) -> Result<Taken, ReleaseError> {
    let _lock = journal::lock(cfg, site, "backup")?;
    let mut r = Release::open(cfg, client, site, None).await?;
    if json {
        r.progress = super::Progress::on_stderr();
    }
    super::sync::before(&r, false).await;
    let st = r.status().await?;
    let env = r
        .find_env(st.active)
        .await?
        .filter(|e| e.running())
        .ok_or_else(|| {
            ReleaseError::Failed(format!(
                "no running environment {}-{} to back up (the active color of {site})",
                r.prefix, st.active
            ))
        })?;
    let id = EnvId {
        site: site.to_string(),
        prefix: env.prefix,
        color: env.color,
        version: env.version,
    };
    take::check_sources(&r.engine, r.rel, &id).await?;
    let window = !st.read_only && take::plan(r.rel).len() > 1;
    if !window {
        let set = take::take(&r.engine, r.rel, &id, &r.progress, st.read_only).await?;
        let offsite = copy_after(&r).await?;
        return Ok(Taken {
            set,
            read_only_window: None,
            offsite,
        });
    }
    let reason = format!("{site} is being backed up; editing is back in a moment");
    r.read_only_because(true, &reason).await?;
    let t = Instant::now();
    r.progress.line("read-only on for the backup set");
    let web = id.container(&r.rel.web);
    let taken = async {
        if let Some((on, _)) = &r.rel.app_read_only {
            r.run_ok(&web, on, "app_read_only.on").await?;
        }
        take::take(&r.engine, r.rel, &id, &r.progress, true).await
    };
    let res = tokio::select! {
        res = taken => res,
        _ = super::interrupted() => Err(ReleaseError::Interrupted),
    };
    // Whatever happened: the site takes writes again.
    let mut lifted = Ok(());
    if let Some((_, off)) = &r.rel.app_read_only {
        if let Err(e) = r.run_ok(&web, off, "app_read_only.off").await {
            lifted = Err(e);
        }
    }
    if let Err(e) = r.read_only_because(false, &reason).await {
        lifted = Err(e);
    }
    let window = t.elapsed();
    r.progress.line(format_args!(
        "read-only off after {:.3}s",
        window.as_secs_f64()
    ));
    let set = res?;
    lifted?;
    let offsite = copy_after(&r).await?;
    Ok(Taken {
        set,
        read_only_window: Some(window),
        offsite,
    })
}

/// After `backup`'s set (the site takes writes again): every pending set off-site, still under
/// the site's lock. Its failure is in the run (the caller exits 1 with it), not an error here:
/// the local set is good.
async fn copy_after(r: &Release<'_>) -> Result<Option<offsite::Run>, ReleaseError> {
    if r.cfg.offsite.is_none() {
        return Ok(None);
    }
    let run = offsite::copy_pending(r.cfg, r.rel, r.name(), Some(r.client), &r.progress).await?;
    offsite::print_run(&run, &r.progress);
    Ok(Some(run))
}

/// `backups verify SITE`: every set checked member by member, newest first.
pub async fn verify_all(
    rel: &ReleaseConfig,
    site: &str,
    progress: &super::Progress,
) -> Result<Vec<(Set, Result<Vec<MemberCheck>, String>)>, ReleaseError> {
    let mut out = Vec::new();
    for s in list(rel, site)? {
        let t = Instant::now();
        let v = set::verify(&s, false, &|name, n| {
            progress.bytes(&format!("verify {} {name}", s.id), t, n)
        })
        .await;
        out.push((s, v));
    }
    Ok(out)
}

/// After a release: [`set::prune`] to `keep_backups`.
pub async fn prune(
    cfg: &Config,
    rel: &ReleaseConfig,
    site: &str,
    keep: usize,
) -> Result<PruneReport, ReleaseError> {
    set::prune(&site_dir(rel, site), keep, false, &unsent(cfg)).await
}

/// With `[backups.offsite]`, a set without an off-site copy yet; without it, none.
fn unsent(cfg: &Config) -> impl Fn(&Set) -> bool {
    let offsite = cfg.offsite.is_some();
    move |s: &Set| offsite && offsite::record::copied(s).is_none()
}

/// `backups prune SITE`: [`prune`] to `keep_backups` (returned with the report), under the
/// site's lock.
/// With `dry_run`, nothing is removed and the report says what would be.
pub async fn prune_now(
    cfg: &Config,
    site: &str,
    dry_run: bool,
) -> Result<(PruneReport, usize), ReleaseError> {
    let (_, rel) = site_of(cfg, site)?;
    let _lock = journal::lock(cfg, site, "backups prune")?;
    let keep = rel.keep_backups;
    let r = set::prune(&site_dir(rel, site), keep, dry_run, &unsent(cfg)).await?;
    Ok((r, keep))
}
