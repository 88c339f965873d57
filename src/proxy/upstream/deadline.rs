//! `timeout` without a lock per request.
//!
//! `tokio::time::timeout` registers a fresh timer with the runtime's timer wheel, and registering
//! and cancelling both take the wheel's mutex: twice per request. A tokio `Sleep` that is
//! already registered can be moved to a *later* deadline with one atomic compare-and-swap (the
//! wheel re-files it only when the old deadline comes). So each worker thread keeps a few armed
//! `Sleep`s in a `thread_local!` `RefCell` (never contended) and every request borrows one,
//! pushes its deadline forward, and gives it back. The wheel's lock is only taken when a timer
//! has to be made or re-armed after it fired (it sat unused for longer than the timeout).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Armed timers kept per worker thread (each is ~100 bytes).
const KEEP: usize = 256;

thread_local! {
    static TIMERS: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// The timeout elapsed.
#[derive(Debug)]
pub struct Elapsed;

/// Runs `fut` for at most `dur`.
pub async fn timeout<F: Future>(dur: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let deadline = Instant::now() + dur;
    let mut timer = match TIMERS.with(|t| t.borrow_mut().pop()) {
        Some(mut t) => {
            t.as_mut().reset(deadline);
            t
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    };
    let out = tokio::select! {
        biased;
        r = fut => Ok(r),
        _ = timer.as_mut() => Err(Elapsed),
    };
    TIMERS.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() < KEEP {
            t.push(timer);
        }
    });
    out
}
