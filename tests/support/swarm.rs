//! A two-node Docker Swarm on this machine, for the swarm tests (issue 20): two private dockerd
//! engines, each in a network namespace of its own (`nsenter --net`; `ip netns exec` remounts
//! /sys, which dockerd refuses), joined by veth pairs to a bridge the test makes, on a private
//! 10.x /24. Their unix sockets live in a folder under /tmp, reachable from the host namespace.
//! Node 1 is the manager and carries the node label `db=1`; node 2 is a worker. Images are moved
//! from the machine's engine with `docker save | docker -H … load` (there is no registry).
//!
//! The machine's own engine is never put into swarm mode. Names carry the pid, so runs do not
//! collide. `Drop` kills the engines and removes the namespaces, the bridge, its FORWARD rule and
//! the folder, also when the test panics.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::wait_until;

fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("sh")
}

fn sh_ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub struct TestSwarm {
    pub root: PathBuf,
    bridge: String,
    netns: [String; 2],
    /// The nodes' addresses on the bridge (10.x.y.1, 10.x.y.2).
    pub addrs: [String; 2],
    /// `unix:///…/nX.sock`.
    pub sockets: [String; 2],
    forward_rule: bool,
}

/// Why a swarm cannot be made here (not root, no `ip`/`nsenter`/`dockerd`), if it cannot.
fn missing_tools() -> Option<String> {
    let root = sh("id -u").stdout == b"0\n";
    if !root {
        return Some("the swarm tests need root (network namespaces, a bridge)".into());
    }
    for t in ["ip", "nsenter", "dockerd", "docker", "iptables"] {
        if !sh(&format!("command -v {t}")).status.success() {
            return Some(format!("`{t}` is not installed"));
        }
    }
    None
}

impl TestSwarm {
    /// A fresh two-node swarm, or None (with SKIPPED printed) when this machine cannot make one;
    /// with CI=true that panics instead.
    pub fn start(tag: &str) -> Option<TestSwarm> {
        if let Some(why) = missing_tools() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but no test swarm can be made: {why}");
            }
            eprintln!("\n*** SKIPPED: no test swarm ({why}); the swarm tests did not run ***\n");
            return None;
        }
        let pid = std::process::id();
        let n = pid % 100_000;
        // Tests of one run share the pid: the tag keeps their subnets apart.
        let salt = tag
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        let key = pid.wrapping_add(salt.wrapping_mul(7919));
        let net = format!("10.{}.{}", 200 + (key % 50), (key / 50) % 250);
        let root = PathBuf::from(format!("/tmp/sysw-{tag}-{n}"));
        let mut s = TestSwarm {
            root: root.clone(),
            bridge: format!("sysw{tag}{n}").chars().take(15).collect(),
            netns: [format!("sysw-{tag}-{n}-1"), format!("sysw-{tag}-{n}-2")],
            addrs: [format!("{net}.1"), format!("{net}.2")],
            sockets: [
                format!("unix://{}/n1.sock", root.display()),
                format!("unix://{}/n2.sock", root.display()),
            ],
            forward_rule: false,
        };
        s.teardown();
        std::fs::create_dir_all(&root).expect("swarm root");
        std::fs::write(root.join("daemon.json"), "{}").expect("daemon.json");
        let b = &s.bridge;
        sh_ok(&format!(
            "ip link add {b} type bridge && ip addr add {net}.254/24 dev {b} && ip link set {b} up"
        ));
        // The machine's FORWARD policy may be DROP (Docker sets it), and bridged frames pass it.
        sh_ok(&format!("iptables -I FORWARD -i {b} -o {b} -j ACCEPT"));
        s.forward_rule = true;
        for i in 0..2 {
            let (ns, ip) = (&s.netns[i], &s.addrs[i]);
            let veth = format!("{}v{}", &b[..b.len().min(12)], i + 1);
            // No default route: a pull attempt fails at once instead of timing out.
            sh_ok(&format!(
                "ip netns add {ns} && ip link add {veth} type veth peer name eth0 netns {ns} && \
                 ip link set {veth} master {b} up && ip -n {ns} addr add {ip}/24 dev eth0 && \
                 ip -n {ns} link set eth0 up && ip -n {ns} link set lo up"
            ));
            s.start_engine(i);
        }
        let (d1, d2) = (s.docker(0), s.docker(1));
        sh_ok(&format!("{d1} swarm init --advertise-addr {}", s.addrs[0]));
        let token = sh_ok(&format!("{d1} swarm join-token -q worker"));
        sh_ok(&format!(
            "{d2} swarm join --token {token} {}:2377",
            s.addrs[0]
        ));
        wait_until(Duration::from_secs(60), "both swarm nodes Ready", || {
            let o = sh(&format!("{d1} node ls --format '{{{{.Status}}}}'"));
            let t = String::from_utf8_lossy(&o.stdout).to_string();
            (t.matches("Ready").count() == 2).then_some(())
        });
        let id1 = s.node_id(0);
        sh_ok(&format!("{d1} node update --label-add db=1 {id1}"));
        Some(s)
    }

    /// Starts (again) node `i`'s engine and waits until it answers.
    pub fn start_engine(&self, i: usize) {
        let d = self.root.join(format!("n{}", i + 1));
        std::fs::create_dir_all(&d).expect("node dir");
        let cmd = format!(
            "nsenter --net=/run/netns/{ns} dockerd --config-file {root}/daemon.json --data-root {d}/data \
             --exec-root {d}/exec --pidfile {d}/pid --host {sock} --bridge none --iptables=false \
             --ip6tables=false >>{d}/log 2>&1 &",
            ns = self.netns[i],
            root = self.root.display(),
            d = d.display(),
            sock = self.sockets[i],
        );
        sh_ok(&cmd);
        let docker = self.docker(i);
        wait_until(
            Duration::from_secs(60),
            &format!("engine n{} answering", i + 1),
            || {
                sh(&format!("{docker} info --format '{{{{.ServerVersion}}}}'"))
                    .status
                    .success()
                    .then_some(())
            },
        );
    }

    /// Stops node `i`'s engine (SIGTERM, then SIGKILL) and waits until it is gone.
    pub fn stop_engine(&self, i: usize) {
        let pidfile = self.root.join(format!("n{}/pid", i + 1));
        let Ok(pid) = std::fs::read_to_string(&pidfile) else {
            return;
        };
        let pid = pid.trim().to_string();
        sh(&format!("kill {pid}"));
        let gone = || {
            !PathBuf::from(format!("/proc/{pid}")).exists() || {
                let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                st.split_whitespace().nth(2) == Some("Z")
            }
        };
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while !gone() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !gone() {
            sh(&format!("kill -9 {pid}"));
            wait_until(Duration::from_secs(10), "the engine's exit", || {
                gone().then_some(())
            });
        }
        let _ = std::fs::remove_file(pidfile);
    }

    /// `docker -H unix:///…/nX.sock` for node `i`.
    pub fn docker(&self, i: usize) -> String {
        format!("docker -H {}", self.sockets[i])
    }

    pub fn node_id(&self, i: usize) -> String {
        sh_ok(&format!(
            "{} info --format '{{{{.Swarm.NodeID}}}}'",
            self.docker(i)
        ))
    }

    /// Copies images from the machine's engine to node `i`.
    pub fn load(&self, i: usize, images: &[String]) {
        sh_ok(&format!(
            "docker save {} | {} load -q",
            images.join(" "),
            self.docker(i)
        ));
    }

    /// The `[site.release.swarm]` section for this swarm.
    pub fn config(&self) -> String {
        format!(
            "[site.release.swarm]\nmanager = \"n1\"\nnodes = {{ n1 = \"{}\", n2 = \"{}\" }}\nendpoint_mode = \"dnsrr\"\n",
            self.sockets[0], self.sockets[1]
        )
    }

    fn teardown(&mut self) {
        for i in 0..2 {
            self.stop_engine(i);
        }
        for ns in &self.netns {
            sh(&format!("ip netns del {ns} 2>/dev/null"));
        }
        if self.forward_rule {
            sh(&format!(
                "iptables -D FORWARD -i {b} -o {b} -j ACCEPT",
                b = self.bridge
            ));
            self.forward_rule = false;
        }
        sh(&format!("ip link del {} 2>/dev/null", self.bridge));
        // Whatever an engine left mounted under its folders, then the folders.
        let root = self.root.display();
        sh(&format!(
            "grep -o ' {root}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null; rm -rf {root}"
        ));
    }
}

impl Drop for TestSwarm {
    fn drop(&mut self) {
        self.teardown();
    }
}
