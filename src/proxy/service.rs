//! One request on hyper's side (HTTP/2, and HTTP/1.1 the fast path handed over): load the table
//! once, find the site, gate, pick a backend, rewrite headers, forward, stream the answer back.
//! The routing and gating (`decide`) are shared with the fast path (`fast/`). The table guard is dropped before the first `.await`; only `Arc`s of the
//! site and backend are held across the upstream call. No lock is taken here.
//!
//! What a request costs, besides hyper's own work: one `ArcSwap` load of the table (a hash lookup
//! of the host), relaxed atomics for the connection's and backend's counters and round-robin, a
//! SeqCst pair for writes (the read-only gate), an idle upstream connection from this worker
//! thread's pool (`fast/backend.rs` or `upstream.rs`, a `RefCell`, no lock), one timer for the upstream timeout, the
//! metrics' atomics, and, with the access log on, a `try_send` of a [`Record`] holding
//! reference-counted clones (formatting happens on the log thread). Allocations per request: the
//! `X-Forwarded-For` value only when the client sent one (otherwise the connection's own, made
//! once), `:authority` → Host for HTTP/2 requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, HOST, LOCATION};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::body::{BodyError, ReqBody, RespBody};
use super::error_page::{wants_json, ProxyError};
use super::fast;
use super::gate::{self, Gate, WriteGuard};
use super::headers;
use super::tunnel;
use super::upstream::{SendError, UpConn, Upstream};
use super::Conn;
use crate::accesslog::{AccessLog, Record, Text};
use crate::config::{Color, Limits};
use crate::metrics::Metrics;
use crate::routing::{Backend, RoutingTable, SiteRoute};

pub type UpstreamClient = Client<HttpConnector, ReqBody>;

/// Everything a request needs, shared by all connections of all listeners.
pub struct Edge {
    pub table: Arc<arc_swap::ArcSwap<RoutingTable>>,
    /// Requests with a body: hyper's HTTP/1.1 client, connections pooled per thread, no lock.
    pub upstream: Upstream,
    /// Settings of the raw backend connections (fast path, and bodiless requests from hyper's).
    pub raw: fast::backend::Settings,
    /// Upgrades (WebSocket): hyper-util's pooled client, which hands over the upgraded socket.
    pub client: UpstreamClient,
    pub limits: Limits,
    pub log: AccessLog,
    pub metrics: Arc<Metrics>,
    /// How long a backend that refused a connection is skipped.
    pub eject_backoff: Duration,
    /// The port the HTTPS listener actually bound (0 until it has): redirects use it, so a
    /// configured port 0 or a rebind never sends clients to the wrong port.
    pub https_port: AtomicU16,
}

impl Edge {
    pub fn new(
        table: Arc<arc_swap::ArcSwap<RoutingTable>>,
        limits: Limits,
        log: AccessLog,
        metrics: Arc<Metrics>,
    ) -> Edge {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(limits.upstream_connect_timeout));
        conn.enforce_http(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .set_host(false)
            .http1_max_buf_size(limits.max_header_bytes.max(8192) * 2)
            .build(conn);
        Edge {
            table,
            upstream: Upstream {
                connect_timeout: limits.upstream_connect_timeout,
                idle_timeout: Duration::from_secs(60),
                max_buf_size: limits.max_header_bytes.max(8192) * 2,
            },
            raw: fast::backend::Settings {
                connect_timeout: limits.upstream_connect_timeout,
                idle_timeout: Duration::from_secs(60),
                max_head: limits.max_header_bytes.max(8192) * 2,
            },
            client,
            limits,
            log,
            metrics,
            eject_backoff: Duration::from_secs(10),
            https_port: AtomicU16::new(0),
        }
    }
}

/// Bookkeeping that must happen when the response body ends: the access-log line, the upstream
/// connection back into the pool (only after a clean end), the write's in-flight count, the
/// connection's in-flight count (both guards release on drop).
pub(crate) struct Done {
    site: Option<Arc<str>>,
    record: Option<Record>,
    _write: Option<WriteGuard>,
    _inflight: Inflight,
}

impl Done {
    /// `conn`: the backend connection the body came from, pooled again after a clean end.
    pub(crate) fn finish(self, bytes: u64, complete: bool, conn: Option<UpConn>) {
        let edge = &self._inflight.0.edge;
        edge.metrics.response_bytes(self.site.as_deref(), bytes);
        if let Some(r) = self.record {
            edge.log.send(r.finish(bytes, complete));
        }
        if let (Some(c), true) = (conn, complete) {
            c.release(edge.upstream.idle_timeout);
        }
    }
}

/// Counts a request into its connection's `inflight` until dropped. A guard rather than a manual
/// decrement at the end of `handle`: hyper drops the handler future when an HTTP/2 client resets
/// the stream (or the connection goes away) before the answer is ready, and the idle watchdog
/// must not see that request as in flight forever.
pub(crate) struct Inflight(pub(crate) Arc<Conn>);

impl Inflight {
    pub(crate) fn enter(conn: Arc<Conn>) -> Inflight {
        conn.inflight.fetch_add(1, Ordering::Relaxed);
        conn.activity.fetch_add(1, Ordering::Relaxed);
        Inflight(conn)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        // Reads up to here belonged to this request (its body): the watchdog's baseline.
        let reads = self.0.reads.load(Ordering::Relaxed);
        self.0.reads_at_rest.store(reads, Ordering::Relaxed);
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<RespBody> {
    let inflight = Inflight::enter(conn);
    let conn = &inflight.0;
    let edge = &conn.edge;
    let start = Instant::now();
    let mut ctx = Ctx {
        site: None,
        color: None,
        backend: None,
        write: None,
    };
    // Copies (inline, no allocation): see `accesslog::Text`.
    let logged = edge.log.enabled().then(|| {
        (
            req.method().clone(),
            Text::new(
                req.uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes(),
            ),
            Text::new(req_host(&req).unwrap_or("").as_bytes()),
        )
    });
    let json = wants_json(req.headers().get(ACCEPT));
    // Boxed: the forwarding state (request parts, the upstream exchange, the timer) is several
    // KiB, and hyper moves the handler's future at least twice (into its stream future, then
    // into a spawned task) — one allocation is cheaper than copying it each time.
    let mut resp = match Box::pin(forward(edge, conn, req, &mut ctx)).await {
        Ok(r) => r,
        Err(e) => {
            edge.metrics.proxy_error(&e);
            if e.source() != super::error_page::Source::Client {
                tracing::debug!(error = %e, "request failed");
            }
            e.response(json)
        }
    };
    let status = resp.status().as_u16();
    edge.metrics
        .response(ctx.site.as_deref(), ctx.color, status, start.elapsed());
    let record = logged.map(|(method, path, host)| Record {
        start,
        client: conn.peer,
        host,
        method,
        path,
        status,
        color: ctx.color.map(Color::as_str),
        backend: ctx.backend,
    });
    resp.body_mut().on_finish(Done {
        site: ctx.site.take(),
        record,
        _write: ctx.write.take(),
        _inflight: inflight,
    });
    resp
}

pub(crate) struct Ctx {
    pub site: Option<Arc<str>>,
    pub color: Option<Color>,
    pub backend: Option<SocketAddr>,
    pub write: Option<WriteGuard>,
}

fn req_host<B>(req: &Request<B>) -> Option<&str> {
    match req.headers().get(HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

/// Where a request goes, decided before anything is sent: the site, the color (the active one,
/// or the idle one for a preview host), the read-only mark, and the write's in-flight guard.
/// Shared by hyper's path (`forward`) and the HTTP/1.1 fast path (`fast.rs`).
pub(crate) enum Decision {
    Forward {
        site: Arc<SiteRoute>,
        color: Color,
        mark_read_only: bool,
    },
    /// Plain HTTP to a site that redirects: to this HTTPS port.
    Redirect(u16),
}

/// Routes and gates a request: host → site (and the SNI check), the HTTP → HTTPS redirect, the
/// Content-Length limit (`content_length`: the header, if any, not yet checked), the read-only
/// gate, the preview hosts. Fills `ctx` as it learns things, for the log and the metrics.
pub(crate) fn decide(
    edge: &Edge,
    conn: &Conn,
    host: &str,
    method: &Method,
    path: &str,
    content_length: Option<&HeaderValue>,
    ctx: &mut Ctx,
) -> Result<Decision, ProxyError> {
    let (site, preview, https_port) = {
        let table = edge.table.load();
        let route = table.lookup(host).ok_or(ProxyError::UnknownHost)?;
        if let Some(sni) = &conn.sni {
            if !crate::routing::same_host(host, sni) {
                match table.lookup(sni) {
                    Some(r) if r.site != route.site => return Err(ProxyError::Misdirected),
                    _ => {}
                }
            }
        }
        (
            table.sites[route.site].clone(),
            route.preview,
            table.https_port,
        )
    };
    ctx.site = Some(site.name.clone());
    ctx.color = Some(site.active);
    if !conn.https && site.redirect_http {
        if let Some(port) = https_port {
            let port = match edge.https_port.load(Ordering::Relaxed) {
                0 => port,
                bound => bound,
            };
            return Ok(Decision::Redirect(port));
        }
    }
    if let Some(len) = content_length {
        let len: u64 =
            len.to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ProxyError::BadRequest(
                    "the Content-Length header is not a number",
                ))?;
        if len > edge.limits.max_body_bytes {
            return Err(ProxyError::BodyTooLarge(edge.limits.max_body_bytes));
        }
    }
    let client_ip = conn.peer.ip();
    let mark_read_only = match gate::check(&site, method, path, client_ip) {
        Gate::Refuse(notice) => {
            edge.metrics.rejected_write(&site.name);
            return Err(ProxyError::ReadOnly(notice));
        }
        Gate::Pass { read_only, write } => {
            ctx.write = write;
            read_only
        }
    };
    let color = if preview {
        if !site.policy.client_allowed(client_ip) {
            return Err(ProxyError::Forbidden(
                "preview hosts are open to the site's read_only.allow_clients only",
            ));
        }
        site.active.other()
    } else {
        site.active
    };
    ctx.color = Some(color);
    Ok(Decision::Forward {
        site,
        color,
        mark_read_only,
    })
}

/// Counts a write answered by `color` (the rollback guard reads these).
pub(crate) fn count_write(site: &SiteRoute, color: Color) {
    let prev = site.shared.writes_since_switch[color.idx()].fetch_add(1, Ordering::Relaxed);
    if prev == 0 && color == site.active && !site.shared.write_seen.swap(true, Ordering::Relaxed) {
        crate::routing::FIRST_WRITE.notify_one();
    }
}

async fn forward(
    edge: &Edge,
    conn: &Arc<Conn>,
    mut req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<RespBody>, ProxyError> {
    let host = req_host(&req).ok_or(ProxyError::BadRequest("the request has no Host header"))?;
    let (site, color, mark_read_only) = match decide(
        edge,
        conn,
        host,
        req.method(),
        req.uri().path(),
        req.headers().get(CONTENT_LENGTH),
        ctx,
    )? {
        Decision::Redirect(port) => {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return Ok(redirect(host, port, pq));
        }
        Decision::Forward {
            site,
            color,
            mark_read_only,
        } => (site, color, mark_read_only),
    };
    let pool = site.pool(color);

    // Prepare the upstream request.
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host_value = match parts.headers.get(HOST) {
        Some(h) => h.clone(),
        None => {
            let a = parts.uri.authority().map(|a| a.as_str()).unwrap_or("");
            HeaderValue::from_str(a).map_err(|_| ProxyError::BadRequest("bad :authority"))?
        }
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(
        &mut parts.headers,
        conn.ip_value(),
        conn.https,
        Some(&host_value),
    );
    parts.headers.insert(HOST, host_value);
    if mark_read_only {
        parts
            .headers
            .insert(&headers::X_READ_ONLY, HeaderValue::from_static("1"));
    } else {
        parts.headers.remove(&headers::X_READ_ONLY);
    }
    parts.version = Version::HTTP_11;
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let body = ReqBody::new(body, edge.limits.max_body_bytes);
    // A GET/HEAD without a body can be retried once on another backend if the first refuses the
    // connection; keep what is needed to rebuild it (only when a second backend exists).
    let retry =
        (gate::is_safe(&parts.method) && matches!(body, ReqBody::Empty) && pool.backends.len() > 1)
            .then(|| (parts.method.clone(), parts.headers.clone()));
    let is_write = !gate::is_safe(&parts.method);

    let mut backend = pool.pick(None).ok_or(ProxyError::NoBackend)?;
    // Origin form for our own connections; hyper-util's client wants the absolute URI.
    let uri = |b: &Backend| {
        if upgrade {
            upstream_uri(b, pq.clone())
        } else {
            Uri::from(pq.clone())
        }
    };
    parts.uri = uri(backend);
    let mut attempt = Request::from_parts(parts, body);
    let mut tried_retry = false;
    let mut resp = loop {
        ctx.backend = Some(backend.addr);
        let result = super::deadline::timeout(
            edge.limits.upstream_timeout,
            send(edge, backend.addr, attempt, upgrade),
        )
        .await;
        match result {
            Ok(Ok(r)) => {
                backend.clear_ejection();
                break r;
            }
            Ok(Err(Failed { connect, err })) => {
                if connect {
                    backend.eject(edge.eject_backoff);
                    edge.metrics.backend_failure();
                    if let (false, Some((m, h))) = (tried_retry, &retry) {
                        if let Some(next) = pool.pick(Some(backend)) {
                            tried_retry = true;
                            backend = next;
                            let mut r = Request::new(ReqBody::Empty);
                            *r.method_mut() = m.clone();
                            *r.headers_mut() = h.clone();
                            *r.uri_mut() = uri(backend);
                            attempt = r;
                            continue;
                        }
                    }
                }
                return Err(err);
            }
            Err(_) => return Err(ProxyError::UpstreamTimeout),
        }
    };
    if is_write {
        count_write(&site, color);
    }

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tunnel::spawn(client_upgrade, upstream_upgrade, &site, color);
        }
    } else {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
    }
    Ok(resp)
}

/// Why the upstream gave no response head; `connect`: nothing reached the backend.
struct Failed {
    connect: bool,
    err: ProxyError,
}

async fn send(
    edge: &Edge,
    addr: SocketAddr,
    req: Request<ReqBody>,
    upgrade: bool,
) -> Result<Response<RespBody>, Failed> {
    if !upgrade && matches!(req.body(), ReqBody::Empty) {
        return send_raw(edge, addr, req).await;
    }
    if upgrade {
        return match edge.client.request(req).await {
            Ok(r) => Ok(r.map(|b| RespBody::upstream(b, None))),
            Err(e) => Err(Failed {
                connect: e.is_connect(),
                err: classify(std::error::Error::source(&e), e.is_connect()),
            }),
        };
    }
    match edge.upstream.send(addr, req).await {
        Ok((r, conn)) => Ok(r.map(|b| RespBody::upstream(b, Some(conn)))),
        Err(SendError::Connect(e)) => Err(Failed {
            connect: true,
            err: if e.kind() == std::io::ErrorKind::TimedOut {
                ProxyError::UpstreamTimeout
            } else {
                ProxyError::Upstream("the backend refused the connection".into())
            },
        }),
        Err(SendError::Http(e)) => Err(Failed {
            connect: false,
            err: classify(Some(&e), false),
        }),
        Err(SendError::Closed) => Err(Failed {
            connect: false,
            err: classify(None, false),
        }),
    }
}

/// A request without a body goes out on a raw pooled connection (`fast::backend`, as on the
/// HTTP/1.1 fast path): one write, the response head parsed in place, the body read straight off
/// the socket by the response body. Requests with a body stream through hyper's client.
async fn send_raw(
    edge: &Edge,
    addr: SocketAddr,
    req: Request<ReqBody>,
) -> Result<Response<RespBody>, Failed> {
    let (parts, _) = req.into_parts();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in &parts.headers {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut head = None;
    let answer = fast::backend::exchange(
        addr,
        &out,
        &parts.method,
        gate::is_safe(&parts.method),
        &edge.raw,
        &mut |h: &fast::head::RespHead<'_, '_>| {
            let bad = || fast::head::BadResponse("the backend sent an invalid header");
            let status = StatusCode::from_u16(h.status).map_err(|_| bad())?;
            let mut map = http::HeaderMap::with_capacity(h.headers.len());
            for x in h.headers {
                if h.hop_by_hop(x.name) || x.name.eq_ignore_ascii_case("transfer-encoding") {
                    continue;
                }
                let n = http::HeaderName::from_bytes(x.name.as_bytes()).map_err(|_| bad())?;
                map.append(n, HeaderValue::from_bytes(x.value).map_err(|_| bad())?);
            }
            head = Some((status, map));
            Ok(())
        },
    )
    .await
    .map_err(|f| Failed {
        connect: f.connect,
        err: f.err,
    })?;
    let Some((status, headers)) = head else {
        return Err(Failed {
            connect: false,
            err: classify(None, false),
        });
    };
    let mut resp = Response::new(RespBody::raw(
        answer.conn,
        answer.framing,
        !answer.backend_close,
        edge.raw.idle_timeout,
    ));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

fn upstream_uri(b: &Backend, pq: PathAndQuery) -> Uri {
    let mut p = http::uri::Parts::default();
    p.scheme = Some(Scheme::HTTP);
    p.authority = Some(b.authority.clone());
    p.path_and_query = Some(pq);
    Uri::from_parts(p).expect("scheme, authority and path make a URI")
}

fn classify(mut src: Option<&(dyn std::error::Error + 'static)>, connect: bool) -> ProxyError {
    while let Some(s) = src {
        match s.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge(n)) => return ProxyError::BodyTooLarge(*n),
            // The client's own body broke (bad chunk framing, cut off): its fault, not the backend's.
            Some(BodyError::Hyper(_) | BodyError::Upstream(_)) => {
                return ProxyError::BadRequest("the request body is malformed or was cut off")
            }
            None => {}
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProxyError::UpstreamTimeout;
            }
        }
        if s.to_string().contains("timed out") {
            return ProxyError::UpstreamTimeout;
        }
        src = s.source();
    }
    if connect {
        ProxyError::Upstream("the backend refused the connection".into())
    } else {
        ProxyError::Upstream("the backend closed the connection or sent an invalid response".into())
    }
}

/// The 308 to HTTPS; `pq`: the request's path and query.
pub(crate) fn redirect(host: &str, https_port: u16, pq: &str) -> Response<RespBody> {
    let bare = crate::routing::strip_port(host);
    let loc = if https_port == 443 {
        format!("https://{bare}{pq}")
    } else {
        format!("https://{bare}:{https_port}{pq}")
    };
    let mut r = Response::new(RespBody::full(Bytes::from_static(b"")));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::try_from(loc) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}
