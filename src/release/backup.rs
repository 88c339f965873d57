//! Backups on disk: `backups/{site}/{time}-{color}-{version}.dump` beside a
//! `{time}-{color}-{version}.manifest.json` holding its size and sha256.
//!
//! A dump is streamed from the database container into a `.partial` temp file while it is
//! hashed, fsynced, then read back and hashed again; only when both agree is the manifest written
//! and the dump renamed into place. A failure removes the temp file, so there is never a dump
//! without a verified manifest (a crash may leave a `.partial`, which `backups prune` removes).
//! Prune keeps the newest `keep_backups` verified dumps and never deletes the only verified one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use super::context::{site_of, Release};
use super::docker::{Engine, EnvId};
use super::journal;
use super::{Progress, ReleaseError};
use crate::config::{Config, ReleaseConfig};
use crate::control::client::Client;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub file: String,
    pub site: String,
    pub color: String,
    pub version: String,
    pub created: String,
    pub size: u64,
    pub sha256: String,
    pub verified_at: String,
}

pub fn site_dir(rel: &ReleaseConfig, site: &str) -> PathBuf {
    rel.backups.join(site)
}

fn stamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes the temp file when dropped, unless disarmed (so Ctrl-C leaves nothing behind).
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Streams the dump of `env`'s database to a verified file; returns its manifest.
pub async fn take(
    engine: &Engine,
    rel: &ReleaseConfig,
    env: &EnvId,
    progress: &Progress,
) -> Result<Manifest, ReleaseError> {
    let db = rel.db.as_deref().ok_or_else(|| {
        ReleaseError::Failed(format!(
            "site `{}` has no database service with `backup`/`restore` commands in [site.release]",
            env.site
        ))
    })?;
    let svc = rel.services.iter().find(|s| s.name == db).ok_or_else(|| {
        ReleaseError::Failed(format!("db service `{db}` is not among the services"))
    })?;
    let cmd = svc
        .backup
        .clone()
        .ok_or_else(|| ReleaseError::Failed(format!("service `{db}` has no `backup` command")))?;
    let dir = site_dir(rel, &env.site);
    std::fs::create_dir_all(&dir).map_err(|e| io_err("create the backups folder", &dir, e))?;
    let stem = format!("{}-{}-{}", stamp(), env.color, safe(&env.version));
    let file = format!("{stem}.dump");
    let final_path = dir.join(&file);
    let tmp = dir.join(format!(".{file}.partial"));
    let mut guard = TempGuard(Some(tmp.clone()));
    let f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| io_err("create the backup file", &tmp, e))?;
    let mut w = HashWriter {
        inner: tokio::io::BufWriter::with_capacity(1 << 20, f),
        hasher: Sha256::new(),
        n: 0,
    };
    let container = env.container(db);
    let out = engine
        .exec(
            &container,
            &cmd,
            None::<tokio::io::Empty>,
            Some(&mut w),
            |n| progress.bytes("backup", n),
        )
        .await?;
    if out.code != 0 {
        return Err(ReleaseError::Command {
            what: "the backup command".into(),
            container,
            code: out.code,
            output: out.output_tail,
        });
    }
    if w.n == 0 {
        return Err(ReleaseError::Failed(format!("the backup command {cmd:?} in {container} wrote nothing on stdout; a dump must go to stdout")));
    }
    let (size, sha) = (w.n, hex(&w.hasher.clone().finalize()));
    let f = w.inner.into_inner();
    f.sync_all()
        .await
        .map_err(|e| io_err("fsync the backup file", &tmp, e))?;
    drop(f);
    // Read back what is on disk and compare with what was streamed.
    let (rsize, rsha) = hash_file(&tmp)
        .await
        .map_err(|e| io_err("read back the backup file", &tmp, e))?;
    if rsize != size || rsha != sha {
        return Err(ReleaseError::Failed(format!(
            "backup read back from {} does not match what was written ({size} bytes sha256 {sha} vs {rsize} bytes sha256 {rsha}); check the disk",
            tmp.display()
        )));
    }
    let m = Manifest {
        file: file.clone(),
        site: env.site.clone(),
        color: env.color.to_string(),
        version: env.version.clone(),
        created: crate::state::now_rfc3339(),
        size,
        sha256: sha,
        verified_at: crate::state::now_rfc3339(),
    };
    let mpath = dir.join(format!("{stem}.manifest.json"));
    let bytes = serde_json::to_vec_pretty(&m)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the manifest: {e}")))?;
    crate::state::write_atomic(&mpath, &bytes)
        .map_err(|e| io_err("write the backup manifest", &mpath, e))?;
    std::fs::rename(&tmp, &final_path).map_err(|e| {
        let _ = std::fs::remove_file(&mpath);
        io_err("move the backup into place", &final_path, e)
    })?;
    guard.0 = None;
    Ok(m)
}

fn io_err(what: &str, path: &Path, source: std::io::Error) -> ReleaseError {
    ReleaseError::Io {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn hash_file(p: &Path) -> std::io::Result<(u64, String)> {
    let p = p.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        Ok((n, hex(&h.finalize())))
    })
    .await
    .map_err(std::io::Error::other)?
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    n: u64,
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

/// One backup found on disk.
#[derive(Debug)]
pub struct Entry {
    pub stem: String,
    pub manifest: Option<Manifest>,
    pub dump: PathBuf,
    pub manifest_path: PathBuf,
}

/// Every backup of a site, newest first.
pub fn list(rel: &ReleaseConfig, site: &str) -> Result<Vec<Entry>, ReleaseError> {
    let dir = site_dir(rel, site);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read the backups folder", &dir, e)),
    };
    let mut stems: Vec<String> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Some(s) = name
            .strip_suffix(".manifest.json")
            .or_else(|| name.strip_suffix(".dump"))
        {
            stems.push(s.to_string());
        }
    }
    stems.sort();
    stems.dedup();
    stems.reverse();
    Ok(stems
        .into_iter()
        .map(|stem| {
            let manifest_path = dir.join(format!("{stem}.manifest.json"));
            let manifest = std::fs::read(&manifest_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            Entry {
                dump: dir.join(format!("{stem}.dump")),
                manifest_path,
                manifest,
                stem,
            }
        })
        .collect())
}

/// Re-reads a dump and checks it against its manifest.
pub async fn verify(e: &Entry) -> Result<(), String> {
    let m = e.manifest.as_ref().ok_or("no readable manifest")?;
    let (size, sha) = hash_file(&e.dump)
        .await
        .map_err(|err| format!("cannot read {}: {err}", e.dump.display()))?;
    if size != m.size {
        return Err(format!(
            "size is {size} bytes, the manifest says {}",
            m.size
        ));
    }
    if sha != m.sha256 {
        return Err(format!("sha256 is {sha}, the manifest says {}", m.sha256));
    }
    Ok(())
}

/// What prune did.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    pub broken: Vec<(String, String)>,
}

/// Keeps the newest `keep` verified backups, removes older verified ones and leftover
/// `.partial` files; broken backups are reported and left for a person to look at.
pub async fn prune(
    rel: &ReleaseConfig,
    site: &str,
    keep: usize,
) -> Result<PruneReport, ReleaseError> {
    let mut r = PruneReport::default();
    let keep = keep.max(1);
    for e in list(rel, site)? {
        match verify(&e).await {
            Ok(()) if r.kept.len() < keep => r.kept.push(e.stem),
            Ok(()) => {
                // Never the only verified one: `keep` is at least 1, so one is always kept first.
                std::fs::remove_file(&e.dump)
                    .map_err(|err| io_err("remove an old backup", &e.dump, err))?;
                let _ = std::fs::remove_file(&e.manifest_path);
                r.removed.push(e.stem);
            }
            Err(why) => r.broken.push((e.stem, why)),
        }
    }
    let dir = site_dir(rel, site);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                && name.ends_with(".partial")
                && std::fs::remove_file(e.path()).is_ok()
            {
                r.removed.push(name);
            }
        }
    }
    Ok(r)
}

/// `backup SITE`: a verified backup of the active environment's database, now (under the site's
/// lock, so never during a release). Returns its manifest and where the dump is.
pub async fn take_now(
    cfg: &Config,
    client: &Client,
    site: &str,
) -> Result<(Manifest, PathBuf), ReleaseError> {
    let _lock = journal::lock(cfg, site, "backup")?;
    let r = Release::open(cfg, client, site, None).await?;
    super::sync::before(&r, false).await;
    let st = r.status().await?;
    let env = r
        .find_env(st.active)
        .await?
        .filter(|e| e.running())
        .ok_or_else(|| {
            ReleaseError::Failed(format!(
                "no running environment {}-{} to back up (the active color of {site})",
                r.prefix, st.active
            ))
        })?;
    let id = EnvId {
        site: site.to_string(),
        prefix: env.prefix,
        color: env.color,
        version: env.version,
    };
    let m = take(&r.engine, r.rel, &id, &r.progress).await?;
    let path = site_dir(r.rel, site).join(&m.file);
    Ok((m, path))
}

/// `backups verify SITE`: every backup checked against its manifest, newest first.
pub async fn verify_all(
    rel: &ReleaseConfig,
    site: &str,
) -> Result<Vec<(Entry, Result<(), String>)>, ReleaseError> {
    let mut out = Vec::new();
    for e in list(rel, site)? {
        let v = verify(&e).await;
        out.push((e, v));
    }
    Ok(out)
}

/// `backups prune SITE`: [`prune`] to `keep_backups` (returned with the report), under the
/// site's lock.
pub async fn prune_now(cfg: &Config, site: &str) -> Result<(PruneReport, usize), ReleaseError> {
    let (_, rel) = site_of(cfg, site)?;
    let _lock = journal::lock(cfg, site, "backups prune")?;
    Ok((prune(rel, site, rel.keep_backups).await?, rel.keep_backups))
}
