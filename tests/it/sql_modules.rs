//! The live homes of the SQL (issue 21): the module files of sql/modules
//! rebuild exactly what the versioned history built, a database upgraded
//! from an older version equals a fresh one, pgrpc migrate refuses a change
//! CREATE OR REPLACE cannot make, and every trigger sits in its band.

use std::collections::BTreeMap;

use pgrpc::migrate::{self, MigrateError, Options};

use crate::support::{self, TestDb};

/// Everything of pgrpc's schemas a migration or a module can change, by
/// name: the DDL guard's fingerprint (owners, ACLs, columns, constraints,
/// indexes, triggers, function signatures and bodies' md5) plus the whole
/// text of every function and view and every comment.
const CATALOG: &str = "
    SELECT kind || ' ' || name, detail FROM pgrpc_guard.fingerprint()
    UNION ALL
    SELECT 'functiondef ' || p.oid::regprocedure::text,
           pg_catalog.pg_get_functiondef(p.oid) || coalesce(' -- ' || obj_description(p.oid, 'pg_proc'), '')
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname IN ('private', 'api', 'admin', 'pgrpc_guard', 'pgrpc_http')
    UNION ALL
    SELECT 'viewdef ' || c.oid::regclass::text, pg_catalog.pg_get_viewdef(c.oid)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname IN ('private', 'api', 'admin') AND c.relkind = 'v'
    UNION ALL
    SELECT 'comment ' || d.classoid::regclass::text || ' ' || pg_describe_object(d.classoid, d.objoid, d.objsubid),
           d.description
    FROM pg_description d
    WHERE pg_describe_object(d.classoid, d.objoid, d.objsubid) ~ '(private|api|admin|pgrpc_guard|pgrpc_http)\\.'";

async fn catalog(url: &str) -> BTreeMap<String, String> {
    let c = support::connect(url).await;
    c.query(CATALOG, &[])
        .await
        .expect("catalog fingerprint")
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect()
}

/// Asserts two fingerprints are equal, naming what differs.
fn assert_same(left: &BTreeMap<String, String>, right: &BTreeMap<String, String>, what: &str) {
    let mut diff = Vec::new();
    for (k, v) in left {
        match right.get(k) {
            None => diff.push(format!("only in the first: {k}")),
            Some(w) if w != v => diff.push(format!("differs: {k}\n  {v}\n  {w}")),
            _ => {}
        }
    }
    for k in right.keys().filter(|k| !left.contains_key(*k)) {
        diff.push(format!("only in the second: {k}"));
    }
    assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
}

/// A new empty database on the test cluster, beside `db`; its superuser URL.
async fn empty_database(db: &TestDb, suffix: &str) -> String {
    let name = format!("{}_{suffix}", db.name);
    db.superuser()
        .await
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .await
        .expect("create database");
    let url = db.url();
    format!(
        "{}/{name}",
        &url[..url.rfind('/').expect("a URL with a path")]
    )
}

// The move to sql/modules changed nothing: a database built by the
// versioned migrations alone, with every function as the history left it,
// equals the template (history, then the module files) in every function
// body, owner, grant, comment, trigger and view, but for the functions
// changed since on purpose (CHANGED_SINCE_THE_MOVE).
#[tokio::test]
async fn the_module_files_rebuild_exactly_what_the_history_built() {
    let db = TestDb::new().await;
    let url = empty_database(&db, "history").await;
    let report = migrate::run_with(
        &url,
        Options {
            target: None,
            modules: false,
            ..Default::default()
        },
    )
    .await
    .expect("versioned migrations");
    assert!(report.modules.is_empty());
    // What a module file changed after the move is, by design, not what
    // the history built: those functions are left out, and only those.
    let changed_since = |key: &String| {
        CHANGED_SINCE_THE_MOVE
            .iter()
            .any(|f| key.contains(&format!(" {f}(")))
    };
    let history = catalog(&url).await;
    let modules = catalog(&db.url()).await;
    for f in CHANGED_SINCE_THE_MOVE {
        let key = modules
            .keys()
            .find(|k| k.starts_with(&format!("functiondef {f}(")))
            .unwrap_or_else(|| panic!("{f} is not defined"));
        assert_ne!(
            history.get(key),
            modules.get(key),
            "{f} is what the history built: take it off CHANGED_SINCE_THE_MOVE"
        );
    }
    // Applying a module resets each function's privileges and grants the
    // declared ones in the file's order, where the history granted them in
    // its own: the same privileges, in another order.
    let keep = |all: BTreeMap<String, String>| -> BTreeMap<String, String> {
        all.into_iter()
            .filter(|(k, _)| !changed_since(k))
            .map(|(k, v)| (k, acl_items_sorted(&v)))
            .collect()
    };
    assert_same(
        &keep(history),
        &keep(modules),
        "history alone (first) and history plus modules (second) differ",
    );
}

/// `text` with the items of each ACL in it (`{a=X/b,c=X/b}`) sorted.
fn acl_items_sorted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        let inner = &rest[open + 1..open + len];
        let mut items: Vec<&str> = inner.split(',').collect();
        if items.iter().all(|i| i.contains('=') && i.contains('/')) {
            items.sort_unstable();
        }
        out.push_str(&rest[..=open]);
        out.push_str(&items.join(","));
        out.push('}');
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
}

/// The functions a module file changed after the move to sql/modules (their
/// body, comment or privileges differ from what the versioned history
/// left), by qualified name (every overload).
const CHANGED_SINCE_THE_MOVE: &[&str] = &[
    // createrole_held_by_login (CREATEROLE logins on PostgreSQL 15).
    "pgrpc_guard.forbidden_memberships",
    "pgrpc_guard.refuse_forbidden_memberships",
    // V20: outbox events store the request's trace context.
    "api.outbox_claim",
    "private.outbox_emit",
    "pgrpc_http.traceparent",
    "pgrpc_http.tracestate",
    "pgrpc_http.trace_id",
    // Idempotency-Key: a request in flight past lock_timeout is 409.
    "pgrpc_http.http_idempotency_claim",
    "pgrpc_http.http_idempotency_store",
    "private.http_idempotency_row_is_own",
    // Array arguments are one-dimensional (400 invalid_<argument>).
    "api.outbox_ack",
    "api.mark_receives_read",
    "api.create_ticket",
    "admin.outbox_requeue",
];

// A database migrated by an older pgrpc (through V16, before sql/modules)
// and then by this one equals a fresh database migrated in one run.
#[tokio::test]
async fn a_database_upgraded_from_v16_equals_a_fresh_one() {
    let db = TestDb::new().await;
    let url = empty_database(&db, "upgraded").await;
    migrate::run_with(
        &url,
        Options {
            target: Some(16),
            modules: false,
            ..Default::default()
        },
    )
    .await
    .expect("migrate to V16");
    let report = migrate::run(&url).await.expect("upgrade");
    assert!(!report.applied.is_empty() && report.modules.len() == migrate::MODULES.len());
    assert_same(
        &catalog(&url).await,
        &catalog(&db.url()).await,
        "upgraded (first) and fresh (second) differ",
    );
}

/// The embedded module files, `from` replaced by `to` in module `name`.
fn modules_with(name: &str, from: &str, to: &str) -> Vec<(&'static str, String)> {
    migrate::MODULES
        .iter()
        .map(|&(m, sql)| {
            if m == name {
                assert!(sql.contains(from), "{m} lacks {from:?}");
                (m, sql.replacen(from, to, 1))
            } else {
                (m, sql.to_string())
            }
        })
        .collect()
}

async fn apply(
    db: &TestDb,
    modules: &[(&'static str, String)],
) -> Result<Vec<String>, MigrateError> {
    let list: Vec<(&str, &str)> = modules.iter().map(|(m, s)| (*m, s.as_str())).collect();
    migrate::apply_module_files(&db.url(), &list).await
}

// A migrated database is up to date: no module is applied again, and a
// module whose text changed is the only one re-applied.
#[tokio::test]
async fn only_a_changed_module_is_applied_again() {
    let db = TestDb::new().await;
    let same = modules_with("nonces", "", "");
    assert_eq!(
        apply(&db, &same).await.expect("apply"),
        Vec::<String>::new()
    );
    let changed = modules_with("nonces", "-- Module nonces", "-- The module nonces");
    assert_eq!(apply(&db, &changed).await.expect("apply"), vec!["nonces"]);
    assert_eq!(
        apply(&db, &changed).await.expect("apply"),
        Vec::<String>::new()
    );
}

// Module files are applied under pgrpc migrate's lock (V17's superuser-only
// table lock): while another run holds it, a changed module waits, and is
// applied once the lock is released.
#[tokio::test]
async fn a_changed_module_waits_for_the_migration_lock() {
    let db = TestDb::new().await;
    let holder = db.superuser().await;
    holder
        .batch_execute(
            "BEGIN; LOCK TABLE information_schema.sql_features IN SHARE ROW EXCLUSIVE MODE",
        )
        .await
        .expect("take the migration lock");
    let changed = modules_with("nonces", "-- Module nonces", "-- The module nonces");
    let list: Vec<(&'static str, String)> = changed;
    let url = db.url();
    let run = tokio::spawn(async move {
        let list: Vec<(&str, &str)> = list.iter().map(|(m, s)| (*m, s.as_str())).collect();
        migrate::apply_module_files(&url, &list).await
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(!run.is_finished(), "applied while the lock was held");
    holder.batch_execute("COMMIT").await.expect("release");
    let applied = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("applied once the lock is free")
        .expect("task")
        .expect("apply");
    assert_eq!(applied, vec!["nonces"]);
}

// The migration lock holds for the whole run even where the database ends
// sessions idle in a transaction: the lock's session sits idle while the
// modules apply, and a lock lost halfway would let a second run interleave.
#[tokio::test]
async fn the_migration_lock_outlives_an_idle_in_transaction_timeout() {
    let db = TestDb::new().await;
    let c = db.superuser().await;
    c.batch_execute(&format!(
        "ALTER DATABASE \"{}\" SET idle_in_transaction_session_timeout = '150ms'",
        db.name
    ))
    .await
    .expect("a short idle-in-transaction timeout");
    let url = db.url();
    let run = tokio::spawn(async move {
        migrate::apply_module_files(&url, &[("slow_probe", "SELECT pg_sleep(1.5);")]).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let held: i64 = support::db::query_value(
        &c,
        "SELECT count(*) FROM pg_catalog.pg_locks l \
         JOIN pg_catalog.pg_class k ON k.oid = l.relation \
         WHERE k.relname = 'sql_features' AND l.mode = 'ShareRowExclusiveLock' AND l.granted \
           AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
        &[],
    )
    .await;
    assert_eq!(held, 1, "the migration lock's session was ended mid-run");
    let applied = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("the run ends")
        .expect("task")
        .expect("applied with the lock held to the end");
    assert_eq!(applied, vec!["slow_probe"]);
}

// A module that changes a function's return type is refused with a message
// naming the module and the way out (a versioned migration that drops the
// function), and leaves the database as it was: the function, the recorded
// checksums and the DDL guard's event trigger. After the drop, it applies.
#[tokio::test]
async fn a_change_create_or_replace_cannot_make_is_refused_until_a_migration_drops_the_function() {
    let db = TestDb::new().await;
    let c = db.superuser().await;
    let sums = "SELECT string_agg(module || checksum, ',' ORDER BY module) FROM pgrpc_guard.module_checksums";
    let before: String = support::db::query_value(&c, sums, &[]).await;
    let retyped = modules_with(
        "common",
        "api.version()\n RETURNS text",
        "api.version()\n RETURNS varchar",
    );
    let err = apply(&db, &retyped)
        .await
        .expect_err("a new return type must be refused");
    let message = err.to_string();
    assert!(
        matches!(err, MigrateError::Incompatible { .. }),
        "{message}"
    );
    assert!(
        message.contains("sql/modules/common.sql")
            && message.contains("cannot change return type")
            && message.contains("versioned migration"),
        "{message}"
    );
    let result: String = support::db::query_value(
        &c,
        "SELECT pg_get_function_result('api.version'::regproc)",
        &[],
    )
    .await;
    assert_eq!(result, "text");
    assert_eq!(
        support::db::query_value::<String>(&c, sums, &[]).await,
        before
    );
    let enabled: String = support::db::query_value(
        &c,
        "SELECT evtenabled::text FROM pg_event_trigger WHERE evtname = 'pgrpc_guard_ddl'",
        &[],
    )
    .await;
    assert_eq!(enabled, "O");

    c.batch_execute("DROP FUNCTION api.version()")
        .await
        .expect("drop");
    assert!(apply(&db, &retyped)
        .await
        .expect("apply")
        .contains(&"common".to_string()));
    let result: String = support::db::query_value(
        &c,
        "SELECT pg_get_function_result('api.version'::regproc)",
        &[],
    )
    .await;
    assert_eq!(result, "character varying");
}

/// The bands of docs/sql-conventions.md: band, kind, and the rules (trigger
/// function names without `tg_` and the table prefix) of that kind. A
/// TRUNCATE trigger is always in 600, an AFTER trigger always in 900.
const BANDS: [(&str, &str, &[&str]); 9] = [
    ("010", "normalize", &["normalize_owner_email"]),
    ("100", "forbid update or delete", &["forbid"]),
    (
        "200",
        "write-once",
        &["write_once", "freeze_stored", "redact_only"],
    ),
    (
        "300",
        "state machine",
        &[
            "status_machine",
            "status_transition",
            "contract_transition",
            "check_transition",
        ],
    ),
    (
        "400",
        "checks across rows",
        &[
            "check_link",
            "check_opportunity",
            "validate",
            "spend_one_at_a_time",
            "contract_signed_has_signed_player",
        ],
    ),
    (
        "500",
        "delete guard",
        &[
            "guard_delete",
            "delete_only_by_cascade",
            "delete_only_by_prune",
            "keep_signed",
        ],
    ),
    ("600", "truncate guard", &[]),
    ("700", "updated_at", &["set_updated_at"]),
    ("900", "after: outbox and notify", &[]),
];

// Every trigger of pgrpc is named _<band>_<rule>: the rule is the function
// it fires, the band the kind of rule that function enforces, as
// docs/sql-conventions.md tabulates (so firing order follows meaning).
#[tokio::test]
async fn every_trigger_sits_in_the_band_of_its_kind_and_is_named_for_its_function() {
    let db = TestDb::new().await;
    let c = db.superuser().await;
    let rows = c
        .query(
            "SELECT c.oid::regclass::text, t.tgname::text, p.proname::text,
                    t.tgtype & 32 <> 0, t.tgtype & 2 = 0, t.tgtype & 8 <> 0 AND t.tgtype & 20 = 0
             FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_proc p ON p.oid = t.tgfoid
             WHERE NOT t.tgisinternal
               AND c.relnamespace::regnamespace::text IN ('private', 'api', 'admin', 'pgrpc_guard', 'pgrpc_http')
             ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("triggers");
    assert!(rows.len() > 50, "{} triggers", rows.len());
    let conventions = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/sql-conventions.md"),
    )
    .expect("docs/sql-conventions.md");
    let mut wrong = Vec::new();
    for (band, kind, _) in BANDS {
        if !conventions.contains(&format!("| `_{band}` | {kind} |")) {
            wrong.push(format!(
                "docs/sql-conventions.md has no row | `_{band}` | {kind} |"
            ));
        }
    }
    for r in &rows {
        let (table, name, function): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let (truncate, after, delete_only): (bool, bool, bool) = (r.get(3), r.get(4), r.get(5));
        let rule = function.trim_start_matches("tg_");
        let rule = rule.split_once("__").map_or(rule, |(_, r)| r);
        let Some((band, rest)) = name.strip_prefix('_').and_then(|n| n.split_once('_')) else {
            wrong.push(format!("{table}.{name}: not _<band>_<rule>"));
            continue;
        };
        if !rest.starts_with(rule) {
            wrong.push(format!(
                "{table}.{name}: fires {function}, so its name ends _{rule}[_...]"
            ));
        }
        let expected = if truncate {
            Some("600")
        } else if after {
            Some("900")
        } else {
            BANDS
                .iter()
                .find(|(_, _, rules)| rules.contains(&rule))
                .map(|(b, _, _)| *b)
        };
        match expected {
            None => wrong.push(format!(
                "{table}.{name}: rule {rule} is in no band (BANDS, docs/sql-conventions.md)"
            )),
            Some(b) if b != band => {
                wrong.push(format!("{table}.{name}: a {rule} trigger belongs in _{b}"))
            }
            _ => {}
        }
        if band == "500" && !delete_only {
            wrong.push(format!(
                "{table}.{name}: a delete guard fires on DELETE only"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// Every function and view of pgrpc's schemas has exactly one live
// definition, in one file of sql/modules, and no module defines what the
// database does not have.
#[tokio::test]
async fn every_function_and_view_has_one_live_definition_in_the_module_files() {
    let db = TestDb::new().await;
    let c = db.superuser().await;
    let objects: Vec<String> = support::db::query_column(
        &c,
        "SELECT 'FUNCTION ' || n.nspname || '.' || p.proname || '(' FROM pg_proc p
         JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('private', 'api', 'admin', 'pgrpc_guard', 'pgrpc_http')
         UNION ALL
         SELECT 'VIEW ' || c.oid::regclass::text || ' ' FROM pg_class c
         WHERE c.relkind = 'v' AND c.relnamespace::regnamespace::text IN ('private', 'api', 'admin')",
        &[],
    )
    .await;
    let mut wrong = Vec::new();
    let defined: usize = migrate::MODULES
        .iter()
        .map(|(_, sql)| {
            sql.lines()
                .filter(|l| l.starts_with("CREATE OR REPLACE "))
                .count()
        })
        .sum();
    for o in &objects {
        let homes: Vec<&str> = migrate::MODULES
            .iter()
            .filter(|(_, sql)| sql.contains(&format!("\nCREATE OR REPLACE {o}")))
            .map(|(m, _)| *m)
            .collect();
        if homes.len() != 1 {
            wrong.push(format!("{o}: defined in {homes:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        defined,
        objects.len(),
        "the modules define what the database lacks"
    );
}

// private.http_idempotency_row_is_own reads pg_current_xact_id(), which is
// VOLATILE, so it is declared VOLATILE too: a STABLE function promises an
// answer that cannot change within a statement, which one calling a
// volatile function cannot keep.
#[tokio::test]
async fn http_idempotency_row_is_own_is_volatile() {
    let db = TestDb::new().await;
    let c = db.superuser().await;
    let volatility: String = support::db::query_value(
        &c,
        "SELECT provolatile::text FROM pg_proc \
         WHERE oid = 'private.http_idempotency_row_is_own(xid)'::regprocedure",
        &[],
    )
    .await;
    assert_eq!(
        volatility, "v",
        "declared {volatility}, calls pg_current_xact_id()"
    );
}
