//! The online release flow (issue 18): the database is copied into the new environment while
//! the site still takes writes, and the read-only window holds only the last few changes. For
//! MariaDB (`[site.release.online]`, kind mariadb):
//!
//! 1. `online copy`: `mariadb-dump --single-transaction --master-data=2` of the active db into the
//!    set being taken (the `db` member, hashed, read back) with the binlog position it stands
//!    at, restored into the new db.
//! 2. `online catch-up`: `mariadb-binlog` in the active db container from that position to the
//!    current one, into the set as a `db-delta` member (naming the member it follows), applied
//!    with `mariadb --binary-mode` in the new db; again until a delta is under `freeze_below`
//!    (or `max_rounds`).
//!    Then, still writable, `CHECKSUM TABLE` of every table on both sides (the pre-compare).
//! 3. after read-only on (step 2, the existing barrier): the last delta the same way, then
//!    `CHECKSUM TABLE` on both sides of every table but those the pre-compare found equal and
//!    the last delta does not touch (its `Table_map` events; a DDL or statement event in it
//!    means all tables): a table no event touched since the pre-compare is as it was then on
//!    both sides. Any difference stops the release before the switch. Then the data volumes
//!    and the manifest as in the freeze flow.
//!
//! The choice of flow is `plan::choose`; the steps are walked by the driver like the others.
//! Nothing here touches the active environment but to read from it. Never on the request path.

pub mod flow;
pub mod mariadb;

use std::time::Duration;

use super::backup::take::Partial;
use super::engine::Engine;
use crate::config::{Config, Flow};
use mariadb::Position;

/// What `check` adds for the sites whose `flow` is online or auto: it asks every running
/// database of the site's prefix whether its binary log can be replayed. (problems, notes):
/// a database that cannot do it is a problem for `online`, a note for `auto`; an engine or a
/// database that cannot be asked is a note (`release --plan` asks again before a release).
pub async fn check(cfg: &Config) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    let sites: Vec<_> = cfg
        .sites
        .iter()
        .filter_map(|s| Some((s, s.release.as_ref()?)))
        .filter(|(_, r)| r.flow != Flow::Freeze)
        .collect();
    if sites.is_empty() {
        return (problems, notes);
    }
    for (site, rel) in sites {
        let engine = match Engine::connect(rel).await {
            Ok(e) => e,
            Err(e) => {
                notes.push(format!(
                    "note: site `{}`: the online flow's database settings were not checked: {e}",
                    site.name
                ));
                continue;
            }
        };
        let Some(db) = rel.db.as_deref() else {
            continue;
        };
        let envs = match engine.list(&site.name, Some(&rel.prefix)).await {
            Ok(e) => e,
            Err(e) => {
                notes.push(format!("note: site `{}`: {e}", site.name));
                continue;
            }
        };
        let running: Vec<String> = envs
            .iter()
            .filter_map(|e| e.containers.get(db))
            .filter(|(_, state)| state == "running")
            .map(|(name, _)| name.clone())
            .collect();
        if running.is_empty() {
            notes.push(format!("note: site `{}` (flow = \"{}\"): no running database of prefix {} to ask about its binary log; `release --plan` asks before a release", site.name, rel.flow, rel.prefix));
        }
        for c in running {
            let said = mariadb::probe(&engine, &rel.online, &c).await;
            let missing = match &said {
                Ok(b) => b.missing(),
                Err(e) => vec![format!("it could not be asked ({e})")],
            };
            let line = format!(
                "site `{}` (flow = \"{}\"): database {c}",
                site.name, rel.flow
            );
            match (missing.is_empty(), rel.flow) {
                (true, _) => notes.push(format!(
                    "{line}: binary log on, ROW format: the online flow can run"
                )),
                (false, Flow::Online) => problems.push(format!(
                    "{line} cannot do the online flow: {}",
                    missing.join("; and ")
                )),
                (false, _) => notes.push(format!(
                    "note: {line}: the release will fall back to freeze: {}",
                    missing.join("; and ")
                )),
            }
        }
    }
    (problems, notes)
}

/// What the online flow has done so far in this walk: the set being taken (removed if the walk
/// fails or is cut off) and where in the old database's log the new database stands.
pub struct State {
    pub set: Partial,
    /// The folder of the old database's log files (from `@@log_bin_basename`), once asked.
    pub log_dir: Option<String>,
    /// The log position the new database has caught up to.
    pub at: Position,
    /// The last database member of the set (the dump, or the last delta): the next one follows it.
    pub last_member: String,
    pub deltas: u32,
    /// The tables found equal (with their checksum) when both sides were compared at the end
    /// of the catch-up; those the last delta does not touch are not compared again.
    pub equal_before: std::collections::BTreeMap<String, String>,
    /// How long the last delta took, read and applied.
    pub last_round: Duration,
    /// Its size.
    pub last_size: u64,
}

impl State {
    /// The `Retry-After` (seconds) to send with read-only on: the last round's time for the last
    /// delta, twice over for the table checksums, plus 5 s for the migration, the health check
    /// and the switch; 5 s at least, 300 at most.
    pub fn retry_after_s(&self) -> u64 {
        let est = (self.last_round.as_secs_f64() * 2.0).ceil() as u64 + 5;
        est.clamp(5, 300)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_the_last_round() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let rel_text = format!("[proxy]\nhttp = \"127.0.0.1:0\"\ncontrol = \"c.sock\"\nstate = \"s.json\"\n[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.release]\nbackups = \"{}\"\n[[site.release.services]]\nname = \"web\"\nimage = \"w:{{version}}\"\n", dir.path().display());
        let cfg = crate::config::parse_config(std::path::Path::new("t.toml"), &rel_text)
            .unwrap_or_else(|e| panic!("{e}"));
        let rel = cfg.sites[0]
            .release
            .clone()
            .unwrap_or_else(|| panic!("no release"));
        let env = crate::release::docker::EnvId {
            site: "w".into(),
            prefix: "p".into(),
            color: crate::config::Color::Blue,
            version: "1".into(),
        };
        let set = Partial::begin(&rel, &env).unwrap_or_else(|e| panic!("{e}"));
        let partial = set.dir.clone();
        let mut st = State {
            set,
            log_dir: None,
            at: Position {
                file: "b.1".into(),
                pos: 4,
            },
            last_member: "db".into(),
            deltas: 0,
            equal_before: Default::default(),
            last_round: Duration::from_millis(300),
            last_size: 0,
        };
        assert_eq!(st.retry_after_s(), 6);
        st.last_round = Duration::from_secs(20);
        assert_eq!(st.retry_after_s(), 45);
        st.last_round = Duration::from_secs(1000);
        assert_eq!(st.retry_after_s(), 300);
        assert!(partial.exists());
        drop(st);
        assert!(
            !partial.exists(),
            "an unfinished set is removed with the walk"
        );
    }
}
