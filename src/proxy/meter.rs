//! What the proxy counts for `/metrics`: responses by status class,
//! latency histograms, retries, connections, bytes, health checks. Plain
//! atomics on the request path (no lock, nothing allocated); `/metrics`
//! reads them when scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus' defaults,
/// with 1 ms and 2.5 ms below them for a LAN's backends).
pub const LATENCY_BOUNDS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram: a count per bucket (not cumulative), the count and
/// the sum.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Latency {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// (sum in seconds, count, (bound, count) per bucket with +Inf last),
    /// each bucket's own count: the encoder makes them cumulative.
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> =
            LATENCY_BOUNDS.iter().zip(&self.buckets).map(|(b, n)| (*b, n.load(Ordering::Relaxed))).collect();
        let bounded: u64 = buckets.iter().map(|(_, n)| n).sum();
        let count = self.count.load(Ordering::Relaxed).max(bounded);
        // The encoder writes `+Inf` for f64::MAX (and `inf` for infinity).
        buckets.push((f64::MAX, count - bounded));
        (self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, count, buckets)
    }
}

/// Responses by status class (1xx..5xx).
#[derive(Debug, Default)]
pub struct ByClass([AtomicU64; 5]);

impl ByClass {
    /// Counts one response with `status`.
    pub fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    /// ("1xx", n) .. ("5xx", n).
    pub fn read(&self) -> [(&'static str, u64); 5] {
        let names = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        std::array::from_fn(|i| (names[i], self.0[i].load(Ordering::Relaxed)))
    }
}

/// One backend's meters; shared by the generations that keep it.
#[derive(Debug, Default)]
pub struct BackendMeter {
    /// Its answers, by status class.
    pub responses: ByClass,
    /// From the request sent to the response head.
    pub response_time: Latency,
    /// Active checks that passed.
    pub checks_passed: AtomicU64,
    /// Active checks that failed.
    pub checks_failed: AtomicU64,
}

/// One listener's meters, across reloads.
#[derive(Debug, Default)]
pub struct ListenerMeter {
    /// Every answer to a client, the proxy's own (400, 502, 503, ...) too.
    pub responses: ByClass,
    /// From the request head to the last byte of the answer (HTTP/2: to
    /// the answer's head).
    pub request_time: Latency,
    /// Attempts beyond a request's first (on another backend, or again).
    pub retries: AtomicU64,
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Client connections open now.
    pub open: AtomicU64,
    /// Request body bytes taken from clients.
    pub bytes_in: AtomicU64,
    /// Response body bytes sent to clients.
    pub bytes_out: AtomicU64,
}

/// Counts a client connection as open while it lives.
#[derive(Debug)]
pub struct OpenConnection(Arc<ListenerMeter>);

impl ListenerMeter {
    /// A connection was accepted; it counts as open until the guard drops.
    pub fn connection(self: &Arc<Self>) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(self))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_bucket_and_past_the_last_bound() {
        let h = Latency::default();
        for ms in [0, 2, 2, 40, 20_000] {
            h.observe(Duration::from_millis(ms));
        }
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 5);
        assert!((sum - 20.044).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[1], (0.0025, 2));
        assert_eq!(buckets[5], (0.05, 1));
        assert_eq!(buckets.last(), Some(&(f64::MAX, 1)), "20 s is past every bound but counted");
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 5);
        let c = ByClass::default();
        for s in [101, 200, 204, 404, 503, 999] {
            c.count(s);
        }
        assert_eq!(c.read(), [("1xx", 1), ("2xx", 2), ("3xx", 0), ("4xx", 1), ("5xx", 2)]);
    }
}
