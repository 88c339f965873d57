//! `envs sync`: the pools follow the environments' web containers. Docker publishes a web on a
//! fresh ephemeral 127.0.0.1 port every time the container starts (`docker restart`, an engine
//! restart, a host reboot) while the daemon's pools still name the old one. A sync reads each
//! color's web container and, when the pool points elsewhere, sets the pool to it through the
//! control API: a pool change like any other (audited, `If-Match` on the version it looked at);
//! the active color, the switch history and the rollback guard are not touched.
//!
//! What it never does: empty a pool or fill an empty one (a container that is momentarily down
//! leaves its pool as it is), touch a pool that points at something outside Docker that answers
//! (set by hand), touch the idle color while a release is unfinished (its journal owns it), or run
//! while a release, backup or prune of the site holds the site's lock (those sync themselves).
//! Which environment a color follows: `--prefix`, else the one the release tool last set the pool
//! to (`bindings.rs`), else the config's prefix.

use std::net::SocketAddr;
use std::time::Duration;

use super::bindings;
use super::context::Release;
use super::docker::Published;
use super::journal;
use super::ReleaseError;
use crate::config::{Color, Config};
use crate::control::client::Client;

/// One color's web container, in the environment its pool follows.
#[derive(Debug, Clone)]
pub struct Web {
    pub container: String,
    /// Docker's state (running, exited, restarting…); None: no such container on this engine.
    pub state: Option<String>,
    /// Its port published on 127.0.0.1, while it runs.
    pub addr: Option<SocketAddr>,
}

impl Web {
    fn running_at(&self) -> Option<SocketAddr> {
        self.addr
            .filter(|_| self.state.as_deref() == Some("running"))
    }
}

/// What an address of a pool turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The web of this color, where it runs now.
    Web,
    /// Published by another container. After a reboot Docker hands the ports out afresh, so
    /// blue's old port may be green's now: such a pool is wrong, not merely stale.
    Other(String),
    /// No container publishes it but something answers: set by hand, not Docker's.
    Answers,
    /// Nothing answers: the container that had it came back on another port, or is gone.
    Dead,
}

/// What a sync did with one color's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The pool points at the web already.
    Unchanged,
    /// The pool was set to the web's address; `taken_by` holds an old address now.
    Set {
        to: String,
        taken_by: Option<String>,
    },
    /// Empty: nothing to follow (`up` and `release` fill it).
    Empty,
    /// Stale, but the web is not running: left as it is.
    NotRunning { taken_by: Option<String> },
    /// Something outside Docker answers on an address of the pool: left alone.
    External,
    /// An unfinished release owns this color: left alone.
    Releasing,
}

/// The decision for one color, from what each pool address is and where the web runs.
pub fn decide(pool: &[(String, Seen)], web: &Web, releasing: bool) -> Outcome {
    if pool.is_empty() {
        return Outcome::Empty;
    }
    if pool.iter().any(|(_, s)| *s == Seen::Web) {
        return Outcome::Unchanged;
    }
    if releasing {
        return Outcome::Releasing;
    }
    if pool.iter().any(|(_, s)| *s == Seen::Answers) {
        return Outcome::External;
    }
    let taken_by = pool.iter().find_map(|(_, s)| match s {
        Seen::Other(c) => Some(c.clone()),
        _ => None,
    });
    match web.running_at() {
        Some(a) => Outcome::Set {
            to: a.to_string(),
            taken_by,
        },
        None => Outcome::NotRunning { taken_by },
    }
}

/// The decision for one color on a swarm: the pool is the web's running tasks' addresses (a
/// rescheduled task, a replica added or gone); never emptied, never filled from empty. `to` of
/// [`Outcome::Set`] lists the addresses separated by spaces.
pub fn follow_tasks(pool: &[String], tasks: &[SocketAddr], releasing: bool) -> Outcome {
    if pool.is_empty() {
        return Outcome::Empty;
    }
    let mut have: Vec<String> = pool.to_vec();
    have.sort();
    let mut want: Vec<String> = tasks.iter().map(|a| a.to_string()).collect();
    want.sort();
    if have == want {
        return Outcome::Unchanged;
    }
    if releasing {
        return Outcome::Releasing;
    }
    if want.is_empty() {
        return Outcome::NotRunning { taken_by: None };
    }
    Outcome::Set {
        to: want.join(" "),
        taken_by: None,
    }
}

/// One color of a sync: the pool as it was, the web it follows, and what was done.
#[derive(Debug, Clone)]
pub struct ColorSync {
    pub color: Color,
    pub active: bool,
    pub pool: Vec<String>,
    pub web: Web,
    pub outcome: Outcome,
}

/// What `envs sync` did for one site.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub site: String,
    /// Another command holds the site's lock (who): nothing was looked at.
    pub busy: Option<String>,
    pub colors: Vec<ColorSync>,
    /// The state version before and after: it moves only when a pool was set.
    pub version: (u64, u64),
    pub notes: Vec<String>,
}

impl SyncReport {
    pub fn changed(&self) -> usize {
        self.colors
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Set { .. }))
            .count()
    }

    /// The active pool points at nothing and was left so: the site is down until someone acts.
    pub fn active_down(&self) -> bool {
        self.colors
            .iter()
            .any(|c| c.active && matches!(c.outcome, Outcome::NotRunning { .. }))
    }

    /// Lines for people. `all`: also the colors that needed nothing, and a summary.
    pub fn lines(&self, all: bool) -> Vec<String> {
        let site = &self.site;
        if let Some(holder) = &self.busy {
            return vec![format!(
                "{site}: not synced now: {holder} holds the site's lock and sets the pools itself"
            )];
        }
        let mut out: Vec<String> = self.notes.iter().map(|n| format!("note: {n}")).collect();
        for c in &self.colors {
            let head = format!(
                "{site} {}{}",
                c.color,
                if c.active { " (active)" } else { "" }
            );
            let pool = c.pool.join(" ");
            let web = &c.web.container;
            let line = match &c.outcome {
                Outcome::Unchanged if all => format!("{head}: unchanged, {pool} is {web}"),
                Outcome::Empty if all => format!("{head}: empty pool, nothing to follow"),
                Outcome::Unchanged | Outcome::Empty => continue,
                Outcome::Set { to, taken_by } => match taken_by {
                    Some(other) => format!("{head}: pool {pool} -> {to} ({pool} is {other}'s port now; {web} runs on {to})"),
                    None => format!("{head}: pool {pool} -> {to} ({web} came back on a new port)"),
                },
                Outcome::NotRunning { taken_by } => {
                    let what = match &c.web.state {
                        Some(s) => format!("{web} is not running ({s}): it comes back by itself if its restart policy starts it (`envs watch` follows it), else `docker start {web}`; then `switchyard envs sync {site}`"),
                        None => format!("there is no container {web} on this engine: recreate the environment, or point the pool by hand with `switchyard pool set {site} {} ADDR`", c.color),
                    };
                    let wrong = match taken_by {
                        Some(other) => format!(" WARNING: {pool} is {other}'s port now, so this pool reaches another environment."),
                        None if c.active => " The site gets 502/503 until then.".into(),
                        None => String::new(),
                    };
                    format!("{head}: pool {pool} LEFT AS IT IS: {what}.{wrong}")
                }
                Outcome::External => format!(
                    "{head}: pool {pool} left alone: it answers but no container publishes it (set by hand?){}",
                    match c.web.running_at() {
                        Some(a) => format!("; `switchyard pool set {site} {} {a}` points it at {web}", c.color),
                        None => String::new(),
                    }
                ),
                Outcome::Releasing => format!(
                    "{head}: pool {pool} left alone: a release of {site} is unfinished; `switchyard release {site} --resume` or `--abort` sets it"
                ),
            };
            out.push(line);
        }
        if all {
            let (a, b) = self.version;
            out.push(match self.changed() {
                0 => format!("{site}: nothing to change (state version {a})"),
                n => format!("{site}: {n} pool(s) set (state version {a} -> {b})"),
            });
        }
        out
    }
}

/// `envs sync SITE`: under the site's lock; a busy lock is reported, not waited for.
pub async fn sync(
    cfg: &Config,
    client: &Client,
    site: &str,
    prefix: Option<&str>,
) -> Result<SyncReport, ReleaseError> {
    let _lock = match journal::lock(cfg, site, journal::SYNC_LOCK) {
        Ok(l) => l,
        Err(ReleaseError::Locked { holder, .. }) => {
            return Ok(SyncReport {
                site: site.into(),
                busy: Some(holder),
                colors: Vec::new(),
                version: (0, 0),
                notes: Vec::new(),
            })
        }
        Err(e) => return Err(e),
    };
    let r = Release::open(cfg, client, site, prefix).await?;
    heal(&r, prefix.is_some()).await
}

/// At the start of a release-tool command that holds the site's lock: sync, print what changed or
/// is wrong, and never fail the command for it (its own checks say what blocks it).
pub async fn before(r: &Release<'_>, pinned: bool) {
    match heal(r, pinned).await {
        Ok(rep) => {
            for l in rep.lines(false) {
                r.progress.line(format_args!("envs sync: {l}"));
            }
        }
        Err(e) => r.progress.line(format_args!("envs sync: not done ({e})")),
    }
}

/// The sync itself, the site's lock held. `pinned`: the prefix was given on the command line,
/// so it is followed whatever the bindings say.
pub async fn heal(r: &Release<'_>, pinned: bool) -> Result<SyncReport, ReleaseError> {
    let site = r.name();
    let mut notes = Vec::new();
    let releasing = match journal::load(r.cfg, site) {
        Ok(None) => false,
        Ok(Some(_)) => true,
        Err(e) => {
            notes.push(format!("{e}; only the active color is synced"));
            true
        }
    };
    let (v0, st) = r.versioned_status().await?;
    let envs = r.engine.list(site, None).await?;
    let published = r.engine.published().await?;
    let bound = bindings::load(r.cfg, site);
    let mut version = v0;
    let mut colors = Vec::new();
    for color in Color::ALL {
        let pool: Vec<String> = st
            .pools
            .get(&color)
            .map(|p| p.iter().map(|b| b.addr.clone()).collect())
            .unwrap_or_default();
        let prefix = match bound.get(&color) {
            Some(b) if !pinned && pool.contains(&b.addr) => b.prefix.clone(),
            _ => r.prefix.clone(),
        };
        let env = envs.iter().find(|e| e.prefix == prefix && e.color == color);
        let found = env.and_then(|e| e.containers.get(&r.rel.web));
        let web = Web {
            container: found
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| format!("{prefix}-{color}-{}", r.rel.web)),
            state: found.map(|(_, s)| s.clone()),
            addr: env.and_then(|e| e.web_addr),
        };
        let active = color == st.active;
        let outcome = if r.engine.is_swarm() {
            let addrs = env.map(|e| e.web_addrs.clone()).unwrap_or_default();
            follow_tasks(&pool, &addrs, releasing && !active)
        } else {
            let mut seen = Vec::new();
            for a in &pool {
                seen.push((a.clone(), classify(a, &web, &published).await));
            }
            decide(&seen, &web, releasing && !active)
        };
        if let Outcome::Set { to, .. } = &outcome {
            let backends: Vec<String> = to.split(' ').map(str::to_string).collect();
            let resp = r
                .client
                .set_pool_if(site, color, backends, Some(version))
                .await
                .map_err(|source| ReleaseError::Control {
                    what: format!("set the {color} pool of {site} to {to} (if the state moved on while syncing, nothing was overwritten: run `switchyard envs sync {site}` again)"),
                    source,
                })?;
            version = resp.version;
            if let Err(e) = bindings::record(r.cfg, site, color, &prefix, &resp.backends) {
                notes.push(e);
            }
        }
        colors.push(ColorSync {
            color,
            active,
            pool,
            web,
            outcome,
        });
    }
    Ok(SyncReport {
        site: site.into(),
        busy: None,
        colors,
        version: (v0, version),
        notes,
    })
}

/// What `addr` is: the web, another container's port, or (no container publishes it) whether
/// anything answers there.
async fn classify(addr: &str, web: &Web, published: &Published) -> Seen {
    let Ok(a) = addr.parse::<SocketAddr>() else {
        return Seen::Dead;
    };
    if web.running_at() == Some(a) {
        return Seen::Web;
    }
    if let Some(c) = published.owner(a) {
        return Seen::Other(c.to_string());
    }
    // A refused connect on loopback comes back at once; the timeout is for remote addresses.
    match tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(a),
    )
    .await
    {
        Ok(Ok(_)) => Seen::Answers,
        _ => Seen::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(state: Option<&str>, port: Option<u16>) -> Web {
        Web {
            container: "p-blue-web".into(),
            state: state.map(str::to_string),
            addr: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
        }
    }

    fn pool(seen: &[Seen]) -> Vec<(String, Seen)> {
        seen.iter()
            .enumerate()
            .map(|(i, s)| (format!("127.0.0.1:{}", 40000 + i), s.clone()))
            .collect()
    }

    #[test]
    fn a_swarm_pool_follows_the_tasks() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let tasks = [a("10.0.0.1:30001"), a("10.0.0.2:30002")];
        let pool = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            follow_tasks(&pool(&["10.0.0.2:30002", "10.0.0.1:30001"]), &tasks, false),
            Outcome::Unchanged
        );
        assert_eq!(
            follow_tasks(&pool(&["10.0.0.2:30009", "10.0.0.1:30001"]), &tasks, false),
            Outcome::Set {
                to: "10.0.0.1:30001 10.0.0.2:30002".into(),
                taken_by: None
            }
        );
        assert_eq!(follow_tasks(&[], &tasks, false), Outcome::Empty);
        assert_eq!(
            follow_tasks(&pool(&["10.0.0.1:30001"]), &[], false),
            Outcome::NotRunning { taken_by: None }
        );
        assert_eq!(
            follow_tasks(&pool(&["10.0.0.1:30001"]), &tasks, true),
            Outcome::Releasing
        );
    }

    #[test]
    fn a_stale_pool_follows_the_running_web() {
        let w = web(Some("running"), Some(32800));
        assert_eq!(
            decide(&pool(&[Seen::Dead]), &w, false),
            Outcome::Set {
                to: "127.0.0.1:32800".into(),
                taken_by: None
            }
        );
        assert_eq!(decide(&pool(&[Seen::Web]), &w, false), Outcome::Unchanged);
    }

    /// After a reboot the old port may be another container's: that pool is wrong, and fixed.
    #[test]
    fn a_port_taken_by_another_container_is_fixed() {
        let w = web(Some("running"), Some(32800));
        assert_eq!(
            decide(&pool(&[Seen::Other("p-green-web".into())]), &w, false),
            Outcome::Set {
                to: "127.0.0.1:32800".into(),
                taken_by: Some("p-green-web".into())
            }
        );
    }

    /// Never to nothing, never from nothing, never over a hand-set address that answers.
    #[test]
    fn what_is_left_alone() {
        let down = web(Some("exited"), None);
        assert_eq!(
            decide(&pool(&[Seen::Dead]), &down, false),
            Outcome::NotRunning { taken_by: None }
        );
        // Listed with a port but not running (restarting): not followed.
        let restarting = web(Some("restarting"), Some(32800));
        assert_eq!(
            decide(&pool(&[Seen::Dead]), &restarting, false),
            Outcome::NotRunning { taken_by: None }
        );
        let gone = web(None, None);
        assert_eq!(
            decide(&pool(&[Seen::Dead]), &gone, false),
            Outcome::NotRunning { taken_by: None }
        );
        let up = web(Some("running"), Some(32800));
        assert_eq!(decide(&[], &up, false), Outcome::Empty);
        assert_eq!(
            decide(&pool(&[Seen::Dead, Seen::Answers]), &up, false),
            Outcome::External
        );
        assert_eq!(decide(&pool(&[Seen::Dead]), &up, true), Outcome::Releasing);
        // A pool that reaches the web (among others) already follows it.
        assert_eq!(
            decide(&pool(&[Seen::Dead, Seen::Web]), &up, true),
            Outcome::Unchanged
        );
    }
}
