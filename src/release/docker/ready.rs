//! Waiting for a service: its image's HEALTHCHECK says healthy, else one of its exposed TCP ports
//! accepts connections on the environment's network. Checked in a loop, never slept for blindly.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::names::EnvId;
use super::{docker_err, Engine};
use crate::release::ReleaseError;

impl Engine {
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
}
