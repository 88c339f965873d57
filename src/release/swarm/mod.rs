//! Environments as Docker Swarm services (issue 20). Owns every call to the swarm; the rest of
//! `release` never sees a bollard type. Services, networks and tasks are the manager's; exec,
//! archives, images and volumes are each node's own engine's (a manager cannot exec in a
//! worker's container), reached at the address `[site.release.swarm] nodes` names and matched to
//! the swarm's node by the id that engine reports. Nothing is pulled: [`Swarm::check_images`]
//! asks every node that may run a service whether it has the image.
//!
//! - `api.rs`: `GET /nodes` and `GET /tasks` (bollard 0.18 has no call for them).
//! - `place.rs`: which nodes a service's constraints allow.
//! - `services.rs`: create, start (scale up), stop (scale to 0), remove, list, addresses, readiness.

mod api;
mod place;
mod services;

use std::collections::BTreeMap;

use bollard::{Docker, API_DEFAULT_VERSION};

use super::docker::{image_of, Engine, NodeIdentity};
use super::ReleaseError;
use crate::config::{ReleaseConfig, SwarmConfig};

/// One node's engine as the config names it.
pub struct NodeEngine {
    pub name: String,
    pub addr: String,
    /// The engine and who it is in the swarm; Err: why it cannot be used now.
    conn: Result<(Engine, NodeIdentity), String>,
}

pub struct Swarm {
    cfg: SwarmConfig,
    manager: Docker,
    nodes: Vec<NodeEngine>,
}

fn swarm_err(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> ReleaseError {
    let what = what.into();
    move |source| ReleaseError::Docker { what, source }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Swarm {
    /// Connects to the manager (it must answer and be a manager) and to every node's engine (one
    /// that does not answer is remembered, and refused only where it is needed).
    pub async fn connect(cfg: &SwarmConfig) -> Result<Swarm, ReleaseError> {
        let maddr = cfg.manager_addr().to_string();
        let probe = Engine::connect_to(&maddr).await?;
        probe.identity().await.map_err(|e| {
            ReleaseError::Failed(format!("the manager {} ({maddr}): {e}", cfg.manager))
        })?;
        let manager = if let Some(p) = maddr.strip_prefix("unix://") {
            Docker::connect_with_unix(p, 120, API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(&maddr, 120, API_DEFAULT_VERSION)
        }
        .map_err(swarm_err(format!("connect to the manager at {maddr}")))?;
        let mut nodes = Vec::new();
        for (name, addr) in &cfg.nodes {
            let conn = match Engine::connect_to(addr).await {
                Ok(e) => match e.identity().await {
                    Ok(id) => Ok((e, id)),
                    Err(err) => Err(err.to_string()),
                },
                Err(err) => Err(err.to_string()),
            };
            nodes.push(NodeEngine {
                name: name.clone(),
                addr: addr.clone(),
                conn,
            });
        }
        Ok(Swarm {
            cfg: cfg.clone(),
            manager,
            nodes,
        })
    }

    fn manager_addr(&self) -> &str {
        self.cfg.manager_addr()
    }

    /// The engine of the swarm node `node_id`, or why there is none.
    fn engine_of(&self, node_id: &str) -> Result<(&NodeEngine, &Engine), ReleaseError> {
        for n in &self.nodes {
            if let Ok((e, id)) = &n.conn {
                if id.node_id == node_id {
                    return Ok((n, e));
                }
            }
        }
        let down: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.conn
                    .as_ref()
                    .err()
                    .map(|e| format!("{} ({}): {e}", n.name, n.addr))
            })
            .collect();
        Err(ReleaseError::Failed(format!(
            "no engine of [site.release.swarm] nodes is swarm node {node_id}{}; add its engine address to `nodes`",
            if down.is_empty() { String::new() } else { format!(" (not answering: {})", down.join("; ")) }
        )))
    }

    /// The config's name of a swarm node (its id when no engine of the config is that node).
    fn node_name(&self, node_id: &str) -> String {
        self.engine_of(node_id)
            .map(|(n, _)| n.name.clone())
            .unwrap_or_else(|_| node_id.chars().take(12).collect())
    }

    /// Every image of the release at `version` on every node that may run its service; Err names
    /// which node lacks which image, before anything changes.
    pub async fn check_images(
        &self,
        rel: &ReleaseConfig,
        version: &str,
    ) -> Result<(), ReleaseError> {
        let nodes = api::nodes(self.manager_addr()).await?;
        let mut missing = Vec::new();
        for s in &rel.services {
            let img = image_of(s, version);
            let eligible = place::eligible(&nodes, &s.constraints);
            if eligible.is_empty() {
                return Err(ReleaseError::Failed(format!(
                    "no ready node of the swarm satisfies the constraints of service `{}` ({}); label a node (`docker node update --label-add`) or fix `constraints`",
                    s.name,
                    s.constraints.join(", ")
                )));
            }
            for node_id in eligible {
                let (n, e) = self.engine_of(&node_id)?;
                if !e.has_image(&img).await? {
                    missing.push(format!("{img} on node {} ({})", n.name, n.addr));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ReleaseError::MissingOnNodes { missing })
        }
    }

    /// The engine and container id of the running task of service `service` (one task: the
    /// database, or the first web replica), for exec and archives.
    pub async fn locate(&self, service: &str) -> Result<(&Engine, String), ReleaseError> {
        let tasks = api::tasks(self.manager_addr(), service).await?;
        for t in tasks {
            let st = t.status.unwrap_or_default();
            let running = st.state.map(|s| s.to_string()) == Some("running".into());
            let cid = st.container_status.and_then(|c| c.container_id);
            if let (true, Some(cid), Some(node)) = (running, cid, t.node_id) {
                let (_, e) = self.engine_of(&node)?;
                return Ok((e, cid));
            }
        }
        Err(ReleaseError::NotReady {
            what: format!("service {service}"),
            why: "it has no running task (see `docker service ps`)".into(),
        })
    }

    /// Every node engine that answered at the start still answers: a release stops at the next
    /// step when one stops (it could not check, exec or clean up there), with the old
    /// environment serving.
    pub async fn check_nodes(&self) -> Result<(), ReleaseError> {
        for n in &self.nodes {
            if let Ok((e, _)) = &n.conn {
                if let Err(why) = e.answers().await {
                    return Err(ReleaseError::Failed(format!(
                        "the engine of swarm node {} ({}) stopped answering: {why}; start it again (the release can be run again once it answers)",
                        n.name, n.addr
                    )));
                }
            }
        }
        Ok(())
    }

    /// The nodes and their engines, for `envs list`.
    pub fn node_names(&self) -> BTreeMap<String, String> {
        self.nodes
            .iter()
            .filter_map(|n| {
                n.conn
                    .as_ref()
                    .ok()
                    .map(|(_, id)| (id.node_id.clone(), n.name.clone()))
            })
            .collect()
    }
}
