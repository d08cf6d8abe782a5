//! `pgrpc migrate`: the SQL in `sql/`, embedded at build time. First the
//! versioned migrations (`sql/V<n>__<name>.sql`, the history: tables,
//! constraints, indexes, grants on tables, data), applied by refinery, each
//! file in its own transaction; then the module files (`sql/modules/*.sql`,
//! the live home of every function, trigger function and view, written with
//! CREATE OR REPLACE), each re-applied only when its checksum differs from
//! the one recorded in `pgrpc_guard.module_checksums`.
//!
//! Two concurrent runs are serialised by a table lock that only a
//! superuser can take (see [`lock::LOCK`]), held by a second connection
//! for the whole run (versioned migrations and module files), so the
//! second run waits and then finds nothing to apply. An advisory lock would need no
//! privilege: any login could hold its key and stall every migration (SPEC
//! §1: no login other than a superuser can block another caller's write).
//! Every lock wait of a run, that lock's and each migration's, is bounded
//! by [`Options::lock_timeout`] (`PGRPC_MIGRATE_LOCK_TIMEOUT_MS`): a run
//! behind a long transaction stops with [`MigrateError::LockTimeout`]
//! instead of waiting forever (and, with an `ALTER TABLE` queued, holding
//! up every later reader and writer of that table).
//!
//! Applying a module file resets the privileges of each function and view
//! it defines to the declared ones (see [`with_privilege_resets`]): a
//! grant made by hand does not survive the next application.
//!
//! - [`versioned`]: the embedded refinery migrations and their run.
//! - [`modules`]: the module files (`MODULES`), their checksums, the reset
//!   of their objects' privileges, and the refusal of what CREATE OR
//!   REPLACE cannot change.
//! - [`lock`]: the migration lock and the run's connection, every lock
//!   wait bounded, and the refusal while a forbidden role membership
//!   stands.

mod lock;
mod modules;
mod versioned;

pub use lock::refuse_forbidden_memberships;
pub use modules::{apply_module_files, with_privilege_resets, MODULES};

use lock::{connect_bounded, MigrationLock};
use modules::apply_modules;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot take the migration lock (pgrpc migrate needs a superuser connection): {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error(
        "{what} waited {ms} ms for a lock and gave up (PGRPC_MIGRATE_LOCK_TIMEOUT_MS): {holder}; \
         find it in pg_locks and pg_stat_activity, end it or wait for it, then run pgrpc migrate \
         again ({applied})"
    )]
    LockTimeout {
        what: String,
        ms: u128,
        holder: &'static str,
        applied: &'static str,
    },
    #[error("the migration lock was lost during the run (its session ended: check idle_in_transaction_session_timeout and the server log); what was applied is committed, run pgrpc migrate again: {0}")]
    LockLost(#[source] tokio_postgres::Error),
    #[error("refused: {}", db_error(.0))]
    Refused(#[source] tokio_postgres::Error),
    #[error("migration failed: {}", chain(.0))]
    Apply(#[from] refinery::Error),
    #[error(
        "sql/modules/{module}.sql cannot be applied: {message}. CREATE OR REPLACE cannot make \
         this change (a changed return type, parameter name or view column); add a versioned \
         migration (sql/V<n>__<name>.sql) that drops the object first, then run pgrpc migrate again"
    )]
    Incompatible { module: String, message: String },
    #[error("sql/modules/{module}.sql failed: {message}")]
    Module { module: String, message: String },
}

/// What one run applied, in order (`V3__organizations`, ...).
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<String>,
    /// The module files (re)applied, in order (`common`, `tokens`, ...).
    pub modules: Vec<String>,
}

/// What one run applies. The default is everything.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Stop after this versioned migration (refinery's target).
    pub target: Option<i32>,
    /// Apply the module files after the versioned migrations.
    pub modules: bool,
    /// The longest any lock wait of the run may take: the migration lock,
    /// and each table lock a migration or module file takes
    /// (`lock_timeout`). Past it the run stops with
    /// [`MigrateError::LockTimeout`].
    pub lock_timeout: std::time::Duration,
}

/// The default of `PGRPC_MIGRATE_LOCK_TIMEOUT_MS`.
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for Options {
    fn default() -> Self {
        Options {
            target: None,
            modules: true,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

/// The error and its causes, so the PostgreSQL message is not lost.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// A database error with its detail and hint, which say what to fix.
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut out = db.message().to_string();
            if let Some(detail) = db.detail() {
                out.push_str(": ");
                out.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                out.push_str(" Hint: ");
                out.push_str(hint);
            }
            out
        }
        None => e.to_string(),
    }
}

/// Applies every versioned migration, then every changed module file.
pub async fn run(database_url: &str) -> Result<Report, MigrateError> {
    run_with(database_url, Options::default()).await
}

/// Applies what `options` asks for.
pub async fn run_with(database_url: &str, options: Options) -> Result<Report, MigrateError> {
    let lock = MigrationLock::take(database_url, options.lock_timeout).await?;
    let (mut client, driver) = match connect_bounded(database_url, options.lock_timeout).await {
        Ok(connected) => connected,
        Err(e) => {
            let _ = lock.release().await;
            return Err(e);
        }
    };
    let result = versioned::apply(&mut client, &options).await;
    let result = match result {
        // After any versioned migration every module is applied again: a
        // migration may have dropped what a module defines (DROP … CASCADE,
        // a column type change under a view) while the files stayed the same.
        Ok(report) if options.modules => {
            let every = !report.applied_migrations().is_empty();
            apply_modules(&mut client, &MODULES, every, options.lock_timeout)
                .await
                .map(|modules| (report, modules))
        }
        Ok(report) => Ok((report, Vec::new())),
        Err(e) => Err(e),
    };
    drop(client);
    let _ = driver.await;
    let released = lock.release().await;
    let (report, modules) = result?;
    released?;
    Ok(Report {
        applied: report
            .applied_migrations()
            .iter()
            .map(|m| format!("V{}__{}", m.version(), m.name()))
            .collect(),
        modules,
    })
}
