//! # pgrpc
//!
//! A PostgreSQL integrity core (the SQL in `sql/`) and a thin proxy that
//! serves the functions of the `api` schema as PostgREST-compatible RPC.
//! The proxy owns no business rule: it maps HTTP to SQL and back.
//!
//! ## Layout
//!
//! - [`config`]: `ServeConfig`, every setting and its default.
//! - [`server`]: the accept loop, `serve(listener, config, shutdown)`,
//!   graceful drain, and `AppState` shared by requests.
//! - [`http`] (frontend): routing, `/rpc/<fn>` per PostgREST, body, query
//!   and header parsing (`http::request`), response shaping, `/live`,
//!   `/ready`.
//! - [`auth`]: the JWT check (HS256, expiry with leeway) and role selection.
//! - [`error`]: `ApiError`, the PostgREST error body, and the one
//!   SQLSTATE → HTTP status map.
//! - [`db`] (backend): the pool; `db::schema`, the function cache read from
//!   pg_catalog and reloaded on `NOTIFY pgrst`; `db::call`, the generated
//!   call statement and the pipelined transaction.
//! - [`idempotency`]: the `Idempotency-Key` header, on top of the SQL in
//!   `sql/V10__http_idempotency.sql`.
//! - [`openapi`]: `GET /`, the OpenAPI description of the exposed functions.
//! - [`metrics`]: `GET /metrics`, Prometheus text.
//! - [`migrate`]: `pgrpc migrate`, the embedded refinery migrations.
//! - [`embedded`]: the embedded PostgreSQL of `pgrpc serve` without a
//!   database URL.
//! - [`relay`]: `pgrpc relay`, delivery of outbox events to a webhook.

// ApiError carries the four PostgREST fields plus headers (~130 bytes); it
// only travels on the error path, where boxing would buy nothing.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod config;
pub mod db;
pub mod embedded;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod migrate;
pub mod openapi;
pub mod relay;
pub mod server;
