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
//! [pre-request;] call; COMMIT`, and that list goes without `BEGIN` and
//! `COMMIT` as one implicit transaction when the connection has every
//! statement of it prepared (`implicit`).
//!
//! An error anywhere aborts the transaction; the steps already sent behind
//! it fail with it (a COMMIT sent behind it rolls it back), and the answer
//! is the first error, in the list's order.

use std::sync::Arc;

use tokio_postgres::RowStream;

use super::call::{CallJob, CallResult, ExecError, Shaper, StoredResponse};
use super::lsn::Lsn;
use super::pool::{PgConn, Prepared};

mod implicit;
mod run;
mod sql;

pub(super) use implicit::{plan_rows, read as read_sent, Sent};
pub(super) use run::run;
pub(super) use sql::end_reading_lsn;
use sql::{CLAIM_SQL, STORE_SQL};

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

/// Where a list stopped short.
pub(super) struct Failure {
    pub error: ExecError,
    /// The call whose step failed (its index), if it was a call's.
    pub call: Option<usize>,
}

/// The statements, results and outcome of one run of a list.
#[derive(Default)]
pub(super) struct State {
    pub(super) calls: Vec<Option<Prepared>>,
    pub(super) pre: Option<Prepared>,
    pub(super) claim: Option<Prepared>,
    pub(super) store: Option<Prepared>,
    pub results: Vec<CallResult>,
    /// The response `Op::Store` stores (shaped from the results when the
    /// step comes, unless an error was set here first).
    pub stored: Option<StoredResponse>,
    /// The `Idempotency-Key` and the request's hash, and how the results
    /// become the stored response (taken off the job by `program`).
    pub(super) key: Option<(String, String)>,
    pub(super) shape: Option<Shaper>,
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

/// A plain read's list sent as one implicit transaction (settings,
/// pre-request, call before one Sync), its answers to read with
/// `read_sent`; None when the list needs its explicit transaction or is
/// not a read.
pub(super) fn send_read(
    conn: &PgConn,
    job: &CallJob,
    ops: &[Op],
    st: &mut State,
) -> Option<Result<Sent, Failure>> {
    if !job.read_only || job.batch.is_some() {
        return None;
    }
    Some(match implicit::plan(conn, job, ops, st)? {
        Ok(planned) => implicit::send(conn, job, planned, st),
        Err(error) => Err(Failure {
            error: ExecError::from_pg(error, job.anon),
            call: None,
        }),
    })
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

pub(super) fn call_sql(job: &CallJob, i: usize) -> (&Arc<str>, bool) {
    match i.checked_sub(1).and_then(|j| job.batch.as_ref()?.get(j)) {
        Some(step) => (&step.sql, step.transient),
        None => (&job.sql, job.transient),
    }
}

/// Where the segment that starts at `start` ends (exclusive): at the first
/// step that must wait for the answers of the steps before it.
pub(super) fn segment_end(job: &CallJob, st: &State, ops: &[Op], start: usize) -> usize {
    let checked = |i: usize| !checks(job, i).is_empty();
    segment_end_by(ops, start, checked, st.stores_errors, st.stored.is_some())
}

/// `segment_end`, with which calls are checked (`checked`) and whether a
/// final error goes back to the savepoint (`stores_errors`) and whether
/// the response to store is known already (`shaped`: a final error's) as
/// plain values.
fn segment_end_by(
    ops: &[Op],
    start: usize,
    checked: impl Fn(usize) -> bool,
    stores_errors: bool,
    shaped: bool,
) -> usize {
    let mut end = start + 1;
    while end < ops.len() && !waits(ops[end - 1], ops[end], &checked, stores_errors, shaped) {
        end += 1;
    }
    end
}

/// Whether `next` must wait for the answers of the steps up to `prev`.
fn waits(
    prev: Op,
    next: Op,
    checked: impl Fn(usize) -> bool,
    stores_errors: bool,
    shaped: bool,
) -> bool {
    match (prev, next) {
        // Prepared together, used after.
        (Op::Prepare(_), Op::Prepare(_)) => false,
        (Op::Prepare(_), _) => true,
        (Op::Claim, _) => true,
        // The checks of a call decide whether anything follows; a stored
        // response needs every result (unless it is a final error, known
        // already); a final error goes back to the savepoint.
        (Op::Call(i), _) if checked(i) || stores_errors => true,
        (_, Op::Store) => !shaped,
        _ => false,
    }
}

pub(super) fn checks(job: &CallJob, i: usize) -> &[super::call::Check] {
    match i.checked_sub(1).and_then(|j| job.batch.as_ref()?.get(j)) {
        Some(step) => &step.checks,
        None => &job.checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The segments of `ops`, as the interpreter sends them.
    fn segments(
        ops: &[Op],
        checked: impl Fn(usize) -> bool,
        stores_errors: bool,
        shaped: bool,
    ) -> Vec<Vec<Op>> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < ops.len() {
            let end = segment_end_by(ops, start, &checked, stores_errors, shaped);
            out.push(ops[start..end].to_vec());
            start = end;
        }
        out
    }

    const COMMIT: Op = Op::End {
        commit: true,
        lsn: true,
    };

    #[test]
    fn a_prepared_call_is_one_round_trip() {
        let ops = [Op::Begin, Op::Settings, Op::PreRequest, Op::Call(0), COMMIT];
        assert_eq!(segments(&ops, |_| false, false, false), vec![ops.to_vec()]);
    }

    #[test]
    fn statements_are_prepared_together_and_used_after() {
        let ops = [
            Op::Begin,
            Op::Settings,
            Op::Prepare(Stmt::PreRequest),
            Op::Prepare(Stmt::Call(0)),
            Op::PreRequest,
            Op::Call(0),
            COMMIT,
        ];
        assert_eq!(
            segments(&ops, |_| false, false, false),
            vec![ops[..4].to_vec(), ops[4..].to_vec()]
        );
    }

    #[test]
    fn a_checked_call_waits_before_its_end() {
        let ops = [Op::Begin, Op::Settings, Op::Call(0), COMMIT];
        assert_eq!(
            segments(&ops, |i| i == 0, false, false),
            vec![ops[..3].to_vec(), ops[3..].to_vec()]
        );
    }

    #[test]
    fn a_call_under_a_key_is_claim_then_call_then_store_and_end() {
        let ops = [
            Op::Begin,
            Op::Settings,
            Op::Claim,
            Op::Savepoint,
            Op::Call(0),
            Op::Store,
            COMMIT,
        ];
        assert_eq!(
            segments(&ops, |_| false, true, false),
            vec![ops[..3].to_vec(), ops[3..5].to_vec(), ops[5..].to_vec()]
        );
        // Without a savepoint (an anonymous caller) the store still waits
        // for the call's result.
        let ops = [
            Op::Begin,
            Op::Settings,
            Op::Claim,
            Op::Call(0),
            Op::Store,
            COMMIT,
        ];
        assert_eq!(
            segments(&ops, |_| false, false, false),
            vec![ops[..3].to_vec(), ops[3..4].to_vec(), ops[4..].to_vec()]
        );
    }

    #[test]
    fn a_batch_waits_only_after_its_checked_calls() {
        let ops = [
            Op::Begin,
            Op::Settings,
            Op::Call(0),
            Op::Call(1),
            Op::Prepare(Stmt::Call(2)),
            Op::Call(2),
            Op::Call(3),
            COMMIT,
        ];
        assert_eq!(
            segments(&ops, |i| i == 3, false, false),
            vec![ops[..5].to_vec(), ops[5..7].to_vec(), ops[7..].to_vec()]
        );
    }

    #[test]
    fn a_final_error_is_stored_in_one_round_trip_after_the_savepoint() {
        let ops = RECOVER;
        assert_eq!(segments(&ops, |_| false, true, true), vec![ops.to_vec()]);
    }
}
