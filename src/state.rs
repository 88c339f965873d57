//! `proxy.state`: what the control API changed (active colors, pools, read-only), so a restart serves
//! exactly what was active before it. Saved atomically (tmp, fsync, rename, fsync dir) before the API
//! answers. A state file that exists but cannot be read or parsed stops the start: silently falling
//! back to the config's `active` could send traffic to an environment with old data.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Color;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}. Fix its permissions or restore it from a backup; switchyard will not start without it because it records which environment is live.")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({source}). Restore it (a copy is kept at {path}.bak after each change) or, if you know which colors are live, remove it to start from the config's `active`.")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write state file {path}: {source}. The change was not made.")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Bumped on every accepted change; clients send it back in If-Match.
    pub version: u64,
    #[serde(default)]
    pub sites: BTreeMap<String, SiteState>,
    #[serde(default)]
    pub read_only: Option<ReadOnlyState>,
    /// Maintenance mode: every request of the covered sites gets the maintenance page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceState>,
    /// With `[cluster]`, the file is this edge's last snapshot of the shared state, and this
    /// says of which cluster and at which etcd revision (`version` is that revision too). A start
    /// that cannot reach etcd may serve reads from it, never writes (docs/cluster.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotTag>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotTag {
    /// The cluster's key prefix.
    pub prefix: String,
    pub revision: i64,
    pub saved: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteState {
    pub active: Color,
    #[serde(default)]
    pub previous: Option<Color>,
    #[serde(default)]
    pub switched_at: Option<String>,
    /// Pools set through the control API; they override the config's.
    #[serde(default)]
    pub pools: BTreeMap<Color, Vec<String>>,
    /// Set when the first write reached the active color after the last switch, so the rollback
    /// guard still holds after a restart (the exact count lives in memory).
    #[serde(default)]
    pub written_since_switch: bool,
    /// How long upgraded connections of the old color may stay after the last switch (so that
    /// every edge of a cluster drains them alike). None: 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_s: Option<u64>,
}

impl SiteState {
    /// A site's state before its first change: `active`, nothing else recorded yet.
    pub fn new(active: Color) -> SiteState {
        SiteState {
            active,
            previous: None,
            switched_at: None,
            pools: BTreeMap::new(),
            written_since_switch: false,
            drain_s: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadOnlyState {
    pub reason: String,
    pub retry_after_s: u64,
    /// `None`: every site.
    #[serde(default)]
    pub sites: Option<Vec<String>>,
    pub since: String,
}

impl ReadOnlyState {
    pub fn covers(&self, site: &str) -> bool {
        covers(&self.sites, site)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MaintenanceState {
    /// What users see on the maintenance page.
    pub message: String,
    pub retry_after_s: u64,
    /// `None`: every site.
    #[serde(default)]
    pub sites: Option<Vec<String>>,
    pub since: String,
}

impl MaintenanceState {
    pub fn covers(&self, site: &str) -> bool {
        covers(&self.sites, site)
    }
}

fn covers(sites: &Option<Vec<String>>, site: &str) -> bool {
    sites.as_ref().is_none_or(|s| s.iter().any(|n| n == site))
}

/// Loads the state file. `Ok(None)` when it does not exist yet (first start).
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.into(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.into(),
            source,
        })
}

/// Writes the state atomically: a temp file beside it, fsync, rename over, fsync the directory.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(state).expect("state serializes");
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| StateError::Write {
        path: path.into(),
        source,
    })
}

/// tmp + fsync + rename + fsync(dir). Also keeps the previous version as `FILE.bak`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    if path.exists() {
        // Best effort: a hard link keeps the last good copy without a second write.
        let bak = dir.join(format!("{name}.bak"));
        let _ = std::fs::remove_file(&bak);
        let _ = std::fs::hard_link(path, &bak);
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert!(load(&p).unwrap().is_none());
        let mut s = State {
            version: 3,
            ..Default::default()
        };
        s.sites.insert(
            "wiki".into(),
            SiteState {
                active: Color::Green,
                previous: Some(Color::Blue),
                switched_at: None,
                pools: BTreeMap::new(),
                written_since_switch: false,
                drain_s: None,
            },
        );
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap().unwrap(), s);
        std::fs::write(&p, b"{ not json").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("corrupt"), "{e}");
    }
}
