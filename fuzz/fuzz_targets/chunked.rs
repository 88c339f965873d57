//! Bytes after a `Transfer-Encoding: chunked` head → `Chunked::feed` (the fast path's relay:
//! where the body ends) and `Chunked::decode` (the hyper side's raw body: data and trailers).
//!
//! Oracles:
//! 1. each against itself: feeding all at once, byte by byte and in pieces (split points from a
//!    hash of the input) ends at the same byte with the same data count; `decode` all at once
//!    and byte by byte ends there too, with data of that length;
//! 2. hyper's chunked decoding (its client reading the body): where the fast path's body ends,
//!    hyper's ends (it completes on the bytes up to there, with the same data and trailers, and
//!    not on one byte fewer); where the fast path still waits for more, hyper has not ended;
//! 3. a strict reading (`strict_chunked`: CRLF only, trailer lines are field lines): a body the
//!    fast path relays ends there too, so a client that takes a bare LF as a line end (RFC 9112
//!    2.2 allows it) cannot end it elsewhere and read the rest as another response.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard::proxy::h1::{Chunked, Decoded};
use switchyard_fuzz::*;

#[derive(Debug, PartialEq, Eq)]
enum Fed {
    /// Ended after this many bytes, with this many data bytes.
    End(usize, u64),
    /// All consumed, not ended.
    More(u64),
    Bad,
}

fn feed_in(data: &[u8], cuts: impl Iterator<Item = usize>) -> Fed {
    let mut c = Chunked::default();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.filter(|&x| x > 0 && x < data.len()).collect();
    ends.sort_unstable();
    ends.dedup();
    ends.push(data.len());
    for end in ends {
        match c.feed(&data[at..end]) {
            Ok((n, true)) => return Fed::End(at + n, c.data),
            Ok((n, false)) => {
                assert_eq!(n, end - at, "feed consumed part of a piece without ending")
            }
            Err(_) => return Fed::Bad,
        }
        at = end;
    }
    Fed::More(c.data)
}

#[derive(Debug, PartialEq, Eq)]
enum Dec {
    End(usize, Vec<u8>, Vec<u8>),
    More(Vec<u8>),
    Bad,
}

fn decode_in(data: &[u8], step: usize) -> Dec {
    let mut c = Chunked::default();
    let (mut buf, mut t, mut out) = (BytesMut::new(), Vec::new(), Vec::new());
    let mut at = 0;
    loop {
        match c.decode(&mut buf, &mut t) {
            Ok(Decoded::Data(d)) => out.extend_from_slice(&d),
            Ok(Decoded::End(tr)) => return Dec::End(at - buf.len(), out, tr),
            Ok(Decoded::More) if at < data.len() => {
                let n = step.min(data.len() - at);
                buf.extend_from_slice(&data[at..at + n]);
                at += n;
            }
            Ok(Decoded::More) => return Dec::More(out),
            Err(_) => return Dec::Bad,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Oracle 1.
    let whole = feed_in(data, std::iter::empty());
    let bytewise = feed_in(data, 1..data.len());
    let h = mix(data);
    let pieces = feed_in(
        data,
        (0..8).map(|i| ((h >> (i * 8)) as usize) % (data.len() + 1)),
    );
    assert_eq!(whole, bytewise, "whole vs byte by byte");
    assert_eq!(whole, pieces, "whole vs in pieces");
    let dec = decode_in(data, data.len().max(1));
    let dec1 = decode_in(data, 1);
    match (&whole, &dec) {
        (Fed::End(n, d), Dec::End(m, out, _)) => {
            assert_eq!((n, *d), (m, out.len() as u64), "decode ends elsewhere");
            assert_eq!(dec, dec1, "decode whole vs byte by byte");
        }
        (Fed::More(d), Dec::More(out)) => assert_eq!(*d, out.len() as u64),
        (Fed::Bad, Dec::Bad) => {}
        // decode's own limit: 16 KiB of trailers.
        (Fed::End(..) | Fed::More(_), Dec::Bad) if data.len() > 16 * 1024 => {}
        _ => panic!("feed {whole:?} vs decode {dec:?}"),
    }

    // Oracle 2.
    match &whole {
        Fed::End(n, _) => {
            let Dec::End(_, out, trailers) = dec else {
                unreachable!()
            };
            let Some((hdata, htrailers)) = hyper_chunked(&data[..*n]) else {
                panic!("hyper does not end the body where the fast path does ({n})");
            };
            assert_eq!(hdata, out, "data");
            assert_eq!(sorted(htrailers), trailer_lines(&trailers), "trailers");
            assert_eq!(
                hyper_chunked(&data[..n - 1]),
                None,
                "hyper ends the body earlier"
            );
            // The strict reading (CRLF only: where a bare-LF-tolerant client ends it too).
            match strict_chunked(data) {
                Ok(Some((end, sdata, strailers))) => {
                    assert_eq!(
                        (end, &sdata),
                        (*n, &hdata),
                        "the strict reading ends elsewhere"
                    );
                    assert_eq!(
                        sorted(strailers),
                        trailer_lines(&trailers),
                        "strict trailers"
                    );
                }
                other => panic!("the fast path took a body the strict reading does not: {other:?}"),
            }
        }
        Fed::More(_) => {
            assert_eq!(
                hyper_chunked(data),
                None,
                "hyper ended a body the fast path goes on reading"
            );
        }
        Fed::Bad => {}
    }
});

fn sorted(mut v: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    v.sort();
    v
}

/// The trailer section `decode` kept, as header lines (httparse, as `raw::trailer_map` reads it).
fn trailer_lines(t: &[u8]) -> Vec<(String, Vec<u8>)> {
    if t.is_empty() {
        return Vec::new();
    }
    let mut section = t.to_vec();
    section.extend_from_slice(b"\r\n");
    let mut h = vec![httparse::EMPTY_HEADER; 128];
    match httparse::parse_headers(&section, &mut h) {
        Ok(httparse::Status::Complete((_, hs))) => sorted(
            hs.iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect(),
        ),
        other => panic!("decode kept a trailer section httparse refuses: {other:?} {t:?}"),
    }
}
