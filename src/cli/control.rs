//! The daemon's verbs on the command line: build the request, one call of the control client,
//! print the answer.

use anyhow::bail;

use super::render;
use super::{MaintenanceCmd, ReadOnlyCmd};
use crate::config::Color;
use crate::control::api::*;
use crate::control::client::Client;

pub async fn status(c: &Client, json: bool) -> anyhow::Result<()> {
    let s = c.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render::status(&s));
    }
    Ok(())
}

pub async fn switch(
    c: &Client,
    site: &str,
    req: &SwitchRequest,
    if_match: Option<u64>,
) -> anyhow::Result<()> {
    let r = c.switch(site, req, if_match).await?;
    println!("{}", r.message);
    Ok(())
}

pub async fn read_only(c: &Client, what: &ReadOnlyCmd) -> anyhow::Result<()> {
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
    let r = c.read_only(&req).await?;
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

pub async fn maintenance(c: &Client, what: &MaintenanceCmd) -> anyhow::Result<()> {
    let req = match what {
        MaintenanceCmd::On {
            message,
            retry_after,
            sites,
        } => MaintenanceRequest {
            on: true,
            message: Some(message.clone()),
            retry_after_s: Some(*retry_after),
            sites: (!sites.is_empty()).then(|| sites.clone()),
        },
        MaintenanceCmd::Off => MaintenanceRequest {
            on: false,
            message: None,
            retry_after_s: None,
            sites: None,
        },
    };
    let r = c.maintenance(&req).await?;
    if r.on {
        println!("maintenance ON for {}", r.sites.join(", "));
    } else {
        println!("maintenance OFF");
    }
    Ok(())
}

pub async fn set_pool(
    c: &Client,
    site: &str,
    color: Color,
    addrs: &[String],
) -> anyhow::Result<()> {
    let r = c.set_pool(site, color, addrs.to_vec()).await?;
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

pub async fn reload(c: &Client) -> anyhow::Result<()> {
    let r = c.reload().await?;
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
    if st.pools.get(&prev).is_none_or(|p| p.is_empty()) {
        bail!("{}", nothing_to_roll_back_to(st, prev));
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

/// Why there is no environment to roll back to, and the command that helps: a failed or
/// unfinished release emptied (or is building) the previous color's pool, and the active color
/// never stopped serving, so "rollback" is not the next step.
fn nothing_to_roll_back_to(st: &SiteStatus, prev: Color) -> String {
    let site = &st.name;
    let active = st.active;
    match &st.release {
        Some(r) if r.running => format!(
            "{site}: a release to {} is running (step {}) and is building {prev}; {active} is serving and nothing has switched. Wait for it, or stop it with Ctrl-C (it undoes itself)",
            r.to_version, r.step
        ),
        Some(r) => format!(
            "{site}: the release to {} stopped at step {} before switching, so {active} is still serving and there is nothing to roll back. `switchyard release {site} --resume` finishes it, `--abort` undoes it",
            r.to_version, r.step
        ),
        None => format!(
            "{site}: the {prev} pool is empty, so there is nothing to roll back to; {active} is serving. A failed release empties the pool of the environment it stopped: run `switchyard release` again once its cause is fixed (`switchyard envs list {site}` shows the environments), or point {prev} at backends you run yourself with `switchyard pool set {site} {prev} ADDR...`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(release: &str) -> SiteStatus {
        serde_json::from_str(&format!(
            r#"{{"name":"wiki","hosts":[],"active":"green","previous":"blue","switched_at":null,
            "read_only":false,"writes_since_switch":{{}},"written_since_switch":false,
            "writes_in_flight":0,"pools":{{"green":[],"blue":[]}},"has_release":true{release}}}"#
        ))
        .unwrap()
    }

    /// After a failed release the hint is a release command, not `pool set`; mid-release it is
    /// "wait"; with no journal it says why the pool is empty.
    #[test]
    fn rollback_to_an_empty_pool_points_at_the_next_command() {
        let progress = |running: bool| {
            format!(
                r#","release":{{"from":"green","to":"blue","to_version":"3","step":"5/6 health",
                "started_at":"","updated_at":"","pid":1,"running":{running}}}"#
            )
        };
        let cut = nothing_to_roll_back_to(&site(&progress(false)), Color::Blue);
        assert!(cut.contains("--resume") && cut.contains("--abort"), "{cut}");
        assert!(!cut.contains("pool set"), "{cut}");
        let running = nothing_to_roll_back_to(&site(&progress(true)), Color::Blue);
        assert!(
            running.contains("is running (step 5/6 health)"),
            "{running}"
        );
        let failed = nothing_to_roll_back_to(&site(""), Color::Blue);
        assert!(failed.contains("`switchyard release` again"), "{failed}");
    }
}
