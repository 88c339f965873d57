//! HTTP/1.1 messages as bytes: the codec of the fast path and of the raw backend connections.
//! Parsing is httparse's; what is this project's own is which requests may be forwarded on bytes
//! at all, the heads as the other side gets them, and where a body ends.
//!
//! - `request.rs`: the client's request head (which ones the fast path takes), and the head the
//!   backend gets.
//! - `response.rs`: the backend's response head, its framing, and the head the client gets.
//! - `chunked.rs`: follows (or decodes) a chunked body to find where it ends.
//!
//! The rewriting rules are those of `headers.rs` (hyper's side): hop-by-hop headers and those
//! named in `Connection` stripped; `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto` and
//! `-Host` the edge's own (a trusted proxy's chains extended); `X-Read-Only` only from the edge.

mod chunked;
mod request;
mod response;

pub use chunked::{Chunked, Decoded};
pub use request::{
    forwarded_element, parse_request, write_h2_head, write_head, write_upstream_head, Added,
    ReqParsed, MAX_REQ_HEADERS,
};
pub use response::{
    http_date, parse_response, write_client_head, BadResponse, Framing, RespHead, RespParsed,
    MAX_RESP_HEADERS,
};

/// Room for `N` parsed header lines, left uninitialised: httparse writes the lines it finds and
/// hands back only those. (Filled with `EMPTY_HEADER` instead, the 100 slots of a response
/// would be 3.2 KB written for every request.)
pub type Slots<'b, const N: usize> = [std::mem::MaybeUninit<httparse::Header<'b>>; N];

/// Empty [`Slots`].
#[inline]
pub const fn slots<'b, const N: usize>() -> Slots<'b, N> {
    [const { std::mem::MaybeUninit::uninit() }; N]
}

/// `name` equals the lowercase `lower`, ignoring ASCII case.
fn is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

/// Each comma-separated token of a header value, trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A byte class as a table: ASCII letters and digits, and `extra`.
pub const fn byte_table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// Appends one header line.
pub fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
