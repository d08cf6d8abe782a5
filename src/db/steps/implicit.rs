//! A list sent as one implicit transaction: its statements before a single
//! Sync (`tokio_postgres::Pipeline`), without `BEGIN` and `COMMIT`.
//! PostgreSQL runs the statements before a Sync in one transaction and
//! commits it at the Sync; after an error it skips everything up to the
//! Sync, and the transaction is rolled back.
//!
//! It is how the interpreter sends the commonest list, `BEGIN; settings;
//! [pre-request;] call; COMMIT`, once every statement of it is prepared on
//! the connection: the call's settings (with READ ONLY as
//! `set_config('transaction_read_only', 'on', true)`, `pool::READ_ONLY_SQL`),
//! the pre-request function and the call, then one Sync. PostgreSQL does
//! less for it (no `BEGIN` and `COMMIT` statements, one ReadyForQuery
//! instead of four) and so does the proxy (one request to the connection's
//! driver instead of four). Everything else keeps its explicit
//! transaction: a hoisted isolation level (only `BEGIN` can carry it), a
//! check of the call's result before COMMIT, a WAL position to read after
//! COMMIT, a ROLLBACK the client asked for, an `Idempotency-Key`, a batch,
//! a stream, a statement still to prepare, and every call when nothing is
//! prepared by name (`PGRPC_PREPARED_STATEMENTS=false`).

use tokio_postgres::types::ToSql;
use tokio_postgres::{Pipeline, Statement};

use super::super::call::{CallJob, CallResult, ExecError};
use super::super::pool::{PgConn, Prepared};
use super::{checks, Failure, Op, State};

/// The statements of a list that can run as one implicit transaction, in
/// order: READ ONLY (for a read), the settings, the pre-request function,
/// the call. None when the list needs its explicit transaction.
fn statements(conn: &PgConn, job: &CallJob, ops: &[Op], st: &State) -> Option<Vec<Statement>> {
    if !conn.prepares() || job.isolation.is_some() || !checks(job, 0).is_empty() {
        return None;
    }
    let (pre, lsn) = match ops {
        [Op::Begin, Op::Settings, Op::Call(0), Op::End { commit: true, lsn }] => (None, *lsn),
        [Op::Begin, Op::Settings, Op::PreRequest, Op::Call(0), Op::End { commit: true, lsn }] => {
            match &st.pre {
                Some(Prepared::Named(pre)) => (Some(pre), *lsn),
                _ => return None,
            }
        }
        _ => return None,
    };
    if lsn && conn.reports_lsn {
        return None;
    }
    let Some(Some(Prepared::Named(call))) = st.calls.first() else {
        return None;
    };
    let (Prepared::Named(settings), _, _) = job.settings.statement(conn) else {
        return None;
    };
    let mut statements = Vec::with_capacity(4);
    if job.read_only {
        statements.push(conn.read_only_statement()?.clone());
    }
    statements.push(settings);
    statements.extend(pre.cloned());
    statements.push(call.clone());
    Some(statements)
}

/// Whether `ops` runs as one implicit transaction on `conn`.
pub(super) fn fits(conn: &PgConn, job: &CallJob, ops: &[Op], st: &State) -> bool {
    statements(conn, job, ops, st).is_some()
}

/// Runs `ops` (which `fits`) as one implicit transaction, and takes the
/// call's result into `st` as the explicit list would.
pub(super) async fn run(
    conn: &PgConn,
    job: &CallJob,
    ops: &[Op],
    st: &mut State,
) -> Result<(), Failure> {
    let fail = |error: tokio_postgres::Error, call: Option<usize>| Failure {
        error: ExecError::from_pg(error, job.anon),
        call,
    };
    let Some(statements) = statements(conn, job, ops, st) else {
        return Err(Failure {
            error: ExecError::TaskFailed,
            call: None,
        });
    };
    let count = statements.len();
    let pipeline = encode(job, conn, &statements).map_err(|e| fail(e, None))?;
    let mut answers = conn.client.pipeline(pipeline).map_err(|e| {
        // Nothing was sent: the connection is gone.
        st.end_failed = true;
        fail(e, None)
    })?;
    let mut row = None;
    for index in 0..count {
        match answers.next().await {
            Some(Ok(answer)) => row = answer,
            Some(Err(error)) => {
                // The server stopped here and rolled back. A lost
                // connection, or an answer the driver could not read,
                // leaves the connection in doubt.
                st.ended = true;
                st.end_failed |= error.as_db_error().is_none() || conn.client.is_closed();
                let call = (index + 1 == count).then_some(0);
                let failure = fail(error, call);
                let _ = answers.finish().await;
                return Err(failure);
            }
            None => break,
        }
    }
    // The COMMIT happens at the Sync: an error here is the COMMIT's.
    let end = answers.finish().await;
    st.ended = true;
    if let Err(error) = end {
        st.end_failed |= error.as_db_error().is_none() || conn.client.is_closed();
        return Err(fail(error, None));
    }
    st.results.push(CallResult::from_row(row.as_ref()));
    Ok(())
}

/// The pipeline of `statements`: READ ONLY and the pre-request function
/// take no parameter, the settings theirs, the call its binds.
fn encode(
    job: &CallJob,
    conn: &PgConn,
    statements: &[Statement],
) -> Result<Pipeline, tokio_postgres::Error> {
    let (_, settings, _) = job.settings.statement(conn);
    let mut pipeline = Pipeline::new();
    let last = statements.len() - 1;
    let read_only = usize::from(job.read_only);
    for (i, statement) in statements.iter().enumerate() {
        if i == last {
            pipeline.execute(statement, job.binds())?;
        } else if i == read_only {
            pipeline.execute(statement, settings.iter().copied())?;
        } else {
            pipeline.execute(statement, std::iter::empty::<&(dyn ToSql + Sync)>())?;
        }
    }
    Ok(pipeline)
}
