//! The metrics listener: `/healthz` for the edge itself, `/metrics` (Prometheus text) and `/` (the
//! dashboard, `dashboard.rs`, with charts from `history.rs`). Read-only, never on the request path.

mod dashboard;
mod history;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::ops::Ops;

pub async fn run(l: TcpListener, ops: Arc<Ops>) {
    let history = Arc::new(history::History::default());
    tokio::spawn(history::run(history.clone(), ops.clone()));
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let (ops, history) = (ops.clone(), history.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (ops, history) = (ops.clone(), history.clone());
                async move { Ok::<_, Infallible>(page(&ops, &history, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn resp(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

async fn page(
    ops: &Ops,
    history: &history::History,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => resp(StatusCode::OK, "text/plain", "ok\n".into()),
        "/metrics" => resp(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics_text(ops).await,
        ),
        "/" | "/status" => resp(
            StatusCode::OK,
            "text/html; charset=utf-8",
            dashboard::html(ops, history).await,
        ),
        _ => resp(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

async fn metrics_text(ops: &Ops) -> String {
    let st = ops.status().await;
    let mut o = ops.metrics.encode();
    // State gauges, computed now from the live table.
    let _ = writeln!(o, "# HELP switchyard_backend_up Backend health (1 up, 0 down or ejected).\n# TYPE switchyard_backend_up gauge");
    for s in &st.sites {
        for (color, list) in &s.pools {
            for b in list {
                let _ = writeln!(
                    o,
                    "switchyard_backend_up{{site=\"{}\",color=\"{color}\",backend=\"{}\"}} {}",
                    s.name,
                    b.addr,
                    u8::from(b.healthy && !b.ejected)
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "# HELP switchyard_read_only Read-only mode per site.\n# TYPE switchyard_read_only gauge"
    );
    for s in &st.sites {
        let _ = writeln!(
            o,
            "switchyard_read_only{{site=\"{}\"}} {}",
            s.name,
            u8::from(s.read_only)
        );
    }
    let _ = writeln!(o, "# HELP switchyard_active_color Active color per site (1 for the active one).\n# TYPE switchyard_active_color gauge");
    for s in &st.sites {
        for c in crate::config::Color::ALL {
            let _ = writeln!(
                o,
                "switchyard_active_color{{site=\"{}\",color=\"{c}\"}} {}",
                s.name,
                u8::from(s.active == c)
            );
        }
    }
    let _ = writeln!(o, "# HELP switchyard_writes_since_switch Writes forwarded to the active color since the last switch.\n# TYPE switchyard_writes_since_switch gauge");
    for s in &st.sites {
        let _ = writeln!(
            o,
            "switchyard_writes_since_switch{{site=\"{}\"}} {}",
            s.name,
            s.writes_since_switch.get(&s.active).copied().unwrap_or(0)
        );
    }
    // From the records on disk (as `status`), so they survive a restart of the daemon.
    let _ = writeln!(o, "# HELP switchyard_backup_last_ok 1 when the last off-site copy run (kind=offsite) or restore drill (kind=drill) of a site passed, 0 when it failed.\n# TYPE switchyard_backup_last_ok gauge");
    for s in &st.sites {
        let runs = [
            ("offsite", s.last_offsite.as_ref().map(|r| r.ok)),
            ("drill", s.last_drill.as_ref().map(|d| d.ok)),
        ];
        for (kind, ok) in runs {
            if let Some(ok) = ok {
                let _ = writeln!(
                    o,
                    "switchyard_backup_last_ok{{site=\"{}\",kind=\"{kind}\"}} {}",
                    s.name,
                    u8::from(ok)
                );
            }
        }
    }
    let _ = writeln!(o, "# HELP switchyard_offsite_pending_sets Local backup sets not copied off-site yet, after the last off-site run.\n# TYPE switchyard_offsite_pending_sets gauge");
    for s in &st.sites {
        if let Some(r) = &s.last_offsite {
            let _ = writeln!(
                o,
                "switchyard_offsite_pending_sets{{site=\"{}\"}} {}",
                s.name,
                r.pending.len()
            );
        }
    }
    let _ = writeln!(o, "# HELP switchyard_certificate_expiry_seconds Seconds until the certificate expires (negative once expired).\n# TYPE switchyard_certificate_expiry_seconds gauge");
    let mut seen = std::collections::BTreeSet::new();
    for c in &st.certificates {
        if let Some(left) = c.expires_in_s {
            if seen.insert((&c.source, &c.name)) {
                let _ = writeln!(
                    o,
                    "switchyard_certificate_expiry_seconds{{name=\"{}\",source=\"{}\"}} {left}",
                    c.name, c.source
                );
            }
        }
    }
    if let Some(c) = &st.cluster {
        let _ = writeln!(o, "# HELP switchyard_cluster_fresh This edge's view of the cluster state is confirmed within the freshness limit (writes accepted).\n# TYPE switchyard_cluster_fresh gauge\nswitchyard_cluster_fresh {}", u8::from(c.fresh));
        let stale = c.staleness_ms.map(|ms| ms as f64 / 1000.0).unwrap_or(-1.0);
        let _ = writeln!(o, "# HELP switchyard_cluster_staleness_seconds Since this edge's view was last confirmed by etcd (-1: never).\n# TYPE switchyard_cluster_staleness_seconds gauge\nswitchyard_cluster_staleness_seconds {stale}");
        let _ = writeln!(o, "# HELP switchyard_cluster_edge_applied_revision The revision each edge acknowledged last, as this edge sees it.\n# TYPE switchyard_cluster_edge_applied_revision gauge");
        for e in &c.edges {
            let _ = writeln!(
                o,
                "switchyard_cluster_edge_applied_revision{{edge=\"{}\",health=\"{}\"}} {}",
                e.id, e.health, e.applied
            );
        }
    }
    o
}
