//! The connection to etcd: one endpoint at a time, every call under `request_timeout`, and the
//! next endpoint after a failure. The `etcd-client` crate neither fails over nor resumes by
//! itself (its balanced channel keeps sending to a member that hangs), so this is where it
//! happens: a failed call marks its endpoint's generation failed, the next call connects to the
//! next endpoint, and the watch loop, which follows the generation, reopens its stream there.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch;

use super::ClusterError;

pub struct Etcd {
    endpoints: Vec<String>,
    dial_timeout: Duration,
    pub request_timeout: Duration,
    current: Mutex<Current>,
    /// Bumped on every rotation, so that long-lived streams follow.
    generation: watch::Sender<u64>,
}

struct Current {
    idx: usize,
    gen: u64,
    client: Option<Client>,
}

/// One endpoint's client, as handed to a call.
#[derive(Clone)]
pub struct Conn {
    pub client: Client,
    pub endpoint: String,
    pub gen: u64,
}

impl Etcd {
    pub fn new(endpoints: Vec<String>, dial_timeout: Duration, request_timeout: Duration) -> Etcd {
        Etcd {
            endpoints,
            dial_timeout,
            request_timeout,
            current: Mutex::new(Current {
                idx: 0,
                gen: 0,
                client: None,
            }),
            generation: watch::Sender::new(0),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint now in use.
    pub fn current_endpoint(&self) -> String {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.endpoints[cur.idx].clone()
    }

    /// The current endpoint's client (made on first use; the channel connects lazily).
    pub async fn conn(&self) -> Result<Conn, ClusterError> {
        let (endpoint, gen) = {
            let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = &cur.client {
                return Ok(Conn {
                    client: c.clone(),
                    endpoint: self.endpoints[cur.idx].clone(),
                    gen: cur.gen,
                });
            }
            (self.endpoints[cur.idx].clone(), cur.gen)
        };
        let opts = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            // etcd's default keepalive enforcement refuses pings more often than every 5 s;
            // a hung member is found by the request timeouts and the watch's progress requests.
            .with_keep_alive(
                Duration::from_secs(5),
                self.request_timeout.max(Duration::from_secs(1)),
            )
            .with_keep_alive_while_idle(true)
            // A member cut off from its quorum cancels our watch instead of going silent.
            .with_require_leader(true);
        let made = tokio::time::timeout(
            self.dial_timeout,
            Client::connect([endpoint.as_str()], Some(opts)),
        )
        .await;
        let client = match made {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let err = ClusterError::Failed {
                    endpoint: endpoint.clone(),
                    what: "connect",
                    msg: e.to_string(),
                };
                self.failed(gen, &err);
                return Err(err);
            }
            Err(_) => {
                let err = ClusterError::Timeout {
                    endpoint: endpoint.clone(),
                    what: "connect",
                    timeout: self.dial_timeout,
                };
                self.failed(gen, &err);
                return Err(err);
            }
        };
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.gen == gen && cur.client.is_none() {
            cur.client = Some(client.clone());
        }
        Ok(Conn {
            client,
            endpoint,
            gen,
        })
    }

    /// The endpoint of generation `gen` failed: move on to the next one (once per generation).
    pub fn failed(&self, gen: u64, why: &ClusterError) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.gen != gen {
            return;
        }
        let from = self.endpoints[cur.idx].clone();
        cur.idx = (cur.idx + 1) % self.endpoints.len();
        cur.gen += 1;
        cur.client = None;
        let to = self.endpoints[cur.idx].clone();
        let g = cur.gen;
        drop(cur);
        tracing::warn!(%from, %to, error = %why, "etcd endpoint failed; switching to the next one");
        self.generation.send_replace(g);
    }

    /// Resolves when the endpoint generation is no longer `gen`.
    pub async fn rotated(&self, gen: u64) {
        let mut rx = self.generation.subscribe();
        let _ = rx.wait_for(|g| *g != gen).await;
    }

    /// One call on the current endpoint within `request_timeout`. A failure rotates to the next
    /// endpoint and is returned: the caller decides whether the call may be repeated.
    pub async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let c = self.conn().await?;
        let r = match tokio::time::timeout(self.request_timeout, f(c.client)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => ClusterError::Failed {
                endpoint: c.endpoint,
                what,
                msg: e.to_string(),
            },
            Err(_) => ClusterError::Timeout {
                endpoint: c.endpoint,
                what,
                timeout: self.request_timeout,
            },
        };
        self.failed(c.gen, &r);
        Err(r)
    }

    /// A call that may be repeated (a read, or a write guarded so that a replay is harmless),
    /// tried on one endpoint after another until `deadline`.
    pub async fn retrying<T, F, Fut>(
        &self,
        what: &'static str,
        deadline: Instant,
        mut f: F,
    ) -> Result<T, ClusterError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        let mut pause = Duration::from_millis(20);
        while Instant::now() < deadline {
            match self.call(what, &mut f).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        Err(ClusterError::Unreachable {
            what,
            endpoints: self.endpoints.join(", "),
            last: last
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no try".into()),
        })
    }
}
