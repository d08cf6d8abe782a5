//! The accept loop: `serve(listener, config, shutdown)` takes a bound
//! listener, so tests bind 127.0.0.1:0 and run a real server in-process.
//! On shutdown it stops accepting, lets in-flight requests finish (up to the
//! grace period), then stops the schema listener.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::app::AppState;
use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::db::replica::Replica;
use crate::db::{self, Catalog, PoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("accept failed: {0}")]
    Accept(#[from] std::io::Error),
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

/// The most a request's line and headers may take; hyper answers 431
/// beyond it. Ample for PostgREST clients' tokens and cookies.
const MAX_HEADER_BYTES: usize = 64 * 1024;

pub async fn serve<F>(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    config.validate().map_err(ServeError::Config)?;
    let auth = Auth::new(&config).map_err(ServeError::Config)?;
    let pool = db::build_pool(
        &config.database_url,
        &PoolOptions::primary(
            config.pool_size,
            config.pool_timeout,
            config.prepared_statements,
            config.read_database_url.is_some(),
        ),
    )?;
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
            },
            config.read_wait,
            config.read_max_lag,
        )?)),
        None => None,
    };
    check_pre_request(&config).await?;
    let catalog = Arc::new(Catalog::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let pools = std::iter::once(pool.clone())
        .chain(replica.as_ref().map(|r| r.pool().clone()))
        .collect();
    let listener_task = tokio::spawn(db::maintain_catalog(
        config.listener_url().to_string(),
        config.schemas.clone(),
        catalog.clone(),
        pools,
        stop_rx.clone(),
    ));
    let probe_task = replica
        .clone()
        .map(|r| tokio::spawn(db::replica::probe(r, pool.clone(), stop_rx)));
    let state = Arc::new(AppState::new(config, pool, replica, catalog, auth));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, schemas = ?state.config.schemas, "pgrpc serving");
    }

    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
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
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving.
                        warn!(cause = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let header_read_timeout = state.config.header_read_timeout;
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(crate::http::handle(state, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    // Bounds each connection's read buffer, and so the
                    // headers one request may send (a 1 MB token is 431).
                    .max_buf_size(MAX_HEADER_BYTES)
                    .keep_alive(true)
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
    let _ = stop_tx.send(true);
    let _ = listener_task.await;
    if let Some(task) = probe_task {
        let _ = task.await;
    }
    state.pool.close();
    if let Some(replica) = &state.replica {
        replica.pool().close();
    }
    Ok(())
}
