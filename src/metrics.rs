//! Counters of the edge, as atomics the request path bumps without locks. Rendered for status and
//! for the Prometheus endpoint by the control plane (never on the request path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Color;
use crate::proxy::ProxyError;

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub status_class: [AtomicU64; 6],
    pub rejected_writes: AtomicU64,
    pub backend_failures: AtomicU64,
    pub proxy_errors: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
    pub switches: AtomicU64,
    pub reloads: AtomicU64,
}

impl Metrics {
    #[inline]
    pub fn response(&self, _site: Option<&str>, _color: Option<Color>, status: u16, _took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = (status / 100).min(5) as usize;
        self.status_class[class].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn rejected_write(&self) {
        self.rejected_writes.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn backend_failure(&self) {
        self.backend_failures.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn proxy_error(&self, _e: &ProxyError) {
        self.proxy_errors.fetch_add(1, Ordering::Relaxed);
    }
}
