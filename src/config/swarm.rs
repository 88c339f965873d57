//! `[site.release] engine` and `[site.release.swarm]` (issue 20): the environments as Docker Swarm
//! services instead of local containers, and how to reach each node's engine (a manager's engine
//! cannot exec in a worker's container, so backups and restores talk to the node that runs the
//! database task).

use std::collections::BTreeMap;
use std::fmt;

/// Which engine runs a site's environments.
#[derive(Debug, Clone, Default)]
pub enum EngineKind {
    /// Containers on the local engine (DOCKER_HOST or the default socket).
    #[default]
    Local,
    /// Services on a Docker Swarm.
    Swarm(SwarmConfig),
}

/// `[site.release.swarm]`.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The key in `nodes` whose engine is a manager: services, tasks and nodes are asked there.
    pub manager: String,
    /// name → engine address (`unix:///path.sock`, `tcp://host:port`), one per node that may run
    /// a task of the site.
    pub nodes: BTreeMap<String, String>,
    pub endpoint_mode: EndpointMode,
    /// The switch waits for this many healthy web replicas (None: every one).
    pub min_healthy_web: Option<u32>,
}

impl SwarmConfig {
    /// The manager's engine address.
    pub fn manager_addr(&self) -> &str {
        self.nodes
            .get(&self.manager)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// How a service answers on the color's overlay network: a virtual IP (IPVS in the kernel) or
/// DNS round-robin over the task addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

impl fmt::Display for EndpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        })
    }
}
