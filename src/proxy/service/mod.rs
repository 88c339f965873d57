//! The front end for what the fast path does not take: HTTP/2 (the `h2` crate's server,
//! `h2.rs`) and HTTP/1.1 from the first request the fast path hands over (hyper's server). One
//! request: route and gate it (`request.rs`), rewrite its headers (`headers.rs`), send it
//! (`upstream::send`: a request without a body or with a small one on a raw connection, a larger
//! body through hyper's client, an upgrade on a connection of its own), stream the answer back
//! (`body.rs`). Only `Arc`s of the site and backend are held across the upstream call.
//!
//! - `body.rs`: the response body to the client, which ends the request's bookkeeping.
//! - `h2.rs`: the HTTP/2 connection, its streams served in its own task.
//! - `gather.rs`: HTTP/2 writes gathered into one TLS record per pass of the connection.
//! - `names.rs`: the header names of backend responses, remembered per worker thread.
//! - `tunnel.rs`: upgraded connections (WebSocket), copied both ways.

mod body;
pub mod gather;
pub(crate) mod h2;
mod names;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, CONTENT_LENGTH, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;

pub use body::RespBody;

use super::error_page::{wants_json, ProxyError};
use super::h1;
use super::headers;
use super::request::{self, Decision, Exchange};
use super::request_body::InBody;
use super::upstream::client::{self, ReqBody};
use super::upstream::raw::{self, RawBody};
use super::upstream::{self, Attempt, Failed, Settings};
use super::{Conn, Edge};
use crate::config::Color;
use crate::routing::SiteRoute;

/// hyper's server settings (HTTP/1.1).
pub fn builder(edge: &Edge) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        // Off: hyper's timer also runs between keep-alive requests, which would cap the idle
        // timeout at the header timeout. The watchdog enforces both.
        .header_read_timeout(None)
        .max_buf_size(edge.limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b
}

/// Serves one request.
pub async fn handle(conn: Arc<Conn>, req: Request<InBody>) -> Response<RespBody> {
    let target_path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    // Where the request is routed by, found once: the log records that host (or, for a
    // request refused for its target, the Host or authority it came with).
    let named = target(&req);
    let host = match &named {
        Ok((h, _)) => h.as_bytes(),
        Err(_) => req_host(&req).unwrap_or("").as_bytes(),
    };
    let mut x = Exchange::begin(&conn, req.method(), host, target_path.as_bytes());
    let json = wants_json(req.headers().get(ACCEPT).map(HeaderValue::as_bytes));
    // An HTTP/1 request whose body the edge may leave unread: hyper then closes the connection
    // after the answer, so the answer must say so, or a client reuses it and loses its next request.
    let body_may_stay_unread =
        req.version() < Version::HTTP_2 && !http_body::Body::is_end_stream(req.body());
    // Only what is still to come is held across the awaits below: the raw path's written head
    // (and a small body), not the request; hyper's client, whose futures are large, is boxed.
    // Bound by reference where an await follows: a value bound out of `next` would be a second
    // copy of it in this future's state.
    // The raw path's answer is taken from its slot only here: returned through `via_raw`'s
    // future, it would be copied once more.
    let mut next = prepare(&conn, req, named, &mut x);
    let forwarded = match next {
        Ok(Next::Answer(r)) => Ok(r),
        Ok(Next::Raw(ref r, ref mut raw)) => via_raw(&conn, r, raw, &mut x)
            .await
            .and_then(|()| raw.answer.take().ok_or_else(no_answer)),
        Ok(Next::Hyper(r, req)) => Box::pin(via_hyper(&conn, &r, req, &mut x)).await,
        Err(e) => Err(e),
    };
    let mut resp = match forwarded {
        Ok(r) => r,
        Err(e) => {
            x.error(&e);
            let mut r = e.response(json || x.json_errors).map(RespBody::full);
            if body_may_stay_unread {
                r.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    };
    x.responded(resp.status().as_u16());
    resp.body_mut().on_finish(x);
    resp
}

fn req_host<B>(req: &Request<B>) -> Option<&str> {
    match req.headers().get(HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

/// What comes next for a request, decided before anything is sent.
enum Next<'a> {
    /// The edge answers it (a redirect, an ACME challenge).
    Answer(Response<RespBody>),
    /// To a backend on a raw connection, its head written.
    Raw(Routed, RawTry<'a>),
    /// To a backend through hyper's client.
    Hyper(Routed, Request<InBody>),
}

/// Routes and gates a request whose target `named` was read already (see [`target`]), and for
/// the raw path writes its head: everything before the first await.
fn prepare<'a>(
    conn: &'a Conn,
    req: Request<InBody>,
    named: Result<(HeaderValue, bool), ProxyError>,
    x: &mut Exchange,
) -> Result<Next<'a>, ProxyError> {
    let (host_value, asterisk) = named?;
    let host = host_value
        .to_str()
        .map_err(|_| ProxyError::BadRequest("the Host header is not a valid host[:port]"))?;
    let decided = request::decide(
        conn,
        host,
        req.method(),
        req.uri().path(),
        req.headers().get(CONTENT_LENGTH),
        x,
    )?;
    let r = match decided {
        Decision::Redirect(port) => {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let page = request::redirect(host, port, target).map(RespBody::full);
            return Ok(Next::Answer(page));
        }
        Decision::Challenge(ka) => {
            return Ok(Next::Answer(request::challenge(&ka).map(RespBody::full)))
        }
        Decision::Forward {
            site,
            color,
            mark_read_only,
            trusted,
        } => Routed {
            site,
            color,
            is_write: !super::gate::is_safe(req.method()),
            host: host_value,
            asterisk,
            mark_read_only,
            trusted,
        },
    };
    if !inline_h2(&req, &conn.edge) {
        return Ok(Next::Hyper(r, req));
    }
    let raw = raw_request(conn, &r, req);
    Ok(Next::Raw(r, raw))
}

/// Where a forwarded request goes, and what the edge adds to it.
struct Routed {
    site: Arc<SiteRoute>,
    color: Color,
    /// Not GET, HEAD or OPTIONS (`gate::is_safe`): counted for the rollback guard once answered.
    is_write: bool,
    /// The Host it was routed by and is forwarded with.
    host: HeaderValue,
    /// `OPTIONS *`.
    asterisk: bool,
    mark_read_only: bool,
    /// The client is a trusted proxy (its forwarding headers are kept and extended).
    trusted: bool,
}

impl Routed {
    /// The backend answered: the write counted, HSTS added on HTTPS.
    fn answered(&self, conn: &Conn, resp: &mut Response<RespBody>) {
        if self.is_write {
            request::count_write(&self.site, self.color);
        }
        if let (Some(v), true) = (&self.site.hsts, conn.https) {
            resp.headers_mut()
                .insert(http::header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
    }

    /// The origin-form target the backend gets.
    fn target<'a>(&self, uri: &'a Uri) -> &'a str {
        match uri.path_and_query() {
            _ if self.asterisk => "*",
            Some(pq) => pq.as_str(),
            None => "/",
        }
    }
}

fn no_answer() -> ProxyError {
    ProxyError::Upstream("the backend exchange ended without an answer".into())
}

/// An HTTP/2 request the raw path takes: one without a body, or with a body of known length up
/// to [`request::INLINE_BODY`] (as the fast path takes them on HTTP/1.1).
fn inline_h2(req: &Request<InBody>, edge: &Edge) -> bool {
    let body = req.body();
    req.version() == Version::HTTP_2
        && (http_body::Body::is_end_stream(body)
            || http_body::Body::size_hint(body)
                .exact()
                .is_some_and(|n| n <= request::INLINE_BODY.min(edge.limits.max_body_bytes)))
}

/// The common HTTP/2 request: its head written straight from the h2 request's headers (nothing
/// rewritten in the map, no request rebuilt for a retry), to be sent with a small body, read
/// whole after it, in one write on a raw connection. HTTP/2 has no `Connection` header to name
/// more hop-by-hop ones.
fn raw_request<'a>(conn: &'a Conn, r: &Routed, req: Request<InBody>) -> RawTry<'a> {
    let add = h1::Added {
        ip: conn.ip_value().as_bytes(),
        https: conn.https,
        trusted: r.trusted,
        read_only: r.mark_read_only,
    };
    let mut head = Vec::with_capacity(512);
    h1::write_h2_head(
        &mut head,
        req.method(),
        r.target(req.uri()),
        r.host.as_bytes(),
        req.headers(),
        &add,
    );
    let (parts, body) = req.into_parts();
    let has_body = !http_body::Body::is_end_stream(&body);
    RawTry {
        settings: &conn.edge.upstream,
        head,
        retryable: request::retryable(&parts.method, has_body),
        method: parts.method,
        body: has_body.then_some(body),
        answer: None,
    }
}

/// Sends a request prepared for the raw path: its body read first, when it has one. The answer
/// is left in `raw.answer`.
async fn via_raw(
    conn: &Conn,
    r: &Routed,
    raw: &mut RawTry<'_>,
    x: &mut Exchange,
) -> Result<(), ProxyError> {
    let edge = &*conn.edge;
    if let Some(body) = raw.body.take() {
        read_whole(body, &mut raw.head, edge.limits.header_timeout).await?;
    }
    let pool = r.site.pool(r.color);
    upstream::send(
        &edge.upstream,
        &edge.metrics,
        pool,
        raw.retryable,
        &mut x.backend,
        raw,
    )
    .await?;
    if let Some(a) = &mut raw.answer {
        r.answered(conn, a);
    }
    Ok(())
}

/// Appends a small request body, read whole within `deadline` (the client's body, like its head,
/// must arrive in time: nothing is sent to the backend until it has). h2 holds the stream to its
/// Content-Length; trailers are dropped, as an HTTP/1.1 body with a length cannot carry them.
async fn read_whole(
    mut body: InBody,
    out: &mut Vec<u8>,
    deadline: Duration,
) -> Result<(), ProxyError> {
    use http_body_util::BodyExt;
    out.reserve(http_body::Body::size_hint(&body).lower() as usize);
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                ProxyError::BadRequest("the request body is malformed or was cut off")
            })?;
            if let Some(data) = frame.data_ref() {
                out.extend_from_slice(data);
            }
        }
        Ok(())
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(ProxyError::BadRequest(
            "the request body did not arrive within the header timeout",
        )))
}

/// Any other request, through hyper's client side when it has a body to stream or asks for an
/// upgrade: the headers are rewritten in the map (an HTTP/1.1 `Connection` may name more to drop).
async fn via_hyper(
    conn: &Arc<Conn>,
    r: &Routed,
    mut req: Request<InBody>,
    x: &mut Exchange,
) -> Result<Response<RespBody>, ProxyError> {
    let edge = &*conn.edge;
    let pool = r.site.pool(r.color);
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let target = match req.uri().path_and_query() {
        _ if r.asterisk => PathAndQuery::from_static("*"),
        Some(pq) => pq.clone(),
        None => PathAndQuery::from_static("/"),
    };
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(
        &mut parts.headers,
        conn.ip_value(),
        conn.https,
        &r.host,
        r.trusted,
    );
    parts.headers.insert(HOST, r.host.clone());
    if r.mark_read_only {
        parts
            .headers
            .insert(&headers::X_READ_ONLY, HeaderValue::from_static("1"));
    } else {
        parts.headers.remove(&headers::X_READ_ONLY);
    }
    parts.version = Version::HTTP_11;
    parts.uri = Uri::from(target.clone());
    let body = ReqBody::new(body, edge.limits.max_body_bytes);
    let retryable = request::retryable(&parts.method, !matches!(body, ReqBody::Empty));
    // What a retry on another backend needs to rebuild the request (only when there is one).
    let again = (retryable && pool.backends.len() > 1)
        .then(|| (parts.method.clone(), parts.headers.clone(), target));
    let mut attempt = HyperTry {
        settings: &edge.upstream,
        first: Some(Request::from_parts(parts, body)),
        again,
        upgrade,
        answer: None,
    };
    upstream::send(
        &edge.upstream,
        &edge.metrics,
        pool,
        retryable,
        &mut x.backend,
        &mut attempt,
    )
    .await?;
    let mut resp = attempt.answer.ok_or_else(no_answer)?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tunnel::spawn(client_upgrade, upstream_upgrade, &r.site, r.color);
        }
    } else {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
    }
    r.answered(conn, &mut resp);
    Ok(resp)
}

/// How the request names its target (RFC 9112 3.2, RFC 9113 8.3.1): the Host the request is
/// routed by and forwarded with, and whether it is `OPTIONS *`. Refused: CONNECT (501: this is a
/// reverse proxy); more than one Host; an authority-form target; `*` with another method; an
/// absolute-form target of another scheme; on HTTP/2, a Host that names another authority than
/// `:authority`. An HTTP/1.1 absolute-form target is routed by its authority, not by Host.
fn target(req: &Request<InBody>) -> Result<(HeaderValue, bool), ProxyError> {
    let bad = ProxyError::BadRequest;
    if req.method() == Method::CONNECT {
        return Err(ProxyError::NotImplemented(
            "CONNECT is not supported: this is a reverse proxy, not a forward proxy",
        ));
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("the request has more than one Host header"));
    }
    let uri = req.uri();
    let asterisk = uri.path() == "*" || uri.path_and_query().is_some_and(|p| p.as_str() == "*");
    if asterisk && req.method() != Method::OPTIONS {
        return Err(bad("the target `*` is for OPTIONS only"));
    }
    if uri
        .scheme()
        .is_some_and(|s| *s != Scheme::HTTP && *s != Scheme::HTTPS)
    {
        return Err(bad("the target's scheme is not http or https"));
    }
    let authority = uri.authority();
    if req.version() == Version::HTTP_2 {
        return match (authority, host) {
            (Some(a), Some(h)) if !same_authority(a.as_str(), h.as_bytes()) => Err(bad(
                "the Host header names another authority than :authority",
            )),
            (_, Some(h)) => Ok((h.clone(), asterisk)),
            (Some(a), None) => HeaderValue::from_str(a.as_str())
                .map(|v| (v, asterisk))
                .map_err(|_| bad(":authority is not a valid host[:port]")),
            (None, None) => Err(bad("the request has neither :authority nor Host")),
        };
    }
    match (uri.scheme(), authority, host) {
        // authority-form (`a.test:443`): CONNECT's alone.
        (None, Some(_), _) => Err(bad("an authority-form target is for CONNECT only")),
        // absolute-form: routed by the target's authority; the Host header is ignored (RFC 9112
        // 3.2.2) and the backend gets the authority as Host.
        (Some(_), Some(a), _) => HeaderValue::from_str(a.as_str())
            .map(|v| (v, asterisk))
            .map_err(|_| bad("the target's authority is not a valid host[:port]")),
        (_, _, Some(h)) => Ok((h.clone(), asterisk)),
        (_, _, None) => Err(bad("the request has no Host header")),
    }
}

/// Whether a Host header value names the same host as `:authority` (case and ports aside, as
/// routing ignores them: what matters is that the backend sees the host the request was routed
/// by).
fn same_authority(authority: &str, host: &[u8]) -> bool {
    std::str::from_utf8(host).is_ok_and(|h| crate::routing::same_host(authority, h))
}

/// One try of a request from hyper's side on one backend.
struct HyperTry<'a> {
    settings: &'a Settings,
    /// The request, until the first try takes it.
    first: Option<Request<ReqBody>>,
    /// A bodiless request's method, headers and target, to send it again elsewhere.
    again: Option<(Method, HeaderMap, PathAndQuery)>,
    upgrade: bool,
    answer: Option<Response<RespBody>>,
}

impl Attempt for HyperTry<'_> {
    async fn send(&mut self, addr: SocketAddr, _again: bool) -> Result<(), Failed> {
        let req = match (self.first.take(), &self.again) {
            (Some(req), _) => req,
            (None, Some((method, headers, target))) => {
                let mut r = Request::new(ReqBody::Empty);
                *r.method_mut() = method.clone();
                *r.headers_mut() = headers.clone();
                *r.uri_mut() = Uri::from(target.clone());
                r
            }
            (None, None) => return Err(Failed::broken("the request cannot be sent again")),
        };
        if self.upgrade {
            let resp = client::upgrade(self.settings, addr, req).await?;
            self.answer = Some(resp.map(RespBody::upstream));
        } else if matches!(req.body(), ReqBody::Empty) {
            send_raw(self.settings, addr, req, &mut self.answer).await?;
        } else {
            let resp = client::send(self.settings, addr, req).await?;
            self.answer = Some(resp.map(RespBody::upstream));
        }
        Ok(())
    }
}

/// A request without a body goes out on a raw pooled connection, as on the fast path: one
/// write, the response head parsed in place, the body read straight off the socket.
async fn send_raw(
    settings: &Settings,
    addr: SocketAddr,
    req: Request<ReqBody>,
    answer: &mut Option<Response<RespBody>>,
) -> Result<(), Failed> {
    let (parts, _) = req.into_parts();
    let mut out = Vec::with_capacity(512);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    h1::write_head(&mut out, &parts.method, target, &parts.headers);
    exchange_raw(settings, addr, &out, &parts.method, answer).await
}

/// A request for the raw path, its head written already, and its tries.
struct RawTry<'a> {
    settings: &'a Settings,
    head: Vec<u8>,
    method: Method,
    /// A small body, still to be read and appended to the head.
    body: Option<InBody>,
    retryable: bool,
    answer: Option<Response<RespBody>>,
}

impl Attempt for RawTry<'_> {
    async fn send(&mut self, addr: SocketAddr, _again: bool) -> Result<(), Failed> {
        exchange_raw(
            self.settings,
            addr,
            &self.head,
            &self.method,
            &mut self.answer,
        )
        .await
    }
}

/// Sends a written request head on a raw pooled connection; the response head parsed in place,
/// the body read straight off the socket. The response is written into `answer` (a slot the
/// caller keeps: returned instead, it would be copied out through each future on the way).
async fn exchange_raw(
    settings: &Settings,
    addr: SocketAddr,
    out: &[u8],
    method: &Method,
    answer: &mut Option<Response<RespBody>>,
) -> Result<(), Failed> {
    let mut head = None;
    let got = raw::exchange(
        addr,
        out,
        method,
        super::gate::is_safe(method),
        settings,
        &mut |h: &h1::RespHead<'_, '_>| {
            head = Some(response_head(h)?);
            Ok(())
        },
    )
    .await?;
    let Some((status, headers, framed)) = head else {
        return Err(Failed::broken(
            "the backend closed the connection or sent an invalid response",
        ));
    };
    let body = RawBody::new(got, settings.idle_timeout);
    let resp = answer.insert(Response::new(RespBody::raw(body, framed)));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(())
}

/// The backend's response head as hyper's side sends it on (hop-by-hop headers left out; hyper
/// frames the body itself), and whether it is framed as it came: with a Date, and its
/// Content-Length kept.
fn response_head(
    h: &h1::RespHead<'_, '_>,
) -> Result<(StatusCode, HeaderMap, bool), h1::BadResponse> {
    let bad = || h1::BadResponse("the backend sent an invalid header");
    let status = StatusCode::from_u16(h.status).map_err(|_| bad())?;
    let mut map = HeaderMap::with_capacity(h.headers.len());
    let (mut dated, mut lost_length) = (false, false);
    for x in h.headers {
        if h.hop_by_hop(x.name) || x.name.eq_ignore_ascii_case("transfer-encoding") {
            // A Content-Length named in Connection is dropped: then the head is not as framed.
            lost_length |= x.name.eq_ignore_ascii_case("content-length");
            continue;
        }
        dated |= x.name.eq_ignore_ascii_case("date");
        let n = names::name(x.name.as_bytes()).map_err(|_| bad())?;
        map.append(n, HeaderValue::from_bytes(x.value).map_err(|_| bad())?);
    }
    Ok((status, map, dated && !lost_length))
}
