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
//! a statement still to prepare, and every call when nothing is prepared
//! by name (`PGRPC_PREPARED_STATEMENTS=false`).
//!
//! A streamed call's opening goes the same way (`plan_rows`): its rows
//! are the last statement's, and they end at the Sync, which commits.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Pipeline, PipelineResponses};

use super::super::call::{CallJob, CallResult, ExecError};
use super::super::pool::{PgConn, Prepared};
use super::{checks, Failure, Op, State};

/// A list ready to go as one implicit transaction: its statements encoded
/// before one Sync.
pub(super) struct Implicit {
    pipeline: Pipeline,
    /// How many statements: the call is the last.
    count: usize,
}

/// The list as one implicit transaction, encoded: READ ONLY (for a read),
/// the settings, the pre-request function, the call. None when the list
/// needs its explicit transaction; an error when a value cannot be
/// encoded.
pub(super) fn plan(
    conn: &PgConn,
    job: &CallJob,
    ops: &[Op],
    st: &State,
) -> Option<Result<Implicit, tokio_postgres::Error>> {
    let (pre, lsn) = match ops {
        [Op::Begin, Op::Settings, Op::Call(0), Op::End { commit: true, lsn }] => (false, *lsn),
        [Op::Begin, Op::Settings, Op::PreRequest, Op::Call(0), Op::End { commit: true, lsn }] => {
            (true, *lsn)
        }
        _ => return None,
    };
    if lsn && conn.reports_lsn {
        return None;
    }
    encode(conn, job, st, pre).map(|encoded| {
        encoded.map(|pipeline| Implicit {
            count: pipeline.len(),
            pipeline,
        })
    })
}

/// The opening of a streamed call as one implicit transaction: READ ONLY,
/// the settings, the pre-request function and the streaming statement
/// before one Sync, for a list `[BEGIN, settings, (pre-request,) rows]`
/// whose statements are prepared. The stream's rows then end at that
/// Sync, which commits (`tokio_postgres::PipelineRows`): no COMMIT
/// follows them. None when the stream needs its explicit transaction (a
/// hoisted isolation level, `tx=rollback`, a statement still to prepare).
pub(in crate::db) fn plan_rows(
    conn: &PgConn,
    job: &CallJob,
    ops: &[Op],
    st: &State,
) -> Option<Result<Pipeline, tokio_postgres::Error>> {
    let pre = match ops {
        [Op::Begin, Op::Settings, Op::Rows] => false,
        [Op::Begin, Op::Settings, Op::PreRequest, Op::Rows] => true,
        _ => return None,
    };
    if job.rollback {
        return None;
    }
    encode(conn, job, st, pre)
}

/// READ ONLY (for a read), the settings, the pre-request function (`pre`)
/// and the call, encoded before one Sync; None unless each is prepared by
/// name on the connection and the call needs no explicit transaction.
fn encode(
    conn: &PgConn,
    job: &CallJob,
    st: &State,
    pre: bool,
) -> Option<Result<Pipeline, tokio_postgres::Error>> {
    if !conn.prepares() || job.isolation.is_some() || !checks(job, 0).is_empty() {
        return None;
    }
    let pre = match (pre, &st.pre) {
        (false, _) => None,
        (true, Some(Prepared::Named(pre))) => Some(pre),
        (true, _) => return None,
    };
    let Some(Some(Prepared::Named(call))) = st.calls.first() else {
        return None;
    };
    let Prepared::Named(settings) = conn.settings(job.settings.role_settings.names.len()) else {
        return None;
    };
    let texts = job.settings.texts();
    let read_only = if job.read_only {
        Some(conn.read_only_statement()?)
    } else {
        None
    };
    let none = std::iter::empty::<&(dyn ToSql + Sync)>;
    let mut pipeline = Pipeline::with_capacity(512);
    let encoded = (|| {
        if let Some(read_only) = read_only {
            pipeline.execute(read_only, none())?;
        }
        match &texts {
            Some((texts, len)) => pipeline.execute_text(&settings, &texts[..*len])?,
            None => pipeline.execute(&settings, job.settings.statement(conn).1)?,
        }
        if let Some(pre) = pre {
            pipeline.execute(pre, none())?;
        }
        pipeline.execute_text(call, &job.bind_texts())
    })();
    Some(encoded.map(|()| pipeline))
}

/// A list sent as one implicit transaction, its answers still to come.
/// It needs nothing of the connection to read them, so a plain read may
/// hand its connection back before they are in (`db::inflight`).
pub(in crate::db) struct Sent {
    answers: PipelineResponses,
    /// How many statements: the call is the last.
    count: usize,
}

/// Runs a list `plan` encoded as one implicit transaction, and takes the
/// call's result into `st` as the explicit list would.
pub(super) async fn run(
    conn: &PgConn,
    job: &CallJob,
    implicit: Implicit,
    st: &mut State,
) -> Result<(), Failure> {
    let sent = send(conn, job, implicit, st)?;
    read(sent, job, st, || conn.client.is_closed()).await
}

/// Queues the statements on the connection (its driver writes them).
pub(super) fn send(
    conn: &PgConn,
    job: &CallJob,
    implicit: Implicit,
    st: &mut State,
) -> Result<Sent, Failure> {
    let Implicit { pipeline, count } = implicit;
    match conn.client.pipeline(pipeline) {
        Ok(answers) => Ok(Sent { answers, count }),
        Err(error) => {
            // Nothing was sent: the connection is gone.
            st.end_failed = true;
            Err(Failure {
                error: ExecError::from_pg(error, job.anon),
                call: None,
            })
        }
    }
}

/// Reads the answers of a sent list into `st`: the call's row, or the
/// first error. `closed` tells whether the connection was lost.
pub(in crate::db) async fn read(
    sent: Sent,
    job: &CallJob,
    st: &mut State,
    closed: impl Fn() -> bool,
) -> Result<(), Failure> {
    let fail = |error: tokio_postgres::Error, call: Option<usize>| Failure {
        error: ExecError::from_pg(error, job.anon),
        call,
    };
    let Sent { mut answers, count } = sent;
    let mut row = None;
    for index in 0..count {
        // Only the call's row is read; the others are the settings'.
        let answer = if index + 1 < count {
            answers.skip().await.map(|r| r.map(|()| None))
        } else {
            answers.next().await
        };
        match answer {
            Some(Ok(answer)) => row = answer,
            Some(Err(error)) => {
                // The server stopped here and rolled back. A lost
                // connection, or an answer the driver could not read,
                // leaves the connection in doubt.
                st.ended = true;
                st.end_failed |= error.as_db_error().is_none() || closed();
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
        st.end_failed |= error.as_db_error().is_none() || closed();
        return Err(fail(error, None));
    }
    st.results.push(CallResult::from_row(row.as_ref()));
    Ok(())
}
