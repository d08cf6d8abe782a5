//! # pgrpc
//!
//! A PostgreSQL integrity core (the SQL in `sql/`) and a thin proxy that
//! serves the functions of the `api` schema as PostgREST-compatible RPC.
//! The proxy owns no business rule: it maps HTTP to SQL and back.
//!
//! ## Layout
//!
//! A request walks once through these rooms: `http` parses it into an
//! `ApiRequest`, `auth` names its role, `plan` resolves the function and its
//! SQL against the cache, `db::exec` runs it in its own transaction, and
//! `http` turns the outcome into a response. Errors of every layer become
//! the PostgREST body in `error`.
//!
//! - [`config`]: `ServeConfig`, every setting and its default.
//! - [`server`]: the accept loop, `serve(listeners, config, shutdown)`,
//!   connection limits, graceful drain; `server::io`, the client socket
//!   and its write deadline; `server::shards`, `PGRPC_SHARDS` (one
//!   address served by a thread and runtime per shard, each with its share
//!   of the pool).
//! - [`app`]: `AppState`, shared by every request (a copy per shard).
//! - [`http`] (frontend): routing, `/live`, `/ready`, `/metrics`, `/`;
//!   `http::rpc`, `/rpc/<fn>` per PostgREST; `http::batch`, `/rpc`;
//!   `http::request` parses the wire into an [`api_request::ApiRequest`]
//!   (`args`: the body and query-string pairs; `headers`: headers and
//!   cookies as JSON).
//! - [`api_request`]: what a client asked for, as plain data.
//! - [`auth`]: the JWT check (HS256 secret, JWK or JWK Set; `exp`, `nbf`,
//!   `iat`, `aud`; strict claims), the role claim key, the validated-token
//!   cache, role selection (`auth::identify`; a token's check in
//!   `auth::verify`), and keys fetched from a JWK Set URL or an OIDC
//!   issuer and refreshed.
//! - [`plan`]: one request as one call value (`CallPlan`): READ ONLY or
//!   not, the post-call checks as data; `plan::resolve`, overload
//!   resolution; `plan::reply`, the response's shape; `plan::idempotency`,
//!   the `Idempotency-Key` request hash and stored response;
//!   `plan::stream`, the streaming statement.
//! - [`statement`]: the call statement for each result shape, media
//!   handler and set of query-string operations, cached per routine.
//! - [`prefer`]: the `Prefer` header: what a request states, what applies
//!   to a call (`handling`, `count`, `tx`, `timezone`, `max-affected`), and
//!   `Preference-Applied`.
//! - [`response_settings`]: what a function may set in `response.headers`
//!   and `response.status`, in Rust and as the SQL check folded into the
//!   statement of every call that may write (`CALL_TAIL`), so that a call
//!   whose answer cannot be sent is never committed.
//! - [`query`]: query-string operations on a function's result (`select`,
//!   filters, `order`, `limit`, `offset`), parsed (`query::parse`) and
//!   compiled to SQL (`query::compile`).
//! - [`error`]: `ApiError`, the PostgREST error body, the table of PGRST
//!   codes and statuses, and the one SQLSTATE → HTTP status map (with what
//!   the executor learned: an anonymous caller, a read-only node).
//! - [`db`] (backend): the pool; `db::schema`, the function cache read from
//!   pg_catalog (`db::schema::load`, with per-role settings) and reloaded
//!   on `NOTIFY pgrst`;
//!   `db::call`, one call as plain values (`CallJob` in, `Executed` or
//!   `ExecError` out); `db::steps`, a call's transaction as one list of
//!   steps and the one interpreter that runs it, pipelining what needs no
//!   answer first (a plain call whose statements are prepared: one
//!   implicit transaction, its statements before one Sync); `db::exec`, the executor that owns every call's
//!   transaction, runs its list and the post-call checks `plan` gives it as
//!   data (`Check`), and, with `PGRPC_POOL_PIPELINE` above 1, gives a
//!   plain read's connection back once its statements are queued
//!   (`db::inflight`: the reads in flight on a connection).
//! - [`media`]: media types as plain values: the Accept header, the body's
//!   Content-Type (it reads nothing of the function cache).
//! - [`negotiate`]: content negotiation of an Accept list against a
//!   routine's built-in and custom (domain, aggregate) handlers (it builds
//!   no SQL).
//! - [`openapi`]: `GET /`, the OpenAPI description of the exposed functions
//!   (`openapi::schema`, the JSON schemas; `openapi::params`, an
//!   operation's parameters).
//! - [`gen_types`]: `pgrpc gen types typescript`, the `Database` type of
//!   supabase-js and postgrest-js, from the same function cache (and
//!   `db::types`, the catalog's enums, domains and composites).
//! - [`metrics`]: `GET /metrics`, Prometheus text: latency by function and
//!   status class, transaction time, pool wait, replica routing; one
//!   recorder per runtime (per shard), summed at the scrape.
//! - [`trace`]: W3C Trace Context (`traceparent`, `tracestate`), the
//!   request's timing scope, and the OTLP/HTTP span exporter.
//! - [`migrate`]: `pgrpc migrate`, the embedded refinery migrations
//!   (`migrate::versioned`), then the changed module files
//!   (`migrate::modules`), under the migration lock (`migrate::lock`).
//! - [`embedded`]: the embedded PostgreSQL of `pgrpc serve` without a
//!   database URL.
//! - [`relay`]: `pgrpc relay`, delivery of outbox events to a webhook
//!   (`relay::deliver`), leased from the database (`relay::lease`).

// ApiError carries the four PostgREST fields plus headers (~130 bytes); it
// only travels on the error path, where boxing would buy nothing.
#![allow(clippy::result_large_err)]

pub mod api_request;
pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod embedded;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod gen_types;
pub mod http;
pub mod media;
pub mod metrics;
pub mod migrate;
pub mod negotiate;
pub mod openapi;
pub mod plan;
pub mod prefer;
pub mod query;
pub mod relay;
pub mod response_settings;
pub mod server;
pub mod statement;
pub mod trace;
