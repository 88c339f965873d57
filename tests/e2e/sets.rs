//! Backup sets (issue 17): the test stack's web writes uploads into a volume marked as data, so a
//! release must carry them (a set: dump + archive of the volume, restored before the new web
//! starts). Uploads during a release, rollback honesty, a corrupt member, a data volume that is
//! not there, a disk that fills up. Real engine, as in release.rs (same stack and helpers).
// See: issue 17

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::release::{testapp, testapp_release, text, wait_line, window_of, Stack};
use crate::support::*;

const HOST: &str = "notes.test";
const SITE: &str = "notes";

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Deterministic bytes for an upload: `n` bytes from a seed.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Stack {
    async fn put_file(&self, name: &str, body: Vec<u8>) -> (u16, bool) {
        self.put_file_with(&self.http, name, body).await
    }

    async fn put_file_with(
        &self,
        http: &reqwest::Client,
        name: &str,
        body: Vec<u8>,
    ) -> (u16, bool) {
        let n = body.len();
        match http
            .put(self.p.url(&format!("/files/{name}")))
            .header("host", HOST)
            .body(body)
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
            Err(e) => {
                eprintln!("PUT /files/{name} ({n} bytes) failed: {e:?}");
                (0, false)
            }
        }
    }

    async fn file(&self, name: &str) -> Option<Vec<u8>> {
        let r = self.get(&format!("/files/{name}")).await;
        match r.status().as_u16() {
            200 => Some(r.bytes().await.unwrap().to_vec()),
            404 => None,
            s => panic!("GET /files/{name}: {s}"),
        }
    }

    /// name → sha256 of every file the active color serves.
    async fn files(&self) -> BTreeMap<String, String> {
        let list: Vec<serde_json::Value> = self.get("/files").await.json().await.unwrap();
        let mut out = BTreeMap::new();
        for f in list {
            let name = f["name"].as_str().unwrap().to_string();
            let b = self.file(&name).await.unwrap();
            assert_eq!(b.len() as u64, f["size"].as_u64().unwrap(), "{name}");
            out.insert(name, sha(&b));
        }
        out
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let o = self.cli(args);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?} did not print JSON ({e}):\n{}", text(&o)))
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every set folder 0700, every file in it 0600.
fn assert_private(site_dir: &Path) {
    assert_eq!(mode(site_dir), 0o700, "{}", site_dir.display());
    for e in std::fs::read_dir(site_dir).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o700, "{}", e.path().display());
        for f in std::fs::read_dir(e.path()).unwrap().flatten() {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
        }
    }
}

/// A release under an upload loop: every upload answered 201 before read-only is on the new
/// color byte for byte, uploads during the window got 503, an upload on v2 counts as a write for
/// the rollback guard, and after `rollback --discard-writes` the old color has its own files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_17_release_carries_uploads_and_rollback_stays_honest() {
    if !testapp() {
        return;
    }
    let s = Arc::new(Stack::start("uploads", testapp_release));
    s.ok(&["up", SITE, "--version", "1"]);
    for i in 0..5 {
        let (st, _) = s
            .put_file(
                &format!("before-{i}.bin"),
                bytes(i, 1000 + 7919 * i as usize),
            )
            .await;
        assert_eq!(st, 201);
        assert_eq!(s.post_note(&format!("note {i}")).await.status(), 201);
    }
    // The uploader: (name, sha256, status) in order.
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<(String, String, u16, bool)>::new()));
    // A connection per upload: the edge answers a refused upload whose body it does not read
    // (503, 413, …) without `Connection: close` and then closes the connection, so a client that
    // reuses it for the next upload may see it closed (hyper: IncompleteMessage). That is the
    // edge's (src/proxy/) to fix; this test is about what the release keeps.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let uploader = {
        let (s, stop, log) = (s.clone(), stop.clone(), log.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("up-{n}.bin");
                let body = bytes(1000 + n, 512 + (n as usize * 3301) % 200_000);
                let h = sha(&body);
                let (st, retry) = s.put_file_with(&fresh, &name, body).await;
                log.lock().unwrap().push((name, h, st, retry));
                tokio::time::sleep(Duration::from_millis(5)).await; // pacing, not readiness
            }
        })
    };
    let s2 = s.clone();
    let out = tokio::task::spawn_blocking(move || {
        let (mut child, rx, err) = s2.spawn(&["release", SITE, "--version", "2"]);
        let mut seen = Vec::new();
        wait_line(&rx, "release of notes done", &mut seen);
        seen.extend(rx.iter());
        let status = child.wait().unwrap();
        let err = err.join().unwrap_or_default().join("\n");
        assert!(
            status.success(),
            "release failed:\n{}\n{err}",
            seen.join("\n")
        );
        seen.join("\n")
    })
    .await
    .unwrap();
    println!("{out}");
    // A few uploads land on v2, then the loop stops.
    let accepted_before = log.lock().unwrap().iter().filter(|l| l.2 == 201).count();
    wait_until_async(Duration::from_secs(20), "uploads accepted by v2", || {
        let n = log.lock().unwrap().iter().filter(|l| l.2 == 201).count();
        async move { (n >= accepted_before + 3).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    uploader.await.unwrap();
    assert!(
        out.contains("3/6 backup done") && out.contains("files"),
        "{out}"
    );
    assert!(
        out.contains("files ok"),
        "the restore checks the files:\n{out}"
    );

    let log = log.lock().unwrap().clone();
    let bad: Vec<_> = log.iter().filter(|l| !matches!(l.2, 201 | 503)).collect();
    if !bad.is_empty() {
        let at = log
            .iter()
            .position(|l| !matches!(l.2, 201 | 503))
            .unwrap_or(0);
        let around: Vec<_> = log[at.saturating_sub(4)..(at + 3).min(log.len())]
            .iter()
            .map(|l| format!("{} {}", l.0, l.2))
            .collect();
        panic!("uploads neither stored nor refused: {bad:?}; around it: {around:?}");
    }
    assert!(
        log.iter().filter(|l| l.2 == 503).all(|l| l.3),
        "503 without Retry-After"
    );
    let first_refused = log
        .iter()
        .position(|l| l.2 == 503)
        .expect("no upload met the read-only window");
    let last_refused = log
        .iter()
        .rposition(|l| l.2 == 503)
        .unwrap_or(first_refused);
    let before: Vec<_> = log[..first_refused].iter().filter(|l| l.2 == 201).collect();
    let after: Vec<_> = log[last_refused..].iter().filter(|l| l.2 == 201).collect();
    assert!(!before.is_empty() && !after.is_empty());

    // v2 has every upload answered 201 (before the window, and its own after the switch).
    assert_eq!(s.version().await, "2");
    let on_v2 = s.files().await;
    for (name, h, _, _) in before.iter().chain(after.iter()) {
        assert_eq!(on_v2.get(name), Some(h), "upload {name} on v2");
    }
    for (name, _, _, _) in log.iter().filter(|l| l.2 == 503) {
        assert!(!on_v2.contains_key(name), "refused upload {name} is on v2");
    }
    for i in 0..5u64 {
        let b = s.file(&format!("before-{i}.bin")).await.unwrap();
        assert_eq!(sha(&b), sha(&bytes(i, 1000 + 7919 * i as usize)));
    }
    assert_eq!(s.notes().await.len(), 5);
    assert_private(&s.backups_dir());

    // The uploads on v2 are writes: the guard refuses a plain rollback, with the count.
    let st = s.site_status();
    let writes = st["writes_since_switch"]["green"].as_u64().unwrap_or(0);
    assert!(
        writes >= after.len() as u64,
        "uploads counted as writes: {st}"
    );
    let r = s.cli(&["rollback", SITE]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("write(s)"), "{}", text(&r));
    s.ok(&["rollback", SITE, "--discard-writes"]);
    assert_eq!(s.version().await, "1");
    let on_v1 = s.files().await;
    let want: BTreeMap<String, String> = before
        .iter()
        .map(|l| (l.0.clone(), l.1.clone()))
        .chain((0..5u64).map(|i| {
            (
                format!("before-{i}.bin"),
                sha(&bytes(i, 1000 + 7919 * i as usize)),
            )
        }))
        .collect();
    assert_eq!(on_v1, want, "blue has its own files, none of green's");
    println!(
        "RESULT sets_release_uploads: {} uploads before the window, {} refused with 503, {} on v2; read-only window {:.3}s",
        before.len(),
        log.iter().filter(|l| l.2 == 503).count(),
        after.len(),
        window_of(&out).unwrap_or(-1.0)
    );
}

/// A byte flipped in a member: `backups verify` exits 1 naming it (human and --json), and a
/// resumed release refuses to restore that set (it takes a fresh one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_corrupt_member_is_named_and_never_restored() {
    if !testapp() {
        return;
    }
    let s = Stack::start("corrupt", testapp_release);
    s.ok(&["up", SITE, "--version", "1"]);
    assert_eq!(s.put_file("a.bin", bytes(1, 50_000)).await.0, 201);
    assert_eq!(s.post_note("kept").await.status(), 201);
    let taken = s.json(&["backup", SITE, "--json"]);
    assert_eq!(taken["members"].as_array().unwrap().len(), 2, "{taken}");
    assert!(taken["read_only_window_s"].as_f64().is_some(), "{taken}");
    let listed = s.json(&["backups", "list", SITE, "--json"]);
    assert_eq!(listed["sets"][0]["id"], taken["id"]);
    assert_eq!(listed["sets"][0]["members"][1]["kind"], "volume");
    let ok = s.json(&["backups", "verify", SITE, "--json"]);
    assert_eq!(ok["ok"], true, "{ok}");

    let flip = |p: PathBuf| {
        let mut b = std::fs::read(&p).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x01;
        std::fs::write(&p, b).unwrap();
    };
    let set = PathBuf::from(taken["path"].as_str().unwrap());
    flip(set.join("volume-files.tar"));
    let v = s.cli(&["backups", "verify", SITE]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains("member files (volume-files.tar)") && text(&v).contains("sha256"),
        "{}",
        text(&v)
    );
    let vj = s.cli(&["backups", "verify", SITE, "--json"]);
    assert_eq!(vj.status.code(), Some(1));
    let vj: serde_json::Value = serde_json::from_slice(&vj.stdout).unwrap();
    assert_eq!(vj["ok"], false);
    assert!(vj["sets"][0]["members"][1]["error"].is_string(), "{vj}");
    assert!(vj["sets"][0]["members"][0]["error"].is_null(), "{vj}");

    // A release that crashes at step 6 leaves its set; corrupt it; --resume must not restore it.
    s.edit("WEB_ENV = \"1\"", "SY_HEALTH_FAIL = \"1\"");
    s.edit("health_timeout = \"30s\"", "health_timeout = \"90s\"");
    let (mut child, rx, _) = s.spawn(&["release", SITE, "--version", "2"]);
    let mut seen = Vec::new();
    wait_line(&rx, "6/6 switch …", &mut seen);
    child.kill().unwrap();
    child.wait().unwrap();
    let journal: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.p.dir.join(format!("release-{SITE}.json"))).unwrap(),
    )
    .unwrap();
    let id = journal["backup"].as_str().unwrap();
    flip(s.backups_dir().join(id).join("volume-files.tar"));
    s.edit("SY_HEALTH_FAIL = \"1\"", "WEB_ENV = \"1\"");
    let r = s.ok(&["release", SITE, "--resume"]);
    assert!(
        r.contains(&format!(
            "backup set {id} cannot be restored: member files (volume-files.tar)"
        )),
        "{r}"
    );
    assert!(r.contains("starting again from step 1"), "{r}");
    assert_eq!(s.version().await, "2");
    assert_eq!(
        s.file("a.bin").await.map(|b| sha(&b)),
        Some(sha(&bytes(1, 50_000)))
    );
    assert_eq!(s.notes().await.len(), 1);
}

/// A data volume in the config that the active environment does not have: a clear error, and
/// nothing changed (no new environment, no backup, read-only never on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_missing_data_volume_changes_nothing() {
    if !testapp() {
        return;
    }
    let s = Stack::start("novol", testapp_release);
    s.edit(
        "volumes = [\"files:/files\"]\ndata_volumes = [\"files\"]\n",
        "",
    );
    s.ok(&["up", SITE, "--version", "1"]);
    s.edit(
        "env = { WEB_ENV = \"1\" }\n",
        "env = { WEB_ENV = \"1\" }\nvolumes = [\"files:/files\"]\ndata_volumes = [\"files\"]\n",
    );
    let v_before = s.p.status()["version"].clone();
    for args in [
        &["release", SITE, "--version", "2"][..],
        &["backup", SITE][..],
    ] {
        let o = s.cli(args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("data volume `files`")
                && text(&o).contains("does not exist")
                && text(&o).contains("Nothing was changed"),
            "{}",
            text(&o)
        );
    }
    assert_eq!(
        s.p.status()["version"],
        v_before,
        "nothing changed in the proxy"
    );
    assert_eq!(s.container_state("green", "web"), "", "no new environment");
    assert!(!s.backups_dir().exists(), "no backup");
    s.assert_recovered(0).await;
}

/// Unmounts the tmpfs when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The disk fills during the backup: the partial set is removed, the earlier set is untouched,
/// the release stops at step 3 with read-only lifted and the old environment serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_disk_full_during_backup() {
    if !testapp() {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true: this test needs root (mount -t tmpfs)"
        );
        eprintln!("\n*** SKIPPED: issue_17_disk_full_during_backup needs root for a tmpfs ***\n");
        return;
    }
    let s = Stack::start("full", testapp_release);
    let small = s.p.dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(ok.success(), "mount -t tmpfs");
    let _mounted = Tmpfs(small.clone());
    s.edit(
        "backups = \"backups\"",
        &format!("backups = \"{}\"", small.display()),
    );
    s.ok(&["up", SITE, "--version", "1"]);
    assert_eq!(s.put_file("small.bin", bytes(7, 20_000)).await.0, 201);
    assert_eq!(s.post_note("one").await.status(), 201);
    let first = s.ok(&["backup", SITE]);
    assert!(first.contains("backup set verified"), "{first}");
    // 1.5 MiB of files: the next set cannot fit in 1 MiB.
    assert_eq!(s.put_file("big.bin", bytes(8, 1536 * 1024)).await.0, 201);
    let t = Instant::now();
    let o = s.cli(&["release", SITE, "--version", "2"]);
    let out = text(&o);
    println!(
        "disk full: failed in {:.2}s:\n{out}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("3/6 backup") && out.contains("the disk is full"),
        "{out}"
    );
    let site_dir = small.join(SITE);
    let left: Vec<String> = std::fs::read_dir(&site_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "only the first set is left: {left:?}");
    assert!(!left[0].contains("partial"), "{left:?}");
    let v = s.ok(&["backups", "verify", SITE]);
    assert!(v.contains("1 backup set(s) of notes verified"), "{v}");
    assert_eq!(
        s.container_state("green", "db"),
        "exited",
        "the new env is stopped"
    );
    s.assert_recovered(1).await;
    assert!(s.file("big.bin").await.is_some());
}

/// `check` warns (exit 0) when the config or the backups folder can be read by others.
#[test]
fn issue_17_check_warns_about_readable_secrets() {
    let t = Proxy::tempdir();
    let cfg = t.path().join("sy.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[[site]]\nname = \"w\"\nhosts = [\"w.test\"]\n[site.release]\nbackups = \"b\"\n[[site.release.services]]\nname = \"web\"\nimage = \"w:{{version}}\"\n",
            proxy_section(t.path(), "")
        ),
    )
    .unwrap();
    std::fs::create_dir_all(t.path().join("b/w")).unwrap();
    for (p, m) in [
        (cfg.clone(), 0o644),
        (t.path().join("b"), 0o755),
        (t.path().join("b/w"), 0o700),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning:") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        err.contains("backups folder") && err.contains("chmod 700"),
        "{err}"
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(t.path().join("b"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(
        o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("warning"),
        "{}",
        text(&o)
    );
}

/// Measurement, not a check (runs only with SY_SETS_MB=N): N MiB of uploads, then `backup`,
/// `backups list|verify` (human and --json) and a release, with their times and sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_measure_sets() {
    let Some(mb) = std::env::var("SY_SETS_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    if !testapp() {
        return;
    }
    let s = Stack::start("measure", testapp_release);
    s.ok(&["up", SITE, "--version", "1"]);
    assert_eq!(s.post_note("a note").await.status(), 201);
    let t = Instant::now();
    for i in 0..mb.div_ceil(4) {
        assert_eq!(
            s.put_file(&format!("f{i:04}.bin"), bytes(i as u64, 4 << 20))
                .await
                .0,
            201
        );
    }
    println!(
        "RESULT measure: {mb} MiB uploaded in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let b = s.ok(&["backup", SITE]);
    println!(
        "{b}RESULT measure: backup {:.2}s",
        t.elapsed().as_secs_f64()
    );
    for args in [
        &["backups", "list", SITE][..],
        &["backups", "list", SITE, "--json"][..],
        &["backups", "verify", SITE][..],
        &["backups", "verify", SITE, "--json"][..],
    ] {
        let t = Instant::now();
        let o = s.cli(args);
        println!(
            "$ switchyard {}\n{}RESULT measure: {args:?} {:.2}s",
            args.join(" "),
            text(&o),
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    let o = s.cli(&["release", SITE, "--version", "2"]);
    println!(
        "{}RESULT measure: release {:.2}s",
        text(&o),
        t.elapsed().as_secs_f64()
    );
    assert!(o.status.success());
}
