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
use crate::release::docker::EnvId;
use crate::release::engine::Engine;
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
            MemberKind::Db | MemberKind::DbDelta => "db.dump".into(),
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
    let mut set = Partial::begin(rel, env)?;
    for p in &planned {
        let m = member(engine, env, p, &set.dir, progress).await?;
        set.members.push(m);
    }
    let verify_restore = if read_only {
        expected_verify(engine, rel, env).await
    } else {
        None
    };
    set.finish(read_only, None, verify_restore)
}

/// A set being taken, in its `.partial` folder (removed when this is dropped unfinished): the
/// online flow adds members to it over several steps, [`take`] in one go.
pub struct Partial {
    pub id: String,
    /// The `.partial` folder the member files go to.
    pub dir: PathBuf,
    site_dir: PathBuf,
    guard: PartialGuard,
    env: EnvId,
    taken_at: String,
    pub members: Vec<Member>,
}

impl Partial {
    /// A new, empty partial set of `env` (private folders made).
    pub fn begin(rel: &ReleaseConfig, env: &EnvId) -> Result<Partial, ReleaseError> {
        let site_dir = super::site_dir(rel, &env.site);
        files::private_dir(&site_dir).map_err(io("create the backups folder", &site_dir))?;
        let id = format!("{}-{}-{}", stamp(), env.color, safe(&env.version));
        let dir = site_dir.join(format!(".{id}.partial"));
        let guard = PartialGuard(Some(dir.clone()));
        files::private_dir(&dir).map_err(io("create the partial set", &dir))?;
        Ok(Partial {
            id,
            dir,
            site_dir,
            guard,
            env: env.clone(),
            taken_at: crate::state::now_rfc3339(),
            members: Vec::new(),
        })
    }

    /// Takes the members `planned` of the config (the volumes, in the online flow).
    pub async fn take(
        &mut self,
        engine: &Engine,
        planned: &[Planned<'_>],
        progress: &Progress,
    ) -> Result<(), ReleaseError> {
        for p in planned {
            let m = member(engine, &self.env, p, &self.dir, progress).await?;
            self.members.push(m);
        }
        Ok(())
    }

    /// The manifest written last (tmp, fsync, rename), then the folder renamed into place.
    pub fn finish(
        mut self,
        read_only: bool,
        tables: Option<std::collections::BTreeMap<String, String>>,
        verify_restore: Option<String>,
    ) -> Result<Set, ReleaseError> {
        let env = &self.env;
        let m = Manifest {
            format: set::FORMAT,
            site: env.site.clone(),
            color: env.color.to_string(),
            version: env.version.clone(),
            prefix: env.prefix.clone(),
            taken_at: self.taken_at.clone(),
            verified_at: crate::state::now_rfc3339(),
            read_only,
            members: std::mem::take(&mut self.members),
            tables,
            verify_restore,
        };
        let bytes = serde_json::to_vec_pretty(&m)
            .map_err(|e| ReleaseError::Failed(format!("cannot encode the manifest: {e}")))?;
        let mpath = self.dir.join(set::MANIFEST);
        files::write_private_atomic(&mpath, &bytes).map_err(io("write the manifest", &mpath))?;
        let dir = self.site_dir.join(&self.id);
        std::fs::rename(&self.dir, &dir).map_err(io("move the set into place", &dir))?;
        self.guard.0 = None;
        files::sync_dir(&self.site_dir).map_err(io("fsync the backups folder", &self.site_dir))?;
        Ok(Set {
            id: self.id.clone(),
            dir,
            manifest: Ok(m),
            legacy: false,
        })
    }
}

/// A member file made from a command's stdout: its size and sha256, after it was flushed,
/// fsynced and read back equal.
pub struct Streamed {
    pub size: u64,
    pub sha256: String,
    pub out: crate::release::docker::ExecOutcome,
}

/// Runs `cmd` in `container` with its stdout streamed into `path` (0600), hashed on the way,
/// then fsynced and read back. A command that exits non-zero is an error (`what` names it).
pub async fn command_to_file(
    engine: &Engine,
    container: &str,
    cmd: &[String],
    path: &Path,
    what: &str,
    progress: &Progress,
) -> Result<Streamed, ReleaseError> {
    let f = files::create_private(path).map_err(io("create", path))?;
    let mut w = HashWriter::new(tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::from_std(f),
    ));
    let t = Instant::now();
    let out = engine
        .exec(
            container,
            cmd,
            None::<tokio::io::Empty>,
            Some(&mut w),
            |n| progress.bytes(what, t, n),
        )
        .await
        .map_err(|e| match e {
            ReleaseError::Failed(why) if why.contains("(os error 28)") => {
                io(format!("write {what} to"), path)(std::io::Error::from_raw_os_error(
                    libc::ENOSPC,
                ))
            }
            e => e,
        })?;
    if out.code != 0 {
        return Err(ReleaseError::Command {
            what: what.into(),
            container: container.into(),
            code: out.code,
            output: out.output_tail,
        });
    }
    let (size, sha256) = seal(w, path, what).await?;
    Ok(Streamed { size, sha256, out })
}

/// Flushes and fsyncs a member file, then reads it back and compares it with what was streamed.
async fn seal(
    mut w: HashWriter<tokio::io::BufWriter<tokio::fs::File>>,
    path: &Path,
    name: &str,
) -> Result<(u64, String), ReleaseError> {
    w.flush()
        .await
        .map_err(io(format!("write backup member {name} to"), path))?;
    let (size, sha) = (w.n, w.sha256());
    let f = w.inner.into_inner();
    f.sync_all()
        .await
        .map_err(io(format!("fsync backup member {name}"), path))?;
    drop(f);
    let (rsize, rsha, _) = files::hash_file(path, false, |_| {})
        .await
        .map_err(io("read back", path))?;
    if rsize != size || rsha != sha {
        return Err(ReleaseError::Failed(format!(
            "member {name} read back from {} does not match what was written ({size} bytes sha256 {sha} vs {rsize} bytes sha256 {rsha}); check the disk",
            path.display()
        )));
    }
    Ok((size, sha))
}

/// What `verify_restore` prints on the active database now (the site is read-only, so it agrees
/// with the dump); None when there is none or it fails (the release's own check names that).
pub async fn expected_verify(engine: &Engine, rel: &ReleaseConfig, env: &EnvId) -> Option<String> {
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
    let container = env.container(&p.service.name);
    let t = Instant::now();
    let what = format!("backup {}", p.name);
    let (size, sha, files) = match p.kind {
        MemberKind::Db | MemberKind::DbDelta => {
            let cmd = p.service.backup.clone().ok_or_else(|| {
                ReleaseError::Failed(format!("service `{}` has no `backup` command", p.name))
            })?;
            let s = command_to_file(engine, &container, &cmd, &path, &what, progress)
                .await
                .map_err(|e| match e {
                    ReleaseError::Command {
                        container,
                        code,
                        output,
                        ..
                    } => ReleaseError::Command {
                        what: "the backup command".into(),
                        container,
                        code,
                        output,
                    },
                    e => e,
                })?;
            if s.size == 0 {
                return Err(ReleaseError::Failed(format!("the backup command {cmd:?} in {container} wrote nothing on stdout; a dump must go to stdout")));
            }
            (s.size, s.sha256, None)
        }
        MemberKind::Volume => volume(engine, &container, p, &path, progress, &what).await?,
    };
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
        follows: None,
        position: None,
    })
}

/// A volume's archive from the engine into `path`, listed on the way (the listing taken while
/// streaming stands for the file: equal bytes list the same files).
async fn volume(
    engine: &Engine,
    container: &str,
    p: &Planned<'_>,
    path: &Path,
    progress: &Progress,
    what: &str,
) -> Result<(u64, String, Option<Files>), ReleaseError> {
    let f = files::create_private(path).map_err(io("create", path))?;
    let mut w = HashWriter::new(tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::from_std(f),
    ));
    let t = Instant::now();
    let mount = p.mount.unwrap_or("/");
    let mut lister = Lister::default();
    let mut s = std::pin::pin!(engine.download(container, mount));
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        lister.feed(&chunk).map_err(|e| {
            ReleaseError::Failed(format!(
                "the engine's archive of {mount} in {container} is not valid: {e}"
            ))
        })?;
        w.write_all(&chunk)
            .await
            .map_err(io(format!("write backup member {} to", p.name), path))?;
        progress.bytes(what, t, w.n);
    }
    let l = lister.finish().map_err(|e| {
        ReleaseError::Failed(format!(
            "the engine's archive of {mount} in {container} is not valid: {e}"
        ))
    })?;
    let (size, sha) = seal(w, path, &p.name).await?;
    let files = Files {
        top: l.top.clone(),
        entries: l.entries.len() as u64,
        regular_files: l.files(),
        content_bytes: l.content_bytes(),
        listing_sha256: l.digest(),
    };
    Ok((size, sha, Some(files)))
}
