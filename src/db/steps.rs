//! A call's transaction as one list of steps (`Op`), and the one
//! interpreter that runs every list: a plain call, a call with checks, a
//! call under an `Idempotency-Key`, a batch, the opening of a streamed
//! call.
//!
//! `program` writes the list from the call (`CallJob`) and what the
//! connection has already prepared. `run` sends the steps in segments:
//! every step of a segment goes out in one pipeline (one round trip), and a
//! segment ends only where a later step needs an answer first (a statement
//! being prepared, the `Idempotency-Key` claim's state, a result to check
//! or to store). Pipelining is thus a property of the list, not a second
//! copy of the executor: a call whose statements are prepared and that
//! decides nothing after the call is one segment, `BEGIN; settings;
//! [pre-request;] call; COMMIT`.
//!
//! An error anywhere aborts the transaction; the steps already sent behind
//! it fail with it (a COMMIT sent behind it rolls it back), and the answer
//! is the first error, in the list's order.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio_postgres::types::Type;
use tokio_postgres::{Row, RowStream, Statement};

use super::call::{CallJob, CallResult, ExecError, Shaper, StoredResponse};
use super::exec::{begin_sql, end_reading_lsn};
use super::lsn::Lsn;
use super::pool::{PgConn, Prepared};

const CLAIM_SQL: &str = "SELECT state, response_status, response_headers::text, response_body \
     FROM pgrpc_http.http_idempotency_claim($1, $2)";
const STORE_SQL: &str = "SELECT pgrpc_http.http_idempotency_store($1, $2, $3::text::jsonb, $4)";
const CLAIM_TYPES: [Type; 2] = [Type::TEXT, Type::TEXT];
const STORE_TYPES: [Type; 4] = [Type::TEXT, Type::INT4, Type::TEXT, Type::TEXT];
const SAVEPOINT_SQL: &str = "SAVEPOINT pgrpc_call";
const ROLLBACK_TO_SAVEPOINT_SQL: &str = "ROLLBACK TO SAVEPOINT pgrpc_call";

/// One step of a call's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// `BEGIN`, with the isolation level and READ ONLY as the call asks.
    Begin,
    /// The request's settings (`pool::settings_sql`): role, claims,
    /// headers, search_path, the role's own settings.
    Settings,
    /// Prepares a statement on this connection, after `Settings`, so that
    /// PostgreSQL parses it as the request role.
    Prepare(Stmt),
    /// The pre-request function.
    PreRequest,
    /// Claims the `Idempotency-Key`: a replay ends the list here.
    Claim,
    /// A savepoint before the call, so that a final error can be stored
    /// under the key with the call's effects undone.
    Savepoint,
    /// The call at this index (0: the job's own; then a batch's), and its
    /// checks.
    Call(usize),
    /// `SET CONSTRAINTS ALL IMMEDIATE` before a ROLLBACK the client asked
    /// for, as PostgREST does: a call that could not commit is not
    /// answered as a success.
    Immediate,
    /// Stores the response under the key: the calls' results, shaped, or
    /// a final error.
    Store,
    /// Back to the savepoint, after a final error under a key.
    RollbackToSavepoint,
    /// Starts the streaming statement and hands its rows over (a streamed
    /// call's last step: the stream ends the transaction).
    Rows,
    /// COMMIT or ROLLBACK, then the WAL position when `lsn` (and the pool
    /// reports positions).
    End { commit: bool, lsn: bool },
}

/// A statement `Op::Prepare` prepares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stmt {
    Call(usize),
    PreRequest,
    Claim,
    Store,
}

/// What a step answered.
enum Out {
    Done,
    Row(Option<Row>),
    Prepared(Statement),
    Lsn(Option<Lsn>),
    Rows(RowStream),
}

/// Where a list stopped short.
pub(super) struct Failure {
    pub error: ExecError,
    /// The call whose step failed (its index), if it was a call's.
    pub call: Option<usize>,
}

/// The statements, results and outcome of one run of a list.
#[derive(Default)]
pub(super) struct State {
    calls: Vec<Option<Prepared>>,
    pre: Option<Prepared>,
    claim: Option<Prepared>,
    store: Option<Prepared>,
    pub results: Vec<CallResult>,
    /// The response `Op::Store` stores (shaped from the results when the
    /// step comes, unless an error was set here first).
    pub stored: Option<StoredResponse>,
    /// The `Idempotency-Key` and the request's hash, and how the results
    /// become the stored response (taken off the job by `program`).
    key: Option<(String, String)>,
    shape: Option<Shaper>,
    /// A final error of the call is stored under the key.
    pub stores_errors: bool,
    /// The stored response a claim found: the call is a replay.
    pub replay: Option<StoredResponse>,
    /// Whether an `End` step answered: the transaction is over.
    pub ended: bool,
    /// Whether an `End` step failed: the transaction's fate is unknown.
    pub end_failed: bool,
    pub lsn: Option<Lsn>,
    pub rows: Option<RowStream>,
}

/// The steps of `job`'s transaction on `conn`, from BEGIN to its end (or
/// to `Op::Rows` for a streamed call), and the state they start from.
pub(super) fn program(conn: &PgConn, job: &mut CallJob, streamed: bool) -> (Vec<Op>, State) {
    let mut st = State {
        stores_errors: stores_errors(job),
        ..State::default()
    };
    if let Some(idem) = job.idempotency.take() {
        st.key = Some((idem.key, idem.request_hash));
        st.shape = Some(idem.shape);
    }
    let job = &*job;
    let mut ops = Vec::with_capacity(8);
    ops.extend([Op::Begin, Op::Settings]);
    let idempotent = st.key.is_some() && !streamed;
    let calls = 1 + job.batch.as_ref().map_or(0, Vec::len);
    st.calls = (0..calls)
        .map(|i| {
            let (sql, transient) = call_sql(job, i);
            if transient && conn.prepares() {
                None
            } else {
                conn.statement(sql)
            }
        })
        .collect();
    if let Some(sql) = &job.pre_request {
        st.pre = conn.statement(sql);
        if st.pre.is_none() {
            ops.push(Op::Prepare(Stmt::PreRequest));
        }
    }
    if st.calls[0].is_none() {
        ops.push(Op::Prepare(Stmt::Call(0)));
    }
    if idempotent {
        st.claim = own(conn, CLAIM_SQL);
        st.store = own(conn, STORE_SQL);
        if st.claim.is_none() {
            ops.push(Op::Prepare(Stmt::Claim));
        }
        if st.store.is_none() {
            ops.push(Op::Prepare(Stmt::Store));
        }
    }
    if job.pre_request.is_some() {
        ops.push(Op::PreRequest);
    }
    if streamed {
        ops.push(Op::Rows);
        return (ops, st);
    }
    if idempotent {
        ops.push(Op::Claim);
    }
    if st.stores_errors {
        ops.push(Op::Savepoint);
    }
    ops.push(Op::Call(0));
    for i in 1..calls {
        if st.calls[i].is_none() {
            ops.push(Op::Prepare(Stmt::Call(i)));
        }
        ops.push(Op::Call(i));
    }
    if job.rollback && !job.read_only {
        ops.push(Op::Immediate);
    }
    if idempotent {
        ops.push(Op::Store);
    }
    ops.push(Op::End {
        commit: !job.rollback,
        lsn: !job.rollback && !job.read_only,
    });
    (ops, st)
}

/// The steps after a final error under a key: back to the savepoint, the
/// error stored, COMMIT.
pub(super) const RECOVER: [Op; 3] = [
    Op::RollbackToSavepoint,
    Op::Store,
    Op::End {
        commit: true,
        lsn: true,
    },
];

/// Whether a final error of the call is stored under its key (the IETF
/// draft): a caller with a `sub`, a call that may commit, not a batch (a
/// batch rolls back whole, and a retry runs it again).
fn stores_errors(job: &CallJob) -> bool {
    job.idempotency.is_some() && !job.anon && !job.rollback && job.batch.is_none()
}

fn own(conn: &PgConn, sql: &'static str) -> Option<Prepared> {
    if !conn.prepares() {
        return Some(Prepared::UnnamedStatic(sql));
    }
    conn.own_statement(sql).map(Prepared::Named)
}

fn call_sql(job: &CallJob, i: usize) -> (&Arc<str>, bool) {
    match i.checked_sub(1).and_then(|j| job.batch.as_ref()?.get(j)) {
        Some(step) => (&step.sql, step.transient),
        None => (&job.sql, job.transient),
    }
}

/// Whether `next` must wait for the answers of the steps up to `prev`.
fn waits(job: &CallJob, st: &State, prev: Op, next: Op) -> bool {
    match (prev, next) {
        // Prepared together, used after.
        (Op::Prepare(_), Op::Prepare(_)) => false,
        (Op::Prepare(_), _) => true,
        (Op::Claim, _) => true,
        // The checks of a call decide whether anything follows; a stored
        // response needs every result; a final error goes back to the
        // savepoint.
        (Op::Call(i), _) if !checks(job, i).is_empty() || st.stores_errors => true,
        (_, Op::Store) => true,
        _ => false,
    }
}

fn checks(job: &CallJob, i: usize) -> &[super::call::Check] {
    match i.checked_sub(1).and_then(|j| job.batch.as_ref()?.get(j)) {
        Some(step) => &step.checks,
        None => &job.checks,
    }
}

/// Runs `ops` in segments (see the module's comment). Statements prepared
/// here are kept on the connection unless transient. Stops at the first
/// error, or after a claim that found a response to replay (the caller
/// then ends the transaction).
pub(super) async fn run(
    conn: &mut PgConn,
    job: &CallJob,
    ops: &[Op],
    st: &mut State,
) -> Result<(), Failure> {
    let mut start = 0;
    while start < ops.len() {
        let mut end = start + 1;
        while end < ops.len() && !waits(job, st, ops[end - 1], ops[end]) {
            end += 1;
        }
        let segment = &ops[start..end];
        if segment[0] == Op::Store && st.stored.is_none() {
            let shape = st.shape.take().ok_or(Failure {
                error: ExecError::TaskFailed,
                call: None,
            })?;
            st.stored = Some(shape(&st.results).map_err(|api| Failure {
                error: ExecError::Rejected(api),
                call: None,
            })?);
        }
        let outs = {
            let shared: &PgConn = conn;
            let state: &State = st;
            join_all(segment.iter().map(|&op| step(shared, job, state, op))).await
        };
        let mut first: Option<Failure> = None;
        for (&op, out) in segment.iter().zip(outs) {
            let is_end = matches!(op, Op::End { .. });
            match out {
                Ok(out) if first.is_none() => {
                    if let Err(error) = take(conn, job, st, op, out) {
                        first = Some(Failure {
                            error,
                            call: call_of(op),
                        });
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    // An end that failed leaves the transaction in doubt.
                    st.end_failed |= is_end;
                    if first.is_none() {
                        first = Some(Failure {
                            error,
                            call: call_of(op),
                        });
                    }
                }
            }
            // A COMMIT behind a failed step rolled the transaction back.
            st.ended |= is_end;
        }
        if let Some(failure) = first {
            return Err(failure);
        }
        if st.replay.is_some() {
            return Ok(());
        }
        start = end;
    }
    Ok(())
}

/// The call a step belongs to, for a batch's error.
fn call_of(op: Op) -> Option<usize> {
    match op {
        Op::Call(i) | Op::Prepare(Stmt::Call(i)) => Some(i),
        _ => None,
    }
}

/// Sends one step and waits for its answer.
async fn step(conn: &PgConn, job: &CallJob, st: &State, op: Op) -> Result<Out, ExecError> {
    send(conn, job, st, op)
        .await
        .unwrap_or(Err(ExecError::TaskFailed))
}

/// A step's answer, or none for a step whose statement is not prepared
/// (unreachable: an earlier segment prepares it).
async fn send(conn: &PgConn, job: &CallJob, st: &State, op: Op) -> Option<Result<Out, ExecError>> {
    let client = &conn.client;
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, job.anon);
    let answer = match op {
        Op::Begin => client
            .batch_execute(&begin_sql(job))
            .await
            .map(|()| Out::Done),
        Op::Settings => {
            let (settings, params, types) = job.settings.statement(conn);
            conn.query_row(&settings, &params, types)
                .await
                .map(|_| Out::Done)
        }
        Op::Prepare(which) => {
            let sql: &str = match which {
                Stmt::Call(i) => call_sql(job, i).0,
                Stmt::PreRequest => job.pre_request.as_deref().unwrap_or("SELECT 1"),
                Stmt::Claim => CLAIM_SQL,
                Stmt::Store => STORE_SQL,
            };
            client.prepare(sql).await.map(Out::Prepared)
        }
        Op::PreRequest => match &st.pre {
            Some(pre) => conn.query_row(pre, &[], &[]).await.map(|_| Out::Done),
            None => return None,
        },
        Op::Claim => match (&st.claim, &st.key) {
            (Some(claim), Some((key, hash))) => conn
                .query_row(claim, &[key, hash], &CLAIM_TYPES)
                .await
                .map(Out::Row),
            _ => return None,
        },
        Op::Savepoint => client
            .batch_execute(SAVEPOINT_SQL)
            .await
            .map(|()| Out::Done),
        Op::RollbackToSavepoint => client
            .batch_execute(ROLLBACK_TO_SAVEPOINT_SQL)
            .await
            .map(|()| Out::Done),
        Op::Call(i) => {
            let Some(Some(statement)) = st.calls.get(i) else {
                return None;
            };
            let row = match i.checked_sub(1).and_then(|j| job.batch.as_ref()?.get(j)) {
                Some(call) => conn.query_row(statement, &call.binds(), &[]).await,
                None => conn.query_row(statement, &job.binds(), &[]).await,
            };
            row.map(Out::Row)
        }
        Op::Immediate => client
            .batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
            .await
            .map(|()| Out::Done),
        Op::Store => match (&st.store, &st.key, &st.stored) {
            (Some(store), Some((key, _)), Some(stored)) => conn
                .query_row(
                    store,
                    &[key, &stored.status, &stored.headers_json, &stored.body],
                    &STORE_TYPES,
                )
                .await
                .map(|_| Out::Done),
            _ => return None,
        },
        Op::Rows => match st.calls.first() {
            Some(Some(call)) => super::stream::rows(conn, call, job).await.map(Out::Rows),
            _ => return None,
        },
        Op::End { commit, lsn } => end_reading_lsn(conn, commit, lsn).await.map(Out::Lsn),
    };
    Some(answer.map_err(fail))
}

/// Takes a step's answer into the state: a statement prepared, a call's
/// result (and its checks), a claim's state, the WAL position.
fn take(
    conn: &mut PgConn,
    job: &CallJob,
    st: &mut State,
    op: Op,
    out: Out,
) -> Result<(), ExecError> {
    match (op, out) {
        (Op::Prepare(which), Out::Prepared(statement)) => {
            let prepared = Some(Prepared::Named(statement.clone()));
            match which {
                Stmt::Call(i) => {
                    let (sql, transient) = call_sql(job, i);
                    if !transient {
                        conn.keep(sql.clone(), statement);
                    }
                    if let Some(slot) = st.calls.get_mut(i) {
                        *slot = prepared;
                    }
                }
                Stmt::PreRequest => {
                    if let Some(sql) = &job.pre_request {
                        conn.keep(sql.clone(), statement);
                    }
                    st.pre = prepared;
                }
                Stmt::Claim => {
                    conn.keep_own(CLAIM_SQL, statement);
                    st.claim = prepared;
                }
                Stmt::Store => {
                    conn.keep_own(STORE_SQL, statement);
                    st.store = prepared;
                }
            }
        }
        (Op::Claim, Out::Row(row)) => {
            let row = row.ok_or_else(|| ExecError::ClaimState("no row".into()))?;
            let state: String = row.get(0);
            match state.as_str() {
                "claimed" => {}
                "replay" => {
                    st.replay = Some(StoredResponse {
                        status: row.get::<_, Option<i32>>(1).unwrap_or(200),
                        headers_json: row
                            .get::<_, Option<String>>(2)
                            .unwrap_or_else(|| "[]".to_string()),
                        body: row.get(3),
                    });
                }
                // The claim raises 422 idempotency_key_reused itself; any
                // other state is a contract break between SQL and proxy.
                other => return Err(ExecError::ClaimState(other.to_string())),
            }
        }
        (Op::Call(i), Out::Row(row)) => {
            // The call statement checked its response settings itself.
            let result = CallResult::from_row(row.as_ref());
            for check in checks(job, i) {
                check.apply(&result)?;
            }
            st.results.push(result);
        }
        (Op::Rows, Out::Rows(rows)) => st.rows = Some(rows),
        (Op::End { .. }, Out::Lsn(lsn)) => st.lsn = lsn,
        _ => {}
    }
    Ok(())
}
