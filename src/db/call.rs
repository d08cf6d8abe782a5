//! One call as plain values: what `plan` hands the executor (`CallJob`:
//! the statement, its binds, the transaction's mode and settings, and the
//! post-call checks as data), what comes back (`Executed`, `CallResult`),
//! and why a call did not run to its end (`ExecError`). `exec` runs it.

use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::types::{ToSql, Type};
use tracing::error;

use super::lsn::Lsn;
use super::pool::{self as pool_, PgConn, Prepared};
use super::schema::RoleSettings;
use crate::error::{ApiError, DbContext, Fault, Pgrst};
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
    /// PostgreSQL refused the call: its SQLSTATE, with what the executor
    /// learned about the request and the node, decides the answer (in the
    /// error table, `error::ApiError::from_db`).
    #[error("{}", .error.message())]
    Postgres {
        error: Box<tokio_postgres::error::DbError>,
        context: DbContext,
    },
    #[error("JSON object requested, multiple (or no) rows returned")]
    Singularity(i64),
    /// `Prefer: max-affected`: the call returned more rows (rolled back).
    #[error("Query result exceeds max-affected preference constraint")]
    MaxAffected(i64),
    /// A counted range starts past the total (rolled back).
    #[error("Requested range not satisfiable")]
    RangeNotSatisfiable { offset: i64, total: i64 },
    /// The call's result cannot become the response stored for its key.
    #[error("{}", .0.message)]
    Rejected(ApiError),
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
    /// The call at `index` (0-based) of a batch failed: nothing of the
    /// batch is kept, and the answer is that call's, with its index.
    #[error("{error}")]
    InBatch { index: usize, error: Box<ExecError> },
}

impl ExecError {
    pub(super) fn from_pg(e: tokio_postgres::Error, anon: bool) -> ExecError {
        // The call statement refused response settings it cannot send.
        if let Some(refusal) = e.as_db_error().and_then(response_settings::refusal) {
            return ExecError::Settings(refusal);
        }
        match e.as_db_error() {
            Some(db) => ExecError::Postgres {
                error: Box::new(db.clone()),
                context: DbContext {
                    anon,
                    node_read_only: false,
                },
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
            ExecError::Unavailable(_) | ExecError::Lost(_) | ExecError::Unreplicated => {
                Pgrst::Connection
            }
            ExecError::Singularity(_) => Pgrst::Singularity,
            ExecError::MaxAffected(_) => Pgrst::MaxAffected,
            ExecError::RangeNotSatisfiable { .. } => Pgrst::InvalidRange,
            ExecError::Settings(e) => e.pgrst(),
            ExecError::InBatch { error, .. } => error.pgrst(),
            ExecError::TaskFailed
            | ExecError::ClaimState(_)
            | ExecError::Postgres { .. }
            | ExecError::Rejected(_) => Pgrst::Internal,
        }
    }
    fn postgres(&self) -> Option<(&tokio_postgres::error::DbError, DbContext)> {
        match self {
            ExecError::Postgres { error, context } => Some((error, *context)),
            ExecError::InBatch { error, .. } => error.postgres(),
            _ => None,
        }
    }
    fn answer(&self) -> Option<&ApiError> {
        match self {
            ExecError::Rejected(api) => Some(api),
            ExecError::InBatch { error, .. } => error.answer(),
            _ => None,
        }
    }
    fn details(&self) -> Option<String> {
        match self {
            ExecError::InBatch { error, .. } => error.details(),
            ExecError::Unavailable(d) | ExecError::Lost(d) => Some(d.clone()),
            ExecError::Singularity(rows) => Some(format!("The result contains {rows} rows")),
            ExecError::MaxAffected(rows) => Some(format!("The query affects {rows} rows")),
            ExecError::RangeNotSatisfiable { offset, total } => Some(format!(
                "An offset of {offset} was requested, but there are only {total} rows."
            )),
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
            ExecError::InBatch { error, .. } => error.hint(),
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

/// The body: text, or the raw bytes of a `bytea` (a media type's body).
fn body_column(row: &tokio_postgres::Row) -> Option<bytes::Bytes> {
    if row.columns().first().map(|c| c.type_()) == Some(&tokio_postgres::types::Type::BYTEA) {
        row.try_get::<_, Option<Vec<u8>>>(0)
            .ok()
            .flatten()
            .map(bytes::Bytes::from)
    } else {
        row.try_get::<_, Option<String>>(0)
            .ok()
            .flatten()
            .map(bytes::Bytes::from)
    }
}

impl CallResult {
    /// The call statement's one row (it aggregates, so it always has one; an
    /// absent row reads as no rows).
    pub(super) fn from_row(row: Option<&tokio_postgres::Row>) -> CallResult {
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
    /// The seven request settings, `$1` to `$7` of every settings
    /// statement (`pool::settings_sql`), in that order.
    fn head(&self) -> [&String; 7] {
        [
            &self.role,
            &self.claims,
            &self.method,
            &self.path,
            &self.headers,
            &self.search_path,
            &self.cookies,
        ]
    }

    /// The settings statement for these settings (`pool::settings_sql`),
    /// as `conn` runs it, its parameters and their types.
    pub(super) fn statement(
        &self,
        conn: &PgConn,
    ) -> (Prepared, Vec<&(dyn ToSql + Sync)>, &'static [Type]) {
        let role = &self.role_settings;
        let n = role.names.len();
        let mut params: Vec<&(dyn ToSql + Sync)> =
            Vec::with_capacity(7 + 2 * n.min(pool_::MAX_DIRECT_SETTINGS + 1));
        params.extend(self.head().map(|s| s as &(dyn ToSql + Sync)));
        if n > pool_::MAX_DIRECT_SETTINGS {
            params.push(&role.names);
            params.push(&role.values);
        } else {
            for (name, value) in role.names.iter().zip(&role.values) {
                params.push(name);
                params.push(value);
            }
        }
        (conn.settings(n), params, pool_::settings_types(n))
    }
}

/// The most values the settings statement takes as text: the seven
/// request settings and up to `pool::MAX_DIRECT_SETTINGS` role settings as
/// name and value.
const MAX_TEXT_SETTINGS: usize = 7 + 2 * pool_::MAX_DIRECT_SETTINGS;

impl RequestSettings {
    /// The settings statement's values as text, in `statement`'s order,
    /// for the statement of up to `pool::MAX_DIRECT_SETTINGS` role
    /// settings (every parameter of it is `text`); None with more, whose
    /// statement takes two arrays. The implicit transaction writes them
    /// without a `ToSql` call each (`tokio_postgres::Pipeline::execute_text`).
    pub(super) fn texts(&self) -> Option<([&str; MAX_TEXT_SETTINGS], usize)> {
        let role = &self.role_settings;
        if role.names.len() > pool_::MAX_DIRECT_SETTINGS {
            return None;
        }
        let mut texts = [""; MAX_TEXT_SETTINGS];
        let head = self.head().map(String::as_str);
        texts[..head.len()].copy_from_slice(&head);
        let mut len = head.len();
        for (name, value) in role.names.iter().zip(&role.values) {
            texts[len] = name;
            texts[len + 1] = value;
            len += 2;
        }
        Some((texts, len))
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

/// Turns a call's result (a batch's results, in order) into the response
/// stored under its key, inside the transaction (a response that cannot be
/// built rolls the call back).
pub type Shaper = Box<dyn FnOnce(&[CallResult]) -> Result<StoredResponse, ApiError> + Send + Sync>;

/// A check of a call's result, run inside its transaction before COMMIT:
/// a call that fails one is rolled back, never committed under an error
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `Accept: application/vnd.pgrst.object+json`: exactly one row (406
    /// `PGRST116` otherwise).
    Singular,
    /// `Prefer: max-affected=n`: at most n rows (400 `PGRST124`).
    MaxAffected(i64),
    /// A counted call that may write: the first row asked for (`offset`,
    /// or the `Range` header's) is within the total (416 `PGRST103`).
    RangeWithin { offset: i64 },
}

impl Check {
    /// Whether `result` passes.
    pub fn apply(self, result: &CallResult) -> Result<(), ExecError> {
        match self {
            Check::Singular if result.rows != 1 => Err(ExecError::Singularity(result.rows)),
            Check::MaxAffected(max) if result.rows > max => {
                Err(ExecError::MaxAffected(result.rows))
            }
            Check::RangeWithin { offset } => {
                let total = result.total.unwrap_or(result.rows);
                if offset > total {
                    Err(ExecError::RangeNotSatisfiable { offset, total })
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

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
    pub settings: RequestSettings,
    /// `ISOLATION LEVEL …` the function asks for (hoisted
    /// default_transaction_isolation).
    pub isolation: Option<&'static str>,
    /// `SELECT <PGRPC_PRE_REQUEST>()`, run after the settings.
    pub pre_request: Option<Arc<str>>,
    /// None for a read-only call: one that cannot write stores nothing
    /// under a key (the header is ignored).
    pub idempotency: Option<IdempotentCall>,
    /// The checks of the call's result before COMMIT, in order: a call
    /// that fails one is rolled back and answered with its error.
    pub checks: Vec<Check>,
    /// End the transaction with ROLLBACK whatever the outcome
    /// (`Prefer: tx=rollback`, `PGRPC_TX_END`): the result is still
    /// answered, its effects are not kept.
    pub rollback: bool,
    /// The request runs as the anonymous role (42501 is then 401).
    pub anon: bool,
    /// A batch (`POST /rpc`): the calls after this job's own, which is the
    /// batch's first, run in order in the same transaction. None for a
    /// single call.
    pub batch: Option<Vec<Step>>,
}

/// One call of a batch after its first: its statement, binds and checks.
#[derive(Clone)]
pub struct Step {
    pub sql: Arc<str>,
    pub args: String,
    pub params: Vec<String>,
    pub transient: bool,
    pub checks: Vec<Check>,
}

impl Step {
    /// `$1`, then the operations' values.
    pub(super) fn binds(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut binds: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(1 + self.params.len());
        binds.push(&self.args);
        binds.extend(self.params.iter().map(|p| p as &(dyn ToSql + Sync)));
        binds
    }
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
            settings: self.settings.clone(),
            isolation: self.isolation,
            pre_request: self.pre_request.clone(),
            idempotency: None,
            checks: self.checks.clone(),
            rollback: self.rollback,
            anon: self.anon,
            batch: self.batch.clone(),
        })
    }

    /// `$1`, then the operations' values.
    pub(super) fn binds(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
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

    /// The same values as text (`tokio_postgres::Pipeline::execute_text`).
    pub(super) fn bind_texts(&self) -> Vec<&str> {
        let mut binds = Vec::with_capacity(1 + self.params.len());
        binds.push(self.args.as_str());
        binds.extend(self.params.iter().map(String::as_str));
        binds
    }
}

#[derive(Debug)]
pub enum Executed {
    Called(CallResult),
    /// A stored response, and the WAL position when it was replayed (at or
    /// after the original call's COMMIT).
    Replayed(StoredResponse, Option<Lsn>),
    /// A batch's results, in order, and the WAL position after its COMMIT.
    Batch(Vec<CallResult>, Option<Lsn>),
    /// The call failed with a final answer (a 4xx other than 408, 425 and
    /// 429) under an `Idempotency-Key` of a caller with a `sub`: its
    /// effects were rolled back to a savepoint, the error was stored under
    /// the key and committed, and a retry replays it.
    Failed(ApiError),
}
