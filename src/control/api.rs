//! Request and response types of the control API, shared by the server and the client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Color;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    pub to: Color,
    #[serde(default)]
    pub drain_s: Option<u64>,
    #[serde(default)]
    pub force: bool,
    /// Switch even though the active color took writes that the target does not have (a site
    /// whose colors hold their own data); those writes are left behind. Audited either way.
    #[serde(default)]
    pub discard_writes: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchResponse {
    pub site: String,
    pub from: Color,
    pub to: Color,
    pub changed: bool,
    pub switched_at: Option<String>,
    pub message: String,
    pub version: u64,
    /// With `[cluster]`: how far the change had spread when this answer was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpread>,
}

/// How far a change had spread over the edges of a cluster when it was answered.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ClusterSpread {
    /// The etcd revision of the change (the state `version`).
    pub revision: i64,
    /// True: every live edge acknowledged it (read-only: and reported no write in flight).
    /// False: the bound passed first; `missing` names who had not.
    pub complete: bool,
    pub acked: Vec<String>,
    pub missing: Vec<String>,
    /// Read-only only: edges that stopped answering, counted as drained because their freshness
    /// bound plus the longest write had passed (they refuse writes by then; docs/cluster.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bounded: Vec<String>,
    /// From the commit to the last acknowledgement (or to the bound).
    pub waited_ms: u64,
}

impl ClusterSpread {
    /// " (all 3 edges applied revision 57 in 4 ms)" or what is missing, for messages.
    pub fn describe(&self) -> String {
        let n = self.acked.len() + self.missing.len() + self.bounded.len();
        if self.complete && self.bounded.is_empty() {
            format!(
                " (all {n} edge(s) applied revision {} in {} ms)",
                self.revision, self.waited_ms
            )
        } else if self.complete {
            format!(
                " ({} edge(s) acknowledged revision {} and {} counted as drained by the freshness bound: {}; {} ms)",
                self.acked.len(),
                self.revision,
                self.bounded.len(),
                self.bounded.join(", "),
                self.waited_ms
            )
        } else {
            format!(
                " (revision {}: {} of {n} edge(s) acknowledged within {} ms; not yet: {})",
                self.revision,
                self.acked.len(),
                self.waited_ms,
                self.missing.join(", ")
            )
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOnlyRequest {
    pub on: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub retry_after_s: Option<u64>,
    #[serde(default)]
    pub sites: Option<Vec<String>>,
    /// How long to wait for writes in flight to finish (default: proxy.read_only_drain_timeout).
    #[serde(default)]
    pub wait_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadOnlyResponse {
    pub on: bool,
    pub reason: Option<String>,
    pub retry_after_s: Option<u64>,
    pub sites: Vec<String>,
    /// Milliseconds spent waiting for writes in flight.
    pub drained_ms: u64,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpread>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    pub backends: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolResponse {
    pub site: String,
    pub color: Color,
    pub backends: Vec<String>,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpread>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadResponse {
    pub sites: Vec<String>,
    pub certificates: Vec<String>,
    pub notes: Vec<String>,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub on: bool,
    /// What users see on the maintenance page (required with `on`).
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub retry_after_s: Option<u64>,
    /// Only these sites; default every site.
    #[serde(default)]
    pub sites: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceResponse {
    pub on: bool,
    pub message: Option<String>,
    pub retry_after_s: Option<u64>,
    pub sites: Vec<String>,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpread>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceInfo {
    pub message: String,
    pub retry_after_s: u64,
    pub sites: Option<Vec<String>>,
    pub since: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: u64,
    pub uptime_s: u64,
    pub read_only: Option<ReadOnlyInfo>,
    #[serde(default)]
    pub maintenance: Option<MaintenanceInfo>,
    pub sites: Vec<SiteStatus>,
    pub connections_open: u64,
    pub requests_total: u64,
    /// Per site, the certificates that answer for its hosts (hand-made and ACME).
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
    /// With `[cluster]`: the edges and what each has applied (also `GET /v1/cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// One certificate of a site, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub site: String,
    /// The file stem (NAME.crt); for ACME, the site's name.
    pub name: String,
    /// The names it serves (empty while an ACME site has none yet).
    pub names: Vec<String>,
    /// `file` (hand-made, in `proxy.certs`) or `acme`.
    pub source: String,
    /// RFC 3339.
    pub not_after: Option<String>,
    pub expires_in_s: Option<i64>,
    pub days_left: Option<i64>,
    /// For `acme`: how its orders go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeState>,
}

/// An ACME site's order state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcmeState {
    /// `ok`, `ordering`, `failing` (the last order failed) or `waiting` (none yet).
    pub state: String,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// RFC 3339: no order before this (backoff or the CA's Retry-After).
    pub next_attempt: Option<String>,
    /// Orders failed in a row.
    pub failures: u32,
    pub issued_at: Option<String>,
}

/// `GET /v1/cluster`: this edge's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The edge that answered.
    pub edge_id: String,
    pub prefix: String,
    /// The etcd endpoint it talks to now, and all it may.
    pub endpoint: String,
    pub endpoints: Vec<String>,
    /// The state revision this edge serves (the API's `version`).
    pub revision: i64,
    /// It admits writes: its view was confirmed within `freshness`.
    pub fresh: bool,
    /// Since its view was last confirmed (None: never).
    pub staleness_ms: Option<u64>,
    pub freshness_ms: u64,
    pub edges: Vec<EdgeStatus>,
    /// The last change made through this edge and how far it had spread when answered.
    #[serde(default)]
    pub last_change: Option<ClusterSpread>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeStatus {
    pub id: String,
    #[serde(default)]
    pub advertise: Option<String>,
    /// Its lease is alive (registered under `edges/`).
    pub live: bool,
    /// The revision it acknowledged last (0: none yet).
    pub applied: i64,
    pub fresh: bool,
    /// ok (applied the current revision, fresh), behind (an older revision), stale (refusing
    /// writes), gone (no lease: stopped, or cut off from etcd).
    pub health: String,
    /// Since its last acknowledgement reached this edge.
    pub last_ack_ms: Option<u64>,
    pub writes_in_flight: u64,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadOnlyInfo {
    pub reason: String,
    pub retry_after_s: u64,
    pub sites: Option<Vec<String>>,
    pub since: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteStatus {
    pub name: String,
    pub hosts: Vec<String>,
    pub active: Color,
    pub previous: Option<Color>,
    pub switched_at: Option<String>,
    pub read_only: bool,
    #[serde(default)]
    pub maintenance: bool,
    pub writes_since_switch: BTreeMap<Color, u64>,
    /// True once any write reached the active color since the last switch (survives restarts).
    pub written_since_switch: bool,
    pub writes_in_flight: u64,
    pub pools: BTreeMap<Color, Vec<BackendStatus>>,
    pub has_release: bool,
    /// A release of this site that has not finished (its journal), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseProgress>,
    /// The newest backup set of this site on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupInfo>,
    /// The last off-site copy run of this site's sets (`[backups.offsite]`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offsite: Option<OffsiteStatus>,
    /// The last restore drill of this site, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillStatus>,
}

/// One off-site copy run (after `backup`, a release, or `backups offsite copy`): kept in
/// `backups/{site}/.offsite.json`, shown by `status` and the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OffsiteStatus {
    /// RFC 3339, when the run ended.
    pub time: String,
    pub ok: bool,
    pub error: Option<String>,
    pub repository: String,
    /// Sets copied by this run, with their restic snapshot ids.
    #[serde(default)]
    pub copied: Vec<OffsiteCopy>,
    /// Local sets not off-site yet after this run (the next `backup` retries them).
    #[serde(default)]
    pub pending: Vec<String>,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OffsiteCopy {
    pub set: String,
    pub snapshot: String,
    pub bytes: u64,
}

/// One restore drill: kept in `backups/{site}/.drill.json`, audited, shown by `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillStatus {
    /// RFC 3339, when the drill ended.
    pub time: String,
    pub ok: bool,
    pub error: Option<String>,
    pub set: String,
    /// `local` or `offsite` (restored from the repository first).
    pub source: String,
    /// Bytes of the set.
    pub size: u64,
    pub duration_s: f64,
    /// What was checked, one line each (members restored, verify_restore, health).
    #[serde(default)]
    pub checks: Vec<String>,
}

/// `POST /v1/sites/{site}/backup-events`: the release tool reports an off-site run or a drill, so
/// the daemon audits it and counts it in its metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BackupEvent {
    Offsite(OffsiteStatus),
    Drill(DrillStatus),
}

/// A release in progress (or cut off: then `--resume` / `--abort`), from its journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseProgress {
    pub from: Color,
    pub to: Color,
    pub to_version: String,
    /// The step being worked on, e.g. "4/6 restore".
    pub step: String,
    pub started_at: String,
    pub updated_at: String,
    /// The release tool's process (gone: the release was cut off).
    pub pid: u32,
    pub running: bool,
}

/// The newest backup set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: String,
    pub taken_at: Option<String>,
    pub verified_at: Option<String>,
    pub size: Option<u64>,
    pub members: usize,
    /// Its manifest could not be read (then the set is not to be trusted).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    pub addr: String,
    pub healthy: bool,
    pub ejected: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// A machine-readable reason for refusals a client may act on, e.g. [`WRITES_WOULD_BE_LOST`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The 409 of a switch away from a color that took writes, on a site whose colors hold their own
/// data: resend with `"discard_writes": true` to switch anyway.
pub const WRITES_WOULD_BE_LOST: &str = "writes_would_be_lost";
