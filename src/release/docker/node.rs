//! One engine named by address (a swarm node's, issue 20): connect to it, ask who it is in the
//! swarm, whether it has an image, a container's health, and remove the volumes a task made there.
//! The swarm module drives these; exec and archives go through the same [`Engine`] methods as on
//! the local engine.

use std::time::Duration;

use bollard::volume::RemoveVolumeOptions;
use bollard::{Docker, API_DEFAULT_VERSION};

use super::{docker_err, is_not_found, Engine};
use crate::release::ReleaseError;

/// Who an engine is in its swarm.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    /// The address the node advertises to the swarm (where its host-mode ports are reachable).
    pub addr: String,
}

/// A container's state as its engine sees it.
#[derive(Debug, Clone)]
pub struct ContainerHealth {
    pub running: bool,
    /// The HEALTHCHECK's verdict (healthy, starting, unhealthy), None without one.
    pub health: Option<String>,
}

impl Engine {
    /// The engine at `addr` (`unix:///path.sock`, `tcp://host:port`), pinged within 5 s.
    pub async fn connect_to(addr: &str) -> Result<Engine, ReleaseError> {
        let d = if addr.starts_with("unix://") {
            Docker::connect_with_unix(addr, 120, API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(addr, 120, API_DEFAULT_VERSION)
        }
        .map_err(|source| ReleaseError::Docker {
            what: format!("connect to the engine at {addr}"),
            source,
        })?;
        match tokio::time::timeout(Duration::from_secs(5), d.ping()).await {
            Ok(Ok(_)) => Ok(Engine { d }),
            Ok(Err(source)) => Err(ReleaseError::Docker {
                what: format!("answer at {addr}"),
                source,
            }),
            Err(_) => Err(ReleaseError::Failed(format!(
                "the engine at {addr} did not answer within 5s"
            ))),
        }
    }

    /// Whether the engine still answers (within 5 s).
    pub async fn answers(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(5), self.d.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5s".into()),
        }
    }

    /// This engine's node in its swarm; Err when it is in none.
    pub async fn identity(&self) -> Result<NodeIdentity, ReleaseError> {
        let info = self.d.info().await.map_err(docker_err("report its info"))?;
        let sw = info.swarm.unwrap_or_default();
        match (sw.node_id.filter(|n| !n.is_empty()), sw.node_addr) {
            (Some(node_id), Some(addr)) => Ok(NodeIdentity { node_id, addr }),
            _ => Err(ReleaseError::Failed(
                "this engine is not part of a swarm (docker swarm init / join)".into(),
            )),
        }
    }

    /// Whether the image is on this engine (nothing is pulled).
    pub async fn has_image(&self, image: &str) -> Result<bool, ReleaseError> {
        match self.d.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(docker_err(format!("inspect image {image}"))(e)),
        }
    }

    /// A container's running state and health.
    pub async fn health_of(&self, container: &str) -> Result<ContainerHealth, ReleaseError> {
        let c = self
            .d
            .inspect_container(container, None)
            .await
            .map_err(docker_err(format!("inspect container {container}")))?;
        let st = c.state.unwrap_or_default();
        Ok(ContainerHealth {
            running: st.running == Some(true),
            health: st
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
        })
    }

    /// Removes named volumes (gone already is fine). A volume still in use is an error.
    pub async fn remove_volumes(&self, names: &[String]) -> Result<(), ReleaseError> {
        for v in names {
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
        Ok(())
    }
}
