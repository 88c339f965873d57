//! The entry points of `release` (start, `--resume`, `--abort`) and the driver that walks a plan:
//! for each step, enter it in the journal, then run it; Ctrl-C or SIGTERM is raced against the
//! walk, and any failure runs the failure path (`unwind.rs`). Which plan to walk is decided in
//! `step.rs`.

use super::backup;
use super::context::Release;
use super::journal::{self, Journal};
use super::plan::{self, Resume};
use super::step::Step;
use super::steps::{self, Run};
use super::sync;
use super::unwind::unwind;
use super::{interrupted, ReleaseError};
use crate::config::Config;
use crate::control::client::Client;

/// `release SITE --version V`: preflight, then the six steps.
pub async fn start(
    cfg: &Config,
    client: &Client,
    site: &str,
    version: &str,
    prefix: Option<&str>,
) -> Result<(), ReleaseError> {
    let _lock = journal::lock(cfg, site, "release")?;
    let r = Release::open(cfg, client, site, prefix).await?;
    // After a restart the active pool is stale, and the preflight below would refuse.
    sync::before(&r, prefix.is_some()).await;
    if let Some(j) = journal::load(cfg, site)? {
        return Err(ReleaseError::Failed(format!(
            "an unfinished release of {} (to version {} on {}, at step {}) is recorded in {}; run `switchyard release {} --resume` or `--abort` first",
            j.site,
            j.to_version,
            j.to,
            j.step,
            journal::path(cfg, &j.site).display(),
            j.site
        )));
    }
    // Preflight: nothing changes until all of this holds.
    r.engine.check_images(r.rel, version).await?;
    r.db()?;
    let st = r.status().await?;
    let from = st.active;
    let to = from.other();
    let Some(env) = r.find_env(from).await?.filter(|e| e.running()) else {
        return Err(ReleaseError::Failed(format!(
            "no running environment {}-{from} for the active color of {site}; create it with `switchyard up {site} --version V --color {from}`",
            r.prefix
        )));
    };
    let pool: Vec<&str> = st
        .pools
        .get(&from)
        .map(|p| p.iter().map(|b| b.addr.as_str()).collect())
        .unwrap_or_default();
    if let Some(a) = env.web_addr {
        if !pool.contains(&a.to_string().as_str()) {
            return Err(ReleaseError::Failed(format!(
                "the active pool of {site} ({from}: {}) does not point at {}-{from}-{} ({a}); the environment to back up is not the one serving. Fix the pool (`switchyard pool set`) or pass the right --prefix",
                if pool.is_empty() { "empty".to_string() } else { pool.join(" ") },
                r.prefix,
                r.rel.web
            )));
        }
    }
    // Every data volume must be there to be backed up, before anything changes.
    backup::take::check_sources(&r.engine, r.rel, &r.env(from, &env.version)).await?;
    let j = Journal::new(
        site,
        &r.prefix,
        from,
        to,
        Some(env.version.clone()),
        version,
    );
    r.progress.line(format_args!(
        "release of {site} from {from} ({}) to {to} ({version}), prefix {}",
        env.version, r.prefix
    ));
    drive(&r, j, plan::start_plan()).await
}

/// The unfinished release of `site`, and the release opened on the prefix it was started with
/// (unless `prefix` overrides it).
async fn unfinished<'a>(
    cfg: &'a Config,
    client: &'a Client,
    site: &str,
    prefix: Option<&str>,
    what: &str,
) -> Result<(Release<'a>, Journal), ReleaseError> {
    let Some(j) = journal::load(cfg, site)? else {
        return Err(ReleaseError::Failed(format!(
            "no unfinished release of {site} to {what} (no journal at {})",
            journal::path(cfg, site).display()
        )));
    };
    let r = Release::open(cfg, client, site, Some(prefix.unwrap_or(&j.prefix))).await?;
    Ok((r, j))
}

/// `release SITE --resume`: continues an unfinished release after a crash or a failed clean-up.
pub async fn resume(
    cfg: &Config,
    client: &Client,
    site: &str,
    prefix: Option<&str>,
) -> Result<(), ReleaseError> {
    let _lock = journal::lock(cfg, site, "release")?;
    let (r, mut j) = unfinished(cfg, client, site, prefix, "resume").await?;
    sync::before(&r, false).await;
    j.pid = std::process::id();
    let st = r.status().await?;
    // Only worth the work when the answer can depend on it.
    let backup_verifies = st.active == j.from && st.read_only && backup_verifies(&r, &j).await?;
    let how = plan::resume(&j, st.active, st.read_only, backup_verifies)?;
    match how {
        Resume::Finish => r.progress.line(format_args!(
            "{site} already serves {} ({}); finishing",
            j.to, j.to_version
        )),
        Resume::FromRestore => {
            r.engine.check_images(r.rel, &j.to_version).await?;
            r.progress.line(format_args!(
                "read-only is still on and backup {} verifies: resuming with a fresh {} environment, then restore",
                j.backup.as_deref().unwrap_or(""),
                j.to
            ));
        }
        Resume::Restart => {
            r.engine.check_images(r.rel, &j.to_version).await?;
            r.progress.line("read-only was lifted or the backup is gone: starting again from step 1 (with a fresh backup)");
            j.forget_backup();
        }
    }
    drive(&r, j, how.plan()).await
}

/// Whether the journal's backup set is still there, verifies member by member and covers this
/// config's data (else why not, printed, so the set is never restored).
async fn backup_verifies(r: &Release<'_>, j: &Journal) -> Result<bool, ReleaseError> {
    let Some(id) = &j.backup else {
        return Ok(false);
    };
    let Some(set) = backup::set::find(&backup::site_dir(r.rel, r.name()), id)? else {
        r.progress
            .line(format_args!("backup set {id} of the journal is gone"));
        return Ok(false);
    };
    match backup::restore::check(r.rel, &set, &r.progress).await {
        Ok(_) => Ok(true),
        Err(e) => {
            r.progress.line(format_args!("{e}"));
            Ok(false)
        }
    }
}

/// `release SITE --abort`: the failure path, run on purpose.
pub async fn abort(
    cfg: &Config,
    client: &Client,
    site: &str,
    prefix: Option<&str>,
) -> Result<(), ReleaseError> {
    let _lock = journal::lock(cfg, site, "release")?;
    let (r, j) = unfinished(cfg, client, site, prefix, "abort").await?;
    sync::before(&r, false).await;
    let (notes, clean) = unwind(&r, &j).await;
    for n in &notes {
        r.progress.line(format_args!("abort: {n}"));
    }
    if !clean {
        return Err(ReleaseError::Failed(format!("the abort of {site}'s release did not finish (see above); fix the cause and run `--abort` again")));
    }
    r.progress.line(format_args!(
        "release of {site} to {} aborted",
        j.to_version
    ));
    Ok(())
}

/// Walks `plan`, racing Ctrl-C / SIGTERM; on any failure runs the failure path and names the step.
async fn drive(r: &Release<'_>, journal: Journal, plan: &[Step]) -> Result<(), ReleaseError> {
    let mut run = Run::new(r, journal);
    let walked = tokio::select! {
        w = walk(&mut run, plan) => w,
        _ = interrupted() => Err(ReleaseError::Interrupted),
    };
    let Err(e) = walked else { return Ok(()) };
    // The walk is over (or dropped mid-step): the journal holds everything it recorded.
    let j = run.journal;
    r.progress
        .line(format_args!("step {} failed: {e}; undoing", j.step));
    let (cleanup, _) = unwind(r, &j).await;
    Err(ReleaseError::StepFailed {
        site: j.site.clone(),
        step: j.step,
        reason: e.to_string(),
        cleanup,
    })
}

async fn walk(run: &mut Run<'_>, plan: &[Step]) -> Result<(), ReleaseError> {
    for &step in plan {
        run.enter(step)?;
        steps::run(step, run).await?;
    }
    steps::finish(run).await
}
