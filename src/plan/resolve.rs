//! Which routine a request calls: overload resolution by the argument
//! keys (or the single unnamed parameter of the body's type), with 404 and
//! 300 as PostgREST answers them, the VARIADIC argument array, and the
//! overloads OPTIONS checks.

use std::sync::Arc;

use serde_json::Value;

use super::PlanError;
use crate::api_request::{ApiRequest, Args};
use crate::db::schema::{Routine, SchemaCache};
use crate::query;

/// On GET and HEAD, and with a form body, a VARIADIC parameter collects
/// every value of its repeated pairs into an array, as PostgREST does
/// (`?v=a&v=b` is `VARIADIC ARRAY['a','b']`); any other parameter keeps its
/// last value. The argument object with that array, or None when the
/// routine has no VARIADIC parameter among the provided ones.
pub(super) fn variadic_args(
    r: &Routine,
    mask: u64,
    req: &ApiRequest,
    json: &str,
) -> Option<String> {
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

pub(super) fn resolve<'a>(
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
