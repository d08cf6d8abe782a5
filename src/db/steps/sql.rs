//! The SQL of the steps the proxy sends itself: BEGIN, the ends of a
//! transaction (with the WAL position reached), the `Idempotency-Key`
//! claim and store, the savepoint, and the start of a streaming statement.

use std::borrow::Cow;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::RowStream;

use super::super::call::CallJob;
use super::super::lsn::Lsn;
use super::super::pool::{PgConn, Prepared};

pub(super) const CLAIM_SQL: &str =
    "SELECT state, response_status, response_headers::text, response_body \
     FROM pgrpc_http.http_idempotency_claim($1, $2)";
pub(super) const STORE_SQL: &str =
    "SELECT pgrpc_http.http_idempotency_store($1, $2, $3::text::jsonb, $4)";
pub(super) const CLAIM_TYPES: [Type; 2] = [Type::TEXT, Type::TEXT];
pub(super) const STORE_TYPES: [Type; 4] = [Type::TEXT, Type::INT4, Type::TEXT, Type::TEXT];
pub(super) const SAVEPOINT_SQL: &str = "SAVEPOINT pgrpc_call";
pub(super) const ROLLBACK_TO_SAVEPOINT_SQL: &str = "ROLLBACK TO SAVEPOINT pgrpc_call";

/// The end of a transaction, then the WAL position it reached (see
/// `lsn::wal_position`), in one message. On a node in recovery (a write
/// that wrote nothing, on a standby) the replayed position stands in, so
/// that the answer never fails after its COMMIT.
macro_rules! then_lsn {
    ($end:literal) => {
        concat!($end, "; ", crate::db::lsn::wal_position!())
    };
}
const COMMIT_LSN_SQL: &str = then_lsn!("COMMIT");
const ROLLBACK_LSN_SQL: &str = then_lsn!("ROLLBACK");

/// How the transaction starts: with the isolation level the function
/// asks for, if any, and READ ONLY for a read-only call (which never
/// carries an `Idempotency-Key`: a call that cannot write stores nothing).
pub(in crate::db) fn begin_sql(job: &CallJob) -> Cow<'static, str> {
    match (job.isolation, job.read_only) {
        (None, true) => Cow::Borrowed("BEGIN READ ONLY"),
        (None, false) => Cow::Borrowed("BEGIN"),
        (Some(level), true) => Cow::Owned(format!("BEGIN ISOLATION LEVEL {level} READ ONLY")),
        (Some(level), false) => Cow::Owned(format!("BEGIN ISOLATION LEVEL {level}")),
    }
}

/// COMMIT or ROLLBACK, and the WAL position after it when `lsn` is asked
/// and the pool reports positions.
pub(in crate::db) async fn end_reading_lsn(
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

/// Starts the streaming statement.
pub(super) async fn rows(
    conn: &PgConn,
    call: &Prepared,
    job: &CallJob,
) -> Result<RowStream, tokio_postgres::Error> {
    let binds: Vec<&(dyn ToSql + Sync)> = job.binds();
    let sql = match call {
        Prepared::Named(statement) => return conn.client.query_raw(statement, binds).await,
        Prepared::Unnamed(sql) => &**sql,
        Prepared::UnnamedStatic(sql) => *sql,
    };
    conn.client
        .query_typed_raw(sql, binds.into_iter().map(|b| (b, Type::TEXT)))
        .await
}
