//! A site's environments on the engine: listed with the role each plays for the proxy, and pruned.
//! The rule of prune lives here: never the active environment, never the one `rollback` needs,
//! never one that is in a pool of the proxy.

use super::context::{site_of, Release};
use super::docker::{EnvId, EnvInfo};
use super::engine::Engine;
use super::journal;
use super::ReleaseError;
use crate::config::{Color, Config};
use crate::control::api::SiteStatus;
use crate::control::client::Client;

/// What an environment is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It serves: in the active pool (or the config's prefix of the active color).
    Active,
    /// The previous color, in its pool: `rollback` flips back to it.
    Rollback,
    /// In some other pool of the proxy.
    InPool,
    /// The environment an unfinished release is building (or left half-made).
    Building,
    /// Nothing routes to it: prune removes it.
    Idle,
}

/// The role of `e`, from the daemon's view of the site. `config_prefix` is the prefix of
/// `[site.release]`: its env of the active color counts as active even when it is not running.
pub fn role(e: &EnvInfo, st: &SiteStatus, config_prefix: &str) -> Role {
    let in_pool = |c: Color| {
        e.web_addr.iter().chain(&e.web_addrs).any(|a| {
            st.pools
                .get(&c)
                .is_some_and(|p| p.iter().any(|b| b.addr == a.to_string()))
        })
    };
    // The config's prefix of a color whose pool is set counts as that color's env even when its
    // web is down or its pool stale (after a restart, before `envs sync`): never prunable then.
    let ours = |c: Color| {
        e.color == c && e.prefix == config_prefix && st.pools.get(&c).is_some_and(|p| !p.is_empty())
    };
    let building = st
        .release
        .as_ref()
        .is_some_and(|r| r.to == e.color && r.to_version == e.version && r.to != st.active);
    if building {
        Role::Building
    } else if in_pool(st.active) || (e.color == st.active && e.prefix == config_prefix) {
        Role::Active
    } else if st
        .previous
        .is_some_and(|p| p != st.active && (in_pool(p) || ours(p)))
    {
        Role::Rollback
    } else if Color::ALL.iter().any(|c| in_pool(*c)) {
        Role::InPool
    } else {
        Role::Idle
    }
}

/// `envs list`: what is on the engine, and the daemon's view to give each its role (Err: the
/// daemon did not answer, and why).
pub struct Listing {
    pub envs: Vec<EnvInfo>,
    pub status: Result<SiteStatus, String>,
    pub config_prefix: String,
}

impl Listing {
    pub fn role(&self, e: &EnvInfo) -> Option<Role> {
        self.status
            .as_ref()
            .ok()
            .map(|st| role(e, st, &self.config_prefix))
    }
}

pub async fn list(
    cfg: &Config,
    client: &Client,
    site: &str,
    prefix: Option<&str>,
) -> Result<Listing, ReleaseError> {
    let (_, rel) = site_of(cfg, site)?;
    let envs = Engine::connect(rel).await?.list(site, prefix).await?;
    let status = match client.status().await {
        Ok(s) => s
            .sites
            .into_iter()
            .find(|x| x.name == site)
            .ok_or_else(|| format!("the daemon does not know site `{site}`")),
        Err(e) => Err(e.to_string()),
    };
    Ok(Listing {
        envs,
        status,
        config_prefix: rel.prefix.clone(),
    })
}

/// What prune did with one environment.
pub enum Pruned {
    Kept(EnvInfo, Role),
    Removed(EnvInfo),
    /// `--dry-run`: would have been removed.
    WouldRemove(EnvInfo),
}

/// `envs prune`: removes the environments of `prefix` (default the config's) that nothing needs,
/// with their volumes (with `dry_run`, none: each is reported as [`Pruned::WouldRemove`]).
/// `report` sees each outcome as it happens. Returns the prefix pruned.
pub async fn prune(
    cfg: &Config,
    client: &Client,
    site: &str,
    prefix: Option<&str>,
    dry_run: bool,
    mut report: impl FnMut(&Pruned),
) -> Result<String, ReleaseError> {
    let _lock = journal::lock(cfg, site, "envs prune")?;
    if let Some(j) = journal::load(cfg, site)? {
        return Err(ReleaseError::Failed(format!("a release of {site} to {} is unfinished; run `release --resume` or `--abort` before pruning", j.to_version)));
    }
    let r = Release::open(cfg, client, site, prefix).await?;
    // A stale pool would make the rollback environment look unused: heal first.
    super::sync::before(&r, prefix.is_some()).await;
    let st = r.status().await?;
    for e in r.engine.list(site, Some(&r.prefix)).await? {
        let outcome = match role(&e, &st, &r.rel.prefix) {
            Role::Idle if dry_run => Pruned::WouldRemove(e),
            Role::Idle => {
                let id = EnvId {
                    site: site.to_string(),
                    prefix: e.prefix.clone(),
                    color: e.color,
                    version: e.version.clone(),
                };
                r.engine.remove_env(&id, Some(r.rel)).await?;
                Pruned::Removed(e)
            }
            why => Pruned::Kept(e, why),
        };
        report(&outcome);
    }
    Ok(r.prefix)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use super::*;
    use crate::control::api::BackendStatus;

    fn env(prefix: &str, color: Color, port: Option<u16>) -> EnvInfo {
        EnvInfo {
            prefix: prefix.into(),
            color,
            version: "1".into(),
            containers: BTreeMap::new(),
            web_addr: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            web_addrs: Vec::new(),
            replicas: BTreeMap::new(),
        }
    }

    fn status(active: Color, previous: Option<Color>, pools: &[(Color, u16)]) -> SiteStatus {
        let mut by_color: BTreeMap<Color, Vec<BackendStatus>> = BTreeMap::new();
        for (c, p) in pools {
            by_color.entry(*c).or_default().push(BackendStatus {
                addr: format!("127.0.0.1:{p}"),
                healthy: true,
                ejected: false,
            });
        }
        SiteStatus {
            name: "wiki".into(),
            hosts: vec![],
            active,
            previous,
            switched_at: None,
            read_only: false,
            maintenance: false,
            writes_since_switch: BTreeMap::new(),
            written_since_switch: false,
            writes_in_flight: 0,
            pools: by_color,
            has_release: true,
            release: None,
            last_backup: None,
            last_offsite: None,
            last_drill: None,
        }
    }

    #[test]
    fn prune_keeps_the_active_and_the_rollback_env() {
        use Color::{Blue, Green};
        let st = status(Green, Some(Blue), &[(Green, 2), (Blue, 1)]);
        assert_eq!(role(&env("w", Green, Some(2)), &st, "w"), Role::Active);
        assert_eq!(role(&env("w", Blue, Some(1)), &st, "w"), Role::Rollback);
        // Stopped (no port) but the config's prefix of the active color: still active.
        assert_eq!(role(&env("w", Green, None), &st, "w"), Role::Active);
        // Another prefix's stopped env of the idle color: prunable.
        assert_eq!(role(&env("x", Blue, None), &st, "w"), Role::Idle);
        // A half-made env, its pool emptied by the failure path: prunable.
        let st = status(Blue, None, &[(Blue, 1)]);
        assert_eq!(role(&env("w", Green, Some(3)), &st, "w"), Role::Idle);
        // In the idle pool without being the rollback target: kept.
        let st = status(Blue, None, &[(Blue, 1), (Green, 3)]);
        assert_eq!(role(&env("w", Green, Some(3)), &st, "w"), Role::InPool);
        // After a restart the rollback env's web is on a new port (or down) and its pool stale:
        // still the rollback env, not prunable.
        let st = status(Green, Some(Blue), &[(Green, 2), (Blue, 1)]);
        assert_eq!(role(&env("w", Blue, Some(9)), &st, "w"), Role::Rollback);
        assert_eq!(role(&env("w", Blue, None), &st, "w"), Role::Rollback);
        // ... but another prefix's env of that color is not.
        assert_eq!(role(&env("x", Blue, None), &st, "w"), Role::Idle);
    }

    #[test]
    fn an_env_a_release_is_building_is_labelled_so() {
        use Color::{Blue, Green};
        let mut st = status(Blue, None, &[(Blue, 1)]);
        st.release = Some(crate::control::api::ReleaseProgress {
            from: Blue,
            to: Green,
            to_version: "1".into(),
            step: "3/6 backup".into(),
            started_at: String::new(),
            updated_at: String::new(),
            pid: 1,
            running: true,
        });
        // Stopped, its web not started yet: not "idle (prunable)".
        assert_eq!(role(&env("w", Green, None), &st, "w"), Role::Building);
        assert_eq!(role(&env("w", Blue, Some(1)), &st, "w"), Role::Active);
    }
}
