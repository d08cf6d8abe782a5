//! The HTTP side of a streamed answer (`db::stream`): the job, and the
//! response's status and headers, sent before the rows.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_RANGE, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use super::body::{Body, Piece};
use crate::app::AppState;
use crate::db::exec::{CallJob, ExecError};
use crate::db::stream::{self as db_stream, StreamHead, StreamJob, Streamed};
use crate::error::ApiError;
use crate::negotiate::Negotiated;
use crate::plan::{self, Page, PlanError, StreamPlan};
use crate::prefer::Applied;
use crate::response_settings;

/// Runs `job` with the streaming statement of `stream`.
pub async fn run(
    state: &Arc<AppState>,
    stream: &StreamPlan,
    job: &CallJob,
) -> Result<Streamed, ExecError> {
    let call = CallJob {
        sql: stream.sql.clone(),
        args: job.args.clone(),
        params: stream.params.clone(),
        transient: stream.transient,
        read_only: job.read_only,
        settings: job.settings.clone(),
        isolation: job.isolation,
        pre_request: job.pre_request.clone(),
        idempotency: None,
        checks: Vec::new(),
        rollback: job.rollback,
        anon: job.anon,
        batch: None,
    };
    db_stream::stream(
        &state.pool,
        StreamJob {
            call,
            format: stream.format,
            threshold: state.config.stream_threshold_bytes,
            max_duration: state.config.stream_max_duration,
            stop: state.stopping.clone(),
        },
    )
    .await
}

/// The response of a stream: status and headers from the first row (the
/// function's `response.headers` and `response.status`, the total of a
/// count), then the body as it comes.
pub fn response(
    media: &Negotiated,
    prefs: &Applied,
    page: Page,
    stream: &StreamPlan,
    head: StreamHead,
    first: Bytes,
    rest: mpsc::Receiver<Piece>,
) -> Result<Response<Body>, ApiError> {
    let headers = match &head.headers {
        None => Vec::new(),
        Some(text) => plan::parse_response_headers(text)?,
    };
    let status = match &head.status {
        None => None,
        Some(s) => Some(response_settings::status(s).map_err(PlanError::from)?),
    };
    let (range_status, range) = content_range(page.offset, stream.limit, head.total);
    let mut resp = Response::new(Body::stream(first, rest));
    *resp.status_mut() = status.unwrap_or(range_status);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, media.content_type());
    h.insert(CONTENT_RANGE, range);
    if let Some(value) = prefs.header() {
        h.insert(HeaderName::from_static("preference-applied"), value);
    }
    for (name, value) in headers {
        h.insert(name, value);
    }
    Ok(resp)
}

/// `Content-Range` of a stream, and its status: with a count the total is
/// known (`count(*) OVER ()` on the first row), so the range is exact and
/// a partial page is 206; without one the last row is not known when the
/// headers go out: `<first>-*/*`.
pub fn content_range(
    offset: i64,
    limit: Option<i64>,
    total: Option<i64>,
) -> (StatusCode, HeaderValue) {
    let Some(total) = total else {
        let value = HeaderValue::from_str(&format!("{offset}-*/*"))
            .unwrap_or_else(|_| HeaderValue::from_static("*/*"));
        return (StatusCode::OK, value);
    };
    let rows = total
        .saturating_sub(offset)
        .max(0)
        .min(limit.unwrap_or(i64::MAX));
    let range = if rows > 0 {
        format!("{offset}-{}", offset.saturating_add(rows).saturating_sub(1))
    } else {
        "*".to_string()
    };
    let status = if rows < total {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let value = HeaderValue::from_str(&format!("{range}/{total}"))
        .unwrap_or_else(|_| HeaderValue::from_static("*/*"));
    (status, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_s_range_is_exact_with_a_count_and_open_without() {
        let range = |o, l, t| {
            let (s, v) = content_range(o, l, t);
            (s.as_u16(), v.to_str().unwrap_or_default().to_string())
        };
        assert_eq!(range(0, None, None), (200, "0-*/*".into()));
        assert_eq!(range(10, Some(5), None), (200, "10-*/*".into()));
        assert_eq!(range(0, None, Some(1000)), (200, "0-999/1000".into()));
        assert_eq!(range(0, Some(100), Some(1000)), (206, "0-99/1000".into()));
        assert_eq!(
            range(990, Some(100), Some(1000)),
            (206, "990-999/1000".into())
        );
    }
}
