//! Integration tests: one binary, one PostgreSQL container, one database per test.
//!
//! `support` owns the container, the migrated template database, the
//! per-test clones and the in-process proxy. Each other module proves one
//! area of SPEC.md against the real database.

mod support;

mod api_types;
mod attacks;
mod attacks_stream;
mod batch;
mod clients;
mod contracts;
mod cors;
mod docs;
mod embedded;
mod feed;
mod framing;
mod gen_types;
mod hostile;
mod http_headers;
mod idempotency;
mod integrity;
mod jwks;
mod jwt;
mod media_types;
mod nonces;
mod observability;
mod outbox;
mod pgbouncer;
mod pipelined;
mod postgrest_db;
mod postgrest_js;
mod preferences;
mod proxy;
mod query_ops;
mod relay;
mod replicas;
mod shards;
mod sql_modules;
mod streaming;
mod sync_commit;
mod tasks;
mod tokens;
mod trust;
