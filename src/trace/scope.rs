//! What one request measured about itself, carried in a task-local so that
//! the database side can record its pool wait and transaction time without
//! knowing about HTTP: `http::handle` opens the scope, `db::exec` calls the
//! three hooks below (one line each), and `handle` reads the numbers back
//! for the metrics and the spans.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;

use super::RequestTrace;

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// One request's trace and timings.
#[derive(Debug)]
pub struct Scope {
    pub trace: RequestTrace,
    pub started: SystemTime,
    pool_wait_micros: AtomicU64,
    pool_waits: AtomicU64,
    /// The last transaction: when it started, and how long it took.
    transaction: Mutex<Option<(SystemTime, Duration)>>,
}

impl Scope {
    pub fn new(trace: RequestTrace) -> Arc<Scope> {
        Arc::new(Scope {
            trace,
            started: SystemTime::now(),
            pool_wait_micros: AtomicU64::new(0),
            pool_waits: AtomicU64::new(0),
            transaction: Mutex::new(None),
        })
    }

    /// Runs `f` with this scope as the current one.
    pub async fn run<F: Future>(self: &Arc<Scope>, f: F) -> F::Output {
        SCOPE.scope(self.clone(), f).await
    }

    /// Time spent waiting for pooled connections, if the request took one.
    pub fn pool_wait(&self) -> Option<Duration> {
        (self.pool_waits.load(Ordering::Relaxed) > 0)
            .then(|| Duration::from_micros(self.pool_wait_micros.load(Ordering::Relaxed)))
    }

    /// The request's (last) transaction: its start and duration.
    pub fn transaction(&self) -> Option<(SystemTime, Duration)> {
        self.transaction.lock().ok().and_then(|t| *t)
    }
}

/// `f`, run in the current request's scope and tracing span wherever it is
/// spawned (a spawned task does not inherit task-locals).
pub fn carry<F>(f: F) -> impl Future<Output = F::Output> + Send + 'static
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    let scope = SCOPE.try_with(Arc::clone).ok();
    let span = tracing::Span::current();
    async move {
        match scope {
            Some(scope) => SCOPE.scope(scope, f).await,
            None => f.await,
        }
    }
    .instrument(span)
}

/// Awaits a pool checkout and adds the wait to the request's scope.
pub async fn pool_wait<F: Future>(checkout: F) -> F::Output {
    let started = Instant::now();
    let out = checkout.await;
    let waited = started.elapsed();
    let _ = SCOPE.try_with(|s| {
        s.pool_wait_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        s.pool_waits.fetch_add(1, Ordering::Relaxed);
    });
    out
}

/// A transaction's start (from BEGIN to COMMIT or ROLLBACK, on a
/// connection in hand); `end` records when it started and how long it
/// took (a streamed call's ends when its answer's head is handed over:
/// its COMMIT comes after the request's metrics are taken). A timer, not a wrapping future: wrapping the transaction's future
/// would hold it twice (the argument and the awaited value), which doubled
/// every call's future.
pub struct TransactionTimer {
    wall: SystemTime,
    started: Instant,
}

impl TransactionTimer {
    pub fn start() -> TransactionTimer {
        TransactionTimer {
            wall: SystemTime::now(),
            started: Instant::now(),
        }
    }

    pub fn end(self) {
        let took = self.started.elapsed();
        let _ = SCOPE.try_with(|s| {
            if let Ok(mut t) = s.transaction.lock() {
                *t = Some((self.wall, took));
            }
        });
    }
}
