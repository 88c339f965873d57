//! What off-site copies and drills leave on disk, all private (0600) and written atomically:
//!
//! - `{set}/offsite.json`: where and when that set was copied (restic snapshot id). A set with
//!   one is off-site; one without is pending and the next `backup` copies it.
//! - `backups/{site}/.offsite.json`: the last off-site run ([`OffsiteStatus`]).
//! - `backups/{site}/.drill.json`: the last drill ([`DrillStatus`]).
//!
//! The daemon reads the two site files for `status` (so they survive its restarts); set listing
//! skips names starting with `.`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::files;
use super::super::set::Set;
use crate::control::api::{DrillStatus, OffsiteStatus};

pub const SET_RECORD: &str = "offsite.json";
const LAST_OFFSITE: &str = ".offsite.json";
const LAST_DRILL: &str = ".drill.json";

/// `{set}/offsite.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Copied {
    pub repository: String,
    pub snapshot: String,
    pub copied_at: String,
}

pub fn copied(set: &Set) -> Option<Copied> {
    if set.legacy {
        return None;
    }
    let b = std::fs::read(set.dir.join(SET_RECORD)).ok()?;
    serde_json::from_slice(&b).ok()
}

pub fn write_copied(set: &Set, c: &Copied) -> std::io::Result<()> {
    write(&set.dir.join(SET_RECORD), c)
}

fn write<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let b = serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?;
    if let Some(d) = path.parent() {
        files::private_dir(d)?;
    }
    files::write_private_atomic(path, &b)
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let b = std::fs::read(path).ok()?;
    serde_json::from_slice(&b).ok()
}

fn at(site_dir: &Path, name: &str) -> PathBuf {
    site_dir.join(name)
}

pub fn last_offsite(site_dir: &Path) -> Option<OffsiteStatus> {
    read(&at(site_dir, LAST_OFFSITE))
}

pub fn write_last_offsite(site_dir: &Path, s: &OffsiteStatus) -> std::io::Result<()> {
    write(&at(site_dir, LAST_OFFSITE), s)
}

pub fn last_drill(site_dir: &Path) -> Option<DrillStatus> {
    read(&at(site_dir, LAST_DRILL))
}

pub fn write_last_drill(site_dir: &Path, s: &DrillStatus) -> std::io::Result<()> {
    write(&at(site_dir, LAST_DRILL), s)
}
