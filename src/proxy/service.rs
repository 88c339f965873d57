//! One request: load the table once, find the site, gate, pick a backend, rewrite headers, forward,
//! stream the answer back. The table guard is dropped before the first `.await`; only `Arc`s of the
//! site and backend are held across the upstream call. No lock is taken here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, HOST, LOCATION};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::body::{BodyError, Finish, ReqBody, RespBody};
use super::error_page::{wants_json, ProxyError};
use super::gate::{self, Gate, WriteGuard};
use super::headers;
use super::tunnel;
use super::Conn;
use crate::accesslog::{AccessLog, Record};
use crate::config::{Color, Limits};
use crate::metrics::Metrics;
use crate::routing::{Backend, RoutingTable};

pub type UpstreamClient = Client<HttpConnector, ReqBody>;

/// Everything a request needs, shared by all connections of all listeners.
pub struct Edge {
    pub table: Arc<arc_swap::ArcSwap<RoutingTable>>,
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
            client,
            limits,
            log,
            metrics,
            eject_backoff: Duration::from_secs(10),
            https_port: AtomicU16::new(0),
        }
    }
}

/// Bookkeeping that must happen when the response body ends: the access-log line, the write's
/// in-flight count, the connection's in-flight count (both guards release on drop).
struct Done {
    record: Option<Record>,
    log: Option<AccessLog>,
    _write: Option<WriteGuard>,
    _inflight: Inflight,
}

impl Finish for Done {
    fn finish(&mut self, bytes: u64, complete: bool) {
        if let (Some(r), Some(log)) = (self.record.take(), self.log.take()) {
            log.send(r.format(bytes, complete));
        }
        self._write = None;
    }
}

/// Counts a request into its connection's `inflight` until dropped. A guard rather than a manual
/// decrement at the end of `handle`: hyper drops the handler future when an HTTP/2 client resets
/// the stream (or the connection goes away) before the answer is ready, and the idle watchdog
/// must not see that request as in flight forever.
struct Inflight(Arc<Conn>);

impl Inflight {
    fn enter(conn: Arc<Conn>) -> Inflight {
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

pub async fn handle(
    edge: Arc<Edge>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let inflight = Inflight::enter(conn);
    let conn = &inflight.0;
    let start = Instant::now();
    let mut ctx = Ctx {
        site: None,
        color: None,
        backend: None,
        write: None,
    };
    let (method, path, host) = if edge.log.enabled() {
        (
            req.method().clone(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            req_host(&req).map(str::to_string).unwrap_or_default(),
        )
    } else {
        Default::default()
    };
    let json = wants_json(req.headers().get(ACCEPT));
    let mut resp = match forward(&edge, conn, req, &mut ctx).await {
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
    let record = edge.log.enabled().then(|| Record {
        start,
        client: conn.peer,
        host,
        method,
        path,
        status,
        color: ctx.color.map(Color::as_str),
        backend: ctx.backend,
    });
    resp.body_mut().on_finish(Box::new(Done {
        record,
        log: edge.log.enabled().then(|| edge.log.clone()),
        _write: ctx.write.take(),
        _inflight: inflight,
    }));
    resp
}

struct Ctx {
    site: Option<Arc<str>>,
    color: Option<Color>,
    backend: Option<SocketAddr>,
    write: Option<WriteGuard>,
}

fn req_host<B>(req: &Request<B>) -> Option<&str> {
    match req.headers().get(HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

async fn forward(
    edge: &Edge,
    conn: &Arc<Conn>,
    mut req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<RespBody>, ProxyError> {
    let host = req_host(&req).ok_or(ProxyError::BadRequest("the request has no Host header"))?;
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
            return Ok(redirect(host, port, req.uri()));
        }
    }
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
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
    let mark_read_only = match gate::check(&site, req.method(), req.uri().path(), client_ip) {
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
    let pool = site.pool(color).clone();

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
    headers::add_forwarded(&mut parts.headers, client_ip, conn.https, Some(&host_value));
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

    let mut backend = pool.pick(None).ok_or(ProxyError::NoBackend)?.clone();
    parts.uri = upstream_uri(&backend, pq.clone());
    let mut attempt = Request::from_parts(parts, body);
    let mut tried_retry = false;
    let mut resp = loop {
        ctx.backend = Some(backend.addr);
        let result =
            tokio::time::timeout(edge.limits.upstream_timeout, edge.client.request(attempt)).await;
        match result {
            Ok(Ok(r)) => {
                backend.clear_ejection();
                break r;
            }
            Ok(Err(e)) => {
                let err = classify(&e);
                if e.is_connect() {
                    backend.eject(edge.eject_backoff);
                    edge.metrics.backend_failure();
                    if let (false, Some((m, h))) = (tried_retry, &retry) {
                        if let Some(next) = pool.pick(Some(&backend)) {
                            tried_retry = true;
                            backend = next.clone();
                            let mut r = Request::new(ReqBody::Empty);
                            *r.method_mut() = m.clone();
                            *r.headers_mut() = h.clone();
                            *r.uri_mut() = upstream_uri(&backend, pq.clone());
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
        let prev = site.shared.writes_since_switch[color.idx()].fetch_add(1, Ordering::Relaxed);
        if prev == 0 && color == site.active {
            site.shared.write_seen.store(true, Ordering::Relaxed);
        }
    }

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tunnel::spawn(client_upgrade, upstream_upgrade, &site, color);
        }
    } else {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
    }
    Ok(resp.map(RespBody::upstream))
}

fn upstream_uri(b: &Backend, pq: PathAndQuery) -> Uri {
    let mut p = http::uri::Parts::default();
    p.scheme = Some(Scheme::HTTP);
    p.authority = Some(b.authority.clone());
    p.path_and_query = Some(pq);
    Uri::from_parts(p).expect("scheme, authority and path make a URI")
}

fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        match s.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge(n)) => return ProxyError::BodyTooLarge(*n),
            // The client's own body broke (bad chunk framing, cut off): its fault, not the backend's.
            Some(BodyError::Hyper(_)) => {
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
    if e.is_connect() {
        ProxyError::Upstream("the backend refused the connection".into())
    } else {
        ProxyError::Upstream("the backend closed the connection or sent an invalid response".into())
    }
}

fn redirect(host: &str, https_port: u16, uri: &Uri) -> Response<RespBody> {
    let bare = crate::routing::strip_port(host);
    let loc = if https_port == 443 {
        format!(
            "https://{bare}{}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        )
    } else {
        format!(
            "https://{bare}:{https_port}{}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        )
    };
    let mut r = Response::new(RespBody::full(Bytes::from_static(b"")));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::try_from(loc) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}
