//! The request path, in the order a request travels. It reaches the control plane only through
//! the `ArcSwap`s of the routing table and the certificate store; no Mutex or RwLock is taken.
//!
//! - `listener.rs`: accept loops on the edge workers (one thread per CPU), the connection limit,
//!   the TLS handshake, graceful shutdown; hands each connection to a front end.
//! - `watchdog.rs`: the header and idle timeouts of a connection, decided by one `tick`.
//! - `linger.rs`: an HTTP/1 connection the edge closes first reads on until the client closes,
//!   so an early answer (413, 400, 431, 503) is read, not reset.
//! - `tls.rs`: rustls config, the certificate chosen by SNI, reloads.
//! - front ends, which never import each other:
//!   - `fast.rs`: plain HTTP/1.1 requests proxied on bytes;
//!   - `service/`: HTTP/2 (the `h2` crate's server) and the HTTP/1.1 the fast path hands over
//!     (hyper's), the response body, h2 write gathering, upgraded tunnels.
//! - `h1/`: the HTTP/1.1 codec on bytes (heads, framing, chunked), for the fast path and the raw
//!   backend connections.
//! - `request.rs`: one request whichever front end brought it: route, HTTPS redirect, body limit,
//!   read-only gate (`gate.rs`), write counting, and its bookkeeping at the end.
//! - `request_body.rs`: the client's request body from either front end.
//! - `headers.rs`: hop-by-hop and forwarding headers on hyper's `HeaderMap`.
//! - `upstream/`: the one send-and-retry loop, raw pooled connections, hyper's client, the pool.
//! - `error_page.rs`: the responses the edge makes itself.
//! - `edge.rs`: what every connection shares (`Edge`) and what one connection's requests share
//!   (`Conn`).

mod edge;
pub mod error_page;
mod fast;
pub mod gate;
/// Public for the fuzz targets in `fuzz/` only; nothing outside the proxy uses it.
pub mod h1;
pub mod headers;
mod linger;
pub mod listener;
mod request;
mod request_body;
mod service;
pub mod tls;
mod upstream;
mod watchdog;

pub use edge::{Conn, Edge};
pub use error_page::ProxyError;
/// Public for the fuzz targets in `fuzz/` (the request target routes only hosts it accepts).
pub use request::valid_host;
/// For `examples/h2_floor.rs`, which gathers its writes as the HTTP/2 server does.
#[doc(hidden)]
pub use service::gather;
