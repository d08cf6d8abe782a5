//! The HTTP side: routing, the `/rpc/<function>` contract of PostgREST, and
//! the operational endpoints. A request walks once from here into `db`.

pub mod request;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tracing::info;

use crate::db::call::{CallResult, RequestSettings};
use crate::db::exec::{self, CallJob, Executed, IdempotentCall};
use crate::db::schema::{Routine, SchemaCache, Shape};
use crate::error::ApiError;
use crate::server::AppState;
use request::{Args, BodyKind};

pub type Body = Full<Bytes>;

const RPC_ALLOW_READ: &str = "OPTIONS,GET,HEAD,POST";
const RPC_ALLOW_WRITE: &str = "OPTIONS,POST";

/// Entry point for every request: routes, answers, records metrics and logs.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id(&state, &req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (mut resp, label) = route(&state, req).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.observe(&label, status, elapsed);
    info!(
        request_id = %request_id,
        method = %method,
        path = %path,
        status,
        micros = elapsed.as_micros() as u64,
        "request"
    );
    resp
}

fn request_id(state: &AppState, req: &Request<Incoming>) -> String {
    if let Some(v) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) {
            return v.to_string();
        }
    }
    state.next_request_id()
}

async fn route(state: &Arc<AppState>, req: Request<Incoming>) -> (Response<Body>, Arc<str>) {
    let path = req.uri().path();
    if let Some(name) = path.strip_prefix("/rpc/") {
        let name = percent_encoding::percent_decode_str(name)
            .decode_utf8_lossy()
            .into_owned();
        let label = state.metrics.label_for(&name);
        return match rpc(state, req, &name).await {
            Ok(resp) => (resp, label),
            Err(e) => (e.into_response(), label),
        };
    }
    let label = state.metrics.label_for(path);
    let method = req.method();
    let read = method == Method::GET || method == Method::HEAD;
    let resp = match path {
        "/live" if read => json_response(StatusCode::OK, json!({"status": "live"}).to_string()),
        "/ready" if read => {
            if state.catalog.is_ready() {
                json_response(StatusCode::OK, json!({"status": "ready"}).to_string())
            } else {
                ApiError::unavailable(
                    "The database is not reachable or the function cache is not loaded yet",
                )
                .into_response()
            }
        }
        "/metrics" if read => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.render(&state.pool))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/" if read => match state.catalog.get() {
            Some(cache) => match request::profile(req.headers(), false, &state.config.schemas) {
                Ok(schema) => {
                    let mut r = json_response(
                        StatusCode::OK,
                        crate::openapi::document(&cache, schema).to_string(),
                    );
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/openapi+json; charset=utf-8"),
                    );
                    r
                }
                Err(e) => e.into_response(),
            },
            None => schema_cache_missing().into_response(),
        },
        "/live" | "/ready" | "/metrics" | "/" => {
            let mut r = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "PGRST101",
                "Only GET and HEAD are allowed here",
            )
            .into_response();
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET,HEAD"));
            r
        }
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "PGRST125",
            "Invalid path specified in request URL",
        )
        .details(format!(
            "{path} is not served; functions are under /rpc/<name>"
        ))
        .into_response(),
    };
    let resp = if method == Method::HEAD {
        strip_body(resp)
    } else {
        resp
    };
    (resp, label)
}

fn schema_cache_missing() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "PGRST002",
        "Could not query the database for the schema cache. Retrying.",
    )
    .header(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn strip_body(resp: Response<Body>) -> Response<Body> {
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// `/rpc/<name>` for GET, HEAD, POST and OPTIONS.
async fn rpc(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let write = match method {
        Method::GET | Method::HEAD => false,
        Method::POST => true,
        Method::OPTIONS => return options(state, &req, name),
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "PGRST101",
                "For functions, only GET, HEAD, POST and OPTIONS are allowed",
            )
            .header(ALLOW, HeaderValue::from_static(RPC_ALLOW_READ)))
        }
    };
    let cache = state.catalog.get().ok_or_else(schema_cache_missing)?;
    let schema = request::profile(req.headers(), write, &state.config.schemas)?;
    let identity = state.auth.identify(
        req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes),
        &cache.roles,
    )?;
    let singular = request::wants_single_object(req.headers())?;
    let headers_json = headers_json(req.headers());
    let idempotency_key = if write {
        req.headers()
            .get("idempotency-key")
            .map(|v| v.to_str().map(str::to_string))
            .transpose()
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "PGRST100",
                    "Idempotency-Key must be visible ASCII",
                )
            })?
    } else {
        None
    };
    let path = req.uri().path().to_string();
    let args = if write {
        let kind = request::body_kind(req.headers())?;
        let bytes = read_body(req, state.config.max_body_bytes).await?;
        match kind {
            BodyKind::Json => request::parse_json_body(&bytes)?,
            BodyKind::Form => request::parse_pairs(&bytes)?,
        }
    } else {
        request::parse_pairs(req.uri().query().unwrap_or("").as_bytes())?
    };
    let (routine, args_json) = resolve(&cache, schema, name, &args, write)?;
    let head = method == Method::HEAD;
    let idempotency = idempotency_key.map(|key| IdempotentCall {
        request_hash: crate::idempotency::request_hash(method.as_str(), &path, schema, args_json.0),
        key,
        shape: crate::idempotency::shaper(routine.clone(), singular),
    });
    let job = CallJob {
        sql: routine.call_sql(args_json.1, singular),
        args: args_json.0.to_string(),
        read_only: !write,
        singular,
        settings: RequestSettings {
            role_settings: cache.settings_of(&identity.role),
            role: identity.role,
            claims: identity.claims,
            method: method.as_str().to_string(),
            path,
            headers: headers_json,
        },
        idempotency,
        anon: identity.anon,
    };
    let built = match exec::execute(&state.pool, job).await? {
        Executed::Called(result) => build_response(&routine, result, singular)?,
        Executed::Replayed(stored) => crate::idempotency::replayed(stored)?,
    };
    Ok(finish(built, schema, state, head))
}

/// A response computed from a call, before the transport headers.
pub struct Built {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<String>,
    pub content_type: &'static str,
    pub replayed: bool,
}

fn finish(built: Built, schema: &str, state: &AppState, head: bool) -> Response<Body> {
    let body = match (&built.body, head) {
        (Some(b), false) => Bytes::from(b.clone()),
        _ => Bytes::new(),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = built.status;
    let h = resp.headers_mut();
    if built.body.is_some() {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(built.content_type));
    }
    if state.config.schemas.len() > 1 {
        if let Ok(v) = HeaderValue::from_str(schema) {
            h.insert(HeaderName::from_static("content-profile"), v);
        }
    }
    if built.replayed {
        h.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    for (name, value) in built.headers {
        h.insert(name, value);
    }
    resp
}

/// Turns the call's row into status, headers and body.
pub fn build_response(routine: &Routine, r: CallResult, singular: bool) -> Result<Built, ApiError> {
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
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "PGRST112",
                        "The status code must be a positive integer",
                    )
                    .details(format!("response.status was set to {s:?}"))
                })?,
        ),
    };
    let content_type = if singular {
        "application/vnd.pgrst.object+json; charset=utf-8"
    } else {
        "application/json; charset=utf-8"
    };
    if routine.shape == Shape::Void {
        return Ok(Built {
            status: status.unwrap_or(StatusCode::NO_CONTENT),
            headers,
            body: None,
            content_type,
            replayed: false,
        });
    }
    Ok(Built {
        status: status.unwrap_or(StatusCode::OK),
        headers,
        body: Some(r.body.unwrap_or_else(|| "null".to_string())),
        content_type,
        replayed: false,
    })
}

/// `response.headers`: a JSON array of single-key objects.
pub fn parse_response_headers(text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "PGRST111",
            "The response.headers setting must be a JSON array of objects",
        )
        .details(text.to_string())
    };
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

/// Picks the one routine the arguments call, or answers 404 / 300.
fn resolve<'a>(
    cache: &SchemaCache,
    schema: &str,
    name: &str,
    args: &'a Args,
    write: bool,
) -> Result<(Arc<Routine>, (&'a str, u64)), ApiError> {
    let overloads = cache.overloads(schema, name).unwrap_or(&[]);
    let mut named: Vec<(&Arc<Routine>, u64)> = Vec::new();
    if let Some((keys, _)) = &args.object {
        for r in overloads.iter().filter(|r| !r.takes_body) {
            if let Some(mask) = r.match_keys(keys.iter().map(String::as_str)) {
                named.push((r, mask));
            }
        }
    }
    if named.len() == 1 {
        let (r, mask) = named[0];
        let json = args
            .object
            .as_ref()
            .map(|(_, j)| j.as_str())
            .unwrap_or("{}");
        return Ok((r.clone(), (json, mask)));
    }
    if named.len() > 1 {
        let list: Vec<String> = named
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
        return Err(ApiError::new(
            StatusCode::MULTIPLE_CHOICES,
            "PGRST203",
            format!(
                "Could not choose the best candidate function between: {}",
                list.join(", ")
            ),
        )
        .hint("Try renaming the parameters or the function itself in the database so function overloading can be resolved"));
    }
    if write {
        if let Some(r) = overloads.iter().find(|r| r.takes_body) {
            return Ok((r.clone(), (args.whole.as_str(), 0)));
        }
    }
    let keys: Vec<&str> = match &args.object {
        Some((keys, _)) => {
            let mut k: Vec<&str> = keys.iter().map(String::as_str).collect();
            k.sort_unstable();
            k
        }
        None => Vec::new(),
    };
    if args.object.is_none() && !overloads.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "PGRST102",
            "Invalid body: expected a JSON object (or an array of them)",
        ));
    }
    let mut err = ApiError::new(
        StatusCode::NOT_FOUND,
        "PGRST202",
        format!(
            "Could not find the function {schema}.{name}({}) in the schema cache",
            keys.join(", ")
        ),
    )
    .details(format!(
        "Searched for the function {schema}.{name} with parameters {} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.",
        if keys.is_empty() { "()".to_string() } else { keys.join(", ") }
    ));
    if let Some(first) = overloads.first() {
        err = err.hint(format!(
            "Perhaps you meant to call the function {}",
            first.signature()
        ));
    } else if let Some(similar) = cache.similar_name(schema, name) {
        err = err.hint(format!(
            "Perhaps you meant to call the function {schema}.{similar}"
        ));
    }
    Err(err)
}

fn options(
    state: &AppState,
    req: &Request<Incoming>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let cache = state.catalog.get().ok_or_else(schema_cache_missing)?;
    let schema = request::profile(req.headers(), true, &state.config.schemas)
        .or_else(|_| request::profile(req.headers(), false, &state.config.schemas))?;
    let overloads = cache.overloads(schema, name).unwrap_or(&[]);
    if overloads.is_empty() {
        let mut err = ApiError::new(
            StatusCode::NOT_FOUND,
            "PGRST202",
            format!("Could not find the function {schema}.{name} in the schema cache"),
        );
        if let Some(similar) = cache.similar_name(schema, name) {
            err = err.hint(format!(
                "Perhaps you meant to call the function {schema}.{similar}"
            ));
        }
        return Err(err);
    }
    let allow = if overloads.iter().all(|r| r.is_read_only()) {
        RPC_ALLOW_READ
    } else {
        RPC_ALLOW_WRITE
    };
    let mut r = Response::new(Full::new(Bytes::new()));
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    Ok(r)
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PGRPC413",
            format!("The request body is larger than {limit} bytes"),
        )
        .hint("Send a smaller body, or raise PGRPC_MAX_BODY_BYTES")
    };
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large())
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "PGRST100",
                    "Could not read the request body",
                )
                .details(e.to_string()))
            }
        }
    }
}

/// All request headers as a JSON object with lowercase names.
fn headers_json(headers: &hyper::HeaderMap) -> String {
    let mut map = Map::with_capacity(headers.len());
    for (name, value) in headers {
        map.insert(
            name.as_str().to_string(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    Value::Object(map).to_string()
}
