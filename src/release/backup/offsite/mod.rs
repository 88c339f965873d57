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

pub mod record;
pub mod restic;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::files;
use super::set::{self, Set};
use crate::config::{Config, OffsiteConfig, ReleaseConfig};
use crate::control::api::{BackupEvent, OffsiteCopy, OffsiteStatus};
use crate::control::client::Client;
use crate::release::{human_bytes, Progress, ReleaseError};

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
        repository: o.repository.clone(),
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
            repository: o.repository.clone(),
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

/// The snapshot of set `id` (or of the newest set when None).
pub async fn pick(
    o: &OffsiteConfig,
    site: &str,
    id: Option<&str>,
) -> Result<Snapshot, ReleaseError> {
    let list = snapshots(o, site).await?;
    let found = match id {
        Some(id) => list.into_iter().find(|s| s.set == id),
        None => list.into_iter().next(),
    };
    found.ok_or_else(|| {
        ReleaseError::Failed(match id {
            Some(id) => format!("the off-site repository {} holds no set {id} of {site}; `switchyard backups offsite list {site}` shows the sets it has", o.repository),
            None => format!("the off-site repository {} holds no set of {site} yet; `switchyard backup {site}` takes one and copies it", o.repository),
        })
    })
}

/// Removes a folder when dropped (the `.partial` of a restore, also on Ctrl-C).
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |source| ReleaseError::Io { what, path, source }
}

/// Bytes under `dir` (restic 0.14's restore prints no progress of its own).
fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Restores snapshot `snap` into `scratch` and checks it whole against its own manifest; the
/// set found there (not yet in place).
pub async fn fetch(
    o: &OffsiteConfig,
    snap: &Snapshot,
    scratch: &Path,
    progress: &Progress,
) -> Result<Set, ReleaseError> {
    files::private_dir(scratch).map_err(io("create", scratch))?;
    let (t, what) = (Instant::now(), format!("offsite restore {}", snap.set));
    let target = scratch.display().to_string();
    let tick = || progress.bytes(&what, t, du(scratch));
    restic::run(
        o,
        &["restore", &snap.id, "--target", &target],
        None,
        &mut nothing,
        &tick,
    )
    .await?;
    let dir = scratch.join(&snap.set);
    progress.done(&what, t, du(&dir));
    let s = Set {
        id: snap.set.clone(),
        manifest: set::read_manifest(&dir),
        dir,
        legacy: false,
    };
    let tv = Instant::now();
    let checks = set::verify(&s, false, &|name, n| {
        progress.bytes(&format!("verify {name}"), tv, n)
    })
    .await
    .and_then(|c| set::first_bad(&c).map_or(Ok(()), Err));
    if let Err(why) = checks {
        return Err(ReleaseError::Failed(format!(
            "the off-site copy of set {} (snapshot {}) does not match its manifest: {why}. Nothing was put in the backups folder; `switchyard backups offsite verify` checks the repository",
            snap.set, snap.short_id
        )));
    }
    Ok(s)
}

/// `backups offsite restore SITE [--set ID]`: the set back into `backups/{site}/{id}/`, verified
/// against its manifest before it is made visible.
pub async fn restore(
    cfg: &Config,
    rel: &ReleaseConfig,
    site: &str,
    id: Option<&str>,
    progress: &Progress,
) -> Result<Set, ReleaseError> {
    let o = config(cfg)?;
    let _lock = crate::release::journal::lock(cfg, site, "backups offsite restore")?;
    let snap = pick(o, site, id).await?;
    restore_snapshot(o, rel, site, &snap, progress).await
}

/// [`restore`] once the lock is held and the snapshot chosen (a drill with `--offsite` too).
pub async fn restore_snapshot(
    o: &OffsiteConfig,
    rel: &ReleaseConfig,
    site: &str,
    snap: &Snapshot,
    progress: &Progress,
) -> Result<Set, ReleaseError> {
    let site_dir = super::site_dir(rel, site);
    let final_dir = site_dir.join(&snap.set);
    if final_dir.exists() {
        return Err(ReleaseError::Failed(format!(
            "set {} is already in {}; nothing was restored (`switchyard backups verify {site}` checks it)",
            snap.set,
            site_dir.display()
        )));
    }
    files::private_dir(&site_dir).map_err(io("create the backups folder", &site_dir))?;
    let scratch = Scratch(site_dir.join(format!(".{}.restore.partial", snap.set)));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let s = fetch(o, snap, &scratch.0, progress).await?;
    // Private as when taken, whatever restic restored the modes as.
    files::private_dir(&s.dir).map_err(io("make private", &s.dir))?;
    for e in std::fs::read_dir(&s.dir)
        .map_err(io("read", &s.dir))?
        .flatten()
    {
        use std::os::unix::fs::PermissionsExt;
        let _ =
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(files::FILE_MODE));
    }
    let rec = record::Copied {
        repository: o.repository.clone(),
        snapshot: snap.id.clone(),
        copied_at: snap.time.clone(),
    };
    record::write_copied(&s, &rec).map_err(io("record the off-site copy in", &s.dir))?;
    std::fs::rename(&s.dir, &final_dir).map_err(io("move the set into place", &final_dir))?;
    files::sync_dir(&site_dir).map_err(io("fsync", &site_dir))?;
    let size = s.manifest.as_ref().map(|m| m.size()).unwrap_or(0);
    progress.line(format_args!(
        "set {} restored from snapshot {} and verified: {} in {}",
        snap.set,
        snap.short_id,
        human_bytes(size),
        final_dir.display()
    ));
    Ok(Set {
        dir: final_dir,
        ..s
    })
}

/// What `backups offsite verify` found.
#[derive(Debug, serde::Serialize)]
pub struct Verified {
    pub repository: String,
    /// `restic check`'s last line (the repository's structure and index).
    pub check: String,
    pub set: String,
    pub snapshot: String,
    pub members: usize,
    pub size: u64,
}

/// `backups offsite verify SITE [--set ID]`: `restic check` (the repository is whole), then the
/// set (default: the newest) restored into a scratch folder and every member re-hashed against
/// its manifest (what comes back is what was taken), then the scratch folder removed.
pub async fn verify(
    cfg: &Config,
    rel: &ReleaseConfig,
    site: &str,
    id: Option<&str>,
    progress: &Progress,
) -> Result<Verified, ReleaseError> {
    let o = config(cfg)?;
    let t = Instant::now();
    let out = restic::run(o, &["check"], None, &mut nothing, &|| {}).await?;
    let check = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    progress.line(format_args!(
        "restic check: {check} ({:.2}s)",
        t.elapsed().as_secs_f64()
    ));
    let snap = pick(o, site, id).await?;
    let site_dir = super::site_dir(rel, site);
    files::private_dir(&site_dir).map_err(io("create the backups folder", &site_dir))?;
    let scratch = Scratch(site_dir.join(format!(".{}.verify.partial", snap.set)));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let s = fetch(o, &snap, &scratch.0, progress).await?;
    let m = s
        .manifest
        .as_ref()
        .map_err(|e| ReleaseError::Failed(e.clone()))?;
    Ok(Verified {
        repository: o.repository.clone(),
        check,
        set: snap.set.clone(),
        snapshot: snap.id.clone(),
        members: m.members.len(),
        size: m.size(),
    })
}

/// A release's off-site copy: with `mode = "required"` at step 3 (`at_backup`: the release waits
/// for it and fails with it), with `"after"` once the release is done (a failure is printed
/// loudly, recorded and retried by the next `backup`; the release itself stands).
pub async fn for_release(
    r: &crate::release::Release<'_>,
    at_backup: bool,
) -> Result<(), ReleaseError> {
    let Some(o) = &r.cfg.offsite else {
        return Ok(());
    };
    if at_backup != (o.mode == crate::config::OffsiteMode::Required) {
        return Ok(());
    }
    let run = copy_pending(r.cfg, r.rel, r.name(), Some(r.client), &r.progress).await?;
    print_run(&run, &r.progress);
    match run.error {
        None => Ok(()),
        Some(e) if at_backup => Err(ReleaseError::Failed(format!(
            "the set is verified locally but its off-site copy failed, and [backups.offsite] mode = \"required\": {e}"
        ))),
        Some(e) => {
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
