//! Upgraded connections (WebSocket and other HTTP/1.1 upgrades): bytes copied both ways until
//! either side closes, or until the drain time after a switch away from the tunnel's color ends.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::config::Color;
use crate::routing::{SiteRoute, SiteShared};

pub fn spawn(client: OnUpgrade, upstream: OnUpgrade, site: &SiteRoute, color: Color) {
    let shared: Arc<SiteShared> = site.shared.clone();
    let mut active = shared.active_tx.subscribe();
    tokio::spawn(async move {
        let (c, u) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut c = TokioIo::new(c);
        let mut u = TokioIo::new(u);
        let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                _ = &mut copy => return,
                changed = active.changed() => {
                    if changed.is_err() {
                        let _ = copy.await;
                        return;
                    }
                    if *active.borrow_and_update() != color {
                        let drain = Duration::from_millis(shared.drain_ms.load(std::sync::atomic::Ordering::Relaxed));
                        let _ = tokio::time::timeout(drain, &mut copy).await;
                        tracing::info!(site = %shared.name, %color, "upgraded connection closed after the switch drain time");
                        return;
                    }
                }
            }
        }
    });
}
