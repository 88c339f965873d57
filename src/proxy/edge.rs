//! What the request path shares: [`Edge`], held by every connection of every listener, and
//! [`Conn`], shared by the requests of one client connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::upstream;
use super::watchdog::Activity;
use crate::accesslog::AccessLog;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::routing::RoutingTable;

/// Everything a request needs besides its connection.
pub struct Edge {
    /// The routing table: loaded once per request, swapped whole by the control plane.
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// How backends are reached (timeouts, buffer sizes, ejection).
    pub upstream: upstream::Settings,
    pub limits: Limits,
    pub log: AccessLog,
    pub metrics: Arc<Metrics>,
    /// The port the HTTPS listener actually bound (0 until it has): redirects use it, so a
    /// configured port 0 or a rebind never sends clients to the wrong port.
    pub https_port: AtomicU16,
    /// Pending ACME HTTP-01 answers (read only for `/.well-known/acme-challenge/` on plain HTTP).
    pub acme: Arc<ArcSwap<crate::acme::Challenges>>,
}

impl Edge {
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        limits: Limits,
        log: AccessLog,
        metrics: Arc<Metrics>,
    ) -> Edge {
        Edge {
            table,
            upstream: upstream::Settings::new(&limits),
            limits,
            log,
            metrics,
            https_port: AtomicU16::new(0),
            acme: Arc::default(),
        }
    }
}

/// One client connection, shared by the requests on it.
pub struct Conn {
    pub peer: SocketAddr,
    pub https: bool,
    /// The TLS server name the client asked for, if any.
    pub sni: Option<Box<str>>,
    /// ALPN chose h2.
    pub h2: bool,
    /// What the watchdog looks at (see `watchdog.rs`).
    pub activity: Activity,
    /// Set when the server shuts down: the fast path closes after the response in flight.
    pub draining: AtomicBool,
    /// The client's address as an `X-Forwarded-For` value, made on the first request.
    ip_value: OnceLock<HeaderValue>,
    /// Shared by every connection; held here so that a request clones this connection's `Arc`
    /// (a cache line of this thread) rather than the `Edge`'s (shared by all threads).
    pub edge: Arc<Edge>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("https", &self.https)
            .field("sni", &self.sni)
            .field("h2", &self.h2)
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(
        edge: Arc<Edge>,
        peer: SocketAddr,
        https: bool,
        sni: Option<Box<str>>,
        h2: bool,
    ) -> Conn {
        Conn {
            peer,
            https,
            sni,
            h2,
            activity: Activity::default(),
            draining: false.into(),
            ip_value: OnceLock::new(),
            edge,
        }
    }

    /// The client's address as a header value (canonical: IPv4-mapped IPv6 as IPv4).
    #[inline]
    pub fn ip_value(&self) -> &HeaderValue {
        self.ip_value
            .get_or_init(|| super::headers::ip_value(self.peer.ip()))
    }
}
