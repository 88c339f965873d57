//! Releases on Docker (issue 5): `up`, the six-step `release`, faults at every step, Ctrl-C, a
//! crash with `--resume`/`--abort`, rollback guard, and MariaDB with real dump/restore.
//!
//! Real engine, nothing mocked. Without an engine these tests print "SKIPPED: no Docker engine"
//! and pass, except with CI=true where they fail. Images are built once per run by the scripts in
//! tests/images (idempotent). Each test uses its own prefix `syt-<name>-<pid>` and removes its
//! containers, networks and volumes when it ends.
// See: issue 5

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) const HOST: &str = "notes.test";
pub(crate) const SITE: &str = "notes";

fn engine_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let ok = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output().map(|o| o.status.success()).unwrap_or(false);
        if !ok && std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but no Docker engine is reachable: the release tests need one (start dockerd)");
        }
        if !ok {
            eprintln!("\n*** SKIPPED: no Docker engine; the release tests did not run ***\n");
        }
        ok
    })
}

fn build(script: &str) -> String {
    let path = format!("{}/tests/images/{script}", env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    assert!(
        o.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// True when Docker is there and the test images are built (once per run).
pub(crate) fn testapp() -> bool {
    if !engine_ready() {
        return false;
    }
    repo();
    true
}

/// The image repository of this tree's test app (`sy-testapp-<sha12>`, tags 1 and 2): built once
/// per run. Its own name, so another work tree re-importing `sy-testapp:N` on the same engine
/// never swaps the app under these tests.
pub(crate) fn repo() -> &'static str {
    static REPO: OnceLock<String> = OnceLock::new();
    REPO.get_or_init(|| {
        let out = build("build-testapp.sh");
        out.lines()
            .rev()
            .find_map(|l| l.strip_prefix("IMAGE_REPO="))
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|| panic!("build-testapp.sh printed no IMAGE_REPO= line:\n{out}"))
    })
}

pub(crate) fn mariadb() -> bool {
    static DONE: OnceLock<()> = OnceLock::new();
    if !testapp() {
        return false;
    }
    DONE.get_or_init(|| {
        build("build-mariadb.sh");
    });
    true
}

pub(crate) fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}

/// The testapp stack: db (volume `data`) + web (volume `files` for uploads, marked as data), with
/// app read-only and verify_restore.
pub(crate) fn testapp_release(prefix: &str) -> String {
    format!(
        r#"
[site.release]
prefix = "{prefix}"
backups = "backups"
keep_backups = 3
web = "web"
web_port = 80
health_timeout = "HEALTH_TIMEOUT"
app_read_only = {{ on = APP_RO_ON, off = ["/sy-testapp", "readonly", "off"] }}
verify_restore = ["/sy-testapp", "verify"]
[[site.release.services]]
name = "db"
image = "{repo}:{{version}}"
command = ["db"]
volumes = ["data:/data"]
env = {{ DB_ENV = "1" }}
backup = BACKUP
restore = ["/sy-testapp", "restore"]
[[site.release.services]]
name = "web"
image = "{repo}:{{version}}"
command = ["web"]
env = {{ WEB_ENV = "1" }}
volumes = ["files:/files"]
data_volumes = ["files"]
migrate = ["/sy-testapp", "migrate"]
"#,
        repo = repo()
    )
    .replace("HEALTH_TIMEOUT", "30s")
    .replace("APP_RO_ON", r#"["/sy-testapp", "readonly", "on"]"#)
    .replace("BACKUP", r#"["/sy-testapp", "dump"]"#)
}

/// A proxy with one site `notes` managed by `release`, and the Docker objects of its prefix.
pub(crate) struct Stack {
    pub(crate) p: Proxy,
    pub(crate) prefix: String,
    pub(crate) http: reqwest::Client,
}

impl Stack {
    pub(crate) fn start(name: &str, release: impl FnOnce(&str) -> String) -> Stack {
        let prefix = format!("syt-{name}-{}", std::process::id());
        let site = format!(
            "\n[[site]]\nname = \"{SITE}\"\nhosts = [\"{HOST}\"]\nredirect_http = false\n[site.health]\npath = \"/health\"\ninterval = \"200ms\"\nrise = 1\nfall = 2\n{}",
            release(&prefix)
        );
        let p = Proxy::start("", &site);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Stack { p, prefix, http }
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.p.cli(args)
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        self.p.ok(args)
    }

    /// Edits the config file that the release commands read (the daemon needs no reload for it).
    pub(crate) fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.p.config).unwrap();
        assert!(text.contains(from), "config has no `{from}`");
        std::fs::write(&self.p.config, text.replacen(from, to, 1)).unwrap();
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.p.url(path))
            .header("host", HOST)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn post_note(&self, text: &str) -> reqwest::Response {
        self.http
            .post(self.p.url("/notes"))
            .header("host", HOST)
            .body(text.to_string())
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn version(&self) -> String {
        let r = self.get("/version").await;
        assert_eq!(r.status(), 200, "GET /version through the proxy");
        r.headers()
            .get("x-app-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    pub(crate) async fn notes(&self) -> Vec<serde_json::Value> {
        let r = self.get("/notes").await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    pub(crate) fn site_status(&self) -> serde_json::Value {
        self.p.status()["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == SITE)
            .unwrap()
            .clone()
    }

    pub(crate) fn backups_dir(&self) -> std::path::PathBuf {
        self.p.dir.join("backups").join(SITE)
    }

    pub(crate) fn container_state(&self, color: &str, svc: &str) -> String {
        let o = sh(&format!(
            "docker inspect -f '{{{{.State.Status}}}}' {}-{color}-{svc} 2>/dev/null",
            self.prefix
        ));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// After a failed release: the old env serves v1 with its data, read-only is off (edge and
    /// app), no journal, no unverified backup file.
    pub(crate) async fn assert_recovered(&self, notes_before: usize) {
        assert_eq!(
            self.version().await,
            "1",
            "the old environment must still serve"
        );
        assert_eq!(self.notes().await.len(), notes_before);
        let st = self.site_status();
        assert_eq!(st["read_only"], false, "read-only must be lifted: {st}");
        assert_eq!(st["active"], "blue");
        let r = self.post_note("after the failure").await;
        assert_eq!(
            r.status(),
            201,
            "writes must work again (edge and app read-only off)"
        );
        assert!(
            !self.p.dir.join(format!("release-{SITE}.json")).exists(),
            "the journal must be gone after a clean failure"
        );
        if let Ok(rd) = std::fs::read_dir(self.backups_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.ends_with(".partial"),
                    "a partial backup was left: {name}"
                );
                if e.path().is_dir() {
                    assert!(
                        e.path().join("manifest.json").exists(),
                        "a set without its manifest: {name}"
                    );
                }
            }
            let v = self.cli(&["backups", "verify", SITE]);
            assert!(
                v.status.success(),
                "backups verify: {}",
                String::from_utf8_lossy(&v.stdout)
            );
        }
    }

    pub(crate) fn release(&self, version: &str) -> Output {
        self.cli(&["release", SITE, "--version", version])
    }

    /// Starts `release` as a child; its stdout lines arrive on the returned channel.
    pub(crate) fn spawn(
        &self,
        args: &[&str],
    ) -> (
        std::process::Child,
        std::sync::mpsc::Receiver<String>,
        std::thread::JoinHandle<Vec<String>>,
    ) {
        let mut child = Command::new(BIN)
            .arg("--control")
            .arg(&self.p.control)
            .arg("--config")
            .arg(&self.p.config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        // stderr whole, once the process has closed it: joined after `wait`, so the last lines
        // (the interruption message) are never still in the pipe.
        let err = child.stderr.take().unwrap();
        let err_lines = std::thread::spawn(move || {
            BufReader::new(err)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        (child, rx, err_lines)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let p = &self.prefix;
        sh(&format!(
            "docker ps -aq --filter label=switchyard.prefix={p} | xargs -r docker rm -f >/dev/null 2>&1; \
             docker network ls -q --filter label=switchyard.prefix={p} | xargs -r docker network rm >/dev/null 2>&1; \
             docker volume ls -q --filter label=switchyard.prefix={p} | xargs -r docker volume rm -f >/dev/null 2>&1"
        ));
    }
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub(crate) fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    seen: &mut Vec<String>,
) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if l.contains(what) {
                    return;
                }
            }
            Err(_) => panic!(
                "never saw `{what}` in the release output:\n{}",
                seen.join("\n")
            ),
        }
    }
}

pub(crate) fn window_of(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.split("read-only window: ").nth(1))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
}

/// The whole story through the proxy: up v1, write, release to v2 under a steady read and write
/// load, data present and migrated; a second release is refused while one runs; rollback is
/// refused after a write to v2 and allowed with --discard-writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_5_release_under_load_then_guarded_rollback() {
    if !testapp() {
        return;
    }
    let s = Arc::new(Stack::start("main", testapp_release));
    let up = s.ok(&["up", SITE, "--version", "1"]);
    assert!(up.contains("healthy"), "{up}");
    assert_eq!(s.version().await, "1");
    for i in 0..5 {
        assert_eq!(s.post_note(&format!("before {i}")).await.status(), 201);
    }
    let envs = s.ok(&["envs", "list", SITE]);
    assert!(
        envs.contains("active") && envs.contains(&format!("{}-blue-web", s.prefix)),
        "{envs}"
    );

    // Steady load: two readers, one writer.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let failed_reads = Arc::new(Mutex::new(Vec::<String>::new()));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let bad_writes = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (s, stop, reads, failed) =
            (s.clone(), stop.clone(), reads.clone(), failed_reads.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match s
                    .http
                    .get(s.p.url("/notes"))
                    .header("host", HOST)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    {
        let (s, stop, accepted, refused, bad) = (
            s.clone(),
            stop.clone(),
            accepted.clone(),
            refused.clone(),
            bad_writes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = format!("load {n}");
                match s
                    .http
                    .post(s.p.url("/notes"))
                    .header("host", HOST)
                    .body(t.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => accepted.lock().unwrap().push(t),
                    Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => bad.lock().unwrap().push(format!(
                        "{t}: status {} without the read-only answer",
                        r.status()
                    )),
                    Err(e) => bad.lock().unwrap().push(format!("{t}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await; // pacing, not readiness
            }
        }));
    }

    let s2 = s.clone();
    let (out, second, took) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let (mut child, rx, err) = s2.spawn(&["release", SITE, "--version", "2"]);
        let mut seen = Vec::new();
        wait_line(&rx, "3/6 backup done", &mut seen);
        let second = s2.release("2");
        for l in rx.iter() {
            seen.push(l);
        }
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "release failed:\n{}\n{}",
            seen.join("\n"),
            err.join().unwrap_or_default().join("\n")
        );
        (seen.join("\n"), second, t.elapsed())
    })
    .await
    .unwrap();
    // Let the load run on v2 for a moment: wait until some write landed after the release.
    let before = accepted.lock().unwrap().len();
    wait_until_async(Duration::from_secs(10), "a write accepted by v2", || {
        let n = accepted.lock().unwrap().len();
        async move { (n > before).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    println!("release output:\n{out}");
    assert_eq!(
        second.status.code(),
        Some(1),
        "a second release must be refused: {}",
        text(&second)
    );
    assert!(
        text(&second).contains("another release"),
        "{}",
        text(&second)
    );
    for step in [
        "1/6 create",
        "2/6 read-only",
        "3/6 backup",
        "4/6 restore",
        "5/6 migrate",
        "6/6 switch",
    ] {
        assert!(out.contains(step), "progress misses {step}");
    }
    let failed = failed_reads.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed read(s) of {}: {:?}",
        failed.len(),
        reads.load(Ordering::Relaxed),
        &failed[..failed.len().min(5)]
    );
    assert!(reads.load(Ordering::Relaxed) > 20);
    assert!(
        bad_writes.lock().unwrap().is_empty(),
        "{:?}",
        bad_writes.lock().unwrap()
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "no write met the read-only window"
    );
    assert_eq!(s.version().await, "2");
    let notes = s.notes().await;
    let texts: Vec<&str> = notes.iter().filter_map(|n| n["text"].as_str()).collect();
    for t in accepted.lock().unwrap().iter() {
        assert!(texts.contains(&t.as_str()), "accepted write `{t}` was lost");
    }
    for i in 0..5 {
        assert!(texts.contains(&format!("before {i}").as_str()));
    }
    assert!(
        notes.iter().all(|n| n["author"].is_string()),
        "v2 schema (author) on every note: migrated"
    );
    let st = s.site_status();
    assert_eq!(st["active"], "green");
    assert_eq!(st["read_only"], false);

    // Rollback guard: writes reached v2, so a plain rollback is refused with the count.
    let r = s.cli(&["rollback", SITE]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("write(s)"), "{}", text(&r));
    s.ok(&["rollback", SITE, "--discard-writes"]);
    assert_eq!(s.version().await, "1");
    let envs = s.ok(&["envs", "list", SITE]);
    assert!(envs.contains("green") && envs.contains("blue"), "{envs}");
    println!(
        "RESULT release_under_load: read-only window {:.3}s, release {:.2}s, {} reads ok, {} writes accepted, {} refused with 503",
        window_of(&out).unwrap_or(-1.0),
        took.as_secs_f64(),
        reads.load(Ordering::Relaxed),
        accepted.lock().unwrap().len(),
        refused.load(Ordering::Relaxed)
    );
}

/// Sets up v1 with two notes, applies `edit` to the config, runs a release to `version` that
/// must fail at `step`, and checks that nothing is lost.
async fn fault(name: &str, edit: &[(&str, &str)], version: &str, step: &str) -> Stack {
    let s = Stack::start(name, testapp_release);
    s.ok(&["up", SITE, "--version", "1"]);
    for i in 0..2 {
        assert_eq!(s.post_note(&format!("n{i}")).await.status(), 201);
    }
    for (a, b) in edit {
        s.edit(a, b);
    }
    let t = Instant::now();
    let o = s.release(version);
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the release must fail with exit 1:\n{out}"
    );
    assert!(
        out.contains(step),
        "the error must name step {step}:\n{out}"
    );
    println!(
        "{name}: failed as expected in {:.2}s:\n{out}",
        t.elapsed().as_secs_f64()
    );
    s.assert_recovered(2).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_fault_read_only_step() {
    if !testapp() {
        return;
    }
    let s = fault(
        "ro",
        &[(
            r#"on = ["/sy-testapp", "readonly", "on"]"#,
            r#"on = ["/sy-testapp", "fail"]"#,
        )],
        "2",
        "2/6 read-only",
    )
    .await;
    assert!(
        !s.backups_dir().exists() || std::fs::read_dir(s.backups_dir()).unwrap().next().is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_fault_backup_command() {
    if !testapp() {
        return;
    }
    let s = fault(
        "backup",
        &[(
            r#"backup = ["/sy-testapp", "dump"]"#,
            r#"backup = ["/sy-testapp", "fail"]"#,
        )],
        "2",
        "3/6 backup",
    )
    .await;
    let left: Vec<_> = std::fs::read_dir(s.backups_dir())
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a failed backup must leave no file: {left:?}"
    );
    assert_eq!(
        s.container_state("green", "db"),
        "exited",
        "the new env is stopped and kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_fault_create() {
    if !testapp() {
        return;
    }
    // The new db exits at once: step 1 fails before read-only was ever turned on.
    let s = fault(
        "create",
        &[(r#"command = ["db"]"#, r#"command = ["fail"]"#)],
        "2",
        "1/6 create",
    )
    .await;
    assert!(!s.backups_dir().exists(), "no backup before the env exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_fault_missing_image_changes_nothing() {
    if !testapp() {
        return;
    }
    let s = Stack::start("image", testapp_release);
    s.ok(&["up", SITE, "--version", "1"]);
    let v_before = s.p.status()["version"].clone();
    let o = s.release("9");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(&format!("{}:9", repo()))
            && text(&o).contains("not on this Docker engine"),
        "{}",
        text(&o)
    );
    assert_eq!(
        s.p.status()["version"],
        v_before,
        "nothing may change in the proxy"
    );
    assert!(!s.backups_dir().exists(), "no backup may be taken");
    assert_eq!(s.container_state("green", "web"), "");
    s.assert_recovered(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_fault_restore() {
    if !testapp() {
        return;
    }
    let s = fault(
        "restore",
        &[(
            r#"restore = ["/sy-testapp", "restore"]"#,
            r#"restore = ["/sy-testapp", "fail"]"#,
        )],
        "2",
        "4/6 restore",
    )
    .await;
    assert_eq!(
        s.container_state("green", "db"),
        "exited",
        "the half-made env is stopped and kept"
    );
    let envs = s.ok(&["envs", "list", SITE]);
    assert!(envs.contains("prunable"), "{envs}");
    let dry = s.ok(&["envs", "prune", SITE, "--dry-run"]);
    assert!(
        dry.contains("would remove") && dry.contains("kept"),
        "{dry}"
    );
    assert_eq!(
        s.container_state("green", "db"),
        "exited",
        "--dry-run removed it"
    );
    let pruned = s.ok(&["envs", "prune", SITE]);
    assert!(
        pruned.contains("removed") && pruned.contains("kept"),
        "{pruned}"
    );
    assert_eq!(s.container_state("green", "db"), "");
    assert_eq!(s.container_state("blue", "db"), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_fault_migration() {
    if !testapp() {
        return;
    }
    let s = fault(
        "migrate",
        &[(
            r#"migrate = ["/sy-testapp", "migrate"]"#,
            r#"migrate = ["/sy-testapp", "fail"]"#,
        )],
        "2",
        "5/6 migrate",
    )
    .await;
    assert_eq!(s.container_state("green", "web"), "exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_fault_web_never_healthy() {
    if !testapp() {
        return;
    }
    let s = fault(
        "health",
        &[
            ("WEB_ENV = \"1\"", "SY_HEALTH_FAIL = \"1\""),
            ("health_timeout = \"30s\"", "health_timeout = \"3s\""),
        ],
        "2",
        "6/6 switch",
    )
    .await;
    assert_eq!(s.container_state("green", "web"), "exited");
    assert!(
        s.site_status()["pools"]["green"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the half-made env's pool is emptied"
    );
}

/// Ctrl-C in the middle (step 6, waiting for a new web that never gets healthy) undoes like a
/// failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_ctrl_c_during_release() {
    if !testapp() {
        return;
    }
    let s = Stack::start("sigint", testapp_release);
    s.ok(&["up", SITE, "--version", "1"]);
    assert_eq!(s.post_note("kept").await.status(), 201);
    s.edit("WEB_ENV = \"1\"", "SY_HEALTH_FAIL = \"1\"");
    s.edit("health_timeout = \"30s\"", "health_timeout = \"90s\"");
    let (mut child, rx, err) = s.spawn(&["release", SITE, "--version", "2"]);
    let mut seen = Vec::new();
    wait_line(&rx, "6/6 switch …", &mut seen);
    assert_eq!(s.site_status()["read_only"], true);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let err = err.join().unwrap_or_default().join("\n");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("6/6 switch") && err.contains("interrupted"),
        "{err}"
    );
    s.assert_recovered(1).await;
    assert_eq!(s.container_state("green", "web"), "exited");
}

/// A release killed mid-way (as by a crash) leaves its journal and read-only on; `--abort`
/// undoes it, and after another crash `--resume` finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_crash_then_abort_then_resume() {
    if !testapp() {
        return;
    }
    let s = Stack::start("crash", testapp_release);
    s.ok(&["up", SITE, "--version", "1"]);
    assert_eq!(s.post_note("kept").await.status(), 201);
    s.edit("WEB_ENV = \"1\"", "SY_HEALTH_FAIL = \"1\"");
    s.edit("health_timeout = \"30s\"", "health_timeout = \"90s\"");
    let crash = |s: &Stack| {
        let (mut child, rx, _) = s.spawn(&["release", SITE, "--version", "2"]);
        let mut seen = Vec::new();
        wait_line(&rx, "6/6 switch …", &mut seen);
        child.kill().unwrap();
        child.wait().unwrap();
    };
    crash(&s);
    assert!(
        s.p.dir.join(format!("release-{SITE}.json")).exists(),
        "the journal survives a crash"
    );
    assert_eq!(
        s.site_status()["read_only"],
        true,
        "read-only stays on after a crash"
    );
    let busy = s.release("2");
    assert!(text(&busy).contains("--resume"), "{}", text(&busy));
    let a = s.ok(&["release", SITE, "--abort"]);
    assert!(a.contains("aborted"), "{a}");
    s.assert_recovered(1).await;

    crash(&s);
    s.edit("SY_HEALTH_FAIL = \"1\"", "WEB_ENV = \"1\"");
    let r = s.ok(&["release", SITE, "--resume"]);
    assert!(r.contains("resuming with a fresh green environment"), "{r}");
    assert_eq!(s.version().await, "2");
    assert_eq!(
        s.notes().await.len(),
        2,
        "the note from before and the one written after the abort"
    );
    assert_eq!(s.site_status()["read_only"], false);
    assert!(!s.p.dir.join(format!("release-{SITE}.json")).exists());
}

/// Backups on their own: take, list, verify, detect corruption, prune keeps the newest verified
/// sets whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_backups_list_verify_prune() {
    if !testapp() {
        return;
    }
    let s = Stack::start("backups", testapp_release);
    s.ok(&["up", SITE, "--version", "1"]);
    for i in 0..5 {
        assert_eq!(s.post_note(&format!("b{i}")).await.status(), 201);
        let o = s.ok(&["backup", SITE]);
        assert!(o.contains("backup set verified"), "{o}");
    }
    let list = s.ok(&["backups", "list", SITE]);
    let sets: Vec<&str> = list.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(sets.len(), 5, "{list}");
    s.ok(&["backups", "verify", SITE]);
    // Corrupt the newest one's dump: verify fails naming it, prune keeps 3 verified sets and
    // leaves the broken one.
    let newest = sets[0].split_whitespace().next().unwrap().to_string();
    std::fs::write(s.backups_dir().join(&newest).join("db.dump"), b"garbage").unwrap();
    let v = s.cli(&["backups", "verify", SITE]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v).contains("BROKEN") && text(&v).contains("member db (db.dump)"),
        "{}",
        text(&v)
    );
    let before = s.ok(&["backups", "list", SITE]);
    let dry = s.ok(&["backups", "prune", SITE, "--dry-run"]);
    assert!(dry.contains("kept 3 verified"), "{dry}");
    assert_eq!(
        s.ok(&["backups", "list", SITE]),
        before,
        "--dry-run removed something"
    );
    let p = s.ok(&["backups", "prune", SITE]);
    assert!(p.contains("kept 3 verified"), "{p}");
    let list = s.ok(&["backups", "list", SITE]);
    assert_eq!(
        list.lines().filter(|l| !l.starts_with(' ')).count(),
        4,
        "3 verified + the broken one:\n{list}"
    );
}

fn mariadb_release(prefix: &str) -> String {
    format!(
        r#"
[site.release]
prefix = "{prefix}"
backups = "backups"
keep_backups = 2
web = "web"
web_port = 80
health_timeout = "180s"
verify_restore = ["mariadb", "-N", "-e", "select count(*), sum(length(body)) from wiki.pages"]
[[site.release.services]]
name = "db"
image = "sy-mariadb:bookworm"
volumes = ["mysql:/var/lib/mysql"]
backup = ["mariadb-dump", "--all-databases", "--single-transaction"]
restore = ["mariadb"]
[[site.release.services]]
name = "web"
image = "{repo}:{{version}}"
command = ["db"]
env = {{ DB_PORT = "80" }}
"#,
        repo = repo()
    )
}

fn sql(s: &Stack, color: &str, q: &str) -> String {
    let o = Command::new("docker")
        .args([
            "exec",
            &format!("{}-{color}-db", s.prefix),
            "mariadb",
            "-N",
            "-e",
            q,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{q}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// MariaDB: dump with mariadb-dump, restore with mariadb, verify_restore compares row counts;
/// measures the read-only window as the database grows (rows of 200 bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_mariadb_release_and_window_vs_size() {
    if !mariadb() {
        return;
    }
    let sizes: Vec<u64> = std::env::var("SY_MARIADB_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000, 400_000]);
    let s = Stack::start("maria", mariadb_release);
    s.ok(&["up", SITE, "--version", "1"]);
    sql(&s, "blue", "create database wiki; create table wiki.pages (id int primary key, body text) engine=innodb");
    let mut color = "blue";
    let mut version = 1;
    let mut have = 0u64;
    let mut results = Vec::new();
    for n in sizes {
        if n > have {
            sql(
                &s,
                color,
                &format!(
                    "insert into wiki.pages select seq, repeat('x', 200) from wiki.seq_{}_to_{n}",
                    have + 1
                ),
            );
            have = n;
        }
        version = 3 - version;
        let t = Instant::now();
        let o = s.release(&version.to_string());
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        color = if color == "blue" { "green" } else { "blue" };
        assert_eq!(
            sql(&s, color, "select count(*) from wiki.pages"),
            n.to_string(),
            "rows restored in {color}"
        );
        let size = out
            .lines()
            .find(|l| l.contains("3/6 backup done"))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split(" verified").next())
            .unwrap_or("?")
            .to_string();
        let w = window_of(&out).unwrap_or(-1.0);
        println!("{out}");
        results.push(format!(
            "{n} rows, dump {size}: read-only window {w:.2}s, release {:.2}s",
            t.elapsed().as_secs_f64()
        ));
        assert_eq!(s.site_status()["active"], color);
    }
    for r in &results {
        println!("RESULT mariadb: {r}");
    }
}
