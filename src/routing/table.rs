//! The immutable routing table: Host → site → active color → pool. Built off to the side from the
//! config and the state, then stored once into the `ArcSwap` that every request reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use tokio::sync::watch;

use super::pool::Pool;
use crate::config::{Color, Config, HealthConfig, HostPattern, ReadOnlyPolicy};
use crate::state::State;

/// With `[cluster]`: this edge's view of the shared state was confirmed within `freshness`.
/// Written by the cluster's freshness timer and heartbeat, read by the gate for writes only
/// (one relaxed load). Without `[cluster]` it stays true and nothing writes it.
pub static FRESH: AtomicBool = AtomicBool::new(true);

/// Rung by the first write after a switch (`write_seen` turning true), so that the control
/// plane records it in the state file at once instead of polling for it.
pub static FIRST_WRITE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Per-site live counters and flags that outlive any one table.
#[derive(Debug)]
pub struct SiteShared {
    pub name: Arc<str>,
    /// Writes (non-GET/HEAD/OPTIONS) admitted and not yet answered. Read-only-on waits for 0.
    pub inflight_writes: AtomicUsize,
    /// The read-only flag checked by writes *after* they counted themselves in (see gate.rs).
    pub read_only: AtomicBool,
    /// Writes forwarded per color since the last switch.
    pub writes_since_switch: [AtomicU64; 2],
    /// Set by the first write after a switch; the control plane persists it.
    pub write_seen: AtomicBool,
    /// The active color, for upgraded connections that must drain after a switch.
    pub active_tx: watch::Sender<Color>,
    /// How long upgraded connections of the old color may live on after the last switch.
    pub drain_ms: AtomicU64,
}

impl SiteShared {
    pub fn new(name: &str, active: Color) -> SiteShared {
        SiteShared {
            name: name.into(),
            inflight_writes: AtomicUsize::new(0),
            read_only: AtomicBool::new(false),
            writes_since_switch: [AtomicU64::new(0), AtomicU64::new(0)],
            write_seen: AtomicBool::new(false),
            active_tx: watch::Sender::new(active),
            drain_ms: AtomicU64::new(30_000),
        }
    }

    pub fn writes(&self, c: Color) -> u64 {
        self.writes_since_switch[c.idx()].load(Ordering::Relaxed)
    }
}

/// What read-only mode says to clients.
#[derive(Debug)]
pub struct ReadOnlyNotice {
    pub reason: String,
    pub retry_after_s: u64,
    pub retry_after: HeaderValue,
}

/// What maintenance mode says to clients: the message, and the site's own page if it has one.
#[derive(Debug)]
pub struct MaintenanceNotice {
    pub message: String,
    pub retry_after_s: u64,
    pub retry_after: HeaderValue,
    pub page: Option<Arc<str>>,
}

/// One site as the request path sees it.
#[derive(Debug)]
pub struct SiteRoute {
    pub name: Arc<str>,
    pub active: Color,
    pub pools: [Arc<Pool>; 2],
    pub shared: Arc<SiteShared>,
    pub read_only: Option<Arc<ReadOnlyNotice>>,
    pub policy: ReadOnlyPolicy,
    /// Maintenance mode on for this site: every request not allowed gets the page.
    pub maintenance: Option<Arc<MaintenanceNotice>>,
    pub maintenance_allow: ReadOnlyPolicy,
    pub redirect_http: bool,
    pub health: Option<HealthConfig>,
    /// `Strict-Transport-Security` for HTTPS responses.
    pub hsts: Option<HeaderValue>,
    /// Path prefixes whose error pages are JSON.
    pub json_errors: Box<[Box<str>]>,
}

impl SiteRoute {
    /// Error pages of this path are JSON whatever the client asked for.
    #[inline]
    pub fn json_errors(&self, path: &str) -> bool {
        self.json_errors.iter().any(|p| path.starts_with(&**p))
    }
}

impl SiteRoute {
    pub fn pool(&self, c: Color) -> &Arc<Pool> {
        &self.pools[c.idx()]
    }
}

/// Where a host leads: a site, and whether it is the site's preview host (idle color).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub site: usize,
    pub preview: bool,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    /// foldhash rather than SipHash: the keys are the configuration's host names, so no client
    /// can fill the table with colliding keys, and the lookup runs on every request.
    exact: HashMap<Box<str>, Route, foldhash::fast::RandomState>,
    /// (suffix with leading dot, route), longest suffix first.
    wildcard: Vec<(Box<str>, Route)>,
    pub sites: Vec<Arc<SiteRoute>>,
    /// The https port clients use, for redirects (None: no https listener).
    pub https_port: Option<u16>,
    /// Peers whose forwarding headers are kept and extended (`proxy.trusted_proxies`).
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl RoutingTable {
    /// Builds a table from the config and the state. Pools whose addresses did not change are
    /// reused from `prev`, so their health and round-robin position carry over.
    pub fn build(
        cfg: &Config,
        state: &State,
        shared: &mut HashMap<String, Arc<SiteShared>>,
        prev: Option<&RoutingTable>,
    ) -> RoutingTable {
        let mut t = RoutingTable {
            https_port: cfg.proxy.https.map(|a| a.port()),
            trusted_proxies: cfg.proxy.trusted_proxies.clone(),
            ..Default::default()
        };
        for (i, sc) in cfg.sites.iter().enumerate() {
            let ss = state.sites.get(&sc.name);
            let active = ss.map(|s| s.active).unwrap_or(sc.active);
            let prev_site = prev.and_then(|p| p.site(&sc.name));
            let pools = Color::ALL.map(|c| {
                let addrs: Vec<std::net::SocketAddr> = match ss.and_then(|s| s.pools.get(&c)) {
                    Some(list) => list.iter().filter_map(|a| a.parse().ok()).collect(),
                    None => sc.pools[c.idx()].clone(),
                };
                match prev_site.map(|p| p.pool(c)) {
                    Some(p) if p.same_addrs(&addrs) => p.clone(),
                    _ => Arc::new(Pool::new(&addrs)),
                }
            });
            let sh = shared
                .entry(sc.name.clone())
                .or_insert_with(|| Arc::new(SiteShared::new(&sc.name, active)))
                .clone();
            let read_only = state
                .read_only
                .as_ref()
                .filter(|r| r.covers(&sc.name))
                .map(|r| {
                    Arc::new(ReadOnlyNotice {
                        reason: r.reason.clone(),
                        retry_after_s: r.retry_after_s,
                        retry_after: HeaderValue::from(r.retry_after_s),
                    })
                });
            let maintenance = state
                .maintenance
                .as_ref()
                .filter(|m| m.covers(&sc.name))
                .map(|m| {
                    Arc::new(MaintenanceNotice {
                        message: m.message.clone(),
                        retry_after_s: m.retry_after_s,
                        retry_after: HeaderValue::from(m.retry_after_s),
                        page: sc.maintenance.page.clone(),
                    })
                });
            let route = SiteRoute {
                name: sh.name.clone(),
                active,
                pools,
                shared: sh,
                read_only,
                policy: sc.read_only.clone(),
                maintenance,
                maintenance_allow: sc.maintenance.allow.clone(),
                redirect_http: sc.redirect_http,
                health: sc.health.clone(),
                hsts: sc
                    .hsts
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok()),
                json_errors: sc.json_errors.iter().map(|p| p.as_str().into()).collect(),
            };
            t.sites.push(Arc::new(route));
            for (patterns, preview) in [(&sc.hosts, false), (&sc.preview_hosts, true)] {
                for h in patterns {
                    let r = Route { site: i, preview };
                    match h {
                        HostPattern::Exact(e) => {
                            t.exact.insert(e.as_str().into(), r);
                        }
                        HostPattern::Wildcard(s) => t.wildcard.push((s.as_str().into(), r)),
                    }
                }
            }
        }
        t.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        t
    }

    /// Whether `peer` is a trusted proxy (no list: nobody is; one comparison per entry).
    #[inline]
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && {
            let ip = crate::config::canonical_ip(peer);
            self.trusted_proxies.iter().any(|n| n.contains(&ip))
        }
    }

    pub fn site(&self, name: &str) -> Option<&Arc<SiteRoute>> {
        self.sites.iter().find(|s| &*s.name == name)
    }

    /// Finds the route for a Host header value or :authority (port and trailing dot ignored,
    /// case-insensitive). Allocation-free for host names up to 255 bytes.
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<Route> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.len() > 255 {
            return None;
        }
        let mut buf = [0u8; 255];
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            let b = &mut buf[..host.len()];
            b.copy_from_slice(host.as_bytes());
            b.make_ascii_lowercase();
            std::str::from_utf8(b).ok()?
        } else {
            host
        };
        if let Some(r) = self.exact.get(host) {
            return Some(*r);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
            .map(|(_, r)| *r)
    }
}

/// True when two host values name the same host (ports and case ignored).
#[inline]
pub fn same_host(a: &str, b: &str) -> bool {
    strip_port(a).eq_ignore_ascii_case(strip_port(b))
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
#[inline]
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    // The digits at the end, then a colon before them: a byte loop (this runs two or three
    // times per request; `rfind` costs several times more on names this short).
    let b = host.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    match b.len().checked_sub(digits + 1) {
        Some(i) if b[i] == b':' => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn ports_are_stripped() {
        for (with, without) in [
            ("a.test", "a.test"),
            ("a.test:8443", "a.test"),
            ("a.test:", "a.test"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[::1]:443", "[::1]"),
            ("a.test:x1", "a.test:x1"),
            ("1234", "1234"),
            (":80", ""),
            ("", ""),
        ] {
            assert_eq!(strip_port(with), without, "{with}");
        }
    }

    fn table() -> RoutingTable {
        let cfg = crate::config::parse_config(
            Path::new("t.toml"),
            "[proxy]\nhttp=\"127.0.0.1:0\"\nstate=\"s\"\n[[site]]\nname=\"wiki\"\nhosts=[\"wiki.test\",\"*.wiki.test\"]\npreview_hosts=[\"next.wiki.test\"]\n[site.pools]\nblue=[\"127.0.0.1:1\"]\n[[site]]\nname=\"b\"\nhosts=[\"*.a.wiki.test\"]\n[site.pools]\nblue=[\"127.0.0.1:2\"]\n",
        )
        .unwrap();
        RoutingTable::build(&cfg, &State::default(), &mut HashMap::new(), None)
    }

    #[test]
    fn lookup_exact_wildcard_preview() {
        let t = table();
        assert_eq!(t.lookup("wiki.test").unwrap().site, 0);
        assert_eq!(t.lookup("WIKI.test:8443").unwrap().site, 0);
        assert_eq!(t.lookup("wiki.test.").unwrap().site, 0);
        assert_eq!(t.lookup("x.wiki.test").unwrap().site, 0);
        assert_eq!(
            t.lookup("x.a.wiki.test").unwrap().site,
            1,
            "longest wildcard wins"
        );
        assert!(t.lookup("next.wiki.test").unwrap().preview);
        assert!(t.lookup("other.test").is_none());
        assert!(t.lookup("").is_none());
    }
}
