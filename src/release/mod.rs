//! The Docker release coordinator (bollard). Never on the request path: it is a client of the
//! Docker engine and of the running daemon's control socket, so a daemon restart never interrupts a
//! release and a release crash never takes the proxy down.
//!
//! - `docker.rs`: the engine (environments, exec streaming, listing by label).
//! - `backup.rs`: dumps on disk with a sha256 manifest, read back and verified; list/verify/prune.
//! - `journal.rs`: the journal (one atomic write per step) and the per-site lock.
//! - `steps.rs`: the six steps of a release, and the failure path.
//! - `cli.rs`: the entry points (up, release, envs, backup, backups).
//!
//! # LIFECYCLE of a release (`switchyard release SITE --version V`)
//!
//! ```text
//!  preflight ── images of V all local? active env running and in the active pool? no journal?
//!     │          lock taken? ──(no)──▶ exit 1, nothing changed
//!     │ journal written (step = create)
//!     ▼
//!  1 create ──── idle color's pool emptied, its old env removed; new env {prefix}-{idle}-* created
//!     │          with version V; non-web services started and waited for (HEALTHCHECK or port);
//!     │          the web container is created but NOT started (it starts at step 5, on restored
//!     │          data, so an app that installs itself on an empty database cannot race the restore)
//!  2 read-only ─ PUT /v1/read-only (returns once writes in flight are done) + app_read_only.on
//!     │          in the active web                               ┐
//!  3 backup ──── backup cmd in the active db → .partial file,    │
//!     │          sha256 while streaming, fsync, read back,        │
//!     │          compare, manifest, rename; verify_restore        │ the read-only window:
//!     │          output of the active db remembered              │ backup + restore + migrate
//!  4 restore ─── restore cmd in the new db, dump on stdin;        │ + health + switch
//!     │          verify_restore must print the same               │
//!  5 migrate ─── new web started; migrate cmd in it                │
//!  6 switch ──── new web /health polled on its published port     │
//!     │          (deadline health_timeout), PUT pool, POST switch │
//!     │          (retried while the daemon still finds it         │
//!     │          unhealthy), app_read_only.off, read-only off    ┘
//!     ▼
//!  done: journal removed, old backups pruned; the old env is left running for `rollback`.
//! ```
//!
//! Creating the new environment comes first (DESIGN.md lists it third) because starting a
//! database (MariaDB initialising its data directory: ~5 s here) has nothing to wait for from the
//! backup, and doing it before read-only keeps it out of the read-only window. The old env is
//! untouched either way.
//!
//! The journal is rewritten (atomically) before each step starts. On a failure at any step, or
//! Ctrl-C / SIGTERM, the failure path runs: if the switch did not happen the half-made env is
//! stopped (kept for inspection) and its pool emptied, app_read_only.off runs in the active web,
//! read-only is lifted, the journal is removed, and the command exits 1 naming the step and the
//! reason. If a clean-up action itself fails, the journal stays so `release --abort` can finish it.
//!
//! After a crash the journal is still there: the daemon says so at startup and keeps the old env
//! active (read-only stays on, as recorded in its state). `release --resume` finishes if the
//! switch had already happened; when read-only is still on and the journal's backup still
//! verifies it makes a fresh new env and goes on from the restore; otherwise it starts over.
//! `release --abort` runs the failure path.

pub mod backup;
pub mod cli;
pub mod docker;
pub mod journal;
mod steps;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::control::client::ControlError;

pub use journal::pending_release_note;

/// The six steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Create,
    ReadOnly,
    Backup,
    Restore,
    Migrate,
    Switch,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Create,
        Step::ReadOnly,
        Step::Backup,
        Step::Restore,
        Step::Migrate,
        Step::Switch,
    ];

    pub fn number(self) -> usize {
        self as usize + 1
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::ReadOnly => "read-only",
            Step::Backup => "backup",
            Step::Restore => "restore",
            Step::Migrate => "migrate",
            Step::Switch => "switch",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/6 {}", self.number(), self.name())
    }
}

/// Everything that can go wrong at this boundary, written for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no site named `{0}` in the config")]
    UnknownSite(String),
    #[error("site `{0}` has no [site.release] section; add one to manage it on Docker (see DESIGN.md \"Releases on Docker\")")]
    NoRelease(String),
    #[error("cannot reach the Docker engine: {source}. Is dockerd running, and may this user use /var/run/docker.sock (or DOCKER_HOST)?")]
    DockerUnreachable { source: bollard::errors::Error },
    #[error("Docker refused to {what}: {source}")]
    Docker {
        what: String,
        source: bollard::errors::Error,
    },
    #[error("image(s) not on this Docker engine: {}. Nothing was changed; build or load them first (switchyard never pulls)", .images.join(", "))]
    MissingImages { images: Vec<String> },
    #[error("the daemon refused to {what}: {source}")]
    Control { what: String, source: ControlError },
    #[error("another release, backup or prune of {site} is running ({holder}); wait for it, or if none is running remove {path}")]
    Locked {
        site: String,
        holder: String,
        path: PathBuf,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} failed in {container} with exit code {code}{}", if .output.is_empty() { String::new() } else { format!(": {}", .output) })]
    Command {
        what: String,
        container: String,
        code: i64,
        output: String,
    },
    #[error("{what} is not ready: {why}")]
    NotReady { what: String, why: String },
    #[error("{0}")]
    Failed(String),
    #[error("interrupted (Ctrl-C or SIGTERM)")]
    Interrupted,
    #[error("release of {site} failed at step {step}: {reason}\n{}", .cleanup.iter().map(|c| format!("  - {c}")).collect::<Vec<_>>().join("\n"))]
    StepFailed {
        site: String,
        step: Step,
        reason: String,
        cleanup: Vec<String>,
    },
}

fn ctl(what: impl Into<String>) -> impl FnOnce(ControlError) -> ReleaseError {
    let what = what.into();
    move |source| ReleaseError::Control { what, source }
}

/// Progress lines on stdout: elapsed time since the start, the step, its time and bytes.
pub struct Progress {
    start: Instant,
    last_bytes: Mutex<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            start: Instant::now(),
            last_bytes: Mutex::new(Instant::now()),
        }
    }
}

impl Progress {
    pub fn line(&self, msg: impl fmt::Display) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{:>7.2}s] {msg}", self.start.elapsed().as_secs_f64());
        let _ = out.flush();
    }

    /// At most one "bytes so far" line a second.
    pub fn bytes(&self, what: &str, n: u64) {
        let Ok(mut last) = self.last_bytes.lock() else {
            return;
        };
        if last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            drop(last);
            self.line(format_args!("          {what}: {} so far", human_bytes(n)));
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_ordered_and_named() {
        assert_eq!(
            Step::ALL.iter().map(|s| s.number()).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(Step::Restore.to_string(), "4/6 restore");
        assert_eq!(
            serde_json::to_string(&Step::ReadOnly).ok().as_deref(),
            Some("\"read-only\"")
        );
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
