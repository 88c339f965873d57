//! Idle backend connections kept per worker thread: a `thread_local!` list per connection type,
//! borrowed through a `RefCell` (one thread, never contended), so taking and returning a
//! connection takes no lock. Connections stay on the thread whose reactor they are registered
//! with, like the client connections that use them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Idle connections kept per backend per worker thread; more are closed when they come back.
const MAX_IDLE_PER_THREAD: usize = 512;

/// (backend, idle connections with the time each was returned, most recently used last). Few
/// backends: a Vec beats a map.
pub struct IdlePool<T>(Vec<(SocketAddr, VecDeque<(T, Instant)>)>);

impl<T> IdlePool<T> {
    pub const fn new() -> IdlePool<T> {
        IdlePool(Vec::new())
    }

    /// Keeps `conn` for the next request to `addr`; drops the expired ones and keeps the cap.
    pub fn put(&mut self, addr: SocketAddr, conn: T, idle_timeout: Duration) {
        let now = Instant::now();
        let q = match self.0.iter().position(|(a, _)| *a == addr) {
            Some(i) => &mut self.0[i].1,
            None => {
                self.0.push((addr, VecDeque::new()));
                match self.0.last_mut() {
                    Some(l) => &mut l.1,
                    None => return,
                }
            }
        };
        // The oldest sit at the front.
        while q
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= idle_timeout)
            || q.len() >= MAX_IDLE_PER_THREAD
        {
            q.pop_front();
        }
        q.push_back((conn, now));
    }

    /// The most recently used idle connection to `addr` that is within `idle_timeout` and that
    /// `usable` accepts; the others met on the way are closed.
    pub fn take(
        &mut self,
        addr: SocketAddr,
        idle_timeout: Duration,
        mut usable: impl FnMut(&mut T) -> bool,
    ) -> Option<T> {
        let (_, q) = self.0.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some((mut c, since)) = q.pop_back() {
            if since.elapsed() < idle_timeout && usable(&mut c) {
                return Some(c);
            }
        }
        None
    }
}

impl<T> Default for IdlePool<T> {
    fn default() -> Self {
        IdlePool::new()
    }
}
