//! The connection pool (deadpool's managed pool) and what each pooled
//! connection keeps: its client, the settings statement, and the call
//! statements it has prepared.
//!
//! Call statements are prepared inside the request's transaction, after the
//! role switch, so that PostgreSQL parses them as the request role, as
//! PostgREST does: the authenticator needs no privilege on any exposed
//! schema. A connection keeps what it prepared, so the next call of the same
//! statement is one pipelined round trip. A schema reload bumps the pool's
//! generation, and each connection forgets its statements when it is next
//! checked out.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

use super::DbError;

pub type Pool = managed::Pool<PgManager>;
pub type Conn = managed::Object<PgManager>;

/// Sets the transaction's role, request GUCs, search_path and the role's
/// own settings (`ALTER ROLE … SET`), all with `set_config(..., true)`, so
/// they end with the transaction. It touches only pg_catalog, so it is
/// prepared once per connection, as the authenticator.
pub const SETTINGS_SQL: &str = "SELECT set_config('role', $1, true), \
     set_config('request.jwt.claims', $2, true), \
     set_config('request.method', $3, true), \
     set_config('request.path', $4, true), \
     set_config('request.headers', $5, true), \
     set_config('search_path', $8, true), \
     set_config('request.cookies', $9, true), \
     (SELECT count(set_config(k, v, true)) FROM unnest($6::text[], $7::text[]) AS s(k, v))";

/// One pooled connection.
pub struct PgConn {
    pub client: Client,
    pub settings: Statement,
    /// Call statements prepared on this connection, by the address of
    /// their SQL, which each entry keeps alive (so the address cannot be
    /// reused for another SQL while the entry exists).
    statements: HashMap<usize, (Arc<str>, Statement)>,
    /// The proxy's own statements (`&'static` SQL), by address.
    own: HashMap<usize, Statement>,
    generation: u64,
    epoch: u64,
    driver: JoinHandle<()>,
}

impl PgConn {
    pub fn statement(&self, sql: &Arc<str>) -> Option<Statement> {
        self.statements
            .get(&(Arc::as_ptr(sql) as *const u8 as usize))
            .map(|(_, s)| s.clone())
    }

    pub fn keep(&mut self, sql: Arc<str>, statement: Statement) {
        let key = Arc::as_ptr(&sql) as *const u8 as usize;
        self.statements.insert(key, (sql, statement));
    }

    pub fn own_statement(&self, sql: &'static str) -> Option<Statement> {
        self.own.get(&(sql.as_ptr() as usize)).cloned()
    }

    pub fn keep_own(&mut self, sql: &'static str, statement: Statement) {
        self.own.insert(sql.as_ptr() as usize, statement);
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

pub struct PgManager {
    config: tokio_postgres::Config,
    generation: AtomicU64,
    /// Bumped when the database turned out to be read-only: every
    /// connection made before is closed at its next checkout, so that the
    /// pool reconnects (through a proxy such as HAProxy, to the new
    /// primary) instead of reusing sessions of a demoted node.
    epoch: AtomicU64,
}

impl PgManager {
    /// Every connection forgets its prepared statements (after a schema
    /// reload: they may no longer be valid).
    pub fn forget_statements(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Every pooled connection is closed at its next checkout.
    pub fn forget_connections(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }
}

impl managed::Manager for PgManager {
    type Type = PgConn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<PgConn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let settings = match client.prepare(SETTINGS_SQL).await {
            Ok(s) => s,
            Err(e) => {
                driver.abort();
                return Err(e);
            }
        };
        Ok(PgConn {
            client,
            settings,
            statements: HashMap::new(),
            own: HashMap::new(),
            generation: self.generation.load(Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Relaxed),
            driver,
        })
    }

    async fn recycle(
        &self,
        conn: &mut PgConn,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        if conn.epoch != self.epoch.load(Ordering::Relaxed) {
            return Err(RecycleError::message("connection to a read-only node"));
        }
        let generation = self.generation.load(Ordering::Relaxed);
        if conn.generation != generation {
            conn.statements.clear();
            conn.own.clear();
            conn.generation = generation;
        }
        Ok(())
    }
}

/// Builds the pool. Connections are made lazily, so a server can start
/// while its database is still down and recover once it is up.
pub fn build_pool(url: &str, size: usize, wait: Duration) -> Result<Pool, DbError> {
    let mut pg = tokio_postgres::Config::from_str(url).map_err(DbError::Url)?;
    if pg.get_application_name().is_none() {
        pg.application_name("pgrpc");
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(15));
    }
    let manager = PgManager {
        config: pg,
        generation: AtomicU64::new(0),
        epoch: AtomicU64::new(0),
    };
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        // Connecting can be slow on a loaded host; give up only after the
        // longer of the pool wait and 15 s, then answer 503.
        .create_timeout(Some(wait.max(Duration::from_secs(15))))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}
