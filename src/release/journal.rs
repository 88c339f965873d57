//! The release journal and lock, beside the state file (`proxy.state`):
//! `release-{site}.json` records the step a release is at (written atomically before each step)
//! and `release-{site}.lock` is held (flock) by the one release, backup or prune running for the
//! site. The kernel drops the lock when the process dies, so a crash never leaves a stale lock;
//! the journal stays, and [`pending_release_note`] tells the next `serve` about it.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ReleaseError, Step};
use crate::config::{Color, Config};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub site: String,
    pub prefix: String,
    pub from: Color,
    pub to: Color,
    pub from_version: Option<String>,
    pub to_version: String,
    /// The step being worked on (the ones before it are done).
    pub step: Step,
    /// The verified backup file of this release, once step 2 is done.
    pub backup: Option<String>,
    /// What `verify_restore` printed on the active database right after the backup.
    #[serde(default)]
    pub verify_expected: Option<String>,
    /// Whether this release turned read-only on (so abort knows to turn it off).
    pub read_only_on: bool,
    pub app_read_only_on: bool,
    pub started_at: String,
    pub updated_at: String,
    pub pid: u32,
}

fn dir_of(cfg: &Config) -> PathBuf {
    match cfg.proxy.state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub fn path(cfg: &Config, site: &str) -> PathBuf {
    dir_of(cfg).join(format!("release-{site}.json"))
}

pub fn load(cfg: &Config, site: &str) -> Result<Option<Journal>, ReleaseError> {
    let p = path(cfg, site);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            ReleaseError::Failed(format!(
                "the release journal {} is corrupt ({e}); look at it, then remove it to start over",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReleaseError::Io {
            what: "read the release journal".into(),
            path: p,
            source,
        }),
    }
}

pub fn save(cfg: &Config, j: &mut Journal) -> Result<(), ReleaseError> {
    j.updated_at = crate::state::now_rfc3339();
    let p = path(cfg, &j.site);
    let bytes = serde_json::to_vec_pretty(j)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the journal: {e}")))?;
    crate::state::write_atomic(&p, &bytes).map_err(|source| ReleaseError::Io {
        what: "write the release journal".into(),
        path: p,
        source,
    })
}

pub fn remove(cfg: &Config, site: &str) -> Result<(), ReleaseError> {
    let p = path(cfg, site);
    match std::fs::remove_file(&p) {
        Ok(()) => {
            let _ = std::fs::remove_file(p.with_file_name(format!("release-{site}.json.bak")));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ReleaseError::Io {
            what: "remove the release journal".into(),
            path: p,
            source,
        }),
    }
}

/// What the daemon logs at startup when a release of some site did not finish.
pub fn pending_release_note(cfg: &Config) -> Option<String> {
    let notes: Vec<String> = cfg
        .sites
        .iter()
        .filter(|s| s.release.is_some())
        .filter_map(|s| match load(cfg, &s.name) {
            Ok(Some(j)) => Some(format!(
                "an unfinished release of {} ({} {} → {} {}) was found at step {}; the old environment ({}) stays active; run `switchyard release {} --resume` or `--abort`",
                j.site,
                j.from,
                j.from_version.as_deref().unwrap_or("?"),
                j.to,
                j.to_version,
                j.step,
                j.from,
                j.site
            )),
            Ok(None) => None,
            Err(e) => Some(format!("{e}")),
        })
        .collect();
    (!notes.is_empty()).then(|| notes.join("\n"))
}

/// The per-site lock; released when dropped or when the process dies.
pub struct Lock {
    _file: std::fs::File,
}

pub fn lock(cfg: &Config, site: &str, what: &str) -> Result<Lock, ReleaseError> {
    let p = dir_of(cfg).join(format!("release-{site}.lock"));
    let io = |source| ReleaseError::Io {
        what: "open the release lock".into(),
        path: p.clone(),
        source,
    };
    std::fs::create_dir_all(dir_of(cfg)).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(io)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(ReleaseError::Locked {
            site: site.into(),
            holder: holder.trim().to_string(),
            path: p,
        });
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(
        f,
        "{what} by pid {} since {}",
        std::process::id(),
        crate::state::now_rfc3339()
    );
    Ok(Lock { _file: f })
}

/// Where the lock of a site lives.
pub fn lock_path(cfg: &Config, site: &str) -> PathBuf {
    dir_of(cfg).join(format!("release-{site}.lock"))
}
