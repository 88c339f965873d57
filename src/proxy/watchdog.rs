//! The header and idle timeouts of one client connection.
//!
//! The connection's requests and reads count themselves into its [`Activity`] (relaxed atomics:
//! one add per request and per socket read); a watchdog task looks at them every tick and
//! [`Watchdog::tick`] decides. A connection with a request in flight, or a new one started since
//! the last tick, is busy. Otherwise it has been quiet since the last change, and it is closed
//! once quiet for:
//! - min(header, idle) before its first request (silent, or a head trickling in; also an h2
//!   client that sends the preface and nothing more);
//! - the header timeout, counted from the first bytes, when bytes arrived since the last request
//!   finished (a request head on its way);
//! - the idle timeout when nothing arrived (an idle keep-alive connection).
//!
//! "Busy" counts requests, not bytes: HTTP/2 keep-alive PINGs would otherwise keep an idle h2
//! connection alive forever (and on h2, reads never mean a head is coming). The fast path also
//! counts each read of a request body still arriving as a request start, so an upload is timed by
//! its progress, not by the header clock. hyper's own header timeout is off: it runs between
//! keep-alive requests too and would cap idle at the header timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Limits;

/// What a connection's requests and reads report to its watchdog.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests started (and fast-path reads of a body still arriving).
    started: AtomicU64,
    /// Requests whose response has not ended yet.
    inflight: AtomicUsize,
    /// Socket reads that returned bytes.
    reads: AtomicU64,
    /// `reads` when the last request finished: more than that, and a new head is on its way.
    reads_at_rest: AtomicU64,
}

impl Activity {
    /// A request starts (its response is in flight until [`Activity::request_ended`]).
    #[inline]
    pub fn request_started(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn request_ended(&self) {
        // Reads up to here belonged to this request (its body): the baseline for the next head.
        let reads = self.reads.load(Ordering::Relaxed);
        self.reads_at_rest.store(reads, Ordering::Relaxed);
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A socket read returned bytes.
    #[inline]
    pub fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Socket reads so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// A body still arriving made progress.
    #[inline]
    pub fn progress(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Nothing in flight and no new head arriving: the connection is between requests.
    pub fn at_rest(&self) -> bool {
        self.inflight.load(Ordering::Relaxed) == 0
            && self.reads.load(Ordering::Relaxed) == self.reads_at_rest.load(Ordering::Relaxed)
    }

    fn seen(&self) -> Seen {
        Seen {
            started: self.started.load(Ordering::Relaxed),
            inflight: self.inflight.load(Ordering::Relaxed),
            bytes_since_rest: self.reads.load(Ordering::Relaxed)
                != self.reads_at_rest.load(Ordering::Relaxed),
        }
    }
}

/// One look at a connection's activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub started: u64,
    pub inflight: usize,
    /// Bytes arrived since the last request finished.
    pub bytes_since_rest: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Quiet for too long: close the connection.
    Close,
}

/// The timeout state machine of one connection (see the module docs).
#[derive(Debug)]
pub struct Watchdog {
    header: Duration,
    idle: Duration,
    /// Reads on h2 include PING acks: they do not mean a head is coming.
    h2: bool,
    pub tick: Duration,
    last_started: u64,
    quiet: Duration,
    first: bool,
    head_coming: bool,
}

impl Watchdog {
    pub fn new(limits: &Limits, h2: bool) -> Watchdog {
        let (header, idle) = (limits.header_timeout, limits.idle_timeout);
        Watchdog {
            header,
            idle,
            h2,
            tick: (header.min(idle) / 2).max(Duration::from_millis(20)),
            last_started: 0,
            quiet: Duration::ZERO,
            first: true,
            head_coming: false,
        }
    }

    /// Called every `self.tick` with what the connection did since the last call.
    pub fn tick(&mut self, seen: Seen) -> Verdict {
        if seen.started != self.last_started || seen.inflight > 0 {
            self.first &= seen.started == 0;
            self.last_started = seen.started;
            self.quiet = Duration::ZERO;
            self.head_coming = false;
            return Verdict::Keep;
        }
        // Bytes after a quiet spell: a head is on its way; the header clock starts now.
        if !self.head_coming && !self.h2 && seen.bytes_since_rest {
            self.head_coming = true;
            if !self.first {
                self.quiet = Duration::ZERO;
            }
        }
        self.quiet += self.tick;
        let limit = if self.first {
            self.header.min(self.idle)
        } else if self.head_coming {
            self.header
        } else {
            self.idle
        };
        if self.quiet >= limit {
            Verdict::Close
        } else {
            Verdict::Keep
        }
    }

    /// Ticks against `activity`.
    pub fn check(&mut self, activity: &Activity) -> Verdict {
        self.tick(activity.seen())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dog(header_ms: u64, idle_ms: u64, h2: bool) -> Watchdog {
        let limits = Limits {
            header_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            ..Limits::default()
        };
        Watchdog::new(&limits, h2)
    }

    fn seen(started: u64, inflight: usize, bytes: bool) -> Seen {
        Seen {
            started,
            inflight,
            bytes_since_rest: bytes,
        }
    }

    /// Ticks with the same observation until the verdict is Close; the number of ticks.
    fn ticks_to_close(d: &mut Watchdog, s: Seen) -> usize {
        (1..=1000)
            .find(|_| d.tick(s) == Verdict::Close)
            .expect("closes")
    }

    #[test]
    fn a_silent_new_connection_closes_after_the_shorter_timeout() {
        let mut d = dog(1000, 4000, false);
        assert_eq!(d.tick, Duration::from_millis(500));
        assert_eq!(ticks_to_close(&mut d, seen(0, 0, false)), 2);
        let mut d = dog(4000, 1000, false);
        assert_eq!(ticks_to_close(&mut d, seen(0, 0, true)), 2);
    }

    #[test]
    fn in_flight_requests_are_never_cut() {
        let mut d = dog(100, 100, false);
        for _ in 0..100 {
            assert_eq!(d.tick(seen(1, 1, true)), Verdict::Keep);
        }
    }

    #[test]
    fn an_idle_keep_alive_connection_gets_the_idle_timeout() {
        let mut d = dog(1000, 3000, false);
        assert_eq!(
            d.tick(seen(1, 0, false)),
            Verdict::Keep,
            "a request happened"
        );
        // 3000 / 500 ms ticks
        assert_eq!(ticks_to_close(&mut d, seen(1, 0, false)), 6);
    }

    #[test]
    fn a_head_on_its_way_gets_the_header_timeout_from_its_first_bytes() {
        let mut d = dog(1000, 3000, false);
        d.tick(seen(1, 0, false));
        // idle for a while, then bytes arrive: the header clock starts over
        for _ in 0..4 {
            assert_eq!(d.tick(seen(1, 0, false)), Verdict::Keep);
        }
        assert_eq!(ticks_to_close(&mut d, seen(1, 0, true)), 2);
    }

    #[test]
    fn h2_reads_do_not_mean_a_head_is_coming() {
        let mut d = dog(1000, 3000, true);
        d.tick(seen(1, 0, false));
        assert_eq!(
            ticks_to_close(&mut d, seen(1, 0, true)),
            6,
            "the idle timeout"
        );
    }

    #[test]
    fn progress_resets_the_quiet_time() {
        let mut d = dog(1000, 3000, false);
        let mut started = 1;
        for _ in 0..50 {
            started += 1;
            assert_eq!(d.tick(seen(started, 0, true)), Verdict::Keep);
        }
    }

    #[test]
    fn activity_counts_requests_and_rest() {
        let a = Activity::default();
        assert!(a.at_rest());
        a.request_started();
        assert!(!a.at_rest());
        a.read();
        a.read();
        a.request_ended();
        assert!(a.at_rest(), "the body's reads belong to the request");
        a.read();
        assert!(!a.at_rest(), "a new head is arriving");
        assert_eq!(a.seen(), seen(1, 0, true));
    }
}
