//! `backups offsite init|list|copy|verify|restore` and `backups drill`: one call into
//! `release::backup::offsite` / `release::drill`, then print, for people or (with `--json`) as
//! one JSON document on stdout, progress on stderr.

use serde_json::json;

use crate::config::Config;
use crate::control::client::Client;
use crate::release::backup::{self, offsite};
use crate::release::{self, human_bytes, Progress};

use super::backups::{print_json, set_json};
use super::OffsiteCmd;

fn progress(json: bool) -> Progress {
    if json {
        Progress::on_stderr()
    } else {
        Progress::default()
    }
}

pub async fn offsite(
    cfg: &Config,
    client: Option<&Client>,
    what: &OffsiteCmd,
) -> anyhow::Result<()> {
    let o = offsite::config(cfg)?;
    match what {
        OffsiteCmd::Init => {
            offsite::init(o).await?;
            println!(
                "created the restic repository {} (password in {}). Keep a copy of that password somewhere else: without it the copies cannot be read",
                o.shown(),
                o.password_file.display()
            );
        }
        OffsiteCmd::List { site, json } => {
            let (_, rel) = release::site_of(cfg, site)?;
            let snaps = offsite::snapshots(o, site).await?;
            let local = backup::list(rel, site)?;
            let here = |id: &str| local.iter().any(|s| s.id == id);
            if *json {
                return print_json(&json!({
                    "site": site,
                    "repository": o.shown(),
                    "sets": snaps.iter().map(|s| json!({
                        "set": s.set, "snapshot": s.id, "time": s.time, "local": here(&s.set),
                    })).collect::<Vec<_>>(),
                }));
            }
            if snaps.is_empty() {
                println!("no sets of {site} in {}", o.shown());
            }
            for s in &snaps {
                println!(
                    "{}  snapshot {}  {}{}",
                    s.set,
                    s.short_id,
                    s.time.get(..19).unwrap_or(&s.time),
                    if here(&s.set) { "  (also local)" } else { "" }
                );
            }
        }
        OffsiteCmd::Copy { site, json } => {
            let (_, rel) = release::site_of(cfg, site)?;
            let _lock = release::journal::lock(cfg, site, "backups offsite copy")?;
            let p = progress(*json);
            let run = offsite::copy_pending(cfg, rel, site, client, &p).await?;
            if *json {
                print_json(&json!(run.status))?;
            } else {
                offsite::print_run(&run, &p);
                if run.error.is_none() {
                    println!(
                        "every set of {site} is off-site ({} copied now)",
                        run.status.copied.len()
                    );
                }
            }
            if let Some(e) = run.error {
                anyhow::bail!(
                    "off-site copy of {site} failed: {e}. Local sets are untouched; run it again once fixed"
                );
            }
        }
        OffsiteCmd::Verify { site, set, json } => {
            let (_, rel) = release::site_of(cfg, site)?;
            let v = offsite::verify(cfg, rel, site, set.as_deref(), &progress(*json)).await?;
            if *json {
                return print_json(&json!(v));
            }
            println!(
                "off-site set {} (snapshot {}) restored and verified: {} member(s), {}; repository check: {}",
                v.set,
                v.snapshot.get(..8).unwrap_or(&v.snapshot),
                v.members,
                human_bytes(v.size),
                v.check
            );
        }
        OffsiteCmd::Restore { site, set, json } => {
            let (_, rel) = release::site_of(cfg, site)?;
            let s = offsite::restore(cfg, rel, site, set.as_deref(), &progress(*json)).await?;
            if *json {
                return print_json(&set_json(&s));
            }
            println!("{}", super::render::set(&s));
            print!("{}", super::render::members(&s));
        }
    }
    Ok(())
}

pub async fn drill(
    cfg: &Config,
    client: &Client,
    site: &str,
    set: Option<&str>,
    from_offsite: bool,
    json: bool,
) -> anyhow::Result<()> {
    let src = release::drill::Source {
        set,
        offsite: from_offsite,
    };
    let d = release::drill::drill(cfg, client, site, src, json).await?;
    if json {
        print_json(&json!(d))?;
    } else if d.ok {
        println!(
            "drill of {site} passed: set {} ({}, {}) restored, verified and healthy in {:.2}s",
            d.set,
            human_bytes(d.size),
            d.source,
            d.duration_s
        );
    }
    if let Some(e) = &d.error {
        anyhow::bail!(
            "drill of {site} FAILED on set {} ({}): {e}. Do not count on this set; take a new one (`switchyard backup {site}`) and look at why",
            d.set,
            d.source
        );
    }
    Ok(())
}
