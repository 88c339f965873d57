//! An environment on the swarm: the attachable overlay network `{prefix}-{color}`, one service
//! `{prefix}-{color}-{service}` per configured service (labels as on the local engine, answering
//! to its service name on the network), volumes `{prefix}-{color}-{vol}` made by each node as a
//! task mounts them. The web publishes its port in host mode (an ephemeral port on each node that
//! runs a task); its pool is those node addresses. "Created, not started" is a service at 0
//! replicas; stopped is scaled to 0 (the service and its volumes stay for inspection).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Mount, MountTypeEnum, MountVolumeOptions,
    NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task,
    TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
};
use bollard::network::CreateNetworkOptions;
use bollard::service::{InspectServiceOptions, ListServicesOptions, UpdateServiceOptions};

use super::{api, is_not_found, swarm_err, Swarm};
use crate::config::{Color, EndpointMode, ReleaseConfig};
use crate::release::docker::{
    image_of, EnvId, EnvInfo, Replicas, LABEL_COLOR, LABEL_PREFIX, LABEL_SERVICE, LABEL_SITE,
    LABEL_VERSION,
};
use crate::release::ReleaseError;

/// The replicas a service runs once started (kept on the service: a stopped one has 0).
const LABEL_REPLICAS: &str = "switchyard.replicas";

fn state_of(t: &Task) -> String {
    t.status
        .as_ref()
        .and_then(|s| s.state)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn wants_running(t: &Task) -> bool {
    t.desired_state.map(|s| s.to_string()).as_deref() == Some("running")
}

impl Swarm {
    /// Creates the environment's network and services; the web at 0 replicas unless `start_web`.
    pub async fn create_env(
        &self,
        id: &EnvId,
        rel: &ReleaseConfig,
        start_web: bool,
    ) -> Result<(), ReleaseError> {
        let labels = id.labels();
        let net = id.network();
        self.manager
            .create_network(CreateNetworkOptions {
                name: net.clone(),
                driver: "overlay".into(),
                attachable: true,
                check_duplicate: true,
                labels: labels.clone(),
                ..Default::default()
            })
            .await
            .map_err(swarm_err(format!("create overlay network {net}")))?;
        for s in &rel.services {
            let name = id.container(&s.name);
            let is_web = s.name == rel.web;
            let mut l = labels.clone();
            l.insert(LABEL_SERVICE.into(), s.name.clone());
            let mut svc_labels = l.clone();
            svc_labels.insert(LABEL_REPLICAS.into(), s.replicas.to_string());
            let mounts = s
                .volumes
                .iter()
                .map(|(v, m)| Mount {
                    target: Some(m.clone()),
                    source: Some(id.volume(v)),
                    typ: Some(MountTypeEnum::VOLUME),
                    volume_options: Some(MountVolumeOptions {
                        labels: Some(labels.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect();
            let replicas = if is_web && !start_web { 0 } else { s.replicas };
            let spec = ServiceSpec {
                name: Some(name.clone()),
                labels: Some(svc_labels),
                task_template: Some(TaskSpec {
                    container_spec: Some(TaskSpecContainerSpec {
                        image: Some(image_of(s, &id.version)),
                        // As `cmd` on the local engine: the image's entrypoint is kept.
                        args: s.command.clone(),
                        env: Some(s.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                        labels: Some(l),
                        mounts: Some(mounts),
                        ..Default::default()
                    }),
                    placement: Some(TaskSpecPlacement {
                        constraints: Some(s.constraints.clone()),
                        ..Default::default()
                    }),
                    networks: Some(vec![NetworkAttachmentConfig {
                        target: Some(net.clone()),
                        aliases: Some(vec![s.name.clone()]),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                mode: Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated {
                        replicas: Some(replicas as i64),
                    }),
                    ..Default::default()
                }),
                endpoint_spec: Some(EndpointSpec {
                    mode: Some(match self.cfg.endpoint_mode {
                        EndpointMode::Vip => EndpointSpecModeEnum::VIP,
                        EndpointMode::Dnsrr => EndpointSpecModeEnum::DNSRR,
                    }),
                    ports: is_web.then(|| {
                        vec![EndpointPortConfig {
                            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                            target_port: Some(rel.web_port as i64),
                            publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                            ..Default::default()
                        }]
                    }),
                }),
                ..Default::default()
            };
            self.manager
                .create_service(spec, None)
                .await
                .map_err(swarm_err(format!("create service {name}")))?;
        }
        Ok(())
    }

    /// Scales one service of the environment to `replicas` (None: what the config gave it).
    async fn scale(&self, name: &str, replicas: Option<u32>) -> Result<(), ReleaseError> {
        let svc = self
            .manager
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
            .map_err(swarm_err(format!("inspect service {name}")))?;
        let version = svc.version.and_then(|v| v.index).unwrap_or(0);
        let mut spec = svc.spec.unwrap_or_default();
        let want = replicas.unwrap_or_else(|| {
            spec.labels
                .as_ref()
                .and_then(|l| l.get(LABEL_REPLICAS))
                .and_then(|r| r.parse().ok())
                .unwrap_or(1)
        });
        spec.mode = Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(want as i64),
            }),
            ..Default::default()
        });
        self.manager
            .update_service(
                name,
                spec,
                UpdateServiceOptions {
                    version,
                    ..Default::default()
                },
                None,
            )
            .await
            .map(|_| ())
            .map_err(swarm_err(format!("scale service {name} to {want}")))
    }

    /// Starts one service: scaled to its configured replicas.
    pub async fn start_service(&self, id: &EnvId, service: &str) -> Result<(), ReleaseError> {
        self.scale(&id.container(service), None).await
    }

    /// Waits until every desired task of a service runs (and is healthy, when its image has a
    /// HEALTHCHECK). A task the swarm could not start (no such image on its node, a constraint
    /// no node meets) is named with the swarm's reason.
    pub async fn wait_ready(
        &self,
        id: &EnvId,
        service: &str,
        deadline: Instant,
    ) -> Result<(), ReleaseError> {
        let name = id.container(service);
        let mut last;
        loop {
            let svc = self
                .manager
                .inspect_service(&name, None::<InspectServiceOptions>)
                .await
                .map_err(swarm_err(format!("inspect service {name}")))?;
            let desired = desired_of(svc.spec.as_ref());
            let tasks = api::tasks(self.manager_addr(), &name).await?;
            let mut ready = 0u32;
            last = format!("0/{desired} tasks running");
            for t in tasks.iter().filter(|t| wants_running(t)) {
                let st = state_of(t);
                if st != "running" {
                    let why = t
                        .status
                        .as_ref()
                        .and_then(|s| s.err.clone().or(s.message.clone()));
                    last = format!(
                        "a task is {st}{}",
                        why.map(|w| format!(": {w}")).unwrap_or_default()
                    );
                    continue;
                }
                let cid = t
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.container_id.clone());
                match (cid, t.node_id.as_deref()) {
                    (Some(cid), Some(node)) => {
                        let (_, e) = self.engine_of(node)?;
                        let h = e.health_of(&cid).await?;
                        match h.health.as_deref() {
                            None | Some("healthy") if h.running => ready += 1,
                            other => last = format!("a task's health check says {other:?}"),
                        }
                    }
                    _ => last = "a running task has no container yet".into(),
                }
            }
            if desired > 0 && ready >= desired {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ReleaseError::NotReady {
                    what: format!("service {name}"),
                    why: format!("{ready}/{desired} tasks ready at the deadline (last: {last}); see `docker service ps {name}`"),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The node addresses and host ports of the web's running tasks.
    pub async fn web_addrs(
        &self,
        id: &EnvId,
        rel: &ReleaseConfig,
    ) -> Result<Vec<SocketAddr>, ReleaseError> {
        let tasks = api::tasks(self.manager_addr(), &id.container(&rel.web)).await?;
        Ok(self.task_addrs(&tasks, rel.web_port))
    }

    fn task_addrs(&self, tasks: &[Task], port: u16) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for t in tasks
            .iter()
            .filter(|t| wants_running(t) && state_of(t) == "running")
        {
            let Some(node) = t.node_id.as_deref() else {
                continue;
            };
            let Ok((_, _)) = self.engine_of(node) else {
                continue;
            };
            let Some(ip) = self.node_addr(node) else {
                continue;
            };
            let ports = t
                .status
                .as_ref()
                .and_then(|s| s.port_status.as_ref())
                .and_then(|p| p.ports.clone())
                .unwrap_or_default();
            for p in ports {
                if p.target_port == Some(port as i64) {
                    if let Some(pp) = p.published_port.and_then(|x| u16::try_from(x).ok()) {
                        if let Ok(ip) = ip.parse() {
                            out.push(SocketAddr::new(ip, pp));
                        }
                    }
                }
            }
        }
        // The swarm reports a host port once per address family.
        out.sort();
        out.dedup();
        out
    }

    fn node_addr(&self, node_id: &str) -> Option<String> {
        self.nodes.iter().find_map(|n| match &n.conn {
            Ok((_, id)) if id.node_id == node_id => Some(id.addr.clone()),
            _ => None,
        })
    }

    /// Scales every service of the environment to 0 (kept, with its volumes, for inspection).
    pub async fn stop_env(&self, id: &EnvId) -> Result<(), ReleaseError> {
        for name in self
            .services_of(&id.site, Some(&id.prefix), Some(id.color))
            .await?
            .into_keys()
        {
            match self.scale(&name, Some(0)).await {
                Ok(()) => {}
                Err(ReleaseError::Docker { source, .. }) if is_not_found(&source) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes the environment's services, then (once their tasks are gone) its volumes on every
    /// node and its network.
    pub async fn remove_env(
        &self,
        id: &EnvId,
        rel: Option<&ReleaseConfig>,
    ) -> Result<(), ReleaseError> {
        let mut volumes: Vec<String> = Vec::new();
        for (name, spec) in self
            .services_of(&id.site, Some(&id.prefix), Some(id.color))
            .await?
        {
            let mounts = spec
                .task_template
                .and_then(|t| t.container_spec)
                .and_then(|c| c.mounts)
                .unwrap_or_default();
            volumes.extend(mounts.into_iter().filter_map(|m| m.source));
            match self.manager.delete_service(&name).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(swarm_err(format!("remove service {name}"))(e)),
            }
        }
        if let Some(rel) = rel {
            for s in &rel.services {
                volumes.extend(s.volumes.iter().map(|(v, _)| id.volume(v)));
            }
        }
        let own = format!("{}-{}-", id.prefix, id.color);
        volumes.retain(|v| v.starts_with(&own));
        volumes.sort();
        volumes.dedup();
        // The swarm removes the task containers a moment after the service: until then a volume
        // is in use and the network has endpoints.
        let deadline = Instant::now() + Duration::from_secs(60);
        for n in &self.nodes {
            let Ok((e, _)) = &n.conn else { continue };
            retry(deadline, || e.remove_volumes(&volumes))
                .await
                .map_err(|err| {
                    ReleaseError::Failed(format!("node {} ({}): {err}", n.name, n.addr))
                })?;
        }
        let net = id.network();
        retry(deadline, || async {
            match self.manager.remove_network(&net).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(swarm_err(format!("remove network {net}"))(e)),
            }
        })
        .await
    }

    /// name → spec of the site's services (every prefix or one; every color or one).
    async fn services_of(
        &self,
        site: &str,
        prefix: Option<&str>,
        color: Option<Color>,
    ) -> Result<BTreeMap<String, ServiceSpec>, ReleaseError> {
        let mut want = vec![format!("{LABEL_SITE}={site}")];
        if let Some(p) = prefix {
            want.push(format!("{LABEL_PREFIX}={p}"));
        }
        if let Some(c) = color {
            want.push(format!("{LABEL_COLOR}={c}"));
        }
        let list = self
            .manager
            .list_services(Some(ListServicesOptions {
                filters: HashMap::from([("label".to_string(), want)]),
                ..Default::default()
            }))
            .await
            .map_err(swarm_err("list services"))?;
        Ok(list
            .into_iter()
            .filter_map(|s| s.spec)
            .filter_map(|s| Some((s.name.clone()?, s)))
            .collect())
    }

    /// The site's environments on the swarm, with each service's tasks and the web's addresses.
    pub async fn list(
        &self,
        site: &str,
        prefix: Option<&str>,
        web: &str,
        web_port: u16,
    ) -> Result<Vec<EnvInfo>, ReleaseError> {
        let mut envs: BTreeMap<(String, Color), EnvInfo> = BTreeMap::new();
        for (name, spec) in self.services_of(site, prefix, None).await? {
            let labels = spec.labels.clone().unwrap_or_default();
            let (Some(p), Some(color), Some(svc)) = (
                labels.get(LABEL_PREFIX),
                labels.get(LABEL_COLOR).and_then(|c| Color::parse(c)),
                labels.get(LABEL_SERVICE),
            ) else {
                continue;
            };
            let e = envs.entry((p.clone(), color)).or_insert_with(|| EnvInfo {
                prefix: p.clone(),
                color,
                version: labels.get(LABEL_VERSION).cloned().unwrap_or_default(),
                containers: BTreeMap::new(),
                web_addr: None,
                web_addrs: Vec::new(),
                replicas: BTreeMap::new(),
            });
            let tasks = api::tasks(self.manager_addr(), &name).await?;
            let desired = desired_of(Some(&spec));
            let running: Vec<&Task> = tasks
                .iter()
                .filter(|t| wants_running(t) && state_of(t) == "running")
                .collect();
            let mut nodes: Vec<String> = running
                .iter()
                .filter_map(|t| t.node_id.as_deref())
                .map(|n| self.node_name(n))
                .collect();
            nodes.sort();
            let n = running.len() as u32;
            let state = match (n, desired) {
                (_, 0) => "stopped".to_string(),
                (n, d) if n >= d => "running".to_string(),
                (n, d) => format!("starting ({n}/{d})"),
            };
            if svc == web {
                e.web_addrs = self.task_addrs(&tasks, web_port);
                e.web_addr = e.web_addrs.first().copied();
            }
            e.containers.insert(svc.clone(), (name.clone(), state));
            e.replicas.insert(
                svc.clone(),
                Replicas {
                    running: n,
                    desired,
                    nodes,
                },
            );
        }
        Ok(envs.into_values().collect())
    }
}

fn desired_of(spec: Option<&ServiceSpec>) -> u32 {
    spec.and_then(|s| s.mode.as_ref())
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0)
}

/// Runs `f` until it works or the deadline passes (then its last error).
async fn retry<F, Fut>(deadline: Instant, mut f: F) -> Result<(), ReleaseError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ReleaseError>>,
{
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
