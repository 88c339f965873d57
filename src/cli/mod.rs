//! The command line: parse, make one call, print. No business logic here; exit codes are decided
//! in `main` from the error kind (0 done, 1 refused or failed, 2 usage).

mod render;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::{self, Color};
use crate::control::api::*;
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
        Cmd::Status { json } => {
            let c = cli.client()?;
            let s = c.status().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render::status(&s));
            }
            Ok(())
        }
        Cmd::Switch {
            site,
            color,
            drain,
            force,
            discard_writes,
            if_match,
        } => {
            let to = parse_color(color)?;
            let req = SwitchRequest {
                to,
                drain_s: Some(drain.as_secs()),
                force: *force,
                discard_writes: *discard_writes,
            };
            let r = cli.client()?.switch(site, &req, *if_match).await?;
            println!("{}", r.message);
            Ok(())
        }
        Cmd::ReadOnly { what } => {
            let req = match what {
                ReadOnlyCmd::On {
                    reason,
                    retry_after,
                    sites,
                    wait,
                } => ReadOnlyRequest {
                    on: true,
                    reason: Some(reason.clone()),
                    retry_after_s: Some(*retry_after),
                    sites: (!sites.is_empty()).then(|| sites.clone()),
                    wait_s: wait.map(|w| w.as_secs()),
                },
                ReadOnlyCmd::Off => ReadOnlyRequest {
                    on: false,
                    reason: None,
                    retry_after_s: None,
                    sites: None,
                    wait_s: None,
                },
            };
            let r = cli.client()?.read_only(&req).await?;
            if r.on {
                println!(
                    "read-only ON for {} ({} ms to drain writes in flight)",
                    r.sites.join(", "),
                    r.drained_ms
                );
            } else {
                println!("read-only OFF");
            }
            Ok(())
        }
        Cmd::Pool {
            what: PoolCmd::Set { site, color, addrs },
        } => {
            let color = parse_color(color)?;
            let r = cli.client()?.set_pool(site, color, addrs.clone()).await?;
            println!(
                "{site} {color} pool: {}",
                if r.backends.is_empty() {
                    "(empty)".into()
                } else {
                    r.backends.join(" ")
                }
            );
            Ok(())
        }
        Cmd::Reload => {
            let r = cli.client()?.reload().await?;
            println!(
                "reloaded: {} site(s){}",
                r.sites.len(),
                if r.certificates.is_empty() {
                    String::new()
                } else {
                    format!(", certificates: {}", r.certificates.join("; "))
                }
            );
            for n in r.notes {
                println!("note: {n}");
            }
            Ok(())
        }
        Cmd::Rollback {
            site,
            discard_writes,
        } => rollback(&cli.client()?, site, *discard_writes).await,
        Cmd::Up { .. }
        | Cmd::Release { .. }
        | Cmd::Envs { .. }
        | Cmd::Backup { .. }
        | Cmd::Backups { .. } => {
            let cfg = cli.load_config()?;
            let client = cli.client()?;
            crate::release::cli::run(&cli.cmd, cfg, client).await
        }
    }
}

/// Flips back to the previous color. The daemon refuses it when writes reached the current color
/// since the switch (a site whose colors hold their own data) unless `discard_writes`; this only
/// words that refusal for a rollback.
pub async fn rollback(c: &Client, site: &str, discard_writes: bool) -> anyhow::Result<()> {
    let s = c.status().await?;
    let Some(st) = s.sites.iter().find(|x| x.name == site) else {
        bail!("no site named `{site}`")
    };
    let Some(prev) = st.previous else {
        bail!("{site} has never been switched; there is nothing to roll back to")
    };
    if prev == st.active {
        bail!("{site} is already on {prev}");
    }
    let req = SwitchRequest {
        to: prev,
        drain_s: None,
        force: false,
        discard_writes,
    };
    match c.switch(site, &req, Some(s.version)).await {
        Ok(r) => {
            println!("rolled back: {}", r.message);
            Ok(())
        }
        Err(e) if e.has_code(WRITES_WOULD_BE_LOST) => {
            let writes = st.writes_since_switch.get(&st.active).copied().unwrap_or(0);
            if writes == 0 && !st.written_since_switch {
                // The first write landed after our status read: the daemon's words have the count.
                return Err(e.into());
            }
            bail!(
                "refusing to roll back {site}: {} write(s) reached {} since the switch and would be lost on {prev}. Add --discard-writes if that is what you want.",
                if writes > 0 { writes.to_string() } else { "some (count lost in a restart)".into() },
                st.active
            )
        }
        Err(e) => Err(e.into()),
    }
}
