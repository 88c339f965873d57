//! `[cluster]`: etcd endpoints, the key prefix, this edge's id and the timeouts, checked against
//! each other (docs/cluster.md says why each relation matters).

use super::raw::{RawCluster, S};
use super::{ClusterConfig, Ctx, Duration, ProxyConfig};

pub(super) fn cluster(cx: &mut Ctx, rc: &S<RawCluster>, proxy: &ProxyConfig) -> ClusterConfig {
    let c = rc.get_ref();
    let mut endpoints = Vec::new();
    if c.endpoints.is_empty() {
        cx.err(rc, "[cluster] has no `endpoints`; list the etcd members' client URLs, e.g. endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]");
    }
    for e in &c.endpoints {
        let url = e.get_ref().trim();
        let rest = url.strip_prefix("http://");
        let ok = rest.is_some_and(|r| {
            let hostport = r.trim_end_matches('/');
            hostport
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        });
        if ok {
            endpoints.push(url.trim_end_matches('/').to_string());
        } else if url.starts_with("https://") {
            cx.err(e, format!("etcd endpoint `{url}`: TLS to etcd is not supported yet; use http:// on a private network or a local TLS-terminating sidecar"));
        } else {
            cx.err(
                e,
                format!("etcd endpoint `{url}` must be http://HOST:PORT, e.g. \"http://127.0.0.1:2379\""),
            );
        }
    }
    let prefix = match &c.prefix {
        None => "/switchyard/".to_string(),
        Some(p) => {
            let v = p.get_ref().trim();
            if v.is_empty() || v.contains(char::is_whitespace) {
                cx.err(p, "`prefix` must be a non-empty key prefix without spaces, e.g. \"/switchyard/prod\"");
            }
            format!("{}/", v.trim_end_matches('/'))
        }
    };
    let edge_id = match &c.edge_id {
        Some(id) => {
            let v = id.get_ref().clone();
            if v.is_empty()
                || v.len() > 64
                || !v
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
            {
                cx.err(id, format!("`edge_id` `{v}` must be 1-64 letters, digits, -, _ or . (it is a key in etcd)"));
            }
            v
        }
        None => hostname(),
    };
    let d = |cx: &mut Ctx, v: &Option<S<String>>, key: &str, default: Duration| {
        cx.duration(v, key, default)
    };
    let dial_timeout = d(cx, &c.dial_timeout, "dial_timeout", Duration::from_secs(2));
    let request_timeout = d(
        cx,
        &c.request_timeout,
        "request_timeout",
        Duration::from_secs(1),
    );
    let lease_ttl = d(cx, &c.lease_ttl, "lease_ttl", Duration::from_secs(5));
    let freshness = d(cx, &c.freshness, "freshness", Duration::from_secs(3));
    let max_write_duration = d(
        cx,
        &c.max_write_duration,
        "max_write_duration",
        proxy.limits.upstream_timeout,
    );
    let ack_timeout = d(cx, &c.ack_timeout, "ack_timeout", Duration::from_secs(5));
    let startup_timeout = d(
        cx,
        &c.startup_timeout,
        "startup_timeout",
        Duration::from_secs(10),
    );
    if lease_ttl < Duration::from_secs(2) {
        if let Some(s) = &c.lease_ttl {
            cx.err(s, "`lease_ttl` must be at least 2s (etcd grants whole seconds, and a shorter lease expires on a busy machine)");
        }
    }
    if freshness < request_timeout * 2 {
        let span = c.freshness.as_ref().or(c.request_timeout.as_ref());
        let msg = format!("`freshness` ({}) must be at least twice `request_timeout` ({}): an edge confirms its view every freshness/4 and each try may take a request_timeout", humantime::format_duration(freshness), humantime::format_duration(request_timeout));
        match span {
            Some(s) => cx.err(s, msg),
            None => cx.err(rc, msg),
        }
    }
    ClusterConfig {
        endpoints,
        prefix,
        edge_id,
        advertise: c.advertise.as_ref().map(|a| a.get_ref().clone()),
        dial_timeout,
        request_timeout,
        lease_ttl,
        freshness,
        max_write_duration,
        ack_timeout,
        startup_timeout,
    }
}

/// The host name, for the default edge id.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let n = buf.iter().position(|&b| b == 0).unwrap_or(0);
    let name = if ok {
        String::from_utf8_lossy(&buf[..n]).into_owned()
    } else {
        String::new()
    };
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() {
        "edge".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn problems(cluster: &str) -> Vec<String> {
        let t = format!("[proxy]\nhttp = \"127.0.0.1:0\"\nstate = \"s.json\"\n[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\n[site.pools]\nblue = [\"127.0.0.1:1\"]\n[cluster]\n{cluster}\n");
        match crate::config::parse_config(Path::new("t.toml"), &t) {
            Ok(_) => vec![],
            Err(e) => e.problems(),
        }
    }

    #[test]
    fn cluster_keys_are_checked() {
        assert!(problems("endpoints = [\"http://127.0.0.1:2379\"]\nedge_id = \"e1\"").is_empty());
        let p = problems("endpoints = [\"127.0.0.1:2379\", \"https://a:1\"]\nedge_id = \"a b\"\nfreshness = \"1s\"\nrequest_timeout = \"1s\"");
        assert!(p.iter().any(|m| m.contains("http://HOST:PORT")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("TLS")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("edge_id")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("twice")), "{p:?}");
        let p = problems("");
        assert!(p.iter().any(|m| m.contains("no `endpoints`")), "{p:?}");
    }

    #[test]
    fn defaults() {
        let t = "[proxy]\nhttp = \"127.0.0.1:0\"\nstate = \"s.json\"\nupstream_timeout = \"7s\"\n[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\n[site.pools]\nblue = [\"127.0.0.1:1\"]\n[cluster]\nendpoints = [\"http://127.0.0.1:2379/\"]\nprefix = \"/sy/prod\"\n";
        let c = crate::config::parse_config(Path::new("t.toml"), t)
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.prefix, "/sy/prod/");
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(c.max_write_duration, std::time::Duration::from_secs(7));
        assert!(!c.edge_id.is_empty());
    }
}
