//! The Docker engine, through bollard. Owns every call to the engine; the rest of `release` never
//! sees a bollard type. Nothing here pulls an image: [`Engine::check_images`] only inspects the
//! local ones.
//!
//! - `names.rs`: what things are called (EnvId: containers, network, volumes, labels).
//! - `env.rs`: environments: create, start, stop, remove, list, the published web address.
//! - `exec.rs`: a command in a container, with stdin/stdout streamed.
//! - `archive.rs`: files out of and into a container's folders (tar streams, no helper image).
//! - `ready.rs`: waiting until a service is ready (HEALTHCHECK, else its TCP port).
//! - `node.rs`: an engine named by address (a swarm node's): who it is, its images, volumes.
//! - `events.rs`: container starts as they happen, and the host ports running containers publish.

mod archive;
mod env;
mod events;
mod exec;
mod names;
mod node;
mod ready;

use bollard::errors::Error as DockerError;
use bollard::Docker;

pub use env::{EnvInfo, Replicas};
pub use events::Published;
pub use exec::ExecOutcome;
pub use names::*;
pub use node::{ContainerHealth, NodeIdentity};

use super::ReleaseError;
use crate::config::ReleaseConfig;

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
}
