//! `switchyard cluster status`: one call (`GET /v1/cluster`) to the local daemon, which answers
//! with its view of every edge (docs/cluster.md).

use std::fmt::Write as _;

use crate::control::api::ClusterStatus;
use crate::control::client::Client;

pub async fn status(c: &Client, json: bool) -> anyhow::Result<()> {
    let s = c.cluster().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

pub fn render(s: &ClusterStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "cluster {} — edge {} serves revision {} ({}), etcd via {}\n",
        s.prefix,
        s.edge_id,
        s.revision,
        if s.fresh {
            "fresh".to_string()
        } else {
            format!(
                "STALE: writes refused, last confirmed {}",
                s.staleness_ms
                    .map(|ms| format!("{ms} ms ago"))
                    .unwrap_or_else(|| "never".into())
            )
        },
        s.endpoint
    );
    let _ = writeln!(
        o,
        "{:<20} {:<7} {:>9} {:<6} {:>10} {:>9}  ADDRESS",
        "EDGE", "HEALTH", "APPLIED", "FRESH", "LAST ACK", "IN FLIGHT"
    );
    for e in &s.edges {
        let _ = writeln!(
            o,
            "{:<20} {:<7} {:>9} {:<6} {:>10} {:>9}  {}",
            e.id,
            e.health,
            e.applied,
            if e.fresh { "yes" } else { "no" },
            e.last_ack_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
            e.writes_in_flight,
            e.advertise.as_deref().unwrap_or("-")
        );
    }
    if let Some(c) = &s.last_change {
        let _ = writeln!(
            o,
            "\nlast change through this edge: revision {}, {}",
            c.revision,
            if c.complete && c.bounded.is_empty() {
                format!("every live edge acknowledged in {} ms", c.waited_ms)
            } else if c.complete {
                format!(
                    "acknowledged by {}, and {} counted as drained by the freshness bound",
                    c.acked.join(", "),
                    c.bounded.join(", ")
                )
            } else {
                format!(
                    "answered after {} ms WITHOUT the acknowledgement of {}",
                    c.waited_ms,
                    c.missing.join(", ")
                )
            }
        );
    }
    o
}
