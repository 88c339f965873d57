//! Header rewriting on hyper's `HeaderMap`, on the way in and out: hop-by-hop headers (and those
//! named in Connection) stripped; the forwarding headers (`X-Forwarded-For`, `Forwarded`,
//! `X-Forwarded-Proto`, `-Host`) the edge's own, or a trusted proxy's extended.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `Trailer` is not here: it is end-to-end (RFC 9110 6.6.2), and hyper only encodes the trailer
/// fields a message announces in it, so stripping it would silently drop every trailer.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_READ_ONLY: HeaderName = HeaderName::from_static("x-read-only");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers. When `keep_upgrade`, `Connection: upgrade` and `Upgrade` are kept
/// (a WebSocket handshake must reach the backend intact).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them, or only `Connection: keep-alive`: one pass over the names
    // (comparisons of known names are cheap) instead of a hash lookup per hop-by-hop name.
    let mut connection = false;
    let mut other = false;
    for n in h.keys() {
        if n == header::CONNECTION {
            connection = true;
        } else if n == header::UPGRADE || HOP_BY_HOP[1..].contains(n) {
            other = true;
            break;
        }
    }
    if !other && !keep_upgrade {
        if connection {
            // Only what Connection names (other than keep-alive/close) needs the full treatment.
            let plain = h.get_all(header::CONNECTION).iter().all(|v| {
                v.as_bytes().split(|&b| b == b',').all(|t| {
                    let t = t.trim_ascii();
                    t.is_empty()
                        || t.eq_ignore_ascii_case(b"keep-alive")
                        || t.eq_ignore_ascii_case(b"close")
                })
            });
            if !plain {
                return strip_slow(h, keep_upgrade);
            }
            h.remove(header::CONNECTION);
        }
        return;
    }
    strip_slow(h, keep_upgrade)
}

fn strip_slow(h: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1), in every Connection line,
    // not only the first. Rare, so the Vec only allocates when Connection lists something other
    // than keep-alive/close/upgrade.
    let mut named: Vec<HeaderName> = Vec::new();
    for conn in h.get_all(header::CONNECTION) {
        let Ok(s) = conn.to_str() else { continue };
        named.extend(
            s.split(',')
                .map(str::trim)
                .filter(|t| {
                    !t.is_empty()
                        && !t.eq_ignore_ascii_case("keep-alive")
                        && !t.eq_ignore_ascii_case("close")
                        && !t.eq_ignore_ascii_case("upgrade")
                })
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()),
        );
    }
    for n in named {
        h.remove(n);
    }
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    for n in &HOP_BY_HOP {
        if keep_upgrade && n == header::CONNECTION {
            continue;
        }
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// The client's address as an `X-Forwarded-For` value (IPv4-mapped IPv6 shown as IPv4).
pub fn ip_value(client: IpAddr) -> HeaderValue {
    let ip = crate::config::canonical_ip(client);
    HeaderValue::try_from(ip.to_string()).expect("an IP address is a header value")
}

/// Sets the forwarding headers of a request from the client whose address is `ip` (see
/// [`ip_value`]) for `host`. From a `trusted` proxy, its `X-Forwarded-For` and `Forwarded` chains
/// are extended with this hop and its `X-Forwarded-Proto` / `-Host` kept; from anyone else all
/// four are replaced by the edge's own. Without a chain to extend, `ip` is used as is (no
/// allocation).
pub fn add_forwarded(
    h: &mut HeaderMap,
    ip: &HeaderValue,
    https: bool,
    host: &HeaderValue,
    trusted: bool,
) {
    let xff = match trusted {
        true => extended(h, &X_FORWARDED_FOR, ip.as_bytes()),
        false => None,
    };
    h.insert(&X_FORWARDED_FOR, xff.unwrap_or_else(|| ip.clone()));
    let mut element = Vec::with_capacity(64);
    super::h1::forwarded_element(&mut element, ip.as_bytes(), https, host.as_bytes());
    let forwarded = match trusted {
        true => extended(h, &FORWARDED, &element),
        false => None,
    };
    if let Some(v) =
        forwarded.or_else(|| HeaderValue::from_maybe_shared(bytes::Bytes::from(element)).ok())
    {
        h.insert(&FORWARDED, v);
    }
    if !(trusted && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
    }
    if !(trusted && h.contains_key(&X_FORWARDED_HOST)) {
        h.insert(&X_FORWARDED_HOST, host.clone());
    }
}

/// Every non-empty `name` line (a header may legally be split over several), in order, then
/// `last`; None when there were none.
fn extended(h: &HeaderMap, name: &HeaderName, last: &[u8]) -> Option<HeaderValue> {
    let mut chain: Option<Vec<u8>> = None;
    for v in h.get_all(name) {
        let prev = v.as_bytes().trim_ascii();
        if !prev.is_empty() && v.to_str().is_ok() {
            let c = chain.get_or_insert_with(|| Vec::with_capacity(64));
            c.extend_from_slice(prev);
            c.extend_from_slice(b", ");
        }
    }
    let mut c = chain?;
    c.extend_from_slice(last);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(c)).ok()
}

/// True when the request asks for a protocol upgrade (WebSocket over HTTP/1.1).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, gzip"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-keep"], "1");
    }

    #[test]
    fn fast_path_only_connection_keep_alive() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("Close"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.len(), 1);
        // a second Connection line naming a header
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        // nothing to strip
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        // upgrade kept
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(&FORWARDED, HeaderValue::from_static("for=10.0.0.1"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("front.test"));
        let ip = ip_value("::ffff:192.0.2.7".parse().unwrap());
        let host = HeaderValue::from_static("w.test");
        let mut trusted = h.clone();
        add_forwarded(&mut trusted, &ip, true, &host, true);
        assert_eq!(trusted[&X_FORWARDED_FOR], "10.0.0.1, 192.0.2.7");
        assert_eq!(
            trusted[&FORWARDED],
            "for=10.0.0.1, for=192.0.2.7;proto=https;host=w.test"
        );
        assert_eq!(trusted[&X_FORWARDED_PROTO], "https");
        assert_eq!(trusted[&X_FORWARDED_HOST], "front.test");
        add_forwarded(&mut h, &ip, true, &host, false);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&FORWARDED], "for=192.0.2.7;proto=https;host=w.test");
        assert_eq!(h[&X_FORWARDED_HOST], "w.test");
    }
}
