//! The TOML contract (see DESIGN.md "Config"): `config.toml -> RawConfig -> validate -> Config`.
//!
//! `check`, `serve` and `reload` all go through [`load`], which returns either a checked [`Config`]
//! or *every* problem found, each with file:line and a hint. Relative paths in the file are taken
//! relative to the directory of the config file.

mod online;
pub mod perms;
mod raw;
mod swarm;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use swarm::{EndpointMode, EngineKind, SwarmConfig};
pub use validate::parse_config;

/// One of the two environments of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    pub fn idx(self) -> usize {
        self as usize
    }

    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    pub fn parse(s: &str) -> Option<Color> {
        match s {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every problem of a config file, ready to print one per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}. Check the path given to --config.")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid(p) => p.iter().map(|p| p.to_string()).collect(),
        }
    }
}

/// One problem: where it is, what is wrong, what to do.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub proxy: ProxyConfig,
    pub sites: Vec<SiteConfig>,
    /// `[acme]`, with its defaults when only a site's `acme = true` asks for it; None when no
    /// site uses ACME.
    pub acme: Option<AcmeConfig>,
    /// `[cluster]`: the state lives in etcd and several edges apply it (docs/cluster.md). None:
    /// one edge and its state file, exactly as without clustering.
    pub cluster: Option<ClusterConfig>,
    /// `[backups.offsite]`: where verified sets are copied off the host (restic). None: nowhere.
    pub offsite: Option<OffsiteConfig>,
}

/// `[backups.offsite]`: a restic repository (any backend restic knows) and its password file;
/// every site's sets go there as one snapshot each, tagged `site:NAME` and `set:ID`.
#[derive(Debug, Clone)]
pub struct OffsiteConfig {
    /// restic's repository: a local path (resolved against the config's folder) or a URL such
    /// as `rest:http://host:8000/`, `sftp:user@host:/srv/restic`, `s3:…`.
    pub repository: String,
    pub password_file: PathBuf,
    pub mode: OffsiteMode,
    /// The restic binary (default `restic` on PATH).
    pub restic: PathBuf,
    /// One restic run longer than this is stopped (restic retries a flaky server on its own).
    pub timeout: Duration,
    /// Retention, as restic's `forget --keep-*` flags: (flag, count); empty: nothing forgotten.
    pub keep: Vec<(&'static str, u32)>,
}

impl OffsiteConfig {
    /// The password inside the repository URL (`rest:https://user:PASSWORD@host/`), if any.
    fn url_password(&self) -> Option<&str> {
        let (_, rest) = self.repository.split_once("://")?;
        let authority = rest.split('/').next()?;
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (_, pass) = userinfo.split_once(':')?;
        (!pass.is_empty()).then_some(pass)
    }

    /// The repository as shown to people, in status and in the audit log: a password in the URL
    /// is replaced by `***`.
    pub fn shown(&self) -> String {
        self.redact(&self.repository)
    }

    /// `text` (restic's own messages too) with the URL's password replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        match self.url_password() {
            Some(p) => text.replace(p, "***"),
            None => text.to_string(),
        }
    }
}

/// When a set goes off-site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsiteMode {
    /// A release goes on once the set is verified locally; the copy is made after it, and its
    /// outcome reported (a failure is loud, and retried by the next `backup`).
    After,
    /// A release waits for the copy at step 3 and fails if it fails.
    Required,
}

/// Let's Encrypt's production directory, the default of `[acme] directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[acme]`: where certificates for `acme = true` sites come from and where they are kept.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The RFC 8555 directory URL (https).
    pub directory: String,
    /// `mailto:` addresses given to the CA.
    pub contact: Vec<String>,
    /// The account's private key (PEM PKCS#8, P-256); made with mode 0600 when missing.
    pub account_key: PathBuf,
    pub challenge: ChallengeKind,
    /// NAME.crt + NAME.key (+ NAME.json) per site; default `<certs>/acme`.
    pub storage: PathBuf,
    /// Renew once the certificate expires within this.
    pub renew_before: Duration,
    /// A PEM file of CAs to trust for the directory besides the webpki roots (a test CA).
    pub ca_certs: Option<PathBuf>,
}

/// How the CA checks that we control a host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// RFC 8737: a TLS handshake on the https listener with ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 8.3: `GET /.well-known/acme-challenge/TOKEN` on the plain listener.
    Http01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Http01 => "http-01",
        }
    }
}

/// `[cluster]`, checked. Every duration has a default; see docs/cluster.md for how they relate.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// Every key of this cluster lives under it (ends with `/`).
    pub prefix: String,
    /// This edge's name, unique in the cluster (default: the host name).
    pub edge_id: String,
    /// How people reach this edge, shown by `cluster status` (default: none).
    pub advertise: Option<String>,
    /// Connecting to one endpoint.
    pub dial_timeout: Duration,
    /// One etcd call; past it the endpoint counts as failed and the next one is tried.
    pub request_timeout: Duration,
    /// The lease of this edge's registration (`edges/{id}`).
    pub lease_ttl: Duration,
    /// F: a view older than this refuses writes (503, cluster state unknown).
    pub freshness: Duration,
    /// W: how long an admitted write may take at most (the barrier waits F + W for an edge that
    /// stopped answering). Default: `proxy.upstream_timeout`.
    pub max_write_duration: Duration,
    /// How long a change waits for every live edge to acknowledge it before answering anyway.
    pub ack_timeout: Duration,
    /// How long a start waits for etcd before serving reads from the local snapshot.
    pub startup_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub certs: Option<PathBuf>,
    pub control: PathBuf,
    pub control_allow: Vec<(Principal, Role)>,
    pub state: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub access_log: LogTarget,
    pub access_log_format: LogFormat,
    pub audit_log: PathBuf,
    pub limits: Limits,
    /// Peers whose forwarding headers (`Forwarded`, `X-Forwarded-*`) are kept and extended; from
    /// anyone else they are replaced by the edge's own.
    pub trusted_proxies: Vec<IpNet>,
    /// Listeners whose connections from `trusted_proxies` start with a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
}

/// Which listeners expect a PROXY protocol header (v1 or v2) from trusted proxies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyProtocol {
    pub http: bool,
    pub https: bool,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `time client host method path status bytes seconds color backend [aborted]`
    #[default]
    Text,
    /// One JSON object a line, the same fields.
    Json,
}

/// Who may talk to the control socket, besides root and the socket's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Uid(u32),
    Gid(u32),
}

/// What a control peer may do: `read` sees status, `operate` may change things.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Operate,
}

/// Timeouts and limits of the edge. Every one has a safe default.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub read_only_drain_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            read_only_drain_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            max_connections: 20_000,
        }
    }
}

/// A host name pattern: exact (`wiki.example.org`) or wildcard (`*.wiki.example.org`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// Stored as the suffix including the dot: `.wiki.example.org`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let lower = s.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return Err("empty host name".into());
        }
        if let Some(rest) = lower.strip_prefix("*.") {
            check_host_chars(rest)?;
            return Ok(HostPattern::Wildcard(format!(".{rest}")));
        }
        check_host_chars(&lower)?;
        Ok(HostPattern::Exact(lower))
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

fn check_host_chars(h: &str) -> Result<(), String> {
    if h.contains(':') && h.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!(
            "`{h}` contains a port or a colon; list host names without ports"
        ));
    }
    if let Some(c) = h
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
    {
        return Err(format!(
            "`{h}` contains `{c}`, which is not allowed in a host name"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub active: Color,
    pub redirect_http: bool,
    /// The `Strict-Transport-Security` value the edge adds to the site's HTTPS responses.
    pub hsts: Option<String>,
    /// Path prefixes whose error pages are JSON whatever the client's Accept says.
    pub json_errors: Vec<String>,
    pub preview_hosts: Vec<HostPattern>,
    /// Backends per color, from the config (the state file may override them).
    pub pools: [Vec<SocketAddr>; 2],
    pub health: Option<HealthConfig>,
    pub read_only: ReadOnlyPolicy,
    /// Who and what passes during maintenance mode, and the site's own page.
    pub maintenance: MaintenancePolicy,
    pub release: Option<ReleaseConfig>,
    /// Each color has its own copy of the data (true with `[site.release]`, or by
    /// `colors_hold_data = true`): a switch away from a color that took writes leaves them behind,
    /// so the daemon refuses it unless the request says `discard_writes`.
    pub colors_hold_data: bool,
    /// Certificates for `hosts` come from `[acme]` (exact names only).
    pub acme: bool,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// `None` accepts any 2xx or 3xx.
    pub expect_status: Option<u16>,
}

#[derive(Debug, Clone, Default)]
pub struct ReadOnlyPolicy {
    pub allow_paths: Vec<String>,
    pub allow_clients: Vec<IpNet>,
}

impl ReadOnlyPolicy {
    /// A path is allowed when it equals an entry or starts with an entry that ends in `/` or `*`.
    pub fn path_allowed(&self, path: &str) -> bool {
        self.allow_paths.iter().any(|p| {
            if let Some(prefix) = p.strip_suffix('*') {
                path.starts_with(prefix)
            } else {
                path == p
            }
        })
    }

    pub fn client_allowed(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allow_clients.iter().any(|n| n.contains(&ip))
    }
}

/// `[site.maintenance]`: the allow lists (as for read-only) and an optional page of the site's own.
#[derive(Debug, Clone, Default)]
pub struct MaintenancePolicy {
    pub allow: ReadOnlyPolicy,
    /// The HTML of `page`, read when the config is loaded (so a reload picks up an edit).
    pub page: Option<std::sync::Arc<str>>,
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) compare as IPv4.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

#[derive(Debug, Clone)]
pub struct ReleaseConfig {
    pub prefix: String,
    pub backups: PathBuf,
    pub keep_backups: usize,
    pub web: String,
    pub web_port: u16,
    /// The service whose `backup`/`restore` commands take the dump.
    pub db: Option<String>,
    pub app_read_only: Option<(Vec<String>, Vec<String>)>,
    pub verify_restore: Option<Vec<String>>,
    pub health_timeout: Duration,
    /// How the database reaches the new environment (issue 18).
    pub flow: Flow,
    /// The online flow's settings (defaults when `[site.release.online]` is left out).
    pub online: OnlineConfig,
    /// Which engine runs the environments (issue 20): the local one, or a Docker Swarm.
    pub engine: EngineKind,
    pub services: Vec<ServiceConfig>,
}

/// `[site.release] flow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    #[default]
    /// Read-only, then backup, restore, migrate (the window grows with the data).
    Freeze,
    /// Copy the database while writable, catch up from its change log, freeze for the last delta.
    Online,
    /// Online when the running database can do it, else freeze.
    Auto,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flow::Freeze => "freeze",
            Flow::Online => "online",
            Flow::Auto => "auto",
        })
    }
}

/// `[site.release.online]`. Only `kind = "mariadb"` exists: a full `mariadb-dump
/// --single-transaction --master-data=2`, then binlog deltas read with `mariadb-binlog`.
#[derive(Debug, Clone)]
pub struct OnlineConfig {
    /// The user the client commands log in as (none: the client's default, e.g. root by socket).
    pub user: Option<String>,
    /// The name of an environment variable *of the db container* holding that user's password.
    pub password_env: Option<String>,
    /// Catch-up rounds at most before freezing anyway.
    pub max_rounds: u32,
    /// A delta smaller than this (bytes) ends the catch-up: read-only goes on for the last one.
    pub freeze_below: u64,
    /// The full copy: the db's `backup` command with `--master-data=2` unless given.
    pub dump: Vec<String>,
    /// The SQL client in the db image (`mariadb`; `mysql` in older images).
    pub client: String,
    /// The binlog reader in the db image (`mariadb-binlog`; `mysqlbinlog` in older images).
    pub binlog_tool: String,
    /// Inside the window, compare every table (true), or only those the pre-compare did not
    /// find equal or the last delta touches (false, `compare = "changed"`, the default).
    pub compare_all: bool,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// (volume name, mount path)
    pub volumes: Vec<(String, String)>,
    /// Names from `volumes` whose files are data: archived in every backup set and restored into
    /// the new environment before its web starts.
    pub data_volumes: Vec<String>,
    pub command: Option<Vec<String>>,
    pub backup: Option<Vec<String>>,
    pub restore: Option<Vec<String>>,
    pub migrate: Option<Vec<String>>,
    /// Swarm: how many tasks run it (1 on the local engine).
    pub replicas: u32,
    /// Swarm: placement constraints (`node.labels.db==1`); none on the local engine.
    pub constraints: Vec<String>,
}

impl ReleaseConfig {
    /// Every data volume: (service, volume, mount path), in config order.
    pub fn data_volumes(&self) -> Vec<(&ServiceConfig, &str, &str)> {
        let mut out = Vec::new();
        for s in &self.services {
            for v in &s.data_volumes {
                if let Some((_, m)) = s.volumes.iter().find(|(n, _)| n == v) {
                    out.push((s, v.as_str(), m.as_str()));
                }
            }
        }
        out
    }
}

impl Config {
    pub fn site(&self, name: &str) -> Option<&SiteConfig> {
        self.sites.iter().find(|s| s.name == name)
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(path, &text)
}

/// What `switchyard check` runs: [`load`], then the certificates the config points at (a key that
/// does not match its certificate, a crt without its key, an empty folder), reported at the line
/// of `certs`. Separate from `load` because client commands read the config only to find the
/// control socket, and an operator running them may not be allowed to read private keys.
pub fn check(path: &Path) -> Result<Config, ConfigError> {
    let cfg = load(path)?;
    if let (Some(_), Some(dir)) = (&cfg.proxy.https, &cfg.proxy.certs) {
        let acme = cfg.acme.as_ref().map(|a| a.storage.as_path());
        if let Err(e) = crate::proxy::tls::load_store(dir, acme) {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            return Err(ConfigError::Invalid(vec![Problem {
                file: path.display().to_string(),
                line: key_line(&text, "certs").unwrap_or(1),
                message: e.to_string(),
            }]));
        }
    }
    Ok(cfg)
}

/// What `check` says besides problems: hosts of `acme = true` sites that a hand-made certificate
/// already serves (it wins; no order is made for them).
pub fn notes(cfg: &Config) -> Vec<String> {
    let (Some(_), Some(dir)) = (&cfg.proxy.https, &cfg.proxy.certs) else {
        return Vec::new();
    };
    let acme = cfg.acme.as_ref().map(|a| a.storage.as_path());
    let Ok(store) = crate::proxy::tls::load_store(dir, acme) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for site in cfg.sites.iter().filter(|s| s.acme) {
        for h in &site.hosts {
            if let HostPattern::Exact(n) = h {
                if let Some(stem) = store.hand_made_for(n) {
                    out.push(format!("note: site `{}`: {n} is served by the hand-made {stem}.crt, which wins over ACME; no certificate is ordered for it", site.name));
                }
            }
        }
    }
    out
}

/// The 1-based line where `key = ...` is set, if it is.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}
