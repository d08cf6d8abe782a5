//! Prometheus metrics: requests by function and status, a latency
//! histogram, pool gauges, and reads by where they ran and why (with the
//! read replica's health), rendered in the text exposition format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::replica::{ReadRoute, Replica};
use crate::db::{Catalog, Pool};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// The label of every request that names no function of the cache and
/// no fixed path: junk paths cannot grow the label table.
const OTHER: &str = "other";

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(Arc<str>, u16), u64>>,
    labels: Mutex<HashMap<String, Arc<str>>>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Reads by route, in `ReadRoute::ALL`'s order.
    reads: [AtomicU64; ReadRoute::ALL.len()],
}

impl Metrics {
    /// The label of a request: `name` when it is a function of the
    /// schema cache or a fixed path (the caller says which), else `other`.
    /// Labels come from the catalog and the router only, so the table is
    /// bounded by the functions ever loaded, whatever clients send.
    pub fn label_for(&self, name: Option<&str>) -> Arc<str> {
        let Some(name) = name else {
            return Arc::from(OTHER);
        };
        let Ok(mut labels) = self.labels.lock() else {
            return Arc::from(OTHER);
        };
        if let Some(l) = labels.get(name) {
            return l.clone();
        }
        // A quoted identifier may hold anything: keep label values plain.
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '/' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let l: Arc<str> = Arc::from(clean);
        labels.insert(name.to_string(), l.clone());
        l
    }

    pub fn observe(&self, label: &Arc<str>, status: u16, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((label.clone(), status)).or_insert(0) += 1;
        }
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a read (GET or HEAD of a read-only function) by where it ran.
    pub fn count_read(&self, route: ReadRoute) {
        if let Some(i) = ReadRoute::ALL.iter().position(|r| *r == route) {
            self.reads[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self, pool: &Pool, replica: Option<&Replica>, catalog: &Catalog) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP pgrpc_requests_total HTTP requests by function (or path) and status.\n",
        );
        out.push_str("# TYPE pgrpc_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort();
            for ((label, status), n) in rows {
                let _ = writeln!(
                    out,
                    "pgrpc_requests_total{{function=\"{label}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP pgrpc_request_duration_seconds Request latency.\n");
        out.push_str("# TYPE pgrpc_request_duration_seconds histogram\n");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "pgrpc_request_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "pgrpc_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "pgrpc_request_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "pgrpc_request_duration_seconds_count {count}");
        let status = pool.status();
        out.push_str("# HELP pgrpc_pool_connections Pooled database connections.\n");
        out.push_str("# TYPE pgrpc_pool_connections gauge\n");
        let _ = writeln!(
            out,
            "pgrpc_pool_connections{{state=\"open\"}} {}",
            status.size
        );
        let _ = writeln!(
            out,
            "pgrpc_pool_connections{{state=\"idle\"}} {}",
            status.available
        );
        let _ = writeln!(
            out,
            "pgrpc_pool_connections{{state=\"max\"}} {}",
            status.max_size
        );
        out.push_str("# HELP pgrpc_pool_waiting Requests waiting for a pooled connection.\n");
        out.push_str("# TYPE pgrpc_pool_waiting gauge\n");
        let _ = writeln!(out, "pgrpc_pool_waiting {}", status.waiting);
        out.push_str(
            "# HELP pgrpc_schema_reloads_total Function cache loads since start (NOTIFY pgrst bursts are coalesced).\n",
        );
        out.push_str("# TYPE pgrpc_schema_reloads_total counter\n");
        let _ = writeln!(out, "pgrpc_schema_reloads_total {}", catalog.reloads());
        self.render_reads(&mut out, replica);
        out
    }

    fn render_reads(&self, out: &mut String, replica: Option<&Replica>) {
        out.push_str(
            "# HELP pgrpc_reads_total Reads (GET/HEAD of STABLE or IMMUTABLE functions) by where they ran and why.\n",
        );
        out.push_str("# TYPE pgrpc_reads_total counter\n");
        for (route, n) in ReadRoute::ALL.iter().zip(&self.reads) {
            let _ = writeln!(
                out,
                "pgrpc_reads_total{{target=\"{}\",reason=\"{}\"}} {}",
                route.target(),
                route.reason(),
                n.load(Ordering::Relaxed)
            );
        }
        let Some(replica) = replica else {
            return;
        };
        let health = replica.health();
        out.push_str("# HELP pgrpc_replica_up Whether the read replica answered its last probe.\n");
        out.push_str("# TYPE pgrpc_replica_up gauge\n");
        let _ = writeln!(out, "pgrpc_replica_up {}", u8::from(health.up));
        out.push_str(
            "# HELP pgrpc_replica_lag_seconds How far the read replica's replay is behind the primary, as last probed.\n",
        );
        out.push_str("# TYPE pgrpc_replica_lag_seconds gauge\n");
        let _ = writeln!(
            out,
            "pgrpc_replica_lag_seconds {}",
            health.lag.as_secs_f64()
        );
        let status = replica.pool().status();
        out.push_str("# HELP pgrpc_replica_pool_connections Pooled read replica connections.\n");
        out.push_str("# TYPE pgrpc_replica_pool_connections gauge\n");
        for (state, n) in [
            ("open", status.size),
            ("idle", status.available),
            ("max", status.max_size),
        ] {
            let _ = writeln!(
                out,
                "pgrpc_replica_pool_connections{{state=\"{state}\"}} {n}"
            );
        }
        let _ = writeln!(out, "pgrpc_replica_pool_waiting {}", status.waiting);
    }
}
