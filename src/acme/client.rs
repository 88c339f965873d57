//! The HTTPS client instant-acme talks to the CA with: hyper's HTTP/1.1 over tokio-rustls with the
//! same aws-lc-rs provider as the edge (instant-acme's own client, hyper-rustls with the platform
//! verifier, is left out). It trusts the webpki roots and, when set, `[acme] ca_certs` (a private
//! or test CA). One connection per request, each bounded in time: an order is a dozen requests
//! minutes or months apart. It also remembers the last `Retry-After` the CA sent with an error, so
//! the backoff can honour it.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, RETRY_AFTER};
use http::{HeaderValue, Request, Uri};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use super::AcmeError;

/// Connect, handshake and response head, together.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Client {
    tls: TlsConnector,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl Client {
    /// A client trusting the webpki roots and the PEM certificates in `ca_certs`; `retry_after`
    /// receives the CA's last Retry-After hint.
    pub fn new(
        ca_certs: Option<&Path>,
        retry_after: Arc<Mutex<Option<SystemTime>>>,
    ) -> Result<Client, AcmeError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_certs {
            let bad = |e: String| AcmeError::CaCerts(path.to_path_buf(), e);
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| AcmeError::Internal(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(cfg)),
            retry_after,
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        let hint = self.retry_after.clone();
        Box::pin(async move {
            let what = format!("{} {}", req.method(), req.uri());
            let resp = match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    return Err(instant_acme::Error::Other(format!("{what}: {e}").into()))
                }
                Err(_) => {
                    return Err(instant_acme::Error::Other(
                        format!("{what}: no answer within {}s", REQUEST_TIMEOUT.as_secs()).into(),
                    ))
                }
            };
            if resp.status().is_client_error() || resp.status().is_server_error() {
                if let Some(at) = resp.headers().get(RETRY_AFTER).and_then(retry_after) {
                    if let Ok(mut h) = hint.lock() {
                        *h = Some(at);
                    }
                }
            }
            Ok(BytesResponse::from(resp))
        })
    }
}

/// `Retry-After`: seconds or an HTTP date.
fn retry_after(v: &HeaderValue) -> Option<SystemTime> {
    let s = v.to_str().ok()?.trim();
    match s.parse::<u64>() {
        Ok(secs) => SystemTime::now().checked_add(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(s).ok(),
    }
}

async fn send(
    tls: TlsConnector,
    mut req: Request<BodyWrapper<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(format!("the CA sent a URL that is not https: {uri}").into());
    }
    let host = uri.host().ok_or("the URL has no host")?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(bare)?;
    let stream = tls.connect(name, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends once the response has been read (the connection is not kept).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = Uri::try_from(target)?;
    req.headers_mut()
        .insert(HOST, HeaderValue::try_from(authority)?);
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(sender.send_request(req).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::now();
        let t = retry_after(&HeaderValue::from_static("120")).unwrap();
        assert!(t >= now + Duration::from_secs(119));
        let t = retry_after(&HeaderValue::from_static("Wed, 21 Oct 2065 07:28:00 GMT")).unwrap();
        assert!(t > now);
        assert!(retry_after(&HeaderValue::from_static("soon")).is_none());
    }
}
