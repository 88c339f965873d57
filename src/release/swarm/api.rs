//! The two reads of the engine API that bollard 0.18 has no call for: `GET /nodes` and
//! `GET /tasks` on the manager, answered as bollard's own models. One HTTP/1.1 request per call,
//! over the unix socket or TCP the config names, with a deadline.

use std::time::Duration;

use bollard::models::{Node, Task};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::release::ReleaseError;

const DEADLINE: Duration = Duration::from_secs(15);

/// Every node of the swarm.
pub async fn nodes(manager: &str) -> Result<Vec<Node>, ReleaseError> {
    get(manager, "/nodes").await
}

/// The tasks of one service (every state; the caller picks).
pub async fn tasks(manager: &str, service: &str) -> Result<Vec<Task>, ReleaseError> {
    let filters = serde_json::json!({ "service": [service] }).to_string();
    let q: String = url_encode(&filters);
    get(manager, &format!("/tasks?filters={q}")).await
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get<T: DeserializeOwned>(addr: &str, path: &str) -> Result<T, ReleaseError> {
    let what = format!("GET {path} from the swarm manager at {addr}");
    match tokio::time::timeout(DEADLINE, fetch(addr, path)).await {
        Ok(Ok((StatusCode::OK, body))) => serde_json::from_slice(&body)
            .map_err(|e| ReleaseError::Failed(format!("{what}: unreadable answer: {e}"))),
        Ok(Ok((status, body))) => Err(ReleaseError::Failed(format!(
            "{what}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ))),
        Ok(Err(e)) => Err(ReleaseError::Failed(format!("{what}: {e}"))),
        Err(_) => Err(ReleaseError::Failed(format!(
            "{what}: no answer within {}s",
            DEADLINE.as_secs()
        ))),
    }
}

async fn fetch(addr: &str, path: &str) -> Result<(StatusCode, Bytes), String> {
    let req = Request::get(path)
        .header("host", "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if let Some(sock) = addr.strip_prefix("unix://") {
        let s = tokio::net::UnixStream::connect(sock)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        send(TokioIo::new(s), req).await?
    } else {
        let hostport = addr
            .trim_start_matches("tcp://")
            .trim_start_matches("http://");
        let s = tokio::net::TcpStream::connect(hostport)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        send(TokioIo::new(s), req).await?
    };
    Ok(resp)
}

async fn send<IO>(
    io: TokioIo<IO>,
    req: Request<Empty<Bytes>>,
) -> Result<(StatusCode, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
