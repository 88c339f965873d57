//! `backup SITE` and `backups list|verify|prune SITE`: one call into `release::backup`, then
//! print, for people or (with `--json`) as one JSON document on stdout, progress on stderr.

use serde_json::{json, Value};

use crate::config::Config;
use crate::control::client::Client;
use crate::release::backup::{self, offsite, MemberCheck, Set};
use crate::release::{self, human_bytes, Progress};

use super::{render, BackupsCmd};

/// A set as scripts see it: its id, folder, and its manifest's fields (or why it has none).
pub fn set_json(s: &Set) -> Value {
    let mut v = json!({
        "id": s.id,
        "path": s.dir.display().to_string(),
        "legacy": s.legacy,
    });
    match &s.manifest {
        Ok(m) => {
            if let (Value::Object(o), Ok(Value::Object(mj))) = (&mut v, serde_json::to_value(m)) {
                o.extend(mj);
                o.insert("size".into(), json!(m.size()));
                o.insert("complete".into(), json!(true));
                o.insert("offsite".into(), json!(offsite::record::copied(s)));
            }
        }
        Err(e) => {
            if let Value::Object(o) = &mut v {
                o.insert("complete".into(), json!(false));
                o.insert("error".into(), json!(e));
            }
        }
    }
    v
}

pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn backup(cfg: &Config, client: &Client, site: &str, json: bool) -> anyhow::Result<()> {
    let taken = backup::take_now(cfg, client, site, json).await?;
    let window = taken.read_only_window.map(|w| w.as_secs_f64());
    // A failed off-site copy fails the command (exit 1), after saying what was taken.
    let offsite_failed = taken.offsite.as_ref().and_then(|r| r.error.as_ref()).map(|e| {
        anyhow::anyhow!(
            "backup set {} is verified locally, but NOT off-site: {e}. The next `switchyard backup {site}` (or `switchyard backups offsite copy {site}`) retries it",
            taken.set.id
        )
    });
    if json {
        let mut v = set_json(&taken.set);
        if let Value::Object(o) = &mut v {
            o.insert("read_only_window_s".into(), json!(window));
            o.insert(
                "offsite".into(),
                json!(taken.offsite.as_ref().map(|r| &r.status)),
            );
        }
        print_json(&v)?;
        return offsite_failed.map_or(Ok(()), Err);
    }
    let size = taken.set.manifest.as_ref().map(|m| m.size()).unwrap_or(0);
    println!(
        "backup set verified: {} ({}{})",
        taken.set.dir.display(),
        human_bytes(size),
        window
            .map(|w| format!("; read-only for {w:.3}s"))
            .unwrap_or_default()
    );
    print!("{}", render::members(&taken.set));
    offsite_failed.map_or(Ok(()), Err)
}

pub async fn backups(cfg: &Config, what: &BackupsCmd) -> anyhow::Result<()> {
    match what {
        BackupsCmd::List { site, json } => {
            let (_, rel) = release::site_of(cfg, site)?;
            let list = backup::list(rel, site)?;
            if *json {
                return print_json(&json!({
                    "site": site,
                    "dir": backup::site_dir(rel, site).display().to_string(),
                    "sets": list.iter().map(set_json).collect::<Vec<_>>(),
                }));
            }
            if list.is_empty() {
                println!(
                    "no backups of {site} in {}",
                    backup::site_dir(rel, site).display()
                );
            }
            for s in &list {
                println!("{}", render::set(s));
                print!("{}", render::members(s));
            }
        }
        BackupsCmd::Verify { site, json } => {
            let (_, rel) = release::site_of(cfg, site)?;
            let progress = if *json {
                Progress::on_stderr()
            } else {
                Progress::default()
            };
            let checked = backup::verify_all(rel, site, &progress).await?;
            let bad_of = |v: &Result<Vec<MemberCheck>, String>| match v {
                Ok(c) => backup::set::first_bad(c),
                Err(e) => Some(e.clone()),
            };
            let bad: Vec<String> = checked
                .iter()
                .filter_map(|(s, v)| bad_of(v).map(|b| format!("{}: {b}", s.id)))
                .collect();
            if *json {
                print_json(&json!({
                    "site": site,
                    "ok": bad.is_empty(),
                    "sets": checked.iter().map(|(s, v)| json!({
                        "id": s.id,
                        "ok": bad_of(v).is_none(),
                        "error": bad_of(v),
                        "members": v.as_ref().ok(),
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                for (s, v) in &checked {
                    match bad_of(v) {
                        None => println!(
                            "ok      {} ({} member(s), {})",
                            s.id,
                            v.as_ref().map(|c| c.len()).unwrap_or(0),
                            human_bytes(s.manifest.as_ref().map(|m| m.size()).unwrap_or(0))
                        ),
                        Some(why) => println!("BROKEN  {}: {why}", s.id),
                    }
                }
            }
            if !bad.is_empty() {
                anyhow::bail!(
                    "{} of {} backup set(s) of {site} failed verification; do not rely on them:\n  {}",
                    bad.len(),
                    checked.len(),
                    bad.join("\n  ")
                );
            }
            if !*json {
                println!("{} backup set(s) of {site} verified", checked.len());
            }
        }
        BackupsCmd::Offsite { .. } | BackupsCmd::Drill { .. } => {
            anyhow::bail!("`backups offsite` and `backups drill` are dispatched by cli::mod")
        }
        BackupsCmd::Prune { site, dry_run } => {
            let (r, keep) = backup::prune_now(cfg, site, *dry_run).await?;
            let verb = if *dry_run { "would remove" } else { "removed" };
            for s in &r.removed {
                println!("{verb} {s}");
            }
            for (s, why) in &r.broken {
                println!("BROKEN  {s}: {why} (left for you to inspect)");
            }
            for s in &r.unsent {
                println!("kept {s}: not off-site yet (`switchyard backups offsite copy {site}`)");
            }
            println!(
                "kept {} verified backup set(s) of {site} (keep_backups = {keep})",
                r.kept.len()
            );
        }
    }
    Ok(())
}
