//! switchyard: a reverse proxy with built-in blue/green releases for stateful apps on Docker.

pub mod accesslog; // the access log writer thread
pub mod acme; // certificates from an ACME CA: order, store, renew (control plane)
pub mod alloc; // mimalloc through its C API, the global allocator of the binary
pub mod cli; // command line: parse, one call, print
pub mod cluster; // several edges as one: the state in etcd, watch, acks, barriers
pub mod config; // the TOML contract: raw → validated, every problem with file:line
pub mod control; // control API on a Unix socket: types, server, client
pub mod demo; // `switchyard demo`: two in-process backends + dev certificate
pub mod health; // active health checks, rise/fall
pub mod metrics; // lock-free counters of the edge
pub mod ops; // the control-plane verbs: validate → new table → persist → store
pub mod proxy; // the request path: accept → TLS → route → gate → forward
pub mod release; // the Docker release (bollard); never on the request path
pub mod routing; // the routing table behind one ArcSwap
pub mod server; // `serve`: wiring, signals, graceful shutdown
pub mod state; // state.json: atomic save, refuse-if-unreadable load
pub mod statuspage; // /metrics, /healthz and the HTML status page
