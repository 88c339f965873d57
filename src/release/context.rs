//! [`Release`]: what every release command works with, namely one site's config, the Docker
//! engine, the daemon's control client, the container-name prefix and the progress printer. Its
//! methods are the daemon calls a release makes (errors worded for the release) and the engine
//! work that `up` and `release` share.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::bindings;
use super::docker::{EnvId, EnvInfo, ExecOutcome};
use super::engine::Engine;
use super::{secs, Progress, ReleaseError};
use crate::config::{
    Color, Config, EngineKind, HealthConfig, ReleaseConfig, ServiceConfig, SiteConfig,
};
use crate::control::api::*;
use crate::control::client::{Client, ControlError};

/// One site managed on Docker, and the two things it drives: the engine and the daemon.
pub struct Release<'a> {
    pub cfg: &'a Config,
    pub site: &'a SiteConfig,
    pub rel: &'a ReleaseConfig,
    pub client: &'a Client,
    pub engine: Engine,
    pub progress: Progress,
    pub prefix: String,
}

/// The site named `name` and its `[site.release]`.
pub fn site_of<'a>(
    cfg: &'a Config,
    name: &str,
) -> Result<(&'a SiteConfig, &'a ReleaseConfig), ReleaseError> {
    let site = cfg
        .site(name)
        .ok_or_else(|| ReleaseError::UnknownSite(name.to_string()))?;
    let rel = site
        .release
        .as_ref()
        .ok_or_else(|| ReleaseError::NoRelease(name.to_string()))?;
    Ok((site, rel))
}

fn ctl(what: impl Into<String>) -> impl FnOnce(ControlError) -> ReleaseError {
    let what = what.into();
    move |source| ReleaseError::Control { what, source }
}

impl<'a> Release<'a> {
    /// Finds the site, checks a `--prefix` override (it becomes part of container names) and
    /// connects to the engine.
    pub async fn open(
        cfg: &'a Config,
        client: &'a Client,
        site: &str,
        prefix: Option<&str>,
    ) -> Result<Release<'a>, ReleaseError> {
        let (site, rel) = site_of(cfg, site)?;
        let prefix = prefix.unwrap_or(&rel.prefix).to_string();
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ReleaseError::Failed(format!("prefix `{prefix}` must be letters, digits, -, _ or . (it becomes part of container names)")));
        }
        Ok(Release {
            cfg,
            site,
            rel,
            client,
            engine: Engine::connect(rel).await?,
            progress: Progress::default(),
            prefix,
        })
    }

    pub fn name(&self) -> &str {
        &self.site.name
    }

    /// The daemon's view of this site.
    pub async fn status(&self) -> Result<SiteStatus, ReleaseError> {
        Ok(self.versioned_status().await?.1)
    }

    /// The daemon's state version and its view of this site.
    pub async fn versioned_status(&self) -> Result<(u64, SiteStatus), ReleaseError> {
        let s = self
            .client
            .status()
            .await
            .map_err(ctl("report its status"))?;
        let site = s.sites
            .into_iter()
            .find(|x| x.name == self.site.name)
            .ok_or_else(|| ReleaseError::Failed(format!("the running daemon does not know site `{}`; run `switchyard reload` after editing the config", self.site.name)))?;
        Ok((s.version, site))
    }

    pub fn env(&self, color: Color, version: &str) -> EnvId {
        EnvId {
            site: self.site.name.clone(),
            prefix: self.prefix.clone(),
            color,
            version: version.to_string(),
        }
    }

    /// This prefix's environment of `color`, if the engine has one.
    pub async fn find_env(&self, color: Color) -> Result<Option<EnvInfo>, ReleaseError> {
        Ok(self
            .engine
            .list(self.name(), Some(&self.prefix))
            .await?
            .into_iter()
            .find(|e| e.color == color))
    }

    /// Runs a command that must exit 0.
    pub async fn run_ok(
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

    /// Sets a color's pool, and records which environment it now follows (`bindings.rs`).
    pub async fn set_pool(&self, color: Color, backends: Vec<String>) -> Result<(), ReleaseError> {
        self.client
            .set_pool(self.name(), color, backends.clone())
            .await
            .map_err(ctl(format!("set the {color} pool")))?;
        if let Err(e) = bindings::record(self.cfg, self.name(), color, &self.prefix, &backends) {
            self.progress.line(format_args!("note: {e}"));
        }
        Ok(())
    }

    /// Read-only on for this site (answers once no write is in flight), or off.
    pub async fn read_only(
        &self,
        on: bool,
        version: &str,
    ) -> Result<ReadOnlyResponse, ReleaseError> {
        self.read_only_for(on, version, 60).await
    }

    /// [`Release::read_only`], telling writers to retry after `retry_after_s` (the expected
    /// rest of the window).
    pub async fn read_only_for(
        &self,
        on: bool,
        version: &str,
        retry_after_s: u64,
    ) -> Result<ReadOnlyResponse, ReleaseError> {
        let when = if retry_after_s < 60 {
            format!("in about {retry_after_s} seconds")
        } else {
            "in a few minutes".to_string()
        };
        let reason = format!(
            "{} is being upgraded to version {version}; editing is back {when}",
            self.name()
        );
        self.read_only_because_for(on, &reason, retry_after_s).await
    }

    /// Read-only on (with `reason`) or off for this site.
    pub async fn read_only_because(
        &self,
        on: bool,
        reason: &str,
    ) -> Result<ReadOnlyResponse, ReleaseError> {
        self.read_only_because_for(on, reason, 60).await
    }

    async fn read_only_because_for(
        &self,
        on: bool,
        reason: &str,
        retry_after_s: u64,
    ) -> Result<ReadOnlyResponse, ReleaseError> {
        let req = ReadOnlyRequest {
            on,
            reason: on.then(|| reason.to_string()),
            retry_after_s: on.then_some(retry_after_s),
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

    /// Polls the web's health on its published port until it passes or `health_timeout` ends.
    pub async fn wait_healthy(&self, addr: SocketAddr) -> Result<(), ReleaseError> {
        let hc = self.health();
        let host = self.probe_host();
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

    /// Waits until the web of `id` answers its health check where it runs, and returns where
    /// that is: its one address on the local engine; on a swarm, every running web task's, once
    /// `min_healthy_web` of them (default: every replica) pass.
    pub async fn web_ready(&self, id: &EnvId) -> Result<Vec<SocketAddr>, ReleaseError> {
        let EngineKind::Swarm(sw) = &self.rel.engine else {
            let addrs = self.engine.web_addrs(id, self.rel).await?;
            for a in &addrs {
                self.wait_healthy(*a).await?;
            }
            return Ok(addrs);
        };
        let replicas = self
            .rel
            .services
            .iter()
            .find(|s| s.name == self.rel.web)
            .map(|s| s.replicas)
            .unwrap_or(1);
        let need = sw.min_healthy_web.unwrap_or(replicas) as usize;
        let hc = self.health();
        let host = self.probe_host();
        let deadline = Instant::now() + self.rel.health_timeout;
        loop {
            // A node that stops answering meanwhile stops the wait (and the release) at once.
            self.engine.check_nodes().await?;
            let addrs = self.engine.web_addrs(id, self.rel).await?;
            let mut healthy = 0;
            let mut last = format!("{} web task(s) running", addrs.len());
            for a in &addrs {
                match crate::health::probe(*a, &host, Some(&hc)).await {
                    Ok(()) => healthy += 1,
                    Err(e) => last = format!("{a}: {e}"),
                }
            }
            if healthy >= need && !addrs.is_empty() {
                return Ok(addrs);
            }
            if Instant::now() >= deadline {
                return Err(ReleaseError::NotReady {
                    what: format!("the web of {}", id.container(&self.rel.web)),
                    why: format!(
                        "{healthy} of {need} needed replica(s) passed {} within health_timeout {} (last: {last})",
                        hc.path,
                        secs(self.rel.health_timeout)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn probe_host(&self) -> String {
        self.site
            .hosts
            .first()
            .map(|h| h.to_string().replace("*.", "x."))
            .unwrap_or_else(|| "localhost".into())
    }

    /// Switches, retrying while the daemon's own checks have not yet seen the target healthy.
    /// `discard_writes` passes the daemon's write guard (see `ops/switch.rs`).
    pub async fn switch(
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

    /// The service whose `migrate` command runs (the web's, else the first that has one).
    pub fn migrate_service(&self) -> Option<(&str, &Vec<String>)> {
        let svcs = &self.rel.services;
        svcs.iter()
            .find(|s| s.name == self.rel.web && s.migrate.is_some())
            .or_else(|| svcs.iter().find(|s| s.migrate.is_some()))
            .and_then(|s| s.migrate.as_ref().map(|m| (s.name.as_str(), m)))
    }

    /// The database service: the one with `backup` and `restore` commands.
    pub fn db(&self) -> Result<&ServiceConfig, ReleaseError> {
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
    pub async fn create(&self, id: &EnvId, start_web: bool) -> Result<(), ReleaseError> {
        self.engine.create_env(id, self.rel, start_web).await?;
        let deadline = Instant::now() + self.rel.health_timeout;
        for s in self.rel.services.iter().filter(|s| s.name != self.rel.web) {
            self.engine.wait_ready(id, &s.name, deadline).await?;
        }
        Ok(())
    }
}
