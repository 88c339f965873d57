//! The control API: HTTP/1.1 + JSON on a Unix socket. `api.rs` holds the types both sides share,
//! `server.rs` the daemon's side (peer checks, routes, delegation to `ops.rs`), `client.rs` the
//! CLI's side.

pub mod api;
pub mod client;
pub mod server;
