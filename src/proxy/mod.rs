//! The request path: accept → TLS → route → gate → forward. Reaches the control plane only through
//! the `ArcSwap`s of the routing table and the certificate store. No Mutex or RwLock is taken here.

pub mod body;
pub mod deadline;
pub mod error_page;
pub mod fast;
pub mod gate;
mod gather;
pub mod headers;
mod idle;
pub mod listener;
pub mod service;
pub mod tls;
mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::OnceLock;

use http::HeaderValue;

pub use error_page::ProxyError;
pub use service::Edge;

/// One client connection, shared by the requests on it.
pub struct Conn {
    pub peer: SocketAddr,
    pub https: bool,
    /// The TLS server name the client asked for, if any.
    pub sni: Option<Box<str>>,
    /// Requests on this connection whose response has not ended yet.
    pub inflight: AtomicUsize,
    /// Requests started on this connection, and on the fast path also reads of a request body
    /// still arriving; the idle watchdog looks for movement.
    pub activity: AtomicU64,
    /// Socket reads that returned bytes: with no new request, bytes mean a request head is on its
    /// way (the header timeout applies), none mean the connection is idle (the idle timeout).
    pub reads: AtomicU64,
    /// `reads` when the last request finished: more than that, and a new head is on its way.
    pub reads_at_rest: AtomicU64,
    /// ALPN chose h2: reads there include PING acks, so they do not mean a head is coming.
    pub h2: bool,
    /// Set when the server shuts down: the fast path closes after the response in flight.
    pub draining: std::sync::atomic::AtomicBool,
    /// The client's address as an `X-Forwarded-For` value, made on the first request.
    pub ip_value: OnceLock<HeaderValue>,
    /// Shared by every connection; held here so that a request clones this connection's `Arc`
    /// (a cache line of this thread) rather than the `Edge`'s (shared by all threads).
    pub edge: std::sync::Arc<Edge>,
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
        edge: std::sync::Arc<Edge>,
        peer: SocketAddr,
        https: bool,
        sni: Option<Box<str>>,
        h2: bool,
    ) -> Conn {
        Conn {
            peer,
            https,
            sni,
            inflight: 0.into(),
            activity: 0.into(),
            reads: 0.into(),
            reads_at_rest: 0.into(),
            h2,
            draining: false.into(),
            ip_value: OnceLock::new(),
            edge,
        }
    }

    /// The client's address as a header value (canonical: IPv4-mapped IPv6 as IPv4).
    #[inline]
    pub fn ip_value(&self) -> &HeaderValue {
        self.ip_value
            .get_or_init(|| headers::ip_value(self.peer.ip()))
    }
}
