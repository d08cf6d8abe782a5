//! Reading a request into an [`ApiRequest`]: the body and query string
//! become the JSON argument object (`args`), the Accept header picks the
//! response form, the profile headers pick the schema, and the headers and
//! cookies become JSON for SQL (`headers`). This module holds the error,
//! the parse of the whole request, the body's read, the `Idempotency-Key`,
//! `Range` and profile headers.

mod args;
mod headers;

pub(crate) use args::object_keys;
pub use args::{
    pairs, parse_json_body, parse_pairs, parse_query, raw_body, MAX_NESTING, MAX_QUERY_PARAMS,
};
pub(crate) use headers::{check_header_lists, cookies_json};
pub use headers::{cookie_pairs, MAX_ACCEPT_RANGES, MAX_COOKIE_PAIRS, MAX_PREFER_ITEMS};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{HeaderMap, HeaderName, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};

use crate::api_request::{ApiRequest, Args};
use crate::error::{Fault, Pgrst};
use crate::media::{self, BodyKind};
use crate::prefer::Preferences;
use crate::query::QueryError;
use headers::headers_json;

/// Header names read on every call, parsed once: a lookup by `&str`
/// parses the name each time.
pub const APIKEY: HeaderName = HeaderName::from_static("apikey");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const CONTENT_PROFILE: HeaderName = HeaderName::from_static("content-profile");
const ACCEPT_PROFILE: HeaderName = HeaderName::from_static("accept-profile");

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
    BodyTimeout(crate::http::deadline::BodyTimeout),
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
    let apikey = req.headers().get(APIKEY).map(|v| v.as_bytes().to_vec());
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
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RequestError::BadIdempotencyKey);
    }
    crate::http::headers::idempotency_key(value.as_bytes())
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
            } else if let Some(timeout) = e.downcast_ref::<crate::http::deadline::BodyTimeout>() {
                Err(RequestError::BodyTimeout(*timeout))
            } else {
                Err(RequestError::BodyUnreadable(e.to_string()))
            }
        }
    }
}

fn too_many(what: &'static str, limit: usize, unit: &'static str) -> RequestError {
    RequestError::Query(QueryError::Limit { what, limit, unit })
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
        CONTENT_PROFILE
    } else {
        ACCEPT_PROFILE
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
