//! The plan step, beside the function cache: one request becomes one
//! [`CallPlan`], the value the executor runs. `plan` resolves the routine
//! (`resolve`: overload resolution and the argument object), negotiates the
//! media type (`negotiate`), picks the statement (built in `statement`),
//! decides READ ONLY and the post-call checks as data, and keeps the page
//! the response needs. Apart from it: `reply`, the call's result as a
//! response; `idempotency`, the hash that identifies a request under an
//! `Idempotency-Key` and its stored response; `stream`, the streaming
//! statement of an answer that may stream.

mod idempotency;
mod reply;
mod resolve;
mod stream;

pub use idempotency::{replayed, request_hash, shaper};
pub use reply::{parse_response_headers, reply, Reply};
pub use resolve::overloads;
pub use stream::{stream_plan, StreamPlan};

use std::sync::Arc;

use crate::api_request::ApiRequest;
use crate::db::exec::Check;
use crate::db::schema::{Routine, SchemaCache, Shape};
use crate::error::{Fault, Pgrst};
use crate::negotiate::{self as media, Negotiated};
use crate::prefer::{Applied, TxEnd};
use crate::query::{QueryError, QueryOps};
use crate::response_settings::SettingsError;
use crate::statement::{cached, call_sql, media_sql, ops_sql, CHECKED_TAIL, PLAIN_TAIL};
use resolve::{resolve, variadic_args};

/// Why no call can be made, or its result cannot become a response.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("Could not query the database for the schema cache. Retrying.")]
    SchemaCacheMissing,
    #[error("Could not find the function {schema}.{name}{} in the schema cache", match .raw {
        Some(_) => String::new(),
        None => format!("({})", .keys.join(", ")),
    })]
    NoFunction {
        schema: String,
        name: String,
        keys: Vec<String>,
        hint: Option<String>,
        /// A raw body (text, xml, bytea) looked for a single unnamed
        /// parameter of this type.
        raw: Option<&'static str>,
    },
    #[error("Could not find the function {schema}.{name} in the schema cache")]
    NoFunctionNamed {
        schema: String,
        name: String,
        hint: Option<String>,
    },
    #[error("Could not choose the best candidate function between: {}", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("Invalid body: expected a JSON object (or an array of them)")]
    NotAnObject,
    #[error("None of these media types are available: {}", .0.join(", "))]
    NotAcceptable(Vec<String>),
    #[error("{0}")]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("Requested range not satisfiable")]
    RangeNotSatisfiable { offset: i64, total: i64 },
    /// The `Range` header and `limit`/`offset` do not intersect.
    #[error("Requested range not satisfiable")]
    EmptyRange,
    #[error("Invalid preferences given with handling=strict")]
    InvalidPreferences(Vec<String>),
    #[error("Function must return SETOF or TABLE when max-affected preference is used with handling=strict")]
    MaxAffectedNotSet,
}

impl Fault for PlanError {
    fn pgrst(&self) -> Pgrst {
        match self {
            PlanError::SchemaCacheMissing => Pgrst::SchemaCacheMissing,
            PlanError::NoFunction { .. } | PlanError::NoFunctionNamed { .. } => Pgrst::NoRpc,
            PlanError::Ambiguous(_) => Pgrst::AmbiguousRpc,
            PlanError::NotAnObject => Pgrst::InvalidBody,
            PlanError::NotAcceptable(_) => Pgrst::MediaType,
            PlanError::Settings(e) => e.pgrst(),
            PlanError::Query(e) => e.pgrst(),
            PlanError::RangeNotSatisfiable { .. } | PlanError::EmptyRange => Pgrst::InvalidRange,
            PlanError::InvalidPreferences(_) => Pgrst::InvalidPreferences,
            PlanError::MaxAffectedNotSet => Pgrst::MaxAffectedNotSet,
        }
    }
    fn details(&self) -> Option<String> {
        match self {
            PlanError::NoFunction {
                schema,
                name,
                raw: Some(param),
                ..
            } => Some(format!(
                "Searched for the function {schema}.{name} with a single unnamed {param} parameter, but no matches were found in the schema cache."
            )),
            PlanError::NoFunction {
                schema, name, keys, ..
            } => Some(format!(
                "Searched for the function {schema}.{name} with parameters {} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.",
                if keys.is_empty() { "()".to_string() } else { keys.join(", ") }
            )),
            PlanError::Settings(e) => e.details(),
            PlanError::Query(e) => e.details(),
            PlanError::RangeNotSatisfiable { offset, total } => Some(format!(
                "An offset of {offset} was requested, but there are only {total} rows."
            )),
            PlanError::EmptyRange => Some(
                "The lower boundary must be lower than or equal to the upper boundary in the Range header.".into(),
            ),
            PlanError::InvalidPreferences(prefs) => {
                Some(format!("Invalid preferences: {}", prefs.join(", ")))
            }
            _ => None,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            PlanError::NoFunction { hint, .. } | PlanError::NoFunctionNamed { hint, .. } => {
                hint.clone()
            }
            PlanError::Ambiguous(_) => Some(
                "Try renaming the parameters or the function itself in the database so function overloading can be resolved".into(),
            ),
            _ => None,
        }
    }
}

/// One resolved call: what the executor runs and how its result is shaped.
pub struct CallPlan {
    pub routine: Arc<Routine>,
    pub sql: Arc<str>,
    /// `$1`: the JSON argument object (or the whole body) as text.
    pub args: String,
    /// READ ONLY: GET and HEAD, and STABLE or IMMUTABLE functions whatever
    /// the method, as PostgREST runs them.
    pub read_only: bool,
    /// `Accept: application/vnd.pgrst.object+json`: exactly one row.
    pub singular: bool,
    /// The negotiated media type and how the body is built.
    pub media: Negotiated,
    /// `$2`, `$3`, …: the values of filters, `limit` and `offset`.
    pub params: Vec<String>,
    /// The statement is one of many shapes: prepare it, do not keep it.
    pub transient: bool,
    pub page: Page,
    /// The `Prefer` items that apply: `tx`, `timezone`, `max-affected`…
    pub prefs: Applied,
    /// The provided-argument mask, and the page (offset, limit) after the
    /// `Range` header and `PGRPC_MAX_ROWS`, for the streaming statement.
    mask: u64,
    window: (i64, Option<i64>),
}

/// What `Content-Range` and the status need besides the call's result.
#[derive(Debug, Clone, Copy, Default)]
pub struct Page {
    /// The first row returned: `offset`, or the `Range` header's first item.
    pub offset: i64,
    /// `Prefer: count=…`: the total is counted and sent.
    pub count: bool,
}

/// Picks the one routine the arguments call, or answers 404 / 300, and
/// builds (or reuses) its call statement, with the request's query-string
/// operations, range and `PGRPC_MAX_ROWS` (`max_rows`).
/// `tx_end` is `PGRPC_TX_END`; time zones are checked against
/// `cache.timezones`, read beforehand when the request names one.
pub fn plan(
    cache: &SchemaCache,
    req: &ApiRequest,
    max_rows: Option<i64>,
    tx_end: TxEnd,
) -> Result<CallPlan, PlanError> {
    let write = req.is_write();
    let (routine, json, mask) = resolve(cache, &req.schema, &req.function, &req.args, write)?;
    let read_only = !write || routine.is_read_only();
    // A call that may write checks its response settings in its own
    // statement, before COMMIT; a read-only one commits nothing, and the
    // proxy's parse of its row suffices (the plain tail costs PostgreSQL
    // less: no subplan to start on every execution).
    let tail = if read_only { PLAIN_TAIL } else { CHECKED_TAIL };
    let args = variadic_args(&routine, mask, req, json).unwrap_or_else(|| json.to_string());
    let media = media::negotiate(&req.accept, &routine, cache, req.ops.select.is_none())
        .map_err(|e| PlanError::NotAcceptable(e.0))?;
    let singular = media.singular();
    // A range and PGRPC_MAX_ROWS page sets; a composite is one row.
    let window = match routine.shape {
        Shape::SetOf => window(&req.ops, req.range, max_rows)?,
        _ => window(&req.ops, None, None)?,
    };
    let rows = matches!(routine.shape, Shape::SetOf | Shape::Composite);
    let wrap = !req.ops.is_empty() || (rows && (window.0 > 0 || window.1.is_some()));
    if wrap && !rows {
        return Err(QueryError::NotRows.into());
    }
    // CSV reads its rows twice (the header from the first): always the
    // statement with the rows in a CTE, a scalar included.
    let wrap = wrap || (media.needs_rows() && routine.shape != Shape::Void);
    let page = Page {
        offset: if wrap { window.0 } else { 0 },
        count: req.count,
    };
    let (sql, params, transient) = if wrap {
        ops_sql(&routine, mask, &media, &req.ops, window, req.count, tail)?
    } else {
        match media_sql(&routine, mask, &media, tail) {
            Some(sql) => cached(&routine, mask, singular, sql, Vec::new()),
            None => (call_sql(&routine, mask, singular, tail), Vec::new(), false),
        }
    };
    let prefs = req
        .prefer
        .apply(tx_end, |tz| cache.known_timezone(tz))
        .map_err(|e| PlanError::InvalidPreferences(e.0))?;
    // As PostgREST: max-affected counts rows, so only a set may be limited.
    if prefs.max_affected.is_some() && routine.shape != Shape::SetOf {
        return Err(PlanError::MaxAffectedNotSet);
    }
    Ok(CallPlan {
        sql,
        read_only,
        routine,
        args,
        singular,
        media,
        params,
        transient,
        page,
        prefs,
        mask,
        window,
    })
}

/// Offset and limit from `offset`/`limit`, the `Range` header (their
/// intersection, as PostgREST takes it) and `max_rows`. An empty
/// intersection is 416, unless `limit=0` asked for no rows.
fn window(
    ops: &QueryOps,
    range: Option<(i64, Option<i64>)>,
    max_rows: Option<i64>,
) -> Result<(i64, Option<i64>), PlanError> {
    let q_first = ops.offset.unwrap_or(0);
    let q_last = ops
        .limit
        .map(|l| q_first.saturating_add(l).saturating_sub(1));
    let (h_first, h_last) = range.unwrap_or((0, None));
    let first = q_first.max(h_first);
    let last = match (q_last, h_last) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if range.is_some() && last.is_some_and(|l| l < first) && ops.limit != Some(0) {
        return Err(PlanError::EmptyRange);
    }
    let mut limit = match range {
        None => ops.limit,
        Some(_) => last.map(|l| l.saturating_sub(first).saturating_add(1).max(0)),
    };
    if let Some(max) = max_rows {
        limit = Some(limit.map_or(max, |l| l.min(max)));
    }
    Ok((first, limit))
}

/// The checks a call's result must pass before COMMIT, in order: one row
/// for a singular response, `Prefer: max-affected` (400 `PGRST124`, the
/// call rolled back, as PostgREST does), and for a call that may write and
/// asks for a count, the range (so a 416 never answers a committed
/// change).
pub fn checks(plan: &CallPlan) -> Vec<Check> {
    let mut checks = Vec::new();
    if plan.singular {
        checks.push(Check::Singular);
    }
    if let Some(max) = plan.prefs.max_affected {
        checks.push(Check::MaxAffected(max));
    }
    if !plan.read_only && plan.page.count {
        checks.push(Check::RangeWithin {
            offset: plan.page.offset,
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(limit: Option<i64>, offset: Option<i64>) -> QueryOps {
        QueryOps {
            limit,
            offset,
            ..QueryOps::default()
        }
    }

    #[test]
    fn window_intersects_range_and_limit_then_caps_at_max_rows() {
        assert_eq!(window(&ops(None, None), None, None).ok(), Some((0, None)));
        assert_eq!(
            window(&ops(Some(10), Some(2)), Some((0, Some(4))), None).ok(),
            Some((2, Some(3)))
        );
        assert_eq!(
            window(&ops(None, None), Some((10, None)), Some(3)).ok(),
            Some((10, Some(3)))
        );
        assert_eq!(
            window(&ops(Some(50), None), None, Some(5)).ok(),
            Some((0, Some(5)))
        );
        assert_eq!(
            window(&ops(Some(5), None), Some((3, None)), None).ok(),
            Some((3, Some(2)))
        );
        assert!(matches!(
            window(&ops(None, Some(10)), Some((0, Some(4))), None),
            Err(PlanError::EmptyRange)
        ));
        assert_eq!(
            window(&ops(Some(0), None), Some((0, Some(4))), None).ok(),
            Some((0, Some(0)))
        );
        assert_eq!(
            window(&ops(Some(i64::MAX), Some(i64::MAX)), None, None).ok(),
            Some((i64::MAX, Some(i64::MAX)))
        );
    }
}
