//! `[proxy]`: listeners, limits and timeouts, the access log, trusted proxies and the PROXY
//! protocol.

use super::raw::{self, S};
use super::*;

pub(super) fn proxy(cx: &mut Ctx, rp: &S<raw::RawProxy>) -> ProxyConfig {
    let p = rp.get_ref();
    let http = p.http.as_ref().and_then(|a| cx.addr(a, "`http`"));
    let https = p.https.as_ref().and_then(|a| cx.addr(a, "`https`"));
    if p.http.is_none() && p.https.is_none() {
        cx.err(rp, "[proxy] has neither `http` nor `https`; add at least one listener, e.g. https = \"0.0.0.0:443\"");
    }
    let certs = p.certs.as_ref().map(|c| cx.path(c.get_ref()));
    if https.is_some() && certs.is_none() {
        cx.err(rp, "`https` is set but `certs` is not; point `certs` at a folder of NAME.crt + NAME.key pairs");
    }
    if let (Some(c), Some(span)) = (&certs, &p.certs) {
        if !c.is_dir() {
            cx.err(span, format!("certs folder {} does not exist; create it and put NAME.crt + NAME.key pairs in it", c.display()));
        }
    }
    let state = match &p.state {
        Some(s) => cx.path(s.get_ref()),
        None => {
            cx.err(rp, "`state` is missing; set it to the file where switchyard keeps active colors, e.g. state = \"/var/lib/switchyard/state.json\"");
            PathBuf::new()
        }
    };
    let control = match &p.control {
        Some(s) => cx.path(s.get_ref()),
        None => state.with_file_name("control.sock"),
    };
    let audit_log = match &p.audit_log {
        Some(s) => cx.path(s.get_ref()),
        None => state.with_file_name("audit.log"),
    };
    let metrics = p.metrics.as_ref().and_then(|a| cx.addr(a, "`metrics`"));
    let access_log = match p.access_log.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("stdout") => LogTarget::Stdout,
        Some("off") => LogTarget::Off,
        Some(path) => LogTarget::File(cx.path(path)),
    };
    let access_log_format = match &p.access_log_format {
        None => LogFormat::Text,
        Some(f) => match f.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                cx.err(
                    f,
                    format!("access_log_format `{other}` is not known; use \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        },
    };
    let mut control_allow = Vec::new();
    if let Some(map) = &p.control_allow {
        for (k, v) in map.get_ref() {
            let principal = k
                .strip_prefix("uid:")
                .and_then(|n| n.parse().ok())
                .map(Principal::Uid)
                .or_else(|| {
                    k.strip_prefix("gid:")
                        .and_then(|n| n.parse().ok())
                        .map(Principal::Gid)
                });
            let role = match v.get_ref().as_str() {
                "read" => Some(Role::Read),
                "operate" => Some(Role::Operate),
                _ => None,
            };
            match (principal, role) {
                (Some(p), Some(r)) => control_allow.push((p, r)),
                (None, _) => cx.err(
                    v,
                    format!("control_allow key `{k}` must be \"uid:N\" or \"gid:N\""),
                ),
                (_, None) => cx.err(
                    v,
                    format!(
                        "control_allow role `{}` must be \"read\" or \"operate\"",
                        v.get_ref()
                    ),
                ),
            }
        }
    }
    let d = Limits::default();
    let size = |cx: &mut Ctx, v: &Option<S<String>>, key: &str, default: u64| match v {
        None => default,
        Some(s) => match parse_size(s.get_ref()) {
            Ok(n) if n > 0 => n,
            Ok(_) => {
                cx.err(s, format!("`{key}` must be more than zero"));
                default
            }
            Err(e) => {
                cx.err(s, format!("`{key}`: {e}"));
                default
            }
        },
    };
    let max_header_bytes = size(
        cx,
        &p.max_header_bytes,
        "max_header_bytes",
        d.max_header_bytes as u64,
    );
    if max_header_bytes < 8192 {
        if let Some(s) = &p.max_header_bytes {
            cx.err(s, "`max_header_bytes` must be at least 8KiB");
        }
    }
    let limits = Limits {
        header_timeout: cx.duration(&p.header_timeout, "header_timeout", d.header_timeout),
        idle_timeout: cx.duration(&p.idle_timeout, "idle_timeout", d.idle_timeout),
        handshake_timeout: cx.duration(
            &p.handshake_timeout,
            "handshake_timeout",
            d.handshake_timeout,
        ),
        upstream_connect_timeout: cx.duration(
            &p.upstream_connect_timeout,
            "upstream_connect_timeout",
            d.upstream_connect_timeout,
        ),
        upstream_timeout: cx.duration(&p.upstream_timeout, "upstream_timeout", d.upstream_timeout),
        shutdown_timeout: cx.duration(&p.shutdown_timeout, "shutdown_timeout", d.shutdown_timeout),
        read_only_drain_timeout: cx.duration(
            &p.read_only_drain_timeout,
            "read_only_drain_timeout",
            d.read_only_drain_timeout,
        ),
        max_header_bytes: max_header_bytes.max(8192) as usize,
        max_body_bytes: size(cx, &p.max_body_bytes, "max_body_bytes", d.max_body_bytes),
        max_connections: cx.count(
            &p.max_connections,
            "max_connections",
            1,
            10_000_000,
            d.max_connections as i64,
        ) as usize,
    };
    ProxyConfig {
        http,
        https,
        certs,
        control,
        control_allow,
        state,
        metrics,
        access_log,
        access_log_format,
        audit_log,
        limits,
        trusted_proxies: networks(cx, &p.trusted_proxies, "trusted_proxies"),
        proxy_protocol: proxy_protocol(cx, p),
    }
}

/// `proxy_protocol = ["http", "https"]`: listeners that read a PROXY header from trusted peers.
fn proxy_protocol(cx: &mut Ctx, p: &raw::RawProxy) -> ProxyProtocol {
    let mut pp = ProxyProtocol::default();
    for l in &p.proxy_protocol {
        match l.get_ref().as_str() {
            "http" => pp.http = true,
            "https" => pp.https = true,
            other => cx.err(
                l,
                format!(
                    "proxy_protocol entry `{other}` is not a listener; use \"http\" or \"https\""
                ),
            ),
        }
    }
    if (pp.http || pp.https) && p.trusted_proxies.is_empty() {
        if let Some(first) = p.proxy_protocol.first() {
            cx.err(first, "proxy_protocol is read only from `trusted_proxies`, and that list is empty; add the balancers' addresses, e.g. trusted_proxies = [\"10.0.0.0/8\"]");
        }
    }
    pp
}
