//! Reading a request into an [`ApiRequest`]: the body and query string
//! become the JSON argument object, the Accept header picks the response
//! form, the profile headers pick the schema.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use hyper::{Method, Request};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::api_request::{ApiRequest, Args};
use crate::error::{Fault, Pgrst};
use crate::media::{self, BodyKind};
use crate::prefer::Preferences;
use crate::query::{self, QueryError, QueryOps};

/// Why a request cannot even be planned: its body, headers or form.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("Empty or invalid json")]
    InvalidJson(String),
    #[error("Empty or invalid json")]
    NestedTooDeep(usize),
    #[error("Content-Type not acceptable: {0}")]
    UnsupportedContentType(String),
    #[error("Invalid body: {0} must be UTF-8 text without NUL characters")]
    NotText(&'static str),
    #[error("The schema must be one of the following: {}", .0.join(", "))]
    UnknownProfile(Vec<String>),
    #[error(
        "Idempotency-Key must be one RFC 8941 string (\"…\") or one unquoted key of printable ASCII"
    )]
    BadIdempotencyKey,
    #[error("The request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("Could not read the request body")]
    BodyUnreadable(String),
    #[error("The request body did not arrive in time")]
    BodyTimeout(super::deadline::BodyTimeout),
    #[error("{message}")]
    MethodNotAllowed {
        message: &'static str,
        allow: &'static str,
    },
    #[error("Invalid path specified in request URL")]
    InvalidPath(String),
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("Requested range not satisfiable")]
    InvalidRange(String),
}

impl Fault for RequestError {
    fn pgrst(&self) -> Pgrst {
        match self {
            RequestError::InvalidJson(_) | RequestError::NestedTooDeep(_) => Pgrst::InvalidBody,
            // PostgREST 12/13 answer 400 PGRST102 for a body they cannot read.
            RequestError::UnsupportedContentType(_) | RequestError::NotText(_) => {
                Pgrst::InvalidBody
            }
            RequestError::UnknownProfile(_) => Pgrst::UnacceptableSchema,
            RequestError::BadIdempotencyKey | RequestError::BodyUnreadable(_) => Pgrst::QueryParam,
            RequestError::BodyTooLarge(_) => Pgrst::BodyTooLarge,
            RequestError::BodyTimeout(_) => Pgrst::BodyTimeout,
            RequestError::MethodNotAllowed { .. } => Pgrst::InvalidMethod,
            RequestError::InvalidPath(_) => Pgrst::InvalidPath,
            RequestError::Query(e) => e.pgrst(),
            RequestError::InvalidRange(_) => Pgrst::InvalidRange,
        }
    }
    fn details(&self) -> Option<String> {
        match self {
            RequestError::InvalidJson(d) | RequestError::BodyUnreadable(d) => Some(d.clone()),
            RequestError::NestedTooDeep(depth) => Some(format!(
                "Arrays and objects nest {depth} levels deep; at most {MAX_NESTING} are accepted"
            )),
            RequestError::InvalidPath(path) => Some(format!(
                "{path} is not served; functions are under /rpc/<name>"
            )),
            RequestError::Query(e) => e.details(),
            RequestError::BodyTimeout(why) => Some(why.to_string()),
            RequestError::InvalidRange(_) => Some(
                "The lower boundary must be lower than or equal to the upper boundary in the Range header.".into(),
            ),
            _ => None,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            RequestError::BodyTooLarge(_) => {
                Some("Send a smaller body, or raise PGRPC_MAX_BODY_BYTES".into())
            }
            RequestError::BodyTimeout(_) => Some(
                "Send the body as soon as the headers, or raise PGRPC_BODY_READ_TIMEOUT_MS".into(),
            ),
            _ => None,
        }
    }
    fn headers(&self) -> Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)> {
        match self {
            RequestError::MethodNotAllowed { allow, .. } => vec![(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static(allow),
            )],
            // The rest of the body may still come: the connection cannot
            // carry another request.
            RequestError::BodyTimeout(_) => vec![(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            )],
            _ => Vec::new(),
        }
    }
}

/// Reads everything a call needs from the request: arguments (body or
/// query string), profile, Accept, the `Idempotency-Key`, and the headers
/// as JSON for `request.headers`.
pub async fn parse<B>(
    req: Request<B>,
    function: &str,
    schemas: &[String],
    max_body_bytes: usize,
) -> Result<ApiRequest, RequestError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let write = method == Method::POST;
    let schema = profile(req.headers(), write, schemas)?.to_string();
    check_header_lists(req.headers())?;
    let accept = media::parse_accept(req.headers().get(ACCEPT).map(|v| v.as_bytes()));
    let headers_json = headers_json(req.headers());
    let cookies_json = cookies_json(req.headers())?;
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let apikey = req.headers().get("apikey").map(|v| v.as_bytes().to_vec());
    let idempotency_key = idempotency_key(req.headers(), write)?;
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let prefer = Preferences::from_headers(req.headers());
    let count = prefer.count();
    let range = if method == Method::GET {
        range_header(req.headers())?
    } else {
        // As PostgREST (after RFC 9110), Range counts on GET only;
        // limit/offset apply whatever the method.
        None
    };
    let (query_args, ops) = parse_query(query.as_bytes(), !write)?;
    let mut form = None;
    let args = if write {
        let kind = media::body_kind(req.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()))
            .map_err(RequestError::UnsupportedContentType)?;
        let bytes = read_body(req, max_body_bytes).await?;
        match kind {
            BodyKind::Json => parse_json_body(&bytes)?,
            BodyKind::Form => {
                let args = parse_pairs(&bytes)?;
                form = Some(bytes);
                Args {
                    kind: BodyKind::Form,
                    ..args
                }
            }
            BodyKind::Text | BodyKind::Xml | BodyKind::Bytea => raw_body(kind, &bytes)?,
        }
    } else {
        query_args
    };
    Ok(ApiRequest {
        method,
        function: function.to_string(),
        path,
        schema,
        args,
        ops,
        range,
        count,
        prefer,
        form,
        query,
        accept,
        idempotency_key,
        authorization,
        apikey,
        headers_json,
        cookies_json,
    })
}

/// The `Idempotency-Key` of a write (it is ignored on reads): an RFC 8941
/// sf-string (`"…"`, as the IETF draft writes it), or the key unquoted,
/// as before the draft; both name the same key. Sent more than once, or
/// not printable ASCII, or a quoted string that RFC 8941 refuses: 400
/// `PGRST100`. Its length, 1 to 255 characters, is the database's rule
/// (`pgrpc_http`), answered 400 `invalid_idempotency_key`.
pub fn idempotency_key(headers: &HeaderMap, write: bool) -> Result<Option<String>, RequestError> {
    if !write {
        return Ok(None);
    }
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RequestError::BadIdempotencyKey);
    }
    super::headers::idempotency_key(value.as_bytes())
        .map(Some)
        .ok_or(RequestError::BadIdempotencyKey)
}

async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, RequestError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(RequestError::BodyTooLarge(limit));
        }
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(RequestError::BodyTooLarge(limit))
            } else if let Some(timeout) = e.downcast_ref::<super::deadline::BodyTimeout>() {
                Err(RequestError::BodyTimeout(*timeout))
            } else {
                Err(RequestError::BodyUnreadable(e.to_string()))
            }
        }
    }
}

/// All request headers as a JSON object with lowercase names.
/// A header sent more than once keeps its last value. `Cookie` is left
/// out, as PostgREST leaves it out: the cookies are in `request.cookies`.
fn headers_json(headers: &HeaderMap) -> String {
    let mut out = String::with_capacity(64 * headers.len() + 2);
    out.push('{');
    let mut first = true;
    for name in headers.keys() {
        if name == COOKIE {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        push_json_string(&mut out, name.as_str());
        out.push(':');
        match headers.get_all(name).iter().next_back() {
            Some(v) => push_json_string(&mut out, &String::from_utf8_lossy(v.as_bytes())),
            None => out.push_str("\"\""),
        }
    }
    out.push('}');
    out
}

/// The most `name=value` pairs the `Cookie` headers of one request may
/// hold. Browsers keep at most 180 cookies per site (Chromium; Firefox
/// allows 150), so no browser reaches it; past it the request is refused
/// rather than some cookies silently dropped (docs/limits.md).
pub const MAX_COOKIE_PAIRS: usize = 256;
/// The most items of the `Prefer` headers and media ranges of `Accept`.
pub const MAX_PREFER_ITEMS: usize = 64;
pub const MAX_ACCEPT_RANGES: usize = 64;
/// The most parameters of a query string (or a form body).
pub const MAX_QUERY_PARAMS: usize = 1_000;

fn too_many(what: &'static str, limit: usize, unit: &'static str) -> RequestError {
    RequestError::Query(QueryError::Limit { what, limit, unit })
}

/// Refuses `Prefer` and `Accept` lists longer than their bounds, counting
/// commas in one pass without building anything.
pub(crate) fn check_header_lists(headers: &HeaderMap) -> Result<(), RequestError> {
    let items = |name: &str| -> usize {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().split(|b| *b == b',').count())
            .sum()
    };
    if items("prefer") > MAX_PREFER_ITEMS {
        return Err(too_many("Prefer", MAX_PREFER_ITEMS, "preferences"));
    }
    if items("accept") > MAX_ACCEPT_RANGES {
        return Err(too_many("Accept", MAX_ACCEPT_RANGES, "media ranges"));
    }
    Ok(())
}

/// Every `name=value` of the `Cookie` headers, in order, trimmed, with the
/// quotes of a quoted value removed; pairs without a name are skipped.
/// One pass over the headers: linear in their length.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim(), value.trim().trim_matches('"')))
        .filter(|(name, _)| !name.is_empty())
}

/// The `Cookie` headers as a JSON object of name → value (the last value of
/// a repeated name wins, in the place of its last occurrence), for
/// `request.cookies`; more than [`MAX_COOKIE_PAIRS`] pairs are refused.
/// Linear: each name is looked up in a hash map, not in the list so far.
pub(crate) fn cookies_json(headers: &HeaderMap) -> Result<String, RequestError> {
    let mut cookies: Vec<Option<(&str, &str)>> = Vec::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (name, value) in cookie_pairs(headers) {
        if cookies.len() == MAX_COOKIE_PAIRS {
            return Err(too_many("Cookie", MAX_COOKIE_PAIRS, "pairs"));
        }
        if let Some(previous) = last.insert(name, cookies.len()) {
            cookies[previous] = None;
        }
        cookies.push(Some((name, value)));
    }
    let mut out = String::from("{");
    for (i, (name, value)) in cookies.iter().flatten().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push(':');
        push_json_string(&mut out, value);
    }
    out.push('}');
    Ok(out)
}

/// `s` as a JSON string literal (RFC 8259 §7 escapes).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

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
    form_urlencoded::parse(query)
        .enumerate()
        .map(move |(i, (k, v))| {
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
    let mut map = Map::new();
    for pair in bounded_pairs(query, "A form body", || {
        RequestError::NotText("a form body")
    }) {
        let (k, v) = pair?;
        map.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    Ok(args_of(map))
}

fn args_of(map: Map<String, Value>) -> Args {
    let keys = map.keys().cloned().collect();
    Args::from_object(keys, Value::Object(map).to_string())
}

/// The query string as function arguments and operations, by PostgREST's
/// rule: on GET (`args`), a parameter is an argument unless its name is
/// reserved (`select`, `order`, `limit`, `offset`, `or`, `and`) or its
/// value starts with an operator (`eq.`, `not.in.`, …); otherwise (POST)
/// every parameter is an operation.
pub fn parse_query(query: &[u8], args: bool) -> Result<(Args, QueryOps), RequestError> {
    let mut map = Map::new();
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
                map.insert(k.into_owned(), Value::String(v.into_owned()));
            }
            _ => ops.filters.push(query::parse_filter(key, &v)?),
        }
    }
    Ok((args_of(map), ops))
}

/// `Range: items=0-9` (or `0-9`): the first and last item asked for. A
/// value of another form is ignored, as PostgREST ignores it; a last item
/// before the first is 416.
pub fn range_header(headers: &HeaderMap) -> Result<Option<(i64, Option<i64>)>, RequestError> {
    let Some(value) = headers.get(hyper::header::RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let spec = text.strip_prefix("items=").unwrap_or(text);
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return Ok(None);
    }
    let (Ok(first), last) = (first.parse::<i64>(), last.parse::<i64>().ok()) else {
        return Ok(None);
    };
    match last {
        Some(l) if l < first => Err(RequestError::InvalidRange(text.to_string())),
        _ => Ok(Some((first, last))),
    }
}

/// The schema a request addresses: `Accept-Profile` for reads,
/// `Content-Profile` for writes, else the first exposed schema.
pub fn profile<'a>(
    headers: &HeaderMap,
    write: bool,
    schemas: &'a [String],
) -> Result<&'a str, RequestError> {
    let name = if write {
        "content-profile"
    } else {
        "accept-profile"
    };
    let Some(value) = headers.get(name) else {
        return Ok(schemas[0].as_str());
    };
    let wanted = value.to_str().unwrap_or("").trim();
    schemas
        .iter()
        .find(|s| s.as_str() == wanted)
        .map(String::as_str)
        .ok_or_else(|| RequestError::UnknownProfile(schemas.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use hyper::header::HeaderValue;

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
    fn headers_become_a_json_object_with_the_last_value_of_each() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().expect("value"));
        h.append("x-a", "2\"q".parse().expect("value"));
        h.insert("host", "h".parse().expect("value"));
        h.insert(
            "x-c",
            HeaderValue::from_bytes(b"a\\b\tc\xff").expect("value"),
        );
        let v: Value = serde_json::from_str(&headers_json(&h)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"x-a": "2\"q", "host": "h", "x-c": "a\\b\tc\u{fffd}"})
        );
    }

    #[test]
    fn cookies_are_parsed_and_left_out_of_the_headers() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1; b=\"two\"; a=3; junk".parse().expect("value"));
        h.insert("x-b", "v".parse().expect("value"));
        let cookies: Value =
            serde_json::from_str(&cookies_json(&h).expect("cookies")).expect("json");
        assert_eq!(cookies, serde_json::json!({"a": "3", "b": "two"}));
        let headers: Value = serde_json::from_str(&headers_json(&h)).expect("json");
        assert_eq!(headers, serde_json::json!({"x-b": "v"}));
        assert_eq!(cookies_json(&HeaderMap::new()).expect("none"), "{}");
    }

    #[test]
    fn repeated_query_parameter_keeps_the_last_value() {
        let a = parse_pairs(b"a=1&a=2&b=x%20y").expect("pairs");
        let (_, json) = a.object.expect("object");
        let v: Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["a"], "2");
        assert_eq!(v["b"], "x y");
    }
}
