//! Metrics of the edge on the `prometheus` crate, whose counters and histograms are atomics.
//! Labelled series are resolved once per site (when the site first appears in a table) into plain
//! handles, so the request path only bumps atomics: no lock, no label hashing per request. The
//! per-site handles are found through an `ArcSwap`ed list that the control plane replaces on change
//! (few sites: comparing names beats hashing them).
//! Gauges that describe state (backend health, read-only) are computed at scrape time.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::config::Color;
use crate::proxy::ProxyError;

/// Handles for one color of one site.
pub struct ColorMetrics {
    /// Responses by status class 1xx..5xx.
    pub class: [IntCounter; 5],
    pub duration: Histogram,
}

/// Handles for one site.
pub struct SiteMetrics {
    pub colors: [ColorMetrics; 2],
    pub rejected_writes: IntCounter,
    pub switches: IntCounter,
    pub bytes_out: IntCounter,
}

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    rejected: IntCounterVec,
    switches_vec: IntCounterVec,
    bytes_vec: IntCounterVec,
    /// Few sites: a list searched by name beats hashing the name.
    sites: ArcSwap<Vec<(Arc<str>, Arc<SiteMetrics>)>>,
    pub unrouted: IntCounter,
    pub connections_open: IntGauge,
    pub connections_total: IntCounter,
    pub connections_refused: IntCounter,
    pub tls_handshakes: IntCounter,
    pub tls_failures: IntCounter,
    pub backend_failures: IntCounter,
    pub reloads: IntCounter,
    pub proxy_errors: IntCounter,
    /// ACME orders by site and result (`ok`, `error`).
    acme_orders: IntCounterVec,
    /// Off-site copy runs and restore drills by site, kind and result (`ok`, `error`).
    backup_events: IntCounterVec,

    /// `[cluster]`: writes refused because this edge's view was not fresh.
    pub cluster_refusals: IntCounter,
    /// `[cluster]`: acks written (each also confirms freshness).
    pub cluster_acks: IntCounter,
    /// `[cluster]`: watch streams broken and reopened (on the next endpoint).
    pub cluster_reconnects: IntCounter,
    /// `[cluster]`: the etcd revision this edge has applied.
    pub cluster_applied: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request to response headers.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["site", "color"],
        )
        .expect("valid metric");
        r.register(Box::new(duration.clone()))
            .expect("registered once");
        let open = IntGauge::new("switchyard_connections_open", "Client connections open.")
            .expect("valid metric");
        r.register(Box::new(open.clone())).expect("registered once");
        Metrics {
            requests: counter_vec(
                &r,
                "switchyard_requests_total",
                "Responses by site, color and status class.",
                &["site", "color", "class"],
            ),
            duration,
            rejected: counter_vec(
                &r,
                "switchyard_read_only_rejected_writes_total",
                "Writes refused by read-only mode.",
                &["site"],
            ),
            switches_vec: counter_vec(
                &r,
                "switchyard_switches_total",
                "Switches of the active color.",
                &["site"],
            ),
            bytes_vec: counter_vec(
                &r,
                "switchyard_response_bytes_total",
                "Response body bytes sent to clients.",
                &["site"],
            ),
            sites: ArcSwap::default(),
            unrouted: counter(
                &r,
                "switchyard_unrouted_requests_total",
                "Requests that matched no site or failed before routing.",
            ),
            connections_open: open,
            connections_total: counter(
                &r,
                "switchyard_connections_total",
                "Client connections accepted.",
            ),
            connections_refused: counter(
                &r,
                "switchyard_connections_refused_total",
                "Connections refused at max_connections.",
            ),
            tls_handshakes: counter(
                &r,
                "switchyard_tls_handshakes_total",
                "TLS handshakes completed.",
            ),
            tls_failures: counter(
                &r,
                "switchyard_tls_handshake_failures_total",
                "TLS handshakes failed or timed out.",
            ),
            backend_failures: counter(
                &r,
                "switchyard_backend_failures_total",
                "Upstream connections refused or timed out.",
            ),
            reloads: counter(
                &r,
                "switchyard_config_reloads_total",
                "Config reloads accepted.",
            ),
            proxy_errors: counter(
                &r,
                "switchyard_proxy_errors_total",
                "Responses made by the proxy itself (4xx/5xx pages).",
            ),
            acme_orders: counter_vec(
                &r,
                "switchyard_acme_orders_total",
                "ACME certificate orders by site and result (ok, error).",
                &["site", "result"],
            ),
            backup_events: counter_vec(
                &r,
                "switchyard_backup_events_total",
                "Off-site copy runs (kind=offsite) and restore drills (kind=drill) by site and result (ok, error).",
                &["site", "kind", "result"],
            ),
            cluster_refusals: counter(
                &r,
                "switchyard_cluster_unknown_refusals_total",
                "Writes refused (503) because this edge's view of the cluster state was not fresh.",
            ),
            cluster_acks: counter(
                &r,
                "switchyard_cluster_acks_total",
                "Acknowledgements this edge wrote to etcd (each confirms its view is current).",
            ),
            cluster_reconnects: counter(
                &r,
                "switchyard_cluster_watch_reconnects_total",
                "Watch streams to etcd that broke and were reopened on the next endpoint.",
            ),
            cluster_applied: {
                let g = IntGauge::new(
                    "switchyard_cluster_applied_revision",
                    "The etcd revision of the shared state this edge has applied.",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            registry: r,
        }
    }
}

#[inline]
fn find<'a>(list: &'a [(Arc<str>, Arc<SiteMetrics>)], site: &str) -> Option<&'a Arc<SiteMetrics>> {
    list.iter().find(|(k, _)| &**k == site).map(|(_, m)| m)
}

impl Metrics {
    /// The handles of `site`, made on first use (cold: control plane, or a request's first sight).
    /// Per color (blue, green) of `site`: responses so far, and those with a 5xx status. For the
    /// dashboard's charts; cold path.
    pub fn site_counts(&self, site: &str) -> Option<[(u64, u64); 2]> {
        let guard = self.sites.load();
        let m = find(&guard, site)?;
        Some(m.colors.each_ref().map(|c| {
            let all = c.class.iter().map(|k| k.get()).sum();
            (all, c.class[4].get())
        }))
    }

    pub fn site(&self, site: &str) -> Arc<SiteMetrics> {
        if let Some(m) = find(&self.sites.load(), site) {
            return m.clone();
        }
        let color = |c: Color| ColorMetrics {
            class: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|k| self.requests.with_label_values(&[site, c.as_str(), k])),
            duration: self.duration.with_label_values(&[site, c.as_str()]),
        };
        let m = Arc::new(SiteMetrics {
            colors: [color(Color::Blue), color(Color::Green)],
            rejected_writes: self.rejected.with_label_values(&[site]),
            switches: self.switches_vec.with_label_values(&[site]),
            bytes_out: self.bytes_vec.with_label_values(&[site]),
        });
        self.sites.rcu(|list| {
            let mut next = Vec::clone(list);
            if find(&next, site).is_none() {
                next.push((site.into(), m.clone()));
            }
            next
        });
        m
    }

    /// One response. Lock-free once the site's handles exist.
    #[inline]
    pub fn response(&self, site: Option<&str>, color: Option<Color>, status: u16, took: Duration) {
        let (Some(site), Some(color)) = (site, color) else {
            self.unrouted.inc();
            return;
        };
        let guard = self.sites.load();
        let m = match find(&guard, site) {
            Some(m) => m,
            None => {
                drop(guard);
                self.site(site);
                return self.response(Some(site), Some(color), status, took);
            }
        };
        let cm = &m.colors[color.idx()];
        let k = (status / 100).clamp(1, 5) as usize - 1;
        cm.class[k].inc();
        cm.duration.observe(took.as_secs_f64());
    }

    /// Response body bytes sent for `site` (counted when the body ends).
    #[inline]
    pub fn response_bytes(&self, site: Option<&str>, n: u64) {
        if let (Some(site), true) = (site, n > 0) {
            if let Some(m) = find(&self.sites.load(), site) {
                m.bytes_out.inc_by(n);
            }
        }
    }

    #[inline]
    pub fn rejected_write(&self, site: &str) {
        if let Some(m) = find(&self.sites.load(), site) {
            m.rejected_writes.inc();
        } else {
            self.site(site).rejected_writes.inc();
        }
    }

    #[inline]
    pub fn backend_failure(&self) {
        self.backend_failures.inc();
    }

    #[inline]
    pub fn proxy_error(&self, _e: &ProxyError) {
        self.proxy_errors.inc();
    }

    /// An ACME order of `site` ended (cold: the control plane).
    pub fn acme_order(&self, site: &str, ok: bool) {
        self.acme_orders
            .with_label_values(&[site, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// An off-site run or a drill of `site` was reported (cold: the control plane).
    pub fn backup_event(&self, site: &str, kind: &str, ok: bool) {
        self.backup_events
            .with_label_values(&[site, kind, if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn switched(&self, site: &str) {
        self.site(site).switches.inc();
    }

    /// Total responses (for status).
    pub fn requests_total(&self) -> u64 {
        use prometheus::core::Collector;
        let fams = self.requests.collect();
        fams.iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum::<u64>()
            + self.unrouted.get()
    }

    /// The Prometheus text of every registered metric.
    pub fn encode(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
