//! The daemon's side of the control socket. The socket is made mode 0660 right after bind; every
//! peer is identified with SO_PEERCRED and given a role: root and the daemon's own user may
//! operate, others only what `proxy.control_allow` grants them. Refused peers are logged.
//! Handlers are short: parse, check the role, delegate to `Ops`.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixListener;

use super::api::*;
use crate::config::{Color, Principal, Role};
use crate::ops::{OpError, Ops, Peer};

const MAX_BODY: usize = 64 * 1024;

/// Serves the control socket on its own thread with a current-thread runtime: a call wakes this one
/// thread (not a work-stealing pool's two), and the state file's blocking fsyncs stall nothing
/// else (health checks and /metrics stay on the main runtime). It keeps the edge workers'
/// priority: niced 10 below them, a switch under a saturated CPU took p50 23 / p99 83 ms to answer
/// instead of 5 / 14 ms, for no gain the benchmark could resolve (benches/README.md, change 12).
pub fn start(listener: std::os::unix::net::UnixListener, ops: Arc<Ops>) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the control thread's runtime: {e}"))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            rt.block_on(async move {
                match UnixListener::from_std(listener) {
                    Ok(l) => run(l, ops).await,
                    Err(e) => tracing::error!(error = %e, "cannot serve the control socket"),
                }
            })
        })
        .map_err(|e| anyhow::anyhow!("cannot start the control thread: {e}"))?;
    Ok(())
}

/// Binds the socket: refuses to steal it from a live daemon, removes a stale one, sets 0660.
pub fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another switchyard is already listening on the control socket {}; stop it first or use another `proxy.control` path",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind the control socket {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

async fn run(listener: UnixListener, ops: Arc<Ops>) {
    let me = unsafe { libc::geteuid() };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let cred = stream.peer_cred().ok();
        let peer = Peer {
            uid: cred.map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        };
        // Lock-free: a switch that is probing its target must not hold up new connections.
        let allow = ops.control_allow();
        let role = cred.and_then(|c| {
            if c.uid() == 0 || c.uid() == me {
                return Some(Role::Operate);
            }
            allow
                .iter()
                .filter(|(p, _)| match p {
                    Principal::Uid(u) => *u == c.uid(),
                    Principal::Gid(g) => *g == c.gid(),
                })
                .map(|(_, r)| *r)
                .max()
        });
        let Some(role) = role else {
            tracing::warn!(uid = ?peer.uid, pid = ?peer.pid, "control peer refused: not root, not the owner, not in proxy.control_allow");
            let ops = ops.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(error(StatusCode::FORBIDDEN, "this user may not use the switchyard control socket; ask an admin to add your uid or gid to proxy.control_allow"))
                });
                let _ = ops;
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
            continue;
        };
        let ops = ops.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ops = ops.clone();
                async move { Ok::<_, Infallible>(route(&ops, req, peer, role).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorBody {
            error: msg.to_string(),
            problems: vec![],
            code: None,
        },
    )
}

fn op_error(e: OpError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let problems = match &e {
        OpError::Config(p) => p.clone(),
        _ => vec![],
    };
    json(
        status,
        &ErrorBody {
            error: e.to_string(),
            problems,
            code: matches!(e, OpError::WritesWouldBeLost(_))
                .then(|| WRITES_WOULD_BE_LOST.to_string()),
        },
    )
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Full<Bytes>>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than 64 KiB or was cut off",
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")))
}

#[allow(clippy::result_large_err)] // the error is the finished response, returned at once
fn if_match(req: &Request<Incoming>) -> Result<Option<u64>, Response<Full<Bytes>>> {
    match req.headers().get(http::header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "If-Match must be the state version number from /v1/status",
                )
            }),
    }
}

async fn route(ops: &Ops, req: Request<Incoming>, peer: Peer, role: Role) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    if method != Method::GET && role < Role::Operate {
        tracing::warn!(uid = ?peer.uid, %path, "control change refused: peer has the read role only");
        return error(StatusCode::FORBIDDEN, "your role on the control socket is `read`; changes need `operate` in proxy.control_allow");
    }
    let im = match if_match(&req) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["v1", "status"]) => json(StatusCode::OK, &ops.status().await),
        (Method::GET, ["v1", "cluster"]) => match ops.store.cluster() {
            Some(c) => json(StatusCode::OK, &c.status()),
            None => error(
                StatusCode::NOT_FOUND,
                "this edge runs alone (no [cluster] in its config); `switchyard status` shows its state",
            ),
        },
        (Method::POST, ["v1", "sites", site, "switch"]) => {
            let site = site.to_string();
            match body::<SwitchRequest>(req).await {
                Ok(b) => ops
                    .switch(&site, b, im, peer)
                    .await
                    .map_or_else(op_error, |r| json(StatusCode::OK, &r)),
                Err(r) => r,
            }
        }
        (Method::PUT, ["v1", "maintenance"]) => match body::<MaintenanceRequest>(req).await {
            Ok(b) => ops
                .maintenance(b, im, peer)
                .await
                .map_or_else(op_error, |r| json(StatusCode::OK, &r)),
            Err(r) => r,
        },
        (Method::PUT, ["v1", "read-only"]) => match body::<ReadOnlyRequest>(req).await {
            Ok(b) => ops
                .read_only(b, im, peer)
                .await
                .map_or_else(op_error, |r| json(StatusCode::OK, &r)),
            Err(r) => r,
        },
        (Method::PUT, ["v1", "sites", site, "pools", color]) => {
            let site = site.to_string();
            let Some(color) = Color::parse(color) else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("unknown color `{color}`; use blue or green"),
                );
            };
            match body::<PoolRequest>(req).await {
                Ok(b) => ops
                    .set_pool(&site, color, b, im, peer)
                    .await
                    .map_or_else(op_error, |r| json(StatusCode::OK, &r)),
                Err(r) => r,
            }
        }
        (Method::POST, ["v1", "sites", site, "backup-events"]) => {
            let site = site.to_string();
            match body::<BackupEvent>(req).await {
                Ok(b) => ops
                    .backup_event(&site, b, peer)
                    .await
                    .map_or_else(op_error, |r| json(StatusCode::OK, &r)),
                Err(r) => r,
            }
        }
        (Method::POST, ["v1", "reload"]) => ops
            .reload(peer)
            .await
            .map_or_else(op_error, |r| json(StatusCode::OK, &r)),
        (_, ["v1", "status"])
        | (_, ["v1", "cluster"])
        | (_, ["v1", "read-only"])
        | (_, ["v1", "maintenance"])
        | (_, ["v1", "reload"])
        | (_, ["v1", "sites", _, "switch"])
        | (_, ["v1", "sites", _, "backup-events"])
        | (_, ["v1", "sites", _, "pools", _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {path}; see DESIGN.md's control API"),
        ),
    }
}
