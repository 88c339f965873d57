//! `pools-{site}.json` beside the state file: which environment (prefix) each color's pool was
//! last set to by the release tool, and to which address. After a restart the address is stale
//! and says nothing about the container it meant; this record lets `envs sync` follow the right
//! environment when a release ran with `--prefix` other than the config's. Advisory only: the
//! daemon's pools are the truth, and a record whose address is no longer in the pool is ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Color, Config};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub prefix: String,
    pub addr: String,
}

pub type Bindings = BTreeMap<Color, Binding>;

pub fn path(cfg: &Config, site: &str) -> PathBuf {
    super::journal::dir_of(cfg).join(format!("pools-{site}.json"))
}

/// The record, or none when it is missing or unreadable (it is only a hint).
pub fn load(cfg: &Config, site: &str) -> Bindings {
    std::fs::read(path(cfg, site))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records that `color`'s pool is `backends` for the environment of `prefix` (forgotten unless it
/// is one address). Err: what could not be written, for a note.
pub fn record(
    cfg: &Config,
    site: &str,
    color: Color,
    prefix: &str,
    backends: &[String],
) -> Result<(), String> {
    let mut b = load(cfg, site);
    let next = match backends {
        [one] => Some(Binding {
            prefix: prefix.to_string(),
            addr: one.clone(),
        }),
        _ => None,
    };
    if b.get(&color) == next.as_ref() {
        return Ok(());
    }
    match next {
        Some(n) => b.insert(color, n),
        None => b.remove(&color),
    };
    let p = path(cfg, site);
    let bytes = serde_json::to_vec_pretty(&b).map_err(|e| e.to_string())?;
    crate::state::write_atomic(&p, &bytes).map_err(|e| {
        format!(
            "cannot write {}: {e} (envs sync then follows the config's prefix)",
            p.display()
        )
    })
}
