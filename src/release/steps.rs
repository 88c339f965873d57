//! One function per step of a release, in order, and [`finish`] once the plan is walked. Each
//! takes the [`Run`]: the release, its journal and the two environments. Every change to the
//! proxy goes through the control socket, every change to containers through the engine; the
//! journal is saved by the driver as each step is entered, and by a step when it learns
//! something a later step or a resume needs (the backup set).

use std::time::Instant;

use super::backup;
use super::context::Release;
use super::docker::EnvId;
use super::journal::{self, Journal};
use super::online;
use super::step::{Effect, Step};
use super::{human_bytes, secs, ReleaseError};
use crate::config::Flow;

/// One walk of a plan: the release, its journal (the state of the release), the active ("old")
/// and the new environment, and how long this walk kept the site read-only (for the summary).
pub struct Run<'a> {
    pub r: &'a Release<'a>,
    pub journal: Journal,
    pub old: EnvId,
    pub new: EnvId,
    pub read_only_since: Option<Instant>,
    pub read_only_window: Option<std::time::Duration>,
    /// The online flow's set in the making and log position (from its copy step on).
    pub online: Option<online::State>,
    /// The new db already holds the set's dump and deltas (copied online): step 4 restores only
    /// the volumes.
    pub db_copied: bool,
}

impl<'a> Run<'a> {
    pub fn new(r: &'a Release<'a>, journal: Journal) -> Run<'a> {
        Run {
            old: r.env(journal.from, journal.from_version.as_deref().unwrap_or("")),
            new: r.env(journal.to, &journal.to_version),
            r,
            journal,
            read_only_since: None,
            read_only_window: None,
            online: None,
            db_copied: false,
        }
    }

    /// Records `step` (and what it may leave behind) in the journal on disk, then announces it.
    pub fn enter(&mut self, step: Step) -> Result<(), ReleaseError> {
        self.journal.enter(step, self.r.rel.app_read_only.is_some());
        self.save()?;
        self.r.progress.line(format_args!("{step} …"));
        Ok(())
    }

    pub fn save(&mut self) -> Result<(), ReleaseError> {
        journal::save(self.r.cfg, &mut self.journal)
    }

    /// Records that `e` was undone, so the failure path does not undo it again.
    fn undone(&mut self, e: Effect) -> Result<(), ReleaseError> {
        self.journal.effects.remove(&e);
        self.save()
    }
}

/// Runs one step.
pub async fn run(step: Step, run: &mut Run<'_>) -> Result<(), ReleaseError> {
    match step {
        Step::Create => create(run).await,
        Step::Copy => online::flow::copy(run).await,
        Step::CatchUp => online::flow::catch_up(run).await,
        Step::ReadOnly => read_only(run).await,
        Step::Backup => backup(run).await,
        Step::Restore => restore(run).await,
        Step::Migrate => migrate(run).await,
        Step::Switch => switch(run).await,
    }
}

/// 1: the idle color's environment with the new version; its web container is created but not
/// started (step 5 starts it on restored data).
async fn create(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, t) = (run.r, Instant::now());
    let to = run.journal.to;
    // The old idle environment (if any) goes: empty its pool first so nothing routes to it.
    r.set_pool(to, Vec::new()).await?;
    if let Some(e) = r.find_env(to).await? {
        r.progress.line(format_args!(
            "          removing the previous {to} environment ({}, version {})",
            e.prefix, e.version
        ));
    }
    r.engine.remove_env(&run.new, Some(r.rel)).await?;
    r.create(&run.new, false).await?;
    r.progress.line(format_args!(
        "{} done in {}: {}-{}-* on network {} with version {}",
        Step::Create,
        secs(t.elapsed()),
        run.new.prefix,
        run.new.color,
        run.new.network(),
        run.new.version
    ));
    Ok(())
}

/// 2: read-only on at the edge (answers once no write is in flight), then `app_read_only.on`
/// in the active web. `Retry-After` is the expected rest of the window when the online flow
/// can tell it, else 60 s.
async fn read_only(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, t) = (run.r, Instant::now());
    let retry = match &run.online {
        Some(o) => o.retry_after_s(),
        None => super::plan::freeze_retry_after_s(last_backup_took(r)),
    };
    let answer = r
        .read_only_for(true, &run.journal.to_version, retry)
        .await?;
    run.read_only_since = Some(Instant::now());
    if let Some((on, _)) = &r.rel.app_read_only {
        r.run_ok(&run.old.container(&r.rel.web), on, "app_read_only.on")
            .await?;
    }
    r.progress.line(format_args!(
        "{} done in {} (writes in flight drained in {} ms; Retry-After {retry} s)",
        Step::ReadOnly,
        secs(t.elapsed()),
        answer.drained_ms
    ));
    Ok(())
}

/// How long the newest set of the site took to take (its manifest's first to last time).
fn last_backup_took(r: &Release<'_>) -> Option<std::time::Duration> {
    let sets = backup::list(r.rel, r.name()).ok()?;
    let m = sets.iter().find_map(|s| s.manifest.as_ref().ok())?;
    let from = humantime::parse_rfc3339_weak(&m.taken_at).ok()?;
    let to = humantime::parse_rfc3339_weak(&m.verified_at).ok()?;
    to.duration_since(from).ok()
}

/// 3: a verified backup set of the active environment (the dump and every data volume), and what
/// `verify_restore` prints on the active database. In the online flow the set already holds the
/// dump and the deltas: the last delta is shipped, the tables compared, then the volumes taken.
async fn backup(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, t) = (run.r, Instant::now());
    let set = match run.journal.flow {
        Flow::Online => {
            let tables = online::flow::last_delta(run).await?;
            let mut st = run.online.take().ok_or_else(|| {
                ReleaseError::Failed("the online copy was not made in this run; run `release --abort` and start again".into())
            })?;
            let volumes: Vec<_> = backup::take::plan(r.rel)
                .into_iter()
                .filter(|p| p.kind == backup::MemberKind::Volume)
                .collect();
            st.set.take(&r.engine, &volumes, &r.progress).await?;
            let verify = backup::take::expected_verify(&r.engine, r.rel, &run.old).await;
            st.set.finish(true, Some(tables), verify)?
        }
        Flow::Freeze | Flow::Auto => {
            backup::take::take(&r.engine, r.rel, &run.old, &r.progress, true).await?
        }
    };
    run.journal.backup = Some(set.id.clone());
    if let Some(v) = &r.rel.verify_restore {
        let db = r.db()?;
        let out = r
            .run_ok(
                &run.old.container(&db.name),
                v,
                "verify_restore on the active database",
            )
            .await?;
        run.journal.verify_expected = Some(out.stdout_text.trim().to_string());
    }
    run.save()?;
    backup::offsite::for_release(r, Some(&set.id)).await?;
    let members = match &set.manifest {
        Ok(m) => m
            .members
            .iter()
            .map(|m| match &m.files {
                Some(f) => format!(
                    "{} {} ({} files)",
                    m.name,
                    human_bytes(m.size),
                    f.regular_files
                ),
                None => format!(
                    "{} {} sha256 {}…",
                    m.name,
                    human_bytes(m.size),
                    m.sha256.get(..12).unwrap_or("")
                ),
            })
            .collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    let size = set.manifest.as_ref().map(|m| m.size()).unwrap_or(0);
    r.progress.line(format_args!(
        "{} done in {}: {} verified in {} member(s) ({}) {}",
        Step::Backup,
        secs(t.elapsed()),
        human_bytes(size),
        members.len(),
        members.join(", "),
        set.dir.display()
    ));
    Ok(())
}

/// 4: the set into the new environment (refused whole before anything is written when a member
/// does not verify); `verify_restore` must print what it printed on the old database.
async fn restore(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, t) = (run.r, Instant::now());
    let Some(id) = run.journal.backup.as_deref() else {
        return Err(ReleaseError::Failed(
            "the journal names no backup to restore; run `release --abort` and start again".into(),
        ));
    };
    let dir = backup::site_dir(r.rel, r.name());
    let set = backup::set::find(&dir, id)?.ok_or_else(|| {
        ReleaseError::Failed(format!(
            "backup set {id} is not in {}; run `release --abort` and start again",
            dir.display()
        ))
    })?;
    // A resume after a crash in step 3 comes here without step 3's copy: `required` still holds.
    backup::offsite::for_release(r, Some(&set.id)).await?;
    let restored = backup::restore::restore_parts(
        &r.engine,
        r.rel,
        &run.new,
        &set,
        &r.progress,
        !run.db_copied,
    )
    .await?;
    let mut checked = String::new();
    if let Some(v) = &r.rel.verify_restore {
        let db = r.db()?;
        let got = r
            .run_ok(
                &run.new.container(&db.name),
                v,
                "verify_restore on the new database",
            )
            .await?
            .stdout_text
            .trim()
            .to_string();
        let want = run.journal.verify_expected.clone().unwrap_or_default();
        if got != want {
            return Err(ReleaseError::Failed(format!(
                "verify_restore printed {got:?} on the new database but {want:?} on the active one: the restore is incomplete"
            )));
        }
        checked = format!(
            ", verify_restore ok ({})",
            got.lines().next().unwrap_or("no output")
        );
    }
    r.progress.line(format_args!(
        "{} done in {}: {} restored ({}){checked}",
        Step::Restore,
        secs(t.elapsed()),
        human_bytes(restored.bytes),
        restored.lines.join("; ")
    ));
    Ok(())
}

/// 5: the new web starts (on restored data), then the `migrate` command runs.
async fn migrate(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, t) = (run.r, Instant::now());
    r.engine.start_service(&run.new, &r.rel.web).await?;
    let Some((svc, cmd)) = r.migrate_service() else {
        r.progress.line(format_args!(
            "{} skipped: no `migrate` command",
            Step::Migrate
        ));
        return Ok(());
    };
    let out = r
        .run_ok(&run.new.container(svc), cmd, "the migration")
        .await?;
    let said = out.output_tail.lines().last().unwrap_or("");
    r.progress.line(format_args!(
        "{} done in {}{}",
        Step::Migrate,
        secs(t.elapsed()),
        if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        }
    ));
    Ok(())
}

/// 6: once the new web is healthy on its published port, its pool is set and the site switched
/// (unless the daemon already serves it: a resume); then read-only goes off, app and edge.
async fn switch(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, t) = (run.r, Instant::now());
    let (from, to) = (run.journal.from, run.journal.to);
    let st = r.status().await?;
    if st.active != to {
        let addrs = r.web_ready(&run.new).await?;
        let healthy_in = t.elapsed();
        let pool: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let addr = pool.join(" ");
        r.set_pool(to, pool).await?;
        // The writes the active color took are all in the backup restored into the new env
        // (read-only has been on since before it was taken), so none is discarded.
        r.switch(to, true).await?;
        r.progress.line(format_args!(
            "          {} healthy at {addr} after {}; switched {from} → {to}",
            run.new.container(&r.rel.web),
            secs(healthy_in),
        ));
    }
    if run.journal.did(Effect::AppReadOnly) {
        if let Some((_, off)) = &r.rel.app_read_only {
            r.run_ok(&run.old.container(&r.rel.web), off, "app_read_only.off")
                .await?;
        }
        run.undone(Effect::AppReadOnly)?;
    }
    if run.journal.did(Effect::ReadOnly) || st.read_only {
        r.read_only(false, &run.journal.to_version).await?;
        run.read_only_window = run.read_only_since.map(|s| s.elapsed());
        run.undone(Effect::ReadOnly)?;
    }
    r.progress.line(format_args!(
        "{} done in {}",
        Step::Switch,
        secs(t.elapsed())
    ));
    Ok(())
}

/// After the last step: the journal goes, old backups are pruned, the summary is printed.
pub async fn finish(run: &mut Run<'_>) -> Result<(), ReleaseError> {
    let (r, j) = (run.r, &run.journal);
    journal::remove(r.cfg, r.name())?;
    match backup::prune(r.cfg, r.rel, r.name(), r.rel.keep_backups).await {
        Ok(p) if !p.removed.is_empty() || !p.unsent.is_empty() => r.progress.line(format_args!(
            "pruned {} old backup set(s), kept {} (and {} not off-site yet)",
            p.removed.len(),
            p.kept.len(),
            p.unsent.len()
        )),
        Ok(_) => {}
        Err(e) => r
            .progress
            .line(format_args!("note: pruning old backups failed: {e}")),
    }
    // Never an error here: the release is done (a failed copy is printed and recorded).
    if let Err(e) = backup::offsite::for_release(r, None).await {
        r.progress
            .line(format_args!("WARNING: the off-site copy did not run: {e}"));
    }
    r.progress.line(format_args!(
        "release of {} done: {} serves version {}; {} ({}) is kept for `switchyard rollback {}`",
        r.name(),
        j.to,
        j.to_version,
        j.from,
        j.from_version.as_deref().unwrap_or("?"),
        r.name()
    ));
    if let Some(w) = run.read_only_window {
        r.progress
            .line(format_args!("read-only window: {:.3}s", w.as_secs_f64()));
    }
    Ok(())
}
