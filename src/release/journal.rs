//! The release journal and lock, beside the state file (`proxy.state`):
//! `release-{site}.json` records the step a release is at and what it did that must be undone
//! (written atomically as each step is entered, first when step 1 is) and `release-{site}.lock`
//! is held (flock) by the one release, backup, prune or sync running for the site. The kernel
//! drops the lock when the process dies, so a crash never leaves a stale lock (the file itself
//! is removed when the lock is let go normally); the journal stays, and [`pending_release_note`]
//! tells the next `serve` about it.

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::step::{Effect, Step};
use super::ReleaseError;
use crate::config::{Color, Config, Flow};

/// The state of one release: where it goes, how far it got, and what it did that the failure
/// path must undo. The one place that state lives (see `step.rs` for what is decided from it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "OnDisk")]
pub struct Journal {
    pub site: String,
    pub prefix: String,
    pub from: Color,
    pub to: Color,
    pub from_version: Option<String>,
    pub to_version: String,
    /// The flow chosen when the release started (freeze, or online); a restart walks it again.
    pub flow: Flow,
    /// The step being worked on (the ones before it in the plan are done).
    pub step: Step,
    /// What was done that must be undone if the release does not finish, recorded as each step
    /// is entered ([`Step::effects`]).
    pub effects: BTreeSet<Effect>,
    /// The verified backup set of this release (its id: the folder's name under
    /// `backups/{site}/`), once step 3 (backup) is done. A journal from before sets names a
    /// `.dump` file: that one-member set.
    pub backup: Option<String>,
    /// What `verify_restore` printed on the active database right after the backup.
    pub verify_expected: Option<String>,
    pub started_at: String,
    pub updated_at: String,
    pub pid: u32,
}

impl Journal {
    /// A release of `site` from `from` to `to`, before its first step. Saved when that step is
    /// entered.
    pub fn new(
        site: &str,
        prefix: &str,
        from: Color,
        to: Color,
        from_version: Option<String>,
        to_version: &str,
    ) -> Journal {
        let now = crate::state::now_rfc3339();
        Journal {
            site: site.into(),
            prefix: prefix.into(),
            from,
            to,
            from_version,
            to_version: to_version.into(),
            flow: Flow::Freeze,
            step: Step::Create,
            effects: BTreeSet::new(),
            backup: None,
            verify_expected: None,
            started_at: now.clone(),
            updated_at: now,
            pid: std::process::id(),
        }
    }

    /// Moves to `step`, recording what it may leave behind (before it does anything).
    pub fn enter(&mut self, step: Step, app_read_only: bool) {
        self.step = step;
        self.effects.extend(step.effects(app_read_only));
    }

    pub fn did(&self, e: Effect) -> bool {
        self.effects.contains(&e)
    }

    /// Starting over: the old backup is not restored, a fresh one is taken.
    pub fn forget_backup(&mut self) {
        self.backup = None;
        self.verify_expected = None;
    }
}

/// The journal as any version wrote it. Before `effects`, two flags said what to undo, and the
/// half-made env was always stopped when the switch had not happened.
#[derive(Deserialize)]
struct OnDisk {
    site: String,
    prefix: String,
    from: Color,
    to: Color,
    from_version: Option<String>,
    to_version: String,
    #[serde(default)]
    flow: Flow,
    step: Step,
    #[serde(default)]
    effects: Option<BTreeSet<Effect>>,
    #[serde(default)]
    read_only_on: bool,
    #[serde(default)]
    app_read_only_on: bool,
    #[serde(default)]
    backup: Option<String>,
    #[serde(default)]
    verify_expected: Option<String>,
    started_at: String,
    updated_at: String,
    pid: u32,
}

impl From<OnDisk> for Journal {
    fn from(d: OnDisk) -> Journal {
        let effects = d.effects.unwrap_or_else(|| {
            let mut e = BTreeSet::from([Effect::NewEnv]);
            if d.read_only_on {
                e.insert(Effect::ReadOnly);
            }
            if d.app_read_only_on {
                e.insert(Effect::AppReadOnly);
            }
            e
        });
        Journal {
            site: d.site,
            prefix: d.prefix,
            from: d.from,
            to: d.to,
            from_version: d.from_version,
            to_version: d.to_version,
            flow: d.flow,
            step: d.step,
            effects,
            backup: d.backup,
            verify_expected: d.verify_expected,
            started_at: d.started_at,
            updated_at: d.updated_at,
            pid: d.pid,
        }
    }
}

pub(super) fn dir_of(cfg: &Config) -> PathBuf {
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

/// What `envs sync` calls itself in the lock file (the other commands wait for it).
pub const SYNC_LOCK: &str = "envs sync";

/// The per-site lock; released when dropped or when the process dies. The file is removed
/// when the lock is dropped, so nothing lingers in the state folder after a release.
pub struct Lock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Unlinked while still held: a process waiting on this inode finds it gone after it
        // gets the lock (the inode check in `lock`) and starts over on the new file.
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn lock(cfg: &Config, site: &str, what: &str) -> Result<Lock, ReleaseError> {
    let p = lock_path(cfg, site);
    let io = |source| ReleaseError::Io {
        what: "open the release lock".into(),
        path: p.clone(),
        source,
    };
    std::fs::create_dir_all(dir_of(cfg)).map_err(io)?;
    // A sync (`envs watch` runs one at every container start) holds the lock for well under a
    // second: wait it out rather than refuse. Anything else holding it is refused at once.
    let patience = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut f = loop {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            if still_at(&f, &p) {
                break f;
            }
            // The previous holder removed the file as it let go: lock the one at the path now.
            continue;
        }
        let mut holder = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut holder);
        let holder = holder.trim().to_string();
        // Empty: the holder has just taken it and not written its name yet.
        let brief = holder.is_empty() || holder.starts_with(SYNC_LOCK);
        if !brief || what == SYNC_LOCK || std::time::Instant::now() >= patience {
            return Err(ReleaseError::Locked {
                site: site.into(),
                holder,
                path: p,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(
        f,
        "{what} by pid {} since {}",
        std::process::id(),
        crate::state::now_rfc3339()
    );
    Ok(Lock { _file: f, path: p })
}

/// The locked file is the one at `path` (not one a previous holder unlinked as it let go).
fn still_at(f: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Where the lock of a site lives.
pub fn lock_path(cfg: &Config, site: &str) -> PathBuf {
    dir_of(cfg).join(format!("release-{site}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock file goes with the lock; a second taker is refused while it is held; a process
    /// that locked the inode the holder unlinked sees that it is not the file at the path.
    #[test]
    fn the_lock_file_goes_with_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[proxy]\nhttp = \"127.0.0.1:0\"\nstate = \"{}/state.json\"\n[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.pools]\nblue = [\"127.0.0.1:1\"]\n",
            dir.path().display()
        );
        let file = dir.path().join("t.toml");
        std::fs::write(&file, text).unwrap();
        let cfg = crate::config::load(&file).unwrap();
        let held = lock(&cfg, "w", "release").unwrap();
        let p = lock_path(&cfg, "w");
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .starts_with("release by pid"));
        assert!(matches!(
            lock(&cfg, "w", "backup"),
            Err(ReleaseError::Locked { .. })
        ));
        let waiter = std::fs::File::open(&p).unwrap();
        drop(held);
        assert!(
            !p.exists(),
            "the lock file lingers after the lock is dropped"
        );
        assert!(!still_at(&waiter, &p));
        let again = lock(&cfg, "w", "release").unwrap();
        assert!(still_at(&again._file, &p));
    }

    /// A journal written before `effects` existed (by a release that had turned read-only on)
    /// reads back with the same undo facts.
    #[test]
    fn reads_a_journal_of_the_previous_format() {
        let old = r#"{"site":"wiki","prefix":"w2l-dev","from":"blue","to":"green","from_version":"1","to_version":"2","step":"restore","backup":"x.dump","verify_expected":"3","read_only_on":true,"app_read_only_on":false,"started_at":"t","updated_at":"t","pid":1}"#;
        let j: Journal = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.step, Step::Restore);
        assert_eq!(
            j.effects,
            BTreeSet::from([Effect::NewEnv, Effect::ReadOnly])
        );
        assert_eq!(j.backup.as_deref(), Some("x.dump"));
    }

    #[test]
    fn round_trips() {
        let mut j = Journal::new("wiki", "w2l-dev", Color::Blue, Color::Green, None, "2");
        j.enter(Step::ReadOnly, true);
        let text = serde_json::to_string(&j).unwrap_or_default();
        assert!(
            text.contains(r#""effects":["read-only","app-read-only"]"#),
            "{text}"
        );
        let back: Journal = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(back.effects, j.effects);
        assert_eq!(back.step, Step::ReadOnly);
    }
}
