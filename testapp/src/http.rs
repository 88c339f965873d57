//! Hand-written HTTP/1.1: a thread-per-connection server with keep-alive and a
//! one-shot client (Connection: close).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, body: body.into() }
    }
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut b: String = body.into();
        if !b.ends_with('\n') {
            b.push('\n');
        }
        Response::new(status, "text/plain; charset=utf-8", b)
    }
    pub fn json(status: u16, body: String) -> Response {
        Response::new(status, "application/json", body)
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_line_limited<R: BufRead>(r: &mut R, budget: &mut usize) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(*budget as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
    }
    *budget -= n;
    while matches!(buf.last(), Some(b'\n') | Some(b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request; Ok(None) on a clean EOF before any byte of it.
fn read_request<R: BufRead>(r: &mut R) -> io::Result<Option<(Request, bool)>> {
    let mut budget = MAX_HEAD;
    let line = loop {
        match read_line_limited(r, &mut budget)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (m.to_string(), t.to_string(), v.to_string()),
        _ => return Err(bad("malformed request line")),
    };
    let mut headers = Vec::new();
    loop {
        let l = read_line_limited(r, &mut budget)?.ok_or_else(|| bad("EOF in headers"))?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("malformed header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request { method, path: String::new(), query: String::new(), headers, body: Vec::new() };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    req.path = percent_decode(path);
    req.query = query.to_string();

    let chunked = req.header("transfer-encoding").map_or(false, |v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let size_line = read_line_limited(r, &mut MAX_HEAD.clone())?.ok_or_else(|| bad("EOF in chunk"))?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // trailers
                while let Some(l) = read_line_limited(r, &mut MAX_HEAD.clone())? {
                    if l.is_empty() {
                        break;
                    }
                }
                break;
            }
            if req.body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..])?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    } else if let Some(cl) = req.header("content-length") {
        let n: usize = cl.parse().map_err(|_| bad("bad content-length"))?;
        if n > MAX_BODY {
            return Err(bad("body too large"));
        }
        req.body.resize(n, 0);
        r.read_exact(&mut req.body)?;
    }
    let conn = req.header("connection").unwrap_or("").to_ascii_lowercase();
    let keep_alive = if version == "HTTP/1.0" { conn.contains("keep-alive") } else { !conn.contains("close") };
    Ok(Some((req, keep_alive)))
}

fn write_response<W: Write>(w: &mut W, resp: &Response, version: &str, keep_alive: bool, head: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-App-Version: {}\r\nConnection: {}\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        version,
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(&resp.body);
    }
    w.write_all(&out)?;
    w.flush()
}

pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

pub fn serve(listener: TcpListener, version: String, handler: Arc<Handler>) -> ! {
    let version = Arc::new(version);
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let handler = handler.clone();
        let version = version.clone();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            let _ = stream.set_nodelay(true);
            let mut writer = match stream.try_clone() {
                Ok(w) => w,
                Err(_) => return,
            };
            let mut reader = BufReader::new(stream);
            loop {
                match read_request(&mut reader) {
                    Ok(None) => return,
                    Ok(Some((req, keep_alive))) => {
                        let resp = handler(&req);
                        eprintln!("{} {}{}{} -> {}", req.method, req.path,
                            if req.query.is_empty() { "" } else { "?" }, req.query, resp.status);
                        let head = req.method == "HEAD";
                        if write_response(&mut writer, &resp, &version, keep_alive, head).is_err() || !keep_alive {
                            return;
                        }
                    }
                    Err(e) => {
                        if e.kind() == io::ErrorKind::InvalidData {
                            let resp = Response::text(400, format!("bad request: {e}"));
                            let _ = write_response(&mut writer, &resp, &version, false, false);
                        }
                        return;
                    }
                }
            }
        });
    }
}

/// One request to `addr` (host:port, resolved via DNS), Connection: close.
/// Returns (status, body).
pub fn client(addr: &str, method: &str, target: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?.collect();
    let mut last = format!("no address for {addr}");
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr} ({a}): {e}"),
        }
    }
    let mut s = stream.ok_or(last)?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read from {addr}: {e}"))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("malformed response from {addr}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line from {addr}"))?;
    let mut body = raw[split + 4..].to_vec();
    for l in head.lines().skip(1) {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                if let Ok(n) = v.trim().parse::<usize>() {
                    body.truncate(n);
                }
            }
        }
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }

    #[test]
    fn parse_requests() {
        let raw = b"POST /notes?to=2&x=%41 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let (a, ka) = read_request(&mut r).unwrap().unwrap();
        assert_eq!((a.method.as_str(), a.path.as_str(), a.body.as_slice(), ka), ("POST", "/notes", &b"hello"[..], true));
        assert_eq!(a.query_param("to").as_deref(), Some("2"));
        assert_eq!(a.query_param("x").as_deref(), Some("A"));
        let (b, kb) = read_request(&mut r).unwrap().unwrap();
        assert_eq!((b.body.as_slice(), kb), (&b"abcde"[..], false));
        assert!(read_request(&mut r).unwrap().is_none());
    }
}
