//! The module files (`sql/modules/*.sql`, the live home of every function,
//! trigger function and view), embedded at build time and re-applied when
//! their checksum differs from the one recorded in
//! `pgrpc_guard.module_checksums`, with each object's privileges reset to
//! the declared ones.

use super::lock::{connect_bounded, is_lock_timeout, lock_timeout_ms, MigrationLock};
use super::{chain, MigrateError, DEFAULT_LOCK_TIMEOUT};

/// The module files, in the order they are applied: a module comes after
/// the modules whose functions its SQL-language functions call. A unit
/// test checks that every file of sql/modules is listed once.
pub const MODULES: [(&str, &str); 13] = [
    ("common", include_str!("../../sql/modules/common.sql")),
    ("settings", include_str!("../../sql/modules/settings.sql")),
    ("trace", include_str!("../../sql/modules/trace.sql")),
    ("outbox", include_str!("../../sql/modules/outbox.sql")),
    (
        "organizations",
        include_str!("../../sql/modules/organizations.sql"),
    ),
    ("tokens", include_str!("../../sql/modules/tokens.sql")),
    (
        "task_management",
        include_str!("../../sql/modules/task_management.sql"),
    ),
    (
        "idempotency",
        include_str!("../../sql/modules/idempotency.sql"),
    ),
    (
        "http_idempotency",
        include_str!("../../sql/modules/http_idempotency.sql"),
    ),
    ("nonces", include_str!("../../sql/modules/nonces.sql")),
    ("contracts", include_str!("../../sql/modules/contracts.sql")),
    (
        "receive_feed",
        include_str!("../../sql/modules/receive_feed.sql"),
    ),
    ("guard", include_str!("../../sql/modules/guard.sql")),
];

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
pub(super) async fn apply_modules(
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
