//! The routing table behind one `ArcSwap`: the only shared thing the request path reads.
//!
//! No Mutex or RwLock lives here. A request loads the table once; a switch, pool change, read-only
//! change or reload builds a complete new table off to the side and stores it once (see `ops.rs`).
//! Per-backend health and per-site counters are atomics in `Arc`s that survive from one table to
//! the next, so swapping tables never resets them.

mod pool;
mod table;

pub use pool::{Backend, Pool};
pub use table::{
    same_host, strip_port, MaintenanceNotice, ReadOnlyNotice, Route, RoutingTable, SiteRoute,
    SiteShared, FIRST_WRITE, FRESH,
};
