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
//! Every lock wait of a run, that lock's and each migration's, is bounded
//! by [`Options::lock_timeout`] (`PGRPC_MIGRATE_LOCK_TIMEOUT_MS`): a run
//! behind a long transaction stops with [`MigrateError::LockTimeout`]
//! instead of waiting forever (and, with an `ALTER TABLE` queued, holding
//! up every later reader and writer of that table).
//!
//! Applying a module file resets the privileges of each function and view
//! it defines to the declared ones (see [`with_privilege_resets`]): a
//! grant made by hand does not survive the next application.

use tokio_postgres::{Client, NoTls};

refinery::embed_migrations!("sql");

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

/// `lock_timeout` for PostgreSQL: whole milliseconds, at least 1 (0 would
/// mean no bound).
fn lock_timeout_ms(timeout: std::time::Duration) -> u128 {
    timeout.as_millis().max(1)
}

/// Whether `e`, or an error it wraps, is PostgreSQL's 55P03 (a lock wait
/// cut by `lock_timeout`).
fn is_lock_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
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
    async fn take(
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

/// Creates `pg_temp.pgrpc_reset_privileges(kind, object)` in the module
/// transaction: it revokes every privilege on one function (`FUNCTION`) or
/// view (`TABLE`) from PUBLIC and from every role but its owner, with
/// CASCADE (grants those roles passed on go too), so that only the GRANTs
/// that follow in the module file remain. Temporary: it ends with the
/// session and is in no fingerprint.
const RESET_PRIVILEGES: &str = r#"
CREATE FUNCTION pg_temp.pgrpc_reset_privileges(p_kind text, p_object text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_name text;
    v_owner oid;
    v_acl aclitem[];
    v_grantees text;
BEGIN
    IF p_kind = 'FUNCTION' THEN
        SELECT p.oid::pg_catalog.regprocedure::text, p.proowner,
               coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))
        INTO STRICT v_name, v_owner, v_acl
        FROM pg_catalog.pg_proc p WHERE p.oid = p_object::pg_catalog.regprocedure;
    ELSE
        SELECT c.oid::pg_catalog.regclass::text, c.relowner,
               coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))
        INTO STRICT v_name, v_owner, v_acl
        FROM pg_catalog.pg_class c WHERE c.oid = p_object::pg_catalog.regclass;
    END IF;
    SELECT string_agg(DISTINCT pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)), ', ')
    INTO v_grantees
    FROM pg_catalog.aclexplode(v_acl) a
    WHERE a.grantee <> v_owner AND a.grantee <> 0;
    EXECUTE format('REVOKE ALL ON %s %s FROM %s CASCADE',
                   p_kind, v_name, concat_ws(', ', 'PUBLIC', v_grantees));
END
$$;
"#;

/// `sql` with each `REVOKE ALL ON FUNCTION <signature> FROM PUBLIC;` line
/// (and `REVOKE ALL ON <view> FROM PUBLIC;`) replaced by a call of
/// `pg_temp.pgrpc_reset_privileges`: every function and view of a module
/// file is followed by that line, then by its declared GRANTs, so after the
/// file only those remain. A grant made by hand (`GRANT EXECUTE ON FUNCTION
/// private.… TO some_login`) is gone after the next application; the
/// module files stay plain SQL that psql can run.
pub fn with_privilege_resets(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 4096);
    for line in sql.split_inclusive('\n') {
        let object = line
            .trim_end()
            .strip_prefix("REVOKE ALL ON ")
            .and_then(|rest| rest.strip_suffix(" FROM PUBLIC;"));
        match object {
            Some(object) => {
                let (kind, object) = match object.strip_prefix("FUNCTION ") {
                    Some(function) => ("FUNCTION", function),
                    None => ("TABLE", object.strip_prefix("TABLE ").unwrap_or(object)),
                };
                out.push_str(&format!(
                    "SELECT pg_temp.pgrpc_reset_privileges('{kind}', '{}');\n",
                    object.replace('\'', "''")
                ));
            }
            None => out.push_str(line),
        }
    }
    out
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
    lock_timeout: std::time::Duration,
) -> Result<Vec<String>, MigrateError> {
    let module_err = |module: &str, e: tokio_postgres::Error| {
        if is_lock_timeout(&e) {
            MigrateError::LockTimeout {
                what: format!("sql/modules/{module}.sql"),
                ms: lock_timeout_ms(lock_timeout),
                holder: "a transaction holds a lock on an object the module changes",
                applied:
                    "no module file was applied; the versioned migrations of this run are committed",
            }
        } else if is_incompatible(&e) {
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
    tx.batch_execute(&format!(
        "ALTER EVENT TRIGGER pgrpc_guard_ddl DISABLE; {RESET_PRIVILEGES}"
    ))
    .await
    .map_err(|e| module_err("(all)", e))?;
    let mut applied = Vec::new();
    for (module, sql, sum) in changed {
        tx.batch_execute(&format!("{}\n;RESET ROLE;\n", with_privilege_resets(sql)))
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
        "DROP FUNCTION pg_temp.pgrpc_reset_privileges(text, text);\
         ALTER EVENT TRIGGER pgrpc_guard_ddl ENABLE;\
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
    let lock_timeout = DEFAULT_LOCK_TIMEOUT;
    let lock = MigrationLock::take(database_url, lock_timeout).await?;
    let result = match connect_bounded(database_url, lock_timeout).await {
        Ok((mut client, driver)) => {
            let result = apply_modules(&mut client, modules, false, lock_timeout).await;
            drop(client);
            let _ = driver.await;
            result
        }
        Err(e) => Err(e),
    };
    let released = lock.release().await;
    let applied = result?;
    released.map(|()| applied)
}

/// The connection that applies the migrations, its every lock wait
/// bounded by `lock_timeout`.
async fn connect_bounded(
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
    let result = match runner() {
        Ok(runner) => {
            let runner = runner.set_abort_divergent(true);
            let runner = match options.target {
                Some(v) => runner.set_target(refinery::Target::Version(v)),
                None => runner,
            };
            runner.run_async(&mut client).await.map_err(|e| {
                if is_lock_timeout(&e) {
                    MigrateError::LockTimeout {
                        what: "a versioned migration".into(),
                        ms: lock_timeout_ms(options.lock_timeout),
                        holder: "a transaction holds a lock on a table it changes",
                        applied: "that migration was rolled back; the ones before it are committed",
                    }
                } else {
                    MigrateError::from(e)
                }
            })
        }
        Err(e) => Err(MigrateError::from(e)),
    };
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

#[cfg(test)]
mod tests {
    use super::{with_privilege_resets, MODULES};

    // Every function and view of every module file is followed by the line
    // where its privileges are reset, and nothing else is rewritten: a
    // definition without it would keep grants made by hand.
    #[test]
    fn every_module_object_has_its_privileges_reset() {
        for (module, sql) in MODULES {
            let defined = sql
                .lines()
                .filter(|l| {
                    l.starts_with("CREATE OR REPLACE FUNCTION ")
                        || l.starts_with("CREATE OR REPLACE PROCEDURE ")
                        || l.starts_with("CREATE OR REPLACE VIEW ")
                })
                .count();
            let rewritten = with_privilege_resets(sql);
            let resets = rewritten
                .lines()
                .filter(|l| l.starts_with("SELECT pg_temp.pgrpc_reset_privileges("))
                .count();
            assert!(defined > 0, "{module}");
            assert_eq!(defined, resets, "{module}");
            assert!(!rewritten.contains("FROM PUBLIC;"), "{module}");
            assert_eq!(
                rewritten.lines().count(),
                sql.lines().count(),
                "{module}: one line for one line"
            );
        }
        assert_eq!(
            with_privilege_resets("REVOKE ALL ON FUNCTION private.f(text) FROM PUBLIC;\nGRANT EXECUTE ON FUNCTION private.f(text) TO pgrpc_api;\n"),
            "SELECT pg_temp.pgrpc_reset_privileges('FUNCTION', 'private.f(text)');\nGRANT EXECUTE ON FUNCTION private.f(text) TO pgrpc_api;\n"
        );
        assert_eq!(
            with_privilege_resets("REVOKE ALL ON admin.outbox_health FROM PUBLIC;\n"),
            "SELECT pg_temp.pgrpc_reset_privileges('TABLE', 'admin.outbox_health');\n"
        );
    }

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
