//! The interpreter of a list of steps: each segment (the steps up to one
//! whose answer a later step needs) goes out as one pipeline, and the
//! answers come back into the list's state in order.

use futures_util::future::join_all;
use tokio_postgres::{Row, RowStream, Statement};

use super::super::call::{CallJob, CallResult, ExecError, StoredResponse};
use super::super::lsn::Lsn;
use super::super::pool::{PgConn, Prepared};
use super::sql::{
    begin_sql, end_reading_lsn, rows, CLAIM_SQL, CLAIM_TYPES, ROLLBACK_TO_SAVEPOINT_SQL,
    SAVEPOINT_SQL, STORE_SQL, STORE_TYPES,
};
use super::{call_sql, checks, implicit, segment_end, Failure, Op, State, Stmt};

/// What a step answered.
enum Out {
    Done,
    Row(Option<Row>),
    Prepared(Statement),
    Lsn(Option<Lsn>),
    Rows(RowStream),
}

/// Runs `ops` in segments (see the module's comment). Statements prepared
/// here are kept on the connection unless transient. Stops at the first
/// error, or after a claim that found a response to replay (the caller
/// then ends the transaction).
pub(in crate::db) async fn run(
    conn: &mut PgConn,
    job: &CallJob,
    ops: &[Op],
    st: &mut State,
) -> Result<(), Failure> {
    match implicit::plan(conn, job, ops, st) {
        Some(Ok(implicit)) => return implicit::run(conn, job, implicit, st).await,
        Some(Err(error)) => {
            return Err(Failure {
                error: ExecError::from_pg(error, job.anon),
                call: None,
            })
        }
        None => {}
    }
    let mut start = 0;
    while start < ops.len() {
        let end = segment_end(job, st, ops, start);
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
            Some(Some(call)) => rows(conn, call, job).await.map(Out::Rows),
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
