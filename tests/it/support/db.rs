//! Database-side helpers shared by the modules: error codes, single values
//! and counts, outbox events, and privilege checks.

use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSqlOwned, ToSql};
use tokio_postgres::Client;

use super::TestDb;

/// The roles that must never get past a rule: the API's functions, the
/// operators, and pgrpc_owner (a reader since V15).
pub const PRIVILEGED_ROLES: [&str; 3] = ["pgrpc_api", "pgrpc_admin", "pgrpc_owner"];

/// `PRIVILEGED_ROLES` and a superuser.
pub const PRIVILEGED_ROLES_AND_SUPERUSER: [&str; 4] =
    ["pgrpc_api", "pgrpc_admin", "pgrpc_owner", "postgres"];

/// The seven table privileges, in the order `table_privileges` reports them.
pub const TABLE_PRIVILEGES: [&str; 7] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

/// The SQLSTATE and message of a database error; panics on any other error.
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// The SQLSTATE of a database error; panics on any other error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    db_error(e).0
}

/// The message of a database error; panics on any other error.
pub fn message(e: &tokio_postgres::Error) -> String {
    db_error(e).1
}

/// The SQLSTATE and message `sql` fails with; fails if it succeeds.
pub async fn error_of(c: &Client, sql: &str) -> (String, String) {
    let err = c
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} must fail"));
    db_error(&err)
}

/// Asserts that `sql` fails on the constraint named `constraint`.
pub async fn assert_violates(c: &Client, sql: &str, constraint: &str) {
    let err = c
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} must violate {constraint}"));
    assert_eq!(
        err.as_db_error().and_then(|e| e.constraint()),
        Some(constraint),
        "{sql}: {err}"
    );
}

/// The single value of the single row `sql` answers for `params`.
pub async fn query_value<T: FromSqlOwned>(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> T {
    c.query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The first column of every row `sql` answers for `params`.
pub async fn query_column<T: FromSqlOwned>(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Vec<T> {
    c.query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The single bigint a query answers.
pub async fn count(c: &Client, sql: &str) -> i64 {
    query_value(c, sql, &[]).await
}

/// The single bigint a query with one parameter answers.
pub async fn count_for(c: &Client, sql: &str, param: &(dyn ToSql + Sync)) -> i64 {
    query_value(c, sql, &[param]).await
}

/// How many outbox events of `event_type` there are.
pub async fn outbox_count(c: &Client, event_type: &str) -> i64 {
    query_value(
        c,
        "SELECT count(*) FROM private.outbox WHERE event_type = $1",
        &[&event_type],
    )
    .await
}

/// The payloads of the outbox events of `event_type`, oldest first.
pub async fn outbox_payloads(c: &Client, event_type: &str) -> Vec<Value> {
    query_column(
        c,
        "SELECT payload FROM private.outbox WHERE event_type = $1 ORDER BY id",
        &[&event_type],
    )
    .await
}

/// The payloads of the outbox events of `event_type` for one aggregate, oldest first.
pub async fn aggregate_payloads(
    c: &Client,
    event_type: &str,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Vec<Value> {
    query_column(
        c,
        "SELECT payload FROM private.outbox \
         WHERE event_type = $1 AND aggregate_type = $2 AND aggregate_id = $3 ORDER BY id",
        &[&event_type, &aggregate_type, &aggregate_id],
    )
    .await
}

/// Which of the seven table privileges `role` holds on `table`, in `TABLE_PRIVILEGES` order.
pub async fn table_privileges(c: &Client, role: &str, table: &str) -> Vec<String> {
    query_column(
        c,
        "SELECT p FROM unnest($3::text[]) WITH ORDINALITY AS t(p, n) \
         WHERE has_table_privilege($1::name, $2, p) ORDER BY n",
        &[&role, &table, &TABLE_PRIVILEGES.to_vec()],
    )
    .await
}

/// Asserts that the function `name` (schema.function) documents itself (a
/// summary line, a blank line, then details) and is STABLE exactly when
/// `read_only`.
pub async fn assert_documented(c: &Client, name: &str, read_only: bool) {
    let row = c
        .query_one(
            "SELECT obj_description(p.oid, 'pg_proc'), p.provolatile::text \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname || '.' || p.proname = $1",
            &[&name],
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let comment: Option<String> = row.get(0);
    let comment = comment.unwrap_or_else(|| panic!("{name} has no COMMENT"));
    assert!(
        comment.contains("\n\n"),
        "{name}: summary, blank line, details"
    );
    let volatility: String = row.get(1);
    assert_eq!(
        volatility == "s",
        read_only,
        "{name} volatility {volatility}"
    );
}

/// Whether `role` holds `privilege` on the whole of `table`.
pub async fn holds_privilege(c: &Client, role: &str, table: &str, privilege: &str) -> bool {
    query_value(
        c,
        "SELECT has_table_privilege($1::name, $2, $3)",
        &[&role, &table, &privilege],
    )
    .await
}

/// The columns of `table` that `role` may update, by name.
pub async fn updatable_columns(c: &Client, role: &str, table: &str) -> Vec<String> {
    query_column(
        c,
        "SELECT a.attname::text FROM pg_attribute a \
         WHERE a.attrelid = $2::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
           AND has_column_privilege($1::name, a.attrelid, a.attnum, 'UPDATE') \
         ORDER BY a.attname",
        &[&role, &table],
    )
    .await
}

/// Asserts that `client`, acting as `role`, is refused every statement with
/// 42501; when `trigger_messages` is not empty, the refusals of postgres
/// (whom privileges cannot stop) must carry one of them. pgrpc_owner holds
/// no write privilege since V15, so privileges stop it first.
pub async fn assert_refused_as<S: AsRef<str>>(
    client: &Client,
    role: &str,
    statements: &[S],
    trigger_messages: &[&str],
) {
    for stmt in statements {
        let stmt = stmt.as_ref();
        let err = client
            .batch_execute(stmt)
            .await
            .expect_err(&format!("{role} may not run {stmt}"));
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{role}: {stmt}: {err}"
        );
        if !trigger_messages.is_empty() && role == "postgres" {
            // Privileges cannot stop these roles; the triggers did.
            let message = message(&err);
            assert!(
                trigger_messages.contains(&message.as_str()),
                "{role}: {stmt}: {message}"
            );
        }
    }
}

/// `assert_refused_as` for each of `roles`, each on a connection of its own.
pub async fn assert_refused<S: AsRef<str>>(
    db: &TestDb,
    roles: &[&str],
    statements: &[S],
    trigger_messages: &[&str],
) {
    for &role in roles {
        let client = db.as_role(role).await;
        assert_refused_as(&client, role, statements, trigger_messages).await;
    }
}
