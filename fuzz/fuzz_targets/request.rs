//! Client bytes → the fast path's request reading (`h1::parse_request`, as `fast::serve` loops
//! over a connection: pipelined requests, the hand-over to hyper) and its rewriting
//! (`h1::write_upstream_head`).
//!
//! Oracles:
//! 1. the strict RFC 9112 reading (`strict_request`): every head the fast path takes is a valid
//!    HTTP/1.1 request with the same method, target, Host, end of head and body length;
//! 2. hyper's server reading the whole stream must see exactly the requests the fast path
//!    forwards followed by what hyper reads of the rest after a hand-over (same method, target,
//!    header lines, body): any other split point is request smuggling;
//! 3. the messages the backend gets (rewritten head + body, back to back as on a pooled
//!    connection), read by httparse and by hyper's server: one request each, the same method,
//!    target, Host and body, no hop-by-hop header, the forwarding headers the edge's own.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::proxy::h1::{self, ReqParsed, MAX_REQ_HEADERS};
use switchyard::proxy::valid_host;
use switchyard_fuzz::*;

/// A request the fast path forwards.
#[derive(Debug)]
struct Fwd {
    method: String,
    target: String,
    host: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// The messages the backend gets: untrusted client, trusted proxy.
    upstream: Option<[Vec<u8>; 2]>,
}

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let opts = mix(data);
    let https = opts & 1 != 0;
    let read_only = opts & 2 != 0;
    let ip: &[u8] = if opts & 4 != 0 {
        b"2001:db8::7"
    } else {
        b"192.0.2.7"
    };

    // The fast path over the connection (`fast::serve`).
    let mut off = 0;
    let mut fwd: Vec<Fwd> = Vec::new();
    let mut handoff = None;
    while off < data.len() {
        let rest = &data[off..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQ_HEADERS];
        let r = match h1::parse_request(rest, &mut headers) {
            ReqParsed::Head(r) => r,
            ReqParsed::Partial | ReqParsed::Handoff => {
                handoff = Some(off);
                break;
            }
        };
        if r.len > MAX_HEAD || r.content_length > MAX_BODY {
            handoff = Some(off);
            break;
        }
        // Oracle 1: the strict reading.
        match strict_request(rest) {
            Ok(Some(s)) => {
                assert_eq!(s.method, r.method.as_str(), "method");
                assert_eq!(s.target, r.target, "target");
                assert_eq!(s.host, r.host, "Host");
                assert_eq!(s.len, r.len, "end of the head");
                assert_eq!(s.body, Some(r.content_length), "body length");
            }
            other => panic!("the fast path took a head the strict reading does not: {other:?}"),
        }
        let total = r.len + r.content_length as usize;
        if rest.len() < total {
            // The fast path waits for the body; the client closes: nothing is forwarded.
            break;
        }
        let body = rest[r.len..total].to_vec();
        // `request::decide` answers 400 to a Host that is not host[:port]: not forwarded.
        let upstream = valid_host(r.host).then(|| {
            [false, true].map(|trusted| {
                let mut out = Vec::new();
                let add = h1::Added {
                    ip,
                    https,
                    trusted,
                    read_only,
                };
                h1::write_upstream_head(&mut out, &r, &add);
                out.extend_from_slice(&body);
                out
            })
        });
        fwd.push(Fwd {
            method: r.method.as_str().to_string(),
            target: r.target.to_string(),
            host: r.host.to_string(),
            headers: r
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect(),
            body,
            upstream,
        });
        off += total;
        if r.close {
            break;
        }
    }

    // Oracle 2: hyper alone reads the same requests as the fast path plus hyper after it.
    let mut expected: Vec<(String, String, Vec<(String, Vec<u8>)>, Vec<u8>)> = fwd
        .iter()
        .map(|f| {
            (
                f.method.clone(),
                f.target.clone(),
                sorted(f.headers.clone()),
                f.body.clone(),
            )
        })
        .collect();
    if let Some(at) = handoff {
        expected.extend(complete(hyper_server(&data[at..])));
    }
    let actual = complete(hyper_server(data));
    assert_eq!(
        expected, actual,
        "the fast path (then hyper from byte {handoff:?}) and hyper alone split the stream differently"
    );

    // Oracle 3: what the backend gets.
    for (i, trusted) in [false, true].into_iter().enumerate() {
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for f in &fwd {
            let Some(up) = &f.upstream else { continue };
            let msg = &up[i];
            let head_len = msg.len() - f.body.len();
            let Some((m, t, lines)) = httparse_request_lines(&msg[..head_len]) else {
                panic!(
                    "the rewritten head does not parse as one head: {:?}",
                    String::from_utf8_lossy(msg)
                );
            };
            assert_eq!(
                (m.as_str(), t.as_str()),
                (f.method.as_str(), f.target.as_str())
            );
            check_upstream_lines(f, &lines, trusted, https, read_only, ip);
            stream.extend_from_slice(msg);
            sent.push(f);
        }
        if sent.is_empty() {
            continue;
        }
        let got = hyper_server(&stream);
        assert_eq!(
            got.len(),
            sent.len(),
            "the backend reads another number of requests: {got:?}"
        );
        for (g, f) in got.iter().zip(&sent) {
            assert_eq!(g.method, f.method);
            assert_eq!(g.target, f.target);
            assert_eq!(g.all("host"), [f.host.as_bytes()], "the backend's Host");
            assert_eq!(
                g.body.as_deref(),
                Some(f.body.as_slice()),
                "the backend's body"
            );
            check_upstream_lines(f, &g.headers, trusted, https, read_only, ip);
        }
    }
}

/// The header lines the backend gets.
fn check_upstream_lines(
    f: &Fwd,
    lines: &[(String, Vec<u8>)],
    trusted: bool,
    https: bool,
    read_only: bool,
    ip: &[u8],
) {
    let all = |n: &str| -> Vec<&[u8]> {
        lines
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    for h in HOP_BY_HOP {
        assert!(all(h).is_empty(), "hop-by-hop {h} reached the backend");
    }
    assert_eq!(all("host"), [f.host.as_bytes()]);
    let cl: Vec<&[u8]> = f
        .headers
        .iter()
        .filter(|(k, _)| k == "content-length")
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(
        all("content-length"),
        cl,
        "Content-Length as the client sent it"
    );
    for n in [
        "x-forwarded-for",
        "forwarded",
        "x-forwarded-proto",
        "x-forwarded-host",
    ] {
        assert_eq!(all(n).len(), 1, "one {n} line");
    }
    let xff = all("x-forwarded-for")[0];
    assert!(
        xff.ends_with(ip),
        "x-forwarded-for ends with the client's address"
    );
    let fwd = all("forwarded")[0];
    let proto: &[u8] = if https { b"https" } else { b"http" };
    if !trusted {
        assert_eq!(xff, ip, "an untrusted client's x-forwarded-for is replaced");
        assert_eq!(all("x-forwarded-proto")[0], proto);
        assert_eq!(all("x-forwarded-host")[0], f.host.as_bytes());
        assert!(fwd.starts_with(b"for="), "{fwd:?}");
        assert_eq!(commas_outside_quotes(fwd), 0, "one Forwarded element");
    }
    // This hop's element is the last one: `...;host=HOST`, HOST quoted unless a token.
    let quoted = format!(";host=\"{}\"", f.host);
    let bare = format!(";host={}", f.host);
    let token = f
        .host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    assert!(
        if token {
            fwd.ends_with(bare.as_bytes())
        } else {
            fwd.ends_with(quoted.as_bytes())
        },
        "Forwarded host= {:?}",
        String::from_utf8_lossy(fwd)
    );
    let ro = all("x-read-only");
    if read_only {
        assert_eq!(ro, [b"1"]);
    } else {
        assert!(ro.is_empty(), "x-read-only only from the edge");
    }
}

/// List separators of a header value, not counting those inside quoted strings (RFC 9110 5.6.4).
fn commas_outside_quotes(v: &[u8]) -> usize {
    let (mut n, mut quoted, mut escaped) = (0, false, false);
    for &b in v {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => n += 1,
            _ => {}
        }
    }
    n
}

fn sorted(mut v: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    v.sort();
    v
}

/// The requests hyper read whole (a last one whose body the client never finished is left out:
/// the fast path forwards nothing of it, and hyper's backend request would fail).
fn complete(v: Vec<SeenReq>) -> Vec<(String, String, Vec<(String, Vec<u8>)>, Vec<u8>)> {
    v.into_iter()
        .filter_map(|r| Some((r.method, r.target, sorted(r.headers), r.body?)))
        .collect()
}
