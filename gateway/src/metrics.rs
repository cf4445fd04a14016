//! A small Prometheus registry: counters and fixed-bucket histograms keyed by label sets,
//! rendered in the text exposition format at `/metrics`.
//!
//! Hand-rolled rather than `metrics` + `metrics-exporter-prometheus`: the gateway needs a
//! handful of series, the exporter brings an HTTP listener, a global recorder (several
//! gateways in one test process would share it) and about a dozen more crates to build.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS_SECONDS.len()],
    count: u64,
    sum: f64,
}

/// The gateway's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (name, labels) -> value.
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, String), Histogram>>,
    pub websockets_open: AtomicI64,
    pub sse_open: AtomicI64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain numbers behind: still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    pub fn count(&self, name: &'static str, labels: String) {
        *lock(&self.counters).entry((name, labels)).or_insert(0) += 1;
    }

    pub fn observe(&self, name: &'static str, labels: String, seconds: f64) {
        let mut histograms = lock(&self.histograms);
        let histogram = histograms.entry((name, labels)).or_default();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS_SECONDS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// One finished HTTP request.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let route = escape(route);
        self.count(
            "paycore_gateway_http_requests_total",
            format!("method=\"{method}\",route=\"{route}\",status=\"{status}\""),
        );
        self.observe(
            "paycore_gateway_http_request_duration_seconds",
            format!("route=\"{route}\""),
            seconds,
        );
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in lock(&self.counters).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
        last = "";
        for ((name, labels), histogram) in lock(&self.histograms).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            let sep = if labels.is_empty() { "" } else { "," };
            for (count, bound) in histogram.buckets.iter().zip(BUCKETS_SECONDS) {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.count);
        }
        for (name, value) in [
            (
                "paycore_gateway_websockets_open",
                self.websockets_open.load(Ordering::Relaxed),
            ),
            (
                "paycore_gateway_sse_streams_open",
                self.sse_open.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}

/// Escapes a label value (routes are our own templates, but keep the format valid).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = Metrics::default();
        metrics.request("GET", "/health", 200, 0.0007);
        metrics.request("GET", "/health", 200, 0.2);
        let text = metrics.render();
        assert!(text.contains(
            "paycore_gateway_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "paycore_gateway_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.001\"} 1"
        ));
        assert!(
            text.contains(
                "paycore_gateway_http_request_duration_seconds_count{route=\"/health\"} 2"
            )
        );
    }
}
