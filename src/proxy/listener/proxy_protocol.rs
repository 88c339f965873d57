//! The PROXY protocol (HAProxy's, v1 text and v2 binary) on a listener behind an L4 balancer: the
//! balancer opens each connection with a header naming the client, which becomes the connection's
//! peer (for `X-Forwarded-For`, `Forwarded`, the allow lists, the access log). Read only from peers
//! in `proxy.trusted_proxies`, who must then send it; anyone else's connection is taken as it
//! comes (a PROXY line from them is just a bad request). The header is consumed exactly (peeked,
//! then read to its end), so the TLS handshake or the first request starts right after it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes with its CRLF.
const V1_MAX: usize = 107;
/// TLVs beyond this are refused (a balancer sends a few dozen bytes).
const V2_MAX: usize = 4096;

/// What the header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// The client's address.
    Client(SocketAddr),
    /// v1 UNKNOWN, v2 LOCAL or an unsupported family: the connection speaks for itself.
    Local,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Needs more bytes.
    More,
    /// A v1 header of `len` bytes.
    V1(usize, Header),
    /// A v2 header: 16 bytes, then `len` more.
    V2(usize),
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("PROXY protocol: {msg}"))
}

/// Reads the header from a trusted peer's connection (the caller bounds it in time).
pub(crate) async fn read(stream: &mut TcpStream) -> io::Result<Header> {
    let mut buf = [0u8; V1_MAX];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(bad("the connection closed before the header"));
        }
        match parse_start(&buf[..n])? {
            Parsed::More => {
                // Split across packets (rare): wait a little for the rest.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Parsed::V1(len, h) => {
                let mut line = vec![0u8; len];
                stream.read_exact(&mut line).await?;
                return Ok(h);
            }
            Parsed::V2(len) => {
                let mut head = [0u8; 16];
                stream.read_exact(&mut head).await?;
                let mut rest = vec![0u8; len];
                stream.read_exact(&mut rest).await?;
                return parse_v2(&head, &rest);
            }
        }
    }
}

fn parse_start(b: &[u8]) -> io::Result<Parsed> {
    if b.len() >= 12 && &b[..12] == V2_SIG || V2_SIG.starts_with(b) {
        if b.len() < 16 {
            return Ok(Parsed::More);
        }
        if b[12] >> 4 != 2 {
            return Err(bad("unsupported v2 version"));
        }
        let len = u16::from_be_bytes([b[14], b[15]]) as usize;
        if len > V2_MAX {
            return Err(bad("v2 header too long"));
        }
        return Ok(Parsed::V2(len));
    }
    if !b"PROXY ".starts_with(&b[..b.len().min(6)]) {
        return Err(bad("no header (a trusted proxy must send one)"));
    }
    match b.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Parsed::V1(i + 2, parse_v1(&b[..i])?)),
        None if b.len() >= V1_MAX => Err(bad("v1 line too long")),
        None => Ok(Parsed::More),
    }
}

/// `PROXY TCP4 SRC DST SPORT DPORT` (without the CRLF).
fn parse_v1(line: &[u8]) -> io::Result<Header> {
    let text = std::str::from_utf8(line).map_err(|_| bad("v1 line is not ASCII"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Header::Local),
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| bad("bad v1 source address"))?;
            if (*fam == "TCP4") != ip.is_ipv4() {
                return Err(bad("v1 address does not match its family"));
            }
            let port: u16 = sport.parse().map_err(|_| bad("bad v1 source port"))?;
            Ok(Header::Client(SocketAddr::new(ip, port)))
        }
        _ => Err(bad("malformed v1 line")),
    }
}

fn parse_v2(head: &[u8; 16], rest: &[u8]) -> io::Result<Header> {
    match head[12] & 0x0f {
        0 => return Ok(Header::Local),
        1 => {}
        _ => return Err(bad("unknown v2 command")),
    }
    match head[13] {
        0x11 | 0x12 if rest.len() >= 12 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            let port = u16::from_be_bytes([rest[8], rest[9]]);
            Ok(Header::Client(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        0x21 | 0x22 if rest.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&rest[..16]);
            let port = u16::from_be_bytes([rest[32], rest[33]]);
            Ok(Header::Client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                port,
            )))
        }
        0x11 | 0x12 | 0x21 | 0x22 => Err(bad("v2 address block too short")),
        _ => Ok(Header::Local),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let l = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n";
        match parse_start(l).unwrap() {
            Parsed::V1(len, Header::Client(a)) => {
                assert_eq!(len, 40);
                assert_eq!(a, "192.0.2.7:5555".parse().unwrap());
            }
            p => panic!("{p:?}"),
        }
        let l6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(
            parse_start(l6).unwrap(),
            Parsed::V1(_, Header::Client(_))
        ));
        assert!(matches!(
            parse_start(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::V1(15, Header::Local)
        ));
        assert_eq!(parse_start(b"PROXY TCP4 1.2").unwrap(), Parsed::More);
        assert_eq!(parse_start(b"PRO").unwrap(), Parsed::More);
        assert!(parse_start(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse_start(b"PROXY TCP4 ::1 ::1 1 2\r\n").is_err());
        assert!(parse_start(b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n").is_err());
        assert!(parse_start(&[b'P'; 200]).is_err());
    }

    #[test]
    fn v2() {
        let mut h = [0u8; 16];
        h[..12].copy_from_slice(V2_SIG);
        h[12] = 0x21;
        h[13] = 0x11;
        h[14..16].copy_from_slice(&12u16.to_be_bytes());
        assert_eq!(parse_start(&h).unwrap(), Parsed::V2(12));
        assert_eq!(parse_start(&h[..10]).unwrap(), Parsed::More);
        let rest = [198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 1, 187];
        assert_eq!(
            parse_v2(&h, &rest).unwrap(),
            Header::Client("198.51.100.9:8080".parse().unwrap())
        );
        h[12] = 0x20;
        assert_eq!(parse_v2(&h, &rest).unwrap(), Header::Local);
        h[12] = 0x21;
        assert!(parse_v2(&h, &rest[..4]).is_err());
        h[12] = 0x11;
        assert!(parse_start(&h).is_err());
    }
}
