//! Traffic over the last minutes, for the dashboard's charts: every [`EVERY`] a sampler reads
//! each site's response counters per color (the same counters `/metrics` shows) and keeps the
//! last [`KEEP`] samples. Rates are differences between samples. Control plane only: the request
//! path only ever increments the counters.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ops::Ops;

/// How often the counters are read.
pub const EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
const KEEP: usize = 120;

/// One reading: per site, per color (blue, green): (responses, 5xx responses) so far.
struct Sample {
    at: Instant,
    sites: Vec<(String, [(u64, u64); 2])>,
}

/// The samples, oldest first. A Mutex is fine here: the sampler and page loads only.
#[derive(Default)]
pub struct History(Mutex<VecDeque<Sample>>);

/// A site's traffic in one interval between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds before now (the interval's end).
    pub ago: f64,
    /// Requests per second, per color (blue, green).
    pub rate: [f64; 2],
    /// 5xx responses per second, per color.
    pub errors: [f64; 2],
}

impl History {
    fn push(&self, s: Sample) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() >= KEEP {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    /// Reads the counters of every site now.
    pub fn sample(&self, ops: &Ops) {
        let table = ops.table.load();
        let sites = table
            .sites
            .iter()
            .filter_map(|s| {
                let c = ops.metrics.site_counts(&s.name)?;
                Some((s.name.to_string(), c))
            })
            .collect();
        self.push(Sample {
            at: Instant::now(),
            sites,
        });
    }

    /// `site`'s traffic per interval, oldest first.
    pub fn points(&self, site: &str) -> Vec<Point> {
        let Ok(q) = self.0.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let count = |s: &Sample| s.sites.iter().find(|(n, _)| n == site).map(|(_, c)| *c);
        q.iter()
            .zip(q.iter().skip(1))
            .filter_map(|(a, b)| {
                let (ca, cb) = (count(a).unwrap_or_default(), count(b)?);
                let dt = b.at.duration_since(a.at).as_secs_f64().max(0.001);
                let per = |i: usize, k: fn((u64, u64)) -> u64| {
                    k(cb[i]).saturating_sub(k(ca[i])) as f64 / dt
                };
                Some(Point {
                    ago: now.duration_since(b.at).as_secs_f64(),
                    rate: [per(0, |c| c.0), per(1, |c| c.0)],
                    errors: [per(0, |c| c.1), per(1, |c| c.1)],
                })
            })
            .collect()
    }
}

/// Samples until the process ends.
pub async fn run(history: Arc<History>, ops: Arc<Ops>) {
    loop {
        history.sample(&ops);
        tokio::time::sleep(EVERY).await;
    }
}

/// A small chart of requests per second per color over the last ten minutes (server-rendered
/// SVG: no script, nothing to build). Errors (5xx) are drawn in red.
pub fn svg(points: &[Point]) -> String {
    const W: f64 = 360.0;
    const H: f64 = 80.0;
    let span = (KEEP as f64) * EVERY.as_secs_f64();
    let max = points.iter().flat_map(|p| p.rate).fold(1.0f64, f64::max);
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\" role=\"img\"><rect width=\"{W}\" height=\"{H}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        H + 14.0,
        H + 14.0
    );
    let line = |o: &mut String, color: &str, y: &dyn Fn(&Point) -> f64| {
        if points.len() < 2 {
            return;
        }
        let _ = write!(
            o,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\""
        );
        for p in points {
            let x = W - (p.ago / span * W).min(W);
            let _ = write!(
                o,
                "{x:.1},{:.1} ",
                H - (y(p) / max * (H - 4.0)).min(H - 4.0)
            );
        }
        o.push_str("\"/>");
    };
    line(&mut o, "#1565c0", &|p| p.rate[0]);
    line(&mut o, "#2e7d32", &|p| p.rate[1]);
    line(&mut o, "#c62828", &|p| p.errors[0] + p.errors[1]);
    let _ = write!(
        o,
        "<text x=\"2\" y=\"{}\" font-size=\"10\" fill=\"#555\">10 min ago</text><text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#555\">now · peak {max:.0} req/s</text></svg>",
        H + 11.0,
        W - 140.0,
        H + 11.0
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_differences_between_samples() {
        let h = History::default();
        let t0 = Instant::now();
        h.push(Sample {
            at: t0,
            sites: vec![("w".into(), [(100, 0), (0, 0)])],
        });
        h.push(Sample {
            at: t0 + Duration::from_secs(5),
            sites: vec![("w".into(), [(150, 5), (10, 0)])],
        });
        let p = h.points("w");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rate, [10.0, 2.0]);
        assert_eq!(p[0].errors, [1.0, 0.0]);
        assert!(h.points("other").is_empty());
        let s = svg(&p);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
    }
}
