//! The `Idempotency-Key` header on `POST /rpc/*`. The key is claimed, the
//! function runs and its response is stored in one transaction, through
//! `private.http_idempotency_claim` / `_store`, which also compute the
//! caller's scope from the JWT claims. A concurrent duplicate blocks on the
//! first claim's row until it commits, then replays it. A key reused with
//! another request is refused by the claim itself (422
//! `idempotency_key_reused`).

use deadpool_postgres::Object;
use hyper::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::Statement;

use crate::db::call::{self, RequestSettings};
use crate::db::schema::Routine;
use crate::error::ApiError;
use crate::http::{build_response, db_error, not_one_row, parse_response_headers, Built};

const CLAIM_SQL: &str = "SELECT state, response_status, response_headers::text, response_body \
     FROM private.http_idempotency_claim($1, $2)";
const STORE_SQL: &str = "SELECT private.http_idempotency_store($1, $2, $3::text::jsonb, $4)";

/// SHA-256 over method, path, profile and the canonical body (keys sorted,
/// insignificant whitespace removed), so that re-serialized retries match.
pub fn request_hash(method: &str, path: &str, profile: &str, body: &str) -> String {
    let canonical = serde_json::from_str::<Value>(body)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| body.to_string());
    let mut h = Sha256::new();
    for part in [method, path, profile, canonical.as_str()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

#[allow(clippy::too_many_arguments)]
pub async fn call(
    client: &Object,
    settings: &RequestSettings<'_>,
    stmt: &Statement,
    args: &str,
    routine: &Routine,
    singular: bool,
    key: &str,
    hash: &str,
    anon: bool,
) -> Result<Built, ApiError> {
    let fail = |e: tokio_postgres::Error| db_error(&e, anon);
    call::begin_with_settings(client, false, settings)
        .await
        .map_err(fail)?;
    let outcome = async {
        let claim = client.prepare_cached(CLAIM_SQL).await.map_err(fail)?;
        let row = client
            .query_one(&claim, &[&key, &hash])
            .await
            .map_err(fail)?;
        let claim_state: String = row.get(0);
        match claim_state.as_str() {
            "claimed" => {}
            "replay" => {
                let status: Option<i32> = row.get(1);
                let headers: Option<String> = row.get(2);
                let body: Option<String> = row.get(3);
                return Ok((replayed(status, headers.as_deref(), body)?, false));
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
        let result = call::call_in_transaction(client, stmt, args)
            .await
            .map_err(fail)?;
        if singular && result.rows != 1 {
            return Err(not_one_row(result.rows));
        }
        let stored_headers = result.headers.clone();
        let built = build_response(routine, result, singular)?;
        let store = client.prepare_cached(STORE_SQL).await.map_err(fail)?;
        let status = i32::from(built.status.as_u16());
        let headers_json = stored_headers.unwrap_or_else(|| "[]".to_string());
        client
            .query_one(&store, &[&key, &status, &headers_json, &built.body])
            .await
            .map_err(fail)?;
        Ok((built, true))
    }
    .await;
    match outcome {
        Ok((built, commit)) => {
            let end = if commit { "COMMIT" } else { "ROLLBACK" };
            client.batch_execute(end).await.map_err(fail)?;
            Ok(built)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

fn replayed(
    status: Option<i32>,
    headers: Option<&str>,
    body: Option<String>,
) -> Result<Built, ApiError> {
    let status = status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    // Stored as the response.headers setting was, which build_response
    // already validated when the response was first made.
    let headers = match headers {
        Some(text) => parse_response_headers(text)?,
        None => Vec::new(),
    };
    Ok(Built {
        status,
        headers,
        body,
        content_type: "application/json; charset=utf-8",
        replayed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_key_order_and_whitespace() {
        let a = request_hash("POST", "/rpc/f", "api", r#"{"a":1,"b":[1,2]}"#);
        let b = request_hash("POST", "/rpc/f", "api", r#"{ "b": [1, 2], "a": 1 }"#);
        assert_eq!(a, b);
        let c = request_hash("POST", "/rpc/f", "api", r#"{"a":2,"b":[1,2]}"#);
        assert_ne!(a, c);
        let d = request_hash("POST", "/rpc/g", "api", r#"{"a":1,"b":[1,2]}"#);
        assert_ne!(a, d);
    }
}
