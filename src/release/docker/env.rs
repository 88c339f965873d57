//! Environments on the engine: network, per-environment volumes and one container per service;
//! created, started, stopped (kept for inspection), removed (with their data), listed by label.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, ListContainersOptions, NetworkingConfig,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::errors::Error as DockerError;
use bollard::models::{
    EndpointSettings, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::network::CreateNetworkOptions;
use bollard::volume::{CreateVolumeOptions, RemoveVolumeOptions};

use super::names::*;
use super::{docker_err, is_not_found, Engine};
use crate::config::{Color, ReleaseConfig};
use crate::release::ReleaseError;

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
    /// Every address the web answers on (a swarm: each running web task's node and port).
    pub web_addrs: Vec<SocketAddr>,
    /// A swarm's services: tasks running and desired, and the nodes they run on.
    pub replicas: BTreeMap<String, Replicas>,
}

/// One swarm service's tasks.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    pub running: u32,
    pub desired: u32,
    pub nodes: Vec<String>,
}

impl EnvInfo {
    pub fn running(&self) -> bool {
        !self.containers.is_empty() && self.containers.values().all(|(_, s)| s == "running")
    }
}

impl Engine {
    /// Creates and starts an environment: network, per-environment volumes, one container per
    /// service (in config order), the web port published on 127.0.0.1 (ephemeral). With
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
                web_addrs: Vec::new(),
                replicas: BTreeMap::new(),
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
                        let a = SocketAddr::from(([127, 0, 0, 1], public));
                        e.web_addr = Some(a);
                        e.web_addrs = vec![a];
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
