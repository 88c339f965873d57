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
use std::task::{Context, Poll};
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
///
/// A future of its own, not an `async fn`: an `async fn` keeps its argument and the copy of it
/// being polled side by side in its state, which made every request's state larger by one
/// whole backend exchange (and each move of it slower).
pub fn timeout<F: Future>(dur: Duration, fut: F) -> Timeout<F> {
    let deadline = Instant::now() + dur;
    let timer = match TIMERS.with(|t| t.borrow_mut().pop()) {
        Some(mut t) => {
            t.as_mut().reset(deadline);
            t
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    };
    Timeout {
        fut,
        timer: Some(timer),
    }
}

pin_project_lite::pin_project! {
    /// [`timeout`]'s future: the inner future first, then the timer.
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        // Given back to the thread's stock when the future ends or is dropped.
        timer: Option<Pin<Box<Sleep>>>,
    }

    impl<F> PinnedDrop for Timeout<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(timer) = this.project().timer.take() {
                give_back(timer);
            }
        }
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.project();
        let out = match me.fut.poll(cx) {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => match me.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Pending) => return Poll::Pending,
                // The timer fired (no timer: polled again after it ended).
                Some(Poll::Ready(())) | None => Err(Elapsed),
            },
        };
        if let Some(timer) = me.timer.take() {
            give_back(timer);
        }
        Poll::Ready(out)
    }
}

/// Keeps an armed timer for the next request (not when the thread is shutting down).
fn give_back(timer: Pin<Box<Sleep>>) {
    let _ = TIMERS.try_with(|t| {
        let mut t = t.borrow_mut();
        if t.len() < KEEP {
            t.push(timer);
        }
    });
}
