//! The fast path's counters, pulled by the Python router at scrape time (`GET /stats` on the control socket).
//!
//! The router's `/metrics` must keep one set of series whichever side served a request, so the fast path
//! counts exactly what the Python proxy counts -- rows per model, the per-call duration histogram (same
//! buckets as `metrics.LATENCY_BUCKETS`), errors by reason, failed upstream attempts -- cumulatively since
//! start, and the Python side adds the differences between two pulls. Everything on the request path is
//! a relaxed atomic add (the counters are read only by a scrape); the set of live deadlines, which the
//! min-remaining gauge needs, is a small ordered set behind a mutex.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::errors::{json_string, Reason};

/// Upper bounds of the duration buckets in seconds (`metrics.LATENCY_BUCKETS` without its `+Inf`, which is
/// the extra, last bucket).
pub const BOUNDS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BUCKETS: usize = BOUNDS.len() + 1;

/// Why an upstream attempt failed (the `reason` label of `upstream_failures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    Timeout,
    Unavailable,
    Error,
    /// Triton's queue timeout refused a late request (`upstream.LateRefused`): never retried.
    LateRefused,
}

impl FailureReason {
    const ALL: [FailureReason; 4] =
        [FailureReason::Timeout, FailureReason::Unavailable, FailureReason::Error, FailureReason::LateRefused];

    pub fn reason(self) -> Reason {
        match self {
            FailureReason::Timeout => Reason::UpstreamTimeout,
            FailureReason::Unavailable => Reason::UpstreamUnavailable,
            FailureReason::Error => Reason::UpstreamError,
            FailureReason::LateRefused => Reason::LateRefused,
        }
    }
}

/// One proxied model's figures.
#[derive(Default)]
pub struct ModelStats {
    rows: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    count: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
}

impl ModelStats {
    /// An upstream answer was passed on.
    pub fn row(&self) {
        self.rows.fetch_add(1, Relaxed);
    }

    /// A request that got past admission took `elapsed` (queueing included).
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(BOUNDS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn failure(&self, reason: FailureReason) {
        self.failures[reason as usize].fetch_add(1, Relaxed);
    }
}

/// Every counter of the process.
#[derive(Default)]
pub struct Stats {
    models: Mutex<HashMap<String, Arc<ModelStats>>>,
    errors: [AtomicU64; Reason::ALL.len()],
    requests: AtomicU64,
    fallback_requests: AtomicU64,
    active: Mutex<BTreeSet<(Instant, u64)>>,
    tokens: AtomicU64,
}

/// The gauges that live elsewhere (the admission queue), read at snapshot time.
pub struct Gauges {
    pub queue_length: usize,
    pub in_flight: usize,
}

impl Stats {
    /// The figures of `model`, created at zero the first time a table names it (kept across tables).
    pub fn model(&self, model: &str) -> Arc<ModelStats> {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        models.entry(model.to_owned()).or_default().clone()
    }

    pub fn error(&self, reason: Reason) {
        self.errors[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn fallback_request(&self) {
        self.fallback_requests.fetch_add(1, Relaxed);
    }

    /// Register a request's deadline for the min-remaining gauge until the guard drops (`None`: no deadline).
    pub fn track(&self, deadline: Option<Instant>) -> Tracked<'_> {
        let key = deadline.map(|at| {
            let key = (at, self.tokens.fetch_add(1, Relaxed));
            self.active.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
            key
        });
        Tracked { stats: self, key }
    }

    /// Milliseconds to the tightest deadline being served, at least 0; `None` when none has a deadline.
    pub fn min_remaining_ms(&self, now: Instant) -> Option<f64> {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.first().map(|(at, _)| at.saturating_duration_since(now).as_secs_f64() * 1000.0)
    }

    /// The `GET /stats` snapshot (see the README for its shape).
    pub fn render(&self, gauges: Gauges, now: Instant) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("{\"bounds\":[");
        let bounds: Vec<String> = BOUNDS.iter().map(|b| b.to_string()).collect();
        out.push_str(&bounds.join(","));
        out.push_str("],\"proxied\":{");
        let models: Vec<(String, Arc<ModelStats>)> = {
            let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            let mut all: Vec<_> = models.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        };
        for (i, (name, figures)) in models.iter().enumerate() {
            let buckets: Vec<String> = figures.buckets.iter().map(|b| b.load(Relaxed).to_string()).collect();
            let sum = figures.sum_ns.load(Relaxed) as f64 / 1e9;
            let _ = write!(
                out,
                "{}{}:{{\"rows\":{},\"duration\":{{\"buckets\":[{}],\"sum\":{:?},\"count\":{}}}}}",
                if i == 0 { "" } else { "," },
                json_string(name),
                figures.rows.load(Relaxed),
                buckets.join(","),
                sum,
                figures.count.load(Relaxed)
            );
        }
        out.push_str("},\"errors\":{");
        let errors: Vec<String> = Reason::ALL
            .iter()
            .filter_map(|reason| {
                let n = self.errors[reason.index()].load(Relaxed);
                (n > 0).then(|| format!("\"{}\":{n}", reason.as_str()))
            })
            .collect();
        out.push_str(&errors.join(","));
        out.push_str("},\"upstream_failures\":{");
        let mut first = true;
        for (name, figures) in &models {
            let reasons: Vec<String> = FailureReason::ALL
                .iter()
                .filter_map(|r| {
                    let n = figures.failures[*r as usize].load(Relaxed);
                    (n > 0).then(|| format!("\"{}\":{n}", r.reason().as_str()))
                })
                .collect();
            if !reasons.is_empty() {
                let _ = write!(out, "{}{}:{{{}}}", if first { "" } else { "," }, json_string(name), reasons.join(","));
                first = false;
            }
        }
        let remaining = match self.min_remaining_ms(now) {
            Some(ms) => format!("{ms:?}"),
            None => "null".to_owned(),
        };
        let _ = write!(
            out,
            "}},\"queue_length\":{},\"in_flight\":{},\"min_deadline_remaining_ms\":{},\"requests\":{},\"fallback_requests\":{}}}",
            gauges.queue_length,
            gauges.in_flight,
            remaining,
            self.requests.load(Relaxed),
            self.fallback_requests.load(Relaxed)
        );
        out
    }
}

/// A deadline in the active set; removed on drop.
pub struct Tracked<'a> {
    stats: &'a Stats,
    key: Option<(Instant, u64)>,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.stats.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_per_bound_not_cumulative() {
        let stats = Stats::default();
        let m = stats.model("m");
        m.observe(Duration::from_micros(500)); // on the first bound: le 0.0005
        m.observe(Duration::from_micros(501));
        m.observe(Duration::from_secs(11)); // +Inf
        m.row();
        m.failure(FailureReason::Timeout);
        stats.error(Reason::QueueFull);
        stats.request();
        let now = Instant::now();
        let json: serde_json::Value =
            serde_json::from_str(&stats.render(Gauges { queue_length: 2, in_flight: 3 }, now)).unwrap();
        let buckets = json["proxied"]["m"]["duration"]["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 17);
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[1], 1);
        assert_eq!(buckets[16], 1);
        assert_eq!(json["bounds"].as_array().unwrap().len(), 16);
        assert_eq!(json["proxied"]["m"]["duration"]["count"], 3);
        assert!((json["proxied"]["m"]["duration"]["sum"].as_f64().unwrap() - 11.001001).abs() < 1e-9);
        assert_eq!(json["proxied"]["m"]["rows"], 1);
        assert_eq!(json["errors"]["queue_full"], 1);
        assert_eq!(json["upstream_failures"]["m"]["upstream_timeout"], 1);
        assert_eq!(json["queue_length"], 2);
        assert_eq!(json["in_flight"], 3);
        assert_eq!(json["requests"], 1);
        assert_eq!(json["fallback_requests"], 0);
        assert!(json["min_deadline_remaining_ms"].is_null());
    }

    #[test]
    fn min_remaining_tracks_the_tightest_and_clamps() {
        let stats = Stats::default();
        let now = Instant::now();
        let none = stats.track(None);
        assert_eq!(stats.min_remaining_ms(now), None);
        let late = stats.track(Some(now + Duration::from_millis(900)));
        {
            let _soon = stats.track(Some(now + Duration::from_millis(20)));
            assert_eq!(stats.min_remaining_ms(now), Some(20.0));
            assert_eq!(stats.min_remaining_ms(now + Duration::from_millis(50)), Some(0.0));
        }
        assert_eq!(stats.min_remaining_ms(now), Some(900.0));
        drop(late);
        drop(none);
        assert_eq!(stats.min_remaining_ms(now), None);
    }
}
