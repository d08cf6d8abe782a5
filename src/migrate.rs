//! `pgrpc migrate`: the SQL in `sql/`, embedded at build time. First the
//! versioned migrations (`sql/V<n>__<name>.sql`, the history: tables,
//! constraints, indexes, grants on tables, data), applied by refinery, each
//! file in its own transaction; then the module files (`sql/modules/*.sql`,
//! the live home of every function, trigger function and view, written with
//! CREATE OR REPLACE), each re-applied only when its checksum differs from
//! the one recorded in `pgrpc_guard.module_checksums`.
//!
//! Two concurrent runs are serialised by a table lock that only a
//! superuser can take (see [`LOCK`]), held by a second connection for the
//! whole run (versioned migrations and module files), so the second run
//! waits and then finds nothing to apply. An advisory lock would need no
//! privilege: any login could hold its key and stall every migration (SPEC
//! §1: no login other than a superuser can block another caller's write).

use tokio_postgres::{Client, NoTls};

refinery::embed_migrations!("sql");

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot take the migration lock (pgrpc migrate needs a superuser connection): {0}")]
    Lock(#[source] tokio_postgres::Error),
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: None,
            modules: true,
        }
    }
}

/// The module files, in the order they are applied: a module comes after
/// the modules whose functions its SQL-language functions call. A unit
/// test checks that every file of sql/modules is listed once.
pub const MODULES: [(&str, &str); 13] = [
    ("common", include_str!("../sql/modules/common.sql")),
    ("settings", include_str!("../sql/modules/settings.sql")),
    ("trace", include_str!("../sql/modules/trace.sql")),
    ("outbox", include_str!("../sql/modules/outbox.sql")),
    (
        "organizations",
        include_str!("../sql/modules/organizations.sql"),
    ),
    ("tokens", include_str!("../sql/modules/tokens.sql")),
    (
        "task_management",
        include_str!("../sql/modules/task_management.sql"),
    ),
    (
        "idempotency",
        include_str!("../sql/modules/idempotency.sql"),
    ),
    (
        "http_idempotency",
        include_str!("../sql/modules/http_idempotency.sql"),
    ),
    ("nonces", include_str!("../sql/modules/nonces.sql")),
    ("contracts", include_str!("../sql/modules/contracts.sql")),
    (
        "receive_feed",
        include_str!("../sql/modules/receive_feed.sql"),
    ),
    ("guard", include_str!("../sql/modules/guard.sql")),
];

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

/// The embedded migrations, each followed by `RESET ROLE`: the files switch
/// roles with `SET LOCAL ROLE`, and refinery records the migration in its
/// history table inside the same transaction, as the connecting role.
fn runner() -> Result<refinery::Runner, refinery::Error> {
    let mut list = Vec::new();
    for m in migrations::runner().get_migrations() {
        let sql = format!("{}\n;RESET ROLE;\n", m.sql().unwrap_or_default());
        list.push(refinery::Migration::unapplied(
            &format!("V{}__{}", m.version(), m.name()),
            &sql,
        )?);
    }
    Ok(refinery::Runner::new(&list))
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
struct MigrationLock {
    client: Client,
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl MigrationLock {
    async fn take(database_url: &str) -> Result<Self, MigrateError> {
        let (client, connection) = tokio_postgres::connect(database_url, NoTls)
            .await
            .map_err(MigrateError::Connect)?;
        let lock = MigrationLock {
            client,
            driver: tokio::spawn(connection),
        };
        // The session sits idle in its transaction for the whole run: no
        // timeout of the server's or the database's may end it (and with
        // it the lock) halfway.
        let taken = match lock
            .client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0; \
                 SET LOCAL statement_timeout = 0; {LOCK}"
            ))
            .await
        {
            Ok(()) => refuse_forbidden_memberships(&lock.client).await,
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
    async fn release(self) -> Result<(), MigrateError> {
        let ended = self.client.batch_execute("COMMIT").await;
        drop(self.client);
        let _ = self.driver.await;
        ended.map_err(MigrateError::LockLost)
    }
}

/// Applies every versioned migration, then every changed module file.
pub async fn run(database_url: &str) -> Result<Report, MigrateError> {
    run_with(database_url, Options::default()).await
}

/// The SQLSTATEs of a change CREATE OR REPLACE cannot make: a function's
/// return type, parameter names or defaults, or kind (42P13, 42809), a
/// view's columns (42P16).
fn is_incompatible(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::INVALID_FUNCTION_DEFINITION
            || *c == SqlState::WRONG_OBJECT_TYPE
            || *c == SqlState::INVALID_TABLE_DEFINITION
    })
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => format!("{} ({hint})", db.message()),
            None => db.message().to_string(),
        },
        None => chain(e),
    }
}

/// Applies the module files whose checksum differs from the recorded one,
/// in one transaction. Each CREATE OR REPLACE keeps an existing function's
/// owner and grants; the file states them again for a new one. The DDL
/// guard's event trigger is disabled while the files run (it would refresh
/// its baseline after every statement) and fired once at the end by a DDL
/// that changes nothing: as for any superuser DDL, it refuses while a role
/// is a member of pgrpc_migrator and refreshes the baseline.
async fn apply_modules(
    client: &mut tokio_postgres::Client,
    modules: &[(&str, &str)],
    every: bool,
) -> Result<Vec<String>, MigrateError> {
    let module_err = |module: &str, e: tokio_postgres::Error| {
        if is_incompatible(&e) {
            MigrateError::Incompatible {
                module: module.to_string(),
                message: db_message(&e),
            }
        } else {
            MigrateError::Module {
                module: module.to_string(),
                message: db_message(&e),
            }
        }
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| module_err("(all)", e))?;
    let recorded: std::collections::HashMap<String, String> = tx
        .query(
            "SELECT module, checksum FROM pgrpc_guard.module_checksums",
            &[],
        )
        .await
        .map_err(|e| module_err("(all)", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let texts: Vec<&str> = modules.iter().map(|&(_, sql)| sql).collect();
    let sums: Vec<String> = tx
        .query(
            "SELECT md5(m) FROM unnest($1::text[]) WITH ORDINALITY AS t(m, i) ORDER BY i",
            &[&texts],
        )
        .await
        .map_err(|e| module_err("(all)", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let changed: Vec<_> = modules
        .iter()
        .zip(sums)
        .filter(|((module, _), sum)| every || recorded.get(*module) != Some(sum))
        .map(|(&(module, sql), sum)| (module, sql, sum))
        .collect();
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    tx.batch_execute("ALTER EVENT TRIGGER pgrpc_guard_ddl DISABLE")
        .await
        .map_err(|e| module_err("(all)", e))?;
    let mut applied = Vec::new();
    for (module, sql, sum) in changed {
        tx.batch_execute(&format!("{sql}\n;RESET ROLE;\n"))
            .await
            .map_err(|e| module_err(module, e))?;
        tx.execute(
            "INSERT INTO pgrpc_guard.module_checksums (module, checksum) VALUES ($1, $2) \
             ON CONFLICT (module) DO UPDATE \
             SET checksum = excluded.checksum, applied_at = excluded.applied_at",
            &[&module, &sum],
        )
        .await
        .map_err(|e| module_err(module, e))?;
        applied.push(module.to_string());
    }
    tx.batch_execute(
        "ALTER EVENT TRIGGER pgrpc_guard_ddl ENABLE;\
         ALTER TABLE pgrpc_guard.module_checksums ALTER COLUMN applied_at SET DEFAULT clock_timestamp();",
    )
    .await
    .map_err(|e| module_err("(all)", e))?;
    tx.commit().await.map_err(|e| module_err("(all)", e))?;
    Ok(applied)
}

/// Applies `modules` (name, text) as `pgrpc migrate` applies the embedded
/// module files, under the same lock: for a database already migrated, and
/// for tests that change a module.
pub async fn apply_module_files(
    database_url: &str,
    modules: &[(&str, &str)],
) -> Result<Vec<String>, MigrateError> {
    let lock = MigrationLock::take(database_url).await?;
    let result = match tokio_postgres::connect(database_url, NoTls).await {
        Ok((mut client, connection)) => {
            let driver = tokio::spawn(connection);
            let result = apply_modules(&mut client, modules, false).await;
            drop(client);
            let _ = driver.await;
            result
        }
        Err(e) => Err(MigrateError::Connect(e)),
    };
    let released = lock.release().await;
    let applied = result?;
    released.map(|()| applied)
}

/// Applies what `options` asks for.
pub async fn run_with(database_url: &str, options: Options) -> Result<Report, MigrateError> {
    let lock = MigrationLock::take(database_url).await?;
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .map_err(MigrateError::Connect)?;
    let driver = tokio::spawn(connection);
    let result = match runner() {
        Ok(runner) => {
            let runner = runner.set_abort_divergent(true);
            let runner = match options.target {
                Some(v) => runner.set_target(refinery::Target::Version(v)),
                None => runner,
            };
            runner
                .run_async(&mut client)
                .await
                .map_err(MigrateError::from)
        }
        Err(e) => Err(MigrateError::from(e)),
    };
    let result = match result {
        // After any versioned migration every module is applied again: a
        // migration may have dropped what a module defines (DROP … CASCADE,
        // a column type change under a view) while the files stayed the same.
        Ok(report) if options.modules => {
            let every = !report.applied_migrations().is_empty();
            apply_modules(&mut client, &MODULES, every)
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

#[cfg(test)]
mod tests {
    use super::MODULES;

    // Every file of sql/modules is embedded, once: a module file nobody
    // lists would never be applied.
    #[test]
    fn every_module_file_is_listed_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/modules");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("sql/modules")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut listed: Vec<String> = MODULES.iter().map(|(m, _)| format!("{m}.sql")).collect();
        listed.sort();
        assert_eq!(files, listed);
    }
}
