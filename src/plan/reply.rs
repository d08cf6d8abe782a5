//! A call's result as a response: status, `Content-Range`, the function's
//! `response.headers` and `response.status`, and the body in the negotiated
//! media type.

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;

use super::{Page, PlanError};
use crate::db::exec::CallResult;
use crate::db::schema::{Routine, Shape};
use crate::negotiate::Negotiated;
use crate::response_settings;

/// A response computed from a call (or replayed), before the transport
/// headers.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body's exact bytes (None: no body, 204).
    pub body: Option<Bytes>,
    pub content_type: HeaderValue,
    pub replayed: bool,
}

pub(super) const JSON_MEDIA_TYPE: &str = "application/json; charset=utf-8";

/// Turns the call's row into status, headers and body.
pub fn reply(
    routine: &Routine,
    r: CallResult,
    media: &Negotiated,
    page: Page,
) -> Result<Reply, PlanError> {
    let mut headers = match &r.headers {
        None => Vec::new(),
        Some(text) => parse_response_headers(text)?,
    };
    let (range_status, content_range) = content_range(&r, page)?;
    headers.insert(0, (hyper::header::CONTENT_RANGE, content_range));
    let status = match &r.status {
        None => None,
        Some(s) => Some(response_settings::status(s)?),
    };
    let content_type = media.content_type();
    let (default_status, body) = if routine.shape == Shape::Void {
        (StatusCode::NO_CONTENT, None)
    } else {
        // A NULL result is `null` in JSON, an empty body in another type
        // (as PostgREST answers a handler that returns no value).
        let empty = if media.is_json() {
            Bytes::from_static(b"null")
        } else {
            Bytes::new()
        };
        (range_status, Some(r.body.unwrap_or(empty)))
    };
    Ok(Reply {
        status: status.unwrap_or(default_status),
        headers,
        body,
        content_type,
        replayed: false,
    })
}

/// The status a range gives (206 when the rows returned are fewer than
/// the total, 416 when the offset is past it, as PostgREST's
/// `rangeStatus`), and `Content-Range`: `first-last/total`, `*` for an
/// empty range or an uncounted total.
fn content_range(r: &CallResult, page: Page) -> Result<(StatusCode, HeaderValue), PlanError> {
    let total = page.count.then(|| r.total.unwrap_or(r.rows));
    let first = page.offset;
    let last = first.saturating_add(r.rows).saturating_sub(1);
    let mut status = StatusCode::OK;
    if let Some(total) = total {
        if first > total {
            return Err(PlanError::RangeNotSatisfiable {
                offset: first,
                total,
            });
        }
        if r.rows < total {
            status = StatusCode::PARTIAL_CONTENT;
        }
    }
    // `first-last/total`, each part `*` when unknown; written with itoa,
    // which every answer takes (no formatting machinery).
    let mut numbers = itoa::Buffer::new();
    let mut value = String::with_capacity(48);
    if r.rows > 0 && total != Some(0) {
        value.push_str(numbers.format(first));
        value.push('-');
        value.push_str(numbers.format(last));
    } else {
        value.push('*');
    }
    value.push('/');
    match total {
        Some(total) => value.push_str(numbers.format(total)),
        None => value.push('*'),
    }
    let value = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("*/*"));
    Ok((status, value))
}

/// `response.headers`: a JSON array of single-key objects, each a header
/// the proxy can send (see `response_settings`).
pub fn parse_response_headers(text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, PlanError> {
    Ok(response_settings::headers(text)?)
}
