//! Pools after a restart (issue 16): a web container that comes back on a new host port is
//! followed at once by `envs watch`, or by the one command `envs sync` (which every release-tool
//! command also runs first). Reads fail only while the container is down. Real engine and the
//! testapp images, through the `Stack` of release.rs.
// See: issue 16

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::release::{sh, testapp, testapp_release, text, wait_line, Stack, HOST, SITE};
use crate::support::*;

/// The daemon's status, straight from the socket (cheap enough to poll).
async fn daemon(s: &Stack) -> serde_json::Value {
    control(&s.p.control, "GET", "/v1/status", None, None)
        .await
        .1
}

fn site_of(st: &serde_json::Value) -> serde_json::Value {
    st["sites"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == SITE))
        .cloned()
        .unwrap_or_default()
}

fn pool_of(st: &serde_json::Value, color: &str) -> Vec<String> {
    site_of(st)["pools"][color]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["addr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What the rollback guard and the switch history are made of: a sync must not move them.
fn guard_of(st: &serde_json::Value) -> serde_json::Value {
    let s = site_of(st);
    serde_json::json!([
        s["active"],
        s["previous"],
        s["switched_at"],
        s["written_since_switch"],
        s["read_only"]
    ])
}

/// The web container's published 127.0.0.1 address, as Docker reports it.
fn host_port(s: &Stack, color: &str) -> String {
    let o = sh(&format!("docker port {}-{color}-web 80/tcp", s.prefix));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| {
            panic!(
                "{}-{color}-web publishes no 127.0.0.1 port: {}",
                s.prefix,
                text(&o)
            )
        })
        .to_string()
}

fn docker(args: &str) {
    let o = sh(&format!("docker {args}"));
    assert!(o.status.success(), "docker {args}: {}", text(&o));
}

/// One read: when it started and ended, and what went wrong if it did.
type Read = (Instant, Instant, Result<(), String>);

/// Readers looping on GET /notes through the proxy until stopped.
struct Reads {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Read>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Reads {
    fn start(s: &Arc<Stack>, n: usize) -> Reads {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let tasks = (0..n)
            .map(|_| {
                let (s, stop, log, http) = (s.clone(), stop.clone(), log.clone(), http.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let r = match http
                            .get(s.p.url("/notes"))
                            .header("host", HOST)
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == 200 => Ok(()),
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(e.to_string()),
                        };
                        log.lock().unwrap().push((t, Instant::now(), r));
                        tokio::time::sleep(Duration::from_millis(5)).await; // pacing, not readiness
                    }
                })
            })
            .collect();
        Reads { stop, log, tasks }
    }

    /// Successful reads that started at or after `since`.
    fn ok_since(&self, since: Instant) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, r)| *t >= since && r.is_ok())
            .count()
    }

    async fn stop(self) -> Vec<Read> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        log
    }
}

/// `envs watch` started after a restart (as at boot) heals at once. Then `docker restart` of the
/// active web under a read load: the watcher follows the new port at the container's start event,
/// reads fail only between the restart and that moment, and every read afterwards succeeds. The
/// sync is an audited pool change that moves nothing else (active color, history, rollback guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_16_watch_follows_a_restarted_web_under_reads() {
    if !testapp() {
        return;
    }
    let s = Arc::new(Stack::start("watch", testapp_release));
    s.ok(&["up", SITE, "--version", "1"]);
    for svc in ["db", "web"] {
        let o = sh(&format!(
            "docker inspect -f '{{{{.HostConfig.RestartPolicy.Name}}}}' {}-blue-{svc}",
            s.prefix
        ));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "unless-stopped",
            "{svc} must come back after an engine restart"
        );
    }
    assert_eq!(s.post_note("before the restart").await.status(), 201);

    // As at boot: the web came back on a new port before the watcher started. Its first sync,
    // once connected, heals that.
    let stale = host_port(&s, "blue");
    docker(&format!("restart -t 10 {}-blue-web", s.prefix));
    let booted = host_port(&s, "blue");
    assert_ne!(booted, stale);
    // --every 10m: whatever heals after the first sync is the start event, not the periodic one.
    let (mut watch, rx, watch_err) = s.spawn(&["envs", "watch", "--every", "10m"]);
    let mut seen = Vec::new();
    wait_line(&rx, &format!("pool {stale} -> {booted}"), &mut seen);
    let watch_out = Arc::new(Mutex::new(seen));
    {
        let out = watch_out.clone();
        std::thread::spawn(move || {
            for l in rx.iter() {
                out.lock().unwrap().push(l);
            }
        });
    }

    let old = host_port(&s, "blue");
    let before = daemon(&s).await;
    assert_eq!(pool_of(&before, "blue"), vec![old.clone()]);
    let reads = Reads::start(&s, 2);
    let t_start = Instant::now();
    wait_until_async(Duration::from_secs(30), "reads through the proxy", || {
        let n = reads.ok_since(t_start);
        async move { (n >= 20).then_some(()) }
    })
    .await;

    let web = format!("{}-blue-web", s.prefix);
    let t0 = Instant::now();
    let o = tokio::task::spawn_blocking(move || sh(&format!("docker restart -t 10 {web}")))
        .await
        .unwrap();
    let t1 = Instant::now();
    assert!(o.status.success(), "docker restart: {}", text(&o));
    let new = host_port(&s, "blue");
    assert_ne!(
        new, old,
        "Docker was expected to publish the restarted web on a new port"
    );

    let t_healed = wait_until_async(
        Duration::from_secs(60),
        "envs watch to set the blue pool to the new port",
        || {
            let s = s.clone();
            let new = new.clone();
            async move { (pool_of(&daemon(&s).await, "blue") == vec![new]).then(Instant::now) }
        },
    )
    .await;
    wait_until_async(
        Duration::from_secs(60),
        "200 reads after the pool was set",
        || {
            let n = reads.ok_since(t_healed);
            async move { (n >= 200).then_some(()) }
        },
    )
    .await;
    let log = reads.stop().await;

    let failed: Vec<&Read> = log.iter().filter(|(_, _, r)| r.is_err()).collect();
    let outside: Vec<String> = failed
        .iter()
        .filter(|(start, end, _)| *end < t0 || *start > t_healed)
        .map(|(start, _, r)| {
            format!(
                "{:?} at {:+.3}s from the restart",
                r,
                start.duration_since(t_start).as_secs_f64()
                    - t0.duration_since(t_start).as_secs_f64()
            )
        })
        .collect();
    assert!(
        outside.is_empty(),
        "reads failed outside the restart (restart {:.3}s, healed {:.3}s after it ended): {outside:?}",
        (t1 - t0).as_secs_f64(),
        t_healed.saturating_duration_since(t1).as_secs_f64()
    );
    let after: Vec<&Read> = log.iter().filter(|(t, _, _)| *t > t_healed).collect();
    assert!(
        after.iter().all(|(_, _, r)| r.is_ok()),
        "every read after the heal must succeed"
    );
    let heal = t_healed.saturating_duration_since(t1);
    assert!(
        heal < Duration::from_secs(15),
        "the start event should heal within seconds, took {heal:?}"
    );

    // Only the pool moved: one change, audited; active color, history and guard as they were.
    let now = daemon(&s).await;
    assert_eq!(
        guard_of(&now),
        guard_of(&before),
        "a sync must not touch the rollback guard"
    );
    assert_eq!(
        now["version"].as_u64(),
        before["version"].as_u64().map(|v| v + 1),
        "one pool change"
    );
    let audit = std::fs::read_to_string(s.p.dir.join("audit.log")).unwrap();
    let entry = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|e| e["action"] == format!("pool set {SITE} blue"))
        .expect("the sync is in the audit log");
    assert_eq!(entry["before"], serde_json::json!([old]));
    assert_eq!(entry["after"], serde_json::json!([new]));
    let said = watch_out.lock().unwrap().join("\n");
    assert!(
        said.contains(&format!("pool {old} -> {new}")),
        "the watcher says what it changed:\n{said}"
    );

    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let status = watch.wait().unwrap();
    assert!(
        status.success(),
        "envs watch exits 0 on SIGTERM: {}",
        watch_err.join().unwrap_or_default().join("\n")
    );
    let first_fail = failed.iter().map(|r| r.0).min();
    let last_fail = failed.iter().map(|r| r.1).max();
    println!(
        "RESULT envs watch: docker restart took {:.3}s, pool set {:.3}s after it returned; {} of {} reads failed{}, all {} reads after the heal succeeded\nwatcher said:\n{said}",
        (t1 - t0).as_secs_f64(),
        heal.as_secs_f64(),
        failed.len(),
        log.len(),
        match (first_fail, last_fail) {
            (Some(a), Some(b)) => format!(
                " (from {:+.3}s to {:+.3}s after the restart began)",
                a.saturating_duration_since(t0).as_secs_f64(),
                b.saturating_duration_since(t0).as_secs_f64()
            ),
            _ => String::new(),
        },
        after.len()
    );
}

/// Without a watcher: after `docker stop` + `docker start` the site is down until the one
/// documented command, `envs sync`; run again it changes nothing. `release` and `rollback` sync
/// first. A missing environment leaves its pool alone and says what to do (exit 1 when it is the
/// active one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_envs_sync_after_stop_start_and_in_every_command() {
    if !testapp() {
        return;
    }
    let s = Arc::new(Stack::start("sync", testapp_release));
    s.ok(&["up", SITE, "--version", "1"]);
    let old = host_port(&s, "blue");
    docker(&format!("stop -t 10 {}-blue-web", s.prefix));
    docker(&format!("start {}-blue-web", s.prefix));
    let new = host_port(&s, "blue");
    assert_ne!(
        new, old,
        "Docker was expected to publish the web on a new port"
    );
    let r = s
        .http
        .get(s.p.url("/notes"))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == 502 || r.status() == 503,
        "the stale pool must not reach anything: {}",
        r.status()
    );

    let v0 = daemon(&s).await["version"].as_u64();
    let out = s.ok(&["envs", "sync", SITE]);
    println!("envs sync:\n{out}");
    assert!(
        out.contains(&format!("{SITE} blue (active): pool {old} -> {new}"))
            && out.contains("1 pool(s) set"),
        "{out}"
    );
    assert_eq!(pool_of(&daemon(&s).await, "blue"), vec![new.clone()]);
    assert_eq!(daemon(&s).await["version"].as_u64(), v0.map(|v| v + 1));
    wait_until_async(Duration::from_secs(30), "the site to answer again", || {
        let s = s.clone();
        async move {
            let r = s
                .http
                .get(s.p.url("/notes"))
                .header("host", HOST)
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
    for _ in 0..50 {
        assert_eq!(s.version().await, "1");
    }

    // Nothing changed: it says so and the state version stays.
    let v1 = daemon(&s).await["version"].as_u64();
    let out = s.ok(&["envs", "sync", SITE]);
    assert!(
        out.contains("nothing to change") && out.contains(&format!("unchanged, {new} is")),
        "{out}"
    );
    assert_eq!(
        daemon(&s).await["version"].as_u64(),
        v1,
        "no change, no new version"
    );

    // A release after a restart: its preflight would refuse a stale active pool; it syncs first.
    docker(&format!("restart -t 10 {}-blue-web", s.prefix));
    let new2 = host_port(&s, "blue");
    assert_ne!(new2, new);
    let o = s.release("2");
    let out = text(&o);
    assert!(o.status.success(), "release after a restart:\n{out}");
    assert!(
        out.contains(&format!(
            "envs sync: {SITE} blue (active): pool {new} -> {new2}"
        )),
        "{out}"
    );
    assert_eq!(s.version().await, "2");

    // rollback syncs first too: the previous environment came back on a new port.
    let blue = host_port(&s, "blue");
    docker(&format!("restart -t 10 {}-blue-web", s.prefix));
    let blue2 = host_port(&s, "blue");
    assert_ne!(blue2, blue);
    // The switch back probes the target: wait until the restarted web listens.
    let addr: std::net::SocketAddr = blue2.parse().unwrap();
    wait_until_async(
        Duration::from_secs(30),
        "the restarted blue web to listen",
        || async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await;
    let out = s.ok(&["rollback", SITE]);
    assert!(
        out.contains(&format!("pool {blue} -> {blue2}")) && out.contains("rolled back"),
        "{out}"
    );
    assert_eq!(s.version().await, "1");

    // The previous environment (green now) is gone: its pool is left alone, with what to do.
    let green = pool_of(&daemon(&s).await, "green");
    docker(&format!("rm -f {p}-green-web {p}-green-db", p = s.prefix));
    let v2 = daemon(&s).await["version"].as_u64();
    let out = s.ok(&["envs", "sync", SITE]);
    assert!(
        out.contains("LEFT AS IT IS")
            && out.contains(&format!("no container {}-green-web", s.prefix))
            && out.contains("pool set"),
        "{out}"
    );
    assert_eq!(pool_of(&daemon(&s).await, "green"), green);
    assert_eq!(daemon(&s).await["version"].as_u64(), v2);

    // The active web gone: the same, and exit 1 (the site is down until someone acts).
    let blue = pool_of(&daemon(&s).await, "blue");
    docker(&format!("rm -f {}-blue-web", s.prefix));
    let o = s.cli(&["envs", "sync", SITE]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("{SITE} blue (active): pool"))
            && out.contains("LEFT AS IT IS")
            && out.contains("the active pool of notes points at nothing"),
        "{out}"
    );
    assert_eq!(pool_of(&daemon(&s).await, "blue"), blue);
    assert_eq!(daemon(&s).await["version"].as_u64(), v2);
}
