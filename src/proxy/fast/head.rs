//! HTTP/1.1 message heads as bytes, for the fast path: which client requests it takes (the
//! plain ones; anything unusual goes to hyper), the request head as the backend gets it, the
//! response head as the client gets it, and where a response body ends.
//!
//! The rewriting rules are those of `headers.rs` (hyper's path): hop-by-hop headers and those
//! named in `Connection` stripped, `X-Forwarded-For` appended to every line the client sent,
//! `X-Forwarded-Proto` / `X-Forwarded-Host` / `X-Read-Only` set by us, never by the client.

use http::Method;

/// Request heads with more header lines go to hyper (which takes up to 100).
pub const MAX_REQ_HEADERS: usize = 64;
/// Response heads with more lines are refused (hyper's client takes 100 too).
pub const MAX_RESP_HEADERS: usize = 100;

/// A request the fast path takes, borrowed from the connection's read buffer.
pub struct ReqHead<'b, 'h> {
    pub method: Method,
    /// The request target, origin form (`/path?query`).
    pub target: &'b str,
    pub host: &'b str,
    pub content_length: u64,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// The client prefers JSON error pages.
    pub json: bool,
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
pub enum Parsed<'b, 'h> {
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path: hyper takes the connection from here (it answers bad requests too).
    Handoff,
    Head(ReqHead<'b, 'h>),
}

fn is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

/// Each comma-separated token of a header value, trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Parses a request head. Takes only what it can forward exactly as hyper's path would: an
/// HTTP/1.1 request in origin form, one Host, at most one all-digit Content-Length, no
/// Transfer-Encoding, Expect, Upgrade or TE, `Connection` naming nothing but keep-alive/close.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; MAX_REQ_HEADERS],
) -> Parsed<'b, 'h> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handoff,
    };
    let (Some(m), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    if !target.starts_with('/')
        || target
            .bytes()
            .any(|b| !(0x21..=0x7e).contains(&b) || b == b'#')
    {
        return Parsed::Handoff;
    }
    let method = match Method::from_bytes(m.as_bytes()) {
        Ok(m) if m != Method::CONNECT => m,
        _ => return Parsed::Handoff,
    };
    let mut host = None;
    let mut content_length = None;
    let mut close = false;
    let mut json = false;
    for h in req.headers.iter() {
        let n = h.name;
        if is(n, "host") {
            if host.is_some() {
                return Parsed::Handoff;
            }
            match std::str::from_utf8(h.value) {
                Ok(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) => host = Some(v),
                _ => return Parsed::Handoff,
            }
        } else if is(n, "content-length") {
            if content_length.is_some() || h.value.is_empty() || h.value.len() > 18 {
                return Parsed::Handoff;
            }
            if !h.value.iter().all(u8::is_ascii_digit) {
                return Parsed::Handoff;
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
                    return Parsed::Handoff;
                }
            }
        } else if is(n, "transfer-encoding") || is(n, "expect") || is(n, "upgrade") || is(n, "te") {
            return Parsed::Handoff;
        } else if is(n, "accept") {
            json = super::super::error_page::wants_json(
                http::HeaderValue::from_bytes(h.value).ok().as_ref(),
            );
        }
    }
    let Some(host) = host else {
        return Parsed::Handoff;
    };
    let headers = req.headers;
    Parsed::Head(ReqHead {
        method,
        target,
        host,
        content_length: content_length.unwrap_or(0),
        close,
        json,
        len,
        headers,
    })
}

/// Request headers the backend never gets from the client as sent.
fn skip_request_header(n: &str) -> bool {
    match n.len() {
        2 => is(n, "te"),
        7 => is(n, "upgrade"),
        10 => is(n, "connection") || is(n, "keep-alive"),
        11 => is(n, "x-read-only"),
        15 => is(n, "x-forwarded-for"),
        16 => is(n, "proxy-connection") || is(n, "x-forwarded-host"),
        17 => is(n, "transfer-encoding") || is(n, "x-forwarded-proto"),
        18 => is(n, "proxy-authenticate"),
        19 => is(n, "proxy-authorization"),
        _ => false,
    }
}

pub(super) fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the head the backend gets: `ip` is the client's address (see `headers::ip_value`).
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    req: &ReqHead<'_, '_>,
    ip: &[u8],
    https: bool,
    read_only: bool,
) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers {
        if !skip_request_header(h.name) {
            line(out, h.name.as_bytes(), h.value);
        }
    }
    // X-Forwarded-For: every non-empty line the client sent, in order, then the client.
    out.extend_from_slice(b"x-forwarded-for: ");
    for h in req.headers {
        if is(h.name, "x-forwarded-for") {
            let v = h.value.trim_ascii();
            if !v.is_empty() && std::str::from_utf8(v).is_ok() {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(ip);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(if https {
        b"x-forwarded-proto: https\r\n"
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    line(out, b"x-forwarded-host", req.host.as_bytes());
    if read_only {
        out.extend_from_slice(b"x-read-only: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the backend's response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A response head from the backend.
pub struct RespHead<'b, 'h> {
    pub status: u16,
    pub reason: &'b str,
    pub framing: Framing,
    /// The backend will not take another request on this connection.
    pub close: bool,
    pub len: usize,
    pub headers: &'h [httparse::Header<'b>],
    /// `Connection` names other headers (rare): only then are names checked against it.
    named: bool,
}

impl RespHead<'_, '_> {
    /// True for the response headers a client never gets: hop-by-hop ones, those named in
    /// `Connection`, and a Content-Length beside chunked framing.
    pub fn hop_by_hop(&self, n: &str) -> bool {
        let chunked = self.framing == Framing::Chunked;
        let hop = match n.len() {
            2 => is(n, "te"),
            7 => is(n, "upgrade"),
            10 => is(n, "connection") || is(n, "keep-alive"),
            14 => chunked && is(n, "content-length"),
            16 => is(n, "proxy-connection"),
            18 => is(n, "proxy-authenticate"),
            19 => is(n, "proxy-authorization"),
            _ => false,
        };
        // Headers named in Connection (rare: only then is there a second look).
        hop || self.named
            && self.headers.iter().any(|h| {
                is(h.name, "connection")
                    && tokens(h.value).any(|t| {
                        !t.eq_ignore_ascii_case(b"close")
                            && !t.eq_ignore_ascii_case(b"keep-alive")
                            && t.eq_ignore_ascii_case(n.as_bytes())
                    })
            })
    }
}

/// What the backend sent.
pub enum Response<'b, 'h> {
    Partial,
    /// An interim response (100 Continue, 103 Early Hints) of this many bytes: skipped.
    Interim(usize),
    Head(RespHead<'b, 'h>),
}

/// The backend's answer cannot be forwarded.
#[derive(Debug)]
pub struct BadResponse(pub &'static str);

/// Parses a response head to a request with `method`.
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; MAX_RESP_HEADERS],
    method: &Method,
) -> Result<Response<'b, 'h>, BadResponse> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Response::Partial),
        Err(_) => return Err(BadResponse("the backend sent an invalid response head")),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse("the backend sent an invalid response head"));
    };
    if status == 101 {
        return Err(BadResponse("the backend switched protocols unasked"));
    }
    if (100..200).contains(&status) {
        return Ok(Response::Interim(len));
    }
    // An HTTP/1.0 backend's connection is not reused, whatever it says.
    let mut close = version == 0;
    let mut named = false;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for h in resp.headers.iter() {
        if is(h.name, "content-length") {
            for t in tokens(h.value) {
                let n = std::str::from_utf8(t)
                    .ok()
                    .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or(BadResponse("the backend sent a bad Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadResponse("the backend sent conflicting Content-Lengths"));
                }
                length = Some(n);
            }
        } else if is(h.name, "transfer-encoding") {
            // Only the last coding decides; a later line overrides.
            chunked = tokens(h.value)
                .last()
                .map(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if is(h.name, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    named = true;
                }
            }
        }
    }
    let framing = if *method == Method::HEAD || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        close = true;
    }
    Ok(Response::Head(RespHead {
        status,
        reason: resp.reason.unwrap_or(""),
        framing,
        close,
        len,
        headers: resp.headers,
        named,
    }))
}

/// Writes the head the client gets. `close`: the client connection ends after this response.
pub fn write_client_head(out: &mut Vec<u8>, resp: &RespHead<'_, '_>, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = [0u8; 3];
    code[0] = b'0' + (resp.status / 100 % 10) as u8;
    code[1] = b'0' + (resp.status / 10 % 10) as u8;
    code[2] = b'0' + (resp.status % 10) as u8;
    out.extend_from_slice(&code);
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for h in resp.headers.iter().filter(|h| !resp.hop_by_hop(h.name)) {
        dated |= h.name.len() == 4 && h.name.eq_ignore_ascii_case("date");
        line(out, h.name.as_bytes(), h.value);
    }
    if !dated {
        // RFC 9110 6.6.1: a proxy forwarding an answer without Date adds one (hyper's path does).
        date_line(out);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `date: <now as an HTTP date>`; formatted at most once a second per thread.
fn date_line(out: &mut Vec<u8>) {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (at, mut text) = DATE.get();
    if at != secs {
        let s = httpdate::fmt_http_date(now);
        if s.len() == text.len() {
            text.copy_from_slice(s.as_bytes());
            DATE.set((secs, text));
        }
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&text);
    out.extend_from_slice(b"\r\n");
}

/// Follows a chunked body through (the bytes pass unchanged) to find where it ends.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    /// Data bytes seen so far, without the framing (what the access log and metrics count).
    pub data: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The chunked framing is broken.
#[derive(Debug)]
pub struct BadChunk;

impl Chunked {
    /// Consumes `b`; returns how many of its bytes belong to the body, and whether it ended.
    pub fn feed(&mut self, b: &[u8]) -> Result<(usize, bool), BadChunk> {
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match self.state {
                State::Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(BadChunk);
                        }
                        let d = (c as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = State::Ext,
                    b'\r' if self.digits > 0 => self.state = State::SizeLf,
                    _ => return Err(BadChunk),
                },
                State::Ext => match c {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(BadChunk),
                    _ => {}
                },
                State::SizeLf => {
                    if c != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let n = (self.size.min((b.len() - i) as u64)) as usize;
                    self.size -= n as u64;
                    self.data += n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr if c == b'\r' => self.state = State::DataLf,
                State::DataLf if c == b'\n' => {
                    self.state = State::Size;
                    self.digits = 0;
                }
                State::DataCr | State::DataLf => return Err(BadChunk),
                State::TrailerStart => {
                    self.state = if c == b'\r' {
                        State::EndLf
                    } else {
                        State::Trailer
                    }
                }
                State::Trailer => {
                    if c == b'\r' {
                        self.state = State::TrailerLf;
                    }
                }
                State::TrailerLf if c == b'\n' => self.state = State::TrailerStart,
                State::TrailerLf => return Err(BadChunk),
                State::EndLf if c == b'\n' => {
                    self.state = State::Done;
                    return Ok((i + 1, true));
                }
                State::EndLf => return Err(BadChunk),
                State::Done => return Ok((i, true)),
            }
            i += 1;
        }
        Ok((i, self.state == State::Done))
    }
}

/// One step of decoding a chunked body (for clients that do not speak HTTP/1.1 framing).
pub enum Decoded {
    /// More bytes are needed.
    More,
    Data(bytes::Bytes),
    /// The body ended; the trailer section (lines with their CRLFs), if any.
    End(Vec<u8>),
}

impl Chunked {
    /// Takes the next piece of the body out of `buf`; trailer lines gather in `trailers`.
    pub fn decode(
        &mut self,
        buf: &mut bytes::BytesMut,
        trailers: &mut Vec<u8>,
    ) -> Result<Decoded, BadChunk> {
        use bytes::Buf;
        loop {
            if self.state == State::Done {
                return Ok(Decoded::End(std::mem::take(trailers)));
            }
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            if self.state == State::Data {
                let n = self.size.min(buf.len() as u64) as usize;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            // Framing: a byte at a time (a few per chunk).
            let in_trailer = match self.state {
                State::TrailerStart => buf[0] != b'\r',
                State::Trailer | State::TrailerLf => true,
                _ => false,
            };
            if in_trailer {
                if trailers.len() >= 16 * 1024 {
                    return Err(BadChunk);
                }
                trailers.push(buf[0]);
            }
            self.feed(&buf[..1])?;
            buf.advance(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Option<(String, u64, bool)> {
        let mut h = [httparse::EMPTY_HEADER; MAX_REQ_HEADERS];
        match parse_request(raw.as_bytes(), &mut h) {
            Parsed::Head(r) => {
                let mut out = Vec::new();
                write_upstream_head(&mut out, &r, b"192.0.2.1", true, false);
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
            "POST /a?b HTTP/1.1\r\nHost: w.test\r\nContent-Length: 3\r\nX-Keep: y\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.1\r\nx-forwarded-proto: https\r\nx-forwarded-host: w.test\r\n\r\n"
        );
        assert_eq!((len, close), (3, false));
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

    fn resp(raw: &str, method: Method) -> Result<(String, Framing, bool), BadResponse> {
        let mut h = [httparse::EMPTY_HEADER; MAX_RESP_HEADERS];
        match parse_response(raw.as_bytes(), &mut h, &method)? {
            Response::Head(r) => {
                let mut out = Vec::new();
                write_client_head(&mut out, &r, r.close);
                let out = String::from_utf8(out).unwrap();
                // The Date we add when the backend sent none (checked in `adds_date_if_missing`).
                let ours = out
                    .lines()
                    .find(|l| l.starts_with("date: "))
                    .map(|l| format!("{l}\r\n"));
                Ok((
                    out.replace(ours.as_deref().unwrap_or("\u{0}"), ""),
                    r.framing,
                    r.close,
                ))
            }
            _ => Err(BadResponse("partial")),
        }
    }

    #[test]
    fn response_framing_and_hop_by_hop() {
        let (out, f, close) = resp(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\nTrailer: x\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTrailer: x\r\n\r\n"
        );
        assert_eq!((f, close), (Framing::Length(5), false));
        let (out, f, _) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(f, Framing::Chunked);
        let (out, f, close) = resp("HTTP/1.1 200 OK\r\n\r\n", Method::GET).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        assert_eq!((f, close), (Framing::UntilClose, true));
        let (_, f, _) = resp("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD).unwrap();
        assert_eq!(f, Framing::Empty);
        let (_, f, _) = resp("HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET).unwrap();
        assert_eq!(f, Framing::Empty);
        assert!(resp(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            Method::GET
        )
        .is_err());
        assert!(resp("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", Method::GET).is_err());
        assert!(resp("HTTP/1.1 101 Switching\r\n\r\n", Method::GET).is_err());
        let mut h = [httparse::EMPTY_HEADER; MAX_RESP_HEADERS];
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200",
                &mut h,
                &Method::GET
            ),
            Ok(Response::Interim(25))
        ));
    }

    #[test]
    fn adds_date_if_missing() {
        let client_head = |raw: &[u8]| {
            let mut h = [httparse::EMPTY_HEADER; MAX_RESP_HEADERS];
            let Ok(Response::Head(r)) = parse_response(raw, &mut h, &Method::GET) else {
                panic!("a head")
            };
            let mut out = Vec::new();
            write_client_head(&mut out, &r, false);
            String::from_utf8(out).unwrap()
        };
        let out = client_head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let date = out
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .expect("a Date is added");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
        let out = client_head(
            b"HTTP/1.1 200 OK\r\nDATE: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
        );
        let dates = out.to_ascii_lowercase().matches("date:").count();
        assert_eq!(dates, 1, "{out}");
        assert!(
            out.contains("DATE: Tue, 01 Jan 2030 00:00:00 GMT\r\n"),
            "the backend's is kept"
        );
    }

    #[test]
    fn chunked_ends_where_the_body_ends() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        // whole, and one byte at a time
        let mut c = Chunked::default();
        assert_eq!(c.feed(body).unwrap(), (body.len() - 4, true));
        assert_eq!(c.data, 21, "data bytes, without the framing");
        let mut c = Chunked::default();
        let mut n = 0;
        for (i, b) in body.iter().enumerate() {
            let (used, end) = c.feed(std::slice::from_ref(b)).unwrap();
            n += used;
            if end {
                assert_eq!(i + 1, body.len() - 4);
                break;
            }
        }
        assert_eq!(n, body.len() - 4);
        assert_eq!(c.data, 21);
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0\r\n\r\n").unwrap(), (5, true));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(Chunked::default().feed(bad).is_err(), "{bad:?}");
        }
    }
}
