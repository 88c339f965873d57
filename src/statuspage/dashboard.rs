//! The dashboard at `/` of the metrics listener: per site the active color, every backend with
//! its health, traffic and errors per color over the last ten minutes, a release in progress, the
//! newest backup set; the recent switches and read-only / maintenance changes (from the audit
//! log); certificates with days to expiry; the edges of a cluster. Server-rendered HTML with
//! inline SVG, no script; it refreshes itself every 5 s. Everything shown is escaped.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::history::{self, History};
use crate::config::Color;
use crate::control::api::{SiteStatus, Status};
use crate::ops::Ops;
use crate::proxy::error_page::html_escape as esc;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{margin:0 0 .2em}\
h2{margin:1.2em 0 .4em;font-size:1.2em}table{border-collapse:collapse;margin:.3em 0}\
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
.site{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:.8em 0}\
.blue{color:#1565c0}.green{color:#2e7d32}.down{color:#c62828}.warn{background:#fff3e0;padding:.4em .8em}\
.muted{color:#777}.grid{display:flex;gap:2em;flex-wrap:wrap}";

/// The whole page.
pub async fn html(ops: &Ops, history: &History) -> String {
    let st = ops.status().await;
    let audit_log = ops.config().await.proxy.audit_log;
    let mut o = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\"><title>switchyard</title><style>{STYLE}</style></head><body><h1>switchyard</h1><p class=muted>state version {}, up {}, {} connections open, {} requests</p>",
        st.version,
        duration(st.uptime_s),
        st.connections_open,
        st.requests_total
    );
    banners(&mut o, &st);
    for s in &st.sites {
        site(&mut o, s, history);
    }
    changes(&mut o, &audit_log);
    certificates(&mut o, &st);
    cluster(&mut o, &st);
    o.push_str("</body></html>");
    o
}

fn banners(o: &mut String, st: &Status) {
    let scope = |sites: &Option<Vec<String>>| {
        sites
            .as_ref()
            .map(|s| s.join(", "))
            .unwrap_or_else(|| "all sites".into())
    };
    if let Some(r) = &st.read_only {
        let _ = write!(
            o,
            "<p class=warn><b>Read-only</b> ({}) since {}: {}</p>",
            esc(&scope(&r.sites)),
            esc(&r.since),
            esc(&r.reason)
        );
    }
    if let Some(m) = &st.maintenance {
        let _ = write!(
            o,
            "<p class=warn><b>Maintenance</b> ({}) since {}: {}</p>",
            esc(&scope(&m.sites)),
            esc(&m.since),
            esc(&m.message)
        );
    }
    if let Some(c) = st.cluster.as_ref().filter(|c| !c.fresh) {
        let _ = write!(
            o,
            "<p class=warn><b class=down>This edge lost contact with the cluster's state</b> (etcd via {}): writes are refused until it is back.</p>",
            esc(&c.endpoint)
        );
    }
}

fn site(o: &mut String, s: &SiteStatus, history: &History) {
    let _ = write!(
        o,
        "<div class=site><h2>{} <span class=\"{a}\">● {a}</span></h2><p class=muted>{}</p>",
        esc(&s.name),
        esc(&s.hosts.join(", ")),
        a = s.active
    );
    let writes = s.writes_since_switch.get(&s.active).copied().unwrap_or(0);
    let _ = write!(
        o,
        "<p>active <b class=\"{a}\">{a}</b> since {}{}; {writes} write(s) since the switch{}; {} in flight{}{}</p>",
        esc(s.switched_at.as_deref().unwrap_or("the start")),
        s.previous
            .map(|p| format!(" (was {p})"))
            .unwrap_or_default(),
        if s.written_since_switch { " (a rollback would lose them)" } else { "" },
        s.writes_in_flight,
        if s.read_only { "; <b>read-only</b>" } else { "" },
        if s.maintenance { "; <b>maintenance</b>" } else { "" },
        a = s.active
    );
    if let Some(r) = &s.release {
        let _ = write!(
            o,
            "<p class=warn><b>Release</b> to {} ({}) at step <b>{}</b>, started {}, last step {}: {}</p>",
            esc(&r.to_version),
            r.to,
            esc(&r.step),
            esc(&r.started_at),
            esc(&r.updated_at),
            if r.running {
                "running".to_string()
            } else {
                format!(
                    "<span class=down>cut off</span>: <code>switchyard release {} --resume</code> or <code>--abort</code>",
                    esc(&s.name)
                )
            }
        );
    }
    o.push_str("<div class=grid><div>");
    backends(o, s);
    o.push_str("</div><div>");
    traffic(o, &history.points(&s.name));
    o.push_str("</div></div>");
    backup(o, s);
    offsite_and_drill(o, s);
    o.push_str("</div>");
}

fn backends(o: &mut String, s: &SiteStatus) {
    o.push_str("<table><tr><th>color</th><th>backend</th><th>health</th></tr>");
    for c in Color::ALL {
        let list = s.pools.get(&c).map(Vec::as_slice).unwrap_or_default();
        if list.is_empty() {
            let _ = write!(
                o,
                "<tr><td class={c}>{c}</td><td class=muted>(empty)</td><td></td></tr>"
            );
        }
        for b in list {
            let health = match (b.healthy, b.ejected) {
                (true, false) => "up".to_string(),
                (true, true) => "<span class=down>ejected (refused a connection)</span>".into(),
                (false, _) => "<span class=down>down (health checks)</span>".into(),
            };
            let _ = write!(
                o,
                "<tr><td class={c}>{c}{}</td><td>{}</td><td>{health}</td></tr>",
                if c == s.active { " ●" } else { "" },
                esc(&b.addr)
            );
        }
    }
    o.push_str("</table>");
}

fn traffic(o: &mut String, points: &[history::Point]) {
    o.push_str(&history::svg(points));
    // The last minute.
    let recent: Vec<_> = points.iter().filter(|p| p.ago <= 60.0).collect();
    if recent.is_empty() {
        o.push_str("<p class=muted>traffic: gathering (a sample every 5 s)</p>");
        return;
    }
    let n = recent.len() as f64;
    let avg = |f: &dyn Fn(&history::Point) -> f64| recent.iter().map(|p| f(p)).sum::<f64>() / n;
    let (blue, green) = (avg(&|p| p.rate[0]), avg(&|p| p.rate[1]));
    let errors = avg(&|p| p.errors[0] + p.errors[1]);
    let total = blue + green;
    let _ = write!(
        o,
        "<p>last minute: <span class=blue>blue {blue:.1}</span> / <span class=green>green {green:.1}</span> req/s; 5xx {}</p>",
        if total > 0.0 {
            format!("{:.2} %", errors / total * 100.0)
        } else {
            "-".into()
        }
    );
}

fn backup(o: &mut String, s: &SiteStatus) {
    if !s.has_release {
        return;
    }
    let Some(b) = &s.last_backup else {
        o.push_str("<p class=down>no backup set yet: <code>switchyard backup</code> takes one</p>");
        return;
    };
    if let Some(e) = &b.error {
        let _ = write!(
            o,
            "<p class=down>newest backup set {}: unreadable ({})</p>",
            esc(&b.id),
            esc(e)
        );
        return;
    }
    let age = b
        .verified_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| duration(d.as_secs()));
    let _ = write!(
        o,
        "<p>newest backup set <code>{}</code>: {} member(s), {}, verified {}{}</p>",
        esc(&b.id),
        b.members,
        crate::release::human_bytes(b.size.unwrap_or(0)),
        esc(b.verified_at.as_deref().unwrap_or("-")),
        age.map(|a| format!(" ({a} ago)")).unwrap_or_default()
    );
}

/// The last off-site copy run and the last drill: a failure in red, with its reason.
fn offsite_and_drill(o: &mut String, s: &SiteStatus) {
    if let Some(r) = &s.last_offsite {
        let _ = match &r.error {
            None => write!(
                o,
                "<p>off-site copy ok {}: {} set(s) copied to <code>{}</code></p>",
                esc(&r.time),
                r.copied.len(),
                esc(&r.repository)
            ),
            Some(e) => write!(
                o,
                "<p class=down>off-site copy FAILED {}: {} ({} set(s) not off-site; the next <code>switchyard backup</code> retries)</p>",
                esc(&r.time),
                esc(e),
                r.pending.len()
            ),
        };
    }
    if let Some(d) = &s.last_drill {
        let _ = match &d.error {
            None => write!(
                o,
                "<p>restore drill passed {}: set <code>{}</code> ({}) in {:.1}s</p>",
                esc(&d.time),
                esc(&d.set),
                esc(&d.source),
                d.duration_s
            ),
            Some(e) => write!(
                o,
                "<p class=down>restore drill FAILED {}: set <code>{}</code>: {}</p>",
                esc(&d.time),
                esc(&d.set),
                esc(e)
            ),
        };
    }
}

/// The last switches, read-only and maintenance changes, pool changes and reloads, newest first,
/// from the tail of the audit log.
fn changes(o: &mut String, audit_log: &std::path::Path) {
    let lines = tail(audit_log, 64 * 1024);
    let events: Vec<serde_json::Value> = lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["action"].as_str().is_some_and(|a| {
                ["switch", "read-only", "maintenance", "pool", "reload"]
                    .iter()
                    .any(|k| a.starts_with(k))
            })
        })
        .take(12)
        .collect();
    if events.is_empty() {
        return;
    }
    o.push_str("<h2>Recent changes</h2><table><tr><th>time</th><th>change</th><th>by</th></tr>");
    for v in events {
        let by = match (v["peer_uid"].as_u64(), v["peer_pid"].as_u64()) {
            (Some(u), Some(p)) => format!("uid {u}, pid {p}"),
            (Some(u), None) => format!("uid {u}"),
            _ => "-".into(),
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(v["time"].as_str().unwrap_or("-")),
            esc(v["action"].as_str().unwrap_or("-")),
            esc(&by)
        );
    }
    o.push_str("</table>");
}

/// The last lines of a file, reading at most `max` bytes from its end.
fn tail(path: &std::path::Path, max: u64) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut text = String::new();
    let _ = f.take(max).read_to_string(&mut text);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    lines
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn certificates(o: &mut String, st: &Status) {
    if st.certificates.is_empty() {
        return;
    }
    o.push_str("<h2>Certificates</h2><table><tr><th>site</th><th>certificate</th><th>source</th><th>names</th><th>expires</th><th>ACME</th></tr>");
    for c in &st.certificates {
        let expires = match (&c.not_after, c.days_left) {
            (Some(t), Some(d)) if d < 14 => {
                format!("<span class=down>{} ({d} days)</span>", esc(t))
            }
            (Some(t), Some(d)) => format!("{} ({d} days)", esc(t)),
            _ => "-".into(),
        };
        let acme = match &c.acme {
            None => "-".into(),
            Some(a) => match &a.last_error {
                Some(e) => format!(
                    "<span class=down>{}: {}</span><br>next attempt {}",
                    esc(&a.state),
                    esc(e),
                    esc(a.next_attempt.as_deref().unwrap_or("-"))
                ),
                None => esc(&a.state),
            },
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{expires}</td><td>{acme}</td></tr>",
            esc(&c.site),
            esc(&c.name),
            esc(&c.source),
            esc(&c.names.join(", ")),
        );
    }
    o.push_str("</table>");
}

fn cluster(o: &mut String, st: &Status) {
    let Some(c) = &st.cluster else { return };
    let _ = write!(
        o,
        "<h2>Cluster {}</h2><p>this edge: <b>{}</b>, revision {}, {}, etcd via {}</p><table><tr><th>edge</th><th>health</th><th>applied</th><th>fresh</th><th>last ack</th><th>writes in flight</th><th>address</th></tr>",
        esc(&c.prefix),
        esc(&c.edge_id),
        c.revision,
        if c.fresh { "fresh" } else { "<span class=down>STALE: writes refused</span>" },
        esc(&c.endpoint)
    );
    for e in &c.edges {
        let _ = write!(
            o,
            "<tr><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.id),
            if e.health == "ok" { "" } else { " class=down" },
            esc(&e.health),
            e.applied,
            if e.fresh { "yes" } else { "no" },
            e.last_ack_ms
                .map(|ms| format!("{ms} ms ago"))
                .unwrap_or_else(|| "-".into()),
            e.writes_in_flight,
            esc(e.advertise.as_deref().unwrap_or("-"))
        );
    }
    o.push_str("</table>");
}
