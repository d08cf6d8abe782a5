//! The HTTP side (frontend): routing, the `/rpc/<function>` contract of
//! PostgREST (`rpc`), and the operational endpoints (`/live`, `/ready`,
//! `/metrics`, `/`). An RPC request walks once through parse (`request`) →
//! `plan` → `db::exec` → `rpc::respond`. This module holds the entry point
//! of every request (metrics, logs, spans, CORS, `Vary`), the routing and
//! the operational endpoints.

pub mod batch;
pub mod body;
pub mod consistency;
pub(crate) mod cors;
pub mod deadline;
pub mod headers;
pub mod request;
mod rpc;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tracing::{info, info_span, Instrument};

use crate::app::AppState;
use crate::db::exec::ExecError;
use crate::error::ApiError;
use crate::plan::PlanError;
use crate::trace::otlp::{Attr, Exporter, Kind, SpanData};
use crate::trace::{RequestTrace, Scope};
use request::RequestError;

pub use body::Body;

/// `X-Request-Id`, parsed once.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Entry point for every request: routes, answers, records metrics and logs.
pub async fn handle(state: Arc<AppState>, mut req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id(&state, &req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let origins = &state.config.cors_allowed_origins;
    if let Some(answer) = cors::preflight(origins, &method, req.headers()) {
        return match answer {
            Ok(headers) => {
                let mut resp = Response::new(Body::default());
                *resp.headers_mut() = headers;
                resp
            }
            Err(e) => ApiError::from(e).into_response(),
        };
    }
    let origin = req.headers().get(hyper::header::ORIGIN).cloned();
    let scope = Scope::new(RequestTrace::from_headers(req.headers()));
    let trace_id = scope.trace.trace_id_hex();
    let span = info_span!("request", trace_id = %trace_id, request_id = %request_id);
    let (mut resp, label) = match head_bytes(&req) {
        n if n > crate::server::MAX_HEADER_BYTES => (
            ApiError::from(HeadersTooLarge(n)).into_response(),
            state.recorder.label_for(None),
        ),
        _ => {
            // SQL sees the effective trace context in request.headers.
            scope.trace.apply(req.headers_mut());
            scope.run(route(&state, req)).instrument(span).await
        }
    };
    let echoed = cors::decorate(origins, origin.as_ref(), resp.headers_mut());
    // A call (`/rpc/<fn>`) or a batch of calls (`/rpc`).
    if path == "/rpc" || path.starts_with("/rpc/") {
        headers::vary_rpc(resp.headers_mut(), echoed);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    let transaction = scope.transaction();
    state.recorder.observe(
        &label,
        status,
        elapsed,
        transaction.map(|t| t.1),
        scope.pool_wait(),
    );
    if let Some(exporter) = &state.otlp {
        export_spans(exporter, &scope, &method, &label, status, transaction);
    }
    info!(
        request_id = %request_id,
        trace_id = %trace_id,
        method = %method,
        path = %path,
        status,
        micros = elapsed.as_micros() as u64,
        "request"
    );
    resp
}

/// The request's span (a child of the caller's, if it sent one) and its
/// transaction's, for a sampled trace.
fn export_spans(
    exporter: &Exporter,
    scope: &Scope,
    method: &Method,
    label: &Arc<str>,
    status: u16,
    transaction: Option<(std::time::SystemTime, std::time::Duration)>,
) {
    let trace = &scope.trace;
    if !trace.sampled() {
        return;
    }
    let end = std::time::SystemTime::now();
    exporter.record(SpanData {
        trace_id: trace.trace_id,
        span_id: trace.request_span,
        parent: trace.remote_parent,
        name: format!("{method} {label}"),
        kind: Kind::Server,
        start: scope.started,
        end,
        attributes: vec![
            ("http.request.method", Attr::Str(method.to_string())),
            ("http.route", Attr::Str(label.to_string())),
            ("http.response.status_code", Attr::Int(i64::from(status))),
        ],
        error: status >= 500,
    });
    if let Some((start, took)) = transaction {
        exporter.record(SpanData {
            trace_id: trace.trace_id,
            span_id: trace.transaction_span,
            parent: Some(trace.request_span),
            name: format!("transaction {label}"),
            kind: Kind::Client,
            start,
            end: start + took,
            attributes: vec![
                ("db.system", Attr::Str("postgresql".into())),
                ("db.operation.name", Attr::Str(label.to_string())),
            ],
            error: status >= 500,
        });
    }
}

/// Entry point of the admin address (`PGRPC_ADMIN_LISTEN`): `/live`,
/// `/ready` and `/metrics` as on the main address; any other path is 404.
pub async fn handle_admin(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/live" | "/ready" | "/metrics" => handle(state, req).await,
        path => ApiError::from(RequestError::InvalidPath(path.to_string())).into_response(),
    }
}

/// The size of a request's line and headers, as sent (near enough: the
/// separators are counted as four bytes a field).
fn head_bytes(req: &Request<Incoming>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

/// A request whose line and headers are over `MAX_HEADER_BYTES`.
#[derive(Debug, thiserror::Error)]
#[error("The request's headers are too large")]
struct HeadersTooLarge(usize);

impl crate::error::Fault for HeadersTooLarge {
    fn pgrst(&self) -> crate::error::Pgrst {
        crate::error::Pgrst::HeadersTooLarge
    }
    fn details(&self) -> Option<String> {
        Some(format!(
            "{} bytes of request line and headers; at most {} are accepted",
            self.0,
            crate::server::MAX_HEADER_BYTES
        ))
    }
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        vec![(hyper::header::CONNECTION, HeaderValue::from_static("close"))]
    }
}

fn request_id(state: &AppState, req: &Request<Incoming>) -> String {
    if let Some(v) = req
        .headers()
        .get(X_REQUEST_ID)
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
    if path == "/rpc" {
        let label = state.recorder.label_for(Some("/rpc"));
        return match Box::pin(batch::batch(state, req)).await {
            Ok(resp) => (resp, label),
            Err(e) => (e.into_response(), label),
        };
    }
    if let Some(name) = path.strip_prefix("/rpc/") {
        let name = percent_encoding::percent_decode_str(name)
            .decode_utf8_lossy()
            .into_owned();
        let known = state
            .catalog
            .get()
            .is_some_and(|cache| cache.has_function(&name));
        let label = state.recorder.label_for(known.then_some(name.as_str()));
        // Boxed: the call's future is large, and this one is moved by
        // hyper (into its dispatcher, the panic guard…); a pointer is
        // cheaper to move than the whole state (callgrind: memcpy was a
        // third of the instructions per request).
        return match Box::pin(rpc::rpc(state, req, &name)).await {
            Ok(resp) => (resp, label),
            Err(e) => (e.into_response(), label),
        };
    }
    let fixed = matches!(path, "/live" | "/ready" | "/metrics" | "/");
    let label = state.recorder.label_for(fixed.then_some(path));
    let method = req.method();
    let read = method == Method::GET || method == Method::HEAD;
    let resp = match path {
        "/live" if read => json_response(StatusCode::OK, json!({"status": "live"}).to_string()),
        "/ready" if read => {
            if state.catalog.is_ready() {
                json_response(StatusCode::OK, json!({"status": "ready"}).to_string())
            } else {
                ApiError::from(ExecError::Unavailable(
                    "The database is not reachable or the function cache is not loaded yet".into(),
                ))
                .into_response()
            }
        }
        "/metrics" if read => {
            let mut r = Response::new(Body::from(Bytes::from(state.metrics.render(
                &state.pools,
                state.replica.as_deref(),
                &state.catalog,
            ))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/" if read => match state.catalog.get() {
            Some(cache) => openapi(state, &req, &cache)
                .await
                .unwrap_or_else(ApiError::into_response),
            None => ApiError::from(PlanError::SchemaCacheMissing).into_response(),
        },
        "/live" | "/ready" | "/metrics" | "/" => ApiError::from(RequestError::MethodNotAllowed {
            message: "Only GET and HEAD are allowed here",
            allow: "GET,HEAD",
        })
        .into_response(),
        _ => ApiError::from(RequestError::InvalidPath(path.to_string())).into_response(),
    };
    let resp = if method == Method::HEAD {
        strip_body(resp)
    } else {
        resp
    };
    (resp, label)
}

/// `GET /`: the OpenAPI document of the profile's schema, listing only the
/// functions the request's role (from its token, or anonymous) may call.
async fn openapi(
    state: &AppState,
    req: &Request<Incoming>,
    cache: &crate::db::schema::SchemaCache,
) -> Result<Response<Body>, ApiError> {
    let schema = request::profile(req.headers(), false, &state.config.schemas)?;
    let authorization = req.headers().get(hyper::header::AUTHORIZATION);
    let apikey = req.headers().get(request::APIKEY).map(|v| v.as_bytes());
    let identity = state
        .auth
        .identify_fresh(authorization.map(|v| v.as_bytes()), apikey, &cache.roles)
        .await?;
    let mut r = json_response(
        StatusCode::OK,
        crate::openapi::document(cache, schema, &identity.role).to_string(),
    );
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openapi+json; charset=utf-8"),
    );
    Ok(r)
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn strip_body(resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let len = hyper::body::Body::size_hint(&body).exact().unwrap_or(0);
    headers::head_length(
        &mut parts.headers,
        usize::try_from(len).unwrap_or(usize::MAX),
    );
    Response::from_parts(parts, Body::from(Bytes::new()))
}
