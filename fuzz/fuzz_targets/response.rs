//! Backend bytes → the fast path's response reading (`h1::parse_response` after a GET and after
//! a HEAD, interim responses skipped as `upstream::raw` does), its framing and relay
//! (`fast::relay`: `Framing::Length/Chunked/UntilClose/Empty`, `Chunked::feed`), and the head
//! the client gets (`h1::write_client_head`).
//!
//! Oracles:
//! 1. hyper's client reading the same bytes: the same final status, the same body, ending at
//!    the same byte (a body the fast path relays as complete is complete for hyper, with the
//!    same data; one it finds cut short is cut short for hyper too);
//! 2. hyper's client reading what the client gets (our head + the relayed bytes): the same
//!    status and body, ending exactly at the end of what was relayed; the head parses (httparse)
//!    as one head with no hop-by-hop header, never both Transfer-Encoding and Content-Length
//!    (RFC 9112 6.3), a Date.

#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use switchyard::proxy::h1::{self, Chunked, Decoded, Framing, RespParsed, MAX_RESP_HEADERS};
use switchyard_fuzz::*;

fuzz_target!(|data: &[u8]| {
    check(data, &Method::GET);
    check(data, &Method::HEAD);
});

fn check(data: &[u8], method: &Method) {
    // `raw::send_on`: interim heads skipped, the final head parsed.
    let mut off = 0;
    let (client_head, framing, status, body_at) = loop {
        if off >= data.len() {
            return; // closed before a final head: 502
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESP_HEADERS];
        match h1::parse_response(&data[off..], &mut headers, method) {
            Ok(RespParsed::Partial) | Err(_) => return, // 502: hyper may read it (safe side)
            Ok(RespParsed::Interim(n)) => off += n,
            Ok(RespParsed::Head(h)) => {
                if off + h.len > MAX_HEAD {
                    return;
                }
                let mut out = Vec::new();
                write_client_head_checked(&mut out, &h);
                break (out, h.framing, h.status, off + h.len);
            }
        }
    };
    let body = &data[body_at..];
    // `fast::relay`: the bytes relayed, and whether the body ended cleanly.
    let (relayed, complete): (&[u8], bool) = match framing {
        Framing::Empty => (&[], true),
        Framing::Length(n) => {
            if (body.len() as u64) < n {
                (body, false)
            } else {
                (&body[..n as usize], true)
            }
        }
        Framing::Chunked => match Chunked::default().feed(body) {
            Ok((n, true)) => (&body[..n], true),
            Ok((n, false)) => (&body[..n], false),
            Err(_) => return, // the client's body is cut (never presented as complete)
        },
        Framing::UntilClose => (body, true),
    };
    // The data of the relayed body, as the hyper side would decode it (`RawBody`).
    let data_of = |relayed: &[u8]| -> Vec<u8> {
        if framing != Framing::Chunked {
            return relayed.to_vec();
        }
        let mut buf = BytesMut::from(relayed);
        let (mut c, mut t, mut out) = (Chunked::default(), Vec::new(), Vec::new());
        loop {
            match c.decode(&mut buf, &mut t) {
                Ok(Decoded::Data(d)) => out.extend_from_slice(&d),
                Ok(Decoded::End(_)) => return out,
                other => panic!("decode disagrees with feed: {:?}", other.is_ok()),
            }
        }
    };

    // Oracle 1: hyper reading what the backend sent.
    let hyper = hyper_client(data, method);
    let Some(hyper) = hyper else {
        panic!("the fast path took a response head hyper refuses ({framing:?})");
    };
    assert_eq!(hyper.status, status, "the final status");
    if !complete {
        assert_eq!(
            hyper.body, None,
            "a body the fast path finds cut short is whole for hyper"
        );
        return;
    }
    let want = data_of(relayed);
    assert_eq!(
        hyper.body.as_deref(),
        Some(want.as_slice()),
        "the body ({framing:?})"
    );
    if framing == Framing::Chunked {
        // hyper ends at the same byte: it needs none after, and every one before.
        let end = body_at + relayed.len();
        let at_end = hyper_client(&data[..end], method).and_then(|r| r.body);
        assert_eq!(
            at_end.as_deref(),
            Some(want.as_slice()),
            "hyper needs bytes after the end"
        );
        let short = hyper_client(&data[..end - 1], method).and_then(|r| r.body);
        assert_eq!(
            short, None,
            "hyper ends the chunked body before the fast path"
        );
    }

    // Oracle 2: hyper reading what the client gets.
    let mut to_client = client_head.clone();
    to_client.extend_from_slice(relayed);
    // The edge may add two lines (Date, Connection) to a backend's 100.
    let Some(seen) = hyper_client_with(&to_client, method, 102) else {
        panic!(
            "the client cannot read our head: {:?}",
            String::from_utf8_lossy(&client_head)
        );
    };
    assert_eq!(seen.status, status);
    assert_eq!(
        seen.body.as_deref(),
        Some(want.as_slice()),
        "the client's body"
    );
    assert_eq!(
        sorted(seen.trailers),
        sorted(hyper.trailers),
        "the client's trailers"
    );
    let delimited =
        matches!(framing, Framing::Chunked) || matches!(framing, Framing::Length(n) if n > 0);
    if delimited {
        let short =
            hyper_client_with(&to_client[..to_client.len() - 1], method, 102).and_then(|r| r.body);
        assert_eq!(short, None, "the client's body ends before what we relayed");
    }
}

/// `write_client_head`, and the head's own checks.
fn write_client_head_checked(out: &mut Vec<u8>, h: &h1::RespHead<'_, '_>) {
    h1::write_client_head(out, h, h.close);
    let Some((status, lines)) = httparse_response_lines(out) else {
        panic!(
            "our head does not parse as one head: {:?}",
            String::from_utf8_lossy(out)
        );
    };
    assert_eq!(status, h.status);
    let all = |n: &str| lines.iter().filter(|(k, _)| k == n).count();
    for hop in HOP_BY_HOP {
        match *hop {
            "transfer-encoding" => {}
            "connection" => {
                let ours = lines
                    .iter()
                    .filter(|(k, _)| k == "connection")
                    .all(|(_, v)| v == b"close");
                assert!(
                    ours && all("connection") == usize::from(h.close),
                    "Connection is ours"
                );
            }
            _ => assert_eq!(all(hop), 0, "hop-by-hop {hop} reached the client"),
        }
    }
    assert!(
        all("transfer-encoding") == 0 || all("content-length") == 0,
        "Transfer-Encoding and Content-Length both reach the client (RFC 9112 6.3)"
    );
    // RFC 9110 6.6.1: ours when the backend sent none (its own are relayed as they came).
    let backend_dates = h
        .headers
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case("date"))
        .count();
    assert_eq!(all("date"), backend_dates.max(1), "a Date");
    if h.framing == Framing::Chunked {
        assert!(all("transfer-encoding") > 0);
    }
}

fn sorted(mut v: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    v.sort();
    v
}
