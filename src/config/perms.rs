//! What `check` warns about without refusing (exit 0, the warning printed): files that others
//! may read although they hold secrets. The config may carry database passwords (`env` of a
//! service); backups hold every user's data, password hashes included, and are written 0600 in
//! 0700 folders (see `release/backup/files.rs`), but a folder made by hand, or dumps written
//! before sets, may be readable by others.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::Config;

/// Who besides the owner may read a file with `mode`: "group", "others", "group and others".
fn readers(mode: u32) -> Option<&'static str> {
    match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("its group"),
        (false, true) => Some("others"),
        (false, false) => None,
    }
}

fn mode_of(p: &Path) -> Option<u32> {
    std::fs::metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// Every warning about `cfg`, one line each.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = mode_of(&cfg.path) {
        if let Some(who) = readers(m) {
            out.push(format!(
                "{} is readable by {who} (mode {m:04o}); it may hold secrets such as database passwords: chmod 600 {}",
                cfg.path.display(),
                cfg.path.display()
            ));
        }
    }
    let mut seen = Vec::new();
    for site in &cfg.sites {
        let Some(rel) = &site.release else { continue };
        for dir in [rel.backups.clone(), rel.backups.join(&site.name)] {
            if seen.contains(&dir) {
                continue;
            }
            seen.push(dir.clone());
            if let Some(who) = mode_of(&dir).and_then(readers) {
                out.push(format!(
                    "backups folder {} is readable by {who} (mode {:04o}); backups hold every user's data: chmod 700 {}",
                    dir.display(),
                    mode_of(&dir).unwrap_or(0),
                    dir.display()
                ));
            }
        }
        let site_dir = rel.backups.join(&site.name);
        let open: Vec<String> = std::fs::read_dir(&site_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter(|e| mode_of(&e.path()).and_then(readers).is_some())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !open.is_empty() {
            out.push(format!(
                "{} backup file(s) in {} are readable by others (written before backups were made private, e.g. {}): chmod 600 {}/*",
                open.len(),
                site_dir.display(),
                open[0],
                site_dir.display()
            ));
        }
    }
    if let Some(o) = &cfg.offsite {
        let p = &o.password_file;
        match mode_of(p) {
            None => out.push(format!(
                "[backups.offsite] password_file {} cannot be read; off-site copies will fail until it holds the repository's password",
                p.display()
            )),
            Some(m) => {
                if let Some(who) = readers(m) {
                    out.push(format!(
                        "off-site password file {} is readable by {who} (mode {m:04o}); it opens every off-site copy: chmod 600 {}",
                        p.display(),
                        p.display()
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_about_readable_config_and_backups() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cfg_path = t.path().join("sy.toml");
        let text = "[proxy]\nhttp = \"127.0.0.1:0\"\ncontrol = \"c.sock\"\nstate = \"s.json\"\n[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.release]\n[[site.release.services]]\nname = \"web\"\nimage = \"w:{version}\"\n";
        std::fs::write(&cfg_path, text).unwrap_or_default();
        let set = |p: &Path, m: u32| {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        };
        set(&cfg_path, 0o644);
        let cfg = super::super::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
        let w = warnings(&cfg);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("chmod 600"), "{w:?}");
        let b = t.path().join("backups/w");
        std::fs::create_dir_all(&b).unwrap_or_default();
        set(&t.path().join("backups"), 0o755);
        set(&b, 0o700);
        std::fs::write(b.join("old.dump"), b"x").unwrap_or_default();
        set(&b.join("old.dump"), 0o644);
        set(&cfg_path, 0o600);
        let w = warnings(&cfg);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("backups folder") && w[0].contains("0755"),
            "{w:?}"
        );
        assert!(w[1].contains("old.dump"), "{w:?}");
        // [backups.offsite]: the password file must exist, and be nobody else's to read.
        let with_offsite =
            format!("{text}[backups.offsite]\nrepository = \"r\"\npassword_file = \"pw\"\n");
        std::fs::write(&cfg_path, with_offsite).unwrap_or_default();
        let cfg = super::super::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
        let w = warnings(&cfg);
        assert!(
            w.iter()
                .any(|l| l.contains("password_file") && l.contains("cannot be read")),
            "{w:?}"
        );
        std::fs::write(t.path().join("pw"), b"secret").unwrap_or_default();
        set(&t.path().join("pw"), 0o644);
        let w = warnings(&cfg);
        assert!(
            w.iter()
                .any(|l| l.contains("off-site password file") && l.contains("chmod 600")),
            "{w:?}"
        );
    }
}
