//! `backups drill SITE [--set ID] [--offsite]`: proves that a set can be brought back, by doing
//! it. The set (local, or restored from the off-site repository into a scratch folder) is
//! restored into a scratch environment `{prefix}-drill-{color}-*`: its own network and volumes,
//! never in a pool, never routed, never the active or the idle environment. There it goes through
//! what a release does with a set (`Release::create`, `backup::restore`, the web started, the
//! health check on its published port), plus `verify_restore`, whose output must be what it
//! printed when the set was taken (the manifest's `verify_restore`). The result is recorded
//! (`.drill.json`, the audit log through the daemon, `status`' `last_drill`) and the scratch
//! environment removed, whatever happened (a failure, Ctrl-C).
//!
//! What a drill catches that `backups verify` cannot: a set whose files hash as the manifest
//! says but that does not restore (a dump cut short when it was taken, an archive the engine
//! refuses), or restores into a database that is not the one backed up.

use std::time::Instant;

use super::backup::offsite::{self, record, Scratch};
use super::backup::{self, set, Set};
use super::context::Release;
use super::docker::EnvId;
use super::{human_bytes, journal, secs, ReleaseError};
use crate::config::{Color, Config};
use crate::control::api::{BackupEvent, DrillStatus};
use crate::control::client::Client;

/// Where the set of a drill comes from.
pub struct Source<'a> {
    pub set: Option<&'a str>,
    pub offsite: bool,
}

/// Runs a drill and records it; `Ok` with `ok: false` when the drill ran and failed (a set that
/// cannot be had, from the repository or locally, is a failed drill too).
pub async fn drill(
    cfg: &Config,
    client: &Client,
    site: &str,
    src: Source<'_>,
    json: bool,
) -> Result<DrillStatus, ReleaseError> {
    let _lock = journal::lock(cfg, site, "backups drill")?;
    let mut r = Release::open(cfg, client, site, None).await?;
    if json {
        r.progress = super::Progress::on_stderr();
    }
    let t = Instant::now();
    let site_dir = backup::site_dir(r.rel, site);
    // An off-site set is restored next to the local ones, in a folder removed afterwards.
    let scratch = Scratch(site_dir.join(".drill.partial"));
    let (set, size, checks, error) = match choose(&r, &src, &scratch).await {
        Err(e) => {
            let id = src.set.unwrap_or("-").to_string();
            (id, 0, Vec::new(), Some(format!("no set to drill: {e}")))
        }
        Ok(set) => {
            let size = set.manifest.as_ref().map(|m| m.size()).unwrap_or(0);
            let (checks, error) = in_scratch(&r, &set).await;
            (set.id, size, checks, error)
        }
    };
    let status = DrillStatus {
        time: crate::state::now_rfc3339(),
        ok: error.is_none(),
        error,
        set,
        source: if src.offsite { "offsite" } else { "local" }.into(),
        size,
        duration_s: t.elapsed().as_secs_f64(),
        checks,
    };
    if let Err(e) = record::write_last_drill(&site_dir, &status) {
        r.progress
            .line(format_args!("note: cannot record the drill: {e}"));
    }
    offsite::report(
        client,
        site,
        BackupEvent::Drill(status.clone()),
        &r.progress,
    )
    .await;
    Ok(status)
}

/// The set in a scratch environment, which is removed afterwards whatever happened (a failure,
/// Ctrl-C): what was checked, and the first thing that failed.
async fn in_scratch(r: &Release<'_>, set: &Set) -> (Vec<String>, Option<String>) {
    let m = match &set.manifest {
        Ok(m) => m,
        Err(e) => return (Vec::new(), Some(format!("set {}: {e}", set.id))),
    };
    let env = EnvId {
        site: r.name().to_string(),
        prefix: format!("{}-drill", r.prefix),
        color: Color::parse(&m.color).unwrap_or(Color::Blue),
        version: m.version.clone(),
    };
    r.progress.line(format_args!(
        "drill of {}: set {} ({}, {} member(s), version {}) into {}-{}-* on network {}",
        r.name(),
        set.id,
        human_bytes(m.size()),
        m.members.len(),
        m.version,
        env.prefix,
        env.color,
        env.network()
    ));
    let mut checks = Vec::new();
    let outcome = tokio::select! {
        o = exercise(r, &env, set, &mut checks) => o,
        _ = super::interrupted() => Err(ReleaseError::Interrupted),
    };
    let mut error = outcome.err().map(|e| e.to_string());
    match r.engine.remove_env(&env, Some(r.rel)).await {
        Ok(()) => r.progress.line(format_args!(
            "removed the scratch environment {}-{}-*",
            env.prefix, env.color
        )),
        Err(e) => {
            let note = format!("the scratch environment {}-{}-* could not be removed ({e}); remove it with `docker rm -f` and `docker network rm {}`", env.prefix, env.color, env.network());
            r.progress.line(format_args!("WARNING: {note}"));
            error.get_or_insert(note);
        }
    }
    (checks, error)
}

/// The set to drill: from the repository (into `scratch`), or the local one named, or the newest
/// local one.
async fn choose(r: &Release<'_>, src: &Source<'_>, scratch: &Scratch) -> Result<Set, ReleaseError> {
    if src.offsite {
        let o = offsite::config(r.cfg)?;
        let snap = offsite::pick(o, r.name(), src.set).await?;
        let _ = std::fs::remove_dir_all(&scratch.0);
        return offsite::fetch(o, &snap, &scratch.0, &r.progress).await;
    }
    let dir = backup::site_dir(r.rel, r.name());
    let sets = set::list(&dir)?;
    let found = match src.set {
        Some(id) => sets.into_iter().find(|s| s.id == id),
        None => sets.into_iter().find(|s| s.manifest.is_ok()),
    };
    found.ok_or_else(|| {
        ReleaseError::Failed(match src.set {
            Some(id) => format!(
                "no set {id} in {}; `switchyard backups list {}` shows the sets there (or add --offsite)",
                dir.display(),
                r.name()
            ),
            None => format!(
                "no complete backup set of {} in {}; `switchyard backup {}` takes one",
                r.name(),
                dir.display(),
                r.name()
            ),
        })
    })
}

/// Create, restore, verify, start, health: what a release does with a set, in the scratch env.
async fn exercise(
    r: &Release<'_>,
    env: &EnvId,
    set: &Set,
    checks: &mut Vec<String>,
) -> Result<(), ReleaseError> {
    r.engine.check_images(r.rel, &env.version).await?;
    // A drill cut off before (a crash) may have left its environment: start clean.
    r.engine.remove_env(env, Some(r.rel)).await?;
    let t = Instant::now();
    r.create(env, false).await?;
    r.progress
        .line(format_args!("created in {}", secs(t.elapsed())));
    let t = Instant::now();
    let restored = backup::restore::restore(&r.engine, r.rel, env, set, &r.progress).await?;
    checks.push(format!(
        "restored {} in {} ({})",
        human_bytes(restored.bytes),
        secs(t.elapsed()),
        restored.lines.join("; ")
    ));
    r.progress
        .line(format_args!("{}", checks[checks.len() - 1]));
    if let Some(v) = &r.rel.verify_restore {
        let db = r.db()?;
        let got = r
            .run_ok(&env.container(&db.name), v, "verify_restore in the drill")
            .await?
            .stdout_text
            .trim()
            .to_string();
        let want = set
            .manifest
            .as_ref()
            .ok()
            .and_then(|m| m.verify_restore.clone());
        let line = match want {
            Some(w) if w != got => {
                return Err(ReleaseError::Failed(format!(
                    "verify_restore printed {got:?} on the restored set but {w:?} when set {} was taken: the set does not bring back what was backed up",
                    set.id
                )))
            }
            Some(_) => format!("verify_restore ok, as when taken ({})", first_line(&got)),
            None => format!(
                "verify_restore ok ({}); nothing recorded to compare with (the set was not taken read-only)",
                first_line(&got)
            ),
        };
        r.progress.line(format_args!("{line}"));
        checks.push(line);
    }
    r.engine.start_service(env, &r.rel.web).await?;
    let t = Instant::now();
    let addr = r
        .web_ready(env)
        .await?
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let line = format!(
        "{} healthy at {addr} after {} (never in a pool)",
        env.container(&r.rel.web),
        secs(t.elapsed())
    );
    r.progress.line(format_args!("{line}"));
    checks.push(line);
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("no output")
}
