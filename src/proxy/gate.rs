//! The read-only gate, per request. No lock: a write counts itself into the site's
//! `inflight_writes` *before* it reads the read-only flag (both SeqCst), and turning read-only on
//! sets the flag *before* it waits for `inflight_writes` to reach zero. So either the write sees
//! the flag and is refused, or the control plane sees the write and waits for it: no write can
//! slip past the backup that follows.
//!
//! With `[cluster]` a write also needs this edge's view of the shared state to be fresh
//! (`routing::FRESH`, one relaxed load): an edge cut off from etcd longer than `freshness` refuses
//! writes with 503 ("cluster state unknown") and serves reads from its last table. Reads never
//! look at it.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use http::{HeaderValue, Method};

use crate::routing::{ReadOnlyNotice, SiteRoute, SiteShared};

/// Keeps a write counted as in flight until dropped (when its response body ends).
pub struct WriteGuard(Arc<SiteShared>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0.inflight_writes.fetch_sub(1, Ordering::SeqCst);
    }
}

pub enum Gate {
    /// Forward. `read_only` asks for `X-Read-Only: 1`; `write` holds a write's in-flight count.
    Pass {
        read_only: bool,
        write: Option<WriteGuard>,
    },
    Refuse(Arc<ReadOnlyNotice>),
    /// A write on an edge whose cluster view is not fresh.
    Unknown(Arc<ReadOnlyNotice>),
}

#[inline]
pub fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub fn check(site: &SiteRoute, method: &Method, path: &str, client: IpAddr) -> Gate {
    if is_safe(method) {
        return Gate::Pass {
            read_only: site.read_only.is_some(),
            write: None,
        };
    }
    let shared = &site.shared;
    shared.inflight_writes.fetch_add(1, Ordering::SeqCst);
    let guard = WriteGuard(shared.clone());
    let on = shared.read_only.load(Ordering::SeqCst);
    if on && !site.policy.path_allowed(path) && !site.policy.client_allowed(client) {
        drop(guard);
        let notice = site.read_only.clone().unwrap_or_else(default_notice);
        return Gate::Refuse(notice);
    }
    if !crate::routing::FRESH.load(Ordering::Relaxed)
        && !site.policy.path_allowed(path)
        && !site.policy.client_allowed(client)
    {
        drop(guard);
        return Gate::Unknown(unknown_notice());
    }
    // A write is marked by the flag it was let through by, not by the table's notice: the two
    // change a moment apart (read-only on stores the notice, then raises the flag; off lowers
    // the flag, then drops the notice), and a write admitted as a normal one but marked
    // `X-Read-Only: 1` is refused by an app that honours the header, after the edge counted it
    // as accepted.
    Gate::Pass {
        read_only: on,
        write: Some(guard),
    }
}

/// Used in the instant between the flag going up and a table with the notice being visible.
fn default_notice() -> Arc<ReadOnlyNotice> {
    static N: OnceLock<Arc<ReadOnlyNotice>> = OnceLock::new();
    N.get_or_init(|| {
        Arc::new(ReadOnlyNotice {
            reason: "maintenance".into(),
            retry_after_s: 60,
            retry_after: HeaderValue::from_static("60"),
        })
    })
    .clone()
}

/// The page of a write refused because the cluster's state is unknown here.
fn unknown_notice() -> Arc<ReadOnlyNotice> {
    static N: OnceLock<Arc<ReadOnlyNotice>> = OnceLock::new();
    N.get_or_init(|| {
        Arc::new(ReadOnlyNotice {
            reason: "cluster state unknown: this edge lost contact with the cluster's state store, so it does not accept changes for now".into(),
            retry_after_s: 10,
            retry_after: HeaderValue::from_static("10"),
        })
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(notice: bool, flag: bool) -> SiteRoute {
        let cfg = crate::config::parse_config(
            std::path::Path::new("t.toml"),
            "[proxy]\nhttp=\"127.0.0.1:0\"\nstate=\"s\"\n[[site]]\nname=\"w\"\nhosts=[\"w.test\"]\n[site.pools]\nblue=[\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let t = crate::routing::RoutingTable::build(
            &cfg,
            &crate::state::State::default(),
            &mut std::collections::HashMap::new(),
            None,
        );
        let s = t.sites[0].as_ref();
        s.shared.read_only.store(flag, Ordering::SeqCst);
        SiteRoute {
            name: s.name.clone(),
            active: s.active,
            pools: s.pools.clone(),
            shared: s.shared.clone(),
            read_only: notice.then(default_notice),
            policy: s.policy.clone(),
            maintenance: None,
            maintenance_allow: s.maintenance_allow.clone(),
            redirect_http: s.redirect_http,
            health: s.health.clone(),
            hsts: None,
            json_errors: Box::default(),
        }
    }

    fn pass(g: Gate) -> Option<bool> {
        match g {
            Gate::Pass { read_only, .. } => Some(read_only),
            Gate::Refuse(_) | Gate::Unknown(_) => None,
        }
    }

    #[test]
    fn a_write_is_marked_by_the_flag_that_let_it_through() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // The notice is in the table, the flag not yet up (or already down): a normal write.
        let s = site(true, false);
        assert_eq!(pass(check(&s, &Method::POST, "/", ip)), Some(false));
        // Reads follow the notice (a banner, never a refusal).
        assert_eq!(pass(check(&s, &Method::GET, "/", ip)), Some(true));
        // The flag up: refused, and not counted in flight.
        let s = site(true, true);
        assert_eq!(pass(check(&s, &Method::POST, "/", ip)), None);
        assert_eq!(s.shared.inflight_writes.load(Ordering::SeqCst), 0);
    }
}
