//! Output for people: the status table, environments, backups.

use std::fmt::Write as _;

use crate::config::Color;
use crate::control::api::Status;
use crate::release::backup::{MemberKind, Set};
use crate::release::envs::{Listing, Pruned, Role};
use crate::release::human_bytes;

pub fn status(s: &Status) -> String {
    let mut o = String::new();
    if let Some(r) = &s.read_only {
        let _ = writeln!(
            o,
            "READ-ONLY since {} ({}): {}\n",
            r.since,
            r.sites
                .as_ref()
                .map(|s| s.join(", "))
                .unwrap_or_else(|| "all sites".into()),
            r.reason
        );
    }
    if let Some(m) = &s.maintenance {
        let _ = writeln!(
            o,
            "MAINTENANCE since {} ({}): {}\n",
            m.since,
            m.sites
                .as_ref()
                .map(|s| s.join(", "))
                .unwrap_or_else(|| "all sites".into()),
            m.message
        );
    }
    for site in &s.sites {
        if let Some(r) = &site.release {
            let how = if r.running {
                format!("running (pid {})", r.pid)
            } else {
                format!(
                    "cut off: `switchyard release {} --resume` finishes it, `--abort` undoes it",
                    site.name
                )
            };
            let _ = writeln!(
                o,
                "RELEASE of {} to {} ({}): step {} since {}, {how}\n",
                site.name, r.to_version, r.to, r.step, r.started_at
            );
        }
    }
    let _ = writeln!(
        o,
        "{:<14} {:<7} {:<9} {:>8} {:<22} {:<30} {:<30}",
        "SITE", "ACTIVE", "READ-ONLY", "WRITES", "SWITCHED AT", "BLUE", "GREEN"
    );
    for site in &s.sites {
        let pool = |c: Color| {
            let l = site.pools.get(&c).cloned().unwrap_or_default();
            if l.is_empty() {
                return "-".to_string();
            }
            l.iter()
                .map(|b| {
                    format!(
                        "{}{}",
                        b.addr,
                        if !b.healthy {
                            " DOWN"
                        } else if b.ejected {
                            " EJECTED"
                        } else {
                            ""
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let mark = |c: Color| {
            if site.active == c {
                format!("*{}", pool(c))
            } else {
                pool(c)
            }
        };
        let _ = writeln!(
            o,
            "{:<14} {:<7} {:<9} {:>8} {:<22} {:<30} {:<30}",
            site.name,
            site.active.as_str(),
            if site.read_only { "yes" } else { "no" },
            site.writes_since_switch
                .get(&site.active)
                .copied()
                .unwrap_or(0),
            site.switched_at.as_deref().unwrap_or("-"),
            mark(Color::Blue),
            mark(Color::Green),
        );
    }
    if !s.certificates.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<14} {:<16} {:<6} {:>5} {:<8} NAMES",
            "SITE", "CERTIFICATE", "SOURCE", "DAYS", "ACME"
        );
        for c in &s.certificates {
            let _ = writeln!(
                o,
                "{:<14} {:<16} {:<6} {:>5} {:<8} {}",
                c.site,
                c.name,
                c.source,
                c.days_left.map_or("-".into(), |d| d.to_string()),
                c.acme.as_ref().map_or("-", |a| a.state.as_str()),
                if c.names.is_empty() {
                    "-".into()
                } else {
                    c.names.join(",")
                },
            );
            if let Some(a) = &c.acme {
                if let Some(e) = &a.last_error {
                    let _ = writeln!(
                        o,
                        "    ACME ERROR: {e}\n    next attempt: {}",
                        a.next_attempt.as_deref().unwrap_or("-")
                    );
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "\nstate version {} · up {}s · {} connections · {} requests",
        s.version, s.uptime_s, s.connections_open, s.requests_total
    );
    o
}

/// `envs list`: one row per environment, its containers under it.
pub fn envs(l: &Listing) -> String {
    if l.envs.is_empty() {
        return "no environments on this Docker engine (or swarm)\n".into();
    }
    let mut s = format!(
        "{:<20} {:<6} {:<12} {:<8} {:<22} {}\n",
        "PREFIX", "COLOR", "VERSION", "STATE", "WEB", "ROLE"
    );
    for e in &l.envs {
        let state = if e.running() { "running" } else { "stopped" };
        let web = match (e.web_addrs.len(), e.web_addr) {
            (0, None) => "-".to_string(),
            (0 | 1, Some(a)) => a.to_string(),
            _ => e
                .web_addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let role = match l.role(e) {
            None => "?",
            Some(Role::Active) => "active",
            Some(Role::Rollback) => "rollback",
            Some(Role::InPool) => "in a pool",
            Some(Role::Building) => "being built by a release",
            Some(Role::Idle) => "idle (prunable)",
        };
        let _ = writeln!(
            s,
            "{:<20} {:<6} {:<12} {:<8} {:<22} {role}",
            e.prefix,
            e.color.as_str(),
            e.version,
            state,
            web,
        );
        for (svc, (name, state)) in &e.containers {
            match e.replicas.get(svc) {
                // A swarm service: its tasks running/desired and the nodes they run on.
                Some(r) => {
                    let nodes = if r.nodes.is_empty() {
                        "-".to_string()
                    } else {
                        r.nodes.join(",")
                    };
                    let _ = writeln!(
                        s,
                        "    {svc:<10} {name} ({state}) replicas {}/{} on {nodes}",
                        r.running, r.desired
                    );
                }
                None => {
                    let _ = writeln!(s, "    {svc:<10} {name} ({state})");
                }
            }
        }
    }
    s
}

/// `envs prune`: what happened to one environment.
pub fn pruned(p: &Pruned) -> String {
    match p {
        Pruned::Kept(e, role) => {
            let why = match role {
                Role::Active => "active",
                Role::Rollback => "rollback needs it",
                Role::Building => "an unfinished release is building it",
                Role::InPool | Role::Idle => "in a pool of the proxy",
            };
            format!("kept   {}-{} ({}): {why}", e.prefix, e.color, e.version)
        }
        Pruned::Removed(e) => format!(
            "removed {}-{} ({}): containers, network and volumes",
            e.prefix, e.color, e.version
        ),
        Pruned::WouldRemove(e) => format!(
            "would remove {}-{} ({}): containers, network and volumes",
            e.prefix, e.color, e.version
        ),
    }
}

/// `backups list`: one line per set.
pub fn set(s: &Set) -> String {
    match &s.manifest {
        Ok(m) => format!(
            "{}  {:<6} {:<12} {:>10}  {} member(s){}{}{}",
            s.id,
            m.color,
            m.version,
            human_bytes(m.size()),
            m.members.len(),
            if m.read_only { ", taken read-only" } else { "" },
            if s.legacy {
                " (single-file backup from before sets)"
            } else {
                ""
            },
            crate::release::backup::offsite::record::copied(s)
                .map(|c| format!(
                    ", off-site (snapshot {})",
                    c.snapshot.get(..8).unwrap_or(&c.snapshot)
                ))
                .unwrap_or_default()
        ),
        Err(e) => format!("{}  (not a usable set: {e})", s.id),
    }
}

/// The members of a set, one indented line each.
pub fn members(s: &Set) -> String {
    let mut o = String::new();
    let Ok(m) = &s.manifest else {
        return o;
    };
    for mem in &m.members {
        let what = match &mem.files {
            Some(f) => format!(
                "{} files, {} in {} entries",
                f.regular_files,
                human_bytes(f.content_bytes),
                f.entries
            ),
            None => format!("sha256 {}…", mem.sha256.get(..12).unwrap_or("")),
        };
        let _ = writeln!(
            o,
            "    {:<8} {:<6} {:<24} {:>10}  {what}",
            mem.name,
            match mem.kind {
                MemberKind::Db => "db",
                MemberKind::Volume => "volume",
                MemberKind::DbDelta => "delta",
            },
            mem.file,
            human_bytes(mem.size),
        );
    }
    o
}
