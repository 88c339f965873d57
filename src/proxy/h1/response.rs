//! The backend's response head: its framing (where the body ends), and the head the client gets.

use http::Method;

use super::{is, line, tokens, Slots};

/// Response heads with more lines are refused (hyper's client takes 100 too).
pub const MAX_RESP_HEADERS: usize = 100;

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
    /// A Transfer-Encoding line came: a Content-Length never reaches the client beside it.
    te: bool,
}

impl RespHead<'_, '_> {
    /// True for the response headers a client never gets: hop-by-hop ones, those named in
    /// `Connection`, and a Content-Length beside Transfer-Encoding (RFC 9112 6.3: an
    /// intermediary removes it, whichever coding is last and whatever the status).
    pub fn hop_by_hop(&self, n: &str) -> bool {
        let hop = match n.len() {
            2 => is(n, "te"),
            7 => is(n, "upgrade"),
            10 => is(n, "connection") || is(n, "keep-alive"),
            14 => self.te && is(n, "content-length"),
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
pub enum RespParsed<'b, 'h> {
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
    headers: &'h mut Slots<'b, MAX_RESP_HEADERS>,
    method: &Method,
) -> Result<RespParsed<'b, 'h>, BadResponse> {
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(RespParsed::Partial),
        Err(_) => return Err(BadResponse("the backend sent an invalid response head")),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse("the backend sent an invalid response head"));
    };
    // Three digits, but not a status (RFC 9110 15; hyper's client refuses them too).
    if status < 100 {
        return Err(BadResponse("the backend sent an invalid status code"));
    }
    if status == 101 {
        return Err(BadResponse("the backend switched protocols unasked"));
    }
    if (100..200).contains(&status) {
        return Ok(RespParsed::Interim(len));
    }
    // An HTTP/1.0 backend's connection is not reused, whatever it says.
    let mut close = version == 0;
    let mut named = false;
    let mut chunked = None;
    // A Transfer-Encoding that readers may end differently (see `te_chunked`).
    let mut te_ambiguous = false;
    let mut length: Option<u64> = None;
    for h in resp.headers.iter() {
        if is(h.name, "content-length") {
            // `1*DIGIT`, or a list of the same one (RFC 9110 8.6); an empty value or list
            // element is invalid, as for hyper's client.
            for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let n = std::str::from_utf8(t)
                    .ok()
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok())
                    // hyper's client takes at most u64::MAX - 2 (it keeps two for itself).
                    .filter(|&n| n <= u64::MAX - 2)
                    .ok_or(BadResponse("the backend sent a bad Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadResponse("the backend sent conflicting Content-Lengths"));
                }
                length = Some(n);
            }
        } else if is(h.name, "transfer-encoding") {
            // Only the last coding decides; a later line overrides.
            let last = te_chunked(h.value);
            te_ambiguous |= last.is_none();
            chunked = Some(last == Some(true));
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
        if chunked.is_some() && version == 0 {
            // RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (hyper refuses it).
            return Err(BadResponse(
                "the backend sent Transfer-Encoding in HTTP/1.0",
            ));
        }
        if te_ambiguous {
            return Err(BadResponse(
                "the backend sent an ambiguous Transfer-Encoding",
            ));
        }
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
    Ok(RespParsed::Head(RespHead {
        status,
        reason: resp.reason.unwrap_or(""),
        framing,
        close,
        len,
        headers: resp.headers,
        named,
        te: chunked.is_some(),
    }))
}

/// Whether a Transfer-Encoding line's last coding is chunked; None when readers may disagree:
/// an empty list element (RFC 9110 5.6.1 says to skip it, hyper's client reads `chunked,` as not
/// chunked) or a byte other than visible ASCII, SP and HTAB (hyper reads the line as not
/// chunked). The line reaches the client as it came, so it must mean one thing.
fn te_chunked(v: &[u8]) -> Option<bool> {
    if !v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return None;
    }
    let mut last = None;
    for t in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if t.is_empty() {
            return None;
        }
        last = Some(t);
    }
    last.map(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Writes the head the client gets. `close`: the client connection ends after this response.
/// `hsts`: the site's `Strict-Transport-Security`, which replaces the backend's.
pub fn write_client_head(
    out: &mut Vec<u8>,
    resp: &RespHead<'_, '_>,
    close: bool,
    hsts: Option<&[u8]>,
) {
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
        if hsts.is_some() && is(h.name, "strict-transport-security") {
            continue;
        }
        line(out, h.name.as_bytes(), h.value);
    }
    if let Some(v) = hsts {
        line(out, b"strict-transport-security", v);
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

/// Appends `date: <now as an HTTP date>`.
fn date_line(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&http_date());
    out.extend_from_slice(b"\r\n");
}

/// Now as an HTTP date (RFC 9110 5.6.7); formatted at most once a second per thread.
pub fn http_date() -> [u8; 29] {
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
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(raw: &str, method: Method) -> Result<(String, Framing, bool), BadResponse> {
        let mut h = crate::proxy::h1::slots();
        match parse_response(raw.as_bytes(), &mut h, &method)? {
            RespParsed::Head(r) => {
                let mut out = Vec::new();
                write_client_head(&mut out, &r, r.close, None);
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
        let mut h = crate::proxy::h1::slots();
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200",
                &mut h,
                &Method::GET
            ),
            Ok(RespParsed::Interim(25))
        ));
    }

    /// Fuzzing (issue 16, `fuzz/` target `response`): heads the fast path took although
    /// hyper's client refuses them or frames them otherwise, and a Content-Length that reached
    /// the client beside a Transfer-Encoding.
    #[test]
    fn fuzz_framing_as_hyper_reads_it() {
        for (bad, method) in [
            // A status below 100 (hyper: invalid status).
            ("HTTP/1.1 042 Odd\r\nContent-Length: 2\r\n\r\n", Method::GET),
            // Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1: faulty framing; hyper refuses).
            ("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Method::GET),
            // An empty Content-Length, or an empty list element (was: until close, Length).
            ("HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", Method::GET),
            ("HTTP/1.1 200 OK\r\nContent-Length: 2,\r\n\r\n", Method::GET),
            ("HTTP/1.1 200 OK\r\nContent-Length: ,2\r\n\r\n", Method::HEAD),
            // A Transfer-Encoding readers end differently: `chunked,` is chunked for us and
            // RFC 9110 5.6.1, not for hyper; an empty last line was no Transfer-Encoding at all
            // for us (so Content-Length framed it), close-delimited for hyper.
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n", Method::GET),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\nContent-Length: 3\r\n\r\n",
                Method::GET,
            ),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: x\u{e9}, chunked\r\n\r\n", Method::GET),
            // Over hyper's largest length (found by the fuzzer: `Content-Length:
            // 18446744073709551615` was relayed as a body of that length).
            ("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551614\r\n\r\n", Method::GET),
        ] {
            assert!(resp(bad, method).is_err(), "{bad:?}");
        }
        // hyper takes these (no body is framed by them): so do we.
        for ok in [
            "HTTP/1.0 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked,\r\n\r\n",
            "HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551613\r\n\r\n",
        ] {
            assert!(resp(ok, Method::GET).is_ok(), "{ok:?}");
        }
        // RFC 9112 6.3: Content-Length never reaches the client beside Transfer-Encoding.
        let (out, f, close) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nconnection: close\r\n\r\n"
        );
        assert_eq!((f, close), (Framing::UntilClose, true));
        let (out, f, _) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Method::HEAD,
        )
        .unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(f, Framing::Empty);
    }

    #[test]
    fn adds_date_if_missing() {
        let client_head = |raw: &[u8]| {
            let mut h = crate::proxy::h1::slots();
            let Ok(RespParsed::Head(r)) = parse_response(raw, &mut h, &Method::GET) else {
                panic!("a head")
            };
            let mut out = Vec::new();
            write_client_head(&mut out, &r, false, None);
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
}
