//! `AppState`: everything a request needs, built once by `server::serve`
//! and shared by every connection. With `PGRPC_SHARDS`, each shard has a
//! copy of its own ([`AppState::for_shard`]) that differs in `pool` (the
//! shard's share of the primary's pool), in its metrics recorder and in
//! its request ids; everything else is shared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::db::Pool;

use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::db::replica::Replica;
use crate::db::{quote_ident, Catalog};
use crate::metrics::{Metrics, Recorder};

pub struct AppState {
    pub config: ServeConfig,
    /// The pool this state's requests run on: the primary's, or with
    /// `PGRPC_SHARDS` the shard's share of it.
    pub pool: Pool,
    /// Every pool of the primary: one, or one per shard (`/metrics` sums
    /// them).
    pub pools: Arc<[Pool]>,
    /// `PGRPC_READ_DATABASE_URL`'s pool and health, when set.
    pub replica: Option<Arc<Replica>>,
    pub catalog: Arc<Catalog>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    /// What this runtime's requests record into `metrics`.
    pub recorder: Arc<Recorder>,
    /// The span exporter, when `PGRPC_OTLP_ENDPOINT` is set.
    pub otlp: Option<crate::trace::otlp::Exporter>,
    /// Each exposed schema's `search_path`: the schema, then
    /// `PGRPC_EXTRA_SEARCH_PATH`, quoted.
    search_paths: HashMap<String, String, foldhash::fast::RandomState>,
    /// `SELECT "schema"."function"()` for `PGRPC_PRE_REQUEST`.
    pub pre_request: Option<Arc<str>>,
    request_seq: Arc<AtomicU64>,
    instance: u32,
    /// True once the server's grace period is over: streams still going
    /// are cut short (`db::stream`).
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    pub fn new(
        config: ServeConfig,
        pool: Pool,
        pools: Arc<[Pool]>,
        replica: Option<Arc<Replica>>,
        catalog: Arc<Catalog>,
        auth: Auth,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> AppState {
        let search_paths = config
            .schemas
            .iter()
            .map(|schema| {
                let path: Vec<String> = std::iter::once(schema)
                    .chain(
                        config
                            .extra_search_path
                            .iter()
                            .filter(|s| !s.trim().is_empty()),
                    )
                    .map(|s| quote_ident(s.trim()))
                    .collect();
                (schema.clone(), path.join(", "))
            })
            .collect();
        let pre_request = config
            .pre_request
            .as_deref()
            .and_then(crate::config::pre_request_parts)
            .map(|parts| {
                let quoted: Vec<String> = parts.iter().map(|p| quote_ident(p)).collect();
                Arc::from(format!("SELECT {}()", quoted.join(".")))
            });
        // `ServeConfig::validate` has checked the endpoint.
        let otlp = config.otlp_endpoint.as_deref().and_then(|endpoint| {
            crate::trace::otlp::Exporter::start(endpoint, "pgrpc")
                .map_err(|e| tracing::error!(cause = %e, "OTLP export is off"))
                .ok()
        });
        let metrics = Arc::new(Metrics::with_otlp(otlp.as_ref().map(|e| e.stats())));
        AppState {
            stopping,
            recorder: metrics.recorder(),
            metrics,
            otlp,
            search_paths,
            pre_request,
            auth: Arc::new(auth),
            pool,
            pools,
            replica,
            catalog,
            request_seq: Arc::default(),
            instance: rand::random(),
            config,
        }
    }

    /// This state for shard `shard`, whose requests run on `pool`: the same
    /// settings, function cache, keys, metrics and exporter. Its requests
    /// record into a recorder of their own, and number their ids from an
    /// instance of their own (this one's plus `shard + 1`), so that no two
    /// shards write the same memory on every request.
    pub fn for_shard(&self, shard: usize, pool: Pool) -> AppState {
        AppState {
            config: self.config.clone(),
            pool,
            pools: self.pools.clone(),
            replica: self.replica.clone(),
            catalog: self.catalog.clone(),
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
            recorder: self.metrics.recorder(),
            otlp: self.otlp.clone(),
            search_paths: self.search_paths.clone(),
            pre_request: self.pre_request.clone(),
            request_seq: Arc::default(),
            instance: self.instance.wrapping_add(shard as u32).wrapping_add(1),
            stopping: self.stopping.clone(),
        }
    }

    pub fn search_path(&self, schema: &str) -> String {
        self.search_paths.get(schema).cloned().unwrap_or_default()
    }

    /// A request id unique to this process: instance (one per shard), then
    /// sequence.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(21);
        push_hex(&mut id, u64::from(self.instance), 8);
        id.push('-');
        push_hex(&mut id, n, 12);
        id
    }
}

/// The low `digits` hex digits of `n`, zero-padded (what `{:0N$x}` gives,
/// without the formatting machinery on every request).
fn push_hex(out: &mut String, n: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((n >> (4 * i)) & 0xf) as usize]));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_zero_padded_like_format() {
        for (n, d) in [
            (0u64, 8),
            (0xabc, 12),
            (u64::from(u32::MAX), 8),
            (0x1234_5678_9abc, 12),
        ] {
            let mut s = String::new();
            super::push_hex(&mut s, n, d);
            assert_eq!(s, format!("{n:0width$x}", width = d as usize));
        }
    }
}
