//! Load, then watch. An edge reads everything under the prefix at one revision L (the state, the
//! edges, the acks), installs the state's table, and watches from L + 1. Each watch response is
//! applied as one batch: the edges and acks it carries update the view, and of the state's
//! changes in it only the last is installed (one table swap per response). On compaction the
//! edge re-lists; on a broken or silent stream (an error, the end, no answer to a progress
//! request) it moves to the next endpoint and resumes from the last revision it had seen.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};

use super::keys::{Ack, EdgeInfo, Kind};
use super::{Cluster, ClusterError, Seen};
use crate::config::Config;
use crate::ops::Ops;
use crate::state::{self, State};

/// Reads the whole prefix at one revision; seeds the state on the cluster's very first start.
/// Returns the state (version = its mod_revision).
pub(super) async fn load(c: &Arc<Cluster>, cfg: &Config) -> Result<State, ClusterError> {
    loop {
        let deadline = Instant::now() + c.etcd.request_timeout * 3;
        let prefix = c.keys.prefix.clone();
        let resp = c
            .etcd
            .retrying("load", deadline, |mut cl| {
                let p = prefix.clone();
                async move { cl.get(p, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut state = None;
        let mut view = super::View::default();
        let now = Instant::now();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            match c.keys.classify(key) {
                Kind::State => state = Some(c.decode(kv.value(), kv.mod_revision())?.0),
                Kind::Edge(id) => {
                    if let Ok(e) = serde_json::from_slice::<EdgeInfo>(kv.value()) {
                        view.edges.insert(id.to_string(), e);
                    }
                }
                Kind::Ack(id) => {
                    if let Ok(a) = serde_json::from_slice::<Ack>(kv.value()) {
                        view.acks.insert(id.to_string(), Seen { ack: a, at: now });
                    }
                }
                Kind::Other => {}
            }
        }
        match state {
            Some(s) => {
                *c.view() = view;
                c.seen.fetch_max(rev, Ordering::SeqCst);
                return Ok(s);
            }
            None => seed(c, cfg).await?,
        }
    }
}

/// The first edge of a new cluster puts the state: its own state file when it has one that is not
/// another cluster's snapshot (moving from one edge to a cluster keeps what was live), else an
/// empty state (the config's `active` colors). `If create_revision(state) == 0`, so of several
/// first edges one wins and the others load it.
async fn seed(c: &Arc<Cluster>, cfg: &Config) -> Result<(), ClusterError> {
    let local = match state::load(&cfg.proxy.state) {
        Ok(Some(s)) if s.snapshot.as_ref().is_none_or(|t| t.prefix == c.cfg.prefix) => s,
        _ => State::default(),
    };
    let key = c.keys.state();
    let value = c.envelope(&local, format!("seed-{}", c.cfg.edge_id));
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)]);
    let deadline = Instant::now() + c.etcd.request_timeout * 3;
    // A replay is harmless: the guard lets only the first put in.
    let r = c
        .etcd
        .retrying("seed", deadline, |mut cl| {
            let t = txn.clone();
            async move { cl.txn(t).await }
        })
        .await?;
    if r.succeeded() {
        tracing::info!(prefix = %c.cfg.prefix, from = %cfg.proxy.state.display(), sites = local.sites.len(), "seeded the cluster's state (first edge of a new cluster)");
    }
    Ok(())
}

/// The local snapshot of this cluster, if the state file is one.
pub(super) fn local_snapshot(c: &Cluster) -> Option<State> {
    let s = state::load(&c.state_path).ok()??;
    let tag = s.snapshot.as_ref()?;
    (tag.prefix == c.cfg.prefix).then_some(s)
}

/// The watch, forever: re-list when needed, watch from the next revision, apply batches.
pub(super) async fn run(c: Arc<Cluster>, ops: Arc<Ops>) {
    let cfg = ops.config().await;
    let mut relist = c.seen.load(Ordering::SeqCst) == 0;
    loop {
        if relist {
            match load(&c, &cfg).await {
                Ok(s) => {
                    ops.apply_remote(s).await;
                    c.ack_now.notify_one();
                    c.bump();
                    relist = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-list the cluster's state; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        match watch_once(&c, &ops).await {
            Ok(()) => {}
            Err(Broken::Compacted) => relist = true,
            Err(Broken::Stream(gen, e)) => {
                c.metrics.cluster_reconnects.inc();
                c.etcd.failed(gen, &e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

enum Broken {
    Compacted,
    Stream(u64, ClusterError),
}

/// One watch stream on the current endpoint, until it breaks or the endpoint rotates.
async fn watch_once(c: &Arc<Cluster>, ops: &Arc<Ops>) -> Result<(), Broken> {
    let conn = c
        .etcd
        .conn()
        .await
        .map_err(|e| Broken::Stream(u64::MAX, e))?;
    let (gen, endpoint) = (conn.gen, conn.endpoint.clone());
    let fail = |what: &'static str, msg: String| {
        Broken::Stream(
            gen,
            ClusterError::Failed {
                endpoint: endpoint.clone(),
                what,
                msg,
            },
        )
    };
    let from = c.seen.load(Ordering::SeqCst) + 1;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from)
        .with_progress_notify();
    let mut client = conn.client;
    let open = tokio::time::timeout(
        c.etcd.request_timeout,
        client.watch(c.keys.prefix.clone(), Some(opts)),
    )
    .await;
    let mut stream = match open {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(fail("watch", e.to_string())),
        Err(_) => return Err(fail("watch", "no answer".into())),
    };
    tracing::debug!(%endpoint, from, "watching the cluster's state");
    // A silent stream is found with progress requests: every `idle` without a message, ask;
    // no answer within a request timeout after asking, and the stream counts as broken.
    let idle = (c.cfg.freshness / 4).max(Duration::from_millis(100));
    let mut asked: Option<Instant> = None;
    loop {
        let wait = match asked {
            Some(at) => (at + c.etcd.request_timeout).saturating_duration_since(Instant::now()),
            None => idle,
        };
        let msg = tokio::select! {
            m = tokio::time::timeout(wait, stream.message()) => m,
            _ = c.etcd.rotated(gen) => return Ok(()),
        };
        let resp = match msg {
            Err(_) if asked.is_some() => {
                return Err(fail("watch", "no answer to a progress request".into()))
            }
            Err(_) => {
                if let Err(e) = stream.request_progress().await {
                    return Err(fail("watch", e.to_string()));
                }
                asked = Some(Instant::now());
                continue;
            }
            Ok(Err(e)) => return Err(fail("watch", e.to_string())),
            Ok(Ok(None)) => return Err(fail("watch", "the stream ended".into())),
            Ok(Ok(Some(r))) => r,
        };
        asked = None;
        if resp.compact_revision() > 0 {
            tracing::warn!(
                compacted = resp.compact_revision(),
                from,
                "the watch's start was compacted; re-listing"
            );
            return Err(Broken::Compacted);
        }
        if resp.canceled() {
            return Err(fail("watch", format!("canceled: {}", resp.cancel_reason())));
        }
        apply_batch(c, ops, &resp).await;
    }
}

/// One watch response: the view first, then the last state change in it (one table swap).
async fn apply_batch(c: &Arc<Cluster>, ops: &Arc<Ops>, resp: &etcd_client::WatchResponse) {
    let events = resp.events();
    let mut last_state = None;
    let mut top = 0;
    {
        let mut v = c.view();
        let now = Instant::now();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            top = top.max(kv.mod_revision());
            let Ok(key) = kv.key_str() else { continue };
            let put = ev.event_type() == EventType::Put;
            match c.keys.classify(key) {
                Kind::State if put => last_state = Some((kv.value().to_vec(), kv.mod_revision())),
                Kind::State => tracing::error!(key, "the cluster's state key was deleted; this edge keeps serving its last table (restore the key with `switchyard` changes or etcdctl)"),
                Kind::Edge(id) if put => {
                    if let Ok(e) = serde_json::from_slice::<EdgeInfo>(kv.value()) {
                        v.edges.insert(id.to_string(), e);
                    }
                }
                Kind::Edge(id) => {
                    v.edges.remove(id);
                }
                Kind::Ack(id) if put => {
                    if let Ok(a) = serde_json::from_slice::<Ack>(kv.value()) {
                        v.acks.insert(id.to_string(), Seen { ack: a, at: now });
                    }
                }
                Kind::Ack(id) => {
                    v.acks.remove(id);
                }
                Kind::Other => {}
            }
        }
    }
    if let Some((value, rev)) = last_state {
        match c.decode(&value, rev) {
            Ok((s, _)) => {
                ops.apply_remote(s).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "ignoring a state this edge cannot read; it keeps serving its last table")
            }
        }
    }
    // Only the revisions of events delivered count as seen. A response without events (the
    // watch's creation, a progress notification) names the store's revision, and etcd 3.4 may
    // send a progress notification ahead of events it has not delivered yet (etcd #15220):
    // trusting it made an edge acknowledge a revision before installing it.
    let through = top;
    c.seen.fetch_max(through, Ordering::SeqCst);
    c.metrics.cluster_applied.set(c.applied());
    c.bump();
}
