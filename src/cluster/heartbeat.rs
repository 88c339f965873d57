//! This edge's presence: its registration under a lease (`edges/{id}`), its acknowledgement
//! (`acks/{id}`), the freshness flag the request path reads, and the local snapshot.
//!
//! The ack is also the freshness confirmation. It is written as
//! `If mod_revision(state) == the revision this edge serves Then put(ack) Else get(state)`, so a
//! success proves the edge's view was current when etcd committed the ack; the edge then stays
//! fresh until the moment it *sent* that ack plus `freshness` (F). A failure, or a guard that no
//! longer holds, confirms nothing (the else branch hands back the newer state, which is
//! installed at once). A timer lowers `routing::FRESH` when F has passed since the last
//! confirmation: from then on the edge refuses writes (503) and keeps serving reads from its
//! last table. docs/cluster.md has the argument this serves.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::Notify;

use super::keys::{Ack, EdgeInfo, SiteAck};
use super::Cluster;
use crate::config::Color;
use crate::ops::Ops;
use crate::routing::FRESH;
use crate::state::{self, SnapshotTag};

/// Until when this edge counts as fresh.
pub(super) struct Freshness {
    limit: Duration,
    until: Mutex<Option<Instant>>,
    confirmed: Mutex<Option<Instant>>,
    wake: Notify,
}

impl Freshness {
    pub fn new(limit: Duration) -> Freshness {
        Freshness {
            limit,
            until: Mutex::new(None),
            confirmed: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    /// An ack sent at `sent` was committed with its guard holding.
    fn confirm(&self, sent: Instant) {
        let until = sent + self.limit;
        {
            let mut u = self.until.lock().unwrap_or_else(|e| e.into_inner());
            if u.is_none_or(|u| u < until) {
                *u = Some(until);
            }
            *self.confirmed.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent);
        }
        if Instant::now() < until && !FRESH.swap(true, Ordering::Relaxed) {
            tracing::info!("cluster state confirmed: this edge accepts writes again");
        }
        self.wake.notify_one();
    }

    pub fn staleness(&self) -> Option<Duration> {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    fn until(&self) -> Option<Instant> {
        *self.until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Lowers `FRESH` once F has passed since the last confirmation.
pub(super) async fn freshness_timer(c: Arc<Cluster>) {
    loop {
        let wake = c.fresh.wake.notified();
        match c.fresh.until() {
            Some(u) if Instant::now() < u => {
                tokio::select! {
                    _ = tokio::time::sleep_until(u.into()) => {}
                    _ = wake => {}
                }
            }
            _ => {
                if FRESH.swap(false, Ordering::Relaxed) {
                    tracing::warn!(freshness = ?c.cfg.freshness, "cluster state unknown: no confirmation from etcd within the freshness limit; this edge refuses writes (503) and serves reads from its last table");
                }
                wake.await;
            }
        }
    }
}

/// What this edge acknowledges now. The revision is read before the counters, so an ack that
/// says "applied >= R" sampled its writes in flight after R's read-only flags went up.
fn current_ack(c: &Cluster, ops: &Ops) -> Ack {
    let applied = c.applied();
    let state_rev = c.state_rev.load(Ordering::SeqCst);
    let t = ops.table.load();
    let sites = t
        .sites
        .iter()
        .map(|s| {
            let sh = &s.shared;
            (
                s.name.to_string(),
                SiteAck {
                    active: Some(s.active),
                    writes_in_flight: sh.inflight_writes.load(Ordering::SeqCst) as u64,
                    writes_since_switch: Color::ALL.iter().map(|c| (*c, sh.writes(*c))).collect(),
                    read_only: sh.read_only.load(Ordering::SeqCst),
                },
            )
        })
        .collect();
    Ack {
        applied,
        state_rev,
        fresh: FRESH.load(Ordering::Relaxed),
        sites,
    }
}

/// The ack loop: after each applied revision, on the heartbeat tick (F/4), and every few
/// milliseconds while a read-only site still has writes in flight here.
pub(super) async fn acks(c: Arc<Cluster>, ops: Arc<Ops>) {
    let tick = (c.cfg.freshness / 4).max(Duration::from_millis(50));
    let key = c.keys.ack(&c.cfg.edge_id);
    let state_key = c.keys.state();
    let mut last: Option<(Ack, Instant)> = None;
    loop {
        if c.leaving.load(Ordering::SeqCst) {
            return;
        }
        let ack = current_ack(&c, &ops);
        let draining = ack
            .sites
            .values()
            .any(|s| s.read_only && s.writes_in_flight > 0);
        let due = last
            .as_ref()
            .is_none_or(|(a, at)| *a != ack || at.elapsed() >= tick);
        if due {
            let sent = Instant::now();
            let value = serde_json::to_vec(&ack).expect("an ack serializes");
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    state_key.clone(),
                    CompareOp::Equal,
                    ack.state_rev,
                )])
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(state_key.clone(), None)]);
            match c
                .etcd
                .call("ack", |mut cl| async move { cl.txn(txn).await })
                .await
            {
                Ok(r) if r.succeeded() => {
                    c.fresh.confirm(sent);
                    c.metrics.cluster_acks.inc();
                    last = Some((ack, sent));
                }
                Ok(r) => {
                    // Behind: the state moved on and the watch has not brought it yet. Install
                    // what the else branch read, and acknowledge that.
                    let mut applied = false;
                    for op in r.op_responses() {
                        if let TxnOpResponse::Get(g) = op {
                            if let Some(kv) = g.kvs().first() {
                                if let Ok((s, _)) = c.decode(kv.value(), kv.mod_revision()) {
                                    applied = ops.apply_remote(s).await;
                                }
                            }
                        }
                    }
                    if !applied {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ack failed");
                    last = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let wait = if draining {
            Duration::from_millis(5)
        } else {
            last.as_ref()
                .map(|(_, at)| (*at + tick).saturating_duration_since(Instant::now()))
                .unwrap_or(tick)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = c.ack_now.notified() => {}
        }
    }
}

/// The lease id of this edge's registration (0: none yet).
static LEASE: AtomicI64 = AtomicI64::new(0);

/// Keeps `edges/{id}` alive under a lease: granted, put, kept alive every TTL/3 on whichever
/// endpoint answers, granted again when it expired (after a partition).
pub(super) async fn register(c: Arc<Cluster>) {
    let ttl = c.cfg.lease_ttl.as_secs().max(2) as i64;
    let key = c.keys.edge(&c.cfg.edge_id);
    let info = EdgeInfo {
        id: c.cfg.edge_id.clone(),
        advertise: c.cfg.advertise.clone(),
        started: state::now_rfc3339(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    };
    let value = serde_json::to_vec(&info).expect("edge info serializes");
    let every = Duration::from_secs(ttl as u64) / 3;
    loop {
        if c.leaving.load(Ordering::SeqCst) {
            return;
        }
        let lease = match c
            .etcd
            .call("lease grant", |mut cl| async move {
                cl.lease_grant(ttl, None).await
            })
            .await
        {
            Ok(l) => l.id(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot grant this edge's lease yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (k, v) = (key.clone(), value.clone());
        let put = c
            .etcd
            .call("register", |mut cl| async move {
                cl.put(k, v, Some(PutOptions::new().with_lease(lease)))
                    .await
            })
            .await;
        if let Err(e) = put {
            tracing::debug!(error = %e, "cannot register this edge yet");
            continue;
        }
        LEASE.store(lease, Ordering::Relaxed);
        tracing::info!(edge = %c.cfg.edge_id, lease, "registered in the cluster");
        // Keep it alive; a keep-alive that fails is tried again on the next endpoint until the
        // lease has expired, then it is granted anew.
        let expires = |from: Instant| from + Duration::from_secs(ttl as u64);
        let mut alive_until = expires(Instant::now());
        loop {
            tokio::time::sleep(every).await;
            if c.leaving.load(Ordering::SeqCst) {
                return;
            }
            if Instant::now() >= alive_until {
                tracing::warn!("this edge's lease expired (etcd unreachable for longer than lease_ttl); registering again");
                break;
            }
            let sent = Instant::now();
            let r = c
                .etcd
                .call("keep alive", |mut cl| async move {
                    let (mut keeper, mut stream) = cl.lease_keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
            match r {
                Ok(Some(resp)) if resp.ttl() > 0 => alive_until = expires(sent),
                Ok(_) => {
                    tracing::warn!("this edge's lease is gone; registering again");
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "keep-alive failed"),
            }
        }
    }
}

/// Writes the state this edge serves to `proxy.state`, tagged with the cluster and revision:
/// what a start without etcd may serve reads from. Off the apply path; the newest wins.
pub(super) async fn snapshots(c: Arc<Cluster>) {
    let mut rx = c.snapshot.subscribe();
    while rx.changed().await.is_ok() {
        let Some(mut s) = rx.borrow_and_update().clone() else {
            continue;
        };
        s.snapshot = Some(SnapshotTag {
            prefix: c.cfg.prefix.clone(),
            revision: s.version as i64,
            saved: state::now_rfc3339(),
        });
        let path = c.state_path.clone();
        let r = tokio::task::spawn_blocking(move || state::save(&path, &s)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "cannot write the local snapshot of the cluster's state");
        }
    }
}

/// Removes this edge's ack and revokes its lease (best effort, bounded).
pub(super) async fn leave(c: &Cluster) {
    c.leaving.store(true, Ordering::SeqCst);
    FRESH.store(false, Ordering::Relaxed);
    let key = c.keys.ack(&c.cfg.edge_id);
    let _ = c
        .etcd
        .call("leave", |mut cl| async move { cl.delete(key, None).await })
        .await;
    let lease = LEASE.load(Ordering::Relaxed);
    if lease != 0 {
        let _ = c
            .etcd
            .call(
                "leave",
                |mut cl| async move { cl.lease_revoke(lease).await },
            )
            .await;
    }
    tracing::info!(edge = %c.cfg.edge_id, "left the cluster");
}
