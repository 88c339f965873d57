//! Running the `restic` binary: the repository and the password file go in its environment
//! (RESTIC_REPOSITORY, RESTIC_PASSWORD_FILE; other password sources of the caller's environment
//! are removed so the config is the only one), stdout is read line by line (`--json` output),
//! stderr is kept for the error, the run has a deadline, and a dropped run (Ctrl-C) kills it.
//! What restic prints when it fails is turned into an [`OffsiteError`] that says what to do.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::OffsiteError;
use crate::config::OffsiteConfig;

/// Runs `restic ARGS` in `cwd`; each stdout line goes to `on_line`, `tick` runs every second
/// while it works. Returns stdout (the lines joined) when restic exits 0.
pub async fn run(
    cfg: &OffsiteConfig,
    args: &[&str],
    cwd: Option<&Path>,
    on_line: &mut (dyn FnMut(&str) + Send),
    tick: &(dyn Fn() + Sync),
) -> Result<String, OffsiteError> {
    let what = args.first().copied().unwrap_or("").to_string();
    password_readable(cfg)?;
    let mut cmd = tokio::process::Command::new(&cfg.restic);
    cmd.args(args)
        .env("RESTIC_REPOSITORY", &cfg.repository)
        .env("RESTIC_PASSWORD_FILE", &cfg.password_file)
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_PASSWORD_COMMAND")
        .env_remove("RESTIC_REPOSITORY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|e| OffsiteError::NoRestic {
        bin: cfg.restic.display().to_string(),
        why: e.to_string(),
    })?;
    let (Some(out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(OffsiteError::Failed {
            what,
            detail: "restic's output could not be read".into(),
        });
    };
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    let mut lines = BufReader::new(out).lines();
    let mut stdout = String::new();
    let work = async {
        let mut tick_every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                l = lines.next_line() => match l {
                    Ok(Some(l)) => {
                        on_line(&l);
                        stdout.push_str(&l);
                        stdout.push('\n');
                    }
                    _ => break,
                },
                _ = tick_every.tick() => tick(),
            }
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(cfg.timeout, work).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(OffsiteError::Failed {
                what,
                detail: format!("waiting for restic: {e}"),
            })
        }
        Err(_) => {
            return Err(OffsiteError::Timeout {
                what,
                repo: cfg.shown(),
                after: cfg.timeout,
            })
        }
    };
    let stderr = stderr.await.unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    Err(classify(cfg, &what, &stderr, status.code()))
}

/// The password file must be there and readable before restic is asked (restic's own message
/// for it names no config key).
fn password_readable(cfg: &OffsiteConfig) -> Result<(), OffsiteError> {
    match std::fs::read(&cfg.password_file) {
        Ok(b) if b.iter().all(|c| c.is_ascii_whitespace()) => Err(OffsiteError::PasswordFile {
            path: cfg.password_file.clone(),
            why: "it is empty".into(),
        }),
        Ok(_) => Ok(()),
        Err(e) => Err(OffsiteError::PasswordFile {
            path: cfg.password_file.clone(),
            why: e.to_string(),
        }),
    }
}

/// What restic's stderr says went wrong, as an error that says what to do.
pub fn classify(cfg: &OffsiteConfig, what: &str, stderr: &str, code: Option<i32>) -> OffsiteError {
    let repo = cfg.shown();
    let stderr = cfg.redact(stderr);
    let s = stderr.to_ascii_lowercase();
    let detail = tail(&stderr);
    if s.contains("wrong password") {
        return OffsiteError::WrongPassword {
            repo,
            file: cfg.password_file.clone(),
        };
    }
    if s.contains("already locked") || s.contains("unable to create lock") {
        return OffsiteError::Locked { repo, detail };
    }
    let unreachable = [
        "connection refused",
        "dial tcp",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "connection reset",
        "no route to host",
        "tls: ",
    ];
    if unreachable.iter().any(|k| s.contains(k)) {
        return OffsiteError::Unreachable { repo, detail };
    }
    let damaged = [
        "ciphertext verification failed",
        "hash does not match",
        "hash mismatch",
        "invalid data returned",
    ];
    if damaged.iter().any(|k| s.contains(k)) {
        return OffsiteError::Damaged { repo, detail };
    }
    if s.contains("config file already exists") {
        return OffsiteError::AlreadyInitialised { repo };
    }
    if s.contains("unable to open config file") || s.contains("is there a repository at") {
        return OffsiteError::NotInitialised { repo };
    }
    OffsiteError::Failed {
        what: what.to_string(),
        detail: format!(
            "exit code {}: {detail}",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "none (killed)".into())
        ),
    }
}

/// The last few lines of restic's stderr, on one line.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(3);
    lines[from..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OffsiteConfig {
        OffsiteConfig {
            repository: "rest:http://127.0.0.1:1/".into(),
            password_file: "/etc/pw".into(),
            mode: crate::config::OffsiteMode::After,
            restic: "restic".into(),
            timeout: Duration::from_secs(5),
            keep: vec![],
        }
    }

    /// restic 0.14's messages, as printed on stderr.
    #[test]
    fn restic_failures_say_what_to_do() {
        let c = cfg();
        let e = classify(
            &c,
            "snapshots",
            "Fatal: wrong password or no key found\n",
            Some(1),
        );
        assert!(matches!(e, OffsiteError::WrongPassword { .. }), "{e}");
        let e = classify(&c, "snapshots", "Fatal: unable to open config file: client.Head: Head \"http://127.0.0.1:1/config\": dial tcp 127.0.0.1:1: connect: connection refused\nIs there a repository at the following location?\nrest:http://127.0.0.1:1/\n", Some(1));
        assert!(matches!(e, OffsiteError::Unreachable { .. }), "{e}");
        let e = classify(&c, "snapshots", "Fatal: unable to open config file: <config/> does not exist\nIs there a repository at the following location?\n", Some(1));
        assert!(
            e.to_string().contains("switchyard backups offsite init"),
            "{e}"
        );
        let e = classify(&c, "backup", "unable to create lock in backend: repository is already locked exclusively by PID 7 on h by root (UID 0, GID 0)\nlock was created at 2026-12-02 06:00:00 (1m ago)\n", Some(1));
        assert!(e.to_string().contains("restic unlock"), "{e}");
        let e = classify(&c, "restore", "ignoring error for /s/db.dump: ciphertext verification failed\nFatal: There were 2 errors\n", Some(1));
        assert!(e.to_string().contains("holds damaged data"), "{e}");
        let e = classify(&c, "backup", "Fatal: something else\n", Some(3));
        assert!(
            e.to_string().contains("exit code 3: Fatal: something else"),
            "{e}"
        );
    }
}
