//! `[backups.offsite]`: the restic repository sets are copied to, its password file, the mode and
//! the retention policy (restic's own `forget --keep-*`).

use super::raw::{RawOffsite, S};
use super::{Ctx, Duration, OffsiteConfig, OffsiteMode};

/// The repository schemes restic 0.14 knows; anything else before a `:` is a typo.
const SCHEMES: [&str; 9] = [
    "local", "sftp", "rest", "s3", "b2", "azure", "gs", "swift", "rclone",
];

pub(super) fn offsite(cx: &mut Ctx, ro: &S<RawOffsite>) -> OffsiteConfig {
    let o = ro.get_ref();
    let repository = match &o.repository {
        None => {
            cx.err(ro, "[backups.offsite] has no `repository`; give restic's repository, e.g. repository = \"rest:http://backup.example.org:8000/wiki\" or a path on another disk");
            String::new()
        }
        Some(r) => repository(cx, r),
    };
    let password_file = match &o.password_file {
        None => {
            cx.err(ro, "[backups.offsite] has no `password_file`; name a file (mode 0600) holding the repository's password, e.g. password_file = \"/etc/switchyard/restic-password\"");
            Default::default()
        }
        Some(p) if p.get_ref().trim().is_empty() => {
            cx.err(
                p,
                "`password_file` is empty; name the file holding the repository's password",
            );
            Default::default()
        }
        Some(p) => absolute(cx.path(p.get_ref())),
    };
    let mode = match o.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "after")) => OffsiteMode::After,
        Some((_, "required")) => OffsiteMode::Required,
        Some((m, other)) => {
            cx.err(m, format!("`mode` `{other}` is not known; use \"after\" (a release does not wait for the copy) or \"required\" (a release waits for it and fails with it)"));
            OffsiteMode::After
        }
    };
    let restic = o
        .restic
        .as_ref()
        .map(|r| {
            let v = r.get_ref();
            if v.contains('/') {
                cx.path(v)
            } else {
                v.into()
            }
        })
        .unwrap_or_else(|| "restic".into());
    let timeout = cx.duration(&o.timeout, "timeout", Duration::from_secs(3600));
    let mut keep = Vec::new();
    for (flag, v) in [
        ("--keep-last", &o.keep_last),
        ("--keep-hourly", &o.keep_hourly),
        ("--keep-daily", &o.keep_daily),
        ("--keep-weekly", &o.keep_weekly),
        ("--keep-monthly", &o.keep_monthly),
        ("--keep-yearly", &o.keep_yearly),
    ] {
        let key = flag.trim_start_matches("--").replace('-', "_");
        if v.is_some() {
            let n = cx.count(v, &key, 1, 100_000, 1);
            keep.push((flag, n as u32));
        }
    }
    OffsiteConfig {
        repository,
        password_file,
        mode,
        restic,
        timeout,
        keep,
    }
}

/// A URL restic knows, or a local path (resolved against the config's folder).
fn repository(cx: &mut Ctx, r: &S<String>) -> String {
    let v = r.get_ref().trim();
    if v.is_empty() {
        cx.err(
            r,
            "`repository` is empty; give restic's repository URL or a path",
        );
        return String::new();
    }
    match v.split_once(':') {
        Some((scheme, _)) if !scheme.contains('/') && !scheme.is_empty() => {
            if !SCHEMES.contains(&scheme) {
                cx.err(
                    r,
                    format!(
                        "`repository` `{v}`: restic knows no `{scheme}:` repositories; use one of {}: (or a plain path)",
                        SCHEMES.join(":, ")
                    ),
                );
            }
            v.to_string()
        }
        _ => absolute(cx.path(v)).display().to_string(),
    }
}

/// restic runs in the backups folder: a path relative to where switchyard was started would
/// point elsewhere there.
fn absolute(p: std::path::PathBuf) -> std::path::PathBuf {
    if p.is_absolute() {
        return p;
    }
    std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_config, OffsiteMode};
    use std::path::Path;

    fn cfg(offsite: &str) -> Result<crate::config::Config, String> {
        let text = format!("[proxy]\nhttp = \"127.0.0.1:0\"\ncontrol = \"c.sock\"\nstate = \"s.json\"\n[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.pools]\nblue = [\"127.0.0.1:1\"]\n[backups.offsite]\n{offsite}");
        parse_config(Path::new("/etc/sy/t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn offsite_keys() {
        let c = cfg("repository = \"restic-repo\"\npassword_file = \"pw\"\nmode = \"required\"\nkeep_last = 3\nkeep_daily = 7\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let o = c.offsite.unwrap_or_else(|| panic!("no offsite"));
        assert_eq!(o.repository, "/etc/sy/restic-repo");
        assert_eq!(o.password_file, Path::new("/etc/sy/pw"));
        assert_eq!(o.mode, OffsiteMode::Required);
        assert_eq!(o.keep, vec![("--keep-last", 3), ("--keep-daily", 7)]);
        let c = cfg("repository = \"rest:http://127.0.0.1:8000/\"\npassword_file = \"/pw\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let o = c.offsite.unwrap_or_else(|| panic!("no offsite"));
        assert_eq!(o.repository, "rest:http://127.0.0.1:8000/");
        assert_eq!(o.mode, OffsiteMode::After);
    }

    #[test]
    fn offsite_mistakes_are_named() {
        let e = cfg("repository = \"rset:http://x/\"\npassword_file = \"pw\"\nmode = \"later\"\nkeep_last = 0\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("no `rset:` repositories"), "{e}");
        assert!(e.contains("`mode` `later`"), "{e}");
        assert!(e.contains("`keep_last` must be between 1"), "{e}");
        let e = cfg("mode = \"after\"\n").err().unwrap_or_default();
        assert!(
            e.contains("no `repository`") && e.contains("no `password_file`"),
            "{e}"
        );
    }
}
