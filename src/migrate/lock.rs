//! The migration lock, held on a connection of its own for a whole run,
//! and the connection that applies the migrations: every lock wait of a
//! run is bounded by `lock_timeout`, and a wait cut by it is told apart
//! (55P03).

use tokio_postgres::{Client, NoTls};

use super::MigrateError;

/// `lock_timeout` for PostgreSQL: whole milliseconds, at least 1 (0 would
/// mean no bound).
pub(super) fn lock_timeout_ms(timeout: std::time::Duration) -> u128 {
    timeout.as_millis().max(1)
}

/// Whether `e`, or an error it wraps, is PostgreSQL's 55P03 (a lock wait
/// cut by `lock_timeout`).
pub(super) fn is_lock_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            if pg.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The migration lock: a self-conflicting table lock on a table that every
/// database has and that only a superuser may lock in that mode (PUBLIC may
/// only read it, and ACCESS SHARE conflicts with SHARE ROW EXCLUSIVE not at
/// all). No migration writes this table, so the run never waits on itself.
const LOCK: &str = "LOCK TABLE information_schema.sql_features IN SHARE ROW EXCLUSIVE MODE";

/// Refuses (through the database's own check, once V17 has created it)
/// while a role is a member of `pgrpc_migrator` or a login holds
/// `pgrpc_api`: `migrator_role_has_members`, `api_role_held_by_login`.
pub async fn refuse_forbidden_memberships(client: &Client) -> Result<(), MigrateError> {
    let row = client
        .query_one(
            "SELECT to_regprocedure('pgrpc_guard.refuse_forbidden_memberships(text)') IS NOT NULL",
            &[],
        )
        .await
        .map_err(MigrateError::Refused)?;
    if row.get::<_, bool>(0) {
        client
            .execute(
                "SELECT pgrpc_guard.refuse_forbidden_memberships('pgrpc migrate')",
                &[],
            )
            .await
            .map_err(MigrateError::Refused)?;
    }
    Ok(())
}

/// The migration lock held on a connection of its own for a whole run
/// (versioned migrations, then module files). Taking it also refuses while
/// a forbidden role membership stands.
pub(super) struct MigrationLock {
    client: Client,
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl MigrationLock {
    pub(super) async fn take(
        database_url: &str,
        lock_timeout: std::time::Duration,
    ) -> Result<Self, MigrateError> {
        let ms = lock_timeout_ms(lock_timeout);
        let (client, connection) = tokio_postgres::connect(database_url, NoTls)
            .await
            .map_err(MigrateError::Connect)?;
        let lock = MigrationLock {
            client,
            driver: tokio::spawn(connection),
        };
        // The session sits idle in its transaction for the whole run: no
        // timeout of the server's or the database's may end it (and with
        // it the lock) halfway. Its wait for the lock is bounded.
        let taken = match lock
            .client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0; \
                 SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = {ms}; {LOCK}"
            ))
            .await
        {
            Ok(()) => refuse_forbidden_memberships(&lock.client).await,
            Err(e) if is_lock_timeout(&e) => Err(MigrateError::LockTimeout {
                what: "pgrpc migrate".into(),
                ms,
                holder: "another pgrpc migrate is running, or a transaction holds a lock \
                         that conflicts with its LOCK TABLE information_schema.sql_features \
                         IN SHARE ROW EXCLUSIVE MODE",
                applied: "nothing was applied",
            }),
            Err(e) => Err(MigrateError::Lock(e)),
        };
        match taken {
            Ok(()) => Ok(lock),
            Err(e) => {
                let _ = lock.release().await;
                Err(e)
            }
        }
    }

    /// Ending the lock's transaction (or its connection) releases the lock;
    /// a COMMIT that fails means the lock was lost before the end.
    pub(super) async fn release(self) -> Result<(), MigrateError> {
        let ended = self.client.batch_execute("COMMIT").await;
        drop(self.client);
        let _ = self.driver.await;
        ended.map_err(MigrateError::LockLost)
    }
}

/// The connection that applies the migrations, its every lock wait
/// bounded by `lock_timeout`.
pub(super) async fn connect_bounded(
    database_url: &str,
    lock_timeout: std::time::Duration,
) -> Result<
    (
        Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    MigrateError,
> {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .map_err(MigrateError::Connect)?;
    let driver = tokio::spawn(connection);
    match client
        .batch_execute(&format!(
            "SET lock_timeout = {}",
            lock_timeout_ms(lock_timeout)
        ))
        .await
    {
        Ok(()) => Ok((client, driver)),
        Err(e) => {
            drop(client);
            let _ = driver.await;
            Err(MigrateError::Connect(e))
        }
    }
}
