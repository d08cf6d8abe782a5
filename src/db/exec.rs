//! The executor: the one place that checks out a connection, prepares the
//! call and owns its transaction, for every kind of call (plain, singular,
//! with an `Idempotency-Key`).
//!
//! Each call runs in a task of its own. When a client disconnects, hyper
//! drops the request's future, but not this task: the transaction still ends
//! here, with COMMIT or ROLLBACK, before the connection goes back to the
//! pool. A connection whose transaction state is in doubt (COMMIT or
//! ROLLBACK itself failed) is detached from the pool and closed, so nothing
//! ever rides on another request's COMMIT.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use deadpool::managed::{Object, PoolError, TimeoutType};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::lsn::Lsn;
use super::pool::{Conn, PgConn, Pool, Prepared, SETTINGS_TYPES};
use tracing::error;

use super::schema::{RoleSettings, SchemaCache, TIMEZONES_SQL};
use crate::error::{ApiError, Fault, Pgrst};
use crate::response_settings::{self, SettingsError};

/// Why a call did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("Timed out acquiring connection from connection pool.")]
    PoolTimeout,
    #[error("Database client error. Retrying the connection.")]
    Unavailable(String),
    #[error("Database connection lost")]
    Lost(String),
    /// PostgreSQL refused the call: its SQLSTATE decides the answer.
    #[error("{}", .error.message())]
    Postgres {
        error: Box<tokio_postgres::error::DbError>,
        anon: bool,
    },
    #[error("JSON object requested, multiple (or no) rows returned")]
    Singularity(i64),
    /// The call's result cannot become the response stored for its key.
    #[error("{}", .0.message)]
    Rejected(ApiError),
    /// A write reached a node that only reads: a standby, or a primary
    /// that was demoted or is still finishing its promotion. Retryable.
    #[error("The database node is read-only; retry shortly")]
    ReadOnlyNode(String),
    /// The COMMIT succeeded on the primary, but PostgreSQL stopped waiting
    /// for its synchronous standby (the wait was cancelled): the change may
    /// be on no standby, and a failover could lose it. Not acknowledged.
    #[error("The commit was not confirmed by a synchronous standby")]
    Unreplicated,
    /// The call set `response.headers` or `response.status` to something
    /// the proxy cannot send: refused before COMMIT, the call rolled back.
    #[error("{0}")]
    Settings(SettingsError),
    #[error("The call's task failed")]
    TaskFailed,
    #[error("unexpected idempotency claim state {0:?}")]
    ClaimState(String),
}

impl ExecError {
    fn from_pg(e: tokio_postgres::Error, anon: bool) -> ExecError {
        match e.as_db_error() {
            Some(db) => ExecError::Postgres {
                error: Box::new(db.clone()),
                anon,
            },
            None => {
                error!(cause = %e, "database connection error");
                ExecError::Lost(e.to_string())
            }
        }
    }
}

impl Fault for ExecError {
    fn pgrst(&self) -> Pgrst {
        match self {
            ExecError::PoolTimeout => Pgrst::PoolTimeout,
            ExecError::Unavailable(_)
            | ExecError::Lost(_)
            | ExecError::ReadOnlyNode(_)
            | ExecError::Unreplicated => Pgrst::Connection,
            ExecError::Singularity(_) => Pgrst::Singularity,
            ExecError::Settings(e) => e.pgrst(),
            ExecError::TaskFailed
            | ExecError::ClaimState(_)
            | ExecError::Postgres { .. }
            | ExecError::Rejected(_) => Pgrst::Internal,
        }
    }
    fn postgres(&self) -> Option<(&tokio_postgres::error::DbError, bool)> {
        match self {
            ExecError::Postgres { error, anon } => Some((error, *anon)),
            _ => None,
        }
    }
    fn answer(&self) -> Option<&ApiError> {
        match self {
            ExecError::Rejected(api) => Some(api),
            _ => None,
        }
    }
    fn details(&self) -> Option<String> {
        match self {
            ExecError::Unavailable(d) | ExecError::Lost(d) | ExecError::ReadOnlyNode(d) => {
                Some(d.clone())
            }
            ExecError::Singularity(rows) => Some(format!("The result contains {rows} rows")),
            ExecError::Settings(e) => e.details(),
            ExecError::Unreplicated => Some(
                "PostgreSQL stopped waiting for the synchronous standby (the wait was cancelled): \
                 the change is committed on the primary but may be on no standby."
                    .into(),
            ),
            _ => None,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            ExecError::Unreplicated => Some(
                "Retry with the same Idempotency-Key: it replays the stored answer if the change \
                 survived, and runs the call once if it was lost."
                    .into(),
            ),
            _ => None,
        }
    }
}

/// What the call statement returns: `(body, rows, response.headers, response.status)`.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// The body column: text, or bytes for a media type over `bytea`.
    pub body: Option<Bytes>,
    pub rows: i64,
    pub headers: Option<String>,
    pub status: Option<String>,
    /// The rows before `limit`/`offset`, when a count was asked for and
    /// the statement paginates; otherwise `rows` is the total.
    pub total: Option<i64>,
    /// The primary's WAL position after COMMIT, for a call that may write
    /// (`X-Pgrpc-Lsn`).
    pub commit_lsn: Option<Lsn>,
}

/// The per-request settings, applied with `set_config(..., true)` so they
/// last for the transaction only: the role, the request GUCs PostgREST
/// sets, and the role's own settings (`ALTER ROLE … SET`), which `SET ROLE`
/// alone would not apply.
#[derive(Clone)]
pub struct RequestSettings {
    pub role: String,
    pub claims: String,
    pub method: String,
    pub path: String,
    pub headers: String,
    pub role_settings: Arc<RoleSettings>,
    /// The profile's schema, then `PGRPC_EXTRA_SEARCH_PATH`, quoted.
    pub search_path: String,
    pub cookies: String,
}

impl RequestSettings {
    /// The parameters of `pool::SETTINGS_SQL`.
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 9] {
        [
            &self.role,
            &self.claims,
            &self.method,
            &self.path,
            &self.headers,
            &self.role_settings.names,
            &self.role_settings.values,
            &self.search_path,
            &self.cookies,
        ]
    }
}

/// What the caller's HTTP layer stores for an `Idempotency-Key`, and what a
/// replay gives back.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: i32,
    /// A JSON array of single-key objects, as `response.headers` is.
    pub headers_json: String,
    pub body: Option<String>,
}

/// Turns a call's result into the response stored under its key, inside
/// the transaction (a response that cannot be built rolls the call back).
pub type Shaper = Box<dyn FnOnce(&CallResult) -> Result<StoredResponse, ApiError> + Send + Sync>;

/// A check of a call's result, run inside its transaction.
pub type Check = Arc<dyn Fn(&CallResult) -> Result<(), ApiError> + Send + Sync>;

pub struct IdempotentCall {
    pub key: String,
    pub request_hash: String,
    pub shape: Shaper,
}

/// Everything one call needs, owned, so the task can outlive the request.
pub struct CallJob {
    pub sql: Arc<str>,
    /// `$1` of the call statement: the JSON arguments as text.
    pub args: String,
    /// `$2`, `$3`, …: the values of the query-string operations, as text.
    pub params: Vec<String>,
    /// A statement of one request's own shape: prepared, never kept.
    pub transient: bool,
    /// The call runs READ ONLY: GET and HEAD, and STABLE or IMMUTABLE
    /// functions whatever the method.
    pub read_only: bool,
    /// Exactly one row is required (406 `PGRST116` otherwise).
    pub singular: bool,
    pub settings: RequestSettings,
    /// `ISOLATION LEVEL …` the function asks for (hoisted
    /// default_transaction_isolation).
    pub isolation: Option<&'static str>,
    /// `SELECT <PGRPC_PRE_REQUEST>()`, run after the settings.
    pub pre_request: Option<Arc<str>>,
    /// None for a read-only call: one that cannot write stores nothing
    /// under a key (the header is ignored).
    pub idempotency: Option<IdempotentCall>,
    /// Checks the call's result before COMMIT, for calls whose answer may
    /// still be an error (a counted range past its end): the call is then
    /// rolled back, never committed under an error answer.
    pub check: Option<Check>,
    /// End the transaction with ROLLBACK whatever the outcome
    /// (`Prefer: tx=rollback`, `PGRPC_TX_END`): the result is still
    /// answered, its effects are not kept.
    pub rollback: bool,
    /// The request runs as the anonymous role (42501 is then 401).
    pub anon: bool,
}

impl CallJob {
    /// The same call again, for a read to run once more on the primary
    /// after its replica connection broke; none for a call under an
    /// `Idempotency-Key` (POST only, never a replica read).
    pub fn read_copy(&self) -> Option<CallJob> {
        if self.idempotency.is_some() {
            return None;
        }
        Some(CallJob {
            sql: self.sql.clone(),
            args: self.args.clone(),
            params: self.params.clone(),
            transient: self.transient,
            read_only: self.read_only,
            singular: self.singular,
            settings: self.settings.clone(),
            isolation: self.isolation,
            pre_request: self.pre_request.clone(),
            idempotency: None,
            check: self.check.clone(),
            rollback: self.rollback,
            anon: self.anon,
        })
    }

    /// `$1`, then the operations' values.
    fn binds(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let mut binds: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            Vec::with_capacity(1 + self.params.len());
        binds.push(&self.args);
        binds.extend(
            self.params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        binds
    }
}

#[derive(Debug)]
pub enum Executed {
    Called(CallResult),
    /// A stored response, and the WAL position when it was replayed (at or
    /// after the original call's COMMIT).
    Replayed(StoredResponse, Option<Lsn>),
}

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
    let result = run_call(pool, job).await;
    match result {
        // A call that may write was refused as read-only. Either the node
        // cannot write (a standby, or a primary demoted or still being
        // promoted): retryable, 503; or the function raised 25006 itself,
        // which keeps its 405. The server's own refusal of a write in the
        // read-write transaction the proxy opened can only come from the
        // node; otherwise one question to the node tells them apart. (That
        // question alone can miss: it may run on another connection, after
        // the promotion the failed call raced with has completed.)
        Err(ExecError::Postgres { error, anon })
            if !read_only && *error.code() == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            if error.routine() == Some("PreventCommandIfReadOnly") || node_is_read_only(pool).await
            {
                pool.manager().forget_connections();
                Err(ExecError::ReadOnlyNode(error.message().to_string()))
            } else {
                Err(ExecError::Postgres { error, anon })
            }
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
    let simple = !job.singular && job.idempotency.is_none() && job.check.is_none() && !job.rollback;
    let rollback = job.rollback;
    conn.clear_unreplicated();
    if let (true, Some(call), Some(pre)) = (simple, &cached, &pre_cached) {
        // The common case: one round trip.
        let result = pipelined(&conn, &job, pre.as_ref(), call).await?;
        replicated(&conn)?;
        return Ok(Executed::Called(result));
    }
    let mut job_read_only = true;
    let outcome = match open(&mut conn, &job, cached, pre_cached).await {
        Ok(call) if simple => {
            // First call of this statement on this connection: the call,
            // the settings' check and COMMIT go together, one round trip
            // after the Parse.
            let args = job.binds();
            let (c, k, e) = futures_util::join!(
                conn.query_row(&call, &args, &[]),
                check_settings(&conn, job.read_only),
                commit(&conn, job.read_only),
            );
            let ended = match (c, e) {
                (Ok(row), Ok(lsn)) => {
                    let result = read_call_row(row.as_ref());
                    k.map_err(|e| refused(&result, e, anon))
                        .map(|()| CallResult {
                            commit_lsn: lsn,
                            ..result
                        })
                }
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
            stepwise(&mut conn, job, &call).await
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
    }
}

/// How the transaction starts: with the isolation level the function
/// asks for, if any, and READ ONLY for a read-only call (which never
/// carries an `Idempotency-Key`: a call that cannot write stores nothing).
fn begin_sql(job: &CallJob) -> Cow<'static, str> {
    match (job.isolation, job.read_only) {
        (None, true) => Cow::Borrowed("BEGIN READ ONLY"),
        (None, false) => Cow::Borrowed("BEGIN"),
        (Some(level), true) => Cow::Owned(format!("BEGIN ISOLATION LEVEL {level} READ ONLY")),
        (Some(level), false) => Cow::Owned(format!("BEGIN ISOLATION LEVEL {level}")),
    }
}

/// The pre-request function, if there is one, run after the settings.
async fn pre_request(conn: &PgConn, pre: Option<&Prepared>) -> Result<(), tokio_postgres::Error> {
    match pre {
        Some(statement) => conn.query_row(statement, &[], &[]).await.map(|_| ()),
        None => Ok(()),
    }
}

/// `BEGIN; settings; [pre-request;] call; [check;] COMMIT` as one
/// pipeline: one round trip once the statements are prepared on this
/// connection. An error anywhere aborts the transaction, and the trailing
/// COMMIT then rolls it back: the check of the response settings, for a
/// call that may write, raises when the answer could not be sent.
async fn pipelined(
    conn: &PgConn,
    job: &CallJob,
    pre: Option<&Prepared>,
    call: &Prepared,
) -> Result<CallResult, ExecError> {
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, job.anon);
    let client = &conn.client;
    let args = job.binds();
    let params = job.settings.params();
    let begin = begin_sql(job);
    let settings = conn.settings();
    let (b, s, p, c, k, e) = futures_util::join!(
        client.batch_execute(&begin),
        conn.query_row(&settings, &params, &SETTINGS_TYPES),
        pre_request(conn, pre),
        conn.query_row(call, &args, &[]),
        check_settings(conn, job.read_only),
        commit(conn, job.read_only),
    );
    b.map_err(fail)?;
    s.map_err(fail)?;
    p.map_err(fail)?;
    let result = read_call_row(c.map_err(fail)?.as_ref());
    k.map_err(|e| refused(&result, e, job.anon))?;
    let lsn = e.map_err(fail)?;
    Ok(CallResult {
        commit_lsn: lsn,
        ..result
    })
}

/// For a call that may write, the check of its response settings
/// (`response_settings::CHECK_SQL`), sent between the call and COMMIT: it
/// raises, and so aborts the transaction, when the answer could not be
/// sent. A read-only call commits nothing, so the proxy's own parse after
/// it suffices.
async fn check_settings(conn: &PgConn, read_only: bool) -> Result<(), tokio_postgres::Error> {
    if read_only {
        return Ok(());
    }
    conn.query_row(&conn.check(), &[], &[]).await.map(|_| ())
}

/// The check statement failed after the call succeeded: the proxy's own
/// rules, applied to what the call set, say why (`PGRST111`/`PGRST112`).
/// A failure they do not explain (a timeout, a lost connection) keeps its
/// own error.
fn refused(result: &CallResult, e: tokio_postgres::Error, anon: bool) -> ExecError {
    match response_settings::check(result.headers.as_deref(), result.status.as_deref()) {
        Err(refusal) if e.as_db_error().is_some() => ExecError::Settings(refusal),
        _ => ExecError::from_pg(e, anon),
    }
}

/// Opens the transaction and applies the settings, preparing the call and
/// the pre-request function in the same round trip when this connection
/// has not prepared them yet (after the role switch, so PostgreSQL parses
/// them as the request role); then runs the pre-request function. The
/// transaction stays open, whatever the outcome.
async fn open(
    conn: &mut PgConn,
    job: &CallJob,
    cached: Option<Prepared>,
    pre_cached: Option<Option<Prepared>>,
) -> Result<Prepared, ExecError> {
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, job.anon);
    let params = job.settings.params();
    let begin = begin_sql(job);
    let settings = conn.settings();
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
        conn.query_row(&settings, &params, &SETTINGS_TYPES),
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
    let row = conn
        .query_row(call, &job.binds(), &[])
        .await
        .map_err(fail)?;
    let result = read_call_row(row.as_ref());
    // The answer is known before COMMIT here: one that could not be sent
    // rolls the call back.
    response_settings::check(result.headers.as_deref(), result.status.as_deref())
        .map_err(ExecError::Settings)?;
    if job.singular && result.rows != 1 {
        return Err(ExecError::Singularity(result.rows));
    }
    if let Some(check) = &job.check {
        check(&result).map_err(ExecError::Rejected)?;
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
    if let Some(idem) = job.idempotency {
        let stored = (idem.shape)(&result).map_err(ExecError::Rejected)?;
        let store = own_statement(conn, STORE_SQL).await.map_err(fail)?;
        conn.query_row(
            &store,
            &[
                &idem.key,
                &stored.status,
                &stored.headers_json,
                &stored.body,
            ],
            &STORE_TYPES,
        )
        .await
        .map_err(fail)?;
    }
    Ok((Executed::Called(result), true))
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
async fn checkout(pool: &Pool) -> Result<Conn, ExecError> {
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
