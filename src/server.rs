//! The accept loop: `serve(listener, config, shutdown)` takes a bound
//! listener, so tests bind 127.0.0.1:0 and run a real server in-process.
//! On shutdown it stops accepting, lets in-flight requests finish (up to the
//! grace period), then stops the schema listener.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

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
use crate::db::{self, Catalog};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("accept failed: {0}")]
    Accept(#[from] std::io::Error),
}

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
    let pool = db::build_pool(&config.database_url, config.pool_size, config.pool_timeout)?;
    let catalog = Arc::new(Catalog::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener_task = tokio::spawn(db::maintain_catalog(
        config.database_url.clone(),
        config.schemas.clone(),
        catalog.clone(),
        pool.clone(),
        stop_rx,
    ));
    let state = Arc::new(AppState::new(config, pool, catalog, auth));
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
    state.pool.close();
    Ok(())
}
