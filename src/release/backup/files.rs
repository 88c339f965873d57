//! Files of backups on disk: private (folders 0700, files 0600, set explicitly whatever the umask:
//! a backup holds every user's data, password hashes included), written atomically, hashed while
//! streaming and read back.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use super::tarlist::{Lister, Listing};

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Creates `dir` and its missing parents 0700; an existing `dir` is made 0700 (it is ours).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// A new file, 0600, refusing to reuse an existing one.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    // The mode given to open() is masked by the umask: set it as it must be.
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// tmp (0600) + fsync + rename + fsync of the folder.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let res = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Size and sha256 of a file, and its tar listing when `tar` (one read for both). `progress`
/// sees the bytes read so far.
pub async fn hash_file(
    p: &Path,
    tar: bool,
    progress: impl Fn(u64) + Send + 'static,
) -> std::io::Result<(u64, String, Option<Listing>)> {
    let p = p.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        let mut lister = tar.then(Lister::default);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            if let Some(l) = lister.as_mut() {
                l.feed(&buf[..k]).map_err(std::io::Error::other)?;
            }
            n += k as u64;
            progress(n);
        }
        let listing = match lister {
            Some(l) => Some(l.finish().map_err(std::io::Error::other)?),
            None => None,
        };
        Ok((n, hex(&h.finalize()), listing))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Hashes (and counts) what goes through it.
pub struct HashWriter<W> {
    pub inner: W,
    pub hasher: Sha256,
    pub n: u64,
}

impl<W> HashWriter<W> {
    pub fn new(inner: W) -> HashWriter<W> {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            n: 0,
        }
    }

    pub fn sha256(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.n += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0) };
        let d = t.path().join("a/b");
        private_dir(&d).unwrap_or_else(|e| panic!("{e}"));
        let f = d.join("m.json");
        write_private_atomic(&f, b"{}").unwrap_or_else(|e| panic!("{e}"));
        unsafe { libc::umask(old) };
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(mode(&f), 0o600);
    }
}
