//! The entry points of `release` (start, `--resume`, `--abort`) and the driver that walks a plan:
//! for each step, enter it in the journal, then run it; Ctrl-C or SIGTERM is raced against the
//! walk, and any failure runs the failure path (`unwind.rs`). Which plan to walk is decided in
//! `step.rs`.

use super::backup;
use super::context::Release;
use super::docker::EnvId;
use super::journal::{self, Journal};
use super::plan::{self, Resume};
use super::step::Step;
use super::steps::{self, Run};
use super::sync;
use super::unwind::unwind;
use super::{interrupted, ReleaseError};
use crate::config::{Config, Flow};
use crate::control::client::Client;

/// `release SITE --version V`: preflight, the choice of flow, then its steps. With `plan_only`
/// (`--plan`): the preflight and the choice, printed; nothing is changed.
pub async fn start(
    cfg: &Config,
    client: &Client,
    site: &str,
    version: &str,
    prefix: Option<&str>,
    plan_only: bool,
) -> Result<(), ReleaseError> {
    let _lock = match plan_only {
        true => None,
        false => Some(journal::lock(cfg, site, "release")?),
    };
    let r = Release::open(cfg, client, site, prefix).await?;
    // After a restart the active pool is stale, and the preflight below would refuse.
    if !plan_only {
        sync::before(&r, prefix.is_some()).await;
    }
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
    // On a swarm the env's web answers on several addresses: one of them in the pool will do.
    let serving = env
        .web_addrs
        .iter()
        .any(|a| pool.contains(&a.to_string().as_str()));
    if let (Some(a), false) = (env.web_addr, serving) {
        return Err(ReleaseError::Failed(format!(
            "the active pool of {site} ({from}: {}) does not point at {}-{from}-{} ({a}); the environment to back up is not the one serving. Fix the pool (`switchyard pool set`) or pass the right --prefix",
            if pool.is_empty() { "empty".to_string() } else { pool.join(" ") },
            r.prefix,
            r.rel.web
        )));
    }
    // Every data volume must be there to be backed up, before anything changes.
    let old = r.env(from, &env.version);
    backup::take::check_sources(&r.engine, r.rel, &old).await?;
    let choice = choose_flow(&r, &old).await?;
    let head = format!(
        "release of {site} from {from} ({}) to {to} ({version}), prefix {}",
        env.version, r.prefix
    );
    if plan_only {
        print!("{}", plan_text(&r, &head, &choice));
        return Ok(());
    }
    let mut j = Journal::new(
        site,
        &r.prefix,
        from,
        to,
        Some(env.version.clone()),
        version,
    );
    j.flow = choice.flow;
    r.progress.line(&head);
    r.progress
        .line(format_args!("flow {}: {}", choice.flow, choice.why));
    drive(&r, j, plan::start_plan(choice.flow)).await
}

/// The flow the config asks for, given what the active database (in `old`) says.
async fn choose_flow(r: &Release<'_>, old: &EnvId) -> Result<plan::Choice, ReleaseError> {
    let asked = r.rel.flow;
    let binlog = match asked {
        Flow::Freeze => Err("not asked".to_string()),
        Flow::Online | Flow::Auto => r
            .binlog(&old.container(&r.db()?.name))
            .await
            .map_err(|e| e.to_string()),
    };
    plan::choose(asked, binlog.as_ref().map_err(String::as_str)).map_err(ReleaseError::Failed)
}

/// What `release --plan` prints: where the release goes, the flow and why, the steps.
fn plan_text(r: &Release<'_>, head: &str, c: &plan::Choice) -> String {
    let mut out = format!("{head}\nflow: {}\n  why: {}\nsteps:\n", c.flow, c.why);
    for s in plan::start_plan(c.flow) {
        let what = match (c.flow, s) {
            (_, Step::Create) => "the new environment, its web not started (writable)",
            (_, Step::Copy) => "mariadb-dump --single-transaction --master-data=2 into the set and the new db (writable)",
            (_, Step::CatchUp) => "binlog deltas into the set and the new db until one is small (writable)",
            (_, Step::ReadOnly) => "read-only on at the edge (and app_read_only.on): the window starts",
            (Flow::Online, Step::Backup) => "the last delta, CHECKSUM TABLE on both sides, the data volumes, the manifest",
            (_, Step::Backup) => "the dump and the data volumes into a verified set",
            (Flow::Online, Step::Restore) => "the data volumes into the new env (its db is already there)",
            (_, Step::Restore) => "the set into the new env",
            (_, Step::Migrate) => "the new web starts, the migration runs",
            (_, Step::Switch) => "health, switch, read-only off: the window ends",
        };
        out.push_str(&format!("  {s}: {what}\n"));
    }
    if c.flow == Flow::Online {
        out.push_str(&format!(
            "  ({})\n",
            super::online::mariadb::describe(&r.rel.online)
        ));
    }
    out.push_str("nothing was changed (--plan)\n");
    out
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
    let flow = j.flow;
    drive(&r, j, how.plan(flow)).await
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
        run.r.engine.check_nodes().await?;
        steps::run(step, run).await?;
    }
    steps::finish(run).await
}
