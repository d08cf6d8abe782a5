//! `/rpc/<function>` for GET, HEAD, POST and OPTIONS: parse (`request`) →
//! `plan` → `db::exec` (on the primary or the read replica, whole or
//! streamed) → [`respond`], with `Server-Timing` over the stages.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response};

use super::request::{self, RequestError};
use super::{consistency, deadline, headers, stream, Body};
use crate::app::AppState;
use crate::db::exec::{self, CallJob, ExecError, Executed, IdempotentCall, RequestSettings};
use crate::db::replica::ReadRoute;
use crate::db::stream::Streamed;
use crate::error::ApiError;
use crate::plan::{self, PlanError, Reply};

const RPC_ALLOW: &str = "OPTIONS,GET,HEAD,POST";

/// `/rpc/<name>` for GET, HEAD, POST and OPTIONS: parse → plan → execute
/// → respond.
pub(super) async fn rpc(
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
pub(super) fn timed(
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
            state.recorder.count_read(route);
            let again = job.read_copy();
            match (exec::execute_on(conn, job).await, again, &state.replica) {
                // The replica connection broke during the read: it runs
                // once more, on the primary.
                (Err(e), Some(again), Some(replica))
                    if crate::db::replica::connection_broke(&e) =>
                {
                    tracing::warn!(cause = %e, "a read broke on the replica; running it on the primary");
                    replica.read_failed();
                    state.recorder.count_read(ReadRoute::ReplicaFailed);
                    exec::execute(&state.pool, again).await
                }
                (result, _, _) => result,
            }
        }
        Err(route) => {
            state.recorder.count_read(route);
            exec::execute(&state.pool, job).await
        }
    }
}

/// The SQL of a function's `default_transaction_isolation`; anything else
/// leaves the transaction at the default.
pub(super) fn isolation_level(setting: Option<&str>) -> Option<&'static str> {
    match setting?.trim().to_ascii_lowercase().as_str() {
        "serializable" => Some("SERIALIZABLE"),
        "repeatable read" => Some("REPEATABLE READ"),
        "read committed" => Some("READ COMMITTED"),
        "read uncommitted" => Some("READ UNCOMMITTED"),
        _ => None,
    }
}

/// The response for a reply: body, media type, profile and replay headers.
pub(super) fn respond(reply: Reply, schema: &str, state: &AppState, head: bool) -> Response<Body> {
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
