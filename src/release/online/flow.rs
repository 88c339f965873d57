//! The online flow's work inside the release steps (see the module doc of `online`): the copy,
//! the catch-up rounds, and the last delta with the table comparison inside the window.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::mariadb::{self, Position};
use super::State;
use crate::release::backup::restore;
use crate::release::backup::take::{command_to_file, Partial};
use crate::release::backup::{Member, MemberKind};
use crate::release::step::Step;
use crate::release::steps::Run;
use crate::release::{human_bytes, secs, ReleaseError};

/// The old and the new database containers.
fn dbs(run: &Run<'_>) -> Result<(String, String, String), ReleaseError> {
    let db = run.r.db()?;
    Ok((
        db.name.clone(),
        run.old.container(&db.name),
        run.new.container(&db.name),
    ))
}

/// The first 64 KiB of a file (a dump's header).
fn head(path: &std::path::Path) -> Result<String, ReleaseError> {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut buf))
        .map_err(|source| ReleaseError::Io {
            what: "read the dump's header".into(),
            path: path.to_path_buf(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The last `bytes` of a file, as text.
fn tail(path: &std::path::Path, bytes: u64) -> Result<String, ReleaseError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| ReleaseError::Io {
        what: "read the delta's end".into(),
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(bytes)))
        .map_err(io)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(io)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `online copy`: the full dump of the active db (writable) into a new set, with its log
/// position, then restored into the new db.
pub async fn copy(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, t) = (run.r, Instant::now());
    let (name, old_db, new_db) = dbs(run)?;
    let mut set = Partial::begin(r.rel, &run.old)?;
    let path = set.dir.join("db.dump");
    let what = format!("online copy {name}");
    let cmd = r.rel.online.dump_cmd();
    let s = command_to_file(&r.engine, &old_db, &cmd, &path, &what, &r.progress).await?;
    r.progress.done(&what, t, s.size);
    let at = mariadb::dump_position(&head(&path)?).ok_or_else(|| {
        ReleaseError::Failed(format!(
            "the dump of {old_db} ({cmd:?}) names no binary log position; it needs --master-data=2 (and the binary log on) for the online flow"
        ))
    })?;
    set.members.push(Member {
        name: name.clone(),
        kind: MemberKind::Db,
        service: name.clone(),
        volume: None,
        mount: None,
        file: "db.dump".into(),
        size: s.size,
        sha256: s.sha256,
        files: None,
        follows: None,
        position: Some(at.to_string()),
    });
    let db = r.db()?;
    let restore_cmd = db.restore.clone().ok_or_else(|| {
        ReleaseError::Failed(format!("service `{}` has no `restore` command", db.name))
    })?;
    let tr = Instant::now();
    let what = format!("restore {name} into {new_db}");
    let n = restore::feed(&r.engine, &new_db, &restore_cmd, &path, &what, &r.progress).await?;
    r.progress.done(&what, tr, n);
    r.progress.line(format_args!(
        "{} done in {}: {} dumped at {at} (sha256 {}…) and restored into {new_db}, the site writable throughout",
        Step::Copy,
        secs(t.elapsed()),
        human_bytes(s.size),
        set.members[0].sha256.get(..12).unwrap_or(""),
    ));
    run.online = Some(State {
        set,
        log_dir: None,
        at,
        last_member: name,
        deltas: 0,
        equal_before: BTreeMap::new(),
        last_round: t.elapsed(),
        last_size: s.size,
    });
    run.db_copied = true;
    Ok(())
}

/// `online catch-up`: deltas until one is under `freeze_below`, or `max_rounds` of them.
pub async fn catch_up(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, t) = (run.r, Instant::now());
    let o = &r.rel.online;
    let mut rounds = 0;
    let last = loop {
        if rounds == o.max_rounds {
            r.progress.line(format_args!(
                "          max_rounds {} reached: freezing with the last delta at {}",
                o.max_rounds,
                human_bytes(state(run)?.last_size)
            ));
            break state(run)?.last_size;
        }
        rounds += 1;
        match ship(run).await? {
            None => break 0,
            Some(n) if n < o.freeze_below => break n,
            Some(_) => {}
        }
    };
    pre_compare(run).await?;
    let st = state(run)?;
    r.progress.line(format_args!(
        "{} done in {}: {} round(s), the new db at {} (last delta {} in {}, under freeze_below {})",
        Step::CatchUp,
        secs(t.elapsed()),
        rounds,
        st.at,
        human_bytes(last),
        secs(st.last_round),
        human_bytes(o.freeze_below)
    ));
    Ok(())
}

fn state<'a>(run: &'a Run<'_>) -> Result<&'a State, ReleaseError> {
    run.online.as_ref().ok_or_else(|| {
        ReleaseError::Failed(
            "the online copy was not made in this run; run `release --abort` and start again"
                .into(),
        )
    })
}

/// One delta: the old db's log from where the new db stands to where the old one is now, into
/// the set (hashed, read back) and applied in the new db. None: nothing changed since.
pub async fn ship(run: &mut Run<'_>) -> Result<Option<u64>, ReleaseError> {
    let r = run.r;
    let (name, old_db, new_db) = dbs(run)?;
    let t = Instant::now();
    let from = state(run)?.at.clone();
    let to: Position = r.log_position(&old_db).await?;
    if to == from {
        let st = run
            .online
            .as_mut()
            .ok_or_else(|| ReleaseError::Failed("no online state".into()))?;
        st.last_size = 0;
        st.last_round = t.elapsed();
        return Ok(None);
    }
    let dir = match state(run)?.log_dir.clone() {
        Some(d) => d,
        None => r.log_dir(&old_db).await?,
    };
    let files = r.log_files(&old_db, &dir, &from, &to).await?;
    let n = state(run)?.deltas + 1;
    let member = format!("{name}-delta-{n}");
    let file = format!("db-delta-{n:04}.sql");
    let path = state(run)?.set.dir.join(&file);
    let cmd = r.rel.online.binlog(&files, from.pos, to.pos);
    let what = format!("delta {n} ({from} → {to})");
    let tool = &r.rel.online.binlog_tool;
    let s = command_to_file(&r.engine, &old_db, &cmd, &path, &what, &r.progress)
        .await
        .map_err(|e| match e {
            ReleaseError::Command { code: 126 | 127, container, .. } => ReleaseError::Failed(format!(
                "reading the binary log for {what}: `{tool}` cannot be run in {container} (exit code 126/127: not in the image?); set `binlog_tool` in [site.release.online] to the image's binlog reader (mariadb-binlog, or mysqlbinlog in older images)"
            )),
            ReleaseError::Command { code, container, output, .. } => ReleaseError::Failed(format!(
                "reading the binary log with `{tool}` for {what} failed in {container} with exit code {code}: {output}"
            )),
            e => e,
        })?;
    let read = t.elapsed();
    // A delta that stops short of `to` would lose changes silently (and would hide a table the
    // window must compare): it must end exactly there.
    let ends = mariadb::last_end_pos(&tail(&path, 1 << 20)?);
    if ends != Some(to.pos) {
        return Err(ReleaseError::Failed(format!(
            "{what} read by `{tool}` ends at {}, not at {to}: the binary log was not complete when read; nothing was switched, release again",
            ends.map_or("no event".to_string(), |p| p.to_string())
        )));
    }
    restore::apply_delta(&r.engine, r.rel, &new_db, &path, &member, &r.progress).await?;
    let st = run
        .online
        .as_mut()
        .ok_or_else(|| ReleaseError::Failed("no online state".into()))?;
    st.set.members.push(Member {
        name: member.clone(),
        kind: MemberKind::DbDelta,
        service: name,
        volume: None,
        mount: None,
        file,
        size: s.size,
        sha256: s.sha256,
        files: None,
        follows: Some(st.last_member.clone()),
        position: Some(to.to_string()),
    });
    st.last_member = member;
    st.log_dir = Some(dir);
    st.at = to;
    st.deltas = n;
    st.last_round = t.elapsed();
    st.last_size = s.size;
    r.progress.line(format_args!(
        "          {what}: {} read in {}, applied in {}",
        human_bytes(s.size),
        secs(read),
        secs(st.last_round.saturating_sub(read))
    ));
    Ok(Some(s.size))
}

/// Still writable, at the end of the catch-up: every table on both sides; the equal ones are
/// kept (see the module doc), so the window compares only what changed since.
async fn pre_compare(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let r = run.r;
    let (_, old_db, new_db) = dbs(run)?;
    let t = Instant::now();
    let none = BTreeSet::new();
    let (old, new) = tokio::join!(r.checksums(&old_db, &none), r.checksums(&new_db, &none));
    let (old, new) = (old?, new?);
    let equal: BTreeMap<String, String> = old
        .into_iter()
        .filter(|(t, c)| new.get(t) == Some(c))
        .collect();
    r.progress.line(format_args!(
        "          pre-compare (writable): {} of {} table(s) equal on both sides ({})",
        equal.len(),
        new.len(),
        secs(t.elapsed())
    ));
    if let Some(st) = run.online.as_mut() {
        st.equal_before = equal;
    }
    Ok(())
}

/// Inside the window (read-only on): the last delta, then the tables compared on both sides:
/// every one but those equal at the pre-compare that the last delta does not touch. The
/// checksums, equal, are returned for the manifest.
pub async fn last_delta(run: &mut Run<'_>) -> Result<BTreeMap<String, String>, ReleaseError> {
    let r = run.r;
    let (_, old_db, new_db) = dbs(run)?;
    let shipped = ship(run).await?;
    let st = state(run)?;
    let touched = match (shipped, st.set.members.last()) {
        (Some(_), Some(m)) => {
            let path = st.set.dir.join(&m.file);
            let text = std::fs::read_to_string(&path).map_err(|source| ReleaseError::Io {
                what: "read the last delta".into(),
                path,
                source,
            })?;
            mariadb::touched(&text)
        }
        _ => Some(BTreeSet::new()),
    };
    let skip: BTreeSet<String> = match &touched {
        Some(_) if r.rel.online.compare_all => BTreeSet::new(),
        Some(t) => st
            .equal_before
            .keys()
            .filter(|k| !t.contains(*k))
            .cloned()
            .collect(),
        None => BTreeSet::new(),
    };
    let t = Instant::now();
    let (old, new) = tokio::join!(r.checksums(&old_db, &skip), r.checksums(&new_db, &skip));
    let (mut old, new) = (old?, new?);
    let diff = mariadb::differences(&old, &new, 5);
    if !diff.is_empty() {
        return Err(ReleaseError::Failed(format!(
            "the new database differs from the active one after the last delta ({}); stopped before the switch: the active environment keeps serving. Did something write to the database past the proxy (a cron job, a queue)?",
            diff.join("; ")
        )));
    }
    r.progress.line(format_args!(
        "          tables equal: CHECKSUM TABLE of {} table(s) the same on both sides ({}); {} unchanged since the pre-compare{}",
        old.len(),
        secs(t.elapsed()),
        skip.len(),
        if touched.is_none() { " (the last delta changes a table's definition: all compared)" } else { "" }
    ));
    for k in &skip {
        if let Some(c) = st.equal_before.get(k) {
            old.insert(k.clone(), c.clone());
        }
    }
    Ok(old)
}
