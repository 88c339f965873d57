//! The TOML file as written: strict serde structs (unknown keys are errors), with spans kept where a
//! later check must point at a line. Nothing here is trusted; `validate.rs` turns it into `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub proxy: S<RawProxy>,
    #[serde(default)]
    pub site: Vec<S<RawSite>>,
    /// Certificates from an ACME CA for the sites with `acme = true`.
    pub acme: Option<S<RawAcme>>,
    /// Several edges sharing one state in etcd (docs/cluster.md); absent: one edge, a state file.
    pub cluster: Option<S<RawCluster>>,
    /// Backups beyond one site's `[site.release]`: `[backups.offsite]` (docs/backups.md).
    pub backups: Option<RawBackups>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackups {
    pub offsite: Option<S<RawOffsite>>,
}

/// `[backups.offsite]`: a restic repository every site's sets are copied to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOffsite {
    pub repository: Option<S<String>>,
    pub password_file: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub restic: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub keep_last: Option<S<i64>>,
    pub keep_hourly: Option<S<i64>>,
    pub keep_daily: Option<S<i64>>,
    pub keep_weekly: Option<S<i64>>,
    pub keep_monthly: Option<S<i64>>,
    pub keep_yearly: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<S<String>>,
    #[serde(default)]
    pub contact: Vec<S<String>>,
    pub account_key: Option<S<String>>,
    pub challenge: Option<S<String>>,
    pub storage: Option<S<String>>,
    pub renew_before: Option<S<String>>,
    pub ca_certs: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default)]
    pub endpoints: Vec<S<String>>,
    pub prefix: Option<S<String>>,
    pub edge_id: Option<S<String>>,
    pub advertise: Option<S<String>>,
    pub dial_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub lease_ttl: Option<S<String>>,
    pub freshness: Option<S<String>>,
    pub max_write_duration: Option<S<String>>,
    pub ack_timeout: Option<S<String>>,
    pub startup_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub http: Option<S<String>>,
    pub https: Option<S<String>>,
    pub certs: Option<S<String>>,
    pub control: Option<S<String>>,
    pub control_allow: Option<S<BTreeMap<String, S<String>>>>,
    pub state: Option<S<String>>,
    pub metrics: Option<S<String>>,
    pub access_log: Option<S<String>>,
    pub access_log_format: Option<S<String>>,
    pub audit_log: Option<S<String>>,
    pub header_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub handshake_timeout: Option<S<String>>,
    pub upstream_connect_timeout: Option<S<String>>,
    pub upstream_timeout: Option<S<String>>,
    pub shutdown_timeout: Option<S<String>>,
    pub read_only_drain_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<String>>,
    pub max_body_bytes: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
    /// Listeners ("http", "https") whose connections from `trusted_proxies` start with a PROXY
    /// protocol header (v1 or v2).
    #[serde(default)]
    pub proxy_protocol: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: S<String>,
    #[serde(default)]
    pub hosts: Vec<S<String>>,
    pub active: Option<S<String>>,
    pub redirect_http: Option<bool>,
    /// `Strict-Transport-Security` added to the site's HTTPS responses.
    pub hsts: Option<S<String>>,
    /// Path prefixes whose error pages are JSON whatever the client's Accept (API clients).
    #[serde(default)]
    pub json_errors: Vec<S<String>>,
    #[serde(default)]
    pub preview_hosts: Vec<S<String>>,
    pub pools: Option<S<RawPools>>,
    pub health: Option<S<RawHealth>>,
    pub read_only: Option<S<RawReadOnly>>,
    pub maintenance: Option<S<RawMaintenance>>,
    pub release: Option<S<RawRelease>>,
    pub colors_hold_data: Option<S<bool>>,
    /// Certificates for the site's hosts from the `[acme]` directory.
    pub acme: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPools {
    #[serde(default)]
    pub blue: Vec<S<String>>,
    #[serde(default)]
    pub green: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<i64>>,
    pub fall: Option<S<i64>>,
    pub expect_status: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    #[serde(default)]
    pub allow_paths: Vec<S<String>>,
    #[serde(default)]
    pub allow_clients: Vec<S<String>>,
    /// An HTML file served as the maintenance page instead of the built-in one.
    pub page: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReadOnly {
    #[serde(default)]
    pub allow_paths: Vec<S<String>>,
    #[serde(default)]
    pub allow_clients: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelease {
    pub prefix: Option<S<String>>,
    pub backups: Option<S<String>>,
    pub keep_backups: Option<S<i64>>,
    pub web: Option<S<String>>,
    pub web_port: Option<S<i64>>,
    pub db: Option<S<String>>,
    pub app_read_only: Option<S<RawAppReadOnly>>,
    pub verify_restore: Option<Vec<String>>,
    pub health_timeout: Option<S<String>>,
    /// `freeze`, `online` or `auto` (issue 18): how the database reaches the new environment.
    pub flow: Option<S<String>>,
    pub online: Option<S<RawOnline>>,
    /// `local` (the default) or `swarm` (issue 20): which engine runs the environments.
    pub engine: Option<S<String>>,
    pub swarm: Option<S<RawSwarm>>,
    #[serde(default)]
    pub services: Vec<S<RawService>>,
}

/// `[site.release.swarm]`: how to reach the cluster's engines (issue 20).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwarm {
    /// The key in `nodes` of the manager whose engine takes the service calls.
    pub manager: Option<S<String>>,
    /// Each node's engine: a name (for messages) → `unix:///path.sock` or `tcp://host:port`.
    #[serde(default)]
    pub nodes: BTreeMap<String, S<String>>,
    pub endpoint_mode: Option<S<String>>,
    pub min_healthy_web: Option<S<i64>>,
}

/// `[site.release.online]`: how the online flow copies and catches up the database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnline {
    pub kind: Option<S<String>>,
    pub user: Option<S<String>>,
    pub password_env: Option<S<String>>,
    pub max_rounds: Option<S<i64>>,
    pub freeze_below: Option<S<String>>,
    pub dump: Option<S<Vec<String>>>,
    pub client: Option<S<String>>,
    pub binlog_tool: Option<S<String>>,
    pub compare: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppReadOnly {
    pub on: Vec<String>,
    pub off: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: S<String>,
    pub image: S<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub volumes: Vec<S<String>>,
    /// Names from `volumes` whose files belong in every backup set (restored into the new
    /// environment by a release).
    #[serde(default)]
    pub data_volumes: Vec<S<String>>,
    pub command: Option<Vec<String>>,
    pub backup: Option<Vec<String>>,
    pub restore: Option<Vec<String>>,
    pub migrate: Option<Vec<String>>,
    /// Swarm only: how many tasks (default 1).
    pub replicas: Option<S<i64>>,
    /// Swarm only: placement constraints, as `docker service create --constraint`.
    pub constraints: Option<S<Vec<String>>>,
}
