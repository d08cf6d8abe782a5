//! The plan step, beside the function cache: which routine a request calls
//! (overload resolution), the SQL that calls it, whether it runs READ ONLY,
//! what its result looks like as a response, and the hash that identifies
//! it under an `Idempotency-Key`.
//!
//! The statements themselves are built in `statement`.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api_request::{ApiRequest, Args};
use crate::db::exec::{CallResult, Check, Shaper, StoredResponse};
use crate::db::schema::{Routine, SchemaCache, Shape};
use crate::error::{Fault, Pgrst};
use crate::media::BodyKind;
use crate::negotiate::{self as media, Handler, Negotiated};
use crate::prefer::{Applied, TxEnd};
use crate::query::{self, QueryError, QueryOps};
use crate::response_settings::{self, SettingsError};
use crate::statement::{
    cached, call_sql, media_sql, ops_sql, stream_sql, StreamFormat, CHECKED_TAIL, PLAIN_TAIL,
};

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

/// On GET and HEAD, and with a form body, a VARIADIC parameter collects
/// every value of its repeated pairs into an array, as PostgREST does
/// (`?v=a&v=b` is `VARIADIC ARRAY['a','b']`); any other parameter keeps its
/// last value. The argument object with that array, or None when the
/// routine has no VARIADIC parameter among the provided ones.
fn variadic_args(r: &Routine, mask: u64, req: &ApiRequest, json: &str) -> Option<String> {
    if r.takes_body {
        return None;
    }
    let (i, p) = r.params.iter().enumerate().find(|(_, p)| p.variadic)?;
    if mask & (1 << i) == 0 {
        return None;
    }
    // On GET, a pair whose value is an operation is not an argument.
    let (pairs, args_only): (&[u8], bool) = match (&req.form, req.is_write()) {
        (_, false) => (req.query.as_bytes(), true),
        (Some(form), true) => (form, false),
        (None, true) => return None,
    };
    let values: Vec<Value> = form_urlencoded::parse(pairs)
        .filter(|(k, v)| k == p.name.as_str() && !(args_only && query::has_operator(v)))
        .map(|(_, v)| Value::String(v.into_owned()))
        .collect();
    let mut object: serde_json::Map<String, Value> = serde_json::from_str(json).ok()?;
    object.insert(p.name.clone(), Value::Array(values));
    Some(Value::Object(object).to_string())
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

fn resolve<'a>(
    cache: &SchemaCache,
    schema: &str,
    name: &str,
    args: &'a Args,
    write: bool,
) -> Result<(Arc<Routine>, &'a str, u64), PlanError> {
    let overloads = cache.overloads(schema, name).unwrap_or(&[]);
    let raw = args.kind.is_raw();
    let mut named: Vec<(&Arc<Routine>, u64)> = Vec::new();
    if let Some((keys, _)) = &args.object {
        // A raw body has no keys, and never calls a function without
        // parameters (PostgREST's `matchesParams`).
        for r in overloads
            .iter()
            .filter(|r| !(r.takes_body || (raw && r.params.is_empty())))
        {
            if let Some(mask) = r.match_keys(keys.iter().map(String::as_str)) {
                named.push((r, mask));
            }
        }
    }
    if let [(r, mask)] = named.as_slice() {
        let json = args
            .object
            .as_ref()
            .map(|(_, j)| j.as_str())
            .unwrap_or("{}");
        return Ok(((*r).clone(), json, *mask));
    }
    if named.len() > 1 {
        let list = named
            .iter()
            .map(|(r, _)| {
                let params: Vec<String> = r
                    .params
                    .iter()
                    .map(|p| format!("{} => {}", p.name, p.type_sql))
                    .collect();
                format!("{}.{}({})", r.schema, r.name, params.join(", "))
            })
            .collect();
        return Err(PlanError::Ambiguous(list));
    }
    if write {
        // The single unnamed parameter of the body's type: json/jsonb for
        // JSON, text, xml or bytea for a raw body.
        let fallback: Vec<&Arc<Routine>> = overloads
            .iter()
            .filter(|r| r.takes_body && args.kind.fits(&r.params[0].type_sql))
            .collect();
        match fallback.as_slice() {
            [r] => return Ok(((*r).clone(), args.whole.as_str(), 0)),
            [] => {}
            many => {
                return Err(PlanError::Ambiguous(
                    many.iter()
                        .map(|r| format!("{}.{}( => {})", r.schema, r.name, r.params[0].type_sql))
                        .collect(),
                ))
            }
        }
    }
    if args.object.is_none() && !overloads.is_empty() {
        return Err(PlanError::NotAnObject);
    }
    let mut keys: Vec<String> = match &args.object {
        Some((keys, _)) => keys.clone(),
        None => Vec::new(),
    };
    keys.sort_unstable();
    if write && raw {
        return Err(PlanError::NoFunction {
            schema: schema.to_string(),
            name: name.to_string(),
            keys,
            hint: None,
            raw: Some(args.kind.param_type()),
        });
    }
    let hint = match overloads.first() {
        Some(first) => Some(format!(
            "Perhaps you meant to call the function {}",
            first.signature()
        )),
        None => cache
            .similar_name(schema, name)
            .map(|similar| format!("Perhaps you meant to call the function {schema}.{similar}")),
    };
    Err(PlanError::NoFunction {
        schema: schema.to_string(),
        name: name.to_string(),
        keys,
        hint,
        raw: None,
    })
}

/// The overloads of a function for OPTIONS, or 404.
pub fn overloads<'c>(
    cache: &'c SchemaCache,
    schema: &str,
    name: &str,
) -> Result<&'c [Arc<Routine>], PlanError> {
    match cache.overloads(schema, name) {
        Some(list) if !list.is_empty() => Ok(list),
        _ => Err(PlanError::NoFunctionNamed {
            schema: schema.to_string(),
            name: name.to_string(),
            hint: cache
                .similar_name(schema, name)
                .map(|s| format!("Perhaps you meant to call the function {schema}.{s}")),
        }),
    }
}

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

const JSON_MEDIA_TYPE: &str = "application/json; charset=utf-8";

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
    let range = if r.rows > 0 && total != Some(0) {
        format!("{first}-{last}")
    } else {
        "*".to_string()
    };
    let total = total.map_or_else(|| "*".to_string(), |t| t.to_string());
    let value = HeaderValue::from_str(&format!("{range}/{total}"))
        .unwrap_or_else(|_| HeaderValue::from_static("*/*"));
    Ok((status, value))
}

/// `response.headers`: a JSON array of single-key objects, each a header
/// the proxy can send (see `response_settings`).
pub fn parse_response_headers(text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, PlanError> {
    Ok(response_settings::headers(text)?)
}

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
