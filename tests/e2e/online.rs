//! The online release flow (issue 18) on the real engine with MariaDB: the database is copied
//! and caught up from its binlog while a write loop runs through the proxy; the read-only window
//! holds only the last delta. Every write answered 200 must be in the new database, the writes in
//! the window get 503 + Retry-After, the tables are equal, the set (dump + deltas) restores to the
//! same checksums. Faults: the catch-up command fails, the old database dies during the copy,
//! Ctrl-C in the catch-up; each leaves the old environment serving and writable.
//!
//! The web service is a few lines of Perl in the MariaDB test image (no other image needed):
//! `POST /w?id=N` inserts row N into `wiki.w` through the `mariadb` client, over the env's network.
// See: issue 18

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::release::{mariadb, sh, text, wait_line, window_of, Stack, HOST, SITE};
use crate::support::{wait_until, wait_until_async};

/// The web: one forked child per connection; POST /w?id=N inserts N, GET /health answers ok.
const WEB: &str = r#"use IO::Socket::INET; $SIG{CHLD} = 'IGNORE';
my $s = IO::Socket::INET->new(LocalPort => 80, Listen => 128, ReuseAddr => 1) or die "listen: $!";
while (1) {
  my $c = $s->accept or next;
  if (fork()) { close $c; next }
  $SIG{CHLD} = 'DEFAULT';
  my $req = <$c> // ''; my ($m, $path) = split / /, $req;
  my $len = 0;
  while (my $h = <$c>) { last if $h =~ /^\r?\n$/; $len = $1 if $h =~ /^content-length:\s*(\d+)/i }
  read($c, my $body, $len) if $len;
  my ($code, $out) = (404, "no\n");
  if ($m eq 'POST' && $path =~ m{^/w\?id=(\d+)$}) {
    my $rc = system('mariadb', '-h', 'db', '-uroot', "-p$ENV{DB_PW}", '-e', "insert into wiki.w values ($1, repeat('w', 100))");
    ($code, $out) = $rc == 0 ? (200, "ok\n") : (500, "db error\n");
  } elsif ($path =~ m{^/health}) { ($code, $out) = (200, "ok\n") }
  print $c "HTTP/1.1 $code X\r\nContent-Type: text/plain\r\nContent-Length: " . length($out) . "\r\nConnection: close\r\n\r\n$out";
  close $c; exit 0;
}"#;

fn online_release(prefix: &str) -> String {
    format!(
        r#"
[site.release]
prefix = "{prefix}"
backups = "backups"
keep_backups = 3
web = "web"
web_port = 80
health_timeout = "180s"
flow = "online"
verify_restore = ["mariadb", "-N", "-e", "select count(*) from wiki.w"]
[site.release.online]
max_rounds = 10
freeze_below = "64KiB"
[[site.release.services]]
name = "db"
image = "sy-mariadb:bookworm"
env = {{ MARIADB_ROOT_PASSWORD = "pw" }}
volumes = ["mysql:/var/lib/mysql"]
backup = ["mariadb-dump", "--all-databases", "--single-transaction"]
restore = ["mariadb"]
[[site.release.services]]
name = "web"
image = "sy-mariadb:bookworm"
command = ["perl", "-e", '''{WEB}''']
env = {{ DB_PW = "pw" }}
"#
    )
}

fn sql(s: &Stack, container: &str, q: &str) -> String {
    let o = Command::new("docker")
        .args(["exec", container, "mariadb", "-N", "-B", "-e", q])
        .output()
        .unwrap();
    assert!(o.status.success(), "{q} in {container}: {}", text(&o));
    let _ = s;
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn db(s: &Stack, color: &str) -> String {
    format!("{}-{color}-db", s.prefix)
}

/// `up` v1 with `rows` rows of 200 bytes in wiki.pages (and the table the writes go to).
fn stack(name: &str, rows: u64, edits: &[(&str, &str)]) -> Stack {
    let s = Stack::start(name, online_release);
    for (from, to) in edits {
        s.edit(from, to);
    }
    s.ok(&["up", SITE, "--version", "1"]);
    let c = db(&s, "blue");
    sql(&s, &c, "create database wiki; create table wiki.w (id int primary key, body text) engine=innodb; create table wiki.pages (id int primary key, body text) engine=innodb");
    if rows > 0 {
        sql(
            &s,
            &c,
            &format!(
                "insert into wiki.pages select seq, repeat('x', 200) from wiki.seq_1_to_{rows}"
            ),
        );
    }
    s
}

/// What the write loop saw: the ids answered 200, and every other answer (status, Retry-After).
#[derive(Default)]
struct Writes {
    ok: BTreeSet<u64>,
    refused: Vec<(u16, Option<String>)>,
}

/// Writes through the proxy, one after the other, until `stop`.
fn write_loop(
    s: &Stack,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Writes>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Writes::default()));
    let (http, url, seen2) = (s.http.clone(), s.p.url("/w"), seen.clone());
    let next = Arc::new(AtomicU64::new(1));
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let id = next.fetch_add(1, Ordering::Relaxed);
            let r = http
                .post(format!("{url}?id={id}"))
                .header("host", HOST)
                .send()
                .await;
            let Ok(r) = r else { continue };
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let accepted = {
                let mut w = seen2.lock().unwrap();
                if status == 200 {
                    w.ok.insert(id);
                } else {
                    w.refused.push((status, retry));
                }
                status == 200
            };
            if !accepted {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    (seen, task)
}

fn ids(s: &Stack, container: &str) -> BTreeSet<u64> {
    sql(s, container, "select id from wiki.w")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn checksums(s: &Stack, container: &str) -> String {
    sql(s, container, "CHECKSUM TABLE wiki.w, wiki.pages")
}

/// The newest set of the site and its manifest.
fn newest_set(s: &Stack) -> (std::path::PathBuf, serde_json::Value) {
    let mut sets: Vec<_> = std::fs::read_dir(s.backups_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    sets.sort();
    let dir = sets.pop().expect("a backup set");
    let m = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    (dir, m)
}

/// Waits until the db in `container` answers a query.
fn wait_db(container: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("{container} to answer a query"),
        || {
            Command::new("docker")
                .args(["exec", container, "mariadb", "-e", "select 1"])
                .output()
                .is_ok_and(|o| o.status.success())
                .then_some(())
        },
    );
}

/// The set's dump, then its deltas in order, into a fresh MariaDB: the checksums the manifest
/// recorded at the switch.
fn restore_set_elsewhere(s: &Stack, dir: &std::path::Path, m: &serde_json::Value) -> String {
    let c = format!("{}-restore-check", s.prefix);
    let o = sh(&format!(
        "docker run -d --name {c} --label switchyard.prefix={} sy-mariadb:bookworm",
        s.prefix
    ));
    assert!(o.status.success(), "{}", text(&o));
    wait_db(&c);
    for mem in m["members"].as_array().unwrap() {
        let kind = mem["kind"].as_str().unwrap();
        if kind == "volume" {
            continue;
        }
        let f = dir.join(mem["file"].as_str().unwrap());
        let o = sh(&format!(
            "docker exec -i {c} mariadb --binary-mode < {}",
            f.display()
        ));
        assert!(o.status.success(), "applying {f:?}: {}", text(&o));
    }
    checksums(s, &c)
}

/// The whole story: a release under a write loop; the window is short; nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_18_online_release_under_writes() {
    if !mariadb() {
        return;
    }
    let rows: u64 = std::env::var("SY_ONLINE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150_000);
    let s = stack("online", rows, &[]);
    let plan = s.ok(&["release", SITE, "--version", "2", "--plan"]);
    assert!(
        plan.contains("flow: online") && plan.contains("nothing was changed"),
        "{plan}"
    );
    assert!(!s.p.dir.join(format!("release-{SITE}.json")).exists());
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, task) = write_loop(&s, stop.clone());
    // Writes are flowing before the release starts.
    let end = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().ok.len() < 5 {
        assert!(
            Instant::now() < end,
            "no write got through before the release: {:?}; web logs: {}",
            seen.lock()
                .unwrap()
                .refused
                .iter()
                .take(3)
                .collect::<Vec<_>>(),
            text(&sh(&format!(
                "docker logs {}-blue-web 2>&1 | tail -20",
                s.prefix
            )))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    let (mut child, rx, err) = s.spawn(&["release", SITE, "--version", "2"]);
    let mut out = Vec::new();
    wait_line(&rx, "2/6 read-only …", &mut out);
    let ok_before_window = seen.lock().unwrap().ok.len();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    out.extend(rx.try_iter());
    let out = out.join("\n");
    let err = err.join().unwrap_or_default().join("\n");
    assert!(status.success(), "{out}\n{err}");
    let took = t.elapsed();
    // A few writes to the new env after the switch, then stop.
    let after_switch = seen.lock().unwrap().ok.len();
    wait_until_async(
        Duration::from_secs(20),
        "5 writes accepted after the switch",
        || {
            let n = seen.lock().unwrap().ok.len();
            async move { (n >= after_switch + 5).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    println!("{out}");
    assert!(out.contains("1+/6 online copy done"), "{out}");
    assert!(out.contains("tables equal"), "{out}");
    assert_eq!(s.site_status()["active"], "green");
    assert_eq!(s.site_status()["read_only"], false);

    let w = seen.lock().unwrap();
    let green = ids(&s, &db(&s, "green"));
    let lost: Vec<_> = w.ok.difference(&green).collect();
    assert!(
        lost.is_empty(),
        "writes answered 200 but not in the new database: {lost:?}"
    );
    assert!(
        ok_before_window > 5,
        "writes were accepted during the copy and catch-up"
    );
    for (status, retry) in &w.refused {
        assert_eq!(*status, 503, "a write was refused with {status}");
        let secs: u64 = retry.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
        assert!(
            (1..60).contains(&secs),
            "Retry-After {retry:?} should follow the short window"
        );
    }
    let window = window_of(&out).unwrap_or(-1.0);
    println!(
        "RESULT online: {rows} rows, {} writes ok ({} during copy+catch-up), {} refused in the window, read-only window {window:.2}s, release {:.1}s",
        w.ok.len(),
        ok_before_window,
        w.refused.len(),
        took.as_secs_f64()
    );
    drop(w);

    // The set: dump + deltas, each following the one before, verified; restores to the
    // checksums recorded at the switch, which the old side still has (no write reached it since).
    let (dir, m) = newest_set(&s);
    let members = m["members"].as_array().unwrap();
    assert_eq!(members[0]["kind"], "db");
    let deltas: Vec<_> = members.iter().filter(|x| x["kind"] == "db-delta").collect();
    assert!(!deltas.is_empty(), "{m}");
    assert_eq!(deltas[0]["follows"], members[0]["name"]);
    let v = s.ok(&["backups", "verify", SITE]);
    assert!(v.contains("ok"), "{v}");
    let at_switch = checksums(&s, &db(&s, "blue"));
    for (t, c) in m["tables"].as_object().unwrap() {
        assert!(
            at_switch.contains(&format!("{t}\t{}", c.as_str().unwrap())),
            "{t}: {at_switch}"
        );
    }
    assert_eq!(restore_set_elsewhere(&s, &dir, &m), at_switch);
}

/// The catch-up command fails (a binlog tool the image does not have): the release stops in
/// the catch-up; the old env serves, writable; no partial set is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_fault_catch_up_command() {
    if !mariadb() {
        return;
    }
    let s = stack(
        "ofcatch",
        1000,
        &[(
            "freeze_below = \"64KiB\"",
            "freeze_below = \"64KiB\"\nbinlog_tool = \"mariadb-binlog-missing\"",
        )],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, task) = write_loop(&s, stop.clone());
    let o = s.release("2");
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("online catch-up") && out.contains("mariadb-binlog-missing"),
        "{out}"
    );
    recovered(&s, &seen).await;
}

/// The old database dies during the online copy: the release stops, nothing is switched,
/// read-only never came on; once the db is back the old env takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_fault_old_db_dies_during_copy() {
    if !mariadb() {
        return;
    }
    let s = stack("ofdies", 100_000, &[]);
    let (mut child, rx, err) = s.spawn(&["release", SITE, "--version", "2"]);
    let mut out = Vec::new();
    wait_line(&rx, "1+/6 online copy …", &mut out);
    let o = sh(&format!("docker kill {}", db(&s, "blue")));
    assert!(o.status.success(), "{}", text(&o));
    let status = child.wait().unwrap();
    let err = err.join().unwrap_or_default().join("\n");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("online copy") || err.contains("online catch-up"),
        "{err}"
    );
    assert_eq!(s.site_status()["active"], "blue");
    assert_eq!(s.site_status()["read_only"], false);
    let o = sh(&format!("docker start {}", db(&s, "blue")));
    assert!(o.status.success(), "{}", text(&o));
    wait_db(&db(&s, "blue"));
    let none = Arc::new(Mutex::new(Writes::default()));
    recovered(&s, &none).await;
}

/// Ctrl-C (SIGINT to the release) in the catch-up phase, with deltas still coming: the release
/// stops; the old env serves, writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_ctrl_c_in_catch_up() {
    if !mariadb() {
        return;
    }
    // Every delta is over 1 byte, so the catch-up goes on while writes come in.
    let s = stack(
        "osigint",
        1000,
        &[
            ("max_rounds = 10", "max_rounds = 1000"),
            ("freeze_below = \"64KiB\"", "freeze_below = \"1\""),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, task) = write_loop(&s, stop.clone());
    let (mut child, rx, err) = s.spawn(&["release", SITE, "--version", "2"]);
    let mut out = Vec::new();
    wait_line(&rx, "1+/6 online catch-up …", &mut out);
    wait_line(&rx, "          delta 2", &mut out);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let err = err.join().unwrap_or_default().join("\n");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("online catch-up") && err.contains("interrupted"),
        "{err}"
    );
    recovered(&s, &seen).await;
}

/// A change the binary log never saw (made with `sql_log_bin=0` on the old db after the copy):
/// the comparison in the window (`compare = "all"`) finds the table different and stops the
/// release before the switch; the old env serves, read-only is lifted, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_fault_tables_differ() {
    if !mariadb() {
        return;
    }
    let s = stack(
        "ofdiffer",
        1000,
        &[(
            "freeze_below = \"64KiB\"",
            "freeze_below = \"64KiB\"\ncompare = \"all\"",
        )],
    );
    let (mut child, rx, err) = s.spawn(&["release", SITE, "--version", "2"]);
    let mut out = Vec::new();
    wait_line(&rx, "1+/6 online copy done", &mut out);
    sql(
        &s,
        &db(&s, "blue"),
        "SET sql_log_bin = 0; insert into wiki.pages values (999999, 'not in the binlog')",
    );
    let status = child.wait().unwrap();
    let err = err.join().unwrap_or_default().join("\n");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("3/6 backup") && err.contains("differs") && err.contains("wiki.pages"),
        "{err}"
    );
    assert!(err.contains("read-only is off"), "{err}");
    let none = Arc::new(Mutex::new(Writes::default()));
    recovered(&s, &none).await;
}

/// A crash (SIGKILL) in the catch-up leaves the journal; `--abort` undoes it. A crash in the
/// window (read-only on, the set recorded) and `--resume`: a fresh env restores the whole set,
/// dump then deltas in order, and every write answered 200 is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_crash_then_abort_then_resume_from_the_set() {
    if !mariadb() {
        return;
    }
    let s = stack(
        "ocrash",
        1000,
        &[
            ("max_rounds = 10", "max_rounds = 1000"),
            ("freeze_below = \"64KiB\"", "freeze_below = \"1\""),
            (
                "env = { DB_PW = \"pw\" }",
                "env = { DB_PW = \"pw\" }\nmigrate = [\"sleep\", \"4\"]",
            ),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, task) = write_loop(&s, stop.clone());
    let crash = |at: &str| {
        let (mut child, rx, _) = s.spawn(&["release", SITE, "--version", "2"]);
        let mut seen = Vec::new();
        wait_line(&rx, at, &mut seen);
        child.kill().unwrap();
        child.wait().unwrap();
        seen.join("\n")
    };
    crash("          delta 2");
    assert!(s.p.dir.join(format!("release-{SITE}.json")).exists());
    assert_eq!(
        s.site_status()["read_only"],
        false,
        "read-only never came on"
    );
    let a = s.ok(&["release", SITE, "--abort"]);
    assert!(a.contains("aborted"), "{a}");
    assert_eq!(s.container_state("green", "db"), "exited");

    s.edit("freeze_below = \"1\"", "freeze_below = \"64KiB\"");
    let out = crash("5/6 migrate …");
    assert!(out.contains("tables equal"), "{out}");
    assert_eq!(
        s.site_status()["read_only"],
        true,
        "read-only stays on after a crash"
    );
    let r = s.ok(&["release", SITE, "--resume"]);
    assert!(r.contains("resuming with a fresh green environment"), "{r}");
    assert!(
        r.contains("delta(s)"),
        "the deltas are restored after the dump: {r}"
    );
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(s.site_status()["active"], "green");
    assert_eq!(s.site_status()["read_only"], false);
    let w = seen.lock().unwrap();
    let green = ids(&s, &db(&s, "green"));
    let lost: Vec<_> = w.ok.difference(&green).collect();
    assert!(
        lost.is_empty(),
        "writes answered 200 but not in the new database: {lost:?}"
    );
    assert!(
        w.refused.iter().all(|(st, _)| *st == 503),
        "{:?}",
        w.refused
    );
}

/// A database without the binary log (the image's entrypoint without the binlog flags):
/// `flow = "online"` is refused by `check` (exit 1, saying what is missing) and by the release
/// before anything changes; `flow = "auto"` falls back to freeze and says why, and releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_online_refused_without_binlog_auto_falls_back() {
    if !mariadb() {
        return;
    }
    let s = stack(
        "onobin",
        100,
        &[(
            "env = { MARIADB_ROOT_PASSWORD = \"pw\" }",
            "env = { MARIADB_ROOT_PASSWORD = \"pw\" }\ncommand = [\"/usr/local/bin/entrypoint.sh\"]",
        )],
    );
    let c = s.cli(&["check"]);
    let out = text(&c);
    assert_eq!(c.status.code(), Some(1), "{out}");
    assert!(
        out.contains("cannot do the online flow") && out.contains("log_bin = OFF"),
        "{out}"
    );
    for args in [
        &["release", SITE, "--version", "2", "--plan"][..],
        &["release", SITE, "--version", "2"],
    ] {
        let o = s.cli(args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{out}");
        assert!(
            out.contains("--log-bin") && out.contains("Nothing was changed"),
            "{out}"
        );
    }
    assert!(!s.p.dir.join(format!("release-{SITE}.json")).exists());
    assert_eq!(s.container_state("green", "db"), "", "nothing was created");

    s.edit("flow = \"online\"", "flow = \"auto\"");
    let c = s.cli(&["check"]);
    assert!(c.status.success(), "{}", text(&c));
    assert!(text(&c).contains("fall back to freeze"), "{}", text(&c));
    let plan = s.ok(&["release", SITE, "--version", "2", "--plan"]);
    assert!(
        plan.contains("flow: freeze") && plan.contains("falls back to freeze"),
        "{plan}"
    );
    let r = s.ok(&["release", SITE, "--version", "2"]);
    assert!(
        r.contains("flow freeze") && r.contains("3/6 backup done"),
        "{r}"
    );
    assert!(r.contains("Retry-After 60 s"), "{r}");
    assert_eq!(s.site_status()["active"], "green");
}

/// After a failed online release: blue active and writable (a write through the proxy gets
/// 200), read-only off, every accepted write in blue, green stopped, no journal, no partial set.
async fn recovered(s: &Stack, seen: &Arc<Mutex<Writes>>) {
    let st = s.site_status();
    assert_eq!(st["active"], "blue", "{st}");
    assert_eq!(st["read_only"], false, "{st}");
    let r = s
        .http
        .post(format!("{}?id=999999", s.p.url("/w")))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the old env must take writes");
    let blue = ids(s, &db(s, "blue"));
    let w = seen.lock().unwrap();
    assert!(
        w.ok.is_subset(&blue),
        "accepted writes missing from the old db"
    );
    assert!(
        w.refused.iter().all(|(st, _)| *st != 503),
        "read-only never came on: {:?}",
        w.refused
    );
    drop(w);
    assert_ne!(
        s.container_state("green", "db"),
        "running",
        "the half-made env is stopped"
    );
    assert!(
        !s.p.dir.join(format!("release-{SITE}.json")).exists(),
        "journal left"
    );
    if let Ok(rd) = std::fs::read_dir(s.backups_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".partial"),
                "a partial set was left: {name}"
            );
        }
    }
}
