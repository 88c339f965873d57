//! Human output: the status table.

use std::fmt::Write as _;

use crate::config::Color;
use crate::control::api::Status;

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
    let _ = writeln!(
        o,
        "\nstate version {} · up {}s · {} connections · {} requests",
        s.version, s.uptime_s, s.connections_open, s.requests_total
    );
    o
}
