//! A change is one etcd transaction on the `state` key, guarded on the mod_revision it was based
//! on: `If mod_revision(state) == base Then put(state, next) Else get(state)`. It either lands as
//! the very next change of the key, or not at all (and the else branch hands back the state it
//! lost to, which the caller installs).
//!
//! When the answer does not come (a timeout, a broken connection), the outcome is unknown: the txn
//! may still be committed. It is never sent again blindly. Instead, on whichever endpoint answers:
//! 1. a fence, `If mod_revision(state) == base Then put(state, base's value)`. If it succeeds,
//!    our change did not land and can no longer land (its guard is stale): answer "not made".
//! 2. If the fence's guard fails, the key moved past `base`; its first change after `base` is
//!    read from the history (a watch from `base + 1`): ours (same txid) → "made, at revision
//!    r"; another edge's → ours can never land: "moved".
//!
//! Only an answer from etcd ends this; past the deadline the caller is told the outcome is
//! unknown, and what to look at.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, TxnOpResponse, WatchOptions};

use super::keys::Envelope;
use super::{Cluster, ClusterError};
use crate::state::State;

pub enum Committed {
    /// Landed at this revision.
    Done(i64),
    /// Another change landed first; this is the state now (version = its revision).
    Moved(Box<State>),
}

impl Cluster {
    pub(super) fn envelope(&self, state: &State, txid: String) -> Vec<u8> {
        let mut s = state.clone();
        s.snapshot = None;
        serde_json::to_vec(&Envelope {
            format: 1,
            txid,
            by: self.cfg.edge_id.clone(),
            state: s,
        })
        .expect("the state serializes")
    }

    fn txid(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.cfg.edge_id,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            self.txids.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Decodes the value of `state` at `mod_revision`.
    pub(super) fn decode(
        &self,
        value: &[u8],
        mod_revision: i64,
    ) -> Result<(State, String), ClusterError> {
        let env: Envelope = serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt {
            key: self.keys.state(),
            msg: e.to_string(),
        })?;
        let mut s = env.state;
        s.version = mod_revision as u64;
        Ok((s, env.txid))
    }

    /// Commits `next` as the successor of `base` (see the module doc).
    pub async fn commit(&self, base: &State, next: &State) -> Result<Committed, ClusterError> {
        let key = self.keys.state();
        let txid = self.txid();
        let value = self.envelope(next, txid.clone());
        let base_rev = base.version as i64;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                base_rev,
            )])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        match self
            .etcd
            .call("commit", |mut c| async move { c.txn(txn).await })
            .await
        {
            Ok(resp) => self.answer(resp),
            Err(e) => {
                tracing::warn!(error = %e, base = base_rev, "the commit's outcome is unknown; reading back");
                self.resolve(base, &txid).await
            }
        }
    }

    fn answer(&self, resp: etcd_client::TxnResponse) -> Result<Committed, ClusterError> {
        if resp.succeeded() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(Committed::Done(rev));
        }
        self.moved(resp)
    }

    /// The else branch: the state the change lost to.
    fn moved(&self, resp: etcd_client::TxnResponse) -> Result<Committed, ClusterError> {
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    let (s, _) = self.decode(kv.value(), kv.mod_revision())?;
                    return Ok(Committed::Moved(Box::new(s)));
                }
            }
        }
        Err(ClusterError::Corrupt {
            key: self.keys.state(),
            msg: "the key is missing (deleted by hand?)".into(),
        })
    }

    /// Settles an unknown outcome by reading back (see the module doc).
    async fn resolve(&self, base: &State, txid: &str) -> Result<Committed, ClusterError> {
        let key = self.keys.state();
        let base_rev = base.version as i64;
        let waited = (self.cfg.request_timeout * 6).max(Duration::from_secs(5));
        let deadline = Instant::now() + waited;
        let fence_value = self.envelope(base, format!("fence-{txid}"));
        let mut detail = String::from("no endpoint answered");
        while Instant::now() < deadline {
            let fence = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    base_rev,
                )])
                .and_then([TxnOp::put(key.clone(), fence_value.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let r = self
                .etcd
                .call("fence", |mut c| async move { c.txn(fence).await })
                .await;
            match r {
                Ok(resp) if resp.succeeded() => {
                    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                    tracing::warn!(revision, "the change did not land; fenced it off");
                    return Err(ClusterError::NotMade { revision });
                }
                Ok(resp) => match self.first_change_after(base_rev, deadline).await {
                    Ok((rev, id)) if id == txid => {
                        tracing::info!(revision = rev, "read back: the change had landed");
                        return Ok(Committed::Done(rev));
                    }
                    Ok(_) => return self.moved(resp),
                    Err(e) => detail = e.to_string(),
                },
                Err(e) => detail = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ClusterError::Unknown { waited, detail })
    }

    /// The revision and txid of the first change of `state` after `base` (from its history).
    async fn first_change_after(
        &self,
        base: i64,
        deadline: Instant,
    ) -> Result<(i64, String), ClusterError> {
        let key = self.keys.state();
        let conn = self.etcd.conn().await?;
        let endpoint = conn.endpoint.clone();
        let mut client = conn.client;
        let k = key.clone();
        let read = async move {
            type Found = Result<(i64, Vec<u8>), i64>;
            let mut stream = client
                .watch(k, Some(WatchOptions::new().with_start_revision(base + 1)))
                .await?;
            while let Some(resp) = stream.message().await? {
                if resp.compact_revision() > 0 {
                    return Ok::<Found, etcd_client::Error>(Err(resp.compact_revision()));
                }
                for ev in resp.events() {
                    if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                        let found: Found = Ok((kv.mod_revision(), kv.value().to_vec()));
                        return Ok(found);
                    }
                }
            }
            Err(etcd_client::Error::WatchError(
                "the history stream ended".into(),
            ))
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left.min(self.etcd.request_timeout * 2), read).await;
        match r {
            Ok(Ok(Ok((rev, value)))) => {
                let (_, id) = self.decode(&value, rev)?;
                Ok((rev, id))
            }
            Ok(Ok(Err(compacted))) => Err(ClusterError::Failed {
                endpoint,
                what: "read back",
                msg: format!(
                    "the history from revision {} was compacted (now from {compacted})",
                    base + 1
                ),
            }),
            Ok(Err(e)) => {
                let err = ClusterError::Failed {
                    endpoint,
                    what: "read back",
                    msg: e.to_string(),
                };
                self.etcd.failed(conn.gen, &err);
                Err(err)
            }
            Err(_) => {
                let err = ClusterError::Timeout {
                    endpoint,
                    what: "read back",
                    timeout: self.etcd.request_timeout * 2,
                };
                self.etcd.failed(conn.gen, &err);
                Err(err)
            }
        }
    }
}
