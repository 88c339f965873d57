//! Chunked bodies (RFC 9112 7.1): followed byte by byte to find where they end while the bytes
//! pass unchanged (the fast path), or decoded into data and trailers (for hyper's side).

/// Follows a chunked body through (the bytes pass unchanged) to find where it ends.
///
/// The bytes are relayed as they came, so only a framing every reader ends at the same byte is
/// taken: CRLF line ends only, `BWS` after the size only before `;` or the CRLF, and trailer
/// lines that are field lines (`name: value`, no obs-fold, no control character, at most
/// [`MAX_TRAILERS`]). Anything else is a broken body.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    size: u64,
    /// Hex digits of the current size; trailer lines in the trailer section.
    digits: u8,
    /// Data bytes seen so far, without the framing (what the access log and metrics count).
    pub data: u64,
}

/// Trailer lines taken (hyper's client takes as many as header lines, 100).
pub const MAX_TRAILERS: u8 = 100;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    /// Whitespace after the size: only more of it, `;` or CR may follow.
    SizeLws,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line, or the CR of the blank line that ends the body.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// The token characters of RFC 9110 5.6.2 (a trailer field's name).
static TCHAR: [bool; 256] = super::byte_table(b"!#$%&'*+-.^_`|~");

/// A byte of a field value (RFC 9110 5.5): HTAB, SP, VCHAR, obs-text.
fn field_byte(c: u8) -> bool {
    c == b'\t' || (c >= 0x20 && c != 0x7f)
}

/// The chunked framing is broken.
#[derive(Debug)]
pub struct BadChunk;

impl Chunked {
    /// Consumes `b`; returns how many of its bytes belong to the body, and whether it ended.
    pub fn feed(&mut self, b: &[u8]) -> Result<(usize, bool), BadChunk> {
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match self.state {
                State::Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(BadChunk);
                        }
                        let d = (c as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    b' ' | b'\t' if self.digits > 0 => self.state = State::SizeLws,
                    b';' if self.digits > 0 => self.state = State::Ext,
                    b'\r' if self.digits > 0 => self.state = State::SizeLf,
                    _ => return Err(BadChunk),
                },
                State::SizeLws => match c {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Ext,
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(BadChunk),
                },
                State::Ext => match c {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(BadChunk),
                    _ => {}
                },
                State::SizeLf => {
                    if c != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = if self.size == 0 {
                        self.digits = 0;
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let n = (self.size.min((b.len() - i) as u64)) as usize;
                    self.size -= n as u64;
                    self.data += n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr if c == b'\r' => self.state = State::DataLf,
                State::DataLf if c == b'\n' => {
                    self.state = State::Size;
                    self.digits = 0;
                }
                State::DataCr | State::DataLf => return Err(BadChunk),
                State::TrailerStart => match c {
                    b'\r' => self.state = State::EndLf,
                    _ if TCHAR[c as usize] && self.digits < MAX_TRAILERS => {
                        self.digits += 1;
                        self.state = State::TrailerName;
                    }
                    // A bare LF, obs-fold, anything not a field name, or too many lines.
                    _ => return Err(BadChunk),
                },
                State::TrailerName => match c {
                    b':' => self.state = State::TrailerValue,
                    _ if TCHAR[c as usize] => {}
                    _ => return Err(BadChunk),
                },
                State::TrailerValue => match c {
                    b'\r' => self.state = State::TrailerLf,
                    _ if field_byte(c) => {}
                    _ => return Err(BadChunk),
                },
                State::TrailerLf if c == b'\n' => self.state = State::TrailerStart,
                State::TrailerLf => return Err(BadChunk),
                State::EndLf if c == b'\n' => {
                    self.state = State::Done;
                    return Ok((i + 1, true));
                }
                State::EndLf => return Err(BadChunk),
                State::Done => return Ok((i, true)),
            }
            i += 1;
        }
        Ok((i, self.state == State::Done))
    }
}

/// One step of decoding a chunked body (for clients that do not speak HTTP/1.1 framing).
pub enum Decoded {
    /// More bytes are needed.
    More,
    Data(bytes::Bytes),
    /// The body ended; the trailer section (lines with their CRLFs), if any.
    End(Vec<u8>),
}

impl Chunked {
    /// Takes the next piece of the body out of `buf`; trailer lines gather in `trailers`.
    pub fn decode(
        &mut self,
        buf: &mut bytes::BytesMut,
        trailers: &mut Vec<u8>,
    ) -> Result<Decoded, BadChunk> {
        use bytes::Buf;
        loop {
            if self.state == State::Done {
                return Ok(Decoded::End(std::mem::take(trailers)));
            }
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            if self.state == State::Data {
                let n = self.size.min(buf.len() as u64) as usize;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            // Framing: a byte at a time (a few per chunk).
            let in_trailer = match self.state {
                State::TrailerStart => buf[0] != b'\r',
                State::TrailerName | State::TrailerValue | State::TrailerLf => true,
                _ => false,
            };
            if in_trailer {
                if trailers.len() >= 16 * 1024 {
                    return Err(BadChunk);
                }
                trailers.push(buf[0]);
            }
            self.feed(&buf[..1])?;
            buf.advance(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_ends_where_the_body_ends() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        // whole, and one byte at a time
        let mut c = Chunked::default();
        assert_eq!(c.feed(body).unwrap(), (body.len() - 4, true));
        assert_eq!(c.data, 21, "data bytes, without the framing");
        let mut c = Chunked::default();
        let mut n = 0;
        for (i, b) in body.iter().enumerate() {
            let (used, end) = c.feed(std::slice::from_ref(b)).unwrap();
            n += used;
            if end {
                assert_eq!(i + 1, body.len() - 4);
                break;
            }
        }
        assert_eq!(n, body.len() - 4);
        assert_eq!(c.data, 21);
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0\r\n\r\n").unwrap(), (5, true));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(Chunked::default().feed(bad).is_err(), "{bad:?}");
        }
    }

    /// The end of a body, all at once and byte by byte (they must agree).
    fn end(body: &[u8]) -> Option<usize> {
        let whole = Chunked::default()
            .feed(body)
            .ok()
            .filter(|r| r.1)
            .map(|r| r.0);
        let mut c = Chunked::default();
        let mut bytewise = None;
        for (i, b) in body.iter().enumerate() {
            match c.feed(std::slice::from_ref(b)) {
                Ok((_, true)) => {
                    bytewise = Some(i + 1);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert_eq!(whole, bytewise, "{body:?}");
        whole
    }

    /// Fuzzing (issue 16, `fuzz/` target `chunked`): framing the fast path relayed (and the
    /// hyper side decoded) although hyper refuses it or a client may end it elsewhere.
    #[test]
    fn fuzz_framing_every_reader_ends_at_the_same_byte() {
        for bad in [
            // Junk after the size (hyper: "invalid chunk size linear white space").
            &b"5 xyz\r\nhello\r\n0\r\n\r\n"[..],
            // A bare LF ending the trailer section or inside a trailer line: hyper reads on to
            // the next CRLF CRLF, a client taking LF as a line end (RFC 9112 2.2) ends the body
            // there and reads the rest as the next response.
            b"0\r\n\nHTTP/1.1 200 OK\r\nX-Injected: 1\r\n\r\n",
            b"0\r\nx: 1\n\nHTTP/1.1 200 OK\r\n\r\n",
            // Trailer lines that are not field lines (hyper refuses them).
            b"0\r\nx: 1\r\n folded\r\n\r\n",
            b"0\r\nnot a field\r\n\r\n",
            b"0\r\nx : 1\r\n\r\n",
            b"0\r\nx: a\x00b\r\n\r\n",
            b"0\r\nx: a\rb\r\n\r\n",
        ] {
            assert_eq!(end(bad), None, "{:?}", String::from_utf8_lossy(bad));
            let mut buf = bytes::BytesMut::from(bad);
            let mut c = Chunked::default();
            let mut t = Vec::new();
            let decoded = loop {
                match c.decode(&mut buf, &mut t) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(Decoded::End(_)) => break true,
                    Ok(Decoded::More) | Err(_) => break false,
                }
            };
            assert!(!decoded, "decode: {:?}", String::from_utf8_lossy(bad));
        }
        for (ok, at) in [
            (&b"5 ;a=b\r\nhello\r\n0\t; x\r\n\r\n"[..], 24),
            (
                b"5  \r\nhello\r\n0\r\nx-a: 1\r\nx-b:\t2 \xff\r\nx-c:\r\n\r\nNEXT",
                41,
            ),
        ] {
            assert_eq!(end(ok), Some(at), "{:?}", String::from_utf8_lossy(ok));
        }
        // As many trailer lines as hyper takes (100), not one more.
        let trailers = |n: usize| {
            let mut b = b"0\r\n".to_vec();
            for _ in 0..n {
                b.extend_from_slice(b"x: 1\r\n");
            }
            b.extend_from_slice(b"\r\n");
            b
        };
        assert!(end(&trailers(MAX_TRAILERS as usize)).is_some());
        assert!(end(&trailers(MAX_TRAILERS as usize + 1)).is_none());
    }
}
