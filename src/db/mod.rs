//! The database side: the connection pool, the function cache (`schema`)
//! and its reload listener, the executor that owns each call's transaction
//! (`exec`), and the read replica's pool and routing (`replica`, `lsn`).

pub mod call;
pub mod exec;
mod inflight;
pub mod lsn;
pub mod pool;
pub mod replica;
pub mod schema;
mod steps;
pub mod stream;
pub mod types;

pub use pool::{build_pool, Pool, PoolOptions};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{info, warn};

use schema::SchemaCache;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
}

/// The shared, swappable function cache and the health flags `/ready` reads.
#[derive(Default)]
pub struct Catalog {
    cache: RwLock<Option<Arc<SchemaCache>>>,
    db_up: AtomicBool,
    /// Function cache loads since start (`pgrpc_schema_reloads_total`).
    reloads: AtomicU64,
}

impl Catalog {
    pub fn get(&self) -> Option<Arc<SchemaCache>> {
        self.cache.read().ok().and_then(|c| c.clone())
    }

    fn set(&self, cache: SchemaCache) {
        if let Ok(mut slot) = self.cache.write() {
            *slot = Some(Arc::new(cache));
        }
    }

    /// Ready: the database answers and the cache is loaded.
    pub fn is_ready(&self) -> bool {
        self.db_up.load(Ordering::Relaxed) && self.get().is_some()
    }

    /// How many times the function cache was loaded since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }
}

/// Keeps the cache loaded: connects, LISTENs on `pgrst`, loads the catalog,
/// and reloads it on `NOTIFY pgrst, 'reload schema'`. On connection loss it
/// marks the database down and reconnects with backoff, until `stop` fires.
pub async fn maintain_catalog(
    url: String,
    schemas: Vec<String>,
    catalog: Arc<Catalog>,
    pools: Vec<Pool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        match listen_once(&url, &schemas, &catalog, &pools, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                // A session that got as far as loading the cache was a
                // success: the next outage starts from the shortest wait,
                // not from where the last one left off.
                if catalog.db_up.swap(false, Ordering::Relaxed) {
                    backoff = Duration::from_millis(100);
                }
                warn!(cause = %e, "schema listener lost the database; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Why a listener session ended without being stopped.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error("notification stream ended")]
    Ended,
}

async fn listen_once(
    url: &str,
    schemas: &[String],
    catalog: &Catalog,
    pools: &[Pool],
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ListenError> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // Drives the connection; dropping `tx` when it ends wakes the loop below.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let AsyncMessage::Notification(n) = msg {
                if tx.send(n.payload().to_string()).is_err() {
                    break;
                }
            }
        }
    });
    let result = async {
        client.batch_execute("LISTEN pgrst").await?;
        reload(&client, schemas, catalog, pools).await?;
        catalog.db_up.store(true, Ordering::Relaxed);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(payload) => match coalesce(&mut rx, &payload).await {
                        Some(true) => reload(&client, schemas, catalog, pools).await?,
                        Some(false) => {}
                        None => return Err(ListenError::Ended),
                    },
                    None => return Err(ListenError::Ended),
                },
                _ = stop.changed() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// How long the channel must stay quiet before a requested reload runs.
const RELOAD_QUIET: Duration = Duration::from_millis(100);
/// The longest a requested reload waits for the channel to be quiet.
const RELOAD_MAX_DELAY: Duration = Duration::from_secs(1);

/// Any login may `NOTIFY pgrst`, and a reload drops every pooled
/// connection's prepared statements: after a first notification, takes
/// every one that follows until the channel is quiet for `RELOAD_QUIET`
/// (at most `RELOAD_MAX_DELAY`), so that a burst is one reload, of the
/// catalog as it is at its end; a steady stream, one a second. Whether any
/// asked for a reload; None when the connection ended.
async fn coalesce(rx: &mut mpsc::UnboundedReceiver<String>, first: &str) -> Option<bool> {
    let mut wanted = is_reload_request(first);
    let give_up = tokio::time::Instant::now() + RELOAD_MAX_DELAY;
    loop {
        while let Ok(more) = rx.try_recv() {
            wanted |= is_reload_request(&more);
        }
        let now = tokio::time::Instant::now();
        if now >= give_up {
            return Some(wanted);
        }
        match tokio::time::timeout_at((now + RELOAD_QUIET).min(give_up), rx.recv()).await {
            Ok(Some(more)) => wanted |= is_reload_request(&more),
            Ok(None) => return None,
            Err(_) => return Some(wanted),
        }
    }
}

/// The payloads of `NOTIFY pgrst` that ask for a reload, as PostgREST's.
fn is_reload_request(payload: &str) -> bool {
    payload.is_empty() || payload == "reload schema"
}

async fn reload(
    client: &tokio_postgres::Client,
    schemas: &[String],
    catalog: &Catalog,
    pools: &[Pool],
) -> Result<(), tokio_postgres::Error> {
    // One snapshot for the whole catalog, and one server session for its
    // statements even behind a transaction-mode pooler.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let cache = SchemaCache::load(client, schemas).await?;
    client.batch_execute("COMMIT").await?;
    info!(
        routines = cache.routine_count(),
        roles = cache.roles.len(),
        "function cache loaded"
    );
    catalog.set(cache);
    catalog.reloads.fetch_add(1, Ordering::Relaxed);
    // Statements prepared against the old catalog may no longer be valid,
    // on the primary's connections and on the replica's.
    for pool in pools {
        pool.manager().forget_statements();
    }
    Ok(())
}

/// A quoted SQL identifier, for names that come from the catalog.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}
