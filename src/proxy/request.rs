//! One request, whichever front end brought it (`fast.rs` for plain HTTP/1.1, `service/` for
//! HTTP/2 and hyper's HTTP/1.1): where it goes ([`decide`]: an ACME HTTP-01 answer, site,
//! HTTPS redirect, body limit, read-only gate, preview host), what it counts (the connection's requests in flight, the
//! writes the rollback guard reads), and its bookkeeping when the response ends (metrics, access
//! log). The table is loaded once and its guard dropped before anything awaits; no lock is taken.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::LOCATION;
use http::{HeaderValue, Method, Response, StatusCode};

use super::error_page::ProxyError;
use super::gate::{self, Gate, WriteGuard};
use super::Conn;
use crate::accesslog::{Record, Text};
use crate::config::Color;
use crate::routing::SiteRoute;

/// What is known about a request as it goes, from its first byte to the end of its response.
/// Holds the request's place in its connection's in-flight count, and a write's in the site's,
/// until it is ended.
pub(crate) struct Exchange {
    pub start: Instant,
    pub site: Option<Arc<str>>,
    pub color: Option<Color>,
    /// The backend last tried.
    pub backend: Option<SocketAddr>,
    /// A write's in-flight count (read-only on waits for it).
    pub write: Option<WriteGuard>,
    /// The site wants this path's error pages in JSON (`json_errors`).
    pub json_errors: bool,
    /// The access-log line (None with the log off).
    /// Boxed: inline it would make every request's state (and each move of it) ~340 bytes larger.
    record: Option<Box<Record>>,
    inflight: Inflight,
}

impl Exchange {
    /// A request arrived on `conn`. `host` and `target` are copied for the log only when it is on.
    #[inline]
    pub fn begin(conn: &Arc<Conn>, method: &Method, host: &[u8], target: &[u8]) -> Exchange {
        let inflight = Inflight::enter(conn.clone());
        let start = Instant::now();
        let record = conn.edge.log.enabled().then(|| {
            Box::new(Record {
                start,
                client: conn.peer,
                host: Text::new(host),
                method: method.clone(),
                path: Text::new(target),
                status: 0,
                color: None,
                backend: None,
            })
        });
        Exchange {
            start,
            site: None,
            color: None,
            backend: None,
            write: None,
            json_errors: false,
            record,
            inflight,
        }
    }

    /// The response head is decided (by the backend or by the edge).
    #[inline]
    pub fn responded(&mut self, status: u16) {
        let edge = &self.inflight.0.edge;
        edge.metrics.response(
            self.site.as_deref(),
            self.color,
            status,
            self.start.elapsed(),
        );
        if let Some(r) = &mut self.record {
            r.status = status;
        }
    }

    /// The response has ended with `bytes` of body sent (`complete`: all of it).
    #[inline]
    pub fn end(mut self, bytes: u64, complete: bool) {
        let edge = &self.inflight.0.edge;
        edge.metrics.response_bytes(self.site.as_deref(), bytes);
        if let Some(mut r) = self.record.take() {
            r.color = self.color.map(Color::as_str);
            r.backend = self.backend;
            edge.log.send(r.finish(bytes, complete));
        }
    }

    /// The edge answers this request itself: counted and logged as an error when it is one.
    pub fn error(&mut self, e: &ProxyError) {
        self.inflight.0.edge.metrics.proxy_error(e);
        if e.source() != super::error_page::Source::Client {
            tracing::debug!(error = %e, "request failed");
        }
    }
}

/// Counts a request into its connection's activity until dropped. A guard, not a decrement at
/// the end: the h2 server drops the handler future when an HTTP/2 client resets the stream (or the
/// connection goes away) before the answer is ready, and the watchdog must not see that request
/// as in flight forever.
struct Inflight(Arc<Conn>);

impl Inflight {
    #[inline]
    fn enter(conn: Arc<Conn>) -> Inflight {
        conn.activity.request_started();
        Inflight(conn)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.activity.request_ended();
    }
}

/// Where a request goes, decided before anything is sent.
pub(crate) enum Decision {
    /// To `color` of `site`; `mark_read_only` asks for `X-Read-Only: 1`; `trusted`: the client
    /// is a trusted proxy, whose forwarding headers are kept and extended.
    Forward {
        site: Arc<SiteRoute>,
        color: Color,
        mark_read_only: bool,
        trusted: bool,
    },
    /// Plain HTTP to a site that redirects: to this HTTPS port.
    Redirect(u16),
    /// An ACME HTTP-01 validation: the edge answers with this key authorization.
    Challenge(Arc<str>),
}

/// Routes and gates a request: host → site (and the SNI check), the HTTP → HTTPS redirect, the
/// Content-Length limit (`content_length`: the header, if any, not yet checked), the read-only
/// gate, the preview hosts. Fills `x` as it learns things, for the log and the metrics.
pub(crate) fn decide(
    conn: &Conn,
    host: &str,
    method: &Method,
    path: &str,
    content_length: Option<&HeaderValue>,
    x: &mut Exchange,
) -> Result<Decision, ProxyError> {
    let edge = &*conn.edge;
    if !valid_host(host) {
        return Err(ProxyError::BadRequest(
            "the Host header (or :authority) is not a valid host[:port]",
        ));
    }
    // ACME HTTP-01 (RFC 8555 8.3) on the plain listener, before routing and the redirect; a
    // token that is not pending goes on like any other path.
    if !conn.https {
        if let Some(token) = path.strip_prefix(crate::acme::HTTP01_PREFIX) {
            if let Some(ka) = edge.acme.load().http01(token) {
                return Ok(Decision::Challenge(ka));
            }
        }
    }
    let (site, preview, https_port, trusted) = {
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
            table.trusts(conn.peer.ip()),
        )
    };
    x.site = Some(site.name.clone());
    x.color = Some(site.active);
    x.json_errors = !site.json_errors.is_empty() && site.json_errors(path);
    if !conn.https && site.redirect_http {
        if let Some(port) = https_port {
            let port = match edge.https_port.load(Ordering::Relaxed) {
                0 => port,
                bound => bound,
            };
            return Ok(Decision::Redirect(port));
        }
    }
    let client_ip = conn.peer.ip();
    if let Some(m) = &site.maintenance {
        if !site.maintenance_allow.path_allowed(path)
            && !site.maintenance_allow.client_allowed(client_ip)
        {
            return Err(ProxyError::Maintenance(m.clone()));
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
    let mark_read_only = match gate::check(&site, method, path, client_ip) {
        Gate::Refuse(notice) => {
            edge.metrics.rejected_write(&site.name);
            return Err(ProxyError::ReadOnly(notice));
        }
        Gate::Unknown(notice) => {
            edge.metrics.cluster_refusals.inc();
            return Err(ProxyError::ReadOnly(notice));
        }
        Gate::Pass { read_only, write } => {
            x.write = write;
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
    x.color = Some(color);
    Ok(Decision::Forward {
        site,
        color,
        mark_read_only,
        trusted,
    })
}

/// `uri-host [ ":" port ]` (RFC 9110 7.2, RFC 3986 3.2.2): a registered name (letters, digits,
/// `-._~`, sub-delims, percent-encoded octets) or an IPv4 address, or an IPv6 literal in
/// brackets; the port digits only. What else would reach a backend as its Host is refused.
pub fn valid_host(h: &str) -> bool {
    let b = h.as_bytes();
    let (name_ok, rest) = match b.first() {
        None => return false,
        Some(b'[') => match b.iter().position(|&c| c == b']') {
            Some(end) => {
                let literal = std::str::from_utf8(&b[1..end]).unwrap_or("");
                (literal.parse::<std::net::Ipv6Addr>().is_ok(), &b[end + 1..])
            }
            None => return false,
        },
        Some(_) => {
            let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
            (!b[..end].is_empty() && reg_name(&b[..end]), &b[end..])
        }
    };
    let port_ok = match rest {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    name_ok && port_ok
}

/// The characters of a registered name besides `%` (RFC 3986 3.2.2: unreserved and sub-delims).
static REG_NAME: [bool; 256] = super::h1::byte_table(b"-._~!$&'()*+,;=");

fn reg_name(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if !(b.len() > i + 2
                    && b[i + 1].is_ascii_hexdigit()
                    && b[i + 2].is_ascii_hexdigit())
                {
                    return false;
                }
                i += 3;
                continue;
            }
            c if REG_NAME[c as usize] => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// A request body up to this size (with its length known up front) is read whole and sent
/// with the head in one write on a raw backend connection, by either front end; larger ones are
/// streamed through hyper's client.
pub(crate) const INLINE_BODY: u64 = 64 * 1024;

/// Whether a request may go to a second backend when the first refused the connection: one that
/// is safe to repeat and has no body to replay.
#[inline]
pub(crate) fn retryable(method: &Method, has_body: bool) -> bool {
    gate::is_safe(method) && !has_body
}

/// Counts a write answered by `color` (the rollback guard reads these).
pub(crate) fn count_write(site: &SiteRoute, color: Color) {
    let prev = site.shared.writes_since_switch[color.idx()].fetch_add(1, Ordering::Relaxed);
    if prev == 0 && color == site.active && !site.shared.write_seen.swap(true, Ordering::Relaxed) {
        crate::routing::FIRST_WRITE.notify_one();
    }
}

/// The answer to an ACME HTTP-01 validation: the key authorization.
pub(crate) fn challenge(key_authorization: &str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::copy_from_slice(key_authorization.as_bytes()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// The 308 to HTTPS; `target`: the request's path and query.
pub(crate) fn redirect(host: &str, https_port: u16, target: &str) -> Response<Bytes> {
    let bare = crate::routing::strip_port(host);
    let loc = if https_port == 443 {
        format!("https://{bare}{target}")
    } else {
        format!("https://{bare}:{https_port}{target}")
    };
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::try_from(loc) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn hosts() {
        for ok in [
            "a.test",
            "a.test:8443",
            "A-b_c~d.test",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "%41.test",
            "a.test:",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "a test",
            "a.test:80:80",
            "a.test:x",
            "a.test:123456",
            "[::1",
            "[zz]",
            "a/b",
            "a@b",
            "a\"b",
            "a.test\\",
            "%4",
            "é.test",
            "a.test]",
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
    }
}
