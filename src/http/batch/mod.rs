//! `POST /rpc`: an atomic batch of calls. The body is a JSON array of
//! `{"fn": "<function>", "args": {…}}`; every call is planned as if it were
//! sent alone, all of them run in order in one transaction as the request's
//! role, and the answer is the array of their results, or the first
//! failure, named by its index (`X-Pgrpc-Batch-Index`), with nothing kept.
//!
//! There is no reference from one call to another's result: a call that
//! needs an earlier one's result is a function of its own (see
//! docs/proxy.md#batches).

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW};
use hyper::{Method, Request, Response, StatusCode};

mod parse;

pub use parse::{parse_batch, BatchCall, BatchError};

use super::headers::Timing;
use super::request::RequestError;
use super::rpc::{isolation_level, respond, timed};
use super::{consistency, deadline, request, Body};
use crate::api_request::{ApiRequest, Args};
use crate::app::AppState;
use crate::db::exec::{
    self, CallJob, CallResult, ExecError, Executed, IdempotentCall, RequestSettings, Shaper, Step,
    StoredResponse,
};
use crate::db::schema::{Routine, SchemaCache};
use crate::error::ApiError;
use crate::media::BodyKind;
use crate::negotiate::Negotiated;
use crate::plan::{self, Page, PlanError, Reply};
use crate::prefer::Preferences;
use crate::query::QueryOps;

/// The methods `/rpc` answers.
pub const BATCH_ALLOW: &str = "OPTIONS,POST";
/// The header that names the failed call of a batch (0-based).
pub const INDEX_HEADER: &str = "x-pgrpc-batch-index";
const JSON_MEDIA_TYPE: &str = "application/json; charset=utf-8";

/// The schema and name a call's `fn` names: `schema.name` within the
/// exposed schemas (406 `PGRST106` otherwise), or a bare name in the
/// request's profile.
fn target<'a>(
    function: &'a str,
    profile: &'a str,
    schemas: &'a [String],
) -> Result<(&'a str, &'a str), RequestError> {
    match function.split_once('.') {
        Some((schema, name)) => schemas
            .iter()
            .find(|s| s.as_str() == schema)
            .map(|s| (s.as_str(), name))
            .ok_or_else(|| RequestError::UnknownProfile(schemas.to_vec())),
        None => Ok((profile, function)),
    }
}

/// `error`, naming the call of the batch it answers.
fn at(index: usize, mut error: ApiError) -> ApiError {
    error.headers.push((
        HeaderName::from_static(INDEX_HEADER),
        HeaderValue::from(index),
    ));
    error
}

/// How each call's result is shaped, as that call alone would answer.
type Shapes = Vec<(Arc<Routine>, Negotiated, Page)>;

/// The array of the calls' bodies, in order: each the JSON body its call
/// alone would answer, `null` for a void call.
fn batch_body(shapes: &Shapes, results: &[CallResult]) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity(2 + 64 * results.len());
    out.push(b'[');
    for (i, ((routine, media, page), result)) in shapes.iter().zip(results).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let reply = plan::reply(routine, result.clone(), media, *page)
            .map_err(|e| at(i, ApiError::from(e)))?;
        match reply.body {
            Some(body) if !body.is_empty() => out.extend_from_slice(&body),
            _ => out.extend_from_slice(b"null"),
        }
    }
    out.push(b']');
    Ok(Bytes::from(out))
}

/// The response stored under a batch's `Idempotency-Key`.
fn shaper(shapes: Shapes) -> Shaper {
    Box::new(move |results: &[CallResult]| {
        let body = batch_body(&shapes, results)?;
        Ok(StoredResponse {
            status: 200,
            headers_json: serde_json::json!([{ "content-type": JSON_MEDIA_TYPE }]).to_string(),
            body: Some(String::from_utf8_lossy(&body).into_owned()),
        })
    })
}

/// `/rpc`: POST runs a batch; OPTIONS answers `Allow`; anything else
/// (GET and HEAD included: a batch is never a read) is 405.
pub(super) async fn batch(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *req.method() {
        Method::POST => {}
        Method::OPTIONS => {
            let mut r = Response::new(super::Body::default());
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(BATCH_ALLOW));
            return Ok(r);
        }
        _ => {
            return Err(RequestError::MethodNotAllowed {
                message: "A batch of calls is sent with POST /rpc",
                allow: BATCH_ALLOW,
            }
            .into())
        }
    }
    let cache = state.catalog.get().ok_or(PlanError::SchemaCacheMissing)?;
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(BatchError::QueryString.into());
    }
    let limits = deadline::BodyLimits {
        idle: state.config.body_read_timeout,
        min_rate: state.config.body_min_bytes_per_sec,
    };
    let request = request::parse(
        req.map(|body| deadline::ReadDeadline::new(body, limits)),
        "",
        &state.config.schemas,
        state.config.max_body_bytes,
    )
    .await?;
    if request.args.kind != BodyKind::Json {
        return Err(BatchError::Invalid("a batch is sent as application/json".into()).into());
    }
    let calls = parse_batch(&request.args.whole, state.config.max_batch_calls)?;
    // Timed from here, as a single call is once its body is read.
    let mut timing = Timing::new(state.config.server_timing);
    let result = run(state, &cache, request, calls, &mut timing).await;
    timed(timing, result)
}

/// The stages of a batch that `Server-Timing` measures, as for a single
/// call: identify the caller, plan every call, run the transaction, render
/// the array (`timing` laps each but the last, which the caller times).
async fn run(
    state: &Arc<AppState>,
    cache: &SchemaCache,
    request: ApiRequest,
    calls: Vec<BatchCall>,
    timing: &mut Timing,
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
    // Each call is planned as if sent alone, as POST with a JSON body and
    // `Accept: application/json`, without preferences.
    let accept = crate::media::parse_accept(Some(b"application/json"));
    let mut plans = Vec::with_capacity(calls.len());
    for (i, call) in calls.into_iter().enumerate() {
        let (schema, name) = target(&call.function, &request.schema, &state.config.schemas)
            .map_err(|e| at(i, e.into()))?;
        let keys = request::object_keys(&call.args).map_err(|e| at(i, e.into()))?;
        let single = ApiRequest {
            method: Method::POST,
            function: name.to_string(),
            path: format!("/rpc/{name}"),
            schema: schema.to_string(),
            args: Args::from_object(keys, call.args),
            ops: QueryOps::default(),
            range: None,
            count: false,
            prefer: Preferences::default(),
            form: None,
            query: String::new(),
            accept: accept.clone(),
            idempotency_key: None,
            authorization: None,
            apikey: None,
            headers_json: String::new(),
            cookies_json: String::new(),
        };
        let plan = plan::plan(cache, &single, state.config.max_rows, state.config.tx_end)
            .map_err(|e| at(i, e.into()))?;
        plans.push(plan);
    }
    // One transaction has one isolation level and one set of hoisted
    // settings: every call must ask for the same.
    let hoisted = &state.config.hoisted_tx_settings;
    let mut settings = Vec::with_capacity(plans.len());
    for p in &plans {
        settings.push((
            isolation_level(p.routine.isolation(hoisted)),
            cache.settings_for(&identity.role, &p.routine, hoisted, None),
        ));
    }
    let (isolation, role_settings) = settings[0].clone();
    if let Some(i) = settings.iter().position(|(level, s)| {
        *level != isolation || s.names != role_settings.names || s.values != role_settings.values
    }) {
        return Err(at(i, BatchError::SettingsDiffer(i).into()));
    }
    let read_only = plans.iter().all(|p| p.read_only);
    let shapes: Shapes = plans
        .iter()
        .map(|p| (p.routine.clone(), p.media.clone(), p.page))
        .collect();
    // As for a single call: a batch that cannot write ignores its key.
    let idempotency = request
        .idempotency_key
        .clone()
        .filter(|_| !read_only)
        .map(|key| IdempotentCall {
            request_hash: plan::request_hash(
                "POST",
                "/rpc",
                &request.schema,
                "batch",
                BodyKind::Json,
                "",
                &request.args.whole,
            ),
            key,
            shape: shaper(shapes.clone()),
        });
    let mut plans = plans.into_iter();
    let Some(first) = plans.next() else {
        return Err(BatchError::Invalid("the array holds no call".into()).into());
    };
    let steps: Vec<Step> = plans
        .map(|p| Step {
            checks: plan::checks(&p),
            sql: p.sql,
            args: p.args,
            params: p.params,
            transient: p.transient,
        })
        .collect();
    let job = CallJob {
        checks: plan::checks(&first),
        sql: first.sql,
        args: first.args,
        params: first.params,
        transient: first.transient,
        rollback: first.prefs.rollback,
        read_only,
        isolation,
        pre_request: state.pre_request.clone(),
        settings: RequestSettings {
            role_settings,
            role: identity.role,
            claims: identity.claims,
            method: "POST".to_string(),
            path: request.path,
            headers: request.headers_json,
            search_path: state.search_path(&request.schema),
            cookies: request.cookies_json,
        },
        idempotency,
        anon: identity.anon,
        batch: Some(steps),
    };
    timing.lap("plan");
    let executed = match exec::execute(&state.pool, job).await {
        Ok(executed) => executed,
        Err(ExecError::InBatch { index, error }) => return Err(at(index, ApiError::from(*error))),
        Err(e) => return Err(e.into()),
    };
    timing.lap("transaction");
    let (mut reply, commit_lsn) = match executed {
        Executed::Batch(results, lsn) => (
            Reply {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: Some(batch_body(&shapes, &results)?),
                content_type: HeaderValue::from_static(JSON_MEDIA_TYPE),
                replayed: false,
            },
            lsn,
        ),
        Executed::Replayed(stored, lsn) => (plan::replayed(stored)?, lsn),
        Executed::Failed(api) => return Err(api),
        Executed::Called(_) => return Err(ExecError::TaskFailed.into()),
    };
    if let Some(lsn) = commit_lsn {
        if let Some(replica) = &state.replica {
            replica.saw_primary(lsn);
        }
        reply.headers.push(consistency::lsn_header(lsn));
        if state.config.lsn_cookie {
            reply.headers.push(consistency::lsn_cookie(lsn));
        }
    }
    Ok(respond(reply, &request.schema, state, false))
}
