//! The plan step, beside the function cache: which routine a request calls
//! (overload resolution), the SQL that calls it, whether it runs READ ONLY,
//! what its result looks like as a response, and the hash that identifies
//! it under an `Idempotency-Key`.
//!
//! Every identifier spliced into SQL comes from the catalog, quoted; request
//! data only ever travels as `$1`.

use std::fmt::Write as _;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api_request::Args;
use crate::db::exec::{CallResult, Shaper, StoredResponse};
use crate::db::quote_ident;
use crate::db::schema::{Routine, SchemaCache, Shape};
use crate::error::{Fault, Pgrst};

/// Why no call can be made, or its result cannot become a response.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("Could not query the database for the schema cache. Retrying.")]
    SchemaCacheMissing,
    #[error("Could not find the function {schema}.{name}({}) in the schema cache", .keys.join(", "))]
    NoFunction {
        schema: String,
        name: String,
        keys: Vec<String>,
        hint: Option<String>,
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
    #[error("The response.headers setting must be a JSON array of objects")]
    GucHeaders(String),
    #[error("The status code must be a positive integer")]
    GucStatus(String),
}

impl Fault for PlanError {
    fn pgrst(&self) -> Pgrst {
        match self {
            PlanError::SchemaCacheMissing => Pgrst::SchemaCacheMissing,
            PlanError::NoFunction { .. } | PlanError::NoFunctionNamed { .. } => Pgrst::NoRpc,
            PlanError::Ambiguous(_) => Pgrst::AmbiguousRpc,
            PlanError::NotAnObject => Pgrst::InvalidBody,
            PlanError::GucHeaders(_) => Pgrst::GucHeaders,
            PlanError::GucStatus(_) => Pgrst::GucStatus,
        }
    }
    fn details(&self) -> Option<String> {
        match self {
            PlanError::NoFunction {
                schema, name, keys, ..
            } => Some(format!(
                "Searched for the function {schema}.{name} with parameters {} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.",
                if keys.is_empty() { "()".to_string() } else { keys.join(", ") }
            )),
            PlanError::GucHeaders(text) => Some(text.clone()),
            PlanError::GucStatus(text) => Some(format!("response.status was set to {text:?}")),
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
}

/// Picks the one routine the arguments call, or answers 404 / 300, and
/// builds (or reuses) its call statement.
pub fn plan(
    cache: &SchemaCache,
    schema: &str,
    name: &str,
    args: &Args,
    write: bool,
    singular: bool,
) -> Result<CallPlan, PlanError> {
    let (routine, json, mask) = resolve(cache, schema, name, args, write)?;
    Ok(CallPlan {
        sql: call_sql(&routine, mask, singular),
        read_only: !write || routine.is_read_only(),
        routine,
        args: json.to_string(),
        singular,
    })
}

fn resolve<'a>(
    cache: &SchemaCache,
    schema: &str,
    name: &str,
    args: &'a Args,
    write: bool,
) -> Result<(Arc<Routine>, &'a str, u64), PlanError> {
    let overloads = cache.overloads(schema, name).unwrap_or(&[]);
    let mut named: Vec<(&Arc<Routine>, u64)> = Vec::new();
    if let Some((keys, _)) = &args.object {
        for r in overloads.iter().filter(|r| !r.takes_body) {
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
        if let Some(r) = overloads.iter().find(|r| r.takes_body) {
            return Ok((r.clone(), args.whole.as_str(), 0));
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

/// The call statement for the provided parameters; built once per
/// (mask, singular) and kept with the routine, so that prepared statements
/// can be cached per connection.
fn call_sql(r: &Routine, mask: u64, singular: bool) -> Arc<str> {
    if let Ok(cache) = r.sql_cache.read() {
        if let Some(sql) = cache.get(&(mask, singular)) {
            return sql.clone();
        }
    }
    let sql: Arc<str> = build_sql(r, mask, singular).into();
    if let Ok(mut cache) = r.sql_cache.write() {
        cache.insert((mask, singular), sql.clone());
    }
    sql
}

/// Builds the call statement: `$1` is the JSON argument object as text (or
/// the whole body for a single unnamed json parameter). It returns
/// `(body, rows, response.headers, response.status)`.
pub fn build_sql(r: &Routine, mask: u64, singular: bool) -> String {
    let func = format!("{}.{}", quote_ident(&r.schema), quote_ident(&r.name));
    let mut call = String::new();
    let mut from = String::new();
    if r.takes_body {
        let _ = write!(call, "{func}($1::text::{})", r.params[0].type_sql);
    } else {
        let provided: Vec<_> = r
            .params
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, p)| p)
            .collect();
        let args: Vec<String> = provided
            .iter()
            .map(|p| {
                let q = quote_ident(&p.name);
                if p.variadic {
                    format!("VARIADIC {q} := _a.{q}")
                } else {
                    format!("{q} := _a.{q}")
                }
            })
            .collect();
        let _ = write!(call, "{func}({})", args.join(", "));
        if !provided.is_empty() {
            let cols: Vec<String> = provided
                .iter()
                .map(|p| format!("{} {}", quote_ident(&p.name), p.type_sql))
                .collect();
            let _ = write!(
                from,
                " FROM json_to_record($1::text::json) AS _a({})",
                cols.join(", ")
            );
        } else {
            // Keep $1 in the statement so every call binds one parameter.
            from.push_str(" FROM (SELECT $1::text) AS _a");
        }
    }
    let tail =
        "current_setting('response.headers', true), current_setting('response.status', true)";
    match r.shape {
        Shape::SetOf => {
            let body = if singular {
                "(json_agg(_r) -> 0)::text"
            } else {
                "coalesce(json_agg(_r), '[]')::text"
            };
            let lateral = if from.is_empty() {
                format!(" FROM {call} AS _r")
            } else {
                format!("{from} CROSS JOIN LATERAL {call} AS _r")
            };
            format!("SELECT {body}, count(*), {tail}{lateral}")
        }
        Shape::Void => {
            format!("SELECT NULL::text, 1::bigint, {tail} FROM (SELECT {call}{from} OFFSET 0) AS _r")
        }
        Shape::Scalar | Shape::Composite => format!(
            "SELECT to_json(_r.v)::text, 1::bigint, {tail} FROM (SELECT {call} AS v{from} OFFSET 0) AS _r"
        ),
    }
}

/// A response computed from a call (or replayed), before the transport
/// headers.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<String>,
    pub content_type: &'static str,
    pub replayed: bool,
}

const OBJECT_MEDIA_TYPE: &str = "application/vnd.pgrst.object+json; charset=utf-8";
const JSON_MEDIA_TYPE: &str = "application/json; charset=utf-8";

/// Turns the call's row into status, headers and body.
pub fn reply(routine: &Routine, r: CallResult, singular: bool) -> Result<Reply, PlanError> {
    let headers = match &r.headers {
        None => Vec::new(),
        Some(text) => parse_response_headers(text)?,
    };
    let status = match &r.status {
        None => None,
        Some(s) => Some(
            s.trim()
                .parse::<u16>()
                .ok()
                .and_then(|n| StatusCode::from_u16(n).ok())
                .ok_or_else(|| PlanError::GucStatus(s.clone()))?,
        ),
    };
    let content_type = if singular {
        OBJECT_MEDIA_TYPE
    } else {
        JSON_MEDIA_TYPE
    };
    let (default_status, body) = if routine.shape == Shape::Void {
        (StatusCode::NO_CONTENT, None)
    } else {
        (
            StatusCode::OK,
            Some(r.body.unwrap_or_else(|| "null".to_string())),
        )
    };
    Ok(Reply {
        status: status.unwrap_or(default_status),
        headers,
        body,
        content_type,
        replayed: false,
    })
}

/// `response.headers`: a JSON array of single-key objects.
pub fn parse_response_headers(text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, PlanError> {
    let bad = || PlanError::GucHeaders(text.to_string());
    let value: Value = serde_json::from_str(text).map_err(|_| bad())?;
    let list = value.as_array().ok_or_else(bad)?;
    let mut out = Vec::new();
    for item in list {
        let obj = item.as_object().ok_or_else(bad)?;
        for (k, v) in obj {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(&v).map_err(|_| bad())?;
            out.push((name, value));
        }
    }
    Ok(out)
}

/// SHA-256 over method, path, profile, the response form asked for and the
/// canonical body (keys sorted, insignificant whitespace removed), so that
/// re-serialized retries match and a retry asking for another form does not.
pub fn request_hash(method: &str, path: &str, profile: &str, singular: bool, body: &str) -> String {
    let canonical = serde_json::from_str::<Value>(body)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| body.to_string());
    let mut h = Sha256::new();
    let form = if singular { "object" } else { "json" };
    for part in [method, path, profile, form, canonical.as_str()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// The response stored under an `Idempotency-Key`: status, the headers
/// (the media type first, so a replay answers with the type of the first
/// response, then the function's `response.headers`) and the body.
pub fn shaper(routine: Arc<Routine>, singular: bool) -> Shaper {
    Box::new(move |result: &CallResult| {
        let reply = reply(&routine, result.clone(), singular)?;
        let mut headers = Vec::new();
        if reply.body.is_some() {
            headers.push(json!({ "content-type": reply.content_type }));
        }
        // reply() validated the setting: an array of objects.
        if let Some(Ok(Value::Array(items))) = result.headers.as_deref().map(serde_json::from_str) {
            headers.extend(items);
        }
        Ok(StoredResponse {
            status: i32::from(reply.status.as_u16()),
            headers_json: Value::Array(headers).to_string(),
            body: reply.body,
        })
    })
}

/// A stored response, replayed.
pub fn replayed(stored: StoredResponse) -> Result<Reply, PlanError> {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    Ok(Reply {
        status,
        headers: parse_response_headers(&stored.headers_json)?,
        body: stored.body,
        content_type: JSON_MEDIA_TYPE,
        replayed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_key_order_and_whitespace() {
        let a = request_hash("POST", "/rpc/f", "api", false, r#"{"a":1,"b":[1,2]}"#);
        let b = request_hash("POST", "/rpc/f", "api", false, r#"{ "b": [1, 2], "a": 1 }"#);
        assert_eq!(a, b);
        let c = request_hash("POST", "/rpc/f", "api", false, r#"{"a":2,"b":[1,2]}"#);
        assert_ne!(a, c);
        let d = request_hash("POST", "/rpc/g", "api", false, r#"{"a":1,"b":[1,2]}"#);
        assert_ne!(a, d);
        let e = request_hash("POST", "/rpc/f", "api", true, r#"{"a":1,"b":[1,2]}"#);
        assert_ne!(a, e);
    }
}
