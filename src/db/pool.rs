//! The connection pool (deadpool's managed pool) and what each pooled
//! connection keeps: its client, the settings statements (one per count of
//! role settings up to four, then one through `unnest`), and the call
//! statements it has prepared.
//!
//! Call statements are prepared inside the request's transaction, after the
//! role switch, so that PostgreSQL parses them as the request role, as
//! PostgREST does: the authenticator needs no privilege on any exposed
//! schema. A connection keeps what it prepared, so the next call of the same
//! statement is one pipelined round trip. A schema reload bumps the pool's
//! generation, and each connection forgets its statements when it is next
//! checked out.
//!
//! With `PGRPC_PREPARED_STATEMENTS=false` (behind a transaction-mode pooler
//! such as pgbouncer, where the next transaction may run on another server
//! session) nothing is prepared by name: every statement goes as the
//! unnamed statement, its parameter types given (`query_typed`), in the
//! same round trip as its execution.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Statement};

use super::DbError;

pub type Pool = managed::Pool<PgManager>;
pub type Conn = managed::Object<PgManager>;

/// The settings statement's first seven settings: the transaction's role,
/// the request GUCs PostgREST sets and search_path, all with
/// `set_config(..., true)`, so they end with the transaction. Every
/// settings statement touches only pg_catalog, so each is prepared once
/// per connection, as the authenticator.
macro_rules! settings_head {
    () => {
        "SELECT set_config('role', $1, true), \
         set_config('request.jwt.claims', $2, true), \
         set_config('request.method', $3, true), \
         set_config('request.path', $4, true), \
         set_config('request.headers', $5, true), \
         set_config('search_path', $6, true), \
         set_config('request.cookies', $7, true)"
    };
}

/// Up to this many per-role settings (`ALTER ROLE … SET`, hoisted
/// settings, `Prefer: timezone`) go as direct `set_config` arguments, one
/// statement per count; more go through `unnest` of two arrays
/// ([`SETTINGS_UNNEST_SQL`]). The direct form costs PostgreSQL less (see
/// docs/benchmarks.md).
pub const MAX_DIRECT_SETTINGS: usize = 4;

/// The settings statement for more than [`MAX_DIRECT_SETTINGS`] role
/// settings: their names in `$8`, their values in `$9`.
pub const SETTINGS_UNNEST_SQL: &str = concat!(
    settings_head!(),
    ", (SELECT count(set_config(k, v, true)) FROM unnest($8::text[], $9::text[]) AS s(k, v))"
);

/// The parameter types of [`SETTINGS_UNNEST_SQL`], for the unnamed
/// statement (the direct forms take text only).
const SETTINGS_UNNEST_TYPES: [Type; 9] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
];

/// The settings statement for `n` role settings: direct `set_config`
/// arguments (`$8` the first name, `$9` its value, …) up to
/// [`MAX_DIRECT_SETTINGS`], then [`SETTINGS_UNNEST_SQL`].
pub fn settings_sql(n: usize) -> &'static str {
    static DIRECT: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let direct = DIRECT.get_or_init(|| {
        (0..=MAX_DIRECT_SETTINGS)
            .map(|n| {
                let mut sql = String::from(settings_head!());
                for i in 0..n {
                    let k = 8 + 2 * i;
                    sql.push_str(&format!(", set_config(${k}, ${}, true)", k + 1));
                }
                sql
            })
            .collect()
    });
    direct.get(n).map_or(SETTINGS_UNNEST_SQL, String::as_str)
}

/// The parameter types of [`settings_sql`]`(n)` for the unnamed statement
/// (empty: every parameter is text).
pub fn settings_types(n: usize) -> &'static [Type] {
    if n > MAX_DIRECT_SETTINGS {
        &SETTINGS_UNNEST_TYPES
    } else {
        &[]
    }
}

/// READ ONLY for a call's implicit transaction, which has no `BEGIN` to
/// carry it (`steps::implicit`). Setting it on is allowed at any point of
/// a transaction; the write it refuses fails as under `BEGIN READ ONLY`.
pub const READ_ONLY_SQL: &str = "SELECT set_config('transaction_read_only', 'on', true)";

/// A statement as a connection runs it: prepared by name on this
/// connection, or sent as the unnamed statement with its SQL each time.
#[derive(Clone)]
pub enum Prepared {
    Named(Statement),
    Unnamed(Arc<str>),
    UnnamedStatic(&'static str),
}

impl Prepared {
    /// The unnamed form of `sql`.
    pub fn unnamed(sql: &Arc<str>) -> Prepared {
        Prepared::Unnamed(sql.clone())
    }
}

/// One pooled connection.
pub struct PgConn {
    pub client: Client,
    /// The settings statements, `settings_sql(n)` at index `n` (then the
    /// `unnest` form), prepared when the pool prepares statements; empty
    /// otherwise.
    settings: Vec<Statement>,
    /// [`READ_ONLY_SQL`], prepared with the settings statements.
    read_only: Option<Statement>,
    /// Whether this connection prepares statements by name.
    prepares: bool,
    /// Whether a call that may write reads the WAL position its COMMIT
    /// reached (`X-Pgrpc-Lsn`): on the primary's pool when a read replica
    /// is configured.
    pub reports_lsn: bool,
    /// The server's WAL layout, read when connecting (`None` if it could
    /// not be read: positions are then used as they are).
    pub wal: Option<super::lsn::WalLayout>,
    /// The highest WAL position this connection's server was seen to have
    /// replayed (`pg_lsn` as a number): replay only moves forward on one
    /// server, so a read-your-writes check already passed need not ask
    /// again.
    pub replayed: u64,
    /// Call statements prepared on this connection, by the address of
    /// their SQL, which each entry keeps alive (so the address cannot be
    /// reused for another SQL while the entry exists).
    statements: HashMap<usize, (Arc<str>, Statement), foldhash::fast::RandomState>,
    /// The proxy's own statements (`&'static` SQL), by address.
    own: HashMap<usize, Statement>,
    generation: u64,
    epoch: u64,
    driver: JoinHandle<()>,
    /// Set by the connection's driver when the server warns that it
    /// stopped waiting for synchronous replication: the COMMIT then
    /// reports success although no standby may have the transaction.
    unreplicated: Arc<AtomicBool>,
    /// Set while a request's statements may be in flight or its
    /// transaction open (`begin_use` … `settle`). A connection dropped in
    /// that state (its call panicked, or left by a path that did not end
    /// it) is closed at its next checkout, never handed to another
    /// request, whose COMMIT would otherwise commit this one's work.
    busy: bool,
    /// Plain reads still in flight on this connection after it went back
    /// to the pool (`db::inflight`), and how many may be.
    pub(super) inflight: Arc<super::inflight::Inflight>,
    pub(super) pipeline: usize,
    /// How long a checkout may wait (`PGRPC_POOL_TIMEOUT_MS`): also the
    /// longest wait for the reads lent this connection (`quiet`).
    quiet_wait: Duration,
}

impl PgConn {
    /// Marks the connection as carrying a request's transaction, until
    /// `settle`.
    pub fn begin_use(&mut self) {
        self.busy = true;
    }

    /// Marks the connection's session as idle again: its transaction has
    /// ended and every answer has arrived, so it may serve another request.
    pub fn settle(&mut self) {
        self.busy = false;
    }

    /// Waits until no read lent this connection (`db::inflight`) is in
    /// flight, at most as long as a checkout may wait; false past that,
    /// which the caller answers as a pool timeout (504).
    pub(super) async fn quiet(&self) -> bool {
        tokio::time::timeout(self.quiet_wait, self.inflight.quiet())
            .await
            .is_ok()
    }

    /// Forgets any earlier warning about synchronous replication, before
    /// a transaction starts on this connection.
    pub fn clear_unreplicated(&mut self) {
        self.unreplicated.store(false, Ordering::Relaxed);
    }

    /// Whether the server warned, since `clear_unreplicated`, that a COMMIT
    /// stopped waiting for its synchronous standby. The driver handles the
    /// warning before the COMMIT's answer reaches the client, so this is
    /// read after the COMMIT returned.
    pub fn unreplicated(&self) -> bool {
        self.unreplicated.load(Ordering::Acquire)
    }

    /// [`READ_ONLY_SQL`], when this connection prepares statements.
    pub fn read_only_statement(&self) -> Option<&Statement> {
        self.read_only.as_ref()
    }

    /// Whether statements are prepared by name on this connection.
    pub fn prepares(&self) -> bool {
        self.prepares
    }

    /// The settings statement for `n` role settings as this connection
    /// runs it.
    pub fn settings(&self, n: usize) -> Prepared {
        match self.settings.get(n.min(MAX_DIRECT_SETTINGS + 1)) {
            Some(s) => Prepared::Named(s.clone()),
            None => Prepared::UnnamedStatic(settings_sql(n)),
        }
    }

    /// A call statement this connection can run without preparing it
    /// first: the one it prepared, or, when it prepares nothing, the
    /// unnamed statement.
    pub fn statement(&self, sql: &Arc<str>) -> Option<Prepared> {
        if !self.prepares {
            return Some(Prepared::unnamed(sql));
        }
        self.statements
            .get(&(Arc::as_ptr(sql) as *const u8 as usize))
            .map(|(_, s)| Prepared::Named(s.clone()))
    }

    /// Runs `statement` and returns its first row, if any. `types` are the
    /// parameters' types, used by the unnamed statement.
    pub async fn query_row(
        &self,
        statement: &Prepared,
        params: &[&(dyn ToSql + Sync)],
        types: &[Type],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let sql = match statement {
            Prepared::Named(s) => return self.client.query_opt(s, params).await,
            Prepared::Unnamed(sql) => &**sql,
            Prepared::UnnamedStatic(sql) => *sql,
        };
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&Type::TEXT)))
            .map(|(p, t)| (*p, t.clone()))
            .collect();
        let rows = self.client.query_typed(sql, &typed).await?;
        Ok(rows.into_iter().next())
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
        // With reads still in flight on it (`db::inflight`), the driver
        // delivers their answers first, then ends by itself: the client
        // is dropped with this connection.
        if !self.inflight.busy() {
            self.driver.abort();
        }
    }
}

pub struct PgManager {
    config: tokio_postgres::Config,
    /// `PGRPC_PREPARED_STATEMENTS`.
    prepared: bool,
    reports_lsn: bool,
    pipeline: usize,
    wait: Duration,
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

    // Boxed: a connection's set-up (connect, SCRAM, the prepares) is a
    // large future and a rare one. Inline, it sized every checkout's future
    // at about 13 KB, which each call's task then copied several times as
    // it was built and moved (callgrind: a third of the proxy's
    // instructions per request were memcpy).
    #[allow(clippy::manual_async_fn)]
    fn create(&self) -> impl Future<Output = Result<PgConn, tokio_postgres::Error>> + Send {
        Box::pin(self.connect())
    }

    async fn recycle(
        &self,
        conn: &mut PgConn,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        self.reuse(conn)
    }
}

impl PgManager {
    /// A new connection, with its driver task and its settings statements.
    async fn connect(&self) -> Result<PgConn, tokio_postgres::Error> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let unreplicated = Arc::new(AtomicBool::new(false));
        let seen = unreplicated.clone();
        let driver = tokio::spawn(async move {
            while let Some(message) =
                futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                match message {
                    Ok(AsyncMessage::Notice(notice)) if is_unreplicated_commit(&notice) => {
                        tracing::warn!(
                            message = notice.message(),
                            "a commit stopped waiting for its synchronous standby"
                        );
                        seen.store(true, Ordering::Release);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        // Every settings statement, prepared in one round trip, with the
        // WAL layout's question.
        let wanted = if self.prepared {
            MAX_DIRECT_SETTINGS + 2
        } else {
            0
        };
        let prepares = (0..wanted)
            .map(settings_sql)
            .chain(self.prepared.then_some(READ_ONLY_SQL))
            .map(|sql| client.prepare(sql));
        let (settings, wal) = futures_util::join!(
            futures_util::future::try_join_all(prepares),
            super::lsn::WalLayout::read(&client)
        );
        let (settings, read_only) = match settings {
            Ok(mut s) => {
                let read_only = if self.prepared { s.pop() } else { None };
                (s, read_only)
            }
            Err(e) => {
                driver.abort();
                return Err(e);
            }
        };
        Ok(PgConn {
            client,
            settings,
            read_only,
            prepares: self.prepared,
            reports_lsn: self.reports_lsn,
            wal: wal.ok(),
            replayed: 0,
            statements: HashMap::default(),
            own: HashMap::new(),
            generation: self.generation.load(Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Relaxed),
            driver,
            unreplicated,
            busy: false,
            inflight: Arc::default(),
            pipeline: self.pipeline,
            quiet_wait: self.wait,
        })
    }

    /// Whether a connection back from a call may serve another.
    fn reuse(&self, conn: &mut PgConn) -> RecycleResult<tokio_postgres::Error> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        if conn.inflight.in_doubt() {
            return Err(RecycleError::message("a lent read's answers were lost"));
        }
        if conn.busy {
            // A call that panicked half-way leaves one so (or a path that
            // forgot to settle it: then this warning shows it).
            tracing::warn!("a connection came back with its transaction open; closed");
            return Err(RecycleError::message(
                "connection left with its transaction open",
            ));
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

/// PostgreSQL's WARNING when a COMMIT's wait for its synchronous standby
/// is cancelled (a statement timeout, `pg_cancel_backend`): the
/// transaction committed locally, but may be on no standby, so a failover
/// could lose it. (`syncrep.c`; messages are not translated here.)
fn is_unreplicated_commit(notice: &tokio_postgres::error::DbError) -> bool {
    notice
        .message()
        .contains("wait for synchronous replication")
}

/// How a pool connects and waits.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub size: usize,
    /// How long a checkout waits for a free connection.
    pub wait: Duration,
    /// How long making a connection may take.
    pub connect: Duration,
    /// `PGRPC_PREPARED_STATEMENTS`.
    pub prepared: bool,
    /// Writes report the WAL position of their COMMIT.
    pub reports_lsn: bool,
    /// `PGRPC_POOL_PIPELINE`: how many plain reads one connection may
    /// carry at once (`db::inflight`); 1, one request at a time.
    pub pipeline: usize,
}

impl PoolOptions {
    /// The primary's pool: connecting can be slow on a loaded host; give
    /// up only after the longer of the pool wait and 15 s, then answer 503.
    pub fn primary(size: usize, wait: Duration, prepared: bool, reports_lsn: bool) -> PoolOptions {
        PoolOptions {
            size,
            wait,
            connect: wait.max(Duration::from_secs(15)),
            prepared,
            reports_lsn,
            pipeline: 1,
        }
    }
}

/// Builds the pool. Connections are made lazily, so a server can start
/// while its database is still down and recover once it is up.
pub fn build_pool(url: &str, options: &PoolOptions) -> Result<Pool, DbError> {
    let mut pg = tokio_postgres::Config::from_str(url).map_err(DbError::Url)?;
    if pg.get_application_name().is_none() {
        pg.application_name("pgrpc");
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(options.connect.min(Duration::from_secs(15)));
    }
    let manager = PgManager {
        config: pg,
        prepared: options.prepared,
        reports_lsn: options.reports_lsn,
        pipeline: options.pipeline.max(1),
        wait: options.wait,
        generation: AtomicU64::new(0),
        epoch: AtomicU64::new(0),
    };
    Pool::builder(manager)
        .max_size(options.size)
        .wait_timeout(Some(options.wait))
        .create_timeout(Some(options.connect))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}
