//! The client's request head: which requests the fast path forwards on bytes, and the head the
//! backend gets (from the client's bytes, or from hyper's parts for a bodiless request).

use http::{HeaderMap, Method};

use super::{is, line, tokens, Slots};

/// Request heads with more header lines go to hyper (which takes up to 100).
pub const MAX_REQ_HEADERS: usize = 64;

/// A request the fast path takes, borrowed from the connection's read buffer.
pub struct ReqHead<'b, 'h> {
    pub method: Method,
    /// The request target, origin form (`/path?query`).
    pub target: &'b str,
    pub host: &'b str,
    pub content_length: u64,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// The client's Accept header (the error pages follow it).
    pub accept: Option<&'b [u8]>,
    /// Bytes of the head, the blank line included.
    pub len: usize,
    pub headers: &'h [httparse::Header<'b>],
}

impl ReqHead<'_, '_> {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }
}

/// What to do with the bytes read so far.
pub enum ReqParsed<'b, 'h> {
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path: hyper takes the connection from here (it answers bad requests too).
    Handoff,
    Head(ReqHead<'b, 'h>),
}

/// Parses a request head. Takes only what it can forward exactly as hyper's path would: an
/// HTTP/1.1 request in origin form, one Host, at most one all-digit Content-Length, no
/// Transfer-Encoding, Expect, Upgrade or TE, `Connection` naming nothing but keep-alive/close.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut Slots<'b, MAX_REQ_HEADERS>,
) -> ReqParsed<'b, 'h> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ReqParsed::Partial,
        Err(_) => return ReqParsed::Handoff,
    };
    let (Some(m), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return ReqParsed::Handoff;
    };
    if !origin_form(target.as_bytes()) {
        return ReqParsed::Handoff;
    }
    let method = match Method::from_bytes(m.as_bytes()) {
        Ok(m) if m != Method::CONNECT => m,
        _ => return ReqParsed::Handoff,
    };
    let mut host = None;
    let mut content_length = None;
    let mut close = false;
    let mut accept = None;
    for h in req.headers.iter() {
        let n = h.name;
        if is(n, "host") {
            if host.is_some() {
                return ReqParsed::Handoff;
            }
            match std::str::from_utf8(h.value) {
                Ok(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) => host = Some(v),
                _ => return ReqParsed::Handoff,
            }
        } else if is(n, "content-length") {
            if content_length.is_some() || h.value.is_empty() || h.value.len() > 18 {
                return ReqParsed::Handoff;
            }
            if !h.value.iter().all(u8::is_ascii_digit) {
                return ReqParsed::Handoff;
            }
            content_length = Some(
                h.value
                    .iter()
                    .fold(0u64, |a, d| a * 10 + u64::from(d - b'0')),
            );
        } else if is(n, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    return ReqParsed::Handoff;
                }
            }
        } else if is(n, "transfer-encoding") || is(n, "expect") || is(n, "upgrade") || is(n, "te") {
            return ReqParsed::Handoff;
        } else if is(n, "accept") {
            accept = Some(h.value);
        }
    }
    let Some(host) = host else {
        return ReqParsed::Handoff;
    };
    let headers = req.headers;
    ReqParsed::Head(ReqHead {
        method,
        target,
        host,
        content_length: content_length.unwrap_or(0),
        close,
        accept,
        len,
        headers,
    })
}

/// hyper's longest request target (`http::Uri`); longer ones it answers with 414.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Bytes of the path and of the query that hyper's side takes (`http::Uri`, after the WHATWG
/// URL path and query states): visible ASCII but `#` (a fragment), and `<`, `>` and `` ` ``
/// in the path, `"`, `<` and `>` in the query. A target with any other byte goes to hyper,
/// which answers 400: the fast path forwards no target that hyper's side would refuse.
static PATH: [bool; 256] = super::byte_table(b"!\"$%&'()*+,-./:;=?@[\\]^_{|}~");
static QUERY: [bool; 256] = super::byte_table(b"!$%&'()*+,-./:;=?@[\\]^_`{|}~");

/// An origin-form target (RFC 9112 3.2.1) of the bytes hyper's side takes. One table lookup
/// per byte, as the range check before it.
fn origin_form(t: &[u8]) -> bool {
    if t.first() != Some(&b'/') || t.len() > MAX_TARGET {
        return false;
    }
    let mut table = &PATH;
    for &b in t {
        if b == b'?' {
            table = &QUERY;
        } else if !table[b as usize] {
            return false;
        }
    }
    true
}

/// Request headers the backend never gets from the client as sent.
fn skip_request_header(n: &str) -> bool {
    match n.len() {
        2 => is(n, "te"),
        7 => is(n, "upgrade"),
        10 => is(n, "connection") || is(n, "keep-alive"),
        9 => is(n, "forwarded"),
        11 => is(n, "x-read-only"),
        15 => is(n, "x-forwarded-for"),
        16 => is(n, "proxy-connection") || is(n, "x-forwarded-host"),
        17 => is(n, "transfer-encoding") || is(n, "x-forwarded-proto"),
        18 => is(n, "proxy-authenticate"),
        19 => is(n, "proxy-authorization"),
        _ => false,
    }
}

/// What the edge adds to a request on its way to the backend.
pub struct Added<'a> {
    /// The client's address (see `headers::ip_value`).
    pub ip: &'a [u8],
    pub https: bool,
    /// The client is a trusted proxy: its forwarding headers are kept and extended.
    pub trusted: bool,
    /// `X-Read-Only: 1`.
    pub read_only: bool,
}

/// The values of every `name` line, in order (empty ones left out).
fn values<'h, I>(headers: I, name: &'h str) -> impl Iterator<Item = &'h [u8]> + 'h
where
    I: Iterator<Item = (&'h str, &'h [u8])> + 'h,
{
    headers
        .filter(move |(n, _)| is(n, name))
        .map(|(_, v)| v.trim_ascii())
        .filter(|v| !v.is_empty() && std::str::from_utf8(v).is_ok())
}

/// Writes the head the backend gets from a request the fast path took.
pub fn write_upstream_head(out: &mut Vec<u8>, req: &ReqHead<'_, '_>, add: &Added<'_>) {
    let lines = || req.headers.iter().map(|h| (h.name, h.value));
    let head = Head {
        method: req.method.as_str(),
        target: req.target,
        host: req.host.as_bytes(),
    };
    write_head_with::<false, _>(out, &head, lines, add);
}

/// Writes the head the backend gets from a bodiless HTTP/2 request, straight from the headers
/// hyper parsed (nothing is rewritten in the map first). `host`: the Host the request was routed
/// by (its Host header, else `:authority`).
pub fn write_h2_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &[u8],
    headers: &HeaderMap,
    add: &Added<'_>,
) {
    let lines = || headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    let head = Head {
        method: method.as_str(),
        target,
        host,
    };
    write_head_with::<true, _>(out, &head, lines, add);
}

/// The request line's parts.
struct Head<'a> {
    method: &'a str,
    target: &'a str,
    host: &'a [u8],
}

/// The one writer of a backend request head: the request line, the client's lines but those the
/// edge owns (hop-by-hop, forwarding, `X-Read-Only`), then the edge's own. `lines` gives the
/// client's header lines in order, afresh at each call. `H2`: the request came over HTTP/2, so
/// `host: HOST` is written first and the client's Host lines skipped (the authority may have
/// come from `:authority`), and cookie crumbs are joined into one line (RFC 9113 8.2.3: an
/// HTTP/1.1 backend expects one Cookie header). A constant: the fast path's copy has none of it.
fn write_head_with<'h, const H2: bool, I>(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    lines: impl Fn() -> I,
    add: &Added<'_>,
) where
    I: Iterator<Item = (&'h str, &'h [u8])> + 'h,
{
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if H2 {
        line(out, b"host", head.host);
    }
    let mut cookies = 0;
    for (name, value) in lines() {
        if H2 && (is(name, "host") || is(name, "cookie")) {
            cookies += usize::from(is(name, "cookie"));
            continue;
        }
        if !skip_request_header(name) {
            line(out, name.as_bytes(), value);
        }
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        let crumbs = lines().filter(|(n, _)| is(n, "cookie"));
        for (i, (_, v)) in crumbs.enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v);
        }
        out.extend_from_slice(b"\r\n");
    }
    // A trusted proxy's chains are extended with its address; anyone else's are replaced.
    out.extend_from_slice(b"x-forwarded-for: ");
    if add.trusted {
        for v in values(lines(), "x-forwarded-for") {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(add.ip);
    out.extend_from_slice(b"\r\nforwarded: ");
    if add.trusted {
        for v in values(lines(), "forwarded") {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    forwarded_element(out, add.ip, add.https, head.host);
    out.extend_from_slice(b"\r\n");
    match add
        .trusted
        .then(|| values(lines(), "x-forwarded-proto").next())
        .flatten()
    {
        Some(v) => line(out, b"x-forwarded-proto", v),
        None if add.https => out.extend_from_slice(b"x-forwarded-proto: https\r\n"),
        None => out.extend_from_slice(b"x-forwarded-proto: http\r\n"),
    }
    let host = add
        .trusted
        .then(|| values(lines(), "x-forwarded-host").next());
    line(
        out,
        b"x-forwarded-host",
        host.flatten().unwrap_or(head.host),
    );
    if add.read_only {
        out.extend_from_slice(b"x-read-only: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The token characters of RFC 9110 5.6.2, as a table (a lookup per byte on the hot path).
static TCHAR: [bool; 256] = super::byte_table(b"!#$%&'*+-.^_`|~");

/// This hop's `Forwarded` element (RFC 7239): `for=IP;proto=SCHEME;host=HOST`, with an IPv6
/// address and a host that is not a token (one with a port) quoted. `host` has been checked
/// (`request::valid_host`): it holds no quote or backslash.
pub fn forwarded_element(out: &mut Vec<u8>, ip: &[u8], https: bool, host: &[u8]) {
    out.extend_from_slice(b"for=");
    if ip.contains(&b':') {
        out.extend_from_slice(b"\"[");
        out.extend_from_slice(ip);
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(ip);
    }
    out.extend_from_slice(if https {
        b";proto=https;host="
    } else {
        b";proto=http;host="
    });
    let token = host.iter().all(|&b| TCHAR[b as usize]);
    if token {
        out.extend_from_slice(host);
    } else {
        out.push(b'"');
        out.extend_from_slice(host);
        out.push(b'"');
    }
}

/// Writes the head of a bodiless request that hyper parsed (method, origin-form target, headers
/// already rewritten by `headers.rs`), for a raw backend connection.
pub fn write_head(out: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Option<(String, u64, bool)> {
        req_from(raw, true)
    }

    fn req_from(raw: &str, trusted: bool) -> Option<(String, u64, bool)> {
        let mut h = crate::proxy::h1::slots();
        match parse_request(raw.as_bytes(), &mut h) {
            ReqParsed::Head(r) => {
                let mut out = Vec::new();
                let add = Added {
                    ip: b"192.0.2.1",
                    https: true,
                    trusted,
                    read_only: false,
                };
                write_upstream_head(&mut out, &r, &add);
                Some((String::from_utf8(out).unwrap(), r.content_length, r.close))
            }
            _ => None,
        }
    }

    #[test]
    fn rewrites_a_plain_request() {
        let (out, len, close) = req("POST /a?b HTTP/1.1\r\nHost: w.test\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\nX-Read-Only: 1\r\nX-Forwarded-Proto: http\r\nContent-Length: 3\r\nX-Keep: y\r\n\r\nabc").unwrap();
        assert_eq!(
            out,
            "POST /a?b HTTP/1.1\r\nHost: w.test\r\nContent-Length: 3\r\nX-Keep: y\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.1\r\nforwarded: for=192.0.2.1;proto=https;host=w.test\r\nx-forwarded-proto: http\r\nx-forwarded-host: w.test\r\n\r\n"
        );
        assert_eq!((len, close), (3, false));
    }

    #[test]
    fn an_untrusted_clients_forwarding_headers_are_replaced() {
        let (out, _, _) = req_from("GET / HTTP/1.1\r\nHost: w.test:8443\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n\r\n", false).unwrap();
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: w.test:8443\r\nx-forwarded-for: 192.0.2.1\r\nforwarded: for=192.0.2.1;proto=https;host=\"w.test:8443\"\r\nx-forwarded-proto: https\r\nx-forwarded-host: w.test:8443\r\n\r\n"
        );
        let mut v6 = Vec::new();
        forwarded_element(&mut v6, b"2001:db8::1", false, b"a.test");
        assert_eq!(v6, b"for=\"[2001:db8::1]\";proto=http;host=a.test");
    }

    #[test]
    fn hands_off_the_unusual() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ] {
            assert!(req(raw).is_none(), "{raw:?}");
        }
        let (_, _, close) = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        assert!(close);
    }

    /// Fuzzing (issue 16, `fuzz/` target `request`): the fast path forwarded targets that
    /// hyper's side refuses with 400 (`http::Uri`: `<`, `>`, `` ` `` in the path, `"`, `<`, `>`
    /// in the query), and ones over hyper's 65 534 bytes (414, with `max_header_bytes` raised).
    /// They are hyper's now; what hyper takes the fast path still takes.
    #[test]
    fn fuzz_targets_hyper_refuses_are_handed_off() {
        for bad in [
            "/a<b", "/a>b", "/a`b", "/?a\"b", "/?<", "/p?q>", "/a\x7f", "/\u{e9}",
        ] {
            let raw = format!("GET {bad} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(req(&raw).is_none(), "{bad:?}");
        }
        for ok in [
            "/a\"b{c}|d\\e^f[g]",
            "/?a`b{c}|d^[e]\\",
            "/p:@!$&'()*+,;=-._~%41?/?:@",
            "/?",
        ] {
            let raw = format!("GET {ok} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(req(&raw).is_some(), "{ok:?}");
        }
        let long = |n: usize| format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(n - 1));
        assert!(req(&long(MAX_TARGET)).is_some());
        assert!(req(&long(MAX_TARGET + 1)).is_none());
    }
}
