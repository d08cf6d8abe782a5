//! The `Idempotency-Key` header on `POST /rpc/*`: the request hash, and the
//! response stored and replayed. `db::exec` claims the key, runs the call
//! and stores the response in one transaction. The key is claimed, the
//! function runs and its response is stored in one transaction, through
//! `private.http_idempotency_claim` / `_store`, which also compute the
//! caller's scope from the JWT claims. A concurrent duplicate blocks on the
//! first claim's row until it commits, then replays it. A key reused with
//! another request is refused by the claim itself (422
//! `idempotency_key_reused`).

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::db::call::CallResult;
use crate::db::exec::{Shaper, StoredResponse};
use crate::db::schema::Routine;
use crate::error::ApiError;
use crate::http::{build_response, parse_response_headers, Built};

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

/// The response stored under a key: status, the headers (the media type
/// first, so a replay answers with the type of the first response, then
/// the function's `response.headers`) and the body.
pub fn shaper(routine: Arc<Routine>, singular: bool) -> Shaper {
    Box::new(move |result: &CallResult| {
        let built = build_response(&routine, result.clone(), singular)?;
        let mut headers = Vec::new();
        if built.body.is_some() {
            headers.push(json!({ "content-type": built.content_type }));
        }
        // build_response validated the setting: an array of objects.
        if let Some(Ok(Value::Array(items))) = result.headers.as_deref().map(serde_json::from_str) {
            headers.extend(items);
        }
        Ok(StoredResponse {
            status: i32::from(built.status.as_u16()),
            headers_json: Value::Array(headers).to_string(),
            body: built.body,
        })
    })
}

/// A stored response, replayed.
pub fn replayed(stored: StoredResponse) -> Result<Built, ApiError> {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    Ok(Built {
        status,
        headers: parse_response_headers(&stored.headers_json)?,
        body: stored.body,
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
