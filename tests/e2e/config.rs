//! `switchyard check` and `serve` on bad configs: exit 1, every problem with file:line and a hint.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

struct Run {
    code: Option<i32>,
    out: String,
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("switchyard.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run(cmd: &str, cfg: &Path) -> Run {
    let o = Command::new(BIN)
        .arg(cmd)
        .arg("--config")
        .arg(cfg)
        .env("SWITCHYARD_LOG", "off")
        .output()
        .unwrap();
    Run {
        code: o.status.code(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// Lines 1-4: a valid [proxy] with only a plain listener (no certificates needed).
fn head(dir: &Path) -> String {
    format!("[proxy]\nhttp = \"127.0.0.1:0\"\nstate = \"{d}/state.json\"\ncontrol = \"{d}/control.sock\"\n", d = dir.display())
}

const GOOD_SITE: &str =
    "[[site]]\nname = \"wiki\"\nhosts = [\"wiki.test\"]\n[site.pools]\nblue = [\"127.0.0.1:9\"]\n";

/// Asserts `check` and `serve` both exit 1 naming `file:line` with every `needles` in the output.
fn refused(text: &str, line: usize, needles: &[&str]) {
    let t = tempfile::tempdir().unwrap();
    let cfg = write(t.path(), text);
    let at = format!("{}:{line}:", cfg.display());
    for cmd in ["check", "serve"] {
        let r = run(cmd, &cfg);
        assert_eq!(
            r.code,
            Some(1),
            "{cmd} must refuse:\n{}\n--- config:\n{text}",
            r.out
        );
        assert!(r.out.contains(&at), "{cmd} must point at {at}:\n{}", r.out);
        for n in needles {
            assert!(r.out.contains(n), "{cmd} output lacks {n:?}:\n{}", r.out);
        }
        assert!(!r.out.contains("switchyard ready:"), "{cmd} must not start");
    }
}

#[test]
fn a_good_config_passes() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write(t.path(), &(head(t.path()) + GOOD_SITE));
    let r = run("check", &cfg);
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert!(r.out.contains("ok (1 site(s))"), "{}", r.out);
}

#[test]
fn unknown_key() {
    let t = tempfile::tempdir().unwrap();
    refused(
        &(head(t.path()) + "colour = \"blue\"\n" + GOOD_SITE),
        5,
        &["colour", "spelling"],
    );
    // inside a site, too
    let site = "[[site]]\nname = \"wiki\"\nhosts = [\"wiki.test\"]\nredirect = true\n[site.pools]\nblue = [\"127.0.0.1:9\"]\n";
    refused(&(head(t.path()) + site), 8, &["redirect", "spelling"]);
}

#[test]
fn bad_address() {
    let t = tempfile::tempdir().unwrap();
    let site = "[[site]]\nname = \"wiki\"\nhosts = [\"wiki.test\"]\n[site.pools]\nblue = [\"127.0.0.1:9\"]\ngreen = [\"backend-host:80\"]\n";
    refused(
        &(head(t.path()) + site),
        10,
        &["backend-host:80", "IP:PORT"],
    );
    let bad_listener = head(t.path()).replace("http = \"127.0.0.1:0\"", "http = \"127.0.0.1\"");
    refused(&(bad_listener + GOOD_SITE), 2, &["`http`", "IP:PORT"]);
}

#[test]
fn site_without_pools_or_release() {
    let t = tempfile::tempdir().unwrap();
    refused(
        &(head(t.path()) + "[[site]]\nname = \"wiki\"\nhosts = [\"wiki.test\"]\n"),
        6,
        &[
            "wiki",
            "neither [site.pools] nor [site.release]",
            "blue = [",
        ],
    );
}

#[test]
fn duplicate_host() {
    let t = tempfile::tempdir().unwrap();
    let two = "[[site]]\nname = \"other\"\nhosts = [\"other.test\", \"WIKI.test\"]\n[site.pools]\nblue = [\"127.0.0.1:9\"]\n";
    refused(
        &(head(t.path()) + GOOD_SITE + two),
        12,
        &[
            "wiki.test",
            "already used by site `wiki` (line 7)",
            "one site only",
        ],
    );
}

#[test]
fn duplicate_host_is_found_after_a_bad_host_on_the_right_line() {
    let t = tempfile::tempdir().unwrap();
    let two = "[[site]]\nname = \"other\"\nhosts = [\n  \"bad host\",\n  \"wiki.test\",\n]\n[site.pools]\nblue = [\"127.0.0.1:9\"]\n";
    // line 13: "bad host"; line 14: the duplicate
    refused(
        &(head(t.path()) + GOOD_SITE + two),
        13,
        &["not allowed in a host name"],
    );
    refused(
        &(head(t.path()) + GOOD_SITE + two),
        14,
        &["already used by site `wiki`"],
    );
}

#[test]
fn bad_duration_and_size() {
    let t = tempfile::tempdir().unwrap();
    refused(
        &(head(t.path()) + "upstream_timeout = \"5 parsecs\"\n" + GOOD_SITE),
        5,
        &["upstream_timeout", "ms, s, m or h"],
    );
    refused(
        &(head(t.path()) + "idle_timeout = \"soon\"\n" + GOOD_SITE),
        5,
        &["idle_timeout", "\"10s\""],
    );
    refused(
        &(head(t.path()) + "max_body_bytes = \"10 elephants\"\n" + GOOD_SITE),
        5,
        &["max_body_bytes", "MiB"],
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let t = tempfile::tempdir().unwrap();
    let text = head(t.path())
        + "header_timeout = \"0s\"\n"
        + "[[site]]\nname = \"wiki\"\nhosts = [\"wiki.test\"]\n[site.pools]\nblue = [\"nope\"]\n"
        + "[[site]]\nname = \"b\"\nhosts = [\"wiki.test\"]\n";
    refused(&text, 5, &["more than zero"]);
    refused(&text, 10, &["not an address"]);
    refused(&text, 13, &["already used"]);
    refused(&text, 12, &["neither"]);
}
