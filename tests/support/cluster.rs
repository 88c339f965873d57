//! Test support for `[cluster]` (issue 19): a real 3-member etcd cluster (data on /dev/shm, ports
//! picked free on 127.0.0.1), with kill -9, SIGSTOP/SIGCONT, restart and leader lookup; edges
//! (`switchyard serve` with `[cluster]`); and a TCP relay that can cut one edge off from etcd.
//!
//! The cut is a relay in front of an edge's etcd connections rather than a network namespace
//! with iptables: it needs no root and no iptables on the machine, it cuts exactly that edge's
//! etcd traffic while its clients still reach it on 127.0.0.1, and "cut" pauses the bytes both
//! ways (nothing is read or sent, nothing is reset), which is what a partition looks like to
//! TCP: calls hang until their timeouts, and on "heal" the held bytes flow again in order.
//!
//! Without an `etcd` binary these tests print that they were SKIPPED, unless CI=true, where they
//! fail (`.ci/run` installs etcd-server).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::*;

/// True when an `etcd` binary is there; loud when not (and a failure with CI=true).
pub fn etcd_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let ok = Command::new("etcd")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok && std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but no `etcd` binary: the cluster tests need it (apt-get install etcd-server etcd-client)");
        }
        if !ok {
            eprintln!("\n*** SKIPPED: no etcd binary; the cluster tests (issue 19) did not run ***\n");
        }
        ok
    })
}

/// One cluster test at a time: each runs 3 etcd members and up to 3 edges, and two at once on a
/// 2-core machine starve each other (and the timing-sensitive tests of other themes).
pub async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// `n` free TCP ports on 127.0.0.1 (bound then released; etcd binds them right after).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub data: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

/// A local etcd cluster.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    initial: String,
    token: String,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

impl EtcdCluster {
    /// Starts `n` members and waits until they have a leader.
    pub async fn start(n: usize) -> EtcdCluster {
        let k = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/dev/shm/sy-etcd-{}-{k}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("127.0.0.1:{}", ports[2 * i]).parse().unwrap(),
                peer: format!("127.0.0.1:{}", ports[2 * i + 1]).parse().unwrap(),
                data: dir.join(format!("m{i}")),
                child: None,
                stopped: false,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            dir,
            initial,
            token: format!("sy-{}-{k}", std::process::id()),
        };
        for i in 0..n {
            c.spawn(i, "new");
        }
        c.wait_leader(Duration::from_secs(30)).await;
        c
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &mut self.members[i];
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", m.peer),
            ])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            // Fast elections for tests (production keeps etcd's defaults, 100 / 1000 ms).
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        m.child = Some(child);
        m.stopped = false;
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// kill -9 member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts member `i` on its data (after kill9).
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i, "existing");
    }

    pub fn sigstop(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.members[i].stopped = true;
    }

    pub fn sigcont(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.members[i].stopped = false;
    }

    fn signal(&self, i: usize, sig: i32) {
        if let Some(c) = &self.members[i].child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// The index of the leader, asking each running member (None: no leader now).
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() || m.stopped {
                continue;
            }
            let url = format!("http://{}", m.client);
            let r = tokio::time::timeout(Duration::from_millis(500), async {
                let mut c = etcd_client::Client::connect([url.as_str()], None).await?;
                c.status().await
            })
            .await;
            if let Ok(Ok(st)) = r {
                let me = st.header().map(|h| h.member_id()).unwrap_or(0);
                if st.leader() != 0 {
                    // Map the leader's id to a member by asking the leader's own status.
                    if st.leader() == me {
                        return Some(i);
                    }
                    for (j, o) in self.members.iter().enumerate() {
                        if o.child.is_none() || o.stopped || j == i {
                            continue;
                        }
                        let url = format!("http://{}", o.client);
                        let r = tokio::time::timeout(Duration::from_millis(500), async {
                            let mut c = etcd_client::Client::connect([url.as_str()], None).await?;
                            c.status().await
                        })
                        .await;
                        if let Ok(Ok(s2)) = r {
                            if s2.header().map(|h| h.member_id()) == Some(st.leader()) {
                                return Some(j);
                            }
                        }
                    }
                }
            }
        }
        None
    }

    pub async fn wait_leader(&self, deadline: Duration) -> usize {
        let end = Instant::now() + deadline;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            if Instant::now() > end {
                panic!("the etcd cluster has no leader after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].stopped {
                self.signal(i, libc::SIGCONT);
            }
            self.kill9(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `[cluster]` section of an edge. Short timeouts so the fault tests stay well under a
/// minute: F = 1s, W = 2s (the tests' writes take milliseconds).
pub fn cluster_section(endpoints: &[String], prefix: &str, id: &str, extra: &str) -> String {
    let eps = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "\n[cluster]\nendpoints = [{eps}]\nprefix = \"{prefix}\"\nedge_id = \"{id}\"\nrequest_timeout = \"300ms\"\ndial_timeout = \"500ms\"\nfreshness = \"1s\"\nlease_ttl = \"2s\"\nmax_write_duration = \"2s\"\nack_timeout = \"3s\"\nstartup_timeout = \"3s\"\n{extra}\n"
    )
}

/// Starts an edge with `sites` and `[cluster]` (from [`cluster_section`]) in a new temp dir.
pub fn start_edge(proxy_extra: &str, sites: &str, cluster: &str) -> Proxy {
    let t = Proxy::tempdir();
    let toml = format!(
        "{}{}{}",
        proxy_section(t.path(), proxy_extra),
        sites,
        cluster
    );
    let dir = t.path().to_path_buf();
    Proxy::start_in(Some(t), &dir, &toml).unwrap_or_else(|e| panic!("edge did not start: {e}"))
}

/// Starts `edge` again on its own files (after a kill); Err carries its stderr.
pub fn restart_edge(p: &mut Proxy) -> Result<Proxy, String> {
    if let Some(mut c) = p.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let tmp = p.take_tmp();
    Proxy::spawn(tmp, &p.dir.clone(), &p.config.clone(), &[])
}

/// A TCP relay in front of one etcd member, for one edge: `cut` holds every byte both ways
/// (a partition), `heal` lets them flow again.
pub struct Relay {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (cut, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut open = rx.clone();
                    let _ = open.wait_for(|c| !*c).await;
                    let Ok(up) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (a_r, a_w) = s.into_split();
                    let (b_r, b_w) = up.into_split();
                    tokio::spawn(pipe(a_r, b_w, rx.clone()));
                    tokio::spawn(pipe(b_r, a_w, rx));
                });
            }
        });
        Relay { addr, cut }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            // Cut while waiting: stop reading (hold the bytes in the kernel).
            _ = cut.wait_for(|c| *c) => continue,
        };
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// GET `path` on an edge's plain listener with `host`: (status, body).
pub async fn get(c: &reqwest::Client, p: &Proxy, host: &str, path: &str) -> Option<(u16, String)> {
    let r = c.get(p.url(path)).header("host", host).send().await.ok()?;
    let s = r.status().as_u16();
    Some((s, r.text().await.ok()?))
}

/// POST `path` on an edge: (status, body).
pub async fn post(c: &reqwest::Client, p: &Proxy, host: &str, path: &str) -> Option<(u16, String)> {
    let r = c
        .post(p.url(path))
        .header("host", host)
        .body("x=1")
        .send()
        .await
        .ok()?;
    let s = r.status().as_u16();
    Some((s, r.text().await.ok()?))
}

/// Percentile of sorted values.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The edge's `/v1/cluster` answer.
pub async fn cluster_status(p: &Proxy) -> serde_json::Value {
    control(&p.control, "GET", "/v1/cluster", None, None)
        .await
        .1
}

pub fn dir_of(p: &Proxy) -> &Path {
    &p.dir
}
