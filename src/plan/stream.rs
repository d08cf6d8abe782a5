//! The streaming statement of a planned call whose answer may stream
//! (`db::stream`, `http::stream`).

use std::sync::Arc;

use super::{CallPlan, PlanError};
use crate::api_request::ApiRequest;
use crate::db::schema::Shape;
use crate::negotiate::Handler;
use crate::statement::{stream_sql, StreamFormat};

/// How a call's answer streams (`db::stream`).
pub struct StreamPlan {
    pub sql: Arc<str>,
    pub params: Vec<String>,
    pub transient: bool,
    pub format: StreamFormat,
    /// The page's size, for `Content-Range` when the total is known.
    pub limit: Option<i64>,
}

/// The streaming statement of a call whose answer may stream: a SETOF or
/// TABLE function called READ ONLY (no `Idempotency-Key` then), answered
/// as a JSON array, NDJSON or CSV, not singular, without `max-affected`
/// (its check needs every row before the answer) and not `limit=0` (which
/// runs the call for nothing). Anything else is answered whole.
pub fn stream_plan(plan: &CallPlan, req: &ApiRequest) -> Result<Option<StreamPlan>, PlanError> {
    let streamable = plan.routine.shape == Shape::SetOf
        && plan.read_only
        && matches!(
            plan.media.handler,
            Handler::Json | Handler::Ndjson | Handler::Csv
        )
        && plan.prefs.max_affected.is_none()
        && plan.window.1 != Some(0);
    if !streamable {
        return Ok(None);
    }
    let (sql, params, transient, format) = stream_sql(
        &plan.routine,
        plan.mask,
        &plan.media,
        &req.ops,
        plan.window,
        req.count,
    )?;
    Ok(Some(StreamPlan {
        sql,
        params,
        transient,
        format,
        limit: plan.window.1,
    }))
}
