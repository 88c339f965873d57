//! Off-site copies of backup sets, with restic (`[backups.offsite]`): restic does the transport,
//! the encryption and the deduplication; this module only decides what to copy, runs restic
//! (`restic.rs`) and checks what comes back against the set's manifest.
//!
//! In the repository a set is one snapshot of its folder (stored as `/{id}/…`), host
//! `switchyard`, tags `switchyard`, `site:{site}`, `set:{id}`. Retention is restic's own
//! `forget --keep-* --prune` over one site's snapshots (`--tag site:{site} --group-by host`).
//! Beside each copied set, `offsite.json` records the snapshot (`record.rs`): sets without one
//! are pending and the next run copies them (oldest first), so a failed upload is retried.
//! Coming back (`restore`, `verify`, a drill with `--offsite`), a set is restored into a
//! `.partial` folder, every member re-hashed against its manifest, and only then renamed into
//! place. Never called on the request path.
//!
//! - `mod.rs`: the error type, listing, copying what is pending, retention, a release's copy.
//! - `restic.rs`: running the binary, and restic's failures as errors that say what to do.
//! - `fetch.rs`: a set back from the repository (restore, verify), checked before it is used.
//! - `record.rs`: what is left on disk (per set, the site's last run and last drill).

mod fetch;
pub mod record;
pub mod restic;

pub use fetch::{fetch, pick, restore, restore_snapshot, verify, Scratch, Verified};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::set::{self, Set};
use crate::config::{Config, OffsiteConfig, ReleaseConfig};
use crate::control::api::{BackupEvent, OffsiteCopy, OffsiteStatus};
use crate::control::client::Client;
use crate::release::{Progress, ReleaseError};

/// Everything that can go wrong with the off-site repository, worded with what to do.
#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    #[error("no [backups.offsite] in the config; add one with `repository` and `password_file` (README: \"Off-site copies\")")]
    NotConfigured,
    #[error("cannot run restic ({bin}): {why}. Install it (Debian: apt-get install restic) or set [backups.offsite] restic = \"/path/to/restic\"")]
    NoRestic { bin: String, why: String },
    #[error("cannot read the off-site password file {}: {why}. It must hold the repository's password on one line (mode 0600); fix [backups.offsite] password_file", .path.display())]
    PasswordFile { path: PathBuf, why: String },
    #[error("the off-site repository {repo} does not open with the password in {} (restic: wrong password or no key found). Put the password the repository was initialised with in that file", .file.display())]
    WrongPassword { repo: String, file: PathBuf },
    #[error("the off-site repository {repo} is locked by another restic run ({detail}). Wait for it; if none is running (a crash left a stale lock), remove it with: RESTIC_REPOSITORY={repo} RESTIC_PASSWORD_FILE=<password_file> restic unlock")]
    Locked { repo: String, detail: String },
    #[error("cannot reach the off-site repository {repo} ({detail}). Is its server up, and the URL right? Local sets are untouched")]
    Unreachable { repo: String, detail: String },
    #[error("there is no restic repository at {repo} yet; create it with `switchyard backups offsite init`")]
    NotInitialised { repo: String },
    #[error("the off-site repository {repo} is already initialised; nothing to do")]
    AlreadyInitialised { repo: String },
    #[error("restic {what} on {repo} did not finish within [backups.offsite] timeout {}; it was stopped. Check the link to the repository, or raise `timeout`", humantime::format_duration(*.after))]
    Timeout {
        what: String,
        repo: String,
        after: Duration,
    },
    #[error("the off-site repository {repo} holds damaged data ({detail}); nothing was restored from it. `restic check --read-data` lists what is damaged; take a new set (`switchyard backup SITE`) so that a good copy exists")]
    Damaged { repo: String, detail: String },
    #[error("restic {what} failed: {detail}")]
    Failed { what: String, detail: String },
}

/// `[backups.offsite]`, or the error that says to add it.
pub fn config(cfg: &Config) -> Result<&OffsiteConfig, OffsiteError> {
    cfg.offsite.as_ref().ok_or(OffsiteError::NotConfigured)
}

const HOST: &str = "switchyard";

fn nothing(_: &str) {}

/// `backups offsite init`: a new repository.
pub async fn init(o: &OffsiteConfig) -> Result<(), OffsiteError> {
    restic::run(o, &["init"], None, &mut nothing, &|| {}).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ResticSnapshot {
    id: String,
    short_id: String,
    time: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// One set in the repository.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: String,
    pub set: String,
}

/// The site's sets in the repository, newest set first.
pub async fn snapshots(o: &OffsiteConfig, site: &str) -> Result<Vec<Snapshot>, OffsiteError> {
    let tag = format!("site:{site}");
    let out = restic::run(
        o,
        &["snapshots", "--json", "--tag", &tag],
        None,
        &mut nothing,
        &|| {},
    )
    .await?;
    let list: Vec<ResticSnapshot> =
        serde_json::from_str(out.trim()).map_err(|e| OffsiteError::Failed {
            what: "snapshots".into(),
            detail: format!("its --json output is not a snapshot list: {e}"),
        })?;
    let mut out: Vec<Snapshot> = list
        .into_iter()
        .filter_map(|s| {
            let set = s
                .tags
                .unwrap_or_default()
                .iter()
                .find_map(|t| t.strip_prefix("set:").map(str::to_string))?;
            Some(Snapshot {
                id: s.id,
                short_id: s.short_id,
                time: s.time,
                set,
            })
        })
        .collect();
    out.sort_by(|a, b| b.set.cmp(&a.set).then(b.time.cmp(&a.time)));
    Ok(out)
}

/// Copies one set (its folder) as a snapshot; returns the snapshot id and the bytes restic added.
async fn copy_set(
    o: &OffsiteConfig,
    site: &str,
    site_dir: &Path,
    s: &Set,
    progress: &Progress,
) -> Result<OffsiteCopy, OffsiteError> {
    let (t, what) = (Instant::now(), format!("offsite copy {}", s.id));
    let (site_tag, set_tag) = (format!("site:{site}"), format!("set:{}", s.id));
    let mut snapshot = None;
    let mut total = 0u64;
    let mut on_line = |l: &str| {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            return;
        };
        match v["message_type"].as_str() {
            Some("status") => progress.bytes(&what, t, v["bytes_done"].as_u64().unwrap_or(0)),
            Some("summary") => {
                snapshot = v["snapshot_id"].as_str().map(str::to_string);
                total = v["total_bytes_processed"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    };
    let args = [
        "backup",
        "--json",
        "--host",
        HOST,
        "--tag",
        "switchyard",
        "--tag",
        &site_tag,
        "--tag",
        &set_tag,
        &s.id,
    ];
    restic::run(o, &args, Some(site_dir), &mut on_line, &|| {}).await?;
    let snapshot = snapshot.ok_or_else(|| OffsiteError::Failed {
        what: "backup".into(),
        detail: "it printed no summary with a snapshot id".into(),
    })?;
    progress.done(&format!("{what} (snapshot {snapshot})"), t, total);
    Ok(OffsiteCopy {
        set: s.id.clone(),
        snapshot,
        bytes: total,
    })
}

/// What one copy run did: the status it recorded and, if it failed, why.
pub struct Run {
    pub status: OffsiteStatus,
    pub error: Option<ReleaseError>,
}

/// Copies every complete local set of `site` that is not off-site yet (oldest first, each
/// re-verified against its manifest first), then applies the retention policy; records the run
/// in `.offsite.json` and reports it to the daemon (audit, metrics) when `client` is given.
pub async fn copy_pending(
    cfg: &Config,
    rel: &ReleaseConfig,
    site: &str,
    client: Option<&Client>,
    progress: &Progress,
) -> Result<Run, ReleaseError> {
    let o = config(cfg)?;
    let t = Instant::now();
    let site_dir = super::site_dir(rel, site);
    let mut copied = Vec::new();
    let result = copy_all(o, site, &site_dir, progress, &mut copied).await;
    let pending: Vec<String> = pending(&site_dir)?.into_iter().map(|s| s.id).collect();
    let status = OffsiteStatus {
        time: crate::state::now_rfc3339(),
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| e.to_string()),
        repository: o.shown(),
        copied,
        pending,
        duration_s: t.elapsed().as_secs_f64(),
    };
    if let Err(e) = record::write_last_offsite(&site_dir, &status) {
        progress.line(format_args!("note: cannot record the off-site run: {e}"));
    }
    if let Some(c) = client {
        report(c, site, BackupEvent::Offsite(status.clone()), progress).await;
    }
    Ok(Run {
        status,
        error: result.err(),
    })
}

/// Tells the daemon (audit log, metrics). Best effort: the record on disk is the truth.
pub async fn report(client: &Client, site: &str, ev: BackupEvent, progress: &Progress) {
    if let Err(e) = client.backup_event(site, &ev).await {
        progress.line(format_args!(
            "note: the daemon did not record this in its audit log: {e}"
        ));
    }
}

/// Complete local sets without an off-site record, oldest first.
fn pending(site_dir: &Path) -> Result<Vec<Set>, ReleaseError> {
    let mut v: Vec<Set> = set::list(site_dir)?
        .into_iter()
        .filter(|s| !s.legacy && s.manifest.is_ok() && record::copied(s).is_none())
        .collect();
    v.reverse();
    Ok(v)
}

async fn copy_all(
    o: &OffsiteConfig,
    site: &str,
    site_dir: &Path,
    progress: &Progress,
    copied: &mut Vec<OffsiteCopy>,
) -> Result<(), ReleaseError> {
    let todo = pending(site_dir)?;
    if todo.is_empty() {
        return Ok(());
    }
    let there = snapshots(o, site).await?;
    let mut broken = Vec::new();
    for s in todo {
        let c = match there.iter().find(|x| x.set == s.id) {
            // Copied before, but its record was not written (a crash): record it now.
            Some(x) => OffsiteCopy {
                set: s.id.clone(),
                snapshot: x.id.clone(),
                bytes: 0,
            },
            None => {
                let checks = set::verify(&s, false, &|_, _| {}).await;
                let bad = checks.map(|c| set::first_bad(&c)).unwrap_or_else(Some);
                if let Some(why) = bad {
                    broken.push(format!("{}: {why}", s.id));
                    continue;
                }
                copy_set(o, site, site_dir, &s, progress).await?
            }
        };
        let rec = record::Copied {
            repository: o.shown(),
            snapshot: c.snapshot.clone(),
            copied_at: crate::state::now_rfc3339(),
        };
        record::write_copied(&s, &rec).map_err(|source| ReleaseError::Io {
            what: "record the off-site copy in".into(),
            path: s.dir.join(record::SET_RECORD),
            source,
        })?;
        copied.push(c);
    }
    forget(o, site, progress).await?;
    if !broken.is_empty() {
        return Err(ReleaseError::Failed(format!(
            "not copied off-site because they do not verify locally (`backups verify` names what is wrong): {}",
            broken.join("; ")
        )));
    }
    Ok(())
}

/// The retention policy: `restic forget --keep-* --prune` over this site's snapshots.
async fn forget(o: &OffsiteConfig, site: &str, progress: &Progress) -> Result<(), OffsiteError> {
    if o.keep.is_empty() {
        return Ok(());
    }
    let tag = format!("site:{site}");
    let counts: Vec<String> = o.keep.iter().map(|(_, n)| n.to_string()).collect();
    let mut args = vec![
        "forget",
        "--json",
        "--tag",
        &tag,
        "--group-by",
        "host",
        "--prune",
    ];
    for ((flag, _), n) in o.keep.iter().zip(&counts) {
        args.push(flag);
        args.push(n);
    }
    let out = restic::run(o, &args, None, &mut nothing, &|| {}).await?;
    // `forget --json --prune` prints the forget report as its first JSON line.
    let removed: usize = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.as_array().cloned())
        .flatten()
        .map(|g| g["remove"].as_array().map(|r| r.len()).unwrap_or(0))
        .sum();
    if removed > 0 {
        progress.line(format_args!(
            "offsite retention: forgot {removed} old snapshot(s) of {site} and pruned the repository"
        ));
    }
    Ok(())
}

/// A release's off-site copy: with `mode = "required"` at step 3 (`at_backup`: the id of the set
/// step 3 took; the release waits for the copy and fails when that set is not off-site; again at
/// step 4, a no-op unless a resume skipped step 3's copy), with
/// `"after"` once the release is done (a failure is printed loudly, recorded and retried by the
/// next `backup`; the release itself stands). An older pending set that fails to copy does not
/// fail a release: it is printed and recorded like any failed copy.
pub async fn for_release(
    r: &crate::release::Release<'_>,
    at_backup: Option<&str>,
) -> Result<(), ReleaseError> {
    let Some(o) = &r.cfg.offsite else {
        return Ok(());
    };
    if at_backup.is_some() != (o.mode == crate::config::OffsiteMode::Required) {
        return Ok(());
    }
    if let Some(id) = at_backup {
        // Already off-site (step 3 copied it; this is step 4): nothing to wait for.
        let found = set::find(&super::site_dir(r.rel, r.name()), id)?;
        if found.as_ref().and_then(record::copied).is_some() {
            return Ok(());
        }
    }
    let run = copy_pending(r.cfg, r.rel, r.name(), Some(r.client), &r.progress).await?;
    print_run(&run, &r.progress);
    let Some(e) = run.error else {
        return Ok(());
    };
    match at_backup {
        Some(id) if !run.status.copied.iter().any(|c| c.set == id) => Err(ReleaseError::Failed(format!(
            "set {id} is verified locally but its off-site copy failed, and [backups.offsite] mode = \"required\": {e}"
        ))),
        Some(_) => {
            r.progress.line(format_args!(
                "WARNING: this release's set is off-site, but not every older one: {e}"
            ));
            Ok(())
        }
        None => {
            r.progress.line(format_args!(
                "WARNING: the release is done, but its backup set is NOT off-site: {e}. `switchyard backups offsite copy {}` (or the next `switchyard backup`) retries it",
                r.name()
            ));
            Ok(())
        }
    }
}

/// One line per copied set, and what is still pending.
pub fn print_run(run: &Run, progress: &Progress) {
    for c in &run.status.copied {
        progress.line(format_args!(
            "off-site: set {} is snapshot {} in {}",
            c.set,
            c.snapshot.get(..8).unwrap_or(&c.snapshot),
            run.status.repository
        ));
    }
    if !run.status.pending.is_empty() {
        progress.line(format_args!(
            "off-site: {} set(s) not copied yet: {}",
            run.status.pending.len(),
            run.status.pending.join(", ")
        ));
    }
}
