//! The oracles of the fuzz targets: hyper's HTTP/1.1 server and client reading the same bytes
//! in-process (over an in-memory duplex, on a current-thread runtime), and a strict reading of
//! request heads written from RFC 9112 here, independent of httparse.
//!
//! Every function returns plain data; the targets compare it with what `switchyard::proxy::h1`
//! made of the bytes and panic on a disagreement.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The header limits of the edge (`max_header_bytes` and the fast path's body cap, defaults).
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_BODY: u64 = 64 * 1024;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

/// One request as a server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenReq {
    pub method: String,
    pub target: String,
    /// Every header line, lower-case name and value, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body, or None when it ended early or broke.
    pub body: Option<Vec<u8>>,
}

impl SeenReq {
    pub fn all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// hyper's server (switchyard's hyper side: keep-alive, `max_buf_size` = `max_header_bytes`)
/// reading `bytes` as a client's stream that then closes: every request it handed to the
/// service, in order. It answers each with an empty 200 (and bad requests with its own 4xx,
/// which end the list).
pub fn hyper_server(bytes: &[u8]) -> Vec<SeenReq> {
    let seen: Rc<RefCell<Vec<SeenReq>>> = Rc::default();
    let s2 = seen.clone();
    block_on(async move {
        let (mut client, server) = tokio::io::duplex(bytes.len() + (1 << 20));
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let seen = s2.clone();
            async move {
                let (parts, body) = req.into_parts();
                let target = parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.to_string(), |p| p.as_str().to_string());
                let headers = parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect();
                let body = body.collect().await.ok().map(|c| c.to_bytes().to_vec());
                seen.borrow_mut().push(SeenReq {
                    method: parts.method.as_str().to_string(),
                    target,
                    headers,
                    body,
                });
                Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
        let mut b = hyper::server::conn::http1::Builder::new();
        b.keep_alive(true)
            .half_close(true)
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD.max(8192));
        let _ = b.serve_connection(TokioIo::new(server), svc).await;
        drop(client);
    });
    Rc::try_unwrap(seen)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

/// A response as hyper's client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenResp {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body's data, or None when it broke or ended early.
    pub body: Option<Vec<u8>>,
    /// Trailer fields, lower-case names.
    pub trailers: Vec<(String, Vec<u8>)>,
}

/// hyper's client sending a `method` request and reading `bytes` as the backend's answer, the
/// backend closing after them. None: hyper refused the response head.
pub fn hyper_client(bytes: &[u8], method: &http::Method) -> Option<SeenResp> {
    hyper_client_with(bytes, method, 100)
}

/// The same, taking up to `max_headers` header lines (hyper's default, and the edge's, is 100).
pub fn hyper_client_with(
    bytes: &[u8],
    method: &http::Method,
    max_headers: usize,
) -> Option<SeenResp> {
    let method = method.clone();
    block_on(async move {
        let (client, mut server) = tokio::io::duplex(bytes.len() + (1 << 20));
        // The backend answers once the request is in (hyper's client refuses bytes that come
        // before it has sent a request), then closes.
        let backend = async move {
            let mut got = Vec::new();
            let mut tmp = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match server.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&tmp[..n]),
                }
            }
            let _ = server.write_all(bytes).await;
            let _ = server.shutdown().await;
            // Keep the read side open until the client is done.
            while let Ok(n) = server.read(&mut tmp).await {
                if n == 0 {
                    break;
                }
            }
        };
        let (mut tx, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD.max(8192))
            .max_headers(max_headers)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
            .await
            .ok()?;
        let ask = async move {
            let req = Request::builder()
                .method(method)
                .uri("/")
                .header("host", "backend.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = tx.send_request(req).await.ok()?;
            let (parts, body) = resp.into_parts();
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect();
            let (body, trailers) = match body.collect().await {
                Ok(c) => {
                    let trailers = c
                        .trailers()
                        .map(|t| {
                            t.iter()
                                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    (Some(c.to_bytes().to_vec()), trailers)
                }
                Err(_) => (None, Vec::new()),
            };
            drop(tx);
            Some(SeenResp {
                status: parts.status.as_u16(),
                headers,
                body,
                trailers,
            })
        };
        let conn = async move {
            let _ = conn.await;
        };
        let (_, r, _) = tokio::join!(conn, ask, backend);
        r
    })
}

/// hyper's client reading `body` as a chunked response body: its data and trailers, or None
/// when it broke or ended early.
pub fn hyper_chunked(body: &[u8]) -> Option<(Vec<u8>, Vec<(String, Vec<u8>)>)> {
    let mut msg = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    msg.extend_from_slice(body);
    let r = hyper_client(&msg, &http::Method::GET)?;
    Some((r.body?, r.trailers))
}

// ---------------------------------------------------------------------------------------------
// A strict reading of a request head, from RFC 9112 (sections 2-3, 5, 6) and RFC 9110 (5.1-5.6,
// 8.6), written without httparse.

/// A request head as RFC 9112 reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictReq {
    pub method: String,
    pub target: String,
    /// The one Host line's value (OWS trimmed).
    pub host: String,
    /// Bytes of the head, the blank line included.
    pub len: usize,
    /// The body's length: `Some` from Content-Length (0 without), None when chunked.
    pub body: Option<u64>,
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// field-vchar, SP and HTAB (obs-text included, RFC 9110 5.5).
fn field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// The next line of `buf` from `at`: its content (CR before the LF removed: RFC 9112 2.2 lets a
/// recipient take a bare LF as the end of a line) and where the next line starts. None: no LF
/// yet. A bare CR inside a line is left in, and refused by the callers.
fn next_line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let lf = buf[at..].iter().position(|&b| b == b'\n')? + at;
    let end = if lf > at && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((&buf[at..end], lf + 1))
}

/// Reads the request head at the start of `buf`. `Ok(None)`: incomplete. `Err`: not a valid
/// HTTP/1.1 request (the reason).
pub fn strict_request(buf: &[u8]) -> Result<Option<StrictReq>, &'static str> {
    let mut at = 0;
    // RFC 9112 2.2: empty lines before the request-line are ignored.
    let line = loop {
        let Some((line, next)) = next_line(buf, at) else {
            return Ok(None);
        };
        at = next;
        if !line.is_empty() {
            break line;
        }
    };
    // request-line = method SP request-target SP HTTP-version (RFC 9112 3)
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request-line is not three parts separated by single spaces");
    };
    if method.is_empty() || !method.iter().all(|&b| tchar(b)) {
        return Err("method is not a token");
    }
    if version != b"HTTP/1.1" {
        return Err("not HTTP/1.1");
    }
    // origin-form (RFC 9112 3.2.1): absolute-path [ "?" query ], no fragment. The characters are
    // checked as leniently as hyper (http::Uri) does: visible ASCII; hyper's own reading is
    // the oracle for which of them it refuses.
    if target.first() != Some(&b'/')
        || !target
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err("target is not origin-form");
    }
    let mut host = None;
    let mut hosts = 0;
    let mut lengths: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    loop {
        let Some((line, next)) = next_line(buf, at) else {
            return Ok(None);
        };
        at = next;
        if line.is_empty() {
            break;
        }
        // obs-fold (RFC 9112 5.2) is refused in requests.
        if line[0] == b' ' || line[0] == b'\t' {
            return Err("obs-fold");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err("field-line without a colon");
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // No whitespace between the name and the colon (RFC 9112 5.1).
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Err("field-name is not a token");
        }
        if !value.iter().all(|&b| field_byte(b)) {
            return Err("field-value has a control character (or a bare CR)");
        }
        let value = trim_ows(value);
        let lname = name.to_ascii_lowercase();
        match lname.as_slice() {
            b"host" => {
                hosts += 1;
                host = Some(value);
            }
            b"content-length" => {
                // Content-Length = 1*DIGIT; a list of identical values may be taken as one
                // (RFC 9110 8.6). Anything else is invalid framing (RFC 9112 6.3).
                for v in value.split(|&b| b == b',') {
                    let v = trim_ows(v);
                    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 19 {
                        return Err("invalid Content-Length");
                    }
                    let n: u64 = std::str::from_utf8(v)
                        .unwrap()
                        .parse()
                        .map_err(|_| "Content-Length overflows")?;
                    if lengths.is_some_and(|l| l != n) {
                        return Err("conflicting Content-Lengths");
                    }
                    lengths = Some(n);
                }
            }
            b"transfer-encoding" => {
                te = true;
                chunked = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|t| trim_ows(t).eq_ignore_ascii_case(b"chunked"));
            }
            _ => {}
        }
    }
    // RFC 9112 3.2: exactly one Host.
    if hosts != 1 {
        return Err("not exactly one Host");
    }
    let host = host.unwrap();
    if te && !chunked {
        return Err("Transfer-Encoding not ending in chunked (RFC 9112 6.3)");
    }
    Ok(Some(StrictReq {
        method: String::from_utf8(method.to_vec()).unwrap(),
        target: String::from_utf8(target.to_vec()).unwrap(),
        host: String::from_utf8_lossy(host).into_owned(),
        len: at,
        body: if te { None } else { Some(lengths.unwrap_or(0)) },
    }))
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(s, |e| e + 1);
    &v[s..e.max(s)]
}

/// Headers a proxy never forwards (RFC 9110 7.6.1), as lower-case names.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The header lines of a head httparse reads, lower-case names; None when it does not parse as
/// exactly `head.len()` bytes.
pub fn httparse_request_lines(head: &[u8]) -> Option<(String, String, Vec<(String, Vec<u8>)>)> {
    let mut h = vec![httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Request::new(&mut h);
    match r.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    Some((
        r.method?.to_string(),
        r.path?.to_string(),
        r.headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    ))
}

/// The same for a response head.
pub fn httparse_response_lines(head: &[u8]) -> Option<(u16, Vec<(String, Vec<u8>)>)> {
    let mut h = vec![httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Response::new(&mut h);
    match r.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    Some((
        r.code?,
        r.headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    ))
}

/// A cheap deterministic hash of the input, to vary what the input itself does not say (split
/// points, the edge's options) without a prefix byte that would blur the seed corpus.
pub fn mix(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A chunked body as RFC 9112 7.1 reads it, taking CRLF only as a line end (so that where it
/// ends is where a reader that also takes a bare LF ends it: RFC 9112 2.2 lets recipients do
/// that). Extensions are checked for framing only (no CR or LF inside); trailer lines are
/// field lines. `Ok(None)`: incomplete. `Ok(Some((end, data, trailer lines)))`.
pub type Strict = (usize, Vec<u8>, Vec<(String, Vec<u8>)>);

pub fn strict_chunked(b: &[u8]) -> Result<Option<Strict>, &'static str> {
    let mut at = 0;
    let mut data = Vec::new();
    // The next CRLF-terminated line from `at`.
    let line = |at: usize| -> Result<Option<(&[u8], usize)>, &'static str> {
        let Some(lf) = b[at..].iter().position(|&c| c == b'\n') else {
            return if b[at..].contains(&b'\r') && !b[at..].ends_with(b"\r") {
                Err("bare CR")
            } else {
                Ok(None)
            };
        };
        let lf = at + lf;
        if lf == at || b[lf - 1] != b'\r' {
            return Err("bare LF");
        }
        let l = &b[at..lf - 1];
        if l.contains(&b'\r') {
            return Err("bare CR");
        }
        Ok(Some((l, lf + 1)))
    };
    loop {
        let Some((l, next)) = line(at)? else {
            return Ok(None);
        };
        let digits = l.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err("no chunk size");
        }
        let size = u64::from_str_radix(std::str::from_utf8(&l[..digits]).unwrap(), 16)
            .map_err(|_| "chunk size overflows")?;
        let rest = trim_ows(&l[digits..]);
        if !rest.is_empty() && rest[0] != b';' {
            return Err("junk after the chunk size");
        }
        if l[digits..]
            .first()
            .is_some_and(|&c| c != b';' && c != b' ' && c != b'\t')
        {
            return Err("junk after the chunk size");
        }
        at = next;
        if size == 0 {
            break;
        }
        let Some(end) = at.checked_add(size as usize).filter(|&e| e <= b.len()) else {
            return Ok(None);
        };
        data.extend_from_slice(&b[at..end]);
        at = end;
        match b.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            Some(_) => return Err("no CRLF after the data"),
            None if b.len() == at || (b.len() == at + 1 && b[at] == b'\r') => return Ok(None),
            None => return Err("no CRLF after the data"),
        }
    }
    let mut trailers = Vec::new();
    loop {
        let Some((l, next)) = line(at)? else {
            return Ok(None);
        };
        at = next;
        if l.is_empty() {
            return Ok(Some((at, data, trailers)));
        }
        let Some(colon) = l.iter().position(|&c| c == b':') else {
            return Err("trailer line without a colon");
        };
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&c| tchar(c)) {
            return Err("trailer name is not a token (or obs-fold)");
        }
        if !value.iter().all(|&c| field_byte(c)) {
            return Err("control character in a trailer value");
        }
        trailers.push((
            String::from_utf8(name.to_ascii_lowercase()).unwrap(),
            trim_ows(value).to_vec(),
        ));
    }
}
