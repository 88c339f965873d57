//! Talking to backends: the one place a request is sent, retried and timed out.
//!
//! - `mod.rs` (here): [`send`], the loop every request goes through: pick a backend of the pool,
//!   try it within the upstream timeout, eject it for a while when it refuses the connection
//!   (or closes a fresh one unanswered), and try a second backend when the request may be
//!   repeated (a GET/HEAD/OPTIONS without a body). [`connect`] is the one connect path.
//! - `raw.rs`: raw backend connections (bytes in, response head parsed in place, the body read
//!   straight off the socket), for every request without a body and the fast path's small ones.
//! - `client.rs`: hyper's HTTP/1.1 client connection, for request bodies that stream and for
//!   upgrades (WebSocket).
//! - `pool.rs`: idle connections per backend per worker thread (no lock).
//! - `deadline.rs`: a timeout that takes no lock per request.
//!
//! Connections stay on the worker thread that made them, like the client connections that use
//! them: a backend's socket wakes the client's task directly, no other thread.

pub mod client;
mod deadline;
mod pool;
pub mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::error_page::ProxyError;
use crate::metrics::Metrics;
use crate::routing::Pool;

/// How the edge talks to backends; one set for every kind of connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// Waiting for the response head of one try (then 504).
    pub response_timeout: Duration,
    /// How long an unused connection is kept for the next request.
    pub idle_timeout: Duration,
    /// The largest response head taken (and hyper's read buffer).
    pub max_head: usize,
    /// How long a backend that refused a connection is skipped.
    pub eject_backoff: Duration,
}

impl Settings {
    pub fn new(limits: &crate::config::Limits) -> Settings {
        Settings {
            connect_timeout: limits.upstream_connect_timeout,
            response_timeout: limits.upstream_timeout,
            idle_timeout: Duration::from_secs(60),
            max_head: limits.max_header_bytes.max(8192) * 2,
            eject_backoff: Duration::from_secs(10),
        }
    }
}

/// Why a try gave no response head.
#[derive(Debug)]
pub struct Failed {
    /// Nothing came back: the backend refused the connection, or closed a fresh one without a
    /// byte of answer. It is ejected for a while, and a request that may be repeated goes to
    /// another backend (RFC 9110 9.2.2; nginx's `proxy_next_upstream error`).
    pub connect: bool,
    pub err: ProxyError,
}

impl Failed {
    /// The backend broke the exchange after the request (or part of it) went out.
    pub fn broken(why: &'static str) -> Failed {
        Failed {
            connect: false,
            err: ProxyError::Upstream(why.into()),
        }
    }

    /// A fresh connection closed before any byte of an answer.
    fn unanswered() -> Failed {
        Failed {
            connect: true,
            err: ProxyError::Upstream("the backend closed the connection without answering".into()),
        }
    }

    fn closed() -> Failed {
        Failed::broken("the backend closed the connection or sent an invalid response")
    }
}

/// Errors while a body streams through.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The client's HTTP/2 stream broke off.
    #[error(transparent)]
    H2(#[from] h2::Error),
    /// The backend's body broke off or its framing was bad.
    #[error("{0}")]
    Upstream(&'static str),
}

/// Opens a connection to a backend within the connect timeout. A failure means nothing reached it.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Failed> {
    let refused = |e: std::io::Error| Failed {
        connect: true,
        err: if e.kind() == std::io::ErrorKind::TimedOut {
            ProxyError::UpstreamTimeout
        } else {
            ProxyError::Upstream("the backend refused the connection".into())
        },
    };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(refused(e)),
        Err(_) => return Err(refused(std::io::ErrorKind::TimedOut.into())),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One way of sending a request to a backend: the fast path's bytes, or hyper's `Request`.
pub(crate) trait Attempt {
    /// Sends the request to `addr` and waits for the response head, which it keeps for the
    /// caller (a large value is not moved out through every layer of futures). `again`: the
    /// first backend refused the connection, this is the one retry.
    async fn send(&mut self, addr: SocketAddr, again: bool) -> Result<(), Failed>;
}

/// Sends a request to a backend of `pool` (see the module docs); the answer is in `attempt`.
/// `tried` is set to each backend as it is tried, for the access log.
pub(crate) async fn send<A: Attempt>(
    settings: &Settings,
    metrics: &Metrics,
    pool: &Pool,
    retryable: bool,
    tried: &mut Option<SocketAddr>,
    attempt: &mut A,
) -> Result<(), ProxyError> {
    let mut backend = pool.pick(None).ok_or(ProxyError::NoBackend)?;
    let mut again = false;
    loop {
        *tried = Some(backend.addr);
        let sent =
            deadline::timeout(settings.response_timeout, attempt.send(backend.addr, again)).await;
        let err = match sent {
            Ok(Ok(())) => {
                backend.clear_ejection();
                return Ok(());
            }
            Ok(Err(Failed { connect: true, err })) => {
                backend.eject(settings.eject_backoff);
                metrics.backend_failure();
                if !again && retryable && pool.backends.len() > 1 {
                    if let Some(next) = pool.pick(Some(backend)) {
                        again = true;
                        backend = next;
                        continue;
                    }
                }
                err
            }
            Ok(Err(Failed { err, .. })) => err,
            Err(deadline::Elapsed) => ProxyError::UpstreamTimeout,
        };
        return Err(err);
    }
}
