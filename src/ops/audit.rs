//! The audit log: one JSON line per accepted change (time, peer uid/pid, action, before, after),
//! appended and synced before the API answers.

use std::io::Write;

use super::Peer;
use crate::config::Config;
use crate::state;

/// Appends one JSON line to the audit log. A failure is logged, not fatal: the change is done.
pub(super) fn audit(
    cfg: &Config,
    peer: Peer,
    action: &str,
    before: serde_json::Value,
    after: serde_json::Value,
) {
    audit_with(cfg, peer, action, before, after, serde_json::Map::new())
}

/// [`audit`] with more top-level fields (a switch records `discard_writes` and the write count).
pub(super) fn audit_with(
    cfg: &Config,
    peer: Peer,
    action: &str,
    before: serde_json::Value,
    after: serde_json::Value,
    extra: serde_json::Map<String, serde_json::Value>,
) {
    let mut line = serde_json::json!({
        "time": state::now_rfc3339(),
        "peer_uid": peer.uid,
        "peer_pid": peer.pid,
        "action": action,
        "before": before,
        "after": after,
    });
    if let Some(obj) = line.as_object_mut() {
        obj.extend(extra);
    }
    // The whole line in one `write`: formatting straight into the file made a syscall per JSON
    // token (~75 per record), and an append of one buffer is not interleaved with another
    // writer's.
    let mut record = line.to_string();
    record.push('\n');
    let path = &cfg.proxy.audit_log;
    let r = (|| -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(record.as_bytes())?;
        f.sync_data()
    })();
    if let Err(e) = r {
        tracing::error!(path = %path.display(), error = %e, "cannot write the audit log");
    }
}
