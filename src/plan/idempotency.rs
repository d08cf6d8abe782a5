//! The `Idempotency-Key` side of a call: the hash that identifies the
//! request, the response stored under the key, and its replay.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::reply::{parse_response_headers, reply, Reply, JSON_MEDIA_TYPE};
use super::{Page, PlanError};
use crate::db::exec::{CallResult, Shaper, StoredResponse};
use crate::db::schema::Routine;
use crate::media::BodyKind;
use crate::negotiate::Negotiated;

/// SHA-256 over method, path, profile, the response form asked for (the
/// negotiated media type; `json` and `object` for the JSON forms), how the
/// body was sent, the preferences that apply (`Preference-Applied`'s text:
/// `tx`, `timezone`, `max-affected`, `handling`, `count` all change the
/// answer) and the body: a JSON body canonical (keys sorted, insignificant
/// whitespace removed), so that re-serialized retries match and a retry
/// asking for another form, media type or other preferences does not.
/// Without preferences and media types the hash is what it was before
/// they counted, so most keys stored then still replay.
pub fn request_hash(
    method: &str,
    path: &str,
    profile: &str,
    form: &str,
    kind: BodyKind,
    preferences: &str,
    body: &str,
) -> String {
    let canonical = if kind.is_raw() {
        body.to_string()
    } else {
        serde_json::from_str::<Value>(body)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| body.to_string())
    };
    let mut h = Sha256::new();
    let form = format!("{form}{}", kind.hash_form());
    for part in [method, path, profile, form.as_str(), canonical.as_str()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    if !preferences.is_empty() {
        h.update(b"prefer\0");
        h.update(preferences.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// Marks a stored body kept in base64 (bytes that are not UTF-8 text, or
/// hold a NUL): an element of the stored headers array. Its key is not a
/// valid header name, so no `response.headers` setting can forge it.
const BASE64_BODY_MARKER: &str = "(body)";

/// The response stored under an `Idempotency-Key`: status, the headers
/// (the media type first, so a replay answers with the type of the first
/// response, then the function's `response.headers`) and the body, as
/// text, or in base64 with a marker when its bytes are not text.
pub fn shaper(routine: Arc<Routine>, media: Negotiated, page: Page) -> Shaper {
    Box::new(move |results: &[CallResult]| {
        let Some(result) = results.first() else {
            return Err(crate::error::ApiError::from(PlanError::SchemaCacheMissing));
        };
        let reply = reply(&routine, result.clone(), &media, page)?;
        let mut headers = Vec::new();
        if reply.body.is_some() {
            let ct = String::from_utf8_lossy(reply.content_type.as_bytes()).into_owned();
            headers.push(json!({ "content-type": ct }));
        }
        if let Some(Ok(range)) = reply
            .headers
            .iter()
            .find(|(n, _)| n == hyper::header::CONTENT_RANGE)
            .map(|(_, v)| v.to_str())
        {
            headers.push(json!({ "content-range": range }));
        }
        // reply() validated the setting: an array of objects.
        if let Some(Ok(Value::Array(items))) = result.headers.as_deref().map(serde_json::from_str) {
            headers.extend(items);
        }
        let body = reply.body.map(|bytes| match std::str::from_utf8(&bytes) {
            Ok(text) if !text.contains('\0') => text.to_string(),
            _ => {
                headers.push(json!({ BASE64_BODY_MARKER: "base64" }));
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            }
        });
        Ok(StoredResponse {
            status: i32::from(reply.status.as_u16()),
            headers_json: Value::Array(headers).to_string(),
            body,
        })
    })
}

/// A stored response, replayed.
pub fn replayed(stored: StoredResponse) -> Result<Reply, PlanError> {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    // The body marker is the proxy's own, never a header.
    let mut base64_body = false;
    let headers_json = match serde_json::from_str::<Value>(&stored.headers_json) {
        Ok(Value::Array(items)) => {
            let (marks, items): (Vec<Value>, Vec<Value>) = items
                .into_iter()
                .partition(|item| item.get(BASE64_BODY_MARKER).is_some());
            base64_body = !marks.is_empty();
            Value::Array(items).to_string()
        }
        _ => stored.headers_json,
    };
    let mut headers = parse_response_headers(&headers_json)?;
    // The stored media type is the first response's: it answers again.
    let mut content_type = HeaderValue::from_static(JSON_MEDIA_TYPE);
    if let Some(at) = headers
        .iter()
        .position(|(n, _)| n == hyper::header::CONTENT_TYPE)
    {
        content_type = headers.remove(at).1;
    }
    let body = match stored.body {
        Some(text) if base64_body => {
            match base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) {
                Ok(bytes) => Some(Bytes::from(bytes)),
                Err(_) => Some(Bytes::from(text)),
            }
        }
        Some(text) => Some(Bytes::from(text)),
        None => None,
    };
    Ok(Reply {
        status,
        headers,
        body,
        content_type,
        replayed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_key_order_and_whitespace() {
        let hash = |path: &str, form: &str, kind: BodyKind, prefs: &str, body: &str| {
            request_hash("POST", path, "api", form, kind, prefs, body)
        };
        let json = BodyKind::Json;
        let a = hash("/rpc/f", "json", json, "", r#"{"a":1,"b":[1,2]}"#);
        let b = hash("/rpc/f", "json", json, "", r#"{ "b": [1, 2], "a": 1 }"#);
        assert_eq!(a, b);
        let c = hash("/rpc/f", "json", json, "", r#"{"a":2,"b":[1,2]}"#);
        assert_ne!(a, c);
        let d = hash("/rpc/g", "json", json, "", r#"{"a":1,"b":[1,2]}"#);
        assert_ne!(a, d);
        let e = hash("/rpc/f", "object", json, "", r#"{"a":1,"b":[1,2]}"#);
        assert_ne!(a, e);
        let f = hash(
            "/rpc/f",
            "json",
            json,
            "tx=rollback",
            r#"{"a":1,"b":[1,2]}"#,
        );
        assert_ne!(a, f);
        let g = hash(
            "/rpc/f",
            "json",
            json,
            "timezone=UTC",
            r#"{"a":1,"b":[1,2]}"#,
        );
        assert_ne!(f, g);
        let csv = hash("/rpc/f", "text/csv", json, "", r#"{"a":1,"b":[1,2]}"#);
        assert_ne!(a, csv);
        let text = hash("/rpc/f", "json", BodyKind::Text, "", r#"{"a":1,"b":[1,2]}"#);
        assert_ne!(a, text);
        let spaced = hash(
            "/rpc/f",
            "json",
            BodyKind::Text,
            "",
            r#"{ "b": [1, 2], "a": 1 }"#,
        );
        assert_ne!(text, spaced, "a raw body is hashed as sent");
    }
}
