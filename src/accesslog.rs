//! The access log: one line per request, formatted and written by a dedicated thread.
//!
//! Per request the request path only fills a [`Record`] (the method, copies of the Host and the
//! target; one allocation, no formatting), reads the clock once at the end, and hands it over
//! with `try_send` on a bounded channel. The writer thread formats everything queued into one
//! buffer and writes it with one `write`; under load it then pauses for [`BATCH_EVERY`], so it
//! is not parked while requests flow and handing a record over rarely costs a wake-up (a futex
//! syscall). If the writer falls behind, records are dropped and counted rather than slowing
//! requests down.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::Method;

use crate::config::{LogFormat, LogTarget};

/// Records queued at most; at 100k requests/s that is 40 ms of traffic, 4x a batch.
const QUEUE: usize = 4096;
/// Under load (a batch of at least `BUSY_BATCH` lines), the writer waits this long before the
/// next batch: a line then reaches the file at most this late.
pub const BATCH_EVERY: Duration = Duration::from_millis(10);
const BUSY_BATCH: usize = 2;

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Line>>,
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    pub fn off() -> AccessLog {
        AccessLog {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn start(target: &LogTarget, format: LogFormat) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Off => return Ok(AccessLog::off()),
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::File(p) => {
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d)?;
                }
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                )
            }
        };
        let (tx, rx) = sync_channel::<Line>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out, format))?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    #[inline]
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line; never blocks.
    #[inline]
    pub fn send(&self, line: Line) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn writer(rx: Receiver<Line>, mut out: Box<dyn Write + Send>, format: LogFormat) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut memo = Memo::default();
    while let Ok(line) = rx.recv() {
        memo.clock.anchor();
        let mut put = |l: &Line, buf: &mut Vec<u8>| match format {
            LogFormat::Text => l.format_into(buf, &mut memo),
            LogFormat::Json => l.json_into(buf, &mut memo),
        };
        put(&line, &mut buf);
        let mut n = 1;
        while buf.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(l) => {
                    put(&l, &mut buf);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
            // Nowhere to report it but stderr; keep serving.
            eprintln!("switchyard: cannot write the access log");
        }
        buf.clear();
        // Busy: let the next batch gather instead of being woken per line. Quiet: write each
        // line at once.
        if n >= BUSY_BATCH {
            std::thread::sleep(BATCH_EVERY);
        }
    }
}

/// A short string copied inline (no allocation up to 118 bytes). The access log copies host and
/// path rather than keeping hyper's `Bytes`: those point into the connection's read buffer, and
/// holding them until the log thread is done would make hyper allocate a fresh read buffer for
/// every request (and free the old one on another thread).
pub enum Text {
    Inline(u8, [u8; 118]),
    Heap(Box<[u8]>),
}

impl Text {
    #[inline]
    pub fn new(b: &[u8]) -> Text {
        if b.len() <= 118 {
            let mut buf = [0u8; 118];
            buf[..b.len()].copy_from_slice(b);
            Text::Inline(b.len() as u8, buf)
        } else {
            Text::Heap(b.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline(n, b) => &b[..*n as usize],
            Text::Heap(b) => b,
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s.as_bytes())
    }
}

/// What one access-log line says, captured when the response head is ready.
pub struct Record {
    pub start: Instant,
    pub client: SocketAddr,
    /// The Host header, else the URI's authority (HTTP/2); empty if neither.
    pub host: Text,
    pub method: Method,
    /// Path and query.
    pub path: Text,
    pub status: u16,
    pub color: Option<&'static str>,
    pub backend: Option<SocketAddr>,
}

impl Record {
    /// The line, once the body has ended with `bytes` sent. One clock read: the wall time is
    /// the writer's to work out (see [`Clock::wall`]).
    #[inline]
    pub fn finish(self: Box<Self>, bytes: u64, complete: bool) -> Line {
        Line {
            end: Instant::now(),
            rec: self,
            bytes,
            complete,
        }
    }
}

/// A finished record, formatted by the writer thread.
pub struct Line {
    /// Boxed from the request's start: a request's state (and every move of it) stays small.
    rec: Box<Record>,
    /// When the response ended.
    end: Instant,
    bytes: u64,
    complete: bool,
}

impl Line {
    fn took(&self) -> Duration {
        self.end.saturating_duration_since(self.rec.start)
    }
}

/// What the writer keeps from line to line, so that most fields of a line are copies: the
/// clock, and the text of the last client and backend addresses (consecutive lines mostly
/// share them: a connection's requests come together, and a site has few backends).
#[derive(Default)]
pub struct Memo {
    pub clock: Clock,
    client: Last<IpAddr>,
    backend: Last<SocketAddr>,
}

/// A value and its text, as last formatted.
struct Last<K> {
    key: Option<K>,
    text: Vec<u8>,
}

impl<K> Default for Last<K> {
    fn default() -> Self {
        Last {
            key: None,
            text: Vec::new(),
        }
    }
}

impl<K: PartialEq + Copy> Last<K> {
    #[inline]
    fn put(&mut self, out: &mut Vec<u8>, key: K, format: fn(&mut Vec<u8>, K)) {
        if self.key != Some(key) {
            self.text.clear();
            format(&mut self.text, key);
            self.key = Some(key);
        }
        out.extend_from_slice(&self.text);
    }
}

/// The wall clock as the writer reads it: an anchor (a wall time and an instant read together,
/// once per batch) turns each line's end instant into its wall time, so the request path reads
/// one clock, not two. Caches the `YYYY-MM-DDTHH:MM:SS` part of the timestamp for the current
/// second.
#[derive(Default)]
pub struct Clock {
    anchor: Option<(Instant, Duration)>,
    secs: u64,
    prefix: String,
}

impl Clock {
    /// Reads the clocks now, for the lines that follow.
    pub fn anchor(&mut self) -> (Instant, Duration) {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        *self.anchor.insert((Instant::now(), wall))
    }

    /// The wall time of `at`, since the epoch (anchored now if it never was).
    fn wall(&mut self, at: Instant) -> Duration {
        let (i, wall) = match self.anchor {
            Some(a) => a,
            None => self.anchor(),
        };
        // Most lines ended before their batch's anchor was read.
        match i.checked_duration_since(at) {
            Some(ago) => wall.saturating_sub(ago),
            None => wall + (at - i),
        }
    }

    fn write(&mut self, out: &mut Vec<u8>, at: Instant) {
        let d = self.wall(at);
        if d.as_secs() != self.secs || self.prefix.is_empty() {
            self.secs = d.as_secs();
            let s = humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
            )
            .to_string();
            // "2024-05-01T10:00:00Z" → without the Z
            self.prefix = s.trim_end_matches('Z').to_string();
        }
        out.extend_from_slice(self.prefix.as_bytes());
        let ms = d.subsec_millis();
        out.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

/// Decimal digits by itoa (two per step), not `core::fmt` (which costs ~10x more per number).
#[inline]
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An IPv4 octet in decimal (two of these per line: cheaper than a general integer format).
fn push_octet(out: &mut Vec<u8>, o: u8) {
    if o >= 100 {
        out.push(b'0' + o / 100);
    }
    if o >= 10 {
        out.push(b'0' + o / 10 % 10);
    }
    out.push(b'0' + o % 10);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match crate::config::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_octet(out, o);
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_socket_addr(out: &mut Vec<u8>, a: SocketAddr) {
    if a.is_ipv4() {
        push_ip(out, a.ip());
        out.push(b':');
        push_u64(out, a.port().into());
    } else {
        let _ = write!(out, "{a}");
    }
}

impl Line {
    /// `time client host method path status bytes duration_s color backend [aborted]\n`
    pub fn format_into(&self, out: &mut Vec<u8>, memo: &mut Memo) {
        let r = &self.rec;
        memo.clock.write(out, self.end);
        out.push(b' ');
        memo.client.put(out, r.client.ip(), push_ip);
        out.push(b' ');
        let host = r.host.as_bytes();
        out.extend_from_slice(if host.is_empty() { b"-" } else { host });
        out.push(b' ');
        out.extend_from_slice(r.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(r.path.as_bytes());
        out.push(b' ');
        push_u64(out, r.status.into());
        out.push(b' ');
        push_u64(out, self.bytes);
        out.push(b' ');
        // seconds with 4 decimals, rounded (in u64: `as_nanos` would divide a u128)
        let took = self.took();
        let tenths_ms =
            took.as_secs() * 10_000 + (u64::from(took.subsec_nanos()) + 50_000) / 100_000;
        push_u64(out, tenths_ms / 10_000);
        out.push(b'.');
        let frac = tenths_ms % 10_000;
        for d in [1000, 100, 10, 1] {
            out.push(b'0' + (frac / d % 10) as u8);
        }
        out.push(b' ');
        out.extend_from_slice(r.color.unwrap_or("-").as_bytes());
        out.push(b' ');
        match r.backend {
            Some(b) => memo.backend.put(out, b, push_socket_addr),
            None => out.push(b'-'),
        }
        if !self.complete {
            out.extend_from_slice(b" aborted");
        }
        out.push(b'\n');
    }

    /// One JSON object and a newline: the fields of the text line, named (`seconds` a number,
    /// `color` and `backend` null when there was none, `complete` false for an aborted body).
    pub fn json_into(&self, out: &mut Vec<u8>, memo: &mut Memo) {
        let r = &self.rec;
        let mut time = Vec::with_capacity(24);
        memo.clock.write(&mut time, self.end);
        let mut client = Vec::with_capacity(40);
        push_ip(&mut client, r.client.ip());
        let v = serde_json::json!({
            "time": String::from_utf8_lossy(&time),
            "client": String::from_utf8_lossy(&client),
            "host": String::from_utf8_lossy(r.host.as_bytes()),
            "method": r.method.as_str(),
            "path": String::from_utf8_lossy(r.path.as_bytes()),
            "status": r.status,
            "bytes": self.bytes,
            "seconds": self.took().as_secs_f64(),
            "color": r.color,
            "backend": r.backend.map(|b| b.to_string()),
            "complete": self.complete,
        });
        if serde_json::to_writer(&mut *out, &v).is_ok() {
            out.push(b'\n');
        }
    }

    /// The line as a String (tests, benchmarks).
    pub fn to_line(&self) -> String {
        let mut v = Vec::with_capacity(160);
        self.format_into(&mut v, &mut Memo::default());
        String::from_utf8_lossy(&v).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shape() {
        let r = Box::new(Record {
            start: Instant::now(),
            client: "127.0.0.1:5000".parse().unwrap(),
            host: "w.test".into(),
            method: http::Method::POST,
            path: "/a?b".into(),
            status: 201,
            color: Some("green"),
            backend: Some("127.0.0.1:81".parse().unwrap()),
        });
        let line = r.finish(12, true);
        let mut j = Vec::new();
        line.json_into(&mut j, &mut Memo::default());
        let v: serde_json::Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(v["host"], "w.test");
        assert_eq!(v["status"], 201);
        assert_eq!(v["backend"], "127.0.0.1:81");
        assert_eq!(v["complete"], true);
        assert!(j.ends_with(b"}\n"));
        let l = line.to_line();
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            &f[1..7],
            &["127.0.0.1", "w.test", "POST", "/a?b", "201", "12"]
        );
        assert_eq!(&f[8..], &["green", "127.0.0.1:81"]);
        assert!(f[0].len() == 24 && f[0].ends_with('Z'), "{}", f[0]);
    }

    #[test]
    fn numbers_and_ips() {
        let mut v = Vec::new();
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            v.clear();
            push_u64(&mut v, n);
            assert_eq!(String::from_utf8(v.clone()).unwrap(), n.to_string());
        }
        for ip in [
            "0.0.0.0",
            "192.168.10.255",
            "100.9.99.1",
            "::ffff:10.1.2.3",
            "2001:db8::1",
        ] {
            v.clear();
            let ip: IpAddr = ip.parse().unwrap();
            push_ip(&mut v, ip);
            assert_eq!(
                String::from_utf8(v.clone()).unwrap(),
                crate::config::canonical_ip(ip).to_string()
            );
        }
        let mut r = Box::new(Record {
            start: Instant::now(),
            client: "127.0.0.1:1".parse().unwrap(),
            host: "".into(),
            method: http::Method::GET,
            path: "/".into(),
            status: 200,
            color: None,
            backend: None,
        })
        .finish(0, true);
        for (ns, s) in [
            (0u64, "0.0000"),
            (12_345_678, "0.0123"),
            (2_500_049_999, "2.5000"),
            (61_999_960_000, "62.0000"),
        ] {
            r.end = r.rec.start + Duration::from_nanos(ns);
            let l = r.to_line();
            assert_eq!(l.split_whitespace().nth(7).unwrap(), s, "{ns}");
        }
    }

    #[test]
    fn one_memo_for_lines_of_different_clients_and_backends() {
        let mut memo = Memo::default();
        let mut out = Vec::new();
        for (client, backend) in [
            ("10.0.0.1:1", Some("127.0.0.1:81")),
            ("10.0.0.1:2", Some("127.0.0.1:81")),
            ("[2001:db8::7]:3", Some("[::1]:82")),
            ("10.0.0.2:4", None),
            ("10.0.0.1:5", Some("127.0.0.1:81")),
        ] {
            let r = Box::new(Record {
                start: Instant::now(),
                client: client.parse().unwrap(),
                host: "h".into(),
                method: http::Method::GET,
                path: "/".into(),
                status: 200,
                color: None,
                backend: backend.map(|b| b.parse().unwrap()),
            });
            let line = r.finish(0, true);
            out.clear();
            line.format_into(&mut out, &mut memo);
            let l = String::from_utf8(out.clone()).unwrap();
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip = client.parse::<SocketAddr>().unwrap().ip().to_string();
            assert_eq!(f[1], ip, "{l}");
            assert_eq!(f[9], backend.unwrap_or("-"), "{l}");
            assert_eq!(
                line.to_line()[24..],
                l[24..],
                "a fresh memo writes the same"
            );
        }
    }

    #[test]
    fn the_wall_time_of_an_instant_comes_from_the_anchor() {
        let mut clock = Clock::default();
        let before = Instant::now();
        clock.anchor();
        let (i, wall) = clock.anchor.unwrap();
        assert!(
            wall > Duration::from_secs(1_700_000_000),
            "{wall:?} since the epoch"
        );
        assert_eq!(clock.wall(i), wall);
        assert_eq!(clock.wall(before), wall - (i - before));
        let later = i + Duration::from_millis(1500);
        assert_eq!(clock.wall(later), wall + Duration::from_millis(1500));
    }

    #[test]
    fn long_path_and_aborted() {
        let long = "/".repeat(200);
        let r = Box::new(Record {
            start: Instant::now(),
            client: "[::1]:5000".parse().unwrap(),
            host: "h2.test:8443".into(),
            method: http::Method::GET,
            path: long.as_str().into(),
            status: 200,
            color: None,
            backend: None,
        });
        let l = r.finish(3, false).to_line();
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            &f[1..],
            &[
                "::1",
                "h2.test:8443",
                "GET",
                &long,
                "200",
                "3",
                f[7],
                "-",
                "-",
                "aborted"
            ]
        );
    }
}
