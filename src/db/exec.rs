//! The executor: the one place that checks out a connection, prepares the
//! call and owns its transaction, for every kind of call (plain, singular,
//! with an `Idempotency-Key`). The call arrives as plain values
//! (`db::call`, re-exported here).
//!
//! Each call runs in a task of its own. When a client disconnects, hyper
//! drops the request's future, but not this task: the transaction still ends
//! here, with COMMIT or ROLLBACK, before the connection goes back to the
//! pool. A connection whose transaction state is in doubt (COMMIT or
//! ROLLBACK itself failed) is detached from the pool and closed, so nothing
//! ever rides on another request's COMMIT.

use std::borrow::Cow;
use std::sync::Arc;

use crate::error::ApiError;

use bytes::Bytes;
use deadpool::managed::{Object, PoolError, TimeoutType};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Statement;
use tracing::error;

pub use super::call::{
    CallJob, CallResult, Check, ExecError, Executed, IdempotentCall, RequestSettings, Shaper, Step,
    StoredResponse,
};
use super::lsn::Lsn;
use super::pool::{Conn, PgConn, Pool, Prepared};
use super::schema::{SchemaCache, TIMEZONES_SQL};

const CLAIM_SQL: &str = "SELECT state, response_status, response_headers::text, response_body \
     FROM pgrpc_http.http_idempotency_claim($1, $2)";
const STORE_SQL: &str = "SELECT pgrpc_http.http_idempotency_store($1, $2, $3::text::jsonb, $4)";
const CLAIM_TYPES: [Type; 2] = [Type::TEXT, Type::TEXT];
const STORE_TYPES: [Type; 4] = [Type::TEXT, Type::INT4, Type::TEXT, Type::TEXT];

/// The end of a transaction, then the WAL position it reached (see
/// `lsn::wal_position`), in one message. On a node in recovery (a write
/// that wrote nothing, on a standby) the replayed position stands in, so
/// that the answer never fails after its COMMIT.
macro_rules! then_lsn {
    ($end:literal) => {
        concat!($end, "; ", super::lsn::wal_position!())
    };
}
const COMMIT_LSN_SQL: &str = then_lsn!("COMMIT");
const ROLLBACK_LSN_SQL: &str = then_lsn!("ROLLBACK");

/// Runs the call in its own task and waits for it. The task always ends
/// the transaction, even when the waiting request is dropped.
pub async fn execute(pool: &Pool, job: CallJob) -> Result<Executed, ExecError> {
    let pool = pool.clone();
    // Boxed, so that spawning moves a pointer, not the whole call's state.
    spawned(Box::pin(async move { run(&pool, job).await })).await
}

/// Runs a read on a connection already checked out (of the replica pool,
/// by `replica::Replica::checkout`), in its own task as `execute` does.
pub async fn execute_on(conn: Conn, job: CallJob) -> Result<Executed, ExecError> {
    spawned(Box::pin(async move {
        crate::trace::transaction(run_on(conn, job)).await
    }))
    .await
}

async fn spawned(
    call: std::pin::Pin<Box<dyn std::future::Future<Output = Result<Executed, ExecError>> + Send>>,
) -> Result<Executed, ExecError> {
    match tokio::spawn(crate::trace::carry(call)).await {
        Ok(result) => result,
        Err(e) => {
            error!(cause = %e, "call task failed");
            Err(ExecError::TaskFailed)
        }
    }
}

async fn run(pool: &Pool, job: CallJob) -> Result<Executed, ExecError> {
    let read_only = job.read_only;
    match run_call(pool, job).await {
        // A batch's failed call is judged as that call alone would be.
        Err(ExecError::InBatch { index, error }) => Err(ExecError::InBatch {
            index,
            error: Box::new(judged(pool, read_only, *error).await),
        }),
        Err(e) => Err(judged(pool, read_only, e).await),
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

/// Ends the transaction with COMMIT. For a call that may write, when the
/// pool reports positions, the same message also reads the WAL position
/// the COMMIT reached.
async fn commit(conn: &PgConn, read_only: bool) -> Result<Option<Lsn>, tokio_postgres::Error> {
    end_reading_lsn(conn, true, !read_only).await
}

/// COMMIT or ROLLBACK, and the WAL position after it when `lsn` is asked
/// and the pool reports positions.
async fn end_reading_lsn(
    conn: &PgConn,
    commit: bool,
    lsn: bool,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    let lsn = lsn && conn.reports_lsn;
    let sql = match (commit, lsn) {
        (true, false) => "COMMIT",
        (false, false) => "ROLLBACK",
        (true, true) => COMMIT_LSN_SQL,
        (false, true) => ROLLBACK_LSN_SQL,
    };
    if !lsn {
        return conn.client.batch_execute(sql).await.map(|()| None);
    }
    let messages = conn.client.simple_query(sql).await?;
    Ok(messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => {
            Lsn::from_position_row(row, conn.wal).map(|(lsn, _)| lsn)
        }
        _ => None,
    }))
}

async fn run_call(pool: &Pool, job: CallJob) -> Result<Executed, ExecError> {
    let conn = checkout(pool).await?;
    crate::trace::transaction(run_on(conn, job)).await
}

async fn run_on(mut conn: Conn, job: CallJob) -> Result<Executed, ExecError> {
    let anon = job.anon;
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, anon);
    let cached = if job.transient && conn.prepares() {
        None
    } else {
        conn.statement(&job.sql)
    };
    // The pre-request function's statement: Some(None) when there is none.
    let pre_cached = match &job.pre_request {
        None => Some(None),
        Some(sql) => conn.statement(sql).map(Some),
    };
    let simple =
        job.checks.is_empty() && job.idempotency.is_none() && !job.rollback && job.batch.is_none();
    let rollback = job.rollback;
    conn.clear_unreplicated();
    if let (true, Some(call), Some(pre)) = (simple, &cached, &pre_cached) {
        // The common case: one round trip.
        let result = pipelined(&conn, &job, pre.as_ref(), call).await?;
        replicated(&conn)?;
        return Ok(Executed::Called(result));
    }
    let mut job_read_only = true;
    // The first call of a statement on a connection, and calls that
    // decide after the call, are boxed: their futures would otherwise
    // size every call's task, which is moved when it is spawned.
    let outcome = match Box::pin(open(&mut conn, &job, cached, pre_cached)).await {
        Ok(call) if simple => {
            // First call of this statement on this connection: the call
            // and COMMIT go together, one round trip after the Parse.
            let args = job.binds();
            let (c, e) = futures_util::join!(
                conn.query_row(&call, &args, &[]),
                commit(&conn, job.read_only),
            );
            let ended = match (c, e) {
                (Ok(row), Ok(lsn)) => Ok(CallResult {
                    commit_lsn: lsn,
                    ..read_call_row(row.as_ref())
                }),
                (Err(e), _) | (Ok(_), Err(e)) => Err(fail(e)),
            };
            return match ended {
                Ok(result) => {
                    replicated(&conn)?;
                    Ok(Executed::Called(result))
                }
                Err(e) => {
                    if conn.client.is_closed() {
                        let _ = Object::take(conn);
                    }
                    Err(e)
                }
            };
        }
        Ok(call) => {
            job_read_only = job.read_only;
            Box::pin(stepwise(&mut conn, job, &call)).await
        }
        Err(e) => Err(e),
    };
    // A replay wrote nothing now, but its WAL position is at or after the
    // original call's COMMIT, which is what the client needs to read it back.
    let ended = match &outcome {
        Ok((_, true)) if !rollback => commit(&conn, job_read_only).await,
        Ok((Executed::Replayed(..), false)) => end_reading_lsn(&conn, false, !job_read_only).await,
        _ => end_reading_lsn(&conn, false, false).await,
    };
    match ended {
        Ok(lsn) => {
            replicated(&conn)?;
            outcome.map(|(executed, _)| with_lsn(executed, lsn))
        }
        Err(e) => {
            // The transaction's fate is unknown: never hand this connection
            // to another request.
            let _ = Object::take(conn);
            match outcome {
                Ok(_) => Err(fail(e)),
                Err(first) => Err(first),
            }
        }
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

/// The WAL position at the end of the call's transaction, on its result.
fn with_lsn(executed: Executed, lsn: Option<Lsn>) -> Executed {
    match executed {
        Executed::Called(result) => Executed::Called(CallResult {
            commit_lsn: lsn,
            ..result
        }),
        Executed::Replayed(stored, _) => Executed::Replayed(stored, lsn),
        Executed::Batch(results, _) => Executed::Batch(results, lsn),
        Executed::Failed(api) => Executed::Failed(api),
    }
}

/// How the transaction starts: with the isolation level the function
/// asks for, if any, and READ ONLY for a read-only call (which never
/// carries an `Idempotency-Key`: a call that cannot write stores nothing).
pub(super) fn begin_sql(job: &CallJob) -> Cow<'static, str> {
    match (job.isolation, job.read_only) {
        (None, true) => Cow::Borrowed("BEGIN READ ONLY"),
        (None, false) => Cow::Borrowed("BEGIN"),
        (Some(level), true) => Cow::Owned(format!("BEGIN ISOLATION LEVEL {level} READ ONLY")),
        (Some(level), false) => Cow::Owned(format!("BEGIN ISOLATION LEVEL {level}")),
    }
}

/// The pre-request function, if there is one, run after the settings.
pub(super) async fn pre_request(
    conn: &PgConn,
    pre: Option<&Prepared>,
) -> Result<(), tokio_postgres::Error> {
    match pre {
        Some(statement) => conn.query_row(statement, &[], &[]).await.map(|_| ()),
        None => Ok(()),
    }
}

/// `BEGIN; settings; [pre-request;] call; COMMIT` as one pipeline: one
/// round trip once the statements are prepared on this connection. An
/// error anywhere aborts the transaction, and the trailing COMMIT then
/// rolls it back: the call statement itself raises when its response
/// settings could not be sent (`response_settings::CALL_TAIL`).
async fn pipelined(
    conn: &PgConn,
    job: &CallJob,
    pre: Option<&Prepared>,
    call: &Prepared,
) -> Result<CallResult, ExecError> {
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, job.anon);
    let client = &conn.client;
    let args = job.binds();
    let (settings, params, types) = job.settings.statement(conn);
    let begin = begin_sql(job);
    let (b, s, p, c, e) = futures_util::join!(
        client.batch_execute(&begin),
        conn.query_row(&settings, &params, types),
        pre_request(conn, pre),
        conn.query_row(call, &args, &[]),
        commit(conn, job.read_only),
    );
    b.map_err(fail)?;
    s.map_err(fail)?;
    p.map_err(fail)?;
    let result = read_call_row(c.map_err(fail)?.as_ref());
    let lsn = e.map_err(fail)?;
    Ok(CallResult {
        commit_lsn: lsn,
        ..result
    })
}

/// Opens the transaction and applies the settings, preparing the call and
/// the pre-request function in the same round trip when this connection
/// has not prepared them yet (after the role switch, so PostgreSQL parses
/// them as the request role); then runs the pre-request function. The
/// transaction stays open, whatever the outcome.
pub(super) async fn open(
    conn: &mut PgConn,
    job: &CallJob,
    cached: Option<Prepared>,
    pre_cached: Option<Option<Prepared>>,
) -> Result<Prepared, ExecError> {
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, job.anon);
    let (settings, params, types) = job.settings.statement(conn);
    let begin = begin_sql(job);
    let client = &conn.client;
    // Only a connection that prepares statements gets here without them.
    let prepare_pre = async {
        match (&pre_cached, &job.pre_request) {
            (Some(pre), _) => Ok(pre.clone()),
            (None, Some(sql)) => client.prepare(sql).await.map(|s| Some(Prepared::Named(s))),
            (None, None) => Ok(None),
        }
    };
    let prepare_call = async {
        match &cached {
            Some(call) => Ok(call.clone()),
            None => client.prepare(&job.sql).await.map(Prepared::Named),
        }
    };
    let (b, s, p, c) = futures_util::join!(
        client.batch_execute(&begin),
        conn.query_row(&settings, &params, types),
        prepare_pre,
        prepare_call,
    );
    b.map_err(fail)?;
    s.map_err(fail)?;
    let pre = p.map_err(fail)?;
    let call = c.map_err(fail)?;
    pre_request(conn, pre.as_ref()).await.map_err(fail)?;
    if let (None, Some(sql), Some(Prepared::Named(statement))) =
        (&pre_cached, &job.pre_request, &pre)
    {
        conn.keep(sql.clone(), statement.clone());
    }
    if let (None, false, Prepared::Named(statement)) = (&cached, job.transient, &call) {
        conn.keep(job.sql.clone(), statement.clone());
    }
    Ok(call)
}

/// A statement of the proxy's own, prepared inside the transaction (as the
/// request role) the first time this connection needs it.
async fn own_statement(
    conn: &mut PgConn,
    sql: &'static str,
) -> Result<Prepared, tokio_postgres::Error> {
    if !conn.prepares() {
        return Ok(Prepared::UnnamedStatic(sql));
    }
    if let Some(s) = conn.own_statement(sql) {
        return Ok(Prepared::Named(s));
    }
    let s = conn.client.prepare(sql).await?;
    conn.keep_own(sql, s.clone());
    Ok(Prepared::Named(s))
}

/// The call inside an open transaction, for calls that decide between
/// COMMIT and ROLLBACK afterwards. Returns whether to commit.
async fn stepwise(
    conn: &mut PgConn,
    job: CallJob,
    call: &Prepared,
) -> Result<(Executed, bool), ExecError> {
    let anon = job.anon;
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, anon);
    if let Some(idem) = &job.idempotency {
        let claim = own_statement(conn, CLAIM_SQL).await.map_err(fail)?;
        let row = conn
            .query_row(&claim, &[&idem.key, &idem.request_hash], &CLAIM_TYPES)
            .await
            .map_err(fail)?
            .ok_or_else(|| ExecError::ClaimState("no row".into()))?;
        let state: String = row.get(0);
        match state.as_str() {
            "claimed" => {}
            "replay" => {
                let stored = StoredResponse {
                    status: row.get::<_, Option<i32>>(1).unwrap_or(200),
                    headers_json: row
                        .get::<_, Option<String>>(2)
                        .unwrap_or_else(|| "[]".to_string()),
                    body: row.get(3),
                };
                return Ok((Executed::Replayed(stored, None), false));
            }
            // The claim raises 422 idempotency_key_reused itself; any
            // other state is a contract break between SQL and proxy.
            other => return Err(ExecError::ClaimState(other.to_string())),
        }
    }
    // Under a key of a caller with a sub, a final error is stored too (as
    // the IETF draft asks): the call runs behind a savepoint, sent in the
    // same round trip, so its effects can be undone and the key kept.
    // A batch stores no error under its key: it rolls back whole, and a
    // retry runs it again.
    let batched = job.batch.is_some();
    let store_errors = job.idempotency.is_some() && !anon && !job.rollback && !batched;
    // The error of the call at `index` of a batch names it.
    let at = |index: usize| {
        move |error: ExecError| {
            if batched {
                ExecError::InBatch {
                    index,
                    error: Box::new(error),
                }
            } else {
                error
            }
        }
    };
    let called = async {
        let first = async {
            let args = job.binds();
            let row = if store_errors {
                let (sp, row) = futures_util::join!(
                    conn.client.batch_execute(SAVEPOINT_SQL),
                    conn.query_row(call, &args, &[]),
                );
                sp.map_err(fail)?;
                row
            } else {
                conn.query_row(call, &args, &[]).await
            }
            .map_err(fail)?;
            // The call statement checked its response settings itself.
            let result = read_call_row(row.as_ref());
            for check in &job.checks {
                check.apply(&result)?;
            }
            Ok::<_, ExecError>(result)
        }
        .await
        .map_err(at(0))?;
        // A batch's further calls, in order, each with its own checks.
        let mut rest = Vec::new();
        let mut kept = Vec::new();
        for (i, step) in job.batch.iter().flatten().enumerate() {
            let (result, keep) = run_step(&*conn, step, anon).await.map_err(at(i + 1))?;
            rest.push(result);
            kept.extend(keep);
        }
        if job.rollback && !job.read_only {
            // As PostgREST before its ROLLBACK: deferred constraints are
            // checked now, so a call that could not commit is not answered
            // as a success.
            conn.client
                .batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
                .await
                .map_err(fail)?;
        }
        Ok::<_, ExecError>((first, rest, kept))
    }
    .await;
    let (result, rest) = match called {
        Ok((first, rest, kept)) => {
            for (sql, statement) in kept {
                conn.keep(sql, statement);
            }
            (first, rest)
        }
        Err(e) => match (
            &job.idempotency,
            store_errors.then(|| final_answer(&e)).flatten(),
        ) {
            (Some(idem), Some(api)) => {
                conn.client
                    .batch_execute(ROLLBACK_TO_SAVEPOINT_SQL)
                    .await
                    .map_err(fail)?;
                store(conn, &idem.key, &stored_error(&api))
                    .await
                    .map_err(fail)?;
                return Ok((Executed::Failed(api), true));
            }
            _ => return Err(e),
        },
    };
    // Every call's result in order: one for a single call.
    let mut results = Vec::with_capacity(1 + rest.len());
    results.push(result);
    results.extend(rest);
    if let Some(idem) = job.idempotency {
        let stored = (idem.shape)(&results).map_err(ExecError::Rejected)?;
        store(conn, &idem.key, &stored).await.map_err(fail)?;
    }
    if batched {
        return Ok((Executed::Batch(results, None), true));
    }
    let one = results.pop().ok_or(ExecError::TaskFailed)?;
    Ok((Executed::Called(one), true))
}

/// Stores `stored` as the response under the `Idempotency-Key` this
/// transaction claimed (`pgrpc_http.http_idempotency_store`).
async fn store(
    conn: &mut PgConn,
    key: &str,
    stored: &StoredResponse,
) -> Result<(), tokio_postgres::Error> {
    let statement = own_statement(conn, STORE_SQL).await?;
    conn.query_row(
        &statement,
        &[&key, &stored.status, &stored.headers_json, &stored.body],
        &STORE_TYPES,
    )
    .await
    .map(|_| ())
}

/// One call of a batch after its first, in the open transaction: its
/// statement (prepared now, as the request role, if this connection has
/// not prepared it yet; returned to be kept unless it is transient), the
/// call, and its checks.
async fn run_step(
    conn: &PgConn,
    step: &Step,
    anon: bool,
) -> Result<(CallResult, Option<(Arc<str>, Statement)>), ExecError> {
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, anon);
    let cached = if step.transient && conn.prepares() {
        None
    } else {
        conn.statement(&step.sql)
    };
    let (statement, keep) = match cached {
        Some(statement) => (statement, None),
        None => {
            let s = conn.client.prepare(&step.sql).await.map_err(fail)?;
            let keep = (!step.transient).then(|| (step.sql.clone(), s.clone()));
            (Prepared::Named(s), keep)
        }
    };
    let row = conn
        .query_row(&statement, &step.binds(), &[])
        .await
        .map_err(fail)?;
    let result = read_call_row(row.as_ref());
    for check in &step.checks {
        check.apply(&result)?;
    }
    Ok((result, keep))
}

const SAVEPOINT_SQL: &str = "SAVEPOINT pgrpc_call";
const ROLLBACK_TO_SAVEPOINT_SQL: &str = "ROLLBACK TO SAVEPOINT pgrpc_call";

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

/// The body: text, or the raw bytes of a `bytea` (a media type's body).
fn body_column(row: &tokio_postgres::Row) -> Option<Bytes> {
    if row.columns().first().map(|c| c.type_()) == Some(&Type::BYTEA) {
        row.try_get::<_, Option<Vec<u8>>>(0)
            .ok()
            .flatten()
            .map(Bytes::from)
    } else {
        row.try_get::<_, Option<String>>(0)
            .ok()
            .flatten()
            .map(Bytes::from)
    }
}

/// The call statement's one row (it aggregates, so it always has one; an
/// absent row reads as no rows).
fn read_call_row(row: Option<&tokio_postgres::Row>) -> CallResult {
    let Some(row) = row else {
        return CallResult {
            body: None,
            rows: 0,
            headers: None,
            status: None,
            total: None,
            commit_lsn: None,
        };
    };
    CallResult {
        body: body_column(row),
        rows: row.get(1),
        headers: row.get::<_, Option<String>>(2).filter(|s| !s.is_empty()),
        status: row.get::<_, Option<String>>(3).filter(|s| !s.is_empty()),
        total: row.get(4),
        commit_lsn: None,
    }
}
