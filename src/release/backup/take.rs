//! Taking a set: every member streamed from the active environment to its own file (the dump
//! from the db service's `backup` command, each data volume as a tar from the engine's archive
//! API), hashed on the way, fsynced, read back and hashed again; then the manifest, written last;
//! then the `.partial` folder renamed into place. Any failure (a command that fails, a volume that
//! is not there, a full disk, Ctrl-C dropping the future) removes the partial set and leaves the
//! earlier sets as they were.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::files::{self, HashWriter};
use super::set::{self, Files, Manifest, Member, MemberKind, Set};
use super::tarlist::Lister;
use crate::config::{ReleaseConfig, ServiceConfig};
use crate::release::docker::{Engine, EnvId};
use crate::release::{Progress, ReleaseError};

/// One member a set of this config holds, before it is taken.
pub struct Planned<'a> {
    pub name: String,
    pub kind: MemberKind,
    pub service: &'a ServiceConfig,
    pub volume: Option<&'a str>,
    pub mount: Option<&'a str>,
}

impl Planned<'_> {
    pub fn file(&self) -> String {
        match self.kind {
            MemberKind::Db => "db.dump".into(),
            MemberKind::Volume => format!("volume-{}.tar", self.volume.unwrap_or("")),
        }
    }
}

/// What a set of `rel` holds: the database's dump (when a service has `backup`), then every data
/// volume in config order.
pub fn plan(rel: &ReleaseConfig) -> Vec<Planned<'_>> {
    let mut out = Vec::new();
    let db = rel
        .db
        .as_deref()
        .and_then(|d| rel.services.iter().find(|s| s.name == d));
    if let Some(db) = db {
        out.push(Planned {
            name: db.name.clone(),
            kind: MemberKind::Db,
            service: db,
            volume: None,
            mount: None,
        });
    }
    for (svc, vol, mount) in rel.data_volumes() {
        let name = if out.iter().any(|p| p.name == vol) {
            format!("{vol}-volume")
        } else {
            vol.to_string()
        };
        out.push(Planned {
            name,
            kind: MemberKind::Volume,
            service: svc,
            volume: Some(vol),
            mount: Some(mount),
        });
    }
    out
}

/// Every data volume of the config exists in `env`, mounted where the config says: checked
/// before anything is changed, so a volume that is not there is a clear error and not an empty
/// archive.
pub async fn check_sources(
    engine: &Engine,
    rel: &ReleaseConfig,
    env: &EnvId,
) -> Result<(), ReleaseError> {
    for (svc, vol, mount) in rel.data_volumes() {
        let container = env.container(&svc.name);
        if let Err(e) = engine
            .check_volume_mount(&container, &env.volume(vol), mount)
            .await
        {
            return Err(ReleaseError::Failed(format!(
                "data volume `{vol}` of service `{}` cannot be backed up from the active environment: {e}. Nothing was changed. If `{vol}` is new in this config, it holds no data yet: leave it out of `data_volumes` until an environment that has it is active",
                svc.name
            )));
        }
    }
    Ok(())
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

/// Removes the partial set when dropped, unless disarmed (so Ctrl-C leaves nothing behind).
struct PartialGuard(Option<PathBuf>);

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn io(what: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let (what, path) = (what.into(), path.to_path_buf());
    move |source| {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            ReleaseError::Failed(format!(
                "cannot {what} {}: the disk is full. The partial set was removed and earlier sets are untouched; free space there or point `backups` at a bigger disk",
                path.display()
            ))
        } else {
            ReleaseError::Io { what, path, source }
        }
    }
}

/// Takes a set of `env` (the active environment) into `backups/{site}/`. `read_only`: whether the
/// site is read-only for the whole time (recorded in the manifest).
pub async fn take(
    engine: &Engine,
    rel: &ReleaseConfig,
    env: &EnvId,
    progress: &Progress,
    read_only: bool,
) -> Result<Set, ReleaseError> {
    let planned = plan(rel);
    if planned.is_empty() {
        return Err(ReleaseError::Failed(format!(
            "site `{}` has nothing to back up: no service with `backup`/`restore` commands and no `data_volumes`",
            env.site
        )));
    }
    check_sources(engine, rel, env).await?;
    let site_dir = super::site_dir(rel, &env.site);
    files::private_dir(&site_dir).map_err(io("create the backups folder", &site_dir))?;
    let id = format!("{}-{}-{}", stamp(), env.color, safe(&env.version));
    let partial = site_dir.join(format!(".{id}.partial"));
    let mut guard = PartialGuard(Some(partial.clone()));
    files::private_dir(&partial).map_err(io("create the partial set", &partial))?;
    let taken_at = crate::state::now_rfc3339();
    let mut members = Vec::new();
    for p in &planned {
        members.push(member(engine, env, p, &partial, progress).await?);
    }
    let verify_restore = if read_only {
        expected_verify(engine, rel, env).await
    } else {
        None
    };
    let m = Manifest {
        format: set::FORMAT,
        site: env.site.clone(),
        color: env.color.to_string(),
        version: env.version.clone(),
        prefix: env.prefix.clone(),
        taken_at,
        verified_at: crate::state::now_rfc3339(),
        read_only,
        members,
        verify_restore,
    };
    let bytes = serde_json::to_vec_pretty(&m)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the manifest: {e}")))?;
    let mpath = partial.join(set::MANIFEST);
    files::write_private_atomic(&mpath, &bytes).map_err(io("write the manifest", &mpath))?;
    let dir = site_dir.join(&id);
    std::fs::rename(&partial, &dir).map_err(io("move the set into place", &dir))?;
    guard.0 = None;
    files::sync_dir(&site_dir).map_err(io("fsync the backups folder", &site_dir))?;
    Ok(Set {
        id,
        dir,
        manifest: Ok(m),
        legacy: false,
    })
}

/// What `verify_restore` prints on the active database now (the site is read-only, so it agrees
/// with the dump); None when there is none or it fails (the release's own check names that).
async fn expected_verify(engine: &Engine, rel: &ReleaseConfig, env: &EnvId) -> Option<String> {
    let cmd = rel.verify_restore.as_ref()?;
    let db = rel.db.as_deref()?;
    let out = engine
        .exec(
            &env.container(db),
            cmd,
            None::<tokio::io::Empty>,
            None::<tokio::io::Sink>,
            |_| {},
        )
        .await
        .ok()?;
    (out.code == 0).then(|| out.stdout_text.trim().to_string())
}

/// Streams one member to its file in `dir`, then reads it back.
async fn member(
    engine: &Engine,
    env: &EnvId,
    p: &Planned<'_>,
    dir: &Path,
    progress: &Progress,
) -> Result<Member, ReleaseError> {
    let path = dir.join(p.file());
    let f = files::create_private(&path).map_err(io("create", &path))?;
    let mut w = HashWriter::new(tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::from_std(f),
    ));
    let container = env.container(&p.service.name);
    let t = Instant::now();
    let what = format!("backup {}", p.name);
    let mut listing = None;
    match p.kind {
        MemberKind::Db => {
            let cmd = p.service.backup.clone().ok_or_else(|| {
                ReleaseError::Failed(format!("service `{}` has no `backup` command", p.name))
            })?;
            let out = engine
                .exec(
                    &container,
                    &cmd,
                    None::<tokio::io::Empty>,
                    Some(&mut w),
                    |n| progress.bytes(&what, t, n),
                )
                .await
                .map_err(|e| match e {
                    ReleaseError::Failed(why) if why.contains("(os error 28)") => {
                        io(format!("write backup member {} to", p.name), &path)(
                            std::io::Error::from_raw_os_error(libc::ENOSPC),
                        )
                    }
                    e => e,
                })?;
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
        }
        MemberKind::Volume => {
            let mount = p.mount.unwrap_or("/");
            let mut lister = Lister::default();
            let mut s = std::pin::pin!(engine.download(&container, mount));
            while let Some(chunk) = s.next().await {
                let chunk = chunk?;
                lister.feed(&chunk).map_err(|e| {
                    ReleaseError::Failed(format!(
                        "the engine's archive of {mount} in {container} is not valid: {e}"
                    ))
                })?;
                w.write_all(&chunk)
                    .await
                    .map_err(io(format!("write backup member {} to", p.name), &path))?;
                progress.bytes(&what, t, w.n);
            }
            let l = lister.finish().map_err(|e| {
                ReleaseError::Failed(format!(
                    "the engine's archive of {mount} in {container} is not valid: {e}"
                ))
            })?;
            listing = Some(l);
        }
    }
    w.flush()
        .await
        .map_err(io(format!("write backup member {} to", p.name), &path))?;
    let (size, sha) = (w.n, w.sha256());
    let f = w.inner.into_inner();
    f.sync_all()
        .await
        .map_err(io(format!("fsync backup member {}", p.name), &path))?;
    drop(f);
    // Read back what is on disk and compare with what was streamed. (Equal bytes list the same
    // files: the listing taken while streaming stands for the file.)
    let (rsize, rsha, _) = files::hash_file(&path, false, |_| {})
        .await
        .map_err(io("read back", &path))?;
    if rsize != size || rsha != sha {
        return Err(ReleaseError::Failed(format!(
            "member {} read back from {} does not match what was written ({size} bytes sha256 {sha} vs {rsize} bytes sha256 {rsha}); check the disk",
            p.name,
            path.display()
        )));
    }
    let files = listing.map(|l| Files {
        top: l.top.clone(),
        entries: l.entries.len() as u64,
        regular_files: l.files(),
        content_bytes: l.content_bytes(),
        listing_sha256: l.digest(),
    });
    progress.done(&what, t, size);
    Ok(Member {
        name: p.name.clone(),
        kind: p.kind,
        service: p.service.name.clone(),
        volume: p.volume.map(str::to_string),
        mount: p.mount.map(str::to_string),
        file: p.file(),
        size,
        sha256: sha,
        files,
    })
}
