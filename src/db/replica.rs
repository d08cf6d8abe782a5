//! Read replicas (`PGRPC_READ_DATABASE_URL`): the replica pool, the probe
//! that measures its lag, and where each read runs (docs/replicas.md).
//!
//! A read (GET or HEAD of a STABLE or IMMUTABLE function) runs on the
//! replica unless the probe last found it unreachable or lagging more than
//! `PGRPC_READ_MAX_LAG_MS`. A read that sends back a write's WAL position
//! runs there only once the very connection it got has replayed that
//! position, polled for up to `PGRPC_READ_WAIT_MS`. Every other case runs
//! on the primary, without an error; [`ReadRoute`] says which and why.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{PoolError, Timeouts};
use tokio::sync::watch;
use tokio_postgres::SimpleQueryMessage;
use tracing::{info, warn};

use super::call::ExecError;
use super::lsn::{Lsn, WalLayout};
use super::pool::{build_pool, Conn, Pool, PoolOptions};
use super::DbError;

/// The WAL position a node holds (see `lsn::wal_position`), and whether it
/// is in recovery.
pub const POSITION_SQL: &str = super::lsn::wal_position!();

/// Where a read ran and why: the labels of `pgrpc_reads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadRoute {
    /// On the replica; the read asked for no WAL position.
    Replica,
    /// On the replica, which had replayed the WAL position the read sent.
    LsnReplayed,
    /// On the primary: no replica is configured.
    NoReplica,
    /// On the primary: the replica did not answer.
    Unreachable,
    /// On the primary: the replica lags more than `PGRPC_READ_MAX_LAG_MS`.
    Lagging,
    /// On the primary: the replica had not replayed the read's WAL
    /// position within `PGRPC_READ_WAIT_MS`.
    LsnWaitTimeout,
    /// On the primary: every replica connection stayed busy.
    Busy,
    /// On the primary, a second time: the replica connection broke during
    /// the read.
    ReplicaFailed,
}

impl ReadRoute {
    pub const ALL: [ReadRoute; 8] = [
        ReadRoute::Replica,
        ReadRoute::LsnReplayed,
        ReadRoute::NoReplica,
        ReadRoute::Unreachable,
        ReadRoute::Lagging,
        ReadRoute::LsnWaitTimeout,
        ReadRoute::Busy,
        ReadRoute::ReplicaFailed,
    ];

    pub fn target(self) -> &'static str {
        match self {
            ReadRoute::Replica | ReadRoute::LsnReplayed => "replica",
            _ => "primary",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ReadRoute::Replica => "replica",
            ReadRoute::LsnReplayed => "lsn_replayed",
            ReadRoute::NoReplica => "no_replica",
            ReadRoute::Unreachable => "unreachable",
            ReadRoute::Lagging => "lagging",
            ReadRoute::LsnWaitTimeout => "lsn_wait_timeout",
            ReadRoute::Busy => "busy",
            ReadRoute::ReplicaFailed => "replica_failed",
        }
    }
}

/// What the probe last saw of the replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaHealth {
    /// It answered the last probe (and no read has failed to reach it since).
    pub up: bool,
    /// How far behind the primary it was.
    pub lag: Duration,
}

/// The decision before any connection is checked out: a read tries the
/// replica only when there is one, it answered, and it is not too far
/// behind; otherwise it runs on the primary, for the reason returned.
pub fn choose_pool(health: Option<ReplicaHealth>, max_lag: Duration) -> Result<(), ReadRoute> {
    match health {
        None => Err(ReadRoute::NoReplica),
        Some(h) if !h.up => Err(ReadRoute::Unreachable),
        Some(h) if h.lag > max_lag => Err(ReadRoute::Lagging),
        Some(_) => Ok(()),
    }
}

/// The replica pool and what the probe knows of it.
pub struct Replica {
    pool: Pool,
    up: AtomicBool,
    lag_micros: AtomicU64,
    /// The newest primary WAL position seen (by the probe, or asked for a
    /// read that sent a newer one): nothing past it can be replayed yet.
    primary_seen: AtomicU64,
    wait: Duration,
    max_lag: Duration,
}

impl Replica {
    pub fn new(
        url: &str,
        options: &PoolOptions,
        wait: Duration,
        max_lag: Duration,
    ) -> Result<Replica, DbError> {
        Ok(Replica {
            pool: build_pool(url, options)?,
            // Unknown until the first probe answers: reads go to the primary.
            up: AtomicBool::new(false),
            lag_micros: AtomicU64::new(0),
            primary_seen: AtomicU64::new(0),
            wait,
            max_lag,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn health(&self) -> ReplicaHealth {
        ReplicaHealth {
            up: self.up.load(Ordering::Relaxed),
            lag: Duration::from_micros(self.lag_micros.load(Ordering::Relaxed)),
        }
    }

    /// Whether `lsn` is at or before the primary's current position: known
    /// from the newest position seen, else asked of the primary once. When
    /// the primary cannot say, the read goes on (and waits as usual).
    /// `Err` carries the primary's position `lsn` is past.
    pub async fn not_ahead(&self, lsn: Lsn, primary: &Pool) -> Result<(), Lsn> {
        if lsn.0 <= self.primary_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let timeouts = Timeouts {
            wait: Some(self.wait.max(Duration::from_millis(100))),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(1)),
        };
        let Ok(conn) = primary.timeout_get(&timeouts).await else {
            return Ok(());
        };
        conn.inflight.quiet().await;
        match position(&conn.client, conn.wal).await {
            Ok((at, false)) => {
                self.saw_primary(at);
                let seen = self.primary_seen.load(Ordering::Relaxed);
                if lsn.0 <= seen {
                    Ok(())
                } else {
                    Err(Lsn(seen))
                }
            }
            // A primary in recovery is no primary; nothing to compare with.
            Ok((_, true)) => Ok(()),
            Err(_) => {
                drop(deadpool::managed::Object::take(conn));
                Ok(())
            }
        }
    }

    /// A WAL position the primary has reached (a write's commit here).
    pub fn saw_primary(&self, lsn: Lsn) {
        self.primary_seen.fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// A read broke on its replica connection: reads go to the primary
    /// until the probe finds the replica again.
    pub fn read_failed(&self) {
        self.mark_down();
    }

    fn mark_down(&self) {
        if self.up.swap(false, Ordering::Relaxed) {
            warn!("read replica unreachable; reads go to the primary");
        }
    }

    /// A replica connection for a read, or the reason the read runs on the
    /// primary. With a WAL position, the connection's server must have
    /// replayed it; it is polled until `PGRPC_READ_WAIT_MS` has passed.
    pub async fn checkout(&self, lsn: Option<Lsn>) -> Result<(Conn, ReadRoute), ReadRoute> {
        choose_pool(Some(self.health()), self.max_lag)?;
        let started = Instant::now();
        let mut conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(PoolError::Timeout(deadpool::managed::TimeoutType::Wait)) => {
                return Err(ReadRoute::Busy)
            }
            Err(e) => {
                warn!(cause = %e, "cannot reach the read replica");
                self.mark_down();
                return Err(ReadRoute::Unreachable);
            }
        };
        let Some(lsn) = lsn else {
            return Ok((conn, ReadRoute::Replica));
        };
        let deadline = started + self.wait;
        // Reads lent this connection (`db::inflight`) answer first: the
        // wait for them counts against the read's.
        if tokio::time::timeout_at(deadline.into(), conn.inflight.quiet())
            .await
            .is_err()
        {
            return Err(ReadRoute::LsnWaitTimeout);
        }
        let mut pause = Duration::from_millis(2);
        loop {
            if conn.replayed >= lsn.0 {
                return Ok((conn, ReadRoute::LsnReplayed));
            }
            match position(&conn.client, conn.wal).await {
                Ok((held, _)) => conn.replayed = conn.replayed.max(held.0),
                Err(e) => {
                    warn!(cause = %e, "read replica connection failed");
                    let _ = deadpool::managed::Object::take(conn);
                    self.mark_down();
                    return Err(ReadRoute::Unreachable);
                }
            }
            if conn.replayed >= lsn.0 {
                return Ok((conn, ReadRoute::LsnReplayed));
            }
            let now = Instant::now();
            if now + pause > deadline {
                return Err(ReadRoute::LsnWaitTimeout);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Whether a call's failure is its connection breaking (the session lost,
/// or ended by the server: 08*, 57P01..57P03), so that a read can run again
/// elsewhere. A read has no effect, so running it twice is safe.
pub fn connection_broke(e: &ExecError) -> bool {
    match e {
        ExecError::Lost(_) | ExecError::Unavailable(_) => true,
        ExecError::Postgres { error, .. } => {
            let code = error.code().code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
        _ => false,
    }
}

/// A node's WAL position (see [`POSITION_SQL`]; a primary's taken back to
/// a record's end with its `layout`) and whether it is in recovery, by a
/// simple query (nothing prepared, so it works behind a transaction-mode
/// pooler).
pub async fn position(
    client: &tokio_postgres::Client,
    layout: Option<WalLayout>,
) -> Result<(Lsn, bool), tokio_postgres::Error> {
    let messages = client.simple_query(POSITION_SQL).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Lsn::from_position_row(row, layout),
            _ => None,
        })
        .unwrap_or((Lsn(0), false)))
}

/// The primary's WAL positions as the probe saw them, oldest first.
#[derive(Default)]
struct History {
    samples: VecDeque<(Instant, Lsn)>,
}

impl History {
    fn push(&mut self, at: Instant, lsn: Lsn, keep: Duration) {
        self.samples.push_back((at, lsn));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| at.duration_since(*t) > keep)
        {
            self.samples.pop_front();
        }
    }

    /// How far a replica that has replayed `replayed` is behind: from the
    /// newest primary position it holds to the primary's latest sample.
    /// Replaying past every sample is no lag; replaying none of those kept
    /// is at least as old as the oldest kept. Exact to the probe interval.
    fn lag(&self, replayed: Lsn) -> Duration {
        let Some((latest, _)) = self.samples.back() else {
            return Duration::ZERO;
        };
        let held = self
            .samples
            .iter()
            .rev()
            .find(|(_, lsn)| *lsn <= replayed)
            .or(self.samples.front())
            .map_or(*latest, |(t, _)| *t);
        if self.samples.iter().all(|(_, lsn)| *lsn <= replayed) {
            return Duration::ZERO;
        }
        latest.duration_since(held)
    }
}

/// Probes the primary's and the replica's WAL positions every
/// `max_lag / 4` (between 50 ms and 1 s) until `stop` fires, and keeps the
/// replica's health for [`choose_pool`].
///
/// The lag is the age of the newest primary position the replica has
/// replayed, measured against the primary's latest: an idle primary with a
/// caught-up replica has no lag, which `now() - pg_last_xact_replay_timestamp()`
/// would get wrong.
pub async fn probe(replica: Arc<Replica>, primary: Pool, mut stop: watch::Receiver<bool>) {
    let interval = (replica.max_lag / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let keep = replica.max_lag * 2 + interval * 4;
    let timeouts = Timeouts {
        wait: Some(interval.max(Duration::from_millis(500))),
        create: Some(Duration::from_secs(2)),
        recycle: Some(Duration::from_secs(1)),
    };
    let mut history = History::default();
    let answer = Duration::from_secs(2);
    loop {
        if let Ok(conn) = primary.timeout_get(&timeouts).await {
            // The probe's clock starts once the reads lent this connection
            // (`db::inflight`) have answered: a slow read is not a silent
            // server.
            conn.inflight.quiet().await;
            match tokio::time::timeout(answer, position(&conn.client, conn.wal)).await {
                Ok(Ok((lsn, _))) => {
                    history.push(Instant::now(), lsn, keep);
                    replica.saw_primary(lsn);
                }
                // A session that does not answer is not handed to a request.
                _ => drop(deadpool::managed::Object::take(conn)),
            }
        }
        let seen = match replica.pool.timeout_get(&timeouts).await {
            Ok(conn) => {
                conn.inflight.quiet().await;
                match tokio::time::timeout(answer, position(&conn.client, conn.wal)).await {
                    Ok(Ok(seen)) => Some(seen),
                    _ => {
                        let _ = deadpool::managed::Object::take(conn);
                        None
                    }
                }
            }
            Err(_) => None,
        };
        match seen {
            Some((replayed, recovering)) => {
                let lag = if recovering {
                    history.lag(replayed)
                } else {
                    Duration::ZERO
                };
                replica
                    .lag_micros
                    .store(lag.as_micros() as u64, Ordering::Relaxed);
                if !replica.up.swap(true, Ordering::Relaxed) {
                    info!(lag_ms = lag.as_millis() as u64, "read replica reachable");
                }
            }
            None => replica.mark_down(),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The decision reads only what the probe saw: no replica, down, or too far behind go to the primary.
    #[test]
    fn choose_pool_skips_missing_down_and_lagging_replicas() {
        let max = Duration::from_millis(500);
        let fresh = ReplicaHealth {
            up: true,
            lag: Duration::from_millis(100),
        };
        assert_eq!(choose_pool(Some(fresh), max), Ok(()));
        assert_eq!(choose_pool(None, max), Err(ReadRoute::NoReplica));
        assert_eq!(
            choose_pool(Some(ReplicaHealth { up: false, ..fresh }), max),
            Err(ReadRoute::Unreachable)
        );
        assert_eq!(
            choose_pool(
                Some(ReplicaHealth {
                    lag: Duration::from_millis(501),
                    ..fresh
                }),
                max
            ),
            Err(ReadRoute::Lagging)
        );
    }

    // An idle primary with a caught-up replica is no lag; a replica stuck behind ages with the primary's samples.
    #[test]
    fn lag_is_the_age_of_the_newest_primary_position_replayed() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let keep = Duration::from_secs(60);
        let mut h = History::default();
        for i in 0..5 {
            h.push(t0 + s * i, Lsn(100), keep);
        }
        assert_eq!(h.lag(Lsn(100)), Duration::ZERO, "idle primary, caught up");
        h.push(t0 + s * 5, Lsn(200), keep);
        h.push(t0 + s * 6, Lsn(300), keep);
        h.push(t0 + s * 7, Lsn(300), keep);
        assert_eq!(h.lag(Lsn(300)), Duration::ZERO);
        assert_eq!(h.lag(Lsn(250)), s * 2, "holds what the primary had at t5");
        assert_eq!(h.lag(Lsn(100)), s * 3, "holds what the primary had at t4");
        assert_eq!(h.lag(Lsn(50)), s * 7, "older than every sample kept");
    }

    #[test]
    fn routes_have_distinct_labels() {
        let mut labels: Vec<_> = ReadRoute::ALL
            .iter()
            .map(|r| (r.target(), r.reason()))
            .collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), ReadRoute::ALL.len());
    }
}
