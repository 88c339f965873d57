//! Several edges that behave as one (`[cluster]`, docs/cluster.md): the shared state lives in etcd
//! under a prefix, every change is one transaction guarded on the revision it was based on, and
//! every edge loads the state, watches it and acknowledges what it applied. Never on the request
//! path: the edge reads one relaxed atomic from here per write (`routing::FRESH`), nothing else.
//!
//! - `keys.rs`: the key layout and the values (the whole `State` as one key, edges, acks).
//! - `etcd.rs`: one endpoint at a time, timeouts, the next endpoint after a failure.
//! - `commit.rs`: the guarded transaction, and an unknown outcome resolved by reading back.
//! - `watch.rs`: load at a revision, watch from the next, apply each response as one batch,
//!   re-list on compaction, resume on another endpoint from the last revision seen.
//! - `heartbeat.rs`: the lease and `edges/{id}`, the ack (which is also the freshness
//!   confirmation), the freshness timer, the local snapshot.
//! - `barrier.rs`: waiting for acknowledgements (a change) and for drained writes (read-only).

mod barrier;
mod commit;
mod etcd;
mod heartbeat;
pub mod keys;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch as tokio_watch, Notify};

pub use commit::Committed;
use keys::{Ack, EdgeInfo, Keys};

use crate::config::{ClusterConfig, Color, Config};
use crate::control::api::{ClusterSpread, ClusterStatus, EdgeStatus};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::routing::FRESH;
use crate::state::State;

/// What went wrong between this edge and etcd, for people: which endpoint, what failed, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd at {endpoint} did not answer `{what}` within {}; the next endpoint is tried. Check that the member runs and that this edge reaches it (`etcdctl --endpoints {endpoint} endpoint health`)", humantime::format_duration(*.timeout))]
    Timeout {
        endpoint: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("etcd at {endpoint} failed `{what}`: {msg}")]
    Failed {
        endpoint: String,
        what: &'static str,
        msg: String,
    },
    #[error("no etcd endpoint answered `{what}` in time (tried {endpoints}; last: {last}). This edge's view of the cluster is unknown: it serves reads from its last table and refuses writes. Bring etcd back, or check the network between this edge and etcd")]
    Unreachable {
        what: &'static str,
        endpoints: String,
        last: String,
    },
    #[error("etcd did not confirm the change within {}, and reading back could not settle whether it was made ({detail}). Nothing was retried. Run `switchyard status` (or `switchyard cluster status`) to see the state before you try again", humantime::format_duration(*.waited))]
    Unknown { waited: Duration, detail: String },
    #[error("etcd did not confirm the change in time; reading back showed it was NOT made (revision {revision} was fenced so it cannot land late). Retry the command")]
    NotMade { revision: i64 },
    #[error("the cluster's state at {key} cannot be read ({msg}); fix or restore that key with etcdctl, or point `[cluster] prefix` elsewhere")]
    Corrupt { key: String, msg: String },
}

/// This edge's picture of the others, from its watch.
#[derive(Default)]
struct View {
    /// Live edges (their lease is alive).
    edges: BTreeMap<String, EdgeInfo>,
    /// Every edge's last ack and when this edge saw it (acks have no lease).
    acks: BTreeMap<String, Seen>,
}

struct Seen {
    ack: Ack,
    at: Instant,
}

pub struct Cluster {
    pub cfg: ClusterConfig,
    pub keys: Keys,
    pub(crate) etcd: etcd::Etcd,
    /// Where the local snapshot goes (`proxy.state`).
    state_path: PathBuf,
    /// The mod_revision of the state this edge serves.
    state_rev: AtomicI64,
    /// The highest revision the watch has delivered in full.
    seen: AtomicI64,
    view: Mutex<View>,
    /// Bumped whenever something a waiter looks at changed (an ack, an edge, an applied revision).
    changed: tokio_watch::Sender<u64>,
    /// Ask the heartbeat to acknowledge now (a revision was applied, writes drained).
    ack_now: Notify,
    fresh: heartbeat::Freshness,
    /// Set by `leave`: no more acks (they would bring back the key just deleted).
    leaving: std::sync::atomic::AtomicBool,
    txids: AtomicU64,
    last_change: Mutex<Option<ClusterSpread>>,
    snapshot: tokio_watch::Sender<Option<State>>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    fn new(cfg: &Config, metrics: Arc<Metrics>) -> Cluster {
        let cc = cfg.cluster.clone().expect("a [cluster] config");
        FRESH.store(false, Ordering::Relaxed);
        Cluster {
            keys: Keys {
                prefix: cc.prefix.clone(),
            },
            etcd: etcd::Etcd::new(cc.endpoints.clone(), cc.dial_timeout, cc.request_timeout),
            fresh: heartbeat::Freshness::new(cc.freshness),
            cfg: cc,
            state_path: cfg.proxy.state.clone(),
            state_rev: AtomicI64::new(0),
            seen: AtomicI64::new(0),
            view: Mutex::new(View::default()),
            changed: tokio_watch::Sender::new(0),
            ack_now: Notify::new(),
            txids: AtomicU64::new(0),
            leaving: std::sync::atomic::AtomicBool::new(false),
            last_change: Mutex::new(None),
            snapshot: tokio_watch::Sender::new(None),
            metrics,
        }
    }

    /// The revision up to which this edge's table reflects the state.
    pub fn applied(&self) -> i64 {
        self.state_rev
            .load(Ordering::SeqCst)
            .max(self.seen.load(Ordering::SeqCst))
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Called by `Ops::install` (under its lock) once a state's table is stored and its flags set.
    pub(crate) fn installed(&self, state: &State) {
        self.state_rev
            .fetch_max(state.version as i64, Ordering::SeqCst);
        self.metrics.cluster_applied.set(self.applied());
        self.snapshot.send_replace(Some(state.clone()));
        self.ack_now.notify_one();
        self.bump();
    }

    /// Writes the other edges forwarded to `color` of `site` since they applied its last switch.
    pub fn others_writes(&self, site: &str, color: Color) -> u64 {
        let v = self.view();
        v.acks
            .iter()
            .filter(|(id, _)| **id != self.cfg.edge_id)
            .filter_map(|(_, s)| s.ack.sites.get(site))
            .filter(|s| s.active == Some(color) || s.active.is_none())
            .map(|s| s.writes_since_switch.get(&color).copied().unwrap_or(0))
            .sum()
    }

    /// Writes in flight for `site` on the other live edges, as they last reported.
    pub fn others_inflight(&self, site: &str) -> u64 {
        let v = self.view();
        v.acks
            .iter()
            .filter(|(id, _)| **id != self.cfg.edge_id && v.edges.contains_key(*id))
            .filter_map(|(_, s)| s.ack.sites.get(site))
            .map(|s| s.writes_in_flight)
            .sum()
    }

    /// `GET /v1/cluster`: this edge's view.
    pub fn status(&self) -> ClusterStatus {
        let rev = self.state_rev.load(Ordering::SeqCst);
        let v = self.view();
        let mut ids: Vec<&String> = v.edges.keys().chain(v.acks.keys()).collect();
        ids.sort();
        ids.dedup();
        let edges = ids
            .into_iter()
            .map(|id| {
                let info = v.edges.get(id);
                let seen = v.acks.get(id);
                let me = *id == self.cfg.edge_id;
                let applied = if me {
                    self.applied()
                } else {
                    seen.map(|s| s.ack.applied).unwrap_or(0)
                };
                let fresh = if me {
                    FRESH.load(Ordering::Relaxed)
                } else {
                    seen.is_some_and(|s| s.ack.fresh)
                };
                let health = if info.is_none() {
                    "gone"
                } else if applied < rev {
                    "behind"
                } else if !fresh {
                    "stale"
                } else {
                    "ok"
                };
                EdgeStatus {
                    id: id.clone(),
                    advertise: info.and_then(|i| i.advertise.clone()),
                    live: info.is_some(),
                    applied,
                    fresh,
                    health: health.into(),
                    last_ack_ms: seen.map(|s| s.at.elapsed().as_millis() as u64),
                    writes_in_flight: seen
                        .map(|s| s.ack.sites.values().map(|x| x.writes_in_flight).sum())
                        .unwrap_or(0),
                    version: info.map(|i| i.version.clone()),
                }
            })
            .collect();
        drop(v);
        ClusterStatus {
            edge_id: self.cfg.edge_id.clone(),
            prefix: self.cfg.prefix.clone(),
            endpoint: self.etcd.current_endpoint(),
            endpoints: self.etcd.endpoints().to_vec(),
            revision: rev,
            fresh: FRESH.load(Ordering::Relaxed),
            staleness_ms: self.fresh.staleness().map(|d| d.as_millis() as u64),
            freshness_ms: self.cfg.freshness.as_millis() as u64,
            edges,
            last_change: self
                .last_change
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn record_change(&self, s: &ClusterSpread) {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
    }
}

/// Joins the cluster: loads the shared state (seeding it on the very first start), or, when etcd
/// stays unreachable past `startup_timeout`, falls back to the local snapshot of this cluster
/// (reads only: the edge is not fresh until etcd confirms its view). Without either it keeps
/// trying: a new edge serves nothing before it knows the state.
pub async fn join(cfg: &Config, metrics: Arc<Metrics>) -> anyhow::Result<(Arc<Cluster>, State)> {
    let c = Arc::new(Cluster::new(cfg, metrics));
    let started = Instant::now();
    let mut warned = false;
    loop {
        match watch::load(&c, cfg).await {
            Ok(state) => {
                c.state_rev.store(state.version as i64, Ordering::SeqCst);
                return Ok((c, state));
            }
            Err(e) => {
                if started.elapsed() >= c.cfg.startup_timeout {
                    if let Some(snap) = watch::local_snapshot(&c) {
                        tracing::warn!(error = %e, revision = snap.version, file = %c.state_path.display(), "etcd is unreachable: serving reads from the local snapshot; writes are refused until etcd confirms the state");
                        c.state_rev.store(snap.version as i64, Ordering::SeqCst);
                        return Ok((c, snap));
                    }
                    if !warned {
                        tracing::error!(error = %e, file = %c.state_path.display(), "etcd is unreachable and there is no local snapshot of this cluster: this edge serves nothing until it has loaded the state; still trying");
                        warned = true;
                    }
                } else {
                    tracing::warn!(error = %e, "cannot load the cluster's state yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Starts the background work of a joined edge: the watch, the lease and heartbeat, the
/// freshness timer, the snapshot writer.
pub fn run(c: Arc<Cluster>, ops: Arc<Ops>) {
    tokio::spawn(watch::run(c.clone(), ops.clone()));
    tokio::spawn(heartbeat::register(c.clone()));
    tokio::spawn(heartbeat::acks(c.clone(), ops));
    tokio::spawn(heartbeat::freshness_timer(c.clone()));
    tokio::spawn(heartbeat::snapshots(c));
}

/// On shutdown, after the last connection closed: remove this edge's ack and registration, so
/// that no barrier waits for it.
pub async fn leave(c: &Cluster) {
    heartbeat::leave(c).await
}
