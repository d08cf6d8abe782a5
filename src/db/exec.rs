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

use std::sync::Arc;

use deadpool_postgres::{Object, Pool, PoolError, TimeoutType};
use hyper::StatusCode;
use tokio_postgres::Statement;
use tracing::error;

use super::call::{read_call_row, CallResult, RequestSettings, SETTINGS_SQL};
use crate::error::ApiError;

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
    pub read_only: bool,
    /// Exactly one row is required (406 `PGRST116` otherwise).
    pub singular: bool,
    pub settings: RequestSettings,
    pub idempotency: Option<IdempotentCall>,
    /// The request runs as the anonymous role (42501 is then 401).
    pub anon: bool,
}

#[derive(Debug)]
pub enum Executed {
    Called(CallResult),
    Replayed(StoredResponse),
}

const CLAIM_SQL: &str = "SELECT state, response_status, response_headers::text, response_body \
     FROM private.http_idempotency_claim($1, $2)";
const STORE_SQL: &str = "SELECT private.http_idempotency_store($1, $2, $3::text::jsonb, $4)";

/// Runs the call in its own task and waits for it. The task always ends
/// the transaction, even when the waiting request is dropped.
pub async fn execute(pool: &Pool, job: CallJob) -> Result<Executed, ApiError> {
    let pool = pool.clone();
    match tokio::spawn(async move { run(&pool, job).await }).await {
        Ok(result) => result,
        Err(e) => {
            error!(cause = %e, "call task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "PGRPC500",
                "The call's task failed",
            ))
        }
    }
}

async fn run(pool: &Pool, job: CallJob) -> Result<Executed, ApiError> {
    let anon = job.anon;
    let fail = |e: tokio_postgres::Error| db_error(&e, anon);
    let client = checkout(pool).await?;
    let call = client.prepare_cached(&job.sql).await.map_err(fail)?;
    let settings = client.prepare_cached(SETTINGS_SQL).await.map_err(fail)?;
    if !job.singular && job.idempotency.is_none() {
        return pipelined(&client, &job, &settings, &call)
            .await
            .map(Executed::Called)
            .map_err(fail);
    }

    let begin = if job.read_only {
        "BEGIN READ ONLY"
    } else {
        "BEGIN"
    };
    let params = job.settings.params();
    let (b, s) = futures_util::join!(
        client.batch_execute(begin),
        client.query_one(&settings, &params),
    );
    let started = b.and(s.map(|_| ()));
    let outcome = match started {
        Ok(()) => stepwise(&client, job, &call).await,
        Err(e) => Err(fail(e)),
    };
    let end = match &outcome {
        Ok((_, true)) => "COMMIT",
        _ => "ROLLBACK",
    };
    match client.batch_execute(end).await {
        Ok(()) => outcome.map(|(executed, _)| executed),
        Err(e) => {
            // The transaction's fate is unknown: never hand this connection
            // to another request.
            let _ = Object::take(client);
            match outcome {
                Ok(_) => Err(fail(e)),
                Err(first) => Err(first),
            }
        }
    }
}

/// `BEGIN; settings; call; COMMIT` as one pipeline: one round trip once the
/// statements are prepared. An error anywhere aborts the transaction, and
/// the trailing COMMIT then rolls it back.
async fn pipelined(
    client: &Object,
    job: &CallJob,
    settings: &Statement,
    call: &Statement,
) -> Result<CallResult, tokio_postgres::Error> {
    let begin = if job.read_only {
        "BEGIN READ ONLY"
    } else {
        "BEGIN"
    };
    let args = [&job.args as &(dyn tokio_postgres::types::ToSql + Sync)];
    let params = job.settings.params();
    let (b, s, c, e) = futures_util::join!(
        client.batch_execute(begin),
        client.query_one(settings, &params),
        client.query_one(call, &args),
        client.batch_execute("COMMIT"),
    );
    b?;
    s?;
    let row = c?;
    e?;
    Ok(read_call_row(&row))
}

/// The call inside an open transaction, for calls that decide between
/// COMMIT and ROLLBACK afterwards. Returns whether to commit.
async fn stepwise(
    client: &Object,
    job: CallJob,
    call: &Statement,
) -> Result<(Executed, bool), ApiError> {
    let anon = job.anon;
    let fail = |e: tokio_postgres::Error| db_error(&e, anon);
    if let Some(idem) = &job.idempotency {
        let claim = client.prepare_cached(CLAIM_SQL).await.map_err(fail)?;
        let row = client
            .query_one(&claim, &[&idem.key, &idem.request_hash])
            .await
            .map_err(fail)?;
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
                return Ok((Executed::Replayed(stored), false));
            }
            other => {
                // The claim raises 422 idempotency_key_reused itself; any
                // other state is a contract break between SQL and proxy.
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "PGRPC500",
                    format!("unexpected idempotency claim state {other:?}"),
                ));
            }
        }
    }
    let row = client.query_one(call, &[&job.args]).await.map_err(fail)?;
    let result = read_call_row(&row);
    if job.singular && result.rows != 1 {
        return Err(not_one_row(result.rows));
    }
    if let Some(idem) = job.idempotency {
        let stored = (idem.shape)(&result)?;
        let store = client.prepare_cached(STORE_SQL).await.map_err(fail)?;
        client
            .query_one(
                &store,
                &[
                    &idem.key,
                    &stored.status,
                    &stored.headers_json,
                    &stored.body,
                ],
            )
            .await
            .map_err(fail)?;
    }
    Ok((Executed::Called(result), true))
}

/// 406 PGRST116: a single object was asked for, and the call returned
/// another number of rows.
pub fn not_one_row(rows: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        "PGRST116",
        "JSON object requested, multiple (or no) rows returned",
    )
    .details(format!("The result contains {rows} rows"))
}

/// A pooled connection, or 504 when the pool stays exhausted past its
/// timeout, or 503 when the database cannot be reached.
async fn checkout(pool: &Pool) -> Result<Object, ApiError> {
    match pool.get().await {
        Ok(c) => Ok(c),
        Err(PoolError::Timeout(TimeoutType::Wait)) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "PGRST003",
            "Timed out acquiring connection from connection pool.",
        )),
        Err(e) => {
            error!(cause = %e, "cannot get a database connection");
            Err(
                ApiError::unavailable("Database client error. Retrying the connection.")
                    .details(e.to_string()),
            )
        }
    }
}

/// Maps an error of the call. A lost connection is 503; PostgreSQL's own
/// errors follow the SQLSTATE map.
pub fn db_error(e: &tokio_postgres::Error, anon: bool) -> ApiError {
    if let Some(db) = e.as_db_error() {
        return ApiError::from_db(db, anon);
    }
    error!(cause = %e, "database connection error");
    ApiError::unavailable("Database connection lost").details(e.to_string())
}
