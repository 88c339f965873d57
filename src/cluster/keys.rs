//! The keys under `[cluster] prefix` and what their values hold (JSON):
//!
//! | key | lease | value | written by |
//! |---|---|---|---|
//! | `state` | none | [`Envelope`]: the whole [`State`] (the state file's struct) + the change's id | a change through any edge, one txn guarded on the key's mod_revision |
//! | `edges/{id}` | the edge's | [`EdgeInfo`]: address, start time, version | the edge at start and when its lease is re-granted |
//! | `acks/{id}` | none | [`Ack`]: the revision applied, writes in flight and since the switch per site, fresh | the edge after each applied revision and on its heartbeat tick |
//!
//! The state is ONE key so every change is atomic by construction and has one revision (the key's
//! mod_revision) to guard on, to answer with (the API's `version`) and to acknowledge. Acks have
//! no lease on purpose: the read-only barrier must know every edge that may still be fresh, and a
//! lease could expire (and delete the ack) while its edge still accepts writes; `edges/{id}` has
//! one, so "live" is what etcd says it is. docs/cluster.md has the argument.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Color;
use crate::state::State;

/// The key names of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn state(&self) -> String {
        format!("{}state", self.prefix)
    }
    pub fn edges(&self) -> String {
        format!("{}edges/", self.prefix)
    }
    pub fn edge(&self, id: &str) -> String {
        format!("{}edges/{id}", self.prefix)
    }
    pub fn acks(&self) -> String {
        format!("{}acks/", self.prefix)
    }
    pub fn ack(&self, id: &str) -> String {
        format!("{}acks/{id}", self.prefix)
    }

    /// What a key under the prefix is.
    pub fn classify<'a>(&self, key: &'a str) -> Kind<'a> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return Kind::Other;
        };
        if rest == "state" {
            Kind::State
        } else if let Some(id) = rest.strip_prefix("edges/") {
            Kind::Edge(id)
        } else if let Some(id) = rest.strip_prefix("acks/") {
            Kind::Ack(id)
        } else {
            Kind::Other
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    State,
    Edge(&'a str),
    Ack(&'a str),
    Other,
}

/// The value of `state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Format of this value; bumped if it ever changes incompatibly.
    pub format: u32,
    /// Unique per change: how an edge whose commit timed out recognizes its own change when it
    /// reads the key's history back.
    pub txid: String,
    /// The edge that made the change.
    pub by: String,
    pub state: State,
}

/// The value of `edges/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EdgeInfo {
    pub id: String,
    #[serde(default)]
    pub advertise: Option<String>,
    pub started: String,
    pub version: String,
    pub pid: u32,
}

/// The value of `acks/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Ack {
    /// The etcd revision up to which this edge has applied the state (its table reflects every
    /// change with a revision <= this).
    pub applied: i64,
    /// The mod_revision of the state it applied.
    pub state_rev: i64,
    /// Whether it admits writes (its view was confirmed within `freshness`).
    pub fresh: bool,
    #[serde(default)]
    pub sites: BTreeMap<String, SiteAck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct SiteAck {
    pub active: Option<Color>,
    pub writes_in_flight: u64,
    /// Writes this edge forwarded per color since it applied the site's last switch.
    #[serde(default)]
    pub writes_since_switch: BTreeMap<Color, u64>,
    /// The read-only flag is up on this edge.
    #[serde(default)]
    pub read_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        let k = Keys {
            prefix: "/sy/".into(),
        };
        assert_eq!(k.classify(&k.state()), Kind::State);
        assert_eq!(k.classify(&k.edge("a")), Kind::Edge("a"));
        assert_eq!(k.classify(&k.ack("b-1")), Kind::Ack("b-1"));
        assert_eq!(k.classify("/sy/other"), Kind::Other);
        assert_eq!(k.classify("/x/state"), Kind::Other);
    }
}
