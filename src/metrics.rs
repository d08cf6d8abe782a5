//! Prometheus metrics: requests by function and status, latency
//! histograms by function and status class, transaction time by function,
//! pool wait, pool gauges, reads by where they ran and why (with the read
//! replica's health), and the OTLP exporter's counters, rendered in the
//! text exposition format.
//!
//! Every `function` label comes from the function cache or the router
//! (`label_for`), so the number of series is bounded by the functions ever
//! loaded times the fixed status classes, whatever clients send.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::replica::{ReadRoute, Replica};
use crate::db::{Catalog, Pool};
use deadpool::Status as PoolStatus;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// The label of every request that names no function of the cache and
/// no fixed path: junk paths cannot grow the label table.
const OTHER: &str = "other";

/// One histogram's buckets (not cumulative), count and sum.
#[derive(Clone, Copy, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_micros += elapsed.as_micros() as u64;
    }

    /// `name_bucket{labels,le=..}`, `name_sum{labels}`, `name_count{labels}`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(labels),
            self.sum_micros as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// `2xx`, `4xx`, ...: the status class label.
fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The tables of labels, looked up on every request: keyed by names from
/// the function cache and the router only (never by what a client sends),
/// so a fast, seeded hash serves them.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<Map<(Arc<str>, u16), u64>>,
    labels: Mutex<Map<String, Arc<str>>>,
    /// Request latency by function and status class.
    durations: Mutex<Map<(Arc<str>, &'static str), Histogram>>,
    /// Transaction time (BEGIN to COMMIT or ROLLBACK) by function.
    transactions: Mutex<Map<Arc<str>, Histogram>>,
    /// Time spent waiting for a connection of the primary's pool.
    pool_wait: Mutex<Histogram>,
    /// Reads by route, in `ReadRoute::ALL`'s order.
    reads: [AtomicU64; ReadRoute::ALL.len()],
    /// The OTLP exporter's counters, when it runs.
    otlp: Option<Arc<crate::trace::otlp::Stats>>,
    /// Client connections accepted by each shard (`PGRPC_SHARDS`), set once
    /// by `server::serve`: empty without shards.
    shard_connections: std::sync::OnceLock<Box<[AtomicU64]>>,
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

    /// Metrics that show the OTLP exporter's counters too.
    pub fn with_otlp(stats: Option<Arc<crate::trace::otlp::Stats>>) -> Metrics {
        Metrics {
            otlp: stats,
            ..Metrics::default()
        }
    }

    /// Records one answered request.
    pub fn observe(&self, label: &Arc<str>, status: u16, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((label.clone(), status)).or_insert(0) += 1;
        }
        if let Ok(mut m) = self.durations.lock() {
            m.entry((label.clone(), status_class(status)))
                .or_default()
                .observe(elapsed);
        }
    }

    /// Records the transaction a request ran, and its pool wait.
    pub fn observe_database(
        &self,
        label: &Arc<str>,
        transaction: Option<Duration>,
        pool_wait: Option<Duration>,
    ) {
        if let Some(took) = transaction {
            if let Ok(mut m) = self.transactions.lock() {
                m.entry(label.clone()).or_default().observe(took);
            }
        }
        if let Some(waited) = pool_wait {
            if let Ok(mut h) = self.pool_wait.lock() {
                h.observe(waited);
            }
        }
    }

    /// Counts a read (GET or HEAD of a read-only function) by where it ran.
    pub fn count_read(&self, route: ReadRoute) {
        if let Some(i) = ReadRoute::ALL.iter().position(|r| *r == route) {
            self.reads[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts counting the client connections of `shards` shards.
    pub fn set_shards(&self, shards: usize) {
        let _ = self
            .shard_connections
            .set((0..shards).map(|_| AtomicU64::new(0)).collect());
    }

    /// A client connection accepted by `shard`.
    pub fn count_shard_connection(&self, shard: usize) {
        if let Some(n) = self.shard_connections.get().and_then(|c| c.get(shard)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `pools`: every pool of the primary (one per shard), summed.
    pub fn render(&self, pools: &[Pool], replica: Option<&Replica>, catalog: &Catalog) -> String {
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
        out.push_str(
            "# HELP pgrpc_request_duration_seconds Request latency by function (or path) and status class.\n",
        );
        out.push_str("# TYPE pgrpc_request_duration_seconds histogram\n");
        if let Ok(m) = self.durations.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for ((label, class), h) in rows {
                h.render(
                    &mut out,
                    "pgrpc_request_duration_seconds",
                    &format!("function=\"{label}\",status_class=\"{class}\""),
                );
            }
        }
        out.push_str(
            "# HELP pgrpc_transaction_duration_seconds Database transaction time (BEGIN to COMMIT or ROLLBACK) by function.\n",
        );
        out.push_str("# TYPE pgrpc_transaction_duration_seconds histogram\n");
        if let Ok(m) = self.transactions.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for (label, h) in rows {
                h.render(
                    &mut out,
                    "pgrpc_transaction_duration_seconds",
                    &format!("function=\"{label}\""),
                );
            }
        }
        out.push_str(
            "# HELP pgrpc_pool_wait_seconds Time requests waited for a connection of the primary's pool.\n",
        );
        out.push_str("# TYPE pgrpc_pool_wait_seconds histogram\n");
        if let Ok(h) = self.pool_wait.lock() {
            h.render(&mut out, "pgrpc_pool_wait_seconds", "");
        }
        self.render_otlp(&mut out);
        let status = pools.iter().map(Pool::status).fold(
            PoolStatus {
                max_size: 0,
                size: 0,
                available: 0,
                waiting: 0,
            },
            |sum, s| PoolStatus {
                size: sum.size + s.size,
                available: sum.available + s.available,
                max_size: sum.max_size + s.max_size,
                waiting: sum.waiting + s.waiting,
            },
        );
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
        if let Some(shards) = self.shard_connections.get() {
            out.push_str(
                "# HELP pgrpc_shard_connections_total Client connections accepted by each shard (PGRPC_SHARDS).\n",
            );
            out.push_str("# TYPE pgrpc_shard_connections_total counter\n");
            for (shard, n) in shards.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "pgrpc_shard_connections_total{{shard=\"{shard}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out
    }

    fn render_otlp(&self, out: &mut String) {
        let load = |f: fn(&crate::trace::otlp::Stats) -> &AtomicU64| {
            self.otlp
                .as_deref()
                .map_or(0, |s| f(s).load(Ordering::Relaxed))
        };
        for (name, help, n) in [
            (
                "pgrpc_otlp_spans_exported_total",
                "Spans the OTLP collector accepted.",
                load(|s| &s.exported),
            ),
            (
                "pgrpc_otlp_spans_dropped_total",
                "Spans dropped because the export queue was full.",
                load(|s| &s.dropped),
            ),
            (
                "pgrpc_otlp_spans_failed_total",
                "Spans lost to a failed export request.",
                load(|s| &s.failed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {n}");
        }
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
