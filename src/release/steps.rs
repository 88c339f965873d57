//! The six steps of a release and its failure path (see the LIFECYCLE in `mod.rs`), plus `up`.
//!
//! Every change to the proxy goes through the control socket; every change to containers goes
//! through [`Engine`]. The journal is saved before each step so the failure path, `--abort` and
//! `--resume` know how far a release got, even after a crash.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::backup;
use super::docker::{Engine, EnvId, EnvInfo, ExecOutcome};
use super::journal::{self, Journal};
use super::{ctl, human_bytes, secs, Progress, ReleaseError, Step};
use crate::config::{Color, Config, HealthConfig, ReleaseConfig, SiteConfig};
use crate::control::api::*;
use crate::control::client::{Client, ControlError};

/// Everything a step needs.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub site: &'a SiteConfig,
    pub rel: &'a ReleaseConfig,
    pub client: &'a Client,
    pub engine: Engine,
    pub progress: Progress,
    pub prefix: String,
}

impl Ctx<'_> {
    fn name(&self) -> &str {
        &self.site.name
    }

    pub async fn status(&self) -> Result<SiteStatus, ReleaseError> {
        let s = self
            .client
            .status()
            .await
            .map_err(ctl("report its status"))?;
        s.sites
            .into_iter()
            .find(|x| x.name == self.site.name)
            .ok_or_else(|| ReleaseError::Failed(format!("the running daemon does not know site `{}`; run `switchyard reload` after editing the config", self.site.name)))
    }

    pub fn env(&self, color: Color, version: &str) -> EnvId {
        EnvId {
            site: self.site.name.clone(),
            prefix: self.prefix.clone(),
            color,
            version: version.to_string(),
        }
    }

    pub async fn find_env(&self, color: Color) -> Result<Option<EnvInfo>, ReleaseError> {
        Ok(self
            .engine
            .list(self.name(), Some(&self.prefix))
            .await?
            .into_iter()
            .find(|e| e.color == color))
    }

    /// Runs a command that must exit 0.
    async fn run_ok(
        &self,
        container: &str,
        cmd: &[String],
        what: &str,
    ) -> Result<ExecOutcome, ReleaseError> {
        let out = self
            .engine
            .exec(
                container,
                cmd,
                None::<tokio::io::Empty>,
                None::<tokio::io::Sink>,
                |_| {},
            )
            .await?;
        if out.code != 0 {
            return Err(ReleaseError::Command {
                what: what.into(),
                container: container.into(),
                code: out.code,
                output: out.output_tail,
            });
        }
        Ok(out)
    }

    async fn set_pool(&self, color: Color, backends: Vec<String>) -> Result<(), ReleaseError> {
        self.client
            .set_pool(self.name(), color, backends)
            .await
            .map_err(ctl(format!("set the {color} pool")))?;
        Ok(())
    }

    async fn read_only(&self, on: bool, version: &str) -> Result<ReadOnlyResponse, ReleaseError> {
        let req = ReadOnlyRequest {
            on,
            reason: on.then(|| {
                format!(
                    "{} is being upgraded to version {version}; editing is back in a few minutes",
                    self.name()
                )
            }),
            retry_after_s: on.then_some(60),
            sites: on.then(|| vec![self.site.name.clone()]),
            wait_s: None,
        };
        self.client.read_only(&req).await.map_err(ctl(if on {
            "turn read-only on"
        } else {
            "turn read-only off"
        }))
    }

    fn health(&self) -> HealthConfig {
        self.site.health.clone().unwrap_or(HealthConfig {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            rise: 1,
            fall: 1,
            expect_status: None,
        })
    }

    /// Polls the web's health on its published port until it passes or the deadline.
    async fn wait_healthy(&self, addr: SocketAddr) -> Result<(), ReleaseError> {
        let hc = self.health();
        let host = self
            .site
            .hosts
            .first()
            .map(|h| h.to_string().replace("*.", "x."))
            .unwrap_or_else(|| "localhost".into());
        let deadline = Instant::now() + self.rel.health_timeout;
        loop {
            let why = match crate::health::probe(addr, &host, Some(&hc)).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(ReleaseError::NotReady {
                    what: format!("the new web at {addr}"),
                    why: format!(
                        "{} did not pass within health_timeout {} (last: {why})",
                        hc.path,
                        secs(self.rel.health_timeout)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Switches, retrying while the daemon's own checks have not yet seen the target healthy.
    async fn switch(
        &self,
        to: Color,
        discard_writes: bool,
    ) -> Result<SwitchResponse, ReleaseError> {
        let deadline = Instant::now() + self.rel.health_timeout;
        let req = SwitchRequest {
            to,
            drain_s: None,
            force: false,
            discard_writes,
        };
        loop {
            match self.client.switch(self.name(), &req, None).await {
                Ok(r) => return Ok(r),
                Err(e @ ControlError::Refused { status: 409, .. })
                    if Instant::now() < deadline && !e.has_code(WRITES_WOULD_BE_LOST) =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(ctl(format!("switch to {to}"))(e)),
            }
        }
    }

    fn migrate_service(&self) -> Option<(&str, &Vec<String>)> {
        let svcs = &self.rel.services;
        svcs.iter()
            .find(|s| s.name == self.rel.web && s.migrate.is_some())
            .or_else(|| svcs.iter().find(|s| s.migrate.is_some()))
            .and_then(|s| s.migrate.as_ref().map(|m| (s.name.as_str(), m)))
    }

    fn db(&self) -> Result<&crate::config::ServiceConfig, ReleaseError> {
        let db = self.rel.db.as_deref().ok_or_else(|| {
            ReleaseError::Failed(format!(
                "site `{}` has no database service (one with `backup` and `restore` commands)",
                self.name()
            ))
        })?;
        self.rel
            .services
            .iter()
            .find(|s| s.name == db)
            .ok_or_else(|| {
                ReleaseError::Failed(format!("db service `{db}` is not among the services"))
            })
    }

    /// Creates an environment and waits for its non-web services. The web service is started
    /// only when `start_web` (by `up`); a release starts it after the restore.
    async fn create(&self, id: &EnvId, start_web: bool) -> Result<(), ReleaseError> {
        self.engine.create_env(id, self.rel, start_web).await?;
        let deadline = Instant::now() + self.rel.health_timeout;
        for s in self.rel.services.iter().filter(|s| s.name != self.rel.web) {
            self.engine.wait_ready(id, &s.name, deadline).await?;
        }
        Ok(())
    }
}

/// Starts a release of `version`.
pub async fn start(ctx: &Ctx<'_>, version: &str) -> Result<(), ReleaseError> {
    if let Some(j) = journal::load(ctx.cfg, ctx.name())? {
        return Err(ReleaseError::Failed(format!(
            "an unfinished release of {} (to version {} on {}, at step {}) is recorded in {}; run `switchyard release {} --resume` or `--abort` first",
            j.site,
            j.to_version,
            j.to,
            j.step,
            journal::path(ctx.cfg, &j.site).display(),
            j.site
        )));
    }
    // Preflight: nothing changes until all of this holds.
    ctx.engine.check_images(ctx.rel, version).await?;
    ctx.db()?;
    let st = ctx.status().await?;
    let from = st.active;
    let to = from.other();
    let Some(env) = ctx.find_env(from).await?.filter(|e| e.running()) else {
        return Err(ReleaseError::Failed(format!(
            "no running environment {}-{from} for the active color of {}; create it with `switchyard up {} --version V --color {from}`",
            ctx.prefix,
            ctx.name(),
            ctx.name()
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
                "the active pool of {} ({from}: {}) does not point at {}-{from}-{} ({a}); the environment to back up is not the one serving. Fix the pool (`switchyard pool set`) or pass the right --prefix",
                ctx.name(),
                if pool.is_empty() { "empty".to_string() } else { pool.join(" ") },
                ctx.prefix,
                ctx.rel.web
            )));
        }
    }
    let now = crate::state::now_rfc3339();
    let mut j = Journal {
        site: ctx.name().to_string(),
        prefix: ctx.prefix.clone(),
        from,
        to,
        from_version: Some(env.version.clone()),
        to_version: version.to_string(),
        step: Step::ReadOnly,
        backup: None,
        verify_expected: None,
        read_only_on: false,
        app_read_only_on: false,
        started_at: now.clone(),
        updated_at: now,
        pid: std::process::id(),
    };
    journal::save(ctx.cfg, &mut j)?;
    ctx.progress.line(format_args!(
        "release of {} from {from} ({}) to {to} ({version}), prefix {}",
        ctx.name(),
        env.version,
        ctx.prefix
    ));
    drive(ctx, j, &Step::ALL).await
}

/// Continues an unfinished release after a crash or a failed clean-up.
pub async fn resume(ctx: &Ctx<'_>) -> Result<(), ReleaseError> {
    let Some(mut j) = journal::load(ctx.cfg, ctx.name())? else {
        return Err(ReleaseError::Failed(format!(
            "no unfinished release of {} to resume (no journal at {})",
            ctx.name(),
            journal::path(ctx.cfg, ctx.name()).display()
        )));
    };
    j.pid = std::process::id();
    let st = ctx.status().await?;
    if st.active == j.to {
        ctx.progress.line(format_args!(
            "{} already serves {} ({}); finishing",
            ctx.name(),
            j.to,
            j.to_version
        ));
        return drive(ctx, j, &[Step::Switch]).await;
    }
    if st.active != j.from {
        return Err(ReleaseError::Failed(format!("{} serves {}, but the journal expected {}; look at `switchyard status`, then `--abort`", ctx.name(), st.active, j.from)));
    }
    ctx.engine.check_images(ctx.rel, &j.to_version).await?;
    let backup_ok = match &j.backup {
        Some(file) => {
            let stem = file.trim_end_matches(".dump");
            let e = backup::list(ctx.rel, ctx.name())?
                .into_iter()
                .find(|e| e.stem == stem);
            match e {
                Some(e) => backup::verify(&e).await.is_ok(),
                None => false,
            }
        }
        None => false,
    };
    let plan: &[Step] = if st.read_only && j.read_only_on && backup_ok {
        ctx.progress.line(format_args!(
            "read-only is still on and backup {} verifies: resuming with a fresh {} environment, then restore",
            j.backup.as_deref().unwrap_or(""),
            j.to
        ));
        &[Step::Create, Step::Restore, Step::Migrate, Step::Switch]
    } else {
        ctx.progress.line("read-only was lifted or the backup is gone: starting again from step 1 (with a fresh backup)");
        j.backup = None;
        &Step::ALL
    };
    journal::save(ctx.cfg, &mut j)?;
    drive(ctx, j, plan).await
}

/// Undoes an unfinished release: the failure path, run on purpose.
pub async fn abort(ctx: &Ctx<'_>) -> Result<(), ReleaseError> {
    let Some(j) = journal::load(ctx.cfg, ctx.name())? else {
        return Err(ReleaseError::Failed(format!(
            "no unfinished release of {} to abort (no journal at {})",
            ctx.name(),
            journal::path(ctx.cfg, ctx.name()).display()
        )));
    };
    let (notes, clean) = unwind(ctx, &j).await;
    for n in &notes {
        ctx.progress.line(format_args!("abort: {n}"));
    }
    if clean {
        ctx.progress.line(format_args!(
            "release of {} to {} aborted",
            ctx.name(),
            j.to_version
        ));
        Ok(())
    } else {
        Err(ReleaseError::Failed(format!("the abort of {}'s release did not finish (see above); fix the cause and run `--abort` again", ctx.name())))
    }
}

/// Runs the steps from `from`, racing Ctrl-C / SIGTERM; on any failure runs the failure path.
async fn drive(ctx: &Ctx<'_>, j: Journal, plan: &[Step]) -> Result<(), ReleaseError> {
    let site = j.site.clone();
    let r = tokio::select! {
        r = run_steps(ctx, j, plan) => r,
        _ = interrupted() => Err(ReleaseError::Interrupted),
    };
    let Err(e) = r else { return Ok(()) };
    // The journal on disk knows how far the release got (the step future may have been dropped).
    let Ok(Some(j)) = journal::load(ctx.cfg, &site) else {
        return Err(e);
    };
    ctx.progress
        .line(format_args!("step {} failed: {e}; undoing", j.step));
    let (cleanup, _) = unwind(ctx, &j).await;
    Err(ReleaseError::StepFailed {
        site,
        step: j.step,
        reason: e.to_string(),
        cleanup,
    })
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn enter(ctx: &Ctx<'_>, j: &mut Journal, step: Step) -> Result<Instant, ReleaseError> {
    j.step = step;
    journal::save(ctx.cfg, j)?;
    ctx.progress.line(format_args!("{step} …"));
    Ok(Instant::now())
}

async fn run_steps(ctx: &Ctx<'_>, mut j: Journal, plan: &[Step]) -> Result<(), ReleaseError> {
    let p = &ctx.progress;
    let old = ctx.env(j.from, j.from_version.as_deref().unwrap_or(""));
    let new = ctx.env(j.to, &j.to_version);
    let mut ro_since = None;

    if plan.contains(&Step::Create) {
        let t = enter(ctx, &mut j, Step::Create).await?;
        // The old idle environment (if any) goes: empty its pool first so nothing routes to it.
        ctx.set_pool(j.to, Vec::new()).await?;
        if let Some(e) = ctx.find_env(j.to).await? {
            p.line(format_args!(
                "          removing the previous {} environment ({}, version {})",
                j.to, e.prefix, e.version
            ));
        }
        ctx.engine.remove_env(&new, Some(ctx.rel)).await?;
        ctx.create(&new, false).await?;
        p.line(format_args!(
            "{} done in {}: {}-{}-* on network {} with version {}",
            Step::Create,
            secs(t.elapsed()),
            new.prefix,
            new.color,
            new.network(),
            new.version
        ));
    }

    if plan.contains(&Step::ReadOnly) {
        let t = enter(ctx, &mut j, Step::ReadOnly).await?;
        j.read_only_on = true;
        journal::save(ctx.cfg, &mut j)?;
        let r = ctx.read_only(true, &j.to_version).await?;
        ro_since = Some(Instant::now());
        if let Some((on, _)) = &ctx.rel.app_read_only {
            j.app_read_only_on = true;
            journal::save(ctx.cfg, &mut j)?;
            ctx.run_ok(&old.container(&ctx.rel.web), on, "app_read_only.on")
                .await?;
        }
        p.line(format_args!(
            "{} done in {} (writes in flight drained in {} ms)",
            Step::ReadOnly,
            secs(t.elapsed()),
            r.drained_ms
        ));
    }

    if plan.contains(&Step::Backup) {
        let t = enter(ctx, &mut j, Step::Backup).await?;
        let m = backup::take(&ctx.engine, ctx.rel, &old, p).await?;
        j.backup = Some(m.file.clone());
        if let Some(v) = &ctx.rel.verify_restore {
            let db = ctx.db()?;
            let out = ctx
                .run_ok(
                    &old.container(&db.name),
                    v,
                    "verify_restore on the active database",
                )
                .await?;
            j.verify_expected = Some(out.stdout_text.trim().to_string());
        }
        journal::save(ctx.cfg, &mut j)?;
        let dir = backup::site_dir(ctx.rel, ctx.name());
        p.line(format_args!(
            "{} done in {}: {} verified (sha256 {}…) {}",
            Step::Backup,
            secs(t.elapsed()),
            human_bytes(m.size),
            m.sha256.get(..12).unwrap_or(""),
            dir.join(&m.file).display()
        ));
    }

    if plan.contains(&Step::Restore) {
        let t = enter(ctx, &mut j, Step::Restore).await?;
        let db = ctx.db()?;
        let cmd = db.restore.clone().ok_or_else(|| {
            ReleaseError::Failed(format!("service `{}` has no `restore` command", db.name))
        })?;
        let file =
            backup::site_dir(ctx.rel, ctx.name()).join(j.backup.as_deref().unwrap_or_default());
        let f = tokio::fs::File::open(&file)
            .await
            .map_err(|source| ReleaseError::Io {
                what: "open the backup".into(),
                path: file.clone(),
                source,
            })?;
        let container = new.container(&db.name);
        let out = ctx
            .engine
            .exec(&container, &cmd, Some(f), None::<tokio::io::Sink>, |n| {
                p.bytes("restore", n)
            })
            .await?;
        if out.code != 0 {
            return Err(ReleaseError::Command {
                what: "the restore command".into(),
                container,
                code: out.code,
                output: out.output_tail,
            });
        }
        let mut checked = String::new();
        if let Some(v) = &ctx.rel.verify_restore {
            let got = ctx
                .run_ok(&container, v, "verify_restore on the new database")
                .await?
                .stdout_text
                .trim()
                .to_string();
            let want = j.verify_expected.clone().unwrap_or_default();
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
        p.line(format_args!(
            "{} done in {}: {} restored{checked}",
            Step::Restore,
            secs(t.elapsed()),
            human_bytes(out.stdin_bytes)
        ));
    }

    if plan.contains(&Step::Migrate) {
        let t = enter(ctx, &mut j, Step::Migrate).await?;
        // The web service starts only now, on restored data (see `Engine::create_env`).
        ctx.engine.start_service(&new, &ctx.rel.web).await?;
        match ctx.migrate_service() {
            Some((svc, cmd)) => {
                let out = ctx
                    .run_ok(&new.container(svc), cmd, "the migration")
                    .await?;
                let said = out.output_tail.lines().last().unwrap_or("").to_string();
                p.line(format_args!(
                    "{} done in {}{}",
                    Step::Migrate,
                    secs(t.elapsed()),
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(": {said}")
                    }
                ));
            }
            None => p.line(format_args!(
                "{} skipped: no `migrate` command",
                Step::Migrate
            )),
        }
    }

    let t = enter(ctx, &mut j, Step::Switch).await?;
    let st = ctx.status().await?;
    if st.active != j.to {
        let addr = ctx.engine.web_addr(&new, ctx.rel).await?;
        ctx.wait_healthy(addr).await?;
        let healthy_in = t.elapsed();
        ctx.set_pool(j.to, vec![addr.to_string()]).await?;
        // The writes the active color took are in the backup restored into the new env.
        ctx.switch(j.to, true).await?;
        p.line(format_args!(
            "          {} healthy at {addr} after {}; switched {} → {}",
            new.container(&ctx.rel.web),
            secs(healthy_in),
            j.from,
            j.to
        ));
    }
    if j.app_read_only_on {
        if let Some((_, off)) = &ctx.rel.app_read_only {
            ctx.run_ok(&old.container(&ctx.rel.web), off, "app_read_only.off")
                .await?;
        }
        j.app_read_only_on = false;
        journal::save(ctx.cfg, &mut j)?;
    }
    if j.read_only_on || st.read_only {
        ctx.read_only(false, &j.to_version).await?;
    }
    let window = ro_since.map(|s| s.elapsed());
    p.line(format_args!(
        "{} done in {}",
        Step::Switch,
        secs(t.elapsed())
    ));
    journal::remove(ctx.cfg, ctx.name())?;
    match backup::prune(ctx.rel, ctx.name(), ctx.rel.keep_backups).await {
        Ok(r) if !r.removed.is_empty() => p.line(format_args!(
            "pruned {} old backup(s), kept {}",
            r.removed.len(),
            r.kept.len()
        )),
        Ok(_) => {}
        Err(e) => p.line(format_args!("note: pruning old backups failed: {e}")),
    }
    p.line(format_args!(
        "release of {} done: {} serves version {}; {} ({}) is kept for `switchyard rollback {}`",
        ctx.name(),
        j.to,
        j.to_version,
        j.from,
        j.from_version.as_deref().unwrap_or("?"),
        ctx.name()
    ));
    if let Some(w) = window {
        p.line(format_args!("read-only window: {:.3}s", w.as_secs_f64()));
    }
    Ok(())
}

/// The failure path: keep the active env serving, stop the half-made one, lift read-only.
/// Returns what it did and whether everything worked (then the journal is removed).
async fn unwind(ctx: &Ctx<'_>, j: &Journal) -> (Vec<String>, bool) {
    let mut notes = Vec::new();
    let mut clean = true;
    let switched = match ctx.status().await {
        Ok(st) => st.active == j.to,
        Err(e) => {
            notes.push(format!("could not ask the daemon what is active: {e}"));
            clean = false;
            false
        }
    };
    let new = ctx.env(j.to, &j.to_version);
    let old = ctx.env(j.from, j.from_version.as_deref().unwrap_or(""));
    if switched {
        notes.push(format!("the switch to {} had already happened: {} serves {}; `switchyard rollback {}` goes back", j.to, j.to, j.to_version, j.site));
    } else if clean {
        if let Err(e) = ctx.set_pool(j.to, Vec::new()).await {
            notes.push(format!("could not empty the {} pool: {e}", j.to));
        }
        match ctx.engine.stop_env(&new).await {
            Ok(()) => notes.push(format!(
                "stopped the half-made environment {}-{}-* (kept for inspection: `docker logs {}`; `switchyard envs prune {}` removes it)",
                new.prefix,
                new.color,
                new.container(&ctx.rel.web),
                j.site
            )),
            Err(e) => {
                notes.push(format!("could not stop the half-made environment {}-{}: {e}", new.prefix, new.color));
                clean = false;
            }
        }
    }
    if j.app_read_only_on {
        if let Some((_, off)) = &ctx.rel.app_read_only {
            match ctx
                .run_ok(&old.container(&ctx.rel.web), off, "app_read_only.off")
                .await
            {
                Ok(_) => notes.push("app_read_only.off ran in the active web".into()),
                Err(e) => {
                    notes.push(format!("app_read_only.off failed: {e}"));
                    clean = false;
                }
            }
        }
    }
    if j.read_only_on {
        match ctx.read_only(false, &j.to_version).await {
            Ok(_) => notes.push(format!(
                "read-only is off; {} keeps serving {}",
                if switched { j.to } else { j.from },
                if switched {
                    &j.to_version
                } else {
                    j.from_version.as_deref().unwrap_or("?")
                }
            )),
            Err(e) => {
                notes.push(format!(
                    "could not turn read-only off: {e}; run `switchyard read-only off`"
                ));
                clean = false;
            }
        }
    } else {
        notes.push(format!(
            "{} keeps serving; read-only was not turned on",
            j.from
        ));
    }
    if clean {
        if let Err(e) = journal::remove(ctx.cfg, &j.site) {
            notes.push(e.to_string());
        }
    } else {
        notes.push(format!(
            "the journal {} is kept: run `switchyard release {} --abort` once the cause is fixed",
            journal::path(ctx.cfg, &j.site).display(),
            j.site
        ));
    }
    (notes, clean)
}

/// `up`: a first environment of `version` in `color` (default: the active color). No migration
/// runs: a fresh database is initialised by its image at the schema of its version.
pub async fn up(ctx: &Ctx<'_>, version: &str, color: Option<Color>) -> Result<(), ReleaseError> {
    ctx.engine.check_images(ctx.rel, version).await?;
    let st = ctx.status().await?;
    let color = color.unwrap_or(st.active);
    if let Some(e) = ctx.find_env(color).await? {
        return Err(ReleaseError::Failed(format!(
            "environment {}-{color} of {} already exists (version {}); use `switchyard release` for a new version, or `switchyard envs prune` to remove an idle one",
            e.prefix,
            ctx.name(),
            e.version
        )));
    }
    let p = &ctx.progress;
    let id = ctx.env(color, version);
    ctx.create(&id, true).await?;
    p.line(format_args!(
        "created {}-{color}-* with version {version}",
        ctx.prefix
    ));
    let addr = ctx.engine.web_addr(&id, ctx.rel).await?;
    ctx.wait_healthy(addr).await?;
    ctx.set_pool(color, vec![addr.to_string()]).await?;
    p.line(format_args!(
        "{} healthy at {addr}; it is now the {color} pool of {}",
        id.container(&ctx.rel.web),
        ctx.name()
    ));
    let active_empty = st.pools.get(&st.active).is_none_or(|v| v.is_empty());
    if color != st.active && active_empty {
        ctx.switch(color, false).await?;
        p.line(format_args!("switched {} to {color}", ctx.name()));
    } else if color != st.active {
        p.line(format_args!(
            "{color} is idle; `switchyard switch {} {color}` makes it serve",
            ctx.name()
        ));
    }
    Ok(())
}
