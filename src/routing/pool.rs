//! Backends of one color and round-robin over the healthy ones. Health is two atomics per backend:
//! `up` (active checks, rise/fall) and `ejected_until` (passive: a refused or timed-out connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;

/// One upstream address.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub authority: Authority,
    /// Result of active health checks (true until a check says otherwise).
    up: AtomicBool,
    /// Passive ejection: milliseconds since `EPOCH` until which the backend is skipped; 0 = none.
    ejected_until: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl Backend {
    pub fn new(addr: SocketAddr) -> Backend {
        let authority = Authority::try_from(addr.to_string().as_str())
            .expect("a socket address is an authority");
        Backend {
            addr,
            authority,
            up: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// Usable for a new request: up and not ejected.
    #[inline]
    pub fn available(&self) -> bool {
        if !self.up.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Passive failure: skip this backend for `backoff`.
    pub fn eject(&self, backoff: Duration) {
        self.ejected_until
            .store(now_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn clear_ejection(&self) {
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// The backends of one color of one site.
#[derive(Debug, Default)]
pub struct Pool {
    pub backends: Box<[Arc<Backend>]>,
    rr: AtomicUsize,
}

impl Pool {
    pub fn new(addrs: &[SocketAddr]) -> Pool {
        Pool {
            backends: addrs.iter().map(|a| Arc::new(Backend::new(*a))).collect(),
            rr: AtomicUsize::new(0),
        }
    }

    pub fn same_addrs(&self, addrs: &[SocketAddr]) -> bool {
        self.backends.len() == addrs.len()
            && self.backends.iter().zip(addrs).all(|(b, a)| b.addr == *a)
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.available()).count()
    }

    /// Round-robin over available backends, skipping `avoid` (the one a retry just failed on).
    /// If none is available, falls back to any backend that is not actively down, so a passive
    /// ejection of the only backend does not turn into a hard outage.
    #[inline]
    pub fn pick(&self, avoid: Option<&Backend>) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let b = &self.backends[(start + i) % n];
            if b.available() && avoid.is_none_or(|a| !std::ptr::eq(a, b.as_ref())) {
                return Some(b);
            }
        }
        if avoid.is_some() {
            return None;
        }
        (0..n)
            .map(|i| &self.backends[(start + i) % n])
            .find(|b| b.is_up())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_down() {
        let p = Pool::new(&[
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ]);
        let a = p.pick(None).unwrap().addr;
        let b = p.pick(None).unwrap().addr;
        assert_ne!(a, b);
        p.backends[0].set_up(false);
        for _ in 0..4 {
            assert_eq!(p.pick(None).unwrap().addr.port(), 2);
        }
        p.backends[1].eject(Duration::from_secs(60));
        // ejected but up: still used as the last resort
        assert_eq!(p.pick(None).unwrap().addr.port(), 2);
        p.backends[1].set_up(false);
        assert!(p.pick(None).is_none());
    }
}
