//! Sets coming back from the repository: restored by restic into a `.partial` folder beside the
//! local sets, every member re-hashed against the set's own manifest, and only then renamed into
//! place (`restore`), or removed after the check (`verify`, a drill with `--offsite`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::super::files;
use super::super::set::{self, Set};
use super::{config, nothing, record, restic, snapshots, Snapshot};
use crate::config::{Config, OffsiteConfig, ReleaseConfig};
use crate::release::{human_bytes, Progress, ReleaseError};

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
            Some(id) => format!("the off-site repository {} holds no set {id} of {site}; `switchyard backups offsite list {site}` shows the sets it has", o.shown()),
            None => format!("the off-site repository {} holds no set of {site} yet; `switchyard backup {site}` takes one and copies it", o.shown()),
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
    let site_dir = super::super::site_dir(rel, site);
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
        repository: o.shown(),
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
    // The scratch folder is beside the sets: prune (under the same lock) must not sweep it.
    let _lock = crate::release::journal::lock(cfg, site, "backups offsite verify")?;
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
    let site_dir = super::super::site_dir(rel, site);
    files::private_dir(&site_dir).map_err(io("create the backups folder", &site_dir))?;
    let scratch = Scratch(site_dir.join(format!(".{}.verify.partial", snap.set)));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let s = fetch(o, &snap, &scratch.0, progress).await?;
    let m = s
        .manifest
        .as_ref()
        .map_err(|e| ReleaseError::Failed(e.clone()))?;
    Ok(Verified {
        repository: o.shown(),
        check,
        set: snap.set.clone(),
        snapshot: snap.id.clone(),
        members: m.members.len(),
        size: m.size(),
    })
}
