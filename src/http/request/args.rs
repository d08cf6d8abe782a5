//! A call's arguments as an [`Args`] value: a JSON, form or raw body, and
//! the query string's pairs (arguments on GET, operations otherwise), each
//! bounded in count and nesting before the database sees them.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::headers::push_json_object;
use super::{too_many, RequestError};
use crate::api_request::Args;
use crate::media::BodyKind;
use crate::query::{self, QueryError, QueryOps};

/// The most parameters of a query string (or a form body).
pub const MAX_QUERY_PARAMS: usize = 1_000;

/// How deep arrays and objects may nest in a request, in JSON and in the
/// array or json literals of its values. Deeper input would exhaust
/// PostgreSQL's parser stack (a 500); it is refused here with 400.
pub const MAX_NESTING: usize = 512;

/// The deepest nesting of `[`/`{` in `text`: structural nesting when
/// `json` (outside strings), and within each string or plain value (the
/// array and json literals PostgreSQL will parse from it).
fn nesting(text: &str, json: bool) -> usize {
    let (mut outer, mut inner, mut max) = (0usize, 0usize, 0usize);
    let (mut in_string, mut escaped) = (!json, false);
    for b in text.bytes() {
        if in_string {
            if json && escaped {
                escaped = false;
            } else if json && b == b'\\' {
                escaped = true;
            } else if json && b == b'"' {
                in_string = false;
                inner = 0;
            } else if b == b'[' || b == b'{' {
                inner += 1;
                max = max.max(inner);
            } else if (b == b']' || b == b'}') && inner > 0 {
                inner -= 1;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'[' || b == b'{' {
            outer += 1;
            max = max.max(outer);
        } else if (b == b']' || b == b'}') && outer > 0 {
            outer -= 1;
        }
    }
    max
}

fn check_nesting(text: &str, json: bool) -> Result<(), RequestError> {
    match nesting(text, json) {
        d if d > MAX_NESTING => Err(RequestError::NestedTooDeep(d)),
        _ => Ok(()),
    }
}

fn invalid_json(details: impl Into<String>) -> RequestError {
    RequestError::InvalidJson(details.into())
}

/// A raw body for a single unnamed parameter: text as it is (PostgreSQL
/// text must be UTF-8 without NUL), bytes in base64 (decoded in SQL).
pub fn raw_body(kind: BodyKind, bytes: &[u8]) -> Result<Args, RequestError> {
    use base64::Engine as _;
    let whole = match kind {
        BodyKind::Bytea => base64::engine::general_purpose::STANDARD.encode(bytes),
        _ => match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => text.to_string(),
            _ => return Err(RequestError::NotText(kind.param_type())),
        },
    };
    Ok(Args::raw(kind, whole))
}

/// A JSON body: `{}` when empty; an array uses its first element.
pub fn parse_json_body(bytes: &[u8]) -> Result<Args, RequestError> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid_json("the body is not UTF-8"))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Args::empty());
    }
    check_nesting(trimmed, true)?;
    match trimmed.as_bytes()[0] {
        b'{' => {
            let keys = object_keys(trimmed)?;
            Ok(Args::from_object(keys, trimmed.to_string()))
        }
        b'[' => {
            let items: Vec<&RawValue> =
                serde_json::from_str(trimmed).map_err(|e| invalid_json(e.to_string()))?;
            match items.first() {
                None => Ok(Args {
                    whole: trimmed.to_string(),
                    object: Some((Vec::new(), "{}".to_string())),
                    kind: BodyKind::Json,
                }),
                Some(first) if first.get().trim_start().starts_with('{') => {
                    let keys = object_keys(first.get())?;
                    Ok(Args {
                        whole: trimmed.to_string(),
                        object: Some((keys, first.get().to_string())),
                        kind: BodyKind::Json,
                    })
                }
                Some(_) => Ok(Args {
                    whole: trimmed.to_string(),
                    object: None,
                    kind: BodyKind::Json,
                }),
            }
        }
        _ => {
            serde_json::from_str::<IgnoredAny>(trimmed).map_err(|e| invalid_json(e.to_string()))?;
            Ok(Args {
                whole: trimmed.to_string(),
                object: None,
                kind: BodyKind::Json,
            })
        }
    }
}

pub(crate) fn object_keys(json: &str) -> Result<Vec<String>, RequestError> {
    let map: HashMap<String, IgnoredAny> =
        serde_json::from_str(json).map_err(|e| invalid_json(e.to_string()))?;
    Ok(map.into_keys().collect())
}

/// The `&`-separated pairs of a query string or form body, decoded as
/// `form_urlencoded::parse` decodes them (`+` as a space, percent escapes,
/// invalid UTF-8 replaced); a pair with neither `%` nor `+` in valid UTF-8
/// (the common case) is borrowed as it is, without the decoder's passes.
pub fn pairs(query: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            if !piece.iter().any(|&b| b == b'%' || b == b'+') {
                if let Ok(text) = std::str::from_utf8(piece) {
                    let (k, v) = text.split_once('=').unwrap_or((text, ""));
                    return (Cow::Borrowed(k), Cow::Borrowed(v));
                }
            }
            form_urlencoded::parse(piece).next().unwrap_or_default()
        })
}

/// The pairs of a query string or form body, each checked as it comes: at
/// most [`MAX_QUERY_PARAMS`] of them (`what` names the source), no NUL
/// (PostgreSQL text cannot hold one; spliced into a statement, a select
/// alias, it would break the wire protocol's framing: `nul` is the
/// answer), values nested no deeper than JSON's bound.
fn bounded_pairs<'q>(
    query: &'q [u8],
    what: &'static str,
    nul: fn() -> RequestError,
) -> impl Iterator<Item = Result<(Cow<'q, str>, Cow<'q, str>), RequestError>> + 'q {
    pairs(query).enumerate().map(move |(i, (k, v))| {
        if i == MAX_QUERY_PARAMS {
            return Err(too_many(what, MAX_QUERY_PARAMS, "parameters"));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(nul());
        }
        check_nesting(&v, false)?;
        Ok((k, v))
    })
}

/// `a=1&b=x`: every value is a JSON string; a repeated key keeps its last value.
pub fn parse_pairs(query: &[u8]) -> Result<Args, RequestError> {
    let mut map = BTreeMap::new();
    for pair in bounded_pairs(query, "A form body", || {
        RequestError::NotText("a form body")
    }) {
        let (k, v) = pair?;
        map.insert(k.into_owned(), v.into_owned());
    }
    Ok(args_of(map))
}

/// String arguments as a JSON object, keys in order, written directly.
fn args_of(map: BTreeMap<String, String>) -> Args {
    let mut json = String::with_capacity(
        2 + map
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>(),
    );
    push_json_object(&mut json, map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Args::from_object(map.into_keys().collect(), json)
}

/// The query string as function arguments and operations, by PostgREST's
/// rule: on GET (`args`), a parameter is an argument unless its name is
/// reserved (`select`, `order`, `limit`, `offset`, `or`, `and`) or its
/// value starts with an operator (`eq.`, `not.in.`, …); otherwise (POST)
/// every parameter is an operation.
pub fn parse_query(query: &[u8], args: bool) -> Result<(Args, QueryOps), RequestError> {
    let mut map = BTreeMap::new();
    let mut ops = QueryOps::default();
    for pair in bounded_pairs(query, "The query string", || QueryError::Nul.into()) {
        let (k, v) = pair?;
        let key = k.trim();
        match key {
            "select" => ops.select = query::parse_select(&v)?,
            "order" => ops.order = query::parse_order(&v)?,
            "limit" => ops.limit = Some(query::parse_count("limit", &v)?),
            "offset" => ops.offset = Some(query::parse_count("offset", &v)?),
            "or" | "and" | "not.or" | "not.and" => ops.filters.push(query::parse_tree(key, &v)?),
            _ if args && !query::has_operator(&v) => {
                map.insert(k.into_owned(), v.into_owned());
            }
            _ => ops.filters.push(query::parse_filter(key, &v)?),
        }
    }
    Ok((args_of(map), ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn empty_body_is_an_empty_object() {
        let a = parse_json_body(b"  ").expect("empty");
        assert_eq!(a.object.expect("object").1, "{}");
    }

    #[test]
    fn array_body_uses_its_first_element() {
        let a = parse_json_body(br#"[{"a":1},{"b":2}]"#).expect("array");
        let (keys, json) = a.object.expect("object");
        assert_eq!(keys, vec!["a".to_string()]);
        assert_eq!(json, r#"{"a":1}"#);
    }

    #[test]
    fn malformed_json_is_pgrst102() {
        let e = ApiError::from(parse_json_body(b"{\"a\":").expect_err("malformed"));
        assert_eq!(e.code, "PGRST102");
        assert_eq!(e.status.as_u16(), 400);
    }

    #[test]
    fn nesting_counts_structure_and_literals_in_strings() {
        assert_eq!(nesting(r#"{"a":[1,{"b":[]}]}"#, true), 4);
        assert_eq!(nesting(r#"{"a":"[[[x]]] ]]"}"#, true), 3);
        assert_eq!(nesting(r#"{"a":"\"[[","b":1}"#, true), 2);
        assert_eq!(nesting("{{1,2},{3}}", false), 2);
        assert_eq!(nesting("plain", false), 0);
    }

    #[test]
    fn deep_nesting_is_refused_before_the_database() {
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_NESTING),
            "]".repeat(MAX_NESTING)
        );
        let e = ApiError::from(parse_json_body(deep.as_bytes()).expect_err("too deep"));
        assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "PGRST102"));
        let ok = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_NESTING - 1),
            "]".repeat(MAX_NESTING - 1)
        );
        assert!(parse_json_body(ok.as_bytes()).is_ok());
        let query = format!("a={}", "%7B".repeat(MAX_NESTING + 1));
        let e = ApiError::from(parse_pairs(query.as_bytes()).expect_err("too deep"));
        assert_eq!(e.code, "PGRST102");
    }

    #[test]
    fn repeated_query_parameter_keeps_the_last_value() {
        let a = parse_pairs(b"a=1&a=2&b=x%20y").expect("pairs");
        let (_, json) = a.object.expect("object");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["a"], "2");
        assert_eq!(v["b"], "x y");
    }
}
