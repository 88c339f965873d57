//! The command line: parse, make one call (to the control client or to `release::`), print. No
//! business rule lives here: the daemon and `release` decide, this only words the answer. Exit
//! codes are decided in `main` from the error kind (0 done, 1 refused or failed, 2 usage).
//!
//! - `mod.rs`: the clap tree and the dispatch, one arm per subcommand.
//! - `control.rs`: the daemon's verbs (status, switch, read-only, pool, reload, rollback).
//! - `release.rs`: the Docker commands (up, release, envs).
//! - `backups.rs`: `backup` and `backups` (sets; `--json`).
//! - `offsite.rs`: `backups offsite` (restic copies) and `backups drill`.
//! - `cluster.rs`: `cluster status`, the edges of a `[cluster]`.
//! - `render.rs`: tables and lines for people.

mod backups;
mod cluster;
mod control;
mod offsite;
mod release;
mod render;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::{self, Color};
use crate::control::client::Client;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "A reverse proxy with built-in blue/green releases for stateful apps on Docker"
)]
pub struct Cli {
    /// Control socket of the running daemon (else SWITCHYARD_CONTROL, else the config's proxy.control).
    #[arg(long, global = true, env = "SWITCHYARD_CONTROL")]
    pub control: Option<PathBuf>,
    /// Config file (client commands read proxy.control from it).
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the proxy and its control socket.
    Serve,
    /// Print a shell completion script: `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `switchyard man > /usr/local/share/man/man1/switchyard.1`.
    Man,
    /// Run the proxy on 127.0.0.1:8080/:8443 in front of two built-in demo backends.
    Demo {
        /// The plain HTTP listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// The HTTPS listener (a self-signed dev certificate is made on first run).
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: String,
        /// The metrics listener: /metrics and the dashboard at /.
        #[arg(long, default_value = "127.0.0.1:9901")]
        metrics: String,
        /// Where the demo keeps its certificate, config and state.
        #[arg(long, default_value = ".switchyard-demo")]
        dir: PathBuf,
    },
    /// Validate a config: exit 0, or 1 with every problem listed by file:line.
    Check,
    /// What is active, pool health, read-only, writes since the last switch.
    Status {
        /// The whole status as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Flip SITE to COLOR (blue or green).
    Switch {
        /// The site (its `name` in the config).
        site: String,
        /// blue or green.
        color: String,
        /// How long upgraded (WebSocket) connections on the old color may stay.
        #[arg(long, default_value = "30s", value_parser = parse_dur)]
        drain: Duration,
        /// Switch even if no backend of COLOR is healthy.
        #[arg(long)]
        force: bool,
        /// Switch even though the active color took writes that COLOR does not have (a site whose
        /// colors hold their own data); those writes are left behind.
        #[arg(long)]
        discard_writes: bool,
        /// Only if the state version is still N (see `status`).
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Maintenance read-only mode at the edge.
    #[command(name = "read-only")]
    ReadOnly {
        #[command(subcommand)]
        what: ReadOnlyCmd,
    },
    /// Maintenance mode: every request (reads too) gets a 503 page with a message.
    Maintenance {
        #[command(subcommand)]
        what: MaintenanceCmd,
    },
    /// Backend pools.
    Pool {
        #[command(subcommand)]
        what: PoolCmd,
    },
    /// Re-read config and certificates; a bad config is refused and the old one keeps serving.
    Reload,
    /// Flip back to the previous environment.
    Rollback {
        /// The site (its `name` in the config).
        site: String,
        /// Roll back even though writes reached the current color since the switch (they are lost).
        #[arg(long)]
        discard_writes: bool,
    },
    /// Create a first environment on Docker.
    Up {
        /// The site (its `name` in the config).
        site: String,
        /// The version to run (fills `{version}` in the services' images).
        #[arg(long)]
        version: String,
        /// The color to create it in (default: the active one).
        #[arg(long)]
        color: Option<String>,
        /// Container-name prefix (default: the site's [site.release] prefix).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// The six-step release on Docker.
    Release {
        /// The site (its `name` in the config).
        site: String,
        /// The version to release (fills `{version}` in the services' images).
        #[arg(long, required_unless_present_any = ["resume", "abort"])]
        version: Option<String>,
        /// Container-name prefix (default: the site's [site.release] prefix; --resume and
        /// --abort use the one the release was started with).
        #[arg(long)]
        prefix: Option<String>,
        /// Finish a release that was cut off (see `release/LIFECYCLE.md`).
        #[arg(long, conflicts_with = "abort")]
        resume: bool,
        /// Undo a release that was cut off: the old environment keeps serving.
        #[arg(long)]
        abort: bool,
        /// Say which flow (freeze or online) and which steps would run, and why; change
        /// nothing.
        #[arg(long, alias = "dry-run", conflicts_with_all = ["resume", "abort"])]
        plan: bool,
    },
    /// Environments on Docker by prefix and color.
    Envs {
        #[command(subcommand)]
        what: EnvsCmd,
    },
    /// Take a verified backup set of SITE now: the database dump and every data volume (read-only
    /// meanwhile when there are files besides the dump); with [backups.offsite], then copy every
    /// set not off-site yet (exit 1 when that fails; the local set stays).
    Backup {
        site: String,
        /// One JSON document on stdout (progress goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Backups on disk.
    Backups {
        #[command(subcommand)]
        what: BackupsCmd,
    },
    /// Several edges sharing one state in etcd (`[cluster]`).
    Cluster {
        #[command(subcommand)]
        what: ClusterCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Every edge, the revision it has applied, and its health.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReadOnlyCmd {
    /// Refuse writes (503 + Retry-After); returns once no write is in flight.
    On {
        /// Why, as users see it on the 503 page.
        #[arg(long)]
        reason: String,
        /// Seconds for Retry-After.
        #[arg(long, default_value_t = 300)]
        retry_after: u64,
        /// Only these sites (repeatable); default every site.
        #[arg(long = "site")]
        sites: Vec<String>,
        /// How long to wait for writes in flight (default: the config's read_only_drain_timeout).
        #[arg(long, value_parser = parse_dur)]
        wait: Option<Duration>,
    },
    /// Accept writes again.
    Off,
}

#[derive(Subcommand, Debug)]
pub enum MaintenanceCmd {
    /// Answer every request of the site(s) with the maintenance page (503 + Retry-After), but
    /// for `[site.maintenance]` allow_clients and allow_paths.
    On {
        /// What users see on the page.
        #[arg(long)]
        message: String,
        /// Seconds for Retry-After.
        #[arg(long, default_value_t = 300)]
        retry_after: u64,
        /// Only these sites (repeatable); default every site.
        #[arg(long = "site")]
        sites: Vec<String>,
    },
    /// Serve again.
    Off,
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Replace a color's backends.
    Set {
        /// The site (its `name` in the config).
        site: String,
        /// blue or green.
        color: String,
        /// IP:PORT of each backend; none empties the pool (refused for the active color).
        addrs: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvsCmd {
    /// The site's environments on this engine, each with its role (active, rollback, idle).
    List {
        /// The site (its `name` in the config).
        site: String,
        /// Only this container-name prefix (default: every prefix of the site).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Remove the environments nothing needs (never the active or the rollback one), with
    /// their containers, network and volumes; says each one it removes or keeps, and why.
    Prune {
        /// The site (its `name` in the config).
        site: String,
        /// Container-name prefix (default: the site's [site.release] prefix).
        #[arg(long)]
        prefix: Option<String>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Point the pools at the web containers' published ports again (they change when a container,
    /// the engine or the host restarts). Changes only a stale pool, says what it did; exit 1 when
    /// the active pool points at nothing and could not be healed.
    Sync {
        /// The site (or --all: every site with a [site.release]).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        site: Option<String>,
        /// Every site with a [site.release].
        #[arg(long)]
        all: bool,
        /// Follow this prefix's environments (default: the one each pool was set to, else the config's).
        #[arg(long, conflicts_with = "all")]
        prefix: Option<String>,
    },
    /// Keep the pools synced: at every container start, and every --every. Runs until Ctrl-C or
    /// SIGTERM; start it at boot (docker/systemd/switchyard-envs-watch.service).
    Watch {
        /// Sites to follow (default: every site with a [site.release]).
        sites: Vec<String>,
        /// Full sync this often too, in case an event was missed.
        #[arg(long, default_value = "30s", value_parser = parse_dur)]
        every: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupsCmd {
    /// Sets with their members and sizes, newest first.
    List {
        site: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every member of every set; names the member that is wrong (exit 1).
    Verify {
        site: String,
        #[arg(long)]
        json: bool,
    },
    /// Keep the newest `keep_backups` verified sets (whole), never the only verified one; says
    /// each set it removes.
    Prune {
        site: String,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a set (default the newest) into a scratch environment {prefix}-drill-* (never
    /// routed), run verify_restore and the web health check there, record the result, remove
    /// it; exit 1 when the drill fails.
    Drill {
        site: String,
        /// The set's id (see `backups list`, or `backups offsite list` with --offsite).
        #[arg(long = "set")]
        set: Option<String>,
        /// Take the set from the off-site repository (restored into a scratch folder first).
        #[arg(long)]
        offsite: bool,
        #[arg(long)]
        json: bool,
    },
    /// Copies of the sets in the restic repository of [backups.offsite].
    Offsite {
        #[command(subcommand)]
        what: OffsiteCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum OffsiteCmd {
    /// Create the restic repository ([backups.offsite] repository and password_file).
    Init,
    /// The site's sets in the repository (snapshot id, time, and whether a local copy exists).
    List {
        site: String,
        #[arg(long)]
        json: bool,
    },
    /// Copy every local set that is not off-site yet (what `backup` does after its set), then
    /// apply the retention policy; exit 1 if a copy failed.
    Copy {
        site: String,
        #[arg(long)]
        json: bool,
    },
    /// `restic check` of the repository, then a set (default the newest) restored into a scratch
    /// folder and every member re-hashed against its manifest; exit 1 on any difference.
    Verify {
        site: String,
        /// The set's id (see `backups offsite list`).
        #[arg(long = "set")]
        set: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Bring a set (default the newest) back into the local backups folder, verified against its
    /// manifest before it appears there.
    Restore {
        site: String,
        /// The set's id (see `backups offsite list`).
        #[arg(long = "set")]
        set: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    config::units::parse_duration(s)
}

fn parse_color(s: &str) -> anyhow::Result<Color> {
    Color::parse(s).with_context(|| format!("unknown color `{s}`; use blue or green"))
}

impl Cli {
    fn config_path(&self) -> anyhow::Result<PathBuf> {
        match &self.config {
            Some(p) => Ok(p.clone()),
            None => {
                let default = Path::new("config/switchyard.toml");
                if default.exists() {
                    Ok(default.to_path_buf())
                } else {
                    bail!("no config given: pass --config FILE (or set SWITCHYARD_CONFIG)")
                }
            }
        }
    }

    fn load_config(&self) -> anyhow::Result<config::Config> {
        let p = self.config_path()?;
        config::load(&p).map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn client(&self) -> anyhow::Result<Client> {
        if let Some(c) = &self.control {
            return Ok(Client::new(c));
        }
        let cfg = self.load_config().context("cannot find the control socket: pass --control PATH, set SWITCHYARD_CONTROL, or give --config")?;
        Ok(Client::new(&cfg.proxy.control))
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "switchyard", &mut out);
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
            Ok(())
        }
        Cmd::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
            Ok(())
        }
        Cmd::Serve => {
            let cfg = cli.load_config()?;
            crate::server::serve(cfg, |b, c| eprintln!("{}", crate::server::ready_line(b, c))).await
        }
        Cmd::Demo {
            http,
            https,
            metrics,
            dir,
        } => {
            std::fs::create_dir_all(dir)?;
            let path = crate::demo::prepare(dir, http, https, metrics).await?;
            let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let d = dir.clone();
            crate::server::serve(cfg, |b, c| {
                eprintln!("{}", crate::server::ready_line(b, c));
                println!("{}", crate::demo::banner(b, &d));
            })
            .await
        }
        Cmd::Check => {
            let p = cli.config_path()?;
            match config::check(&p) {
                Ok(cfg) => {
                    // flow = online/auto: what the running databases say about their binlog.
                    let (problems, notes) = crate::release::check_online(&cfg).await;
                    if !problems.is_empty() {
                        bail!("{}: {}", p.display(), problems.join("\n"));
                    }
                    println!("{}: ok ({} site(s))", p.display(), cfg.sites.len());
                    for w in config::perms::warnings(&cfg) {
                        eprintln!("warning: {w}");
                    }
                    for n in config::notes(&cfg).into_iter().chain(notes) {
                        println!("{n}");
                    }
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!("{e}")),
            }
        }
        Cmd::Status { json } => control::status(&cli.client()?, *json).await,
        Cmd::Switch {
            site,
            color,
            drain,
            force,
            discard_writes,
            if_match,
        } => {
            let req = crate::control::api::SwitchRequest {
                to: parse_color(color)?,
                drain_s: Some(drain.as_secs()),
                force: *force,
                discard_writes: *discard_writes,
            };
            control::switch(&cli.client()?, site, &req, *if_match).await
        }
        Cmd::ReadOnly { what } => control::read_only(&cli.client()?, what).await,
        Cmd::Maintenance { what } => control::maintenance(&cli.client()?, what).await,
        Cmd::Pool {
            what: PoolCmd::Set { site, color, addrs },
        } => control::set_pool(&cli.client()?, site, parse_color(color)?, addrs).await,
        Cmd::Reload => control::reload(&cli.client()?).await,
        Cmd::Rollback {
            site,
            discard_writes,
        } => {
            let client = cli.client()?;
            // A release-managed site: heal a stale pool first, or the switch back finds the
            // previous environment down. Best effort: a rollback never waits on Docker.
            if let Ok(cfg) = cli.load_config() {
                if cfg.site(site).is_some_and(|s| s.release.is_some()) {
                    release::sync_first(&cfg, &client, site, None).await;
                }
            }
            control::rollback(&client, site, *discard_writes).await
        }
        Cmd::Up {
            site,
            version,
            color,
            prefix,
        } => {
            let color = color.as_deref().map(parse_color).transpose()?;
            let (cfg, client) = (cli.load_config()?, cli.client()?);
            release::up(&cfg, &client, site, version, color, prefix.as_deref()).await
        }
        Cmd::Release {
            site,
            version,
            prefix,
            resume,
            abort,
            plan,
        } => {
            let how = match (resume, abort, version) {
                (_, true, _) => release::How::Abort,
                (true, _, _) => release::How::Resume,
                (_, _, Some(v)) if *plan => release::How::Plan(v),
                (_, _, Some(v)) => release::How::Start(v),
                _ => bail!("give --version V (or --resume / --abort)"),
            };
            let (cfg, client) = (cli.load_config()?, cli.client()?);
            release::release(&cfg, &client, site, how, prefix.as_deref()).await
        }
        Cmd::Envs { what } => {
            let (cfg, client) = (cli.load_config()?, cli.client()?);
            release::envs(&cfg, &client, what).await
        }
        Cmd::Backup { site, json } => {
            let (cfg, client) = (cli.load_config()?, cli.client()?);
            backups::backup(&cfg, &client, site, *json).await
        }
        Cmd::Backups {
            what: BackupsCmd::Offsite { what },
        } => offsite::offsite(&cli.load_config()?, cli.client().ok().as_ref(), what).await,
        Cmd::Backups {
            what:
                BackupsCmd::Drill {
                    site,
                    set,
                    offsite: from_offsite,
                    json,
                },
        } => {
            let (cfg, client) = (cli.load_config()?, cli.client()?);
            offsite::drill(&cfg, &client, site, set.as_deref(), *from_offsite, *json).await
        }
        Cmd::Backups { what } => backups::backups(&cli.load_config()?, what).await,
        Cmd::Cluster {
            what: ClusterCmd::Status { json },
        } => cluster::status(&cli.client()?, *json).await,
    }
}
