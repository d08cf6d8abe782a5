//! The HTTP side (frontend): routing, the `/rpc/<function>` contract of
//! PostgREST, and the operational endpoints. An RPC request walks once
//! through parse (`request`) → `plan` → `db::exec` → [`respond`].

pub mod batch;
pub mod body;
pub mod consistency;
pub(crate) mod cors;
pub mod deadline;
pub mod headers;
pub mod request;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tracing::{info, info_span, Instrument};

use crate::app::AppState;
use crate::db::exec::{self, CallJob, ExecError, Executed, IdempotentCall, RequestSettings};
use crate::db::replica::ReadRoute;
use crate::db::stream::Streamed;
use crate::error::ApiError;
use crate::plan::{self, PlanError, Reply};
use crate::trace::otlp::{Attr, Exporter, Kind, SpanData};
use crate::trace::{RequestTrace, Scope};
use request::RequestError;

pub use body::Body;

const RPC_ALLOW: &str = "OPTIONS,GET,HEAD,POST";

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
            state.metrics.label_for(None),
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
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    let transaction = scope.transaction();
    state.metrics.observe(&label, status, elapsed);
    state
        .metrics
        .observe_database(&label, transaction.map(|t| t.1), scope.pool_wait());
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
    if path == "/rpc" {
        let label = state.metrics.label_for(Some("/rpc"));
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
        let label = state.metrics.label_for(known.then_some(name.as_str()));
        // Boxed: the call's future is large, and this one is moved by
        // hyper (into its dispatcher, the panic guard…); a pointer is
        // cheaper to move than the whole state (callgrind: memcpy was a
        // third of the instructions per request).
        return match Box::pin(rpc(state, req, &name)).await {
            Ok(resp) => (resp, label),
            Err(e) => (e.into_response(), label),
        };
    }
    let fixed = matches!(path, "/live" | "/ready" | "/metrics" | "/");
    let label = state.metrics.label_for(fixed.then_some(path));
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
                &state.pool,
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
    let apikey = req.headers().get("apikey").map(|v| v.as_bytes());
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

/// `/rpc/<name>` for GET, HEAD, POST and OPTIONS: parse → plan → execute
/// → respond.
async fn rpc(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    match *req.method() {
        Method::GET | Method::HEAD | Method::POST => {}
        Method::OPTIONS => return options(state, &req, name),
        _ => {
            return Err(RequestError::MethodNotAllowed {
                message: "For functions, only GET, HEAD, POST and OPTIONS are allowed",
                allow: RPC_ALLOW,
            }
            .into())
        }
    }
    let cache = state.catalog.get().ok_or(PlanError::SchemaCacheMissing)?;
    let lsn =
        consistency::checked_lsn(req.headers(), state.replica.as_deref(), &state.pool).await?;
    let limits = deadline::BodyLimits {
        idle: state.config.body_read_timeout,
        min_rate: state.config.body_min_bytes_per_sec,
    };
    let request = request::parse(
        req.map(|body| deadline::ReadDeadline::new(body, limits)),
        name,
        &state.config.schemas,
        state.config.max_body_bytes,
    )
    .await?;
    let mut timing = headers::Timing::new(state.config.server_timing);
    let result = call(state, &cache, request, lsn, &mut timing).await;
    timed(timing, result)
}

/// The answer of a call or a batch with its `Server-Timing`: on success
/// the stages `timing` lapped and `render`; on error the stages that ran,
/// the one that failed included.
fn timed(
    mut timing: headers::Timing,
    result: Result<Response<Body>, ApiError>,
) -> Result<Response<Body>, ApiError> {
    match result {
        Ok(mut resp) => {
            timing.lap("render");
            timing.write(resp.headers_mut());
            Ok(resp)
        }
        Err(mut e) => {
            timing.lap_failed();
            if let Some(v) = timing.value() {
                e.headers
                    .push((HeaderName::from_static("server-timing"), v));
            }
            Err(e)
        }
    }
}

/// The stages of an RPC call that `Server-Timing` measures: identify the
/// caller, plan, run the transaction, render the answer (`timing` laps
/// each but the last, which the caller times).
async fn call(
    state: &Arc<AppState>,
    cache: &crate::db::schema::SchemaCache,
    request: crate::api_request::ApiRequest,
    lsn: Option<crate::db::lsn::Lsn>,
    timing: &mut headers::Timing,
) -> Result<Response<Body>, ApiError> {
    let identity = state
        .auth
        .identify_fresh(
            request.authorization.as_deref(),
            request.apikey.as_deref(),
            &cache.roles,
        )
        .await?;
    timing.lap("jwt");
    if request.prefer.timezone().is_some() {
        exec::ensure_timezones(&state.pool, cache).await?;
    }
    let plan = plan::plan(cache, &request, state.config.max_rows, state.config.tx_end)?;
    let replica_read = is_replica_read(&request.method, plan.routine.is_read_only());
    // A large SETOF answer streams (on the primary; a read the replica
    // serves is answered whole), HEAD never: its answer has no body.
    let stream = match state.config.stream_threshold_bytes {
        0 => None,
        _ if request.method == Method::HEAD => None,
        _ if replica_read && state.replica.is_some() => None,
        _ => plan::stream_plan(&plan, &request)?,
    };
    // A call that cannot write has nothing to protect: its key is ignored,
    // nothing is stored under it, and it runs each time.
    let key = request.idempotency_key.clone().filter(|_| !plan.read_only);
    let idempotency = key.map(|key| {
        let hashed_path = if request.query.is_empty() {
            request.path.clone()
        } else {
            format!("{}?{}", request.path, request.query)
        };
        IdempotentCall {
            request_hash: plan::request_hash(
                request.method.as_str(),
                &hashed_path,
                &request.schema,
                plan.media.hash_form(),
                request.args.kind,
                &plan.prefs.header_text(),
                &plan.args,
            ),
            key,
            shape: plan::shaper(plan.routine.clone(), plan.media.clone(), plan.page),
        }
    });
    let job = CallJob {
        checks: plan::checks(&plan),
        sql: plan.sql.clone(),
        args: plan.args,
        params: plan.params,
        transient: plan.transient,
        rollback: plan.prefs.rollback,
        read_only: plan.read_only,
        isolation: isolation_level(plan.routine.isolation(&state.config.hoisted_tx_settings)),
        pre_request: state.pre_request.clone(),
        settings: RequestSettings {
            role_settings: cache.settings_for(
                &identity.role,
                &plan.routine,
                &state.config.hoisted_tx_settings,
                plan.prefs.timezone.as_deref(),
            ),
            role: identity.role,
            claims: identity.claims,
            method: request.method.as_str().to_string(),
            path: request.path,
            headers: request.headers_json,
            search_path: state.search_path(&request.schema),
            cookies: request.cookies_json,
        },
        idempotency,
        anon: identity.anon,
        batch: None,
    };
    timing.lap("plan");
    let executed = match stream {
        Some(stream) => {
            let streamed = stream::run(state, &stream, &job).await?;
            match streamed {
                // A count with no row returned: the total is not known
                // from the rows (an offset past the end is 416), so the
                // buffered statement answers.
                Streamed::Whole(result)
                    if plan.page.count && result.rows == 0 && plan.page.offset > 0 =>
                {
                    execute(state, job, replica_read, lsn).await?
                }
                Streamed::Whole(result) => Executed::Called(result),
                Streamed::Started { head, first, rest } => {
                    let mut resp = stream::response(
                        &plan.media,
                        &plan.prefs,
                        plan.page,
                        &stream,
                        head,
                        first,
                        rest,
                    )?;
                    if state.config.schemas.len() > 1 {
                        if let Ok(v) = HeaderValue::from_str(&request.schema) {
                            resp.headers_mut()
                                .insert(HeaderName::from_static("content-profile"), v);
                        }
                    }
                    timing.lap("transaction");
                    return Ok(resp);
                }
            }
        }
        None => execute(state, job, replica_read, lsn).await?,
    };
    timing.lap("transaction");
    let (mut reply, commit_lsn) = match executed {
        Executed::Called(result) => {
            let lsn = result.commit_lsn;
            (
                plan::reply(&plan.routine, result, &plan.media, plan.page)?,
                lsn,
            )
        }
        Executed::Replayed(stored, lsn) => (plan::replayed(stored)?, lsn),
        // A final error, stored under the key and committed with it.
        Executed::Failed(api) => return Err(api),
        // Only a batch job (`batch`) answers a batch.
        Executed::Batch(..) => return Err(ExecError::TaskFailed.into()),
    };
    if let Some(lsn) = commit_lsn {
        // The primary has written at least this far: a read that sends it
        // back is not ahead of the primary, and need not ask it again.
        if let Some(replica) = &state.replica {
            replica.saw_primary(lsn);
        }
        reply.headers.push(consistency::lsn_header(lsn));
        if state.config.lsn_cookie {
            reply.headers.push(consistency::lsn_cookie(lsn));
        }
    }
    // A replay has the same preferences: they are part of the request hash.
    if let Some(value) = plan.prefs.header() {
        reply
            .headers
            .insert(0, (HeaderName::from_static("preference-applied"), value));
    }
    Ok(respond(
        reply,
        &request.schema,
        state,
        request.method == Method::HEAD,
    ))
}

/// Whether a call may run on the read replica: GET or HEAD of a STABLE or
/// IMMUTABLE function (`Idempotency-Key` is POST only). Everything else,
/// POST of any function included, runs on the primary.
fn is_replica_read(method: &Method, read_only_function: bool) -> bool {
    (method == Method::GET || method == Method::HEAD) && read_only_function
}

/// Runs the call: a replica read where the replica can serve it (counted
/// by where it ran and why), everything else on the primary.
async fn execute(
    state: &AppState,
    job: CallJob,
    replica_read: bool,
    lsn: Option<crate::db::lsn::Lsn>,
) -> Result<Executed, ExecError> {
    if !replica_read {
        return exec::execute(&state.pool, job).await;
    }
    let routed = match &state.replica {
        Some(replica) => replica.checkout(lsn).await,
        None => Err(ReadRoute::NoReplica),
    };
    match routed {
        Ok((conn, route)) => {
            state.metrics.count_read(route);
            let again = job.read_copy();
            match (exec::execute_on(conn, job).await, again, &state.replica) {
                // The replica connection broke during the read: it runs
                // once more, on the primary.
                (Err(e), Some(again), Some(replica))
                    if crate::db::replica::connection_broke(&e) =>
                {
                    tracing::warn!(cause = %e, "a read broke on the replica; running it on the primary");
                    replica.read_failed();
                    state.metrics.count_read(ReadRoute::ReplicaFailed);
                    exec::execute(&state.pool, again).await
                }
                (result, _, _) => result,
            }
        }
        Err(route) => {
            state.metrics.count_read(route);
            exec::execute(&state.pool, job).await
        }
    }
}

/// The SQL of a function's `default_transaction_isolation`; anything else
/// leaves the transaction at the default.
fn isolation_level(setting: Option<&str>) -> Option<&'static str> {
    match setting?.trim().to_ascii_lowercase().as_str() {
        "serializable" => Some("SERIALIZABLE"),
        "repeatable read" => Some("REPEATABLE READ"),
        "read committed" => Some("READ COMMITTED"),
        "read uncommitted" => Some("READ UNCOMMITTED"),
        _ => None,
    }
}

/// The response for a reply: body, media type, profile and replay headers.
fn respond(reply: Reply, schema: &str, state: &AppState, head: bool) -> Response<Body> {
    let body = match (&reply.body, head) {
        (Some(b), false) => b.clone(),
        _ => Bytes::new(),
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    if let Some(b) = &reply.body {
        h.insert(CONTENT_TYPE, reply.content_type);
        if head {
            headers::head_length(h, b.len());
        }
    }
    if state.config.schemas.len() > 1 {
        if let Ok(v) = HeaderValue::from_str(schema) {
            h.insert(HeaderName::from_static("content-profile"), v);
        }
    }
    if reply.replayed {
        h.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    for (name, value) in reply.headers {
        h.insert(name, value);
    }
    resp
}

fn options(
    state: &AppState,
    req: &Request<Incoming>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let cache = state.catalog.get().ok_or(PlanError::SchemaCacheMissing)?;
    let schema = request::profile(req.headers(), true, &state.config.schemas)
        .or_else(|_| request::profile(req.headers(), false, &state.config.schemas))?;
    // Every function answers GET and HEAD (READ ONLY; one that writes gets
    // 405 25006), so all four are advertised, as the OpenAPI at `/` does.
    plan::overloads(&cache, schema, name)?;
    let mut r = Response::new(Body::from(Bytes::new()));
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(RPC_ALLOW));
    Ok(r)
}
