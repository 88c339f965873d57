//! The client's side of the control socket, used by the CLI and the release tool: one typed method
//! per call of the API (the paths live here and nowhere else), errors that say what to try.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};

use super::api::*;
use crate::config::Color;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach switchyard at {path}: {source}. Is `switchyard serve` running? (socket from --control, SWITCHYARD_CONTROL or the config's proxy.control)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("permission denied on the control socket {0}: run as root or the proxy's user, or ask for your uid/gid in proxy.control_allow")]
    Permission(PathBuf),
    #[error("the control socket {path} broke the conversation: {msg}")]
    Protocol { path: PathBuf, msg: String },
    #[error("{message}")]
    Refused {
        status: u16,
        message: String,
        problems: Vec<String>,
        /// The machine-readable reason, when the daemon gives one (see `api::ErrorBody::code`).
        code: Option<String>,
    },
}

impl ControlError {
    /// True when the daemon refused with this `code` (e.g. [`WRITES_WOULD_BE_LOST`]).
    pub fn has_code(&self, want: &str) -> bool {
        matches!(self, ControlError::Refused { code: Some(c), .. } if c == want)
    }
}

pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: &Path) -> Client {
        Client {
            path: path.to_path_buf(),
        }
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ControlError> {
        self.call(Method::GET, "/v1/status", None::<&()>, None)
            .await
    }

    /// `GET /v1/cluster`: the edges of the cluster as this daemon sees them.
    pub async fn cluster(&self) -> Result<ClusterStatus, ControlError> {
        self.call(Method::GET, "/v1/cluster", None::<&()>, None)
            .await
    }

    /// `POST /v1/sites/{site}/switch`, with `If-Match` when given.
    pub async fn switch(
        &self,
        site: &str,
        req: &SwitchRequest,
        if_match: Option<u64>,
    ) -> Result<SwitchResponse, ControlError> {
        let uri = format!("/v1/sites/{site}/switch");
        self.call(Method::POST, &uri, Some(req), if_match).await
    }

    /// `PUT /v1/read-only`; with `on`, answers once no write is in flight.
    pub async fn read_only(&self, req: &ReadOnlyRequest) -> Result<ReadOnlyResponse, ControlError> {
        self.call(Method::PUT, "/v1/read-only", Some(req), None)
            .await
    }

    /// `PUT /v1/maintenance`.
    pub async fn maintenance(
        &self,
        req: &MaintenanceRequest,
    ) -> Result<MaintenanceResponse, ControlError> {
        self.call(Method::PUT, "/v1/maintenance", Some(req), None)
            .await
    }

    /// `PUT /v1/sites/{site}/pools/{color}`.
    pub async fn set_pool(
        &self,
        site: &str,
        color: Color,
        backends: Vec<String>,
    ) -> Result<PoolResponse, ControlError> {
        self.set_pool_if(site, color, backends, None).await
    }

    /// `PUT /v1/sites/{site}/pools/{color}` with `If-Match` when given (412 if the state moved on).
    pub async fn set_pool_if(
        &self,
        site: &str,
        color: Color,
        backends: Vec<String>,
        if_match: Option<u64>,
    ) -> Result<PoolResponse, ControlError> {
        let uri = format!("/v1/sites/{site}/pools/{color}");
        self.call(Method::PUT, &uri, Some(&PoolRequest { backends }), if_match)
            .await
    }

    /// `POST /v1/sites/{site}/backup-events`: an off-site run or a drill, for the audit log and
    /// the metrics.
    pub async fn backup_event(
        &self,
        site: &str,
        ev: &BackupEvent,
    ) -> Result<serde_json::Value, ControlError> {
        let uri = format!("/v1/sites/{site}/backup-events");
        self.call(Method::POST, &uri, Some(ev), None).await
    }

    /// `POST /v1/reload`.
    pub async fn reload(&self) -> Result<ReloadResponse, ControlError> {
        self.call(Method::POST, "/v1/reload", None::<&()>, None)
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&impl Serialize>,
        if_match: Option<u64>,
    ) -> Result<T, ControlError> {
        let v = self
            .raw(
                method,
                uri,
                body.map(|b| serde_json::to_vec(b).unwrap_or_default()),
                if_match,
            )
            .await?;
        serde_json::from_slice(&v).map_err(|e| ControlError::Protocol {
            path: self.path.clone(),
            msg: format!("unexpected answer: {e}"),
        })
    }

    async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        if_match: Option<u64>,
    ) -> Result<Bytes, ControlError> {
        let proto = |msg: String| ControlError::Protocol {
            path: self.path.clone(),
            msg,
        };
        let stream = UnixStream::connect(&self.path).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                ControlError::Permission(self.path.clone())
            } else {
                ControlError::Connect {
                    path: self.path.clone(),
                    source,
                }
            }
        })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| proto(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "switchyard");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(v) = if_match {
            req = req.header(http::header::IF_MATCH, v.to_string());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| proto(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(e.to_string()))?
            .to_bytes();
        if status != StatusCode::OK {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ControlError::Refused {
                status: status.as_u16(),
                message: v["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("refused with {status}")),
                problems: v["problems"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                code: v["code"].as_str().map(str::to_string),
            });
        }
        Ok(bytes)
    }
}
