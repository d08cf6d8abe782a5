//! `AppState`: everything a request needs, built once by `server::serve`
//! and shared by every connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use deadpool_postgres::Pool;

use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::db::Catalog;
use crate::metrics::Metrics;

pub struct AppState {
    pub config: ServeConfig,
    pub pool: Pool,
    pub catalog: Arc<Catalog>,
    pub auth: Auth,
    pub metrics: Metrics,
    request_seq: AtomicU64,
    instance: u32,
}

impl AppState {
    pub fn new(config: ServeConfig, pool: Pool, catalog: Arc<Catalog>, auth: Auth) -> AppState {
        AppState {
            auth,
            pool,
            catalog,
            metrics: Metrics::default(),
            request_seq: AtomicU64::new(0),
            instance: rand::random(),
            config,
        }
    }

    /// A request id unique to this process: instance, then sequence.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n:012x}", self.instance)
    }
}
