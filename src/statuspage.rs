//! The metrics listener: `/healthz` for the edge itself, `/metrics` (Prometheus text) and `/` (a
//! small HTML status page). Never on the request path.

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
use crate::proxy::error_page::html_escape;

pub async fn run(l: TcpListener, ops: Arc<Ops>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let ops = ops.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let ops = ops.clone();
                async move { Ok::<_, Infallible>(page(&ops, req).await) }
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

async fn page(ops: &Ops, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
            status_html(ops).await,
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

/// The certificates section: days to expiry, where each came from, ACME errors.
fn certificates_html(o: &mut String, st: &crate::control::api::Status) {
    if st.certificates.is_empty() {
        return;
    }
    o.push_str("<h2>Certificates</h2><table><tr><th>site</th><th>certificate</th><th>source</th><th>names</th><th>expires</th><th>ACME</th></tr>");
    for c in &st.certificates {
        let expires = match (&c.not_after, c.days_left) {
            (Some(t), Some(d)) if d < 14 => {
                format!("<span class=down>{} ({d} days)</span>", html_escape(t))
            }
            (Some(t), Some(d)) => format!("{} ({d} days)", html_escape(t)),
            _ => "-".into(),
        };
        let acme = match &c.acme {
            None => "-".into(),
            Some(a) => match &a.last_error {
                Some(e) => format!(
                    "<span class=down>{}: {}</span><br>next attempt {}",
                    html_escape(&a.state),
                    html_escape(e),
                    html_escape(a.next_attempt.as_deref().unwrap_or("-"))
                ),
                None => html_escape(&a.state),
            },
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{expires}</td><td>{acme}</td></tr>",
            html_escape(&c.site),
            html_escape(&c.name),
            html_escape(&c.source),
            html_escape(&c.names.join(", ")),
        );
    }
    o.push_str("</table>");
}

async fn status_html(ops: &Ops) -> String {
    let st = ops.status().await;
    let mut o = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\"><title>switchyard status</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}.blue{color:#1565c0}.green{color:#2e7d32}.down{color:#c62828}</style></head><body><h1>switchyard</h1>");
    if let Some(r) = &st.read_only {
        let _ = write!(
            o,
            "<p><b>Read-only</b> since {}: {}</p>",
            html_escape(&r.since),
            html_escape(&r.reason)
        );
    }
    o.push_str("<table><tr><th>site</th><th>active</th><th>read-only</th><th>writes since switch</th><th>switched at</th><th>blue pool</th><th>green pool</th></tr>");
    for s in &st.sites {
        let pool = |c: crate::config::Color| {
            s.pools
                .get(&c)
                .map(|l| {
                    l.iter()
                        .map(|b| {
                            if b.healthy && !b.ejected {
                                html_escape(&b.addr)
                            } else {
                                format!("<span class=down>{} (down)</span>", html_escape(&b.addr))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("<br>")
                })
                .unwrap_or_default()
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"{a}\"><b>{a}</b></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&s.name),
            if s.read_only { "yes" } else { "no" },
            s.writes_since_switch.get(&s.active).copied().unwrap_or(0),
            s.switched_at.as_deref().unwrap_or("-"),
            pool(crate::config::Color::Blue),
            pool(crate::config::Color::Green),
            a = s.active,
        );
    }
    o.push_str("</table>");
    certificates_html(&mut o, &st);
    if let Some(c) = &st.cluster {
        let _ = write!(
            o,
            "<h2>cluster {}</h2><p>this edge: <b>{}</b>, revision {}, {}, etcd via {}</p><table><tr><th>edge</th><th>health</th><th>applied</th><th>fresh</th><th>last ack</th><th>writes in flight</th><th>address</th></tr>",
            html_escape(&c.prefix),
            html_escape(&c.edge_id),
            c.revision,
            if c.fresh { "fresh".to_string() } else { "<span class=down>STALE: writes refused</span>".to_string() },
            html_escape(&c.endpoint)
        );
        for e in &c.edges {
            let _ = write!(
                o,
                "<tr><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html_escape(&e.id),
                if e.health == "ok" { "" } else { " class=down" },
                html_escape(&e.health),
                e.applied,
                if e.fresh { "yes" } else { "no" },
                e.last_ack_ms.map(|ms| format!("{ms} ms ago")).unwrap_or_else(|| "-".into()),
                e.writes_in_flight,
                html_escape(e.advertise.as_deref().unwrap_or("-"))
            );
        }
        o.push_str("</table>");
    }
    let _ = write!(
        o,
        "<p>state version {}, up {} s, {} connections open, {} requests</p></body></html>",
        st.version, st.uptime_s, st.connections_open, st.requests_total
    );
    o
}
