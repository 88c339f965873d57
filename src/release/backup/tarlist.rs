//! A content listing of a tar stream, fed in chunks as they arrive (never the whole archive in
//! memory): for every entry its path relative to the archive's top entry, kind, mode, owner, size
//! and, for regular files, the sha256 of its content. Two listings are equal exactly when the
//! trees they describe are (modification times aside), which is how a restored volume is checked
//! against the archive it came from.
//!
//! The engine's archive API (`GET /containers/{id}/archive?path=P`) writes ustar headers, PAX
//! extended headers for long names and large values, and may write GNU long-name entries; all
//! three are read here. Anything else that is not a tar archive (a bad header checksum, a
//! truncated stream) is an error naming the offset.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Other(u8),
}

impl Kind {
    fn code(self) -> String {
        match self {
            Kind::File => "f".into(),
            Kind::Dir => "d".into(),
            Kind::Symlink => "l".into(),
            Kind::Hardlink => "h".into(),
            Kind::Other(c) => format!("t{}", c as char),
        }
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the top entry (the mount directory itself is `.`).
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// sha256 of the content (regular files), or the link target (links).
    pub content: String,
}

impl Entry {
    /// The entry as one line of the canonical listing.
    pub fn line(&self) -> String {
        // A symlink's own mode means nothing on Linux (the engine reports 0777).
        let mode = if self.kind == Kind::Symlink {
            0
        } else {
            self.mode
        };
        format!(
            "{}\t{}\t{:04o}\t{}:{}\t{}\t{}",
            self.path,
            self.kind.code(),
            mode,
            self.uid,
            self.gid,
            self.size,
            self.content
        )
    }
}

/// The listing of a whole archive.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The name of the archive's top entry (the basename of the path it was taken from).
    pub top: String,
    /// Sorted by path.
    pub entries: Vec<Entry>,
}

impl Listing {
    pub fn files(&self) -> u64 {
        self.entries.iter().filter(|e| e.kind == Kind::File).count() as u64
    }

    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .sum()
    }

    /// sha256 of the canonical listing (one [`Entry::line`] per entry, sorted by path).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.line().as_bytes());
            h.update(b"\n");
        }
        super::files::hex(&h.finalize())
    }

    /// What differs between `self` (expected) and `got`, at most `max` lines.
    pub fn diff(&self, got: &Listing, max: usize) -> Vec<String> {
        use std::collections::BTreeMap;
        let a: BTreeMap<&str, &Entry> = self.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let b: BTreeMap<&str, &Entry> = got.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let mut out = Vec::new();
        for (p, e) in &a {
            match b.get(p) {
                None => out.push(format!("missing: {p}")),
                Some(g) if g.line() != e.line() => out.push(format!(
                    "differs: {p} (want {}, got {})",
                    e.line(),
                    g.line()
                )),
                _ => {}
            }
        }
        for p in b.keys().filter(|p| !a.contains_key(*p)) {
            out.push(format!("not in the backup: {p}"));
        }
        out.truncate(max);
        out
    }
}

/// Why a stream is not a tar archive this reader understands.
#[derive(Debug, thiserror::Error)]
#[error("not a valid tar archive at byte {offset}: {why}")]
pub struct TarError {
    pub offset: u64,
    pub why: String,
}

enum Body {
    File(Sha256),
    Keep(Vec<u8>),
    Skip,
}

enum What {
    Entry(Entry),
    Pax,
    LongName,
    LongLink,
    Skip,
}

struct Data {
    what: What,
    body: Body,
    left: u64,
    pad: u64,
}

/// Feeds on a tar stream, chunk by chunk; [`Lister::finish`] gives the listing.
#[derive(Default)]
pub struct Lister {
    offset: u64,
    head: Vec<u8>,
    data: Option<Data>,
    pax: Vec<(String, String)>,
    long_name: Option<String>,
    long_link: Option<String>,
    zero_blocks: u32,
    entries: Vec<Entry>,
    top: Option<String>,
}

const LIMIT_META: u64 = 1 << 20;

impl Lister {
    pub fn feed(&mut self, mut buf: &[u8]) -> Result<(), TarError> {
        while !buf.is_empty() {
            if self.zero_blocks >= 2 {
                // The end-of-archive marker was seen: the rest is padding.
                self.offset += buf.len() as u64;
                return Ok(());
            }
            if let Some(d) = &mut self.data {
                if d.left > 0 {
                    let n = (d.left.min(buf.len() as u64)) as usize;
                    match &mut d.body {
                        Body::File(h) => h.update(&buf[..n]),
                        Body::Keep(v) => v.extend_from_slice(&buf[..n]),
                        Body::Skip => {}
                    }
                    d.left -= n as u64;
                    buf = &buf[n..];
                    self.offset += n as u64;
                    continue;
                }
                if d.pad > 0 {
                    let n = (d.pad.min(buf.len() as u64)) as usize;
                    d.pad -= n as u64;
                    buf = &buf[n..];
                    self.offset += n as u64;
                    continue;
                }
                self.end_data()?;
                continue;
            }
            let n = (512 - self.head.len()).min(buf.len());
            self.head.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            self.offset += n as u64;
            if self.head.len() == 512 {
                let head = std::mem::take(&mut self.head);
                self.header(&head)?;
            }
        }
        if let Some(d) = &self.data {
            if d.left == 0 && d.pad == 0 {
                self.end_data()?;
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Listing, TarError> {
        if let Some(d) = &self.data {
            if d.left > 0 || d.pad > 0 {
                return Err(self.err("the archive ends inside an entry"));
            }
            self.end_data()?;
        }
        if !self.head.is_empty() {
            return Err(self.err("the archive ends inside a header"));
        }
        if self.zero_blocks == 0 && self.entries.is_empty() {
            return Err(self.err("empty stream"));
        }
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Listing {
            top: self.top.unwrap_or_default(),
            entries: self.entries,
        })
    }

    fn err(&self, why: impl Into<String>) -> TarError {
        TarError {
            offset: self.offset,
            why: why.into(),
        }
    }

    fn header(&mut self, h: &[u8]) -> Result<(), TarError> {
        if h.iter().all(|b| *b == 0) {
            self.zero_blocks += 1;
            return Ok(());
        }
        if self.zero_blocks > 0 {
            return Err(self.err("a header after an end-of-archive block"));
        }
        let stored = num(&h[148..156]).ok_or_else(|| self.err("bad header checksum field"))?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    *b as u64
                }
            })
            .sum();
        if sum != stored {
            return Err(self.err(format!(
                "header checksum {stored} does not match its bytes ({sum})"
            )));
        }
        let typ = h[156];
        let pax = std::mem::take(&mut self.pax);
        let pax_get = |k: &str| {
            pax.iter()
                .rev()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.clone())
        };
        let mut size = num(&h[124..136]).ok_or_else(|| self.err("bad size field"))?;
        if let Some(s) = pax_get("size").and_then(|s| s.parse().ok()) {
            size = s;
        }
        let pad = (512 - size % 512) % 512;
        let (what, body) = match typ {
            b'x' => (What::Pax, Body::Keep(Vec::new())),
            b'L' => (What::LongName, Body::Keep(Vec::new())),
            b'K' => (What::LongLink, Body::Keep(Vec::new())),
            b'g' => (What::Skip, Body::Skip),
            _ => {
                let name = match (self.long_name.take(), pax_get("path")) {
                    (_, Some(p)) => p,
                    (Some(p), None) => p,
                    (None, None) => {
                        let name = cstr(&h[0..100]);
                        let prefix = if &h[257..262] == b"ustar" {
                            cstr(&h[345..500])
                        } else {
                            String::new()
                        };
                        if prefix.is_empty() {
                            name
                        } else {
                            format!("{prefix}/{name}")
                        }
                    }
                };
                let link = match (self.long_link.take(), pax_get("linkpath")) {
                    (_, Some(l)) => l,
                    (Some(l), None) => l,
                    (None, None) => cstr(&h[157..257]),
                };
                let kind = match typ {
                    b'0' | 0 | b'7' => Kind::File,
                    b'1' => Kind::Hardlink,
                    b'2' => Kind::Symlink,
                    b'5' => Kind::Dir,
                    c => Kind::Other(c),
                };
                let path = self.relative(&name)?;
                let uid = pax_get("uid")
                    .and_then(|s| s.parse().ok())
                    .or_else(|| num(&h[108..116]))
                    .ok_or_else(|| self.err("bad uid field"))?;
                let gid = pax_get("gid")
                    .and_then(|s| s.parse().ok())
                    .or_else(|| num(&h[116..124]))
                    .ok_or_else(|| self.err("bad gid field"))?;
                let mode = num(&h[100..108]).ok_or_else(|| self.err("bad mode field"))? as u32;
                let content = match kind {
                    Kind::Symlink => link,
                    Kind::Hardlink => self.relative(&link)?,
                    _ => String::new(),
                };
                let e = Entry {
                    path,
                    kind,
                    mode: mode & 0o7777,
                    uid,
                    gid,
                    size: if kind == Kind::File { size } else { 0 },
                    content,
                };
                let body = if kind == Kind::File {
                    Body::File(Sha256::new())
                } else {
                    Body::Skip
                };
                (What::Entry(e), body)
            }
        };
        if matches!(body, Body::Keep(_)) && size > LIMIT_META {
            return Err(self.err(format!("an extended header of {size} bytes")));
        }
        self.data = Some(Data {
            what,
            body,
            left: size,
            pad,
        });
        Ok(())
    }

    fn end_data(&mut self) -> Result<(), TarError> {
        let Some(d) = self.data.take() else {
            return Ok(());
        };
        match (d.what, d.body) {
            (What::Entry(mut e), Body::File(h)) => {
                e.content = super::files::hex(&h.finalize());
                self.entries.push(e);
            }
            (What::Entry(e), _) => self.entries.push(e),
            (What::Pax, Body::Keep(v)) => self.pax = pax_records(&v).map_err(|w| self.err(w))?,
            (What::LongName, Body::Keep(v)) => self.long_name = Some(cstr(&v)),
            (What::LongLink, Body::Keep(v)) => self.long_link = Some(cstr(&v)),
            _ => {}
        }
        Ok(())
    }

    /// `name` relative to the archive's top entry, which the first entry names.
    fn relative(&mut self, name: &str) -> Result<String, TarError> {
        let clean = name.trim_start_matches("./").trim_end_matches('/');
        let (first, rest) = clean.split_once('/').unwrap_or((clean, ""));
        if first.is_empty() || first == ".." || rest.split('/').any(|c| c == "..") {
            return Err(self.err(format!("entry `{name}` is outside the archive's folder")));
        }
        match &self.top {
            None => self.top = Some(first.to_string()),
            Some(t) if t != first => {
                return Err(self.err(format!(
                    "entry `{name}` is not under the archive's top folder `{t}`"
                )))
            }
            _ => {}
        }
        Ok(if rest.is_empty() {
            ".".into()
        } else {
            rest.into()
        })
    }
}

/// A NUL-terminated field.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An octal number field (spaces/NULs around it), or GNU base-256 (high bit set).
fn num(b: &[u8]) -> Option<u64> {
    if b.first().is_some_and(|c| c & 0x80 != 0) {
        let mut v: u64 = (b[0] & 0x7f) as u64;
        for c in &b[1..] {
            v = v.checked_mul(256)?.checked_add(*c as u64)?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(b).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_records(mut b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let sp = b
            .iter()
            .position(|c| *c == b' ')
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&b[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record with a bad length")?;
        if len <= sp + 1 || len > b.len() {
            return Err("a PAX record longer than its header".into());
        }
        let rec = &b[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        let eq = rec
            .iter()
            .position(|c| *c == b'=')
            .ok_or("a PAX record without `=`")?;
        out.push((
            String::from_utf8_lossy(&rec[..eq]).into_owned(),
            String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
        ));
        b = &b[len..];
    }
    Ok(out)
}

/// What a listing looks like in a report: `N files, SIZE, listing sha256 …`.
pub fn summary(l: &Listing) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{} entries, {} files, {}",
        l.entries.len(),
        l.files(),
        crate::release::human_bytes(l.content_bytes())
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, typ: u8, size: u64, mode: u32, uid: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let put = |h: &mut Vec<u8>, at: usize, len: usize, v: u64| {
            let s = format!("{:0w$o}\0", v, w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        put(&mut h, 100, 8, mode as u64);
        put(&mut h, 108, 8, uid);
        put(&mut h, 116, 8, uid);
        put(&mut h, 124, 12, size);
        put(&mut h, 136, 12, 0);
        h[156] = typ;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| *b as u64).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }

    fn entry(out: &mut Vec<u8>, name: &str, typ: u8, body: &[u8], mode: u32) {
        out.extend(header(name, typ, body.len() as u64, mode, 33));
        out.extend_from_slice(body);
        out.extend(std::iter::repeat_n(0, (512 - body.len() % 512) % 512));
    }

    fn archive() -> Vec<u8> {
        let mut a = Vec::new();
        entry(&mut a, "files/", b'5', b"", 0o750);
        entry(&mut a, "files/a.txt", b'0', b"hello\n", 0o640);
        let long = format!("files/{}", "n".repeat(150));
        let rec = format!("path={long}\n");
        let rec = format!("{} {rec}", rec.len() + 4);
        entry(&mut a, "PaxHeaders/x", b'x', rec.as_bytes(), 0o644);
        entry(&mut a, "placeholder", b'0', &[7u8; 700], 0o600);
        a.extend([0u8; 1024]);
        a
    }

    #[test]
    fn lists_ustar_and_pax_in_any_chunking() {
        let a = archive();
        let whole = {
            let mut l = Lister::default();
            l.feed(&a).unwrap_or_else(|e| panic!("{e}"));
            l.finish().unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(whole.top, "files");
        let paths: Vec<&str> = whole.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths[0], ".");
        assert_eq!(paths[1], "a.txt");
        assert_eq!(paths[2], "n".repeat(150));
        assert_eq!(whole.entries[0].mode, 0o750);
        assert_eq!(whole.files(), 2);
        assert_eq!(whole.content_bytes(), 706);
        for chunk in [1, 7, 511, 512, 513, 4096] {
            let mut l = Lister::default();
            for c in a.chunks(chunk) {
                l.feed(c).unwrap_or_else(|e| panic!("{e}"));
            }
            let got = l.finish().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.digest(), whole.digest(), "chunks of {chunk}");
            assert!(whole.diff(&got, 10).is_empty());
        }
    }

    #[test]
    fn a_flipped_byte_is_seen() {
        let a = archive();
        let base = {
            let mut l = Lister::default();
            l.feed(&a).unwrap_or_else(|e| panic!("{e}"));
            l.finish().unwrap_or_else(|e| panic!("{e}"))
        };
        // In content: the listing changes and names the file.
        let mut b = a.clone();
        b[1024] ^= 1;
        let mut l = Lister::default();
        l.feed(&b).unwrap_or_else(|e| panic!("{e}"));
        let got = l.finish().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(got.digest(), base.digest());
        assert!(base.diff(&got, 10)[0].contains("a.txt"));
        // In a header: not a tar archive any more.
        let mut c = a.clone();
        c[600] ^= 1;
        let mut l = Lister::default();
        assert!(l.feed(&c).is_err());
        // Truncated.
        let mut l = Lister::default();
        l.feed(&a[..1100]).unwrap_or_else(|e| panic!("{e}"));
        assert!(l.finish().is_err());
    }

    #[test]
    fn refuses_entries_outside_the_folder() {
        let mut a = Vec::new();
        entry(&mut a, "files/", b'5', b"", 0o755);
        entry(&mut a, "other/x", b'0', b"x", 0o644);
        let mut l = Lister::default();
        assert!(l.feed(&a).is_err());
        let mut a = Vec::new();
        entry(&mut a, "files/../etc", b'0', b"x", 0o644);
        let mut l = Lister::default();
        assert!(l.feed(&a).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(num(b"0000644\0"), Some(0o644));
        assert_eq!(num(b"  755 \0"), Some(0o755));
        assert_eq!(num(&[0x80, 0, 0, 1, 0]), Some(256));
        assert_eq!(num(b"\0\0\0"), Some(0));
        assert_eq!(num(b"9"), None);
    }
}
