//! Waiting for the other edges, after a change committed at revision R.
//!
//! - [`Cluster::spread`] (every change): until every live edge (lease alive) acknowledged
//!   `applied >= R`, or `ack_timeout` passed; the answer says which.
//! - [`Cluster::drained`] (read-only on): until no write is in flight for the covered sites on
//!   any edge. An edge is done when its ack says `applied >= R` and zero writes in flight there
//!   (sampled after its flags went up). An edge that stopped answering is done once the time it
//!   could still admit or finish a write has passed: its last freshness confirmation was an ack
//!   guarded on a revision < R, so it was *sent* before R committed and before this edge saw it
//!   (`seen.at`); it refuses writes from that moment + F, and its last admitted write ends by
//!   + W. So the wait for it ends at `seen.at + F + W + slack`.
//!
//! Every edge that may be fresh has an ack key (acks have no lease; an edge is never fresh
//! before its first ack), so none is missed. docs/cluster.md spells out the timing assumptions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;
use crate::control::api::ClusterSpread;
use crate::ops::OpError;
use crate::routing::SiteShared;

/// Allowance for timers firing late and clock rates differing between edges (added to F + W).
const SLACK: Duration = Duration::from_millis(250);

impl Cluster {
    /// Waits until every live edge acknowledged `rev`, or `ack_timeout` passed.
    pub async fn spread(&self, rev: i64) -> ClusterSpread {
        let started = Instant::now();
        let deadline = started + self.cfg.ack_timeout;
        let mut rx = self.changed.subscribe();
        loop {
            let (acked, missing) = self.acked(rev);
            let done = missing.is_empty();
            if done || Instant::now() >= deadline {
                let s = ClusterSpread {
                    revision: rev,
                    complete: done,
                    acked,
                    missing,
                    bounded: vec![],
                    waited_ms: started.elapsed().as_millis() as u64,
                };
                if !done {
                    tracing::warn!(revision = rev, missing = ?s.missing, "answering before every live edge acknowledged the change (ack_timeout)");
                }
                self.record_change(&s);
                return s;
            }
            let _ = tokio::time::timeout_at(deadline.into(), rx.changed()).await;
        }
    }

    /// (acknowledged, not yet) among the live edges; this edge counts by what it installed.
    fn acked(&self, rev: i64) -> (Vec<String>, Vec<String>) {
        let me = &self.cfg.edge_id;
        let mine = self.applied() >= rev;
        let v = self.view();
        let mut acked = Vec::new();
        let mut missing = Vec::new();
        let mut ids: Vec<&String> = v.edges.keys().collect();
        if !v.edges.contains_key(me) {
            ids.push(me);
        }
        for id in ids {
            let ok = if id == me {
                mine
            } else {
                v.acks.get(id).is_some_and(|s| s.ack.applied >= rev)
            };
            if ok {
                acked.push(id.clone());
            } else {
                missing.push(id.clone());
            }
        }
        (acked, missing)
    }

    /// The read-only barrier across edges (see the module doc).
    pub async fn drained(
        &self,
        rev: i64,
        _committed_at: Instant,
        local: &[Arc<SiteShared>],
        wait: Duration,
    ) -> Result<ClusterSpread, OpError> {
        let started = Instant::now();
        let deadline = started + wait;
        let bound = self.cfg.freshness + self.cfg.max_write_duration + SLACK;
        let sites: Vec<String> = local.iter().map(|s| s.name.to_string()).collect();
        let me = self.cfg.edge_id.clone();
        let mut rx = self.changed.subscribe();
        loop {
            let here = crate::ops::local_inflight(local);
            let mut acked = vec![];
            let mut bounded = vec![];
            // (edge, what it still waits for, until when at most)
            let mut waiting: Vec<(String, String, Option<Instant>)> = vec![];
            if here == 0 {
                acked.push(me.clone());
            } else {
                waiting.push((me.clone(), format!("{here} write(s) in flight"), None));
            }
            // The bounds below are only sound once this edge has seen every ack committed
            // before R: its watch must have delivered revision R.
            let seen = self.seen.load(std::sync::atomic::Ordering::SeqCst);
            if seen < rev {
                waiting.push((
                    me.clone(),
                    format!("its watch has delivered revision {seen}, not yet {rev}"),
                    None,
                ));
            }
            {
                let v = self.view();
                for (id, seen) in v.acks.iter().filter(|(id, _)| **id != me) {
                    let a = &seen.ack;
                    let inflight: u64 = sites
                        .iter()
                        .filter_map(|s| a.sites.get(s))
                        .map(|s| s.writes_in_flight)
                        .sum();
                    if a.applied >= rev && inflight == 0 {
                        acked.push(id.clone());
                        continue;
                    }
                    let until = seen.at + bound;
                    if Instant::now() >= until {
                        bounded.push(id.clone());
                    } else {
                        let what = if a.applied < rev {
                            format!("has not acknowledged revision {rev} (last {})", a.applied)
                        } else {
                            format!("{inflight} write(s) in flight")
                        };
                        waiting.push((id.clone(), what, Some(until)));
                    }
                }
            }
            if waiting.is_empty() {
                let s = ClusterSpread {
                    revision: rev,
                    complete: true,
                    acked,
                    missing: vec![],
                    bounded,
                    waited_ms: started.elapsed().as_millis() as u64,
                };
                if !s.bounded.is_empty() {
                    tracing::warn!(edges = ?s.bounded, "read-only barrier: counted edges that stopped answering as drained (their freshness bound plus max_write_duration passed)");
                }
                self.record_change(&s);
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let list: Vec<String> = waiting
                    .iter()
                    .map(|(id, what, until)| match until {
                        Some(u) => format!(
                            "{id}: {what}, drained by its freshness bound in {} ms at the latest",
                            u.saturating_duration_since(Instant::now()).as_millis()
                        ),
                        None => format!("{id}: {what}"),
                    })
                    .collect();
                return Err(OpError::Timeout(format!(
                    "read-only is ON, but after {}s not every edge has drained its writes ({}); do not start a backup yet — retry `read-only on` to wait again",
                    wait.as_secs(),
                    list.join("; ")
                )));
            }
            // Woken by acks; polled for this edge's own counter and for bounds passing.
            let _ = tokio::time::timeout(Duration::from_millis(5), rx.changed()).await;
        }
    }
}
