//! Restoring a set into the new environment (its web created but not started, its other services
//! running). Nothing is written into that environment until the whole set is known good: every
//! member re-hashed against the manifest, every data volume of the config covered by a member.
//! Then the dump goes to the db service's `restore` command on stdin, and each volume archive is
//! extracted into the new color's volume through the container that mounts it (owners and modes
//! kept); the volume is then read back through the engine and its listing (path, kind, mode,
//! owner, size, sha256 of each file) compared with the archive's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::set::{self, MemberKind, Set};
use super::take::plan;
use super::tarlist::{self, Lister, Listing};
use crate::config::ReleaseConfig;
use crate::release::docker::EnvId;
use crate::release::engine::Engine;
use crate::release::{human_bytes, Progress, ReleaseError};

/// What a restore did, one line per member, for the step's summary.
#[derive(Debug, Default)]
pub struct Restored {
    pub bytes: u64,
    pub lines: Vec<String>,
}

/// Refuses a set that this config cannot restore whole: its manifest unreadable, a member that
/// does not match it (named), a data volume of the config without a member, or a member for
/// which the config has no place.
pub async fn check(
    rel: &ReleaseConfig,
    set: &Set,
    progress: &Progress,
) -> Result<Vec<(String, Listing)>, ReleaseError> {
    check_parts(rel, set, progress, true).await
}

/// [`check`]; without `db`, the database members are not re-hashed (the online flow read each
/// back as it wrote it and has applied them already: hashing a big dump again would only
/// lengthen the read-only window).
async fn check_parts(
    rel: &ReleaseConfig,
    set: &Set,
    progress: &Progress,
    db: bool,
) -> Result<Vec<(String, Listing)>, ReleaseError> {
    let refuse = |why: String| {
        ReleaseError::Failed(format!(
            "backup set {} cannot be restored: {why}. Nothing was restored",
            set.id
        ))
    };
    let m = set.manifest.as_ref().map_err(|e| refuse(e.clone()))?;
    for p in plan(rel) {
        if m.member(p.kind, p.volume).is_none() {
            return Err(refuse(match p.volume {
                Some(v) => format!("it has no member for data volume `{v}` (it was taken before `{v}` was marked as data); take a new set"),
                None => format!("it has no database dump for service `{}`", p.service.name),
            }));
        }
    }
    let planned = plan(rel);
    for mem in &m.members {
        // A delta belongs with the dump it follows.
        let kind = match mem.kind {
            MemberKind::DbDelta => MemberKind::Db,
            k => k,
        };
        if !planned
            .iter()
            .any(|p| p.kind == kind && p.volume == mem.volume.as_deref())
        {
            return Err(refuse(format!(
                "its member {} has no place in this config (no db service, or `{}` is not in any service's `data_volumes`)",
                mem.name,
                mem.volume.as_deref().unwrap_or("db")
            )));
        }
    }
    if let Some(why) = set::broken_chain(m) {
        return Err(refuse(why));
    }
    let t = Instant::now();
    let report = |name: &str, n: u64| progress.bytes(&format!("verify {name}"), t, n);
    let volumes_only;
    let to_hash = if db {
        set
    } else {
        let mut v = set.clone();
        if let Ok(m) = v.manifest.as_mut() {
            m.members.retain(|x| x.kind == MemberKind::Volume);
        }
        volumes_only = v;
        &volumes_only
    };
    let checks = set::verify(to_hash, true, &report).await.map_err(refuse)?;
    if let Some(bad) = set::first_bad(&checks) {
        return Err(refuse(format!("{bad}; it is corrupt, do not use it")));
    }
    // The listings of the archives, to compare the restored volumes with.
    Ok(checks
        .into_iter()
        .filter_map(|c| c.listing.map(|l| (c.name, l)))
        .collect())
}

/// Restores every member of `set` into `env`. See the module doc.
pub async fn restore(
    engine: &Engine,
    rel: &ReleaseConfig,
    env: &EnvId,
    set: &Set,
    progress: &Progress,
) -> Result<Restored, ReleaseError> {
    restore_parts(engine, rel, env, set, progress, true).await
}

/// [`restore`], with the database left out when `db` is false (the online flow has copied it
/// into `env` already, full dump and every delta).
pub async fn restore_parts(
    engine: &Engine,
    rel: &ReleaseConfig,
    env: &EnvId,
    set: &Set,
    progress: &Progress,
    db: bool,
) -> Result<Restored, ReleaseError> {
    let listings = check_parts(rel, set, progress, db).await?;
    let m = set
        .manifest
        .as_ref()
        .map_err(|e| ReleaseError::Failed(e.clone()))?;
    let mut out = Restored::default();
    for p in plan(rel) {
        let Some(mem) = m.member(p.kind, p.volume) else {
            continue;
        };
        let path = set.path_of(mem);
        let container = env.container(&p.service.name);
        let what = format!("restore {}", mem.name);
        let t = Instant::now();
        match p.kind {
            MemberKind::Db | MemberKind::DbDelta if !db => {
                out.lines.push(format!("{} copied online", mem.name));
            }
            MemberKind::Db | MemberKind::DbDelta => {
                let cmd = p.service.restore.clone().ok_or_else(|| {
                    ReleaseError::Failed(format!(
                        "service `{}` has no `restore` command",
                        p.service.name
                    ))
                })?;
                let f = tokio::fs::File::open(&path)
                    .await
                    .map_err(|source| ReleaseError::Io {
                        what: "open the backup".into(),
                        path: path.clone(),
                        source,
                    })?;
                let o = engine
                    .exec(&container, &cmd, Some(f), None::<tokio::io::Sink>, |n| {
                        progress.bytes(&what, t, n)
                    })
                    .await?;
                if o.code != 0 {
                    return Err(ReleaseError::Command {
                        what: "the restore command".into(),
                        container,
                        code: o.code,
                        output: o.output_tail,
                    });
                }
                progress.done(&what, t, o.stdin_bytes);
                out.bytes += o.stdin_bytes;
                out.lines
                    .push(format!("{} {}", mem.name, human_bytes(o.stdin_bytes)));
                let deltas = deltas(engine, rel, &container, set, progress).await?;
                if deltas.0 > 0 {
                    out.bytes += deltas.1;
                    out.lines
                        .push(format!("{} delta(s) {}", deltas.0, human_bytes(deltas.1)));
                }
            }
            MemberKind::Volume => {
                let mount = p.mount.unwrap_or("/").trim_end_matches('/');
                let (parent, base) = match mount.rsplit_once('/') {
                    Some(("", b)) => ("/", b),
                    Some((a, b)) => (a, b),
                    None => ("/", mount),
                };
                let want = listings
                    .iter()
                    .find(|(n, _)| *n == mem.name)
                    .map(|(_, l)| l)
                    .ok_or_else(|| {
                        ReleaseError::Failed(format!("member {} has no listing", mem.name))
                    })?;
                if want.top != base {
                    return Err(ReleaseError::Failed(format!(
                        "member {} holds the folder `{}`, but the config mounts volume `{}` at {mount}; mount it at a path ending in /{}, or take a new set",
                        mem.name,
                        want.top,
                        p.volume.unwrap_or(""),
                        want.top
                    )));
                }
                let n = upload(engine, &container, parent, &path, progress, &what).await?;
                let got = read_listing(engine, &container, mount, progress, &mem.name).await?;
                let diff = want.diff(&got, 5);
                if !diff.is_empty() {
                    return Err(ReleaseError::Failed(format!(
                        "the files of volume {} in {container} differ from the backup after the restore: {}",
                        p.volume.unwrap_or(""),
                        diff.join("; ")
                    )));
                }
                progress.done(&what, t, n);
                out.bytes += n;
                out.lines.push(format!(
                    "{} {} (files ok: {})",
                    mem.name,
                    human_bytes(n),
                    tarlist::summary(want)
                ));
            }
        }
    }
    Ok(out)
}

/// Applies every db-delta member of `set`, in list order, into the db `container`: (how many,
/// bytes).
async fn deltas(
    engine: &Engine,
    rel: &ReleaseConfig,
    container: &str,
    set: &Set,
    progress: &Progress,
) -> Result<(usize, u64), ReleaseError> {
    let Ok(m) = &set.manifest else {
        return Ok((0, 0));
    };
    let (mut n, mut bytes) = (0, 0);
    for mem in m.members.iter().filter(|m| m.kind == MemberKind::DbDelta) {
        let path = set.path_of(mem);
        bytes += apply_delta(engine, rel, container, &path, &mem.name, progress).await?;
        n += 1;
    }
    Ok((n, bytes))
}

/// Feeds one delta file to the online flow's apply command (`mariadb --binary-mode`) in
/// `container`: the bytes applied.
pub async fn apply_delta(
    engine: &Engine,
    rel: &ReleaseConfig,
    container: &str,
    path: &std::path::Path,
    name: &str,
    progress: &Progress,
) -> Result<u64, ReleaseError> {
    let what = format!("applying delta {name}");
    feed(
        engine,
        container,
        &rel.online.apply(),
        path,
        &what,
        progress,
    )
    .await
}

/// Runs `cmd` in `container` with the file at `path` on its stdin; it must exit 0 (`what` names
/// it in the error). The bytes fed.
pub async fn feed(
    engine: &Engine,
    container: &str,
    cmd: &[String],
    path: &std::path::Path,
    what: &str,
    progress: &Progress,
) -> Result<u64, ReleaseError> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|source| ReleaseError::Io {
            what: "open the backup member".into(),
            path: path.to_path_buf(),
            source,
        })?;
    let t = Instant::now();
    let o = engine
        .exec(container, cmd, Some(f), None::<tokio::io::Sink>, |n| {
            progress.bytes(what, t, n)
        })
        .await?;
    if o.code != 0 {
        return Err(ReleaseError::Command {
            what: what.into(),
            container: container.into(),
            code: o.code,
            output: o.output_tail,
        });
    }
    Ok(o.stdin_bytes)
}

/// Streams the archive at `path` into `dir` of `container`, printing progress while it goes.
async fn upload(
    engine: &Engine,
    container: &str,
    dir: &str,
    path: &std::path::Path,
    progress: &Progress,
    what: &str,
) -> Result<u64, ReleaseError> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|source| ReleaseError::Io {
            what: "open the backup".into(),
            path: path.to_path_buf(),
            source,
        })?;
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let (s2, f2) = (sent.clone(), failed.clone());
    // A read error ends the stream early; it is reported below (the engine would see a short tar).
    let body = futures_util::stream::unfold(Some(f), move |f| {
        let (sent, failed) = (s2.clone(), f2.clone());
        async move {
            let mut f = f?;
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Bytes::from(buf), Some(f)))
                }
                Err(_) => {
                    failed.store(true, Ordering::Relaxed);
                    None
                }
            }
        }
    });
    let t = Instant::now();
    let up = engine.upload(container, dir, body);
    tokio::pin!(up);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = &mut up => { r?; break; }
            _ = tick.tick() => progress.bytes(what, t, sent.load(Ordering::Relaxed)),
        }
    }
    if failed.load(Ordering::Relaxed) {
        return Err(ReleaseError::Failed(format!(
            "reading {} failed half-way; the restore into {container} is incomplete",
            path.display()
        )));
    }
    Ok(sent.load(Ordering::Relaxed))
}

/// The listing of `path` in `container`, read through the engine.
pub async fn read_listing(
    engine: &Engine,
    container: &str,
    path: &str,
    progress: &Progress,
    name: &str,
) -> Result<Listing, ReleaseError> {
    let mut lister = Lister::default();
    let mut s = std::pin::pin!(engine.download(container, path));
    let (t, mut n) = (Instant::now(), 0u64);
    let what = format!("check files {name}");
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        lister.feed(&chunk).map_err(|e| {
            ReleaseError::Failed(format!("the archive of {path} in {container}: {e}"))
        })?;
        progress.bytes(&what, t, n);
    }
    lister
        .finish()
        .map_err(|e| ReleaseError::Failed(format!("the archive of {path} in {container}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(web_extra: &str) -> ReleaseConfig {
        let text = format!("[proxy]\nhttp = \"127.0.0.1:0\"\ncontrol = \"c.sock\"\nstate = \"s.json\"\n[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.release]\n[[site.release.services]]\nname = \"db\"\nimage = \"d\"\nbackup = [\"dump\"]\nrestore = [\"restore\"]\n[[site.release.services]]\nname = \"web\"\nimage = \"w:{{version}}\"\n{web_extra}");
        let cfg = crate::config::parse_config(std::path::Path::new("t.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}"));
        cfg.sites[0]
            .release
            .clone()
            .unwrap_or_else(|| panic!("no release"))
    }

    /// A single-file dump from before sets restores as a one-member set, unless the config now
    /// has data volumes it does not hold (their files would be left behind: refused).
    #[tokio::test]
    async fn a_legacy_dump_restores_as_a_one_member_set() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = t.path();
        std::fs::write(d.join("20250101T000000.000Z-blue-1.dump"), b"x").unwrap_or_default();
        std::fs::write(
            d.join("20250101T000000.000Z-blue-1.manifest.json"),
            br#"{"file":"20250101T000000.000Z-blue-1.dump","site":"w","color":"blue","version":"1","created":"t","size":1,"sha256":"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","verified_at":"t"}"#,
        )
        .unwrap_or_default();
        let set = set::find(d, "20250101T000000.000Z-blue-1.dump")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the legacy set is not found"));
        let p = Progress::default();
        assert!(check(&rel(""), &set, &p).await.is_ok());
        let with_files = rel("volumes = [\"images:/srv/images\"]\ndata_volumes = [\"images\"]\n");
        let e = check(&with_files, &set, &p)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no member for data volume `images`"), "{e}");
        // A flipped byte: refused, naming the member.
        std::fs::write(d.join("20250101T000000.000Z-blue-1.dump"), b"y").unwrap_or_default();
        let e = check(&rel(""), &set, &p)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("member db") && e.contains("corrupt"), "{e}");
    }
}
