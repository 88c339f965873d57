//! The failure path, after a failed step, Ctrl-C or SIGTERM, and for `release --abort`: keep the
//! active environment serving, stop the half-made one (kept for inspection), lift read-only. What
//! to undo is decided by `plan::undo` from the journal and the daemon's active color; this
//! carries it out, keeps going past a failed action, and removes the journal only when all
//! of it worked (otherwise `--abort` finishes the job later).

use super::context::Release;
use super::journal::{self, Journal};
use super::plan::{self, Undo};

/// Runs the failure path for `j`. Returns what it did, line by line, and whether all of it worked.
pub async fn unwind(r: &Release<'_>, j: &Journal) -> (Vec<String>, bool) {
    let mut notes = Vec::new();
    let mut clean = true;
    let active = match r.status().await {
        Ok(st) => Some(st.active),
        Err(e) => {
            notes.push(format!("could not ask the daemon what is active: {e}"));
            clean = false;
            None
        }
    };
    let switched = active == Some(j.to);
    if switched {
        notes.push(format!(
            "the switch to {} had already happened: {} serves {}; `switchyard rollback {}` goes back",
            j.to, j.to, j.to_version, j.site
        ));
    }
    let new = r.env(j.to, &j.to_version);
    let old = r.env(j.from, j.from_version.as_deref().unwrap_or(""));
    let plan = plan::undo(j, active);
    for action in &plan {
        match action {
            Undo::EmptyNewPool => {
                // Not fatal: the pool of the idle color takes no traffic while it stays idle.
                if let Err(e) = r.set_pool(j.to, Vec::new()).await {
                    notes.push(format!("could not empty the {} pool: {e}", j.to));
                }
            }
            Undo::StopNewEnv => match r.engine.stop_env(&new).await {
                Ok(()) => notes.push(format!(
                    "stopped the half-made environment {}-{}-* (kept for inspection: `docker logs {}`; `switchyard envs prune {}` removes it)",
                    new.prefix,
                    new.color,
                    new.container(&r.rel.web),
                    j.site
                )),
                Err(e) => {
                    notes.push(format!(
                        "could not stop the half-made environment {}-{}: {e}",
                        new.prefix, new.color
                    ));
                    clean = false;
                }
            },
            Undo::AppReadOnlyOff => {
                let Some((_, off)) = &r.rel.app_read_only else {
                    continue;
                };
                match r
                    .run_ok(&old.container(&r.rel.web), off, "app_read_only.off")
                    .await
                {
                    Ok(_) => notes.push("app_read_only.off ran in the active web".into()),
                    Err(e) => {
                        notes.push(format!("app_read_only.off failed: {e}"));
                        clean = false;
                    }
                }
            }
            Undo::ReadOnlyOff => match r.read_only(false, &j.to_version).await {
                Ok(_) => notes.push(format!(
                    "read-only is off; {} keeps serving {}",
                    if switched { j.to } else { j.from },
                    if switched {
                        &j.to_version
                    } else {
                        j.from_version.as_deref().unwrap_or("?")
                    }
                )),
                Err(e) => {
                    notes.push(format!(
                        "could not turn read-only off: {e}; run `switchyard read-only off`"
                    ));
                    clean = false;
                }
            },
        }
    }
    if !plan.contains(&Undo::ReadOnlyOff) {
        notes.push(format!(
            "{} keeps serving; read-only was not turned on",
            if switched { j.to } else { j.from }
        ));
    }
    if clean {
        if let Err(e) = journal::remove(r.cfg, &j.site) {
            notes.push(e.to_string());
        }
    } else {
        notes.push(format!(
            "the journal {} is kept: run `switchyard release {} --abort` once the cause is fixed",
            journal::path(r.cfg, &j.site).display(),
            j.site
        ));
    }
    (notes, clean)
}
