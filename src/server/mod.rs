//! The accept loop: `serve(listeners, config, shutdown)` takes bound
//! listeners (one `TcpListener`, or the shards' from `bind_shards`), so
//! tests bind 127.0.0.1:0 and run a real server in-process. On shutdown it
//! stops accepting, lets in-flight requests finish (up to the grace
//! period), then stops the schema listener.
//!
//! This file holds the accept loops, the connection settings and the panic
//! guard of every request; [`io`] the client socket and its write deadline;
//! [`shards`] `PGRPC_SHARDS`.

mod io;
mod shards;

pub use shards::{bind_shards, share_out, Listeners};

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::app::AppState;
use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::db::replica::Replica;
use crate::db::{self, Catalog, PoolOptions};
use crate::error::ApiError;
use crate::http::Body;
use io::{accepted_stream, WriteDeadline};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("accept failed: {0}")]
    Accept(#[from] std::io::Error),
    #[error("cannot start a shard (PGRPC_SHARDS): {0}")]
    Shard(std::io::Error),
}

/// Fails fast when `PGRPC_PRE_REQUEST` names a function the database does
/// not have. A database that does not answer yet is not waited for: the
/// server starts, and calls fail until the function exists.
async fn check_pre_request(config: &ServeConfig) -> Result<(), ServeError> {
    let Some(parts) = config
        .pre_request
        .as_deref()
        .and_then(crate::config::pre_request_parts)
    else {
        return Ok(());
    };
    let connect = tokio_postgres::connect(config.listener_url(), tokio_postgres::NoTls);
    let Ok(Ok((client, connection))) =
        tokio::time::timeout(std::time::Duration::from_secs(5), connect).await
    else {
        warn!("the database does not answer yet; PGRPC_PRE_REQUEST is checked by its first call");
        return Ok(());
    };
    let driver = tokio::spawn(connection);
    let (schema, name) = match parts.as_slice() {
        [schema, name] => (Some(*schema), *name),
        _ => (None, parts[0]),
    };
    let found = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE p.proname = $2 AND p.pronargs = 0 \
               AND (n.nspname = $1 OR ($1 IS NULL AND n.nspname = ANY($3)))",
            &[&schema, &name, &config.schemas],
        )
        .await
        .map(|row| row.get::<_, i64>(0) > 0);
    drop(client);
    let _ = driver.await;
    match found {
        Ok(true) => Ok(()),
        Ok(false) => Err(ServeError::Config(format!(
            "PGRPC_PRE_REQUEST names {}(), which the database does not have (a function without arguments)",
            parts.join(".")
        ))),
        Err(e) => {
            warn!(cause = %e, "cannot check PGRPC_PRE_REQUEST");
            Ok(())
        }
    }
}

/// The most a request's line and headers may take: hyper's read buffer
/// stops there (a 1 MB token is 431 before it is read whole), and
/// `http::handle` answers 431 `PGRPC431` to what fits in the buffer but
/// is over it. Ample for PostgREST clients' tokens and cookies.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The most header fields a request may carry; hyper answers 431 beyond
/// it. (hyper's default is 100; stated here so the limits table has one
/// place to read it from.)
pub const MAX_HEADERS: usize = 100;

pub async fn serve<F>(
    listeners: impl Into<Listeners>,
    config: ServeConfig,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let admin = match config.admin_listen.as_deref() {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            ServeError::Config(format!("cannot listen on {addr} (PGRPC_ADMIN_LISTEN): {e}"))
        })?),
        None => None,
    };
    serve_with_admin(listeners, admin, config, shutdown).await
}

/// `serve`, with the admin address's listener already bound (tests bind
/// 127.0.0.1:0); `PGRPC_ADMIN_LISTEN` is not read.
///
/// One listener is served on the current runtime; shards (`bind_shards`)
/// each on a thread and runtime of their own, with their share of the
/// pool (`shards.rs`). The admin address, the schema listener, the key
/// refresh and the replica's probe run on the current runtime either way.
pub async fn serve_with_admin<F>(
    listeners: impl Into<Listeners>,
    admin: Option<TcpListener>,
    config: ServeConfig,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    config.validate().map_err(ServeError::Config)?;
    let listeners = listeners.into();
    let shares = share_out(config.pool_size, listeners.len()).ok_or_else(|| {
        ServeError::Config(format!(
            "{} shards cannot share a pool of {} (PGRPC_POOL_SIZE)",
            listeners.len(),
            config.pool_size
        ))
    })?;
    let auth = Auth::new(&config).map_err(ServeError::Config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    auth.start_key_refresh(stop_rx.clone())
        .await
        .map_err(ServeError::Config)?;
    let pools = shares
        .into_iter()
        .map(|size| {
            db::build_pool(
                &config.database_url,
                &PoolOptions {
                    pipeline: config.pool_pipeline,
                    ..PoolOptions::primary(
                        size,
                        config.pool_timeout,
                        config.prepared_statements,
                        config.read_database_url.is_some(),
                    )
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(pool) = pools.first().cloned() else {
        return Err(ServeError::Config("no listener to serve".into()));
    };
    let replica = match &config.read_database_url {
        Some(url) => Some(Arc::new(Replica::new(
            url,
            &PoolOptions {
                size: config.pool_size,
                // A busy or silent replica is given up on quickly: the
                // read then runs on the primary.
                wait: config.read_wait.max(Duration::from_millis(100)),
                connect: Duration::from_secs(2),
                prepared: config.prepared_statements,
                reports_lsn: false,
                pipeline: config.pool_pipeline,
            },
            config.read_wait,
            config.read_max_lag,
        )?)),
        None => None,
    };
    check_pre_request(&config).await?;
    let catalog = Arc::new(Catalog::default());
    let maintained = pools
        .iter()
        .cloned()
        .chain(replica.as_ref().map(|r| r.pool().clone()))
        .collect();
    let listener_task = tokio::spawn(db::maintain_catalog(
        config.listener_url().to_string(),
        config.schemas.clone(),
        catalog.clone(),
        maintained,
        stop_rx.clone(),
    ));
    let probe_task = replica
        .clone()
        .map(|r| tokio::spawn(db::replica::probe(r, pool.clone(), stop_rx.clone())));
    let state = Arc::new(AppState::new(
        config,
        pool,
        pools.into(),
        replica,
        catalog,
        auth,
        stop_rx.clone(),
    ));
    if let Some(addr) = listeners.local_addr() {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let shards = listeners.len();
        info!(%addr, schemas = ?state.config.schemas, workers, shards, "pgrpc serving");
    }

    if let Listeners::Shards(shards) = &listeners {
        state.metrics.set_shards(shards.len());
    }
    let admin_task =
        admin.map(|admin| tokio::spawn(serve_admin(admin, state.clone(), stop_rx.clone())));
    let threads = match listeners {
        Listeners::One(listener) => {
            let slots = Arc::new(Semaphore::new(state.config.max_connections));
            accept_loop(listener, state.clone(), slots, None, shutdown).await;
            Vec::new()
        }
        Listeners::Shards(listeners) => shards::run(listeners, &state, shutdown).await?,
    };
    let _ = stop_tx.send(true);
    let _ = listener_task.await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    if let Some(task) = probe_task {
        let _ = task.await;
    }
    shards::join(threads).await;
    for pool in state.pools.iter() {
        pool.close();
    }
    if let Some(replica) = &state.replica {
        replica.pool().close();
    }
    Ok(())
}

/// Accepts clients on `listener` until `shutdown`, each connection a task
/// of the current runtime holding one of `slots`; then lets in-flight
/// requests finish, up to the grace period. `shard` counts each accepted
/// connection in `/metrics` (`pgrpc_shard_connections_total`).
async fn accept_loop<F>(
    listener: TcpListener,
    state: Arc<AppState>,
    slots: Arc<Semaphore>,
    shard: Option<usize>,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the cap, stop accepting: further clients wait in the kernel's
        // backlog instead of costing memory here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let Some(stream) = accepted_stream(accepted).await else { continue };
                if let Some(shard) = shard {
                    state.metrics.count_shard_connection(shard);
                }
                let timeout = state.config.header_read_timeout;
                let stream = WriteDeadline::new(stream, state.config.response_write_timeout);
                let state = state.clone();
                let service = guarded(move |req| crate::http::handle(state.clone(), req));
                let conn = connection_builder(timeout, true)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    info!("shutting down: draining in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections closed"),
        _ = tokio::time::sleep(state.config.shutdown_grace) => warn!("grace period over; closing"),
    }
}

/// Connections the admin address keeps open at once: probes and a scraper
/// need a few, and each asks one question.
const ADMIN_CONNECTIONS: usize = 16;

/// The admin address (`PGRPC_ADMIN_LISTEN`): `/live`, `/ready` and
/// `/metrics` on connections of its own, one request each, so that an
/// orchestrator's probes are answered even while clients hold every
/// connection of the main address.
async fn serve_admin(listener: TcpListener, state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Some(stream) = accepted_stream(accepted).await else {
            continue;
        };
        let timeout = state.config.header_read_timeout;
        let stream = WriteDeadline::new(stream, state.config.response_write_timeout);
        let state = state.clone();
        let service = guarded(move |req| crate::http::handle_admin(state.clone(), req));
        let conn =
            connection_builder(timeout, false).serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
}
/// How every client connection is served: the header-read timeout, and a
/// bounded read buffer, which bounds the headers one request may send (a
/// 1 MB token is 431).
fn connection_builder(header_read_timeout: Duration, keep_alive: bool) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(keep_alive);
    builder
}

/// The service of a connection: `handler` for each request, with a panic
/// in it answered 500 `PGRPC500` (the four-key body) instead of ending the
/// connection's task. The panic's message, location and backtrace are
/// logged by the hook `log_panics` installs; the request's outcome here.
fn guarded<H, Fut>(
    handler: H,
) -> impl Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    service_fn(move |req: Request<Incoming>| {
        // Both are reference-counted: nothing is copied unless it panics.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let answer = std::panic::AssertUnwindSafe(handler(req)).catch_unwind();
        async move {
            Ok(answer.await.unwrap_or_else(|payload| {
                error!(
                    %method,
                    path = %uri.path(),
                    panic = %panic_message(payload.as_ref()),
                    "request handler panicked; answered 500"
                );
                ApiError::from(Panicked).into_response()
            }))
        }
    })
}

/// A request whose handler panicked.
#[derive(Debug, thiserror::Error)]
#[error("The server failed while answering this request")]
struct Panicked;

impl crate::error::Fault for Panicked {
    fn pgrst(&self) -> crate::error::Pgrst {
        crate::error::Pgrst::Internal
    }
    fn hint(&self) -> Option<String> {
        Some("The cause is in the server's log; the request may be retried".into())
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Logs every panic through `tracing`, with its location and a backtrace,
/// then lets it unwind to the task that catches it: set once by `main`.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        error!(
            panic = %panic_message(info.payload()),
            %location,
            backtrace = %std::backtrace::Backtrace::force_capture(),
            "panic"
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads one response (headers and a `Content-Length` body) off `sock`.
    async fn read_response(sock: &mut TcpStream) -> (String, String) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().expect("length"))
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = text[end + 4..end + 4 + len].to_string();
                    return (head, body);
                }
            }
            let n = sock.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed after {:?}", text);
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    // A handler that panics gets 500 with the four-key body, and the same
    // keep-alive connection then serves the next request.
    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_connection_lives_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let service = guarded(|req: Request<Incoming>| async move {
                if req.uri().path() == "/boom" {
                    panic!("handler failed on purpose");
                }
                Response::new(Body::from("fine"))
            });
            connection_builder(Duration::from_secs(5), true)
                .serve_connection(TokioIo::new(stream), service)
                .await
        });
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        sock.write_all(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let (head, body) = read_response(&mut sock).await;
        assert!(head.starts_with("HTTP/1.1 500"), "{head}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("json body");
        assert_eq!(body["code"], "PGRPC500", "{body}");
        for key in ["code", "message", "details", "hint"] {
            assert!(body.get(key).is_some(), "{key} missing: {body}");
        }
        sock.write_all(b"GET /fine HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let (head, body) = read_response(&mut sock).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "fine");
        drop(sock);
        assert!(server.await.expect("connection task").is_ok());
    }
}
