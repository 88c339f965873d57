//! The read-only gate, per request. No lock: a write counts itself into the site's
//! `inflight_writes` *before* it reads the read-only flag (both SeqCst), and turning read-only on
//! sets the flag *before* it waits for `inflight_writes` to reach zero. So either the write sees
//! the flag and is refused, or the control plane sees the write and waits for it: no write can
//! slip past the backup that follows.

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
    if shared.read_only.load(Ordering::SeqCst)
        && !site.policy.path_allowed(path)
        && !site.policy.client_allowed(client)
    {
        drop(guard);
        let notice = site.read_only.clone().unwrap_or_else(default_notice);
        return Gate::Refuse(notice);
    }
    Gate::Pass {
        read_only: site.read_only.is_some(),
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
