//! The executor: the one place that checks out a connection and owns a
//! call's transaction, for every kind of call (plain, checked, under an
//! `Idempotency-Key`, a batch). The call arrives as plain values
//! (`db::call`, re-exported here); its transaction is one list of steps
//! (`db::steps`), written and run by the one interpreter there, which
//! pipelines every step that needs no answer before it. This module runs
//! the list, ends a transaction the list left open, stores a final error
//! under its key, and reads what the node says about a read-only refusal.
//!
//! Each call runs in the request's task until the request is dropped (its
//! client disconnected): what is left of the call then moves to a task of
//! its own (`Detached`), so the transaction still ends here, with COMMIT or
//! ROLLBACK, before the connection goes back to the pool. A connection
//! whose transaction state is in doubt (COMMIT or ROLLBACK itself failed)
//! is detached from the pool and closed, so nothing ever rides on another
//! request's COMMIT.

use crate::error::ApiError;

use deadpool::managed::{Object, PoolError, TimeoutType};
use tokio_postgres::error::SqlState;
use tracing::error;

pub use super::call::{
    CallJob, CallResult, Check, ExecError, Executed, IdempotentCall, RequestSettings, Shaper, Step,
    StoredResponse,
};
use super::pool::{Conn, PgConn, Pool};
use super::schema::{SchemaCache, TIMEZONES_SQL};
use super::steps::{self, end_reading_lsn, Op};

/// Runs the call. It always ends the transaction, even when the waiting
/// request is dropped (see `Detached`).
pub async fn execute(pool: &Pool, job: CallJob) -> Result<Executed, ExecError> {
    let pool = pool.clone();
    // The job boxed, so that each layer of the call's future holds a
    // pointer, not the job; the call boxed, so that detaching moves a
    // pointer, not the whole call's state.
    let job = Box::new(job);
    Detached::new(Box::pin(async move { run(&pool, job).await })).await
}

/// Runs a read on a connection already checked out (of the replica pool,
/// by `replica::Replica::checkout`), as `execute` does.
pub async fn execute_on(conn: Conn, job: CallJob) -> Result<Executed, ExecError> {
    let job = Box::new(job);
    Detached::new(Box::pin(async move {
        let timer = crate::trace::TransactionTimer::start();
        let out = run_on(conn, job).await;
        timer.end();
        out
    }))
    .await
}

type CallFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Executed, ExecError>> + Send>>;

/// A call run in the request's own task, which moves to a task of its own
/// if the request is dropped before the call ends (its client went away):
/// that task still ends the transaction, with COMMIT or ROLLBACK, before
/// the connection goes back to the pool. Running it in place spares every
/// call a spawned task, and the wake-up of the request when that task
/// ends. A panic in the call is caught and answered as a failed call, as
/// a panicking task's would be.
struct Detached {
    call: Option<CallFuture>,
}

impl Detached {
    fn new(call: CallFuture) -> Detached {
        Detached { call: Some(call) }
    }
}

impl std::future::Future for Detached {
    type Output = Result<Executed, ExecError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(call) = self.call.as_mut() else {
            return std::task::Poll::Ready(Err(ExecError::TaskFailed));
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.as_mut().poll(cx)));
        match polled {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(out)) => {
                self.call = None;
                std::task::Poll::Ready(out)
            }
            Err(_) => {
                self.call = None;
                error!("call panicked");
                std::task::Poll::Ready(Err(ExecError::TaskFailed))
            }
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // The request went away mid-call: the rest of the call runs in
            // a task of its own, in the request's trace scope.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(runtime.spawn(crate::trace::carry(call)));
            }
        }
    }
}

async fn run(pool: &Pool, job: Box<CallJob>) -> Result<Executed, ExecError> {
    let read_only = job.read_only;
    match run_call(pool, job).await {
        // A batch's failed call is judged as that call alone would be.
        Err(ExecError::InBatch { index, error }) => Err(ExecError::InBatch {
            index,
            error: Box::new(Box::pin(judged(pool, read_only, *error)).await),
        }),
        // Boxed: a rare path, whose future would otherwise size every call's.
        Err(e) => Err(Box::pin(judged(pool, read_only, e)).await),
        ok => ok,
    }
}

/// The error of a call, with what the node says about a read-only refusal.
async fn judged(pool: &Pool, read_only: bool, e: ExecError) -> ExecError {
    match e {
        // A call that may write was refused as read-only. Either the node
        // cannot write (a standby, or a primary demoted or still being
        // promoted), or the function raised 25006 itself; the error table
        // answers each (`error::ApiError::from_db`). The server's own
        // refusal of a write in the read-write transaction the proxy opened
        // can only come from the node; otherwise one question to the node
        // tells them apart. (That question alone can miss: it may run on
        // another connection, after the promotion the failed call raced
        // with has completed.)
        ExecError::Postgres { error, mut context }
            if !read_only && *error.code() == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            if error.routine() == Some("PreventCommandIfReadOnly") || node_is_read_only(pool).await
            {
                // Reconnect: through a proxy such as HAProxy, to the new
                // primary.
                pool.manager().forget_connections();
                context.node_read_only = true;
            }
            ExecError::Postgres { error, context }
        }
        other => other,
    }
}

/// Whether the database cannot take writes: in recovery, or its sessions
/// read-only by default. A node that does not answer counts as one.
async fn node_is_read_only(pool: &Pool) -> bool {
    let Ok(conn) = checkout(pool).await else {
        return true;
    };
    // A simple query: nothing prepared, so it also works behind a
    // transaction-mode pooler.
    let answer = conn
        .client
        .simple_query(
            "SELECT pg_catalog.pg_is_in_recovery() \
                 OR pg_catalog.current_setting('default_transaction_read_only')::bool",
        )
        .await;
    match answer.as_deref().map(first_value) {
        Ok(Some(value)) => value == "t",
        _ => true,
    }
}

/// The first column of the first row of a simple query's answer.
fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<&str> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    })
}

async fn run_call(pool: &Pool, job: Box<CallJob>) -> Result<Executed, ExecError> {
    let conn = checkout(pool).await?;
    let timer = crate::trace::TransactionTimer::start();
    let out = run_on(conn, job).await;
    timer.end();
    out
}

async fn run_on(mut conn: Conn, mut job: Box<CallJob>) -> Result<Executed, ExecError> {
    // Until the list below has ended the transaction: a panic on the way
    // drops the connection with it open, and the pool then closes it.
    conn.begin_use();
    let batched = job.batch.is_some();
    let (ops, mut st) = steps::program(&conn, &mut job, false);
    if conn.pipeline > 1 {
        if let Some(sent) = steps::send_read(&conn, &job, &ops, &mut st) {
            return lent(conn, &job, sent, st).await;
        }
        // Anything else has the session to itself: the reads lent this
        // connection end first, within the pool's wait.
        if !conn.quiet().await {
            conn.settle();
            return Err(ExecError::PoolTimeout);
        }
    }
    // After the lent reads' answers: a warning of theirs is not this
    // call's.
    conn.clear_unreplicated();
    let outcome = match steps::run(&mut conn, &job, &ops, &mut st).await {
        Ok(()) if st.replay.is_some() => {
            // A replay wrote nothing now, but its WAL position is at or
            // after the original call's COMMIT, which is what the client
            // needs to read it back.
            let end = [Op::End {
                commit: false,
                lsn: !job.read_only,
            }];
            steps::run(&mut conn, &job, &end, &mut st)
                .await
                .map(|()| Outcome::Replayed)
        }
        Ok(()) => Ok(Outcome::Done),
        // A final error under a key of a caller with a sub: its effects
        // undone back to the savepoint, the error stored and committed.
        Err(failure) => match final_answer(&failure.error) {
            Some(api) if st.stores_errors && failure.call == Some(0) && !st.ended => {
                st.stored = Some(stored_error(&api));
                steps::run(&mut conn, &job, &steps::RECOVER, &mut st)
                    .await
                    .map(|()| Outcome::Failed(api))
            }
            _ => Err(failure),
        },
    };
    let failure = match outcome {
        Ok(outcome) => {
            conn.settle();
            replicated(&conn)?;
            return Ok(executed(outcome, st, batched));
        }
        Err(failure) => failure,
    };
    if st.end_failed || conn.client.is_closed() {
        // The transaction's fate is unknown: never hand this connection
        // to another request.
        let _ = Object::take(conn);
    } else if !st.ended && end_reading_lsn(&conn, false, false).await.is_err() {
        let _ = Object::take(conn);
    } else {
        conn.settle();
    }
    Err(match failure.call {
        Some(index) if batched => ExecError::InBatch {
            index,
            error: Box::new(failure.error),
        },
        _ => failure.error,
    })
}

/// A plain read sent as one implicit transaction on a pool that lets
/// connections carry several (`db::inflight`): the connection goes back
/// to the pool as soon as the statements are queued, unless this read
/// fills its last place; then it is kept until the answers are in, so no
/// more queue behind. A read commits nothing, so there is no synchronous
/// commit to check, and the transaction ends at its Sync whatever the
/// request does meanwhile.
async fn lent(
    mut conn: Conn,
    job: &CallJob,
    sent: Result<steps::Sent, steps::Failure>,
    mut st: steps::State,
) -> Result<Executed, ExecError> {
    let sent = match sent {
        Ok(sent) => sent,
        Err(failure) => {
            // Nothing was sent, or the connection is gone.
            if st.end_failed || conn.client.is_closed() {
                let _ = Object::take(conn);
            } else {
                conn.settle();
            }
            return Err(failure.error);
        }
    };
    let (ticket, inflight) = conn.inflight.enter();
    let kept = if inflight < conn.pipeline {
        conn.settle();
        drop(conn);
        None
    } else {
        Some(conn)
    };
    let out = match &kept {
        Some(conn) => steps::read_sent(sent, job, &mut st, || conn.client.is_closed()).await,
        None => steps::read_sent(sent, job, &mut st, || false).await,
    };
    if st.end_failed {
        ticket.doubt();
    }
    drop(ticket);
    if let Some(mut conn) = kept {
        if st.end_failed || conn.client.is_closed() {
            let _ = Object::take(conn);
        } else {
            conn.settle();
        }
    }
    out.map(|()| executed(Outcome::Done, st, false))
        .map_err(|failure| failure.error)
}

/// How a call's list ended.
enum Outcome {
    Done,
    Replayed,
    Failed(ApiError),
}

/// What the call answers, from the list's state.
fn executed(outcome: Outcome, mut st: steps::State, batched: bool) -> Executed {
    match outcome {
        Outcome::Replayed => match st.replay {
            Some(stored) => Executed::Replayed(stored, st.lsn),
            None => Executed::Failed(ApiError::from(ExecError::TaskFailed)),
        },
        Outcome::Failed(api) => Executed::Failed(api),
        Outcome::Done if batched => Executed::Batch(st.results, st.lsn),
        Outcome::Done => match st.results.pop() {
            Some(result) => Executed::Called(CallResult {
                commit_lsn: st.lsn,
                ..result
            }),
            None => Executed::Failed(ApiError::from(ExecError::TaskFailed)),
        },
    }
}

/// A COMMIT that returned success is acknowledged only if the server did
/// not warn that it stopped waiting for the synchronous standby.
fn replicated(conn: &PgConn) -> Result<(), ExecError> {
    if conn.unreplicated() {
        Err(ExecError::Unreplicated)
    } else {
        Ok(())
    }
}

/// The answer of a failed call if it is final, so that a retry under the
/// same key replays it: an error the function or PostgreSQL raised that is
/// a client error other than 408, 425 and 429 (which say "try again"). A
/// 5xx (a lost connection, a timeout, a failover, a serialization failure)
/// is not final, and the retry runs the call. Nor are the proxy's own
/// checks of the request's preferences (`max-affected`, a singular
/// `Accept`, a range): like a request that fails validation, a corrected
/// request may follow, and they store nothing.
fn final_answer(e: &ExecError) -> Option<ApiError> {
    let ExecError::Postgres { error, context } = e else {
        return None;
    };
    let api = ApiError::from_db(error, *context);
    let status = api.status.as_u16();
    (api.status.is_client_error() && !matches!(status, 408 | 425 | 429)).then_some(api)
}

/// An error as the response stored under its key: status, its headers
/// (with its media type) as `response.headers` holds them, and its body.
fn stored_error(api: &ApiError) -> StoredResponse {
    let mut headers = vec![serde_json::json!({"Content-Type": "application/json; charset=utf-8"})];
    for (name, value) in &api.headers {
        if let Ok(value) = value.to_str() {
            headers.push(serde_json::json!({ name.as_str(): value }));
        }
    }
    StoredResponse {
        status: i32::from(api.status.as_u16()),
        headers_json: serde_json::Value::Array(headers).to_string(),
        body: Some(api.body_json().to_string()),
    }
}

/// Reads `pg_timezone_names` into `cache`, once per snapshot, the first
/// time a request names a time zone.
pub async fn ensure_timezones(pool: &Pool, cache: &SchemaCache) -> Result<(), ExecError> {
    cache
        .timezones
        .get_or_try_init(|| async {
            let conn = checkout(pool).await?;
            // A simple query: nothing prepared, so it also works behind a
            // transaction-mode pooler.
            let messages = conn
                .client
                .simple_query(TIMEZONES_SQL)
                .await
                .map_err(|e| ExecError::from_pg(e, false))?;
            Ok::<_, ExecError>(
                messages
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            row.get(0).map(str::to_string)
                        }
                        _ => None,
                    })
                    .collect(),
            )
        })
        .await
        .map(|_| ())
}

/// A pooled connection, or 504 when the pool stays exhausted past its
/// timeout, or 503 when the database cannot be reached.
pub(super) async fn checkout(pool: &Pool) -> Result<Conn, ExecError> {
    match crate::trace::pool_wait(pool.get()).await {
        Ok(c) => Ok(c),
        Err(PoolError::Timeout(TimeoutType::Wait)) => Err(ExecError::PoolTimeout),
        Err(e) => {
            error!(cause = %e, "cannot get a database connection");
            Err(ExecError::Unavailable(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call whose request is dropped mid-call still runs to its end, in
    /// a task of its own.
    #[tokio::test]
    async fn a_call_dropped_mid_way_runs_to_its_end() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (ended, end) = tokio::sync::oneshot::channel::<()>();
        let mut call = Detached::new(Box::pin(async move {
            let _ = wait.await;
            let _ = ended.send(());
            Err(ExecError::TaskFailed)
        }));
        let polled = futures_util::poll!(&mut call);
        assert!(polled.is_pending());
        drop(call);
        let _ = go.send(());
        tokio::time::timeout(std::time::Duration::from_secs(5), end)
            .await
            .expect("the detached call ended")
            .expect("the call signalled its end");
    }

    /// A panicking call is answered as a failed call, not a dead request.
    #[tokio::test]
    async fn a_panicking_call_is_a_failed_call() {
        let call = Detached::new(Box::pin(async {
            if std::hint::black_box(true) {
                panic!("the call panicked");
            }
            Err(ExecError::TaskFailed)
        }));
        assert!(matches!(call.await, Err(ExecError::TaskFailed)));
    }
}
