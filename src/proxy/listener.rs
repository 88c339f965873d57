//! Accept loops and connection lifecycle: the connection limit, the TLS handshake deadline, the
//! header and idle timeouts, and graceful shutdown (stop accepting, let requests in flight finish
//! within a deadline, then close).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

use super::{service, Conn, Edge};

/// Counts open connections, for the limit and for the shutdown drain.
#[derive(Default)]
pub struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

struct Slot(Arc<Tracker>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until every connection has closed, or the deadline passes. Returns the number left.
    pub async fn drained(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let n = self.idle.notified();
                if self.open() == 0 {
                    return;
                }
                n.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.open()
    }
}

pub fn builder(edge: &Edge) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(edge.limits.header_timeout)
        .max_buf_size(edge.limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size(edge.limits.max_header_bytes as u32)
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Accepts on `listener` until `shutdown` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    edge: Arc<Edge>,
    tracker: Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    if tls.is_some() {
        if let Ok(a) = listener.local_addr() {
            edge.https_port.store(a.port(), Ordering::Relaxed);
        }
    }
    let builder = Arc::new(builder(&edge));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: log, back off, keep going.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tracker.open.fetch_add(1, Ordering::AcqRel) >= edge.limits.max_connections {
            tracker.open.fetch_sub(1, Ordering::AcqRel);
            edge.metrics.connections_refused.inc();
            drop(stream);
            continue;
        }
        let slot = Slot(tracker.clone());
        let _ = stream.set_nodelay(true);
        let edge = edge.clone();
        let tls = tls.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            edge.metrics.connections_total.inc();
            edge.metrics.connections_open.inc();
            connection(stream, peer, tls, edge.clone(), builder, shutdown).await;
            edge.metrics.connections_open.dec();
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<TlsAcceptor>,
    edge: Arc<Edge>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        None => {
            let conn = Arc::new(Conn {
                peer,
                https: false,
                sni: None,
                inflight: 0.into(),
                activity: 0.into(),
            });
            serve(stream, conn, edge, &builder, shutdown).await
        }
        Some(acceptor) => {
            let hs =
                tokio::time::timeout(edge.limits.handshake_timeout, acceptor.accept(stream)).await;
            let tls = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    edge.metrics.tls_failures.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    edge.metrics.tls_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            edge.metrics.tls_handshakes.inc();
            let sni = tls.get_ref().1.server_name().map(Into::into);
            let conn = Arc::new(Conn {
                peer,
                https: true,
                sni,
                inflight: 0.into(),
                activity: 0.into(),
            });
            serve(tls, conn, edge, &builder, shutdown).await
        }
    }
}

async fn serve<IO>(
    io: IO,
    conn: Arc<Conn>,
    edge: Arc<Edge>,
    builder: &auto::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = edge.limits.clone();
    let c2 = conn.clone();
    let svc = service_fn(move |req| {
        let edge = edge.clone();
        let conn = c2.clone();
        async move { Ok::<_, Infallible>(service::handle(edge, conn, req).await) }
    });
    let c = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(c);
    // The idle watchdog. `conn.activity` counts requests started (bumped in `service::handle`),
    // `conn.inflight` the ones not finished. A connection is idle when no request was in flight at
    // a tick and none started since the previous one. Counting requests, not socket reads and
    // writes, matters: HTTP/2 keep-alive PINGs (and a client's acks) would otherwise keep an idle
    // h2 connection alive forever, and a client trickling bytes would too.
    // Before the first request: min(header, idle), which closes silent connections (plain or TLS,
    // h1 or an h2 client that sends the preface and nothing more). hyper's own h1
    // header_read_timeout closes a request head that trickles in, also between keep-alive requests.
    let mut period = limits.header_timeout.min(limits.idle_timeout);
    let mut seen = 0u64;
    let mut draining = *shutdown.borrow();
    if draining {
        c.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(peer = %conn.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !draining => {
                let _ = changed;
                draining = true;
                c.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(period) => {
                let now = conn.activity.load(Ordering::Relaxed);
                if now == seen && conn.inflight.load(Ordering::Relaxed) == 0 {
                    tracing::trace!(peer = %conn.peer, "closing idle connection");
                    return;
                }
                if now != seen {
                    period = limits.idle_timeout;
                }
                seen = now;
            }
        }
    }
}
