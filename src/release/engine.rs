//! The one place the release flow asks for engine work: create, start, stop, remove and list
//! environments, their web addresses, readiness, a command or files in a service's container,
//! the image check. [`Engine`] dispatches to `docker/` (containers on the local engine, as before
//! issue 20) or `swarm/` (services on a Docker Swarm, `[site.release] engine = "swarm"`). A
//! container is named as on the local engine, `{prefix}-{color}-{service}`; on a swarm that is the
//! service, and its running task's container is found on the node that runs it.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use super::docker::{self, EnvId, EnvInfo, ExecOutcome};
use super::swarm::Swarm;
use super::ReleaseError;
use crate::config::{EngineKind, ReleaseConfig};

pub enum Engine {
    Local(docker::Engine),
    Swarm(Box<SwarmEngine>),
}

/// A swarm and what its listing needs of the config.
pub struct SwarmEngine {
    swarm: Swarm,
    web: String,
    web_port: u16,
    /// How long a started service may take to run its tasks (`health_timeout`).
    ready_timeout: std::time::Duration,
}

impl Engine {
    /// The engine `rel` names: the local one (pinged) or the swarm (manager and node engines).
    pub async fn connect(rel: &ReleaseConfig) -> Result<Engine, ReleaseError> {
        match &rel.engine {
            EngineKind::Local => Ok(Engine::Local(docker::Engine::connect().await?)),
            EngineKind::Swarm(cfg) => Ok(Engine::Swarm(Box::new(SwarmEngine {
                swarm: Swarm::connect(cfg).await?,
                web: rel.web.clone(),
                web_port: rel.web_port,
                ready_timeout: rel.health_timeout,
            }))),
        }
    }

    pub fn is_swarm(&self) -> bool {
        matches!(self, Engine::Swarm(_))
    }

    /// The swarm's node names by node id (empty on the local engine).
    pub fn node_names(&self) -> std::collections::BTreeMap<String, String> {
        match self {
            Engine::Local(_) => Default::default(),
            Engine::Swarm(s) => s.swarm.node_names(),
        }
    }

    /// On a swarm: every node engine that answered at the start still does (see
    /// [`Swarm::check_nodes`]); nothing to check on the local engine.
    pub async fn check_nodes(&self) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(_) => Ok(()),
            Engine::Swarm(s) => s.swarm.check_nodes().await,
        }
    }

    pub async fn check_images(
        &self,
        rel: &ReleaseConfig,
        version: &str,
    ) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(d) => d.check_images(rel, version).await,
            Engine::Swarm(s) => s.swarm.check_images(rel, version).await,
        }
    }

    pub async fn create_env(
        &self,
        id: &EnvId,
        rel: &ReleaseConfig,
        start_web: bool,
    ) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(d) => d.create_env(id, rel, start_web).await,
            Engine::Swarm(s) => s.swarm.create_env(id, rel, start_web).await,
        }
    }

    pub async fn start_service(&self, id: &EnvId, service: &str) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(d) => d.start_service(id, service).await,
            // A scaled-up service runs its tasks a moment later; the next step execs in them.
            Engine::Swarm(s) => {
                s.swarm.start_service(id, service).await?;
                let deadline = Instant::now() + s.ready_timeout;
                s.swarm.wait_ready(id, service, deadline).await
            }
        }
    }

    pub async fn wait_ready(
        &self,
        id: &EnvId,
        service: &str,
        deadline: Instant,
    ) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(d) => d.wait_ready(id, service, deadline).await,
            Engine::Swarm(s) => s.swarm.wait_ready(id, service, deadline).await,
        }
    }

    /// Where the web answers: its 127.0.0.1 port, or each running web task's node and port.
    pub async fn web_addrs(
        &self,
        id: &EnvId,
        rel: &ReleaseConfig,
    ) -> Result<Vec<SocketAddr>, ReleaseError> {
        match self {
            Engine::Local(d) => Ok(vec![d.web_addr(id, rel).await?]),
            Engine::Swarm(s) => s.swarm.web_addrs(id, rel).await,
        }
    }

    pub async fn stop_env(&self, id: &EnvId) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(d) => d.stop_env(id).await,
            Engine::Swarm(s) => s.swarm.stop_env(id).await,
        }
    }

    pub async fn remove_env(
        &self,
        id: &EnvId,
        rel: Option<&ReleaseConfig>,
    ) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(d) => d.remove_env(id, rel).await,
            Engine::Swarm(s) => s.swarm.remove_env(id, rel).await,
        }
    }

    pub async fn list(
        &self,
        site: &str,
        prefix: Option<&str>,
    ) -> Result<Vec<EnvInfo>, ReleaseError> {
        match self {
            Engine::Local(d) => d.list(site, prefix).await,
            Engine::Swarm(s) => s.swarm.list(site, prefix, &s.web, s.web_port).await,
        }
    }

    /// Host ports that containers publish (the local engine's; a swarm's pools are followed by
    /// task, see `sync.rs`).
    pub async fn published(&self) -> Result<docker::Published, ReleaseError> {
        match self {
            Engine::Local(d) => d.published().await,
            Engine::Swarm(_) => Ok(docker::Published::default()),
        }
    }

    /// Runs `cmd` in `container` (on a swarm: in the service's running task, on its node).
    pub async fn exec<R, W>(
        &self,
        container: &str,
        cmd: &[String],
        stdin: Option<R>,
        stdout: Option<W>,
        progress: impl FnMut(u64),
    ) -> Result<ExecOutcome, ReleaseError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        match self {
            Engine::Local(d) => d.exec(container, cmd, stdin, stdout, progress).await,
            Engine::Swarm(s) => {
                let (e, cid) = s.swarm.locate(container).await?;
                e.exec(&cid, cmd, stdin, stdout, progress)
                    .await
                    .map_err(|err| task_named(err, &cid, container))
            }
        }
    }

    /// A tar of `path` in `container`.
    pub fn download<'a>(
        &'a self,
        container: &'a str,
        path: &'a str,
    ) -> BoxStream<'a, Result<Bytes, ReleaseError>> {
        match self {
            Engine::Local(d) => d.download(container, path).boxed(),
            Engine::Swarm(s) => stream::once(s.swarm.locate(container))
                .map(move |found| match found {
                    Ok((e, cid)) => e.download(&cid, path).boxed(),
                    Err(err) => stream::once(async move { Err(err) }).boxed(),
                })
                .flatten()
                .boxed(),
        }
    }

    pub async fn upload(
        &self,
        container: &str,
        dir: &str,
        body: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(d) => d.upload(container, dir, body).await,
            Engine::Swarm(s) => {
                let (e, cid) = s.swarm.locate(container).await?;
                e.upload(&cid, dir, body)
                    .await
                    .map_err(|err| task_named(err, &cid, container))
            }
        }
    }

    pub async fn check_volume_mount(
        &self,
        container: &str,
        volume: &str,
        mount: &str,
    ) -> Result<(), ReleaseError> {
        match self {
            Engine::Local(d) => d.check_volume_mount(container, volume, mount).await,
            Engine::Swarm(s) => {
                let (e, cid) = s.swarm.locate(container).await?;
                e.check_volume_mount(&cid, volume, mount)
                    .await
                    .map_err(|err| task_named(err, &cid, container))
            }
        }
    }
}

/// An error about a task's container, worded with the service people know it by.
fn task_named(err: ReleaseError, cid: &str, service: &str) -> ReleaseError {
    let short: String = cid.chars().take(12).collect();
    let name = format!("{service} (task container {short})");
    match err {
        ReleaseError::Docker { what, source } => ReleaseError::Docker {
            what: what.replace(cid, &name),
            source,
        },
        ReleaseError::Failed(m) => ReleaseError::Failed(m.replace(cid, &name)),
        other => other,
    }
}
