//! `switchyard serve`: wires the pieces together and runs until SIGTERM/SIGINT. Startup order:
//! certificates → state (refuse if unreadable; with `[cluster]`: loaded from etcd, or the local
//! snapshot when etcd stays unreachable, and nothing is served before) → listeners → control
//! socket → ready line.
//! SIGHUP reloads like `switchyard reload`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::accesslog::AccessLog;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ops::{Ops, Peer};
use crate::proxy::listener::{accept_loop, Tracker};
use crate::proxy::{tls, Edge};

/// Addresses actually bound (port 0 in the config becomes a real port here).
#[derive(Debug, Clone)]
pub struct Bound {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr).with_context(|| {
        format!("cannot listen on {addr} ({what}); is another server using it?")
    })?;
    Ok(sock.listen(4096)?)
}

/// Raises the soft open-files limit to the hard one: an edge proxy with max_connections in the
/// thousands must not fail at the common default of 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("cannot raise the open-files limit");
            }
        }
    }
}

pub async fn serve(cfg: Config, on_ready: impl FnOnce(&Bound, &Config)) -> anyhow::Result<()> {
    raise_fd_limit();
    let metrics = Arc::new(Metrics::default());
    let acme_dir = cfg.acme.as_ref().map(|a| a.storage.as_path());
    let certs = match (&cfg.proxy.https, &cfg.proxy.certs) {
        (Some(_), Some(dir)) => Some(Arc::new(ArcSwap::from_pointee(tls::load_store(
            dir, acme_dir,
        )?))),
        _ => None,
    };
    let ops = match &cfg.cluster {
        None => Arc::new(Ops::new(cfg.clone(), certs.clone(), metrics.clone())?),
        Some(cc) => {
            tracing::info!(edge = %cc.edge_id, prefix = %cc.prefix, endpoints = ?cc.endpoints, "joining the cluster");
            let (cluster, state) = crate::cluster::join(&cfg, metrics.clone()).await?;
            tracing::info!(revision = state.version, "loaded the cluster's state");
            let store = crate::ops::Store::Cluster(cluster.clone());
            let ops = Arc::new(Ops::with_state(
                cfg.clone(),
                state,
                store,
                certs.clone(),
                metrics.clone(),
            ));
            crate::cluster::run(cluster, ops.clone());
            ops
        }
    };
    if let Some(note) = crate::release::pending_release_note(&cfg) {
        // The state file still names the old environment, so it is what we serve.
        tracing::warn!("{note}");
    }
    let log = AccessLog::start(&cfg.proxy.access_log, cfg.proxy.access_log_format)
        .context("cannot open the access log")?;
    let mut edge = Edge::new(
        ops.table.clone(),
        cfg.proxy.limits.clone(),
        log,
        metrics.clone(),
    );
    edge.acme = ops.acme.challenges.clone();
    let edge = Arc::new(edge);
    let tracker = Arc::new(Tracker::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut bound = Bound {
        http: None,
        https: None,
        metrics: None,
    };
    let mut accepts = Vec::new();
    if let Some(addr) = cfg.proxy.http {
        let l = bind(addr, "http").await?;
        bound.http = Some(l.local_addr()?);
        accepts.push(tokio::spawn(accept_loop(
            l,
            None,
            cfg.proxy.proxy_protocol.http,
            edge.clone(),
            tracker.clone(),
            stop_rx.clone(),
        )));
    }
    if let (Some(addr), Some(store)) = (cfg.proxy.https, &certs) {
        let l = bind(addr, "https").await?;
        bound.https = Some(l.local_addr()?);
        let challenges = ops.acme.enabled().then(|| ops.acme.challenges.clone());
        let acceptor = TlsAcceptor::from(tls::server_config_with(store.clone(), challenges));
        accepts.push(tokio::spawn(accept_loop(
            l,
            Some(acceptor),
            cfg.proxy.proxy_protocol.https,
            edge.clone(),
            tracker.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(addr) = cfg.proxy.metrics {
        let l = bind(addr, "metrics").await?;
        bound.metrics = Some(l.local_addr()?);
        tokio::spawn(crate::statuspage::run(l, ops.clone()));
    }
    let control = crate::control::server::bind(&cfg.proxy.control)?;
    crate::control::server::start(control, ops.clone())?;
    tokio::spawn(crate::health::run(ops.table.clone()));
    // On this (control-plane) runtime, once the listeners can answer the challenges.
    ops.acme.start();
    let marks = ops.clone();
    tokio::spawn(async move {
        loop {
            // Woken by the first write after a switch; the slow tick retries a save that failed.
            let first = crate::routing::FIRST_WRITE.notified();
            let _ = tokio::time::timeout(Duration::from_secs(5), first).await;
            marks.persist_write_marks().await;
        }
    });
    on_ready(&bound, &cfg);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match ops.reload(Peer::default()).await {
                Ok(r) => tracing::info!(sites = r.sites.len(), "SIGHUP: config and certificates reloaded"),
                Err(e) => tracing::error!(error = %e, problems = ?match &e { crate::ops::OpError::Config(p) => p.clone(), _ => vec![] }, "SIGHUP: reload refused, the old config keeps serving"),
            },
        }
    }
    let deadline = cfg.proxy.limits.shutdown_timeout;
    tracing::info!(
        open = tracker.open(),
        deadline_s = deadline.as_secs(),
        "shutting down: no new connections, finishing requests in flight"
    );
    let _ = stop_tx.send(true);
    for a in accepts {
        let _ = a.await;
    }
    let left = tracker.drained(deadline).await;
    if left > 0 {
        tracing::warn!(
            left,
            "shutdown deadline reached; closing the remaining connections"
        );
    }
    ops.persist_write_marks().await;
    if let Some(c) = ops.store.cluster() {
        // Only now, with no connection left, may the barrier stop waiting for this edge.
        crate::cluster::leave(c).await;
    }
    let _ = std::fs::remove_file(&cfg.proxy.control);
    Ok(())
}

/// The line tests and scripts wait for (on stderr): the addresses actually bound.
pub fn ready_line(b: &Bound, cfg: &Config) -> String {
    let f = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
    format!(
        "switchyard ready: http={} https={} metrics={} control={}",
        f(b.http),
        f(b.https),
        f(b.metrics),
        cfg.proxy.control.display()
    )
}
