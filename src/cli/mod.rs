//! The command line: parse, make one call (to the control client or to `release::`), print. No
//! business rule lives here: the daemon and `release` decide, this only words the answer. Exit
//! codes are decided in `main` from the error kind (0 done, 1 refused or failed, 2 usage).
//!
//! - `mod.rs`: the clap tree and the dispatch, one arm per subcommand.
//! - `control.rs`: the daemon's verbs (status, switch, read-only, pool, reload, rollback).
//! - `release.rs`: the Docker commands (up, release, envs, backup, backups).
//! - `cluster.rs`: `cluster status`, the edges of a `[cluster]`.
//! - `render.rs`: tables and lines for people.

mod cluster;
mod control;
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
    /// Run the proxy on 127.0.0.1:8080/:8443 in front of two built-in demo backends.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: String,
        /// Where the demo keeps its certificate, config and state.
        #[arg(long, default_value = ".switchyard-demo")]
        dir: PathBuf,
    },
    /// Validate a config: exit 0, or 1 with every problem listed by file:line.
    Check,
    /// What is active, pool health, read-only, writes since the last switch.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Flip SITE to COLOR (blue or green).
    Switch {
        site: String,
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
        site: String,
        /// Roll back even though writes reached the current color since the switch (they are lost).
        #[arg(long)]
        discard_writes: bool,
    },
    /// Create a first environment on Docker.
    Up {
        site: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        color: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// The six-step release on Docker.
    Release {
        site: String,
        #[arg(long, required_unless_present_any = ["resume", "abort"])]
        version: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, conflicts_with = "abort")]
        resume: bool,
        #[arg(long)]
        abort: bool,
    },
    /// Environments on Docker by prefix and color.
    Envs {
        #[command(subcommand)]
        what: EnvsCmd,
    },
    /// Take a verified backup of SITE's database now.
    Backup { site: String },
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
        #[arg(long)]
        reason: String,
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
        site: String,
        color: String,
        addrs: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvsCmd {
    List {
        site: String,
        #[arg(long)]
        prefix: Option<String>,
    },
    Prune {
        site: String,
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupsCmd {
    List { site: String },
    Verify { site: String },
    Prune { site: String },
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
        Cmd::Serve => {
            let cfg = cli.load_config()?;
            crate::server::serve(cfg, |b, c| eprintln!("{}", crate::server::ready_line(b, c))).await
        }
        Cmd::Demo { http, https, dir } => {
            std::fs::create_dir_all(dir)?;
            let path = crate::demo::prepare(dir, http, https).await?;
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
                    println!("{}: ok ({} site(s))", p.display(), cfg.sites.len());
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
        } => control::rollback(&cli.client()?, site, *discard_writes).await,
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
        } => {
            let how = match (resume, abort, version) {
                (_, true, _) => release::How::Abort,
                (true, _, _) => release::How::Resume,
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
        Cmd::Backup { site } => {
            let (cfg, client) = (cli.load_config()?, cli.client()?);
            release::backup(&cfg, &client, site).await
        }
        Cmd::Backups { what } => release::backups(&cli.load_config()?, what).await,
        Cmd::Cluster {
            what: ClusterCmd::Status { json },
        } => cluster::status(&cli.client()?, *json).await,
    }
}
