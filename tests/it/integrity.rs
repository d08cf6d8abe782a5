//! Guards that span every module (V1, V11): settings validation, schema
//! changes reserved to migrations, credentials hidden from operators, and
//! claim scoping for every role that is not a service or an operator.

use serde_json::json;

use crate::support::api::{create_organization, create_site};
use crate::support::db::{assert_refused_as, db_error, error_of, message, sqlstate};
use crate::support::{connect, TestDb, TestServer};

/// admin.set_setting validates type and bounds; settings cannot be deleted, renamed or retyped.
#[tokio::test]
async fn settings_are_validated_and_permanent() {
    let db = TestDb::new().await;
    let admin = db.as_role("pgrpc_admin").await;
    let ok = admin
        .query_one(
            "SELECT (admin.set_setting('receive_ip_retention', '14 days')).value",
            &[],
        )
        .await
        .expect("valid value");
    assert_eq!(ok.get::<_, String>(0), "14 days");
    for (key, value) in [
        ("receive_ip_retention", "200000 years"),
        ("receive_ip_retention", "-1 day"),
        ("receive_ip_retention", "soon"),
        ("outbox_max_attempts", "0"),
        ("outbox_max_attempts", "100000"),
        ("outbox_max_attempts", "many"),
    ] {
        let e = admin
            .query_one("SELECT admin.set_setting($1, $2)", &[&key, &value])
            .await
            .expect_err(value);
        assert_eq!(sqlstate(&e), "PT400", "{key}={value}");
        assert_eq!(message(&e), "invalid_setting", "{key}={value}");
    }
    assert_eq!(
        error_of(&admin, "SELECT admin.set_setting('no_such_setting', '1')").await,
        ("PT404".into(), "not_found".into()),
        "unknown key"
    );

    let owner = db.as_role("pgrpc_owner").await;
    assert_refused_as(
        &owner,
        "pgrpc_owner",
        &[
            "DELETE FROM private.settings WHERE key = 'outbox_max_attempts'",
            "TRUNCATE private.settings",
            "UPDATE private.settings SET key = 'renamed' WHERE key = 'outbox_max_attempts'",
            "UPDATE private.settings SET value_type = 'text' WHERE key = 'outbox_max_attempts'",
        ],
        &[],
    )
    .await;
}

/// A login member of pgrpc_owner cannot disable, drop or neuter the triggers that keep the rules.
#[tokio::test]
async fn table_owner_cannot_switch_rules_off() {
    let db = TestDb::new().await;
    let login = format!("owner_{}", db.name);
    db.superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {login} LOGIN PASSWORD 'pw' IN ROLE pgrpc_owner; \
             GRANT CREATE ON DATABASE {} TO {login}",
            db.name
        ))
        .await
        .expect("create login");
    let owner = connect(&db.url_as(&login, "pw")).await;
    owner
        .batch_execute("SET ROLE pgrpc_owner")
        .await
        .expect("set role");
    // pgrpc_owner owns nothing since V15 (pgrpc_migrator does), so privileges
    // refuse these first; the DDL guard stands behind them (trust.rs).
    assert_refused_as(
        &owner,
        "pgrpc_owner",
        &[
            "ALTER TABLE private.suggestion_grants DISABLE TRIGGER USER",
            "ALTER TABLE private.oauth_nonces DISABLE TRIGGER USER",
            "DROP TRIGGER _700_set_updated_at ON private.settings",
            "CREATE OR REPLACE FUNCTION private.tg_forbid() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "DROP TABLE private.ticket_suggestions",
            "ALTER TABLE private.outbox DROP CONSTRAINT outbox_status_known",
        ],
        &["schema_change_requires_migration"],
    )
    .await;
    // The guards cover pgrpc's schemas only: the same login may still change
    // a schema of its own.
    owner
        .batch_execute("RESET ROLE; CREATE SCHEMA scratch; CREATE TABLE scratch.t (x int); DROP TABLE scratch.t")
        .await
        .expect("DDL outside pgrpc's schemas is not refused");
    drop(owner);
    let su = db.superuser().await;
    let enabled: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'private.suggestion_grants'::regclass \
             AND NOT tgisinternal AND tgenabled = 'O'",
            &[],
        )
        .await
        .expect("count triggers")
        .get(0);
    assert!(enabled > 0, "the grant triggers are still enabled");
    su.batch_execute(&format!("DROP OWNED BY {login}; DROP ROLE {login}"))
        .await
        .expect("drop login");
}

/// Operators read private tables but not the columns that are credentials.
#[tokio::test]
async fn operators_cannot_read_credentials() {
    let db = TestDb::new().await;
    let admin = db.as_role("pgrpc_admin").await;
    for (table, secret) in [
        ("players", "contract_token"),
        ("oauth_nonces", "nonce"),
        ("idempotency_keys", "lease_token"),
        ("outbox", "lease_token"),
    ] {
        let e = admin
            .query(&format!("SELECT {secret} FROM private.{table}"), &[])
            .await
            .expect_err(table);
        assert_eq!(sqlstate(&e), "42501", "{table}.{secret}");
        admin
            .query(&format!("SELECT id, created_at FROM private.{table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{table} stays readable: {e}"));
    }
}

/// A role derived from pgrpc_user is scoped by its claims too; services are not.
#[tokio::test]
async fn scoping_covers_roles_derived_from_pgrpc_user() {
    let s = TestServer::start().await;
    let org_id = create_organization(&s, "Scoped", "freemium").await;
    let site_id = create_site(&s, &org_id, "https://scoped.example").await;

    let role = format!("derived_{}", s.db.name);
    let su = s.db.superuser().await;
    su.batch_execute(&format!("CREATE ROLE {role} NOLOGIN IN ROLE pgrpc_user"))
        .await
        .expect("derived role");
    let derived =
        s.db.as_request(&role, &json!({"org_id": uuid::Uuid::new_v4()}))
            .await;
    let e = derived
        .query_one(
            "SELECT api.token_balance($1::text::uuid, 'alt_text')",
            &[&site_id],
        )
        .await
        .expect_err("another organization");
    assert_eq!(db_error(&e), ("PT403".into(), "forbidden".into()));
    let own = s.db.as_request(&role, &json!({"org_id": org_id})).await;
    own.query_one(
        "SELECT api.token_balance($1::text::uuid, 'alt_text')",
        &[&site_id],
    )
    .await
    .expect("own organization");
    let service = s.db.as_request("pgrpc_service", &json!({})).await;
    service
        .query_one(
            "SELECT api.token_balance($1::text::uuid, 'alt_text')",
            &[&site_id],
        )
        .await
        .expect("services act on any organization");
    drop((derived, own, service));
    su.batch_execute(&format!("DROP ROLE {role}"))
        .await
        .expect("drop role");
}
