//! The Docker release coordinator (bollard). Never on the request path: it is a client of the
//! Docker engine and of the running daemon's control socket, so a daemon restart never interrupts a
//! release and a release crash never takes the proxy down. `LIFECYCLE.md` beside this file says
//! what a release does, step by step, and what a failure, `--abort` and `--resume` do.
//!
//! - `step.rs`: the six steps and the effects a step leaves behind.
//! - `plan.rs`: the decisions about them (plans for start and resume, what to undo), pure and
//!   unit-tested.
//! - `journal.rs`: the state of a release on disk (one atomic write per step) and the site lock.
//! - `driver.rs`: `release` start / `--resume` / `--abort`: walks a plan, races Ctrl-C/SIGTERM.
//! - `steps.rs`: one function per step. `unwind.rs`: the failure path.
//! - `context.rs`: [`Release`], the site + engine + control client every command works with.
//! - `up.rs`: a first environment. `envs.rs`: list and prune environments.
//! - `sync.rs`: the pools follow the web containers' published ports (after a restart);
//!   `watch.rs` runs it at every container start; `bindings.rs` remembers which environment
//!   each pool follows.
//! - `online/`: the online flow (issue 18): copy and catch up from the binlog while writable.
//! - `backup/`: backup sets (dump + data volume archives, sha256 manifest, read back and
//!   verified), restored whole; list/verify/prune.
//! - `drill.rs`: restore drills: a set into a scratch environment, checked, then removed.
//! - `docker/`: the engine: names, environments, exec streaming, readiness.

pub mod backup;
mod bindings;
mod context;
pub mod docker;
pub mod drill;
mod driver;
pub mod engine;
pub mod envs;
pub mod journal;
mod online;
mod plan;
pub mod step;
mod steps;
mod swarm;
pub mod sync;
mod unwind;
mod up;
mod watch;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::control::client::ControlError;

pub use context::{site_of, Release};
pub use driver::{abort, resume, start};
pub use journal::pending_release_note;
pub use online::check as check_online;
pub use step::Step;
pub use up::up;
pub use watch::watch;

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
    #[error("image(s) missing on swarm nodes: {}. Nothing was changed; load each image on its node (`docker save IMAGE | docker -H ENGINE load`): there is no registry and switchyard never pulls", .missing.join(", "))]
    MissingOnNodes { missing: Vec<String> },
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
    #[error(transparent)]
    Offsite(#[from] backup::offsite::OffsiteError),
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

/// Progress lines: elapsed time since the start, then the step, its time, bytes and rate. On
/// stdout, or on stderr when stdout carries a `--json` document.
pub struct Progress {
    start: Instant,
    last_bytes: Mutex<Instant>,
    stderr: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            start: Instant::now(),
            last_bytes: Mutex::new(Instant::now()),
            stderr: false,
        }
    }
}

impl Progress {
    /// Progress on stderr (stdout is for one JSON document).
    pub fn on_stderr() -> Progress {
        Progress {
            stderr: true,
            ..Progress::default()
        }
    }

    pub fn line(&self, msg: impl fmt::Display) {
        let text = format!("[{:>7.2}s] {msg}\n", self.start.elapsed().as_secs_f64());
        if self.stderr {
            let mut out = std::io::stderr().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    /// `what` moved `n` bytes since `since`: at most one line a second (over all of them), with
    /// the time and the rate.
    pub fn bytes(&self, what: &str, since: Instant, n: u64) {
        let Ok(mut last) = self.last_bytes.lock() else {
            return;
        };
        if last.elapsed() >= Duration::from_secs(1) && since.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            drop(last);
            self.line(format_args!(
                "          {}",
                rate_line(what, since.elapsed(), n)
            ));
        }
    }

    /// `what` is done: one line with its bytes, time and rate.
    pub fn done(&self, what: &str, since: Instant, n: u64) {
        self.line(format_args!(
            "          {} done",
            rate_line(what, since.elapsed(), n)
        ));
    }
}

/// `what: SIZE in TIME (RATE/s)`.
pub fn rate_line(what: &str, took: Duration, n: u64) -> String {
    let s = took.as_secs_f64();
    let rate = if s > 0.0 { (n as f64 / s) as u64 } else { 0 };
    format!(
        "{what}: {} in {:.2}s ({}/s)",
        human_bytes(n),
        s,
        human_bytes(rate)
    )
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

/// Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(
            rate_line("backup db", Duration::from_secs(2), 4 << 20),
            "backup db: 4.0 MiB in 2.00s (2.0 MiB/s)"
        );
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
