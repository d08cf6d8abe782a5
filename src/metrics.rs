//! Prometheus metrics: requests by function and status, latency
//! histograms by function and status class, transaction time by function,
//! pool wait, pool gauges, reads by where they ran and why (with the read
//! replica's health), and the OTLP exporter's counters, rendered in the
//! text exposition format.
//!
//! Every `function` label comes from the function cache or the router
//! (`label_for`), so the number of series is bounded by the functions ever
//! loaded times the fixed status classes, whatever clients send.
//!
//! Each runtime (the single one, or each shard's) records into a
//! [`Recorder`] of its own, so that requests on different cores do not
//! share locks or cache lines; a scrape sums the recorders.

use std::collections::{BTreeMap, HashMap};
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
    fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_micros += other.sum_micros;
    }

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

/// The tables of labels, looked up on every request: keyed by names from
/// the function cache and the router only (never by what a client sends),
/// so a fast, seeded hash serves them.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The status classes, indexed by `class_index`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `2xx`, `4xx`, ...: the index of the status class in `CLASSES`.
fn class_index(status: u16) -> usize {
    match status / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

/// One label's counts.
#[derive(Clone, Default)]
struct Calls {
    /// Requests by status: a list, scanned on each request. Its length is
    /// bounded by the statuses the server answers (a function's
    /// `response.status` must lie in 200..=599), in practice a handful.
    statuses: Vec<(u16, u64)>,
    /// Request latency by status class (`CLASSES`).
    durations: [Histogram; CLASSES.len()],
    /// Transaction time (BEGIN to COMMIT or ROLLBACK).
    transactions: Histogram,
}

impl Calls {
    fn count(&mut self, status: u16, n: u64) {
        match self.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, total)) => *total += n,
            None => self.statuses.push((status, n)),
        }
    }

    fn add(&mut self, other: &Calls) {
        for (status, n) in &other.statuses {
            self.count(*status, *n);
        }
        for (mine, theirs) in self.durations.iter_mut().zip(&other.durations) {
            mine.add(theirs);
        }
        self.transactions.add(&other.transactions);
    }
}

/// What one runtime has recorded, under one lock.
#[derive(Default)]
struct Counts {
    calls: Map<Arc<str>, Calls>,
    /// Time spent waiting for a connection of the primary's pool.
    pool_wait: Histogram,
}

/// What one runtime records per request: the single runtime's, or one
/// shard's (`PGRPC_SHARDS`). Each runtime writes only its own, so the
/// locks and the labels' reference counts stay in one core's cache, and a
/// request takes two locks (its label, then its counts); `/metrics` sums
/// every recorder.
#[derive(Default)]
pub struct Recorder {
    labels: Mutex<Map<String, Arc<str>>>,
    counts: Mutex<Counts>,
    /// Reads by route, in `ReadRoute::ALL`'s order.
    reads: [AtomicU64; ReadRoute::ALL.len()],
}

#[derive(Default)]
pub struct Metrics {
    /// Every runtime's recorder ([`Metrics::recorder`]).
    recorders: Mutex<Vec<Arc<Recorder>>>,
    /// The OTLP exporter's counters, when it runs.
    otlp: Option<Arc<crate::trace::otlp::Stats>>,
    /// Client connections accepted by each shard (`PGRPC_SHARDS`), set once
    /// by `server::serve`: empty without shards.
    shard_connections: std::sync::OnceLock<Box<[AtomicU64]>>,
}

impl Recorder {
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

    /// Records one answered request: its status and latency, the
    /// transaction it ran and its pool wait.
    pub fn observe(
        &self,
        label: &Arc<str>,
        status: u16,
        elapsed: Duration,
        transaction: Option<Duration>,
        pool_wait: Option<Duration>,
    ) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let calls = match counts.calls.get_mut(&**label) {
            Some(calls) => calls,
            // The key is cloned only the first time the label is seen.
            None => counts.calls.entry(label.clone()).or_default(),
        };
        calls.count(status, 1);
        calls.durations[class_index(status)].observe(elapsed);
        if let Some(took) = transaction {
            calls.transactions.observe(took);
        }
        if let Some(waited) = pool_wait {
            counts.pool_wait.observe(waited);
        }
    }

    /// Counts a read (GET or HEAD of a read-only function) by where it ran.
    pub fn count_read(&self, route: ReadRoute) {
        if let Some(i) = ReadRoute::ALL.iter().position(|r| *r == route) {
            self.reads[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every recorder's counts, summed by label (sorted: `BTreeMap`).
#[derive(Default)]
struct Totals {
    calls: BTreeMap<Arc<str>, Calls>,
    pool_wait: Histogram,
    reads: [u64; ReadRoute::ALL.len()],
}

impl Totals {
    fn of(recorders: &[Arc<Recorder>]) -> Totals {
        let mut t = Totals::default();
        for r in recorders {
            if let Ok(counts) = r.counts.lock() {
                for (label, calls) in &counts.calls {
                    t.calls.entry(label.clone()).or_default().add(calls);
                }
                t.pool_wait.add(&counts.pool_wait);
            }
            for (sum, n) in t.reads.iter_mut().zip(&r.reads) {
                *sum += n.load(Ordering::Relaxed);
            }
        }
        t
    }
}

impl Metrics {
    /// A new runtime's recorder, counted in every render from now on.
    pub fn recorder(&self) -> Arc<Recorder> {
        let r = Arc::new(Recorder::default());
        if let Ok(mut all) = self.recorders.lock() {
            all.push(r.clone());
        }
        r
    }

    /// Metrics that show the OTLP exporter's counters too.
    pub fn with_otlp(stats: Option<Arc<crate::trace::otlp::Stats>>) -> Metrics {
        Metrics {
            otlp: stats,
            ..Metrics::default()
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
        let totals = self.render_counts(&mut out);
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
        render_reads(&mut out, &totals.reads, replica);
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

    /// The per-request series, summed over every recorder; the sums, for
    /// the series rendered later (reads).
    fn render_counts(&self, out: &mut String) -> Totals {
        out.push_str(
            "# HELP pgrpc_requests_total HTTP requests by function (or path) and status.\n",
        );
        out.push_str("# TYPE pgrpc_requests_total counter\n");
        let recorders = self
            .recorders
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default();
        let totals = Totals::of(&recorders);
        for (label, calls) in &totals.calls {
            let mut statuses = calls.statuses.clone();
            statuses.sort_unstable();
            for (status, n) in statuses {
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
        for (label, calls) in &totals.calls {
            for (class, h) in CLASSES.iter().zip(&calls.durations) {
                if h.count > 0 {
                    h.render(
                        out,
                        "pgrpc_request_duration_seconds",
                        &format!("function=\"{label}\",status_class=\"{class}\""),
                    );
                }
            }
        }
        out.push_str(
            "# HELP pgrpc_transaction_duration_seconds Database transaction time (BEGIN to COMMIT or ROLLBACK) by function.\n",
        );
        out.push_str("# TYPE pgrpc_transaction_duration_seconds histogram\n");
        for (label, calls) in &totals.calls {
            if calls.transactions.count > 0 {
                calls.transactions.render(
                    out,
                    "pgrpc_transaction_duration_seconds",
                    &format!("function=\"{label}\""),
                );
            }
        }
        out.push_str(
            "# HELP pgrpc_pool_wait_seconds Time requests waited for a connection of the primary's pool.\n",
        );
        out.push_str("# TYPE pgrpc_pool_wait_seconds histogram\n");
        totals.pool_wait.render(out, "pgrpc_pool_wait_seconds", "");
        totals
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
}

fn render_reads(out: &mut String, reads: &[u64], replica: Option<&Replica>) {
    out.push_str(
            "# HELP pgrpc_reads_total Reads (GET/HEAD of STABLE or IMMUTABLE functions) by where they ran and why.\n",
        );
    out.push_str("# TYPE pgrpc_reads_total counter\n");
    for (route, n) in ReadRoute::ALL.iter().zip(reads) {
        let _ = writeln!(
            out,
            "pgrpc_reads_total{{target=\"{}\",reason=\"{}\"}} {}",
            route.target(),
            route.reason(),
            n
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // Two runtimes (two shards) record into their own recorders; a scrape
    // shows their sums, once per series, in the order of the labels.
    #[test]
    fn a_scrape_sums_every_recorder() {
        let m = Metrics::default();
        let (a, b) = (m.recorder(), m.recorder());
        let (va, vb) = (a.label_for(Some("version")), b.label_for(Some("version")));
        a.observe(&va, 200, ms(1), Some(ms(1)), Some(ms(2)));
        b.observe(&vb, 200, ms(3), Some(ms(2)), None);
        b.observe(&vb, 404, ms(30), None, None);
        let other = a.label_for(None);
        a.observe(&other, 404, ms(1), None, None);
        a.count_read(ReadRoute::ALL[0]);
        b.count_read(ReadRoute::ALL[0]);
        let mut out = String::new();
        let totals = m.render_counts(&mut out);
        let line = |prefix: &str| {
            let found: Vec<&str> = out.lines().filter(|l| l.starts_with(prefix)).collect();
            assert_eq!(found.len(), 1, "{prefix} in:\n{out}");
            found[0].rsplit(' ').next().unwrap_or_default().to_string()
        };
        assert_eq!(
            line("pgrpc_requests_total{function=\"version\",status=\"200\"}"),
            "2"
        );
        assert_eq!(
            line("pgrpc_requests_total{function=\"version\",status=\"404\"}"),
            "1"
        );
        assert_eq!(
            line("pgrpc_requests_total{function=\"other\",status=\"404\"}"),
            "1"
        );
        assert_eq!(
            line("pgrpc_request_duration_seconds_count{function=\"version\",status_class=\"2xx\"}"),
            "2"
        );
        assert_eq!(
            line("pgrpc_request_duration_seconds_sum{function=\"version\",status_class=\"2xx\"}"),
            "0.004"
        );
        assert_eq!(
            line("pgrpc_request_duration_seconds_bucket{function=\"version\",status_class=\"4xx\",le=\"0.025\"}"),
            "0"
        );
        assert_eq!(
            line("pgrpc_request_duration_seconds_bucket{function=\"version\",status_class=\"4xx\",le=\"0.05\"}"),
            "1"
        );
        assert_eq!(
            line("pgrpc_transaction_duration_seconds_count{function=\"version\"}"),
            "2"
        );
        // No transaction was recorded for `other`: no series.
        assert!(!out.contains("pgrpc_transaction_duration_seconds_count{function=\"other\"}"));
        assert_eq!(line("pgrpc_pool_wait_seconds_count "), "1");
        // Sorted by label: `other` before `version`.
        let first = out.find("function=\"other\"").unwrap_or(usize::MAX);
        assert!(first < out.find("function=\"version\"").unwrap_or(0));
        let mut reads = String::new();
        render_reads(&mut reads, &totals.reads, None);
        let route = ReadRoute::ALL[0];
        assert!(reads.contains(&format!(
            "pgrpc_reads_total{{target=\"{}\",reason=\"{}\"}} 2",
            route.target(),
            route.reason()
        )));
    }
}
