//! The access log: one line per request, written by a dedicated thread. The request path only
//! formats the line and hands it over with `try_send` on a bounded channel; if the writer falls
//! behind, lines are dropped and counted rather than slowing requests down.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::LogTarget;

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    pub fn off() -> AccessLog {
        AccessLog {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn start(target: &LogTarget) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match target {
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
        let (tx, rx) = sync_channel::<String>(16 * 1024);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(line) = rx.recv() {
                    buf.extend_from_slice(line.as_bytes());
                    // Batch whatever else is already queued, then write once.
                    while buf.len() < 60 * 1024 {
                        match rx.try_recv() {
                            Ok(l) => buf.extend_from_slice(l.as_bytes()),
                            Err(_) => break,
                        }
                    }
                    if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                        // Nowhere to report it but stderr; keep serving.
                        eprintln!("switchyard: cannot write the access log");
                    }
                    buf.clear();
                }
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn send(&self, line: String) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What one access-log line says.
pub struct Record {
    pub start: Instant,
    pub client: SocketAddr,
    pub host: String,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub color: Option<&'static str>,
    pub backend: Option<SocketAddr>,
}

impl Record {
    /// `time client host method path status bytes duration_s color backend`
    pub fn format(&self, bytes: u64, complete: bool) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(160);
        let now = SystemTime::now() - Duration::from_nanos(0);
        let _ = write!(
            s,
            "{} {} {} {} {} {} {} {:.4} {} {}",
            humantime::format_rfc3339_millis(now),
            self.client.ip(),
            if self.host.is_empty() {
                "-"
            } else {
                &self.host
            },
            self.method,
            self.path,
            self.status,
            bytes,
            self.start.elapsed().as_secs_f64(),
            self.color.unwrap_or("-"),
            self.backend
                .map(|b| b.to_string())
                .as_deref()
                .unwrap_or("-"),
        );
        if !complete {
            s.push_str(" aborted");
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shape() {
        let r = Record {
            start: Instant::now(),
            client: "127.0.0.1:5000".parse().unwrap(),
            host: "w.test".into(),
            method: http::Method::POST,
            path: "/a?b".into(),
            status: 201,
            color: Some("green"),
            backend: Some("127.0.0.1:81".parse().unwrap()),
        };
        let l = r.format(12, true);
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            &f[1..7],
            &["127.0.0.1", "w.test", "POST", "/a?b", "201", "12"]
        );
        assert_eq!(&f[8..], &["green", "127.0.0.1:81"]);
    }
}
