//! Where the state lives, behind the one thing a verb asks of it: "commit this next state, then
//! wait until it is everywhere".
//!
//! - [`Store::File`]: one edge. Commit = save the state file atomically; it is everywhere once
//!   this edge's table is stored, and writes in flight are this edge's counters.
//! - [`Store::Cluster`]: several edges (`[cluster]`). Commit = one etcd transaction guarded on the
//!   revision the change was based on (an unknown outcome is read back, never retried blindly);
//!   "everywhere" = every live edge acknowledged the revision, and for read-only also reported
//!   no write in flight (docs/cluster.md).
//!
//! No verb knows more than that; the table is built and stored by `Ops::install` either way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::OpError;
use crate::cluster::{Cluster, Committed};
use crate::config::Color;
use crate::control::api::ClusterSpread;
use crate::routing::SiteShared;
use crate::state::{self, State};

pub(crate) enum Store {
    File(PathBuf),
    Cluster(Arc<Cluster>),
}

/// What a commit answered.
pub(crate) enum Outcome {
    /// Durable at this version.
    Done(u64),
    /// Not made: the state had moved on to this one (cluster only), to be installed.
    Moved(Box<State>),
}

impl Store {
    /// Makes `next` (the successor of `base`) durable. An `Err` means it was not made.
    pub async fn commit(&self, base: &State, next: &State) -> Result<Outcome, OpError> {
        match self {
            Store::File(path) => {
                let mut n = next.clone();
                n.version = base.version + 1;
                state::save(path, &n)?;
                Ok(Outcome::Done(n.version))
            }
            Store::Cluster(c) => match c.commit(base, next).await? {
                Committed::Done(rev) => Ok(Outcome::Done(rev as u64)),
                Committed::Moved(s) => Ok(Outcome::Moved(s)),
            },
        }
    }

    /// Records "a write reached the active color since the switch" without a new version (the
    /// file store; the cluster store commits it like any change).
    pub fn is_file(&self) -> bool {
        matches!(self, Store::File(_))
    }

    /// Waits until `version` is applied everywhere, within the cluster's `ack_timeout`.
    /// None for the file store: this edge is everywhere.
    pub async fn spread(&self, version: u64) -> Option<ClusterSpread> {
        match self {
            Store::File(_) => None,
            Store::Cluster(c) => Some(c.spread(version as i64).await),
        }
    }

    /// The read-only barrier: waits until no write is in flight for the `covered` sites on this
    /// edge and, with a cluster, on every edge (acknowledged, or past the freshness bound for an
    /// edge that stopped answering). `Err(Timeout)` names what is still in flight after `wait`.
    pub async fn drained(
        &self,
        version: u64,
        committed_at: Instant,
        covered: &[Arc<SiteShared>],
        wait: Duration,
    ) -> Result<Option<ClusterSpread>, OpError> {
        let started = Instant::now();
        match self {
            Store::File(_) => loop {
                let left = local_inflight(covered);
                if left == 0 {
                    return Ok(None);
                }
                if started.elapsed() >= wait {
                    return Err(OpError::Timeout(format!(
                            "read-only is ON, but {left} write(s) were still in flight after {}s; do not start a backup yet — retry `read-only on` to wait again",
                            wait.as_secs()
                        )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            },
            Store::Cluster(c) => c
                .drained(version as i64, committed_at, covered, wait)
                .await
                .map(Some),
        }
    }

    /// Writes the other edges forwarded to `color` of `site` since its last switch (0 alone).
    pub fn others_writes(&self, site: &str, color: Color) -> u64 {
        match self {
            Store::File(_) => 0,
            Store::Cluster(c) => c.others_writes(site, color),
        }
    }

    /// Writes in flight for `site` on the other edges (0 alone).
    pub fn others_inflight(&self, site: &str) -> u64 {
        match self {
            Store::File(_) => 0,
            Store::Cluster(c) => c.others_inflight(site),
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            Store::File(_) => None,
            Store::Cluster(c) => Some(c),
        }
    }
}

/// Writes in flight on this edge for these sites.
pub(crate) fn local_inflight(covered: &[Arc<SiteShared>]) -> usize {
    covered
        .iter()
        .map(|s| s.inflight_writes.load(std::sync::atomic::Ordering::SeqCst))
        .sum()
}
