//! Active health checks: one task probes every backend of both colors of every site that has a
//! `[site.health]` (the idle color too: a release checks it before the switch), applies rise/fall
//! and writes the result into the backend's atomic. Transitions are logged once. Never on the
//! request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Empty;
use tokio::net::TcpStream;

use crate::config::HealthConfig;
use crate::routing::{Backend, RoutingTable};

/// One probe: an HTTP GET of `path` when `health` is set (2xx/3xx or the expected status pass),
/// otherwise a TCP connect.
pub async fn probe(
    addr: SocketAddr,
    host: &str,
    health: Option<&HealthConfig>,
) -> Result<(), String> {
    let timeout = health.map(|h| h.timeout).unwrap_or(Duration::from_secs(2));
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let Some(h) = health else { return Ok(()) };
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(&h.path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "switchyard-health")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let s = resp.status();
        let ok = match h.expect_status {
            Some(want) => s.as_u16() == want,
            None => s.is_success() || s.is_redirection(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{} answered {}", h.path, s.as_u16()))
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            crate::config::units::fmt_duration(timeout)
        )),
    }
}

#[derive(Default)]
struct Track {
    ok: u32,
    fail: u32,
    next: Option<Instant>,
}

/// Runs forever, following table swaps.
pub async fn run(table: Arc<ArcSwap<RoutingTable>>) {
    let mut tracks: HashMap<(Arc<str>, usize), Track> = HashMap::new();
    // Every 100 ms while some site has checks; once a second otherwise, only to notice a reload
    // that adds some. An idle thread that wakes costs the traffic on a busy machine (see
    // benches/README.md, change 12), so it should not wake for nothing.
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        let t = table.load_full();
        pause = if t.sites.iter().any(|s| s.health.is_some()) {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let now = Instant::now();
        let mut due: Vec<(Arc<str>, Arc<Backend>, HealthConfig, String)> = Vec::new();
        for site in &t.sites {
            let Some(h) = &site.health else { continue };
            for pool in &site.pools {
                for b in pool.backends.iter() {
                    let key = (site.name.clone(), Arc::as_ptr(b) as usize);
                    let tr = tracks.entry(key).or_default();
                    if tr.next.is_none_or(|n| n <= now) {
                        tr.next = Some(now + h.interval);
                        due.push((
                            site.name.clone(),
                            b.clone(),
                            h.clone(),
                            site.name.to_string(),
                        ));
                    }
                }
            }
        }
        if due.is_empty() {
            continue;
        }
        let results =
            futures_util::future::join_all(due.into_iter().map(|(site, b, h, _)| async move {
                let r = probe(b.addr, "localhost", Some(&h)).await;
                (site, b, h, r)
            }))
            .await;
        for (site, b, h, r) in results {
            let tr = tracks
                .entry((site.clone(), Arc::as_ptr(&b) as usize))
                .or_default();
            match r {
                Ok(()) => {
                    tr.ok += 1;
                    tr.fail = 0;
                    // A good active check ends a passive ejection early.
                    b.clear_ejection();
                    if !b.is_up() && tr.ok >= h.rise && b.set_up(true) {
                        tracing::info!(site = %site, backend = %b.addr, "backend is healthy again");
                    }
                }
                Err(e) => {
                    tr.fail += 1;
                    tr.ok = 0;
                    if b.is_up() && tr.fail >= h.fall && b.set_up(false) {
                        tracing::warn!(site = %site, backend = %b.addr, reason = %e, "backend is down");
                    }
                }
            }
        }
        // Forget backends that left the table.
        if tracks.len() > 4096 {
            tracks.clear();
        }
    }
}
