//! Accept loops and connection lifecycle: the connection limit, the TLS handshake deadline, the
//! header and idle timeouts, and graceful shutdown (stop accepting, let requests in flight finish
//! within a deadline, then close).
//!
//! Connections run on edge workers: one thread per CPU, each with a single-threaded tokio runtime
//! and its own accept loop on a duplicate of the listening socket. A connection stays on the
//! thread that accepted it, together with its backend connections (see `upstream.rs`), so a
//! request never wakes another thread: no work stealing, no futex wake-ups between workers, no
//! cache lines moving for the connection's state. The control plane (control socket, health
//! checks, metrics page) stays on the main multi-threaded runtime.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

mod proxy_protocol;

use super::linger::Linger;
use super::request_body::InBody;
use super::service::gather::{Gather, Passes};
use super::watchdog::{Verdict, Watchdog};
use super::{fast, service, Conn, Edge};

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

/// One edge worker: a thread running a current-thread runtime.
struct Worker {
    handle: tokio::runtime::Handle,
    /// Connections it serves (for balancing).
    open: AtomicUsize,
}

/// Decrements a worker's connection count when the connection ends.
struct WorkerSlot(&'static Worker);

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The edge workers: one thread per CPU (or `SWITCHYARD_WORKERS`), each running a
/// current-thread runtime until the process exits. Started on first use.
fn workers() -> &'static [Worker] {
    static WORKERS: std::sync::OnceLock<Vec<Worker>> = std::sync::OnceLock::new();
    WORKERS.get_or_init(|| {
        let n = std::env::var("SWITCHYARD_WORKERS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        (0..n)
            .filter_map(|i| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| tracing::warn!(error = %e, "cannot start an edge worker"))
                    .ok()?;
                let handle = rt.handle().clone();
                std::thread::Builder::new()
                    .name(format!("edge-{i}"))
                    .spawn(move || rt.block_on(std::future::pending::<()>()))
                    .map_err(|e| tracing::warn!(error = %e, "cannot start an edge worker"))
                    .ok()?;
                Some(Worker {
                    handle,
                    open: AtomicUsize::new(0),
                })
            })
            .collect()
    })
}

/// Accepts on `listener` until `shutdown` turns true: one accept loop per edge worker, each on a
/// duplicate of the socket (the kernel hands each new connection to one of them). A worker that
/// accepts while it serves more connections than another hands the connection over to the least
/// busy one (a burst of connects tends to land on whichever worker is awake). Returns when all
/// have stopped accepting. `proxy_header`: connections from trusted proxies start with a PROXY
/// protocol header (see `listener/proxy_protocol.rs`).
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy_header: bool,
    edge: Arc<Edge>,
    tracker: Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
) {
    if tls.is_some() {
        if let Ok(a) = listener.local_addr() {
            edge.https_port.store(a.port(), Ordering::Relaxed);
        }
    }
    let workers = workers();
    let std_listener = match listener.into_std() {
        Ok(l) if !workers.is_empty() => l,
        Ok(l) => {
            // No worker could start: serve from this runtime.
            match TcpListener::from_std(l) {
                Ok(l) => {
                    return worker_accept_loop(l, None, tls, proxy_header, edge, tracker, shutdown)
                        .await
                }
                Err(e) => return tracing::error!(error = %e, "cannot accept connections"),
            }
        }
        Err(e) => return tracing::error!(error = %e, "cannot accept connections"),
    };
    let mut loops = Vec::with_capacity(workers.len());
    for (i, w) in workers.iter().enumerate() {
        let l = match std_listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot share the listening socket with a worker");
                continue;
            }
        };
        let (tls, edge, tracker, shutdown) =
            (tls.clone(), edge.clone(), tracker.clone(), shutdown.clone());
        loops.push(w.handle.spawn(async move {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    worker_accept_loop(l, Some(i), tls, proxy_header, edge, tracker, shutdown).await
                }
                Err(e) => tracing::error!(error = %e, "cannot accept connections"),
            }
        }));
    }
    drop(std_listener);
    for l in loops {
        let _ = l.await;
    }
}

/// The accept loop of worker `me` (None: not on a worker).
async fn worker_accept_loop(
    listener: TcpListener,
    me: Option<usize>,
    tls: Option<TlsAcceptor>,
    proxy_header: bool,
    edge: Arc<Edge>,
    tracker: Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(service::builder(&edge));
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
        // `worker`: already counted in its `open` when the connection was assigned to it.
        let run = move |stream: TcpStream, worker: Option<&'static Worker>| async move {
            let _slot = slot;
            let _worker = worker.map(WorkerSlot);
            edge.metrics.connections_total.inc();
            edge.metrics.connections_open.inc();
            connection(
                stream,
                peer,
                tls,
                proxy_header,
                edge.clone(),
                builder,
                shutdown,
            )
            .await;
            edge.metrics.connections_open.dec();
        };
        let Some(me) = me else {
            tokio::spawn(run(stream, None));
            continue;
        };
        let workers = workers();
        let (least, min) = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (i, w.open.load(Ordering::Relaxed)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((me, 0));
        if least != me && workers[me].open.load(Ordering::Relaxed) > min {
            // Hand over: the socket moves to the other worker's reactor.
            match stream.into_std() {
                Ok(std) => {
                    let w = &workers[least];
                    // Counted at once, so the next accept sees it.
                    w.open.fetch_add(1, Ordering::Relaxed);
                    w.handle.spawn(async move {
                        match TcpStream::from_std(std) {
                            Ok(s) => run(s, Some(w)).await,
                            Err(e) => {
                                drop(WorkerSlot(w));
                                tracing::warn!(error = %e, "cannot hand a connection over")
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
            }
        } else {
            workers[me].open.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(run(stream, Some(&workers[me])));
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    mut peer: std::net::SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy_header: bool,
    edge: Arc<Edge>,
    builder: Arc<http1::Builder>,
    shutdown: watch::Receiver<bool>,
) {
    if proxy_header && edge.table.load().trusts(peer.ip()) {
        let read = proxy_protocol::read(&mut stream);
        match tokio::time::timeout(edge.limits.header_timeout, read).await {
            Ok(Ok(proxy_protocol::Header::Client(client))) => peer = client,
            Ok(Ok(proxy_protocol::Header::Local)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection dropped: bad PROXY header");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "connection dropped: no PROXY header in time");
                return;
            }
        }
    }
    match tls {
        None => {
            let conn = Arc::new(Conn::new(edge.clone(), peer, false, None, false));
            serve(stream, conn, builder, shutdown).await
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
            if tls.get_ref().1.alpn_protocol() == Some(super::tls::ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the handshake was all of it; no HTTP on it (RFC 8737).
                return;
            }
            let sni = tls.get_ref().1.server_name().map(Into::into);
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let conn = Arc::new(Conn::new(edge.clone(), peer, true, sni, h2));
            serve(tls, conn, builder, shutdown).await
        }
    }
}

/// Serves one connection: its requests run as a task of their own (`run`), and this one keeps
/// the watch (timeouts, shutdown), so a socket wake-up polls the connection alone, not this timer
/// and shutdown signal too. Returning from here ends the connection (the guard aborts its task).
async fn serve<IO>(
    io: IO,
    conn: Arc<Conn>,
    builder: Arc<http1::Builder>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // HTTP/1.1 connections start on the fast path; hyper takes over the first request the fast
    // path does not take.
    let fast_phase = Arc::new(AtomicBool::new(!conn.h2));
    let io = Reads {
        inner: Linger::new(io, !conn.h2),
        conn: conn.clone(),
    };
    let work = run(
        io,
        conn.clone(),
        builder,
        shutdown.clone(),
        fast_phase.clone(),
    );
    let mut task = AbortOnDrop(tokio::spawn(work));
    let mut dog = Watchdog::new(&conn.edge.limits, conn.h2);
    let mut draining = *shutdown.borrow();
    conn.draining.store(draining, Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = &mut task.0 => return,
            changed = shutdown.changed(), if !draining => {
                let _ = changed;
                draining = true;
                conn.draining.store(true, Ordering::Relaxed);
                // The fast path closes after the response in flight; between requests (nothing
                // in flight, no new head arriving) the connection closes now.
                if fast_phase.load(Ordering::Relaxed) && conn.activity.at_rest() {
                    return;
                }
            }
            _ = tokio::time::sleep(dog.tick) => {
                if dog.check(&conn.activity) == Verdict::Close {
                    tracing::trace!(peer = %conn.peer, "closing idle connection");
                    return;
                }
            }
        }
    }
}

/// The requests of one connection: the fast path first (HTTP/1.1), then HTTP/2 when the client
/// speaks it (chosen by ALPN, or with prior knowledge on either listener), else hyper's HTTP/1.1.
async fn run<IO>(
    io: IO,
    conn: Arc<Conn>,
    builder: Arc<http1::Builder>,
    mut shutdown: watch::Receiver<bool>,
    fast_phase: Arc<AtomicBool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut io, mut prefix) = if fast_phase.load(Ordering::Relaxed) {
        match fast::serve(io, &conn).await {
            fast::Outcome::Closed => return,
            fast::Outcome::Handoff(io, prefix) => {
                fast_phase.store(false, Ordering::Relaxed);
                (io, prefix)
            }
        }
    } else {
        (io, BytesMut::new())
    };
    let h2 = match speaks_h2(&mut io, &mut prefix).await {
        Ok(h2) => h2,
        Err(_) => return,
    };
    if h2 {
        // h2's writes are gathered per pass of the connection (see `service/gather.rs`).
        let passes = Passes::default();
        let io = Prefixed {
            prefix,
            inner: Gather::new(io, Some(passes.clone())),
        };
        return service::h2::serve(io, conn, passes, shutdown).await;
    }
    let io = Prefixed {
        prefix,
        inner: Gather::new(io, None),
    };
    let c2 = conn.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let conn = c2.clone();
        let req = req.map(InBody::H1);
        async move { Ok::<_, Infallible>(service::handle(conn, req).await) }
    });
    let c = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(c);
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
        }
    }
}

/// What an HTTP/2 client sends first (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client's first bytes (in `prefix`, read on until they tell) are the HTTP/2
/// preface. A client that chose h2 by ALPN and then speaks HTTP/1.1 is served as HTTP/1.1.
async fn speaks_h2<IO: AsyncRead + Unpin>(io: &mut IO, prefix: &mut BytesMut) -> io::Result<bool> {
    loop {
        let n = prefix.len().min(PREFACE.len());
        if prefix[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        if io.read_buf(prefix).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The read side of these wrappers does their work; writes go straight to the inner stream.
macro_rules! delegate_write {
    ($t:ident) => {
        impl<IO: AsyncWrite + Unpin> AsyncWrite for $t<IO> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

/// A connection handed on from the fast path (or read to choose its protocol): the bytes already
/// read come first.
struct Prefixed<IO> {
    prefix: BytesMut,
    inner: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

delegate_write!(Prefixed);

/// Counts socket reads that returned bytes into the connection's activity, for the watchdog: one
/// relaxed add per read.
struct Reads<IO> {
    inner: IO,
    conn: Arc<Conn>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Reads<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.activity.read();
        }
        r
    }
}

delegate_write!(Reads);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_first_bytes_choose_the_protocol() {
        // The preface in two pieces: read on until it is whole.
        let (mut a, mut b) = tokio::io::duplex(1 << 10);
        b.write_all(&PREFACE[..10]).await.unwrap();
        let writer = tokio::spawn(async move {
            b.write_all(&PREFACE[10..]).await.unwrap();
            b
        });
        let mut prefix = BytesMut::new();
        assert!(speaks_h2(&mut a, &mut prefix).await.unwrap());
        assert_eq!(&prefix[..], PREFACE, "the preface stays for h2 to read");
        drop(writer.await.unwrap());

        // HTTP/1.1 after ALPN h2, or what the fast path handed over: decided on the first byte
        // that differs, nothing more read.
        let (mut a, mut b) = tokio::io::duplex(1 << 10);
        b.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut prefix = BytesMut::new();
        assert!(!speaks_h2(&mut a, &mut prefix).await.unwrap());
        assert_eq!(&prefix[..], b"GET / HTTP/1.1\r\n");
        let mut prefix = BytesMut::from(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]);
        assert!(speaks_h2(&mut a, &mut prefix).await.unwrap());

        // A client that leaves halfway through the preface.
        let (mut a, mut b) = tokio::io::duplex(1 << 10);
        b.write_all(&PREFACE[..5]).await.unwrap();
        drop(b);
        let mut prefix = BytesMut::new();
        assert!(speaks_h2(&mut a, &mut prefix).await.is_err());
    }
}
