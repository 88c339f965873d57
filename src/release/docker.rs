//! The Docker engine, through bollard: environments (network, volumes, containers) named
//! `{prefix}-{color}-{service}`, exec with streamed stdin/stdout, listing by label.
//!
//! Owns every call to the engine; the rest of `release` never sees a bollard type. Nothing here
//! pulls an image: [`Engine::check_images`] only inspects the local ones.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, ListContainersOptions, LogOutput,
    NetworkingConfig, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    EndpointSettings, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::network::CreateNetworkOptions;
use bollard::volume::{CreateVolumeOptions, RemoveVolumeOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ReleaseError;
use crate::config::{Color, ReleaseConfig, ServiceConfig};

pub const LABEL_SITE: &str = "switchyard.site";
pub const LABEL_COLOR: &str = "switchyard.color";
pub const LABEL_VERSION: &str = "switchyard.version";
pub const LABEL_PREFIX: &str = "switchyard.prefix";
pub const LABEL_SERVICE: &str = "switchyard.service";

/// What names an environment: site, prefix, color, version.
#[derive(Debug, Clone)]
pub struct EnvId {
    pub site: String,
    pub prefix: String,
    pub color: Color,
    pub version: String,
}

impl EnvId {
    pub fn network(&self) -> String {
        format!("{}-{}", self.prefix, self.color)
    }
    pub fn container(&self, service: &str) -> String {
        format!("{}-{}-{service}", self.prefix, self.color)
    }
    pub fn volume(&self, vol: &str) -> String {
        format!("{}-{}-{vol}", self.prefix, self.color)
    }
    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_SITE.to_string(), self.site.clone()),
            (LABEL_COLOR.to_string(), self.color.to_string()),
            (LABEL_VERSION.to_string(), self.version.clone()),
            (LABEL_PREFIX.to_string(), self.prefix.clone()),
        ])
    }
}

/// The image of a service at a version: `{version}` replaced.
pub fn image_of(svc: &ServiceConfig, version: &str) -> String {
    svc.image.replace("{version}", version)
}

/// One environment found on the engine.
#[derive(Debug, Clone)]
pub struct EnvInfo {
    pub prefix: String,
    pub color: Color,
    pub version: String,
    /// service → (container name, state)
    pub containers: BTreeMap<String, (String, String)>,
    /// The web port published on 127.0.0.1, when running.
    pub web_addr: Option<SocketAddr>,
}

impl EnvInfo {
    pub fn running(&self) -> bool {
        !self.containers.is_empty() && self.containers.values().all(|(_, s)| s == "running")
    }
}

/// What an exec did.
#[derive(Debug)]
pub struct ExecOutcome {
    pub code: i64,
    pub stdout_bytes: u64,
    pub stdin_bytes: u64,
    /// The last few KiB of stderr (and of stdout when it is not streamed elsewhere).
    pub output_tail: String,
    pub stdout_text: String,
}

pub struct Engine {
    d: Docker,
}

fn docker_err(what: impl Into<String>) -> impl FnOnce(DockerError) -> ReleaseError {
    let what = what.into();
    move |source| ReleaseError::Docker { what, source }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Engine {
    /// Connects to the local engine (DOCKER_HOST or the default socket) and pings it.
    pub async fn connect() -> Result<Engine, ReleaseError> {
        let d = Docker::connect_with_local_defaults()
            .map_err(|source| ReleaseError::DockerUnreachable { source })?;
        d.ping()
            .await
            .map_err(|source| ReleaseError::DockerUnreachable { source })?;
        Ok(Engine { d })
    }

    /// Every image of the release at `version` must be on the local engine; nothing is pulled.
    pub async fn check_images(
        &self,
        rel: &ReleaseConfig,
        version: &str,
    ) -> Result<(), ReleaseError> {
        let mut missing = Vec::new();
        for s in &rel.services {
            let img = image_of(s, version);
            match self.d.inspect_image(&img).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => missing.push(img),
                Err(e) => return Err(docker_err(format!("inspect image {img}"))(e)),
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ReleaseError::MissingImages { images: missing })
        }
    }

    /// Creates and starts an environment: network, per-environment volumes, one container per
    /// service (in config order), the web port published on 127.0.0.1 (ephemeral).
    /// Creates the environment's network, volumes and containers and starts them. With
    /// `start_web == false` the web container is created but not started: a release starts it only
    /// after the restore, so an app that sets itself up on an empty database cannot race the
    /// restore (see `start_service`).
    pub async fn create_env(
        &self,
        id: &EnvId,
        rel: &ReleaseConfig,
        start_web: bool,
    ) -> Result<(), ReleaseError> {
        let labels = id.labels();
        let net = id.network();
        self.d
            .create_network(CreateNetworkOptions {
                name: net.clone(),
                driver: "bridge".into(),
                check_duplicate: true,
                labels: labels.clone(),
                ..Default::default()
            })
            .await
            .map_err(docker_err(format!("create network {net}")))?;
        for s in &rel.services {
            for (vol, _) in &s.volumes {
                let name = id.volume(vol);
                self.d
                    .create_volume(CreateVolumeOptions {
                        name: name.clone(),
                        driver: "local".into(),
                        labels: labels.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(docker_err(format!("create volume {name}")))?;
            }
        }
        for s in &rel.services {
            let name = id.container(&s.name);
            let mut l = labels.clone();
            l.insert(LABEL_SERVICE.into(), s.name.clone());
            let is_web = s.name == rel.web;
            let port = format!("{}/tcp", rel.web_port);
            let host_config = HostConfig {
                binds: Some(
                    s.volumes
                        .iter()
                        .map(|(v, m)| format!("{}:{m}", id.volume(v)))
                        .collect(),
                ),
                network_mode: Some(net.clone()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                port_bindings: is_web.then(|| {
                    HashMap::from([(
                        port.clone(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(String::new()),
                        }]),
                    )])
                }),
                ..Default::default()
            };
            let config = ContainerConfig {
                image: Some(image_of(s, &id.version)),
                cmd: s.command.clone(),
                env: Some(s.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                labels: Some(l),
                exposed_ports: is_web.then(|| HashMap::from([(port.clone(), HashMap::new())])),
                host_config: Some(host_config),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: HashMap::from([(
                        net.clone(),
                        EndpointSettings {
                            aliases: Some(vec![s.name.clone()]),
                            ..Default::default()
                        },
                    )]),
                }),
                ..Default::default()
            };
            self.d
                .create_container(
                    Some(CreateContainerOptions {
                        name: name.clone(),
                        platform: None,
                    }),
                    config,
                )
                .await
                .map_err(docker_err(format!("create container {name}")))?;
            if is_web && !start_web {
                continue;
            }
            self.start_service(id, &s.name).await?;
        }
        Ok(())
    }

    /// Starts one service's (already created) container.
    pub async fn start_service(&self, id: &EnvId, service: &str) -> Result<(), ReleaseError> {
        let name = id.container(service);
        self.d
            .start_container(&name, None::<StartContainerOptions<String>>)
            .await
            .map_err(docker_err(format!("start container {name}")))
    }

    /// Waits until a service's container is ready: its image's HEALTHCHECK says healthy, else one
    /// of its exposed TCP ports accepts connections on the environment's network.
    pub async fn wait_ready(
        &self,
        id: &EnvId,
        service: &str,
        deadline: Instant,
    ) -> Result<(), ReleaseError> {
        let name = id.container(service);
        let mut last = String::from("not checked yet");
        loop {
            let c = self
                .d
                .inspect_container(&name, None)
                .await
                .map_err(docker_err(format!("inspect container {name}")))?;
            let state = c.state.clone().unwrap_or_default();
            if state.running != Some(true) {
                let code = state.exit_code.unwrap_or(0);
                return Err(ReleaseError::NotReady {
                    what: name.clone(),
                    why: format!("the container is not running (status {:?}, exit code {code}); see `docker logs {name}`", state.status),
                });
            }
            if let Some(h) = state.health.as_ref().and_then(|h| h.status) {
                use bollard::models::HealthStatusEnum as H;
                match h {
                    H::HEALTHY => return Ok(()),
                    other => last = format!("health check says {other:?}"),
                }
            } else {
                let ports: Vec<u16> = c
                    .config
                    .as_ref()
                    .and_then(|c| c.exposed_ports.as_ref())
                    .map(|p| {
                        p.keys()
                            .filter_map(|k| k.strip_suffix("/tcp").and_then(|n| n.parse().ok()))
                            .collect()
                    })
                    .unwrap_or_default();
                let ip: Option<IpAddr> = c
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .and_then(|n| n.get(&id.network()))
                    .and_then(|e| e.ip_address.as_ref())
                    .and_then(|ip| ip.parse().ok());
                match ip {
                    _ if ports.is_empty() => return Ok(()),
                    None => last = "no address on its network yet".into(),
                    Some(ip) => {
                        for p in &ports {
                            let a = SocketAddr::new(ip, *p);
                            match tokio::time::timeout(
                                Duration::from_millis(500),
                                tokio::net::TcpStream::connect(a),
                            )
                            .await
                            {
                                Ok(Ok(_)) => return Ok(()),
                                Ok(Err(e)) => last = format!("{a}: {e}"),
                                Err(_) => last = format!("{a}: connect timed out"),
                            }
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ReleaseError::NotReady {
                    what: name,
                    why: format!("not ready before the deadline (last: {last}); see `docker logs`"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The 127.0.0.1 address the web container's port is published on.
    pub async fn web_addr(
        &self,
        id: &EnvId,
        rel: &ReleaseConfig,
    ) -> Result<SocketAddr, ReleaseError> {
        let name = id.container(&rel.web);
        let c = self
            .d
            .inspect_container(&name, None)
            .await
            .map_err(docker_err(format!("inspect container {name}")))?;
        published(
            &c.network_settings.and_then(|n| n.ports).unwrap_or_default(),
            rel.web_port,
        )
        .ok_or_else(|| ReleaseError::NotReady {
            what: name,
            why: format!("port {} is not published on 127.0.0.1", rel.web_port),
        })
    }

    /// Runs `cmd` in `container`. With `stdin`, its bytes are streamed in and then closed; with
    /// `stdout`, the command's stdout is streamed there (else kept as text). `progress` sees the
    /// byte count moved so far.
    pub async fn exec<R, W>(
        &self,
        container: &str,
        cmd: &[String],
        stdin: Option<R>,
        mut stdout: Option<W>,
        mut progress: impl FnMut(u64),
    ) -> Result<ExecOutcome, ReleaseError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        let what = format!("run {:?} in {container}", cmd);
        let created = self
            .d
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdin: Some(stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(docker_err(what.clone()))?;
        let started = self
            .d
            .start_exec(&created.id, None)
            .await
            .map_err(docker_err(what.clone()))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(ReleaseError::Failed(format!(
                "{what}: the engine did not attach to the command"
            )));
        };
        let feeder = stdin.map(|mut r| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n_total = 0u64;
                loop {
                    let n = r.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    input.write_all(&buf[..n]).await?;
                    n_total += n as u64;
                }
                input.flush().await?;
                input.shutdown().await?;
                // Keep the write half alive until the output ends (dropping it may close the stream).
                Ok::<(u64, _), std::io::Error>((n_total, input))
            })
        });
        let mut tail = Tail::default();
        let mut text = Vec::new();
        let mut out_bytes = 0u64;
        let mut last_progress = Instant::now();
        while let Some(item) = output.next().await {
            match item.map_err(docker_err(what.clone()))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    out_bytes += message.len() as u64;
                    match stdout.as_mut() {
                        Some(w) => w.write_all(&message).await.map_err(|e| {
                            ReleaseError::Failed(format!("{what}: cannot write its output: {e}"))
                        })?,
                        None => {
                            if text.len() < 64 * 1024 {
                                text.extend_from_slice(&message);
                            }
                            tail.push(&message);
                        }
                    }
                    if stdout.is_some() && last_progress.elapsed() > Duration::from_millis(250) {
                        progress(out_bytes);
                        last_progress = Instant::now();
                    }
                }
                LogOutput::StdErr { message } => tail.push(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        if let Some(w) = stdout.as_mut() {
            w.flush().await.map_err(|e| {
                ReleaseError::Failed(format!("{what}: cannot write its output: {e}"))
            })?;
        }
        let mut in_bytes = 0;
        if let Some(f) = feeder {
            match f.await {
                Ok(Ok((n, _))) => in_bytes = n,
                Ok(Err(e)) => {
                    tail.push(format!("\n(switchyard: feeding stdin failed: {e})").as_bytes())
                }
                Err(e) => {
                    tail.push(format!("\n(switchyard: feeding stdin failed: {e})").as_bytes())
                }
            }
            progress(in_bytes);
        } else if stdout.is_some() {
            progress(out_bytes);
        }
        // The exit code may lag the end of the stream by a moment.
        let end = Instant::now() + Duration::from_secs(10);
        let code = loop {
            let i = self
                .d
                .inspect_exec(&created.id)
                .await
                .map_err(docker_err(what.clone()))?;
            match (i.running, i.exit_code) {
                (Some(false), Some(c)) => break c,
                _ if Instant::now() > end => {
                    return Err(ReleaseError::Failed(format!(
                        "{what}: no exit code from the engine"
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Ok(ExecOutcome {
            code,
            stdout_bytes: out_bytes,
            stdin_bytes: in_bytes,
            output_tail: tail.text(),
            stdout_text: String::from_utf8_lossy(&text).into_owned(),
        })
    }

    /// Stops every container of the environment (kept for inspection).
    pub async fn stop_env(&self, id: &EnvId) -> Result<(), ReleaseError> {
        for c in self
            .containers_of(&id.site, Some(&id.prefix), Some(id.color))
            .await?
        {
            let name = c.0;
            match self
                .d
                .stop_container(&name, Some(StopContainerOptions { t: 10 }))
                .await
            {
                Ok(()) => {}
                Err(DockerError::DockerResponseServerError {
                    status_code: 304 | 404,
                    ..
                }) => {}
                Err(e) => return Err(docker_err(format!("stop container {name}"))(e)),
            }
        }
        Ok(())
    }

    /// Removes the environment's containers, network and volumes (its data!).
    pub async fn remove_env(
        &self,
        id: &EnvId,
        rel: Option<&ReleaseConfig>,
    ) -> Result<(), ReleaseError> {
        let mut volumes: Vec<String> = Vec::new();
        for (name, _) in self
            .containers_of(&id.site, Some(&id.prefix), Some(id.color))
            .await?
        {
            if let Ok(c) = self.d.inspect_container(&name, None).await {
                for m in c.mounts.unwrap_or_default() {
                    if let (Some(bollard::models::MountPointTypeEnum::VOLUME), Some(n)) =
                        (m.typ, m.name)
                    {
                        volumes.push(n);
                    }
                }
            }
            match self
                .d
                .remove_container(
                    &name,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: false,
                        link: false,
                    }),
                )
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(docker_err(format!("remove container {name}"))(e)),
            }
        }
        if let Some(rel) = rel {
            for s in &rel.services {
                for (v, _) in &s.volumes {
                    volumes.push(id.volume(v));
                }
            }
        }
        volumes.sort();
        volumes.dedup();
        let own = format!("{}-{}-", id.prefix, id.color);
        for v in volumes.iter().filter(|v| v.starts_with(&own)) {
            match self
                .d
                .remove_volume(v, Some(RemoveVolumeOptions { force: true }))
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(docker_err(format!("remove volume {v}"))(e)),
            }
        }
        let net = id.network();
        match self.d.remove_network(&net).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(docker_err(format!("remove network {net}"))(e)),
        }
    }

    /// (name, state) of the site's containers, optionally for one prefix and color.
    async fn containers_of(
        &self,
        site: &str,
        prefix: Option<&str>,
        color: Option<Color>,
    ) -> Result<Vec<(String, String)>, ReleaseError> {
        Ok(self
            .list(site, prefix)
            .await?
            .into_iter()
            .filter(|e| color.is_none_or(|c| c == e.color))
            .flat_map(|e| e.containers.into_values())
            .collect())
    }

    /// The site's environments on this engine (every prefix, or one).
    pub async fn list(
        &self,
        site: &str,
        prefix: Option<&str>,
    ) -> Result<Vec<EnvInfo>, ReleaseError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{LABEL_SITE}={site}")]);
        let list = self
            .d
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(docker_err("list containers"))?;
        let mut envs: BTreeMap<(String, Color), EnvInfo> = BTreeMap::new();
        for c in list {
            let labels = c.labels.clone().unwrap_or_default();
            let (Some(p), Some(color), Some(svc)) = (
                labels.get(LABEL_PREFIX),
                labels.get(LABEL_COLOR).and_then(|c| Color::parse(c)),
                labels.get(LABEL_SERVICE),
            ) else {
                continue;
            };
            if prefix.is_some_and(|want| want != p) {
                continue;
            }
            let e = envs.entry((p.clone(), color)).or_insert_with(|| EnvInfo {
                prefix: p.clone(),
                color,
                version: labels.get(LABEL_VERSION).cloned().unwrap_or_default(),
                containers: BTreeMap::new(),
                web_addr: None,
            });
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let state = c.state.clone().unwrap_or_default();
            for port in c.ports.unwrap_or_default() {
                if let (Some(ip), Some(public)) = (port.ip.as_deref(), port.public_port) {
                    if ip == "127.0.0.1" {
                        e.web_addr = Some(SocketAddr::from(([127, 0, 0, 1], public)));
                    }
                }
            }
            e.containers.insert(svc.clone(), (name, state));
        }
        Ok(envs.into_values().collect())
    }
}

fn published(ports: &HashMap<String, Option<Vec<PortBinding>>>, port: u16) -> Option<SocketAddr> {
    ports
        .get(&format!("{port}/tcp"))?
        .as_ref()?
        .iter()
        .find_map(|b| {
            let ip: IpAddr = b.host_ip.as_deref()?.parse().ok()?;
            let p: u16 = b.host_port.as_deref()?.parse().ok()?;
            ip.is_loopback().then_some(SocketAddr::new(ip, p))
        })
}

/// The last few KiB of a command's output, for error messages.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    const MAX: usize = 4096;
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > Self::MAX {
            let cut = self.0.len() - Self::MAX;
            self.0.drain(..cut);
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).trim().to_string()
    }
}
