//! The responses the proxy makes itself: one `ProxyError → status + page` mapping, HTML by default,
//! JSON when the client prefers it. Each error is tagged with who caused it (client, upstream,
//! internal) so logging and retries follow from the tag. The page is a plain `Response<Bytes>`:
//! each front end frames it its own way.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::routing::{MaintenanceNotice, ReadOnlyNotice};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("no site is configured for this host")]
    UnknownHost,
    #[error("this connection's TLS name belongs to another site; open a new connection")]
    Misdirected,
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("the request headers are too large")]
    HeadersTooLarge,
    #[error("the upstream server failed: {0}")]
    Upstream(String),
    #[error("the upstream server did not answer in time")]
    UpstreamTimeout,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("no healthy backend is available for this site")]
    NoBackend,
    #[error("the site is read-only: {}", .0.reason)]
    ReadOnly(Arc<ReadOnlyNotice>),
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("the site is down for maintenance: {}", .0.message)]
    Maintenance(Arc<MaintenanceNotice>),
}

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    Internal,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost => StatusCode::NOT_FOUND,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoBackend | ProxyError::ReadOnly(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Maintenance(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn source(&self) -> Source {
        match self {
            ProxyError::Upstream(_) | ProxyError::UpstreamTimeout => Source::Upstream,
            ProxyError::NoBackend | ProxyError::ReadOnly(_) | ProxyError::Maintenance(_) => {
                Source::Internal
            }
            _ => Source::Client,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UnknownHost => "unknown_host",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::Misdirected => "misdirected_request",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::Upstream(_) => "bad_gateway",
            ProxyError::UpstreamTimeout => "gateway_timeout",
            ProxyError::NoBackend => "no_healthy_backend",
            ProxyError::ReadOnly(_) => "read_only",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::Maintenance(_) => "maintenance",
        }
    }

    /// The page for this error; `json` when the client's Accept prefers JSON.
    pub fn response(&self, json: bool) -> Response<Bytes> {
        let status = self.status();
        let body = if json {
            let mut v = serde_json::json!({"error": self.code(), "message": self.to_string()});
            if let ProxyError::ReadOnly(n) = self {
                v["reason"] = n.reason.clone().into();
                v["retry_after_s"] = n.retry_after_s.into();
            }
            if let ProxyError::Maintenance(n) = self {
                v["message"] = n.message.clone().into();
                v["retry_after_s"] = n.retry_after_s.into();
            }
            Bytes::from(v.to_string())
        } else if let Some(page) = self.own_page() {
            Bytes::from(page)
        } else {
            let title = status.canonical_reason().unwrap_or("Error");
            let detail = match self {
                ProxyError::ReadOnly(n) => format!(
                    "<p>This site is read-only for maintenance: {}</p><p>Your change was <b>not saved</b>. Please try again in about {} seconds.</p>",
                    html_escape(&n.reason),
                    n.retry_after_s
                ),
                ProxyError::Maintenance(n) => format!(
                    "<p>This site is down for maintenance: {}</p><p>Please come back in about {} seconds.</p>",
                    html_escape(&n.message),
                    n.retry_after_s
                ),
                other => format!("<p>{}</p>", html_escape(&other.to_string())),
            };
            Bytes::from(format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{code} {title}</title></head><body><h1>{code} {title}</h1>{detail}<hr><small>switchyard</small></body></html>\n",
                code = status.as_u16()
            ))
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(if json {
                "application/json"
            } else {
                "text/html; charset=utf-8"
            }),
        );
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ProxyError::ReadOnly(n) => {
                h.insert(RETRY_AFTER, n.retry_after.clone());
            }
            ProxyError::Maintenance(n) => {
                h.insert(RETRY_AFTER, n.retry_after.clone());
            }
            _ => {}
        }
        resp
    }

    /// A site's own maintenance page; `{{message}}` in it becomes the (escaped) message.
    fn own_page(&self) -> Option<String> {
        let ProxyError::Maintenance(n) = self else {
            return None;
        };
        let n: &MaintenanceNotice = n;
        let page = n.page.as_ref()?;
        Some(page.replace("{{message}}", &html_escape(&n.message)))
    }
}

/// True when the Accept header ranks JSON above HTML (a plain `application/json` or `*/json`).
pub fn wants_json(accept: Option<&[u8]>) -> bool {
    let Some(a) = accept.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let mut json_q = -1.0f32;
    let mut html_q = -1.0f32;
    for part in a.split(',') {
        let mut it = part.split(';');
        let mt = it.next().unwrap_or("").trim();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if mt == "application/json" || mt.ends_with("+json") {
            json_q = json_q.max(q);
        } else if mt == "text/html" {
            html_q = html_q.max(q);
        }
    }
    json_q > 0.0 && json_q > html_q
}

pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Arc<ReadOnlyNotice> {
        Arc::new(ReadOnlyNotice {
            reason: "upgrade <1.2>".into(),
            retry_after_s: 300,
            retry_after: HeaderValue::from(300u64),
        })
    }

    #[test]
    fn one_status_per_error() {
        assert_eq!(ProxyError::BadRequest("x").status(), 400);
        assert_eq!(ProxyError::UnknownHost.status(), 404);
        assert_eq!(ProxyError::Misdirected.status(), 421);
        assert_eq!(ProxyError::BodyTooLarge(1).status(), 413);
        assert_eq!(ProxyError::HeadersTooLarge.status(), 431);
        assert_eq!(ProxyError::Upstream("r".into()).status(), 502);
        assert_eq!(ProxyError::UpstreamTimeout.status(), 504);
        assert_eq!(ProxyError::NoBackend.status(), 503);
        assert_eq!(ProxyError::ReadOnly(notice()).status(), 503);
        assert_eq!(ProxyError::NotImplemented("x").status(), 501);
        assert_eq!(ProxyError::UpstreamTimeout.source(), Source::Upstream);
    }

    #[test]
    fn read_only_page_has_retry_after_and_escaped_reason() {
        let r = ProxyError::ReadOnly(notice()).response(false);
        assert_eq!(r.headers()[RETRY_AFTER], "300");
        let r = ProxyError::ReadOnly(notice()).response(true);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_json(Some(b"application/json")));
        assert!(!wants_json(Some(b"text/html,application/json;q=0.9")));
        assert!(!wants_json(Some(b"*/*")));
        assert!(!wants_json(None));
    }
}
