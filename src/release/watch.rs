//! `envs watch`: [`sync`](super::sync) at once whenever a container of an environment starts, and
//! every `every` in case an event was missed. When the engine goes away (an engine restart, a
//! reboot) it waits for it, opens the event stream again and syncs everything: containers that
//! their restart policy started before the stream was back are caught that way. A long-running
//! client of the engine and the daemon, like `release`: never on the request path, and the proxy
//! serves whether it runs or not. It never exits on a failure, only on Ctrl-C or SIGTERM. With a
//! swarm site (issue 20) the full sync runs every health interval of that site (at most `every`).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::context::site_of;
use super::docker::Engine;
use super::sync::sync;
use super::{interrupted, ReleaseError};
use crate::config::Config;
use crate::control::client::Client;

const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub async fn watch(
    cfg: &Config,
    client: &Client,
    sites: &[String],
    every: Duration,
) -> Result<(), ReleaseError> {
    let sites: Vec<String> = if sites.is_empty() {
        cfg.sites
            .iter()
            .filter(|s| s.release.is_some())
            .map(|s| s.name.clone())
            .collect()
    } else {
        for s in sites {
            site_of(cfg, s)?;
        }
        sites.to_vec()
    };
    if sites.is_empty() {
        return Err(ReleaseError::Failed(
            "no site of the config has a [site.release] section: nothing to watch".into(),
        ));
    }
    // A swarm reschedules a task without an event on this engine: its sites are synced every
    // health interval, so a pool follows its tasks about as fast as the health checks notice.
    let swarm_every = sites
        .iter()
        .filter_map(|s| cfg.site(s))
        .filter(|s| {
            s.release
                .as_ref()
                .is_some_and(|r| matches!(r.engine, crate::config::EngineKind::Swarm(_)))
        })
        .map(|s| {
            s.health
                .as_ref()
                .map(|h| h.interval)
                .unwrap_or(Duration::from_secs(1))
        })
        .min();
    let every = every.max(Duration::from_secs(1));
    let every = swarm_every.map_or(every, |s| every.min(s.max(Duration::from_millis(200))));
    say(format_args!(
        "envs watch: following {} (a sync at every container start, and every {})",
        sites.join(", "),
        humantime::format_duration(every)
    ));
    let mut w = Watcher {
        cfg,
        client,
        sites,
        every,
        said: HashMap::new(),
    };
    tokio::select! {
        _ = w.run() => Ok(()),
        _ = interrupted() => {
            say("envs watch: stopped");
            Ok(())
        }
    }
}

fn say(msg: impl std::fmt::Display) {
    println!("{} {msg}", crate::state::now_rfc3339());
}

struct Watcher<'a> {
    cfg: &'a Config,
    client: &'a Client,
    sites: Vec<String>,
    every: Duration,
    /// What was last printed per site (or "" for the engine), so a lasting problem is said once.
    said: HashMap<String, Vec<String>>,
}

impl Watcher<'_> {
    /// Prints `lines` unless they are what was last said about `key`.
    fn tell(&mut self, key: &str, lines: Vec<String>) {
        if self.said.get(key) == Some(&lines) {
            return;
        }
        for l in &lines {
            say(l);
        }
        self.said.insert(key.to_string(), lines);
    }

    async fn run(&mut self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let engine = match Engine::connect().await {
                Ok(e) => e,
                Err(e) => {
                    self.tell("", vec![format!("waiting for the Docker engine: {e}")]);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_secs(1);
            self.tell(
                "",
                vec!["following the Docker engine's container starts".into()],
            );
            self.follow(&engine).await;
        }
    }

    /// Until the event stream breaks. Subscribed before the first full sync, so a start in
    /// between is seen twice, never missed.
    async fn follow(&mut self, engine: &Engine) {
        let mut starts = std::pin::pin!(engine.starts());
        let mut next_full = Instant::now();
        let mut retry = Duration::from_secs(1);
        loop {
            tokio::select! {
                ev = starts.next() => {
                    let site = match ev {
                        Some(Ok(site)) => site,
                        Some(Err(e)) => {
                            self.tell("", vec![format!("lost the Docker engine's events ({e}); reconnecting")]);
                            return;
                        }
                        None => {
                            self.tell("", vec!["the Docker engine closed its event stream; reconnecting".into()]);
                            return;
                        }
                    };
                    // An engine restart starts many containers at once: one sync per site.
                    let mut due = BTreeSet::from([site]);
                    while let Some(Some(Ok(s))) = starts.next().now_or_never() {
                        due.insert(s);
                    }
                    let due: Vec<String> = due.into_iter().filter(|s| self.sites.contains(s)).collect();
                    for s in due {
                        if !self.sync(&s).await {
                            next_full = next_full.min(Instant::now() + retry);
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_full) => {
                    let mut ok = true;
                    for s in self.sites.clone() {
                        ok &= self.sync(&s).await;
                    }
                    // At boot the daemon may not answer yet: try again soon, not in `every`.
                    next_full = Instant::now() + if ok {
                        retry = Duration::from_secs(1);
                        self.every
                    } else {
                        let d = retry;
                        retry = (retry * 2).min(MAX_BACKOFF).min(self.every);
                        d
                    };
                }
            }
        }
    }

    /// One site; false when it could not be done (and why was said).
    async fn sync(&mut self, site: &str) -> bool {
        match sync(self.cfg, self.client, site, None).await {
            Ok(rep) => {
                let lines = rep.lines(false);
                // A change is news each time; a lasting problem only when it changes.
                if rep.changed() > 0 {
                    self.said.remove(site);
                }
                self.tell(site, lines);
                true
            }
            Err(e) => {
                self.tell(site, vec![format!("{site}: not synced: {e}")]);
                false
            }
        }
    }
}
