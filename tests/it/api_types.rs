//! The `api` functions answer declared contract types (SPEC §1, V14): no
//! result is a private table's row, so the HTTP contract does not follow the
//! private tables, and no result carries a credential its caller should not
//! hold.

use std::collections::BTreeSet;

use serde_json::json;
use tokio_postgres::Client;

use crate::support::api::create_organization;
use crate::support::{TestDb, TestServer};

/// Every function of schema api whose result mentions a type of schema
/// private: as its return type (SETOF included), as an OUT or TABLE column,
/// as a field of its composite result, or as the element of an array there.
const PRIVATE_RESULT_TYPES_SQL: &str = "
    WITH api_fn AS (
        SELECT p.oid::regprocedure::text AS fn, p.prorettype, p.proallargtypes, p.proargmodes
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'api'::regnamespace
    ),
    result_types AS (
        SELECT fn, prorettype AS typ FROM api_fn
        UNION ALL
        SELECT fn, a.typ
        FROM api_fn
        CROSS JOIN LATERAL unnest(proallargtypes, proargmodes::text[]) AS a(typ, mode)
        WHERE a.mode IN ('o', 'b', 't')
    ),
    with_fields AS (
        SELECT fn, typ FROM result_types
        UNION ALL
        SELECT r.fn, att.atttypid
        FROM result_types r
        JOIN pg_catalog.pg_type t ON t.oid = r.typ
        JOIN pg_catalog.pg_attribute att
          ON att.attrelid = t.typrelid AND att.attnum > 0 AND NOT att.attisdropped
    )
    SELECT DISTINCT w.fn || ' -> ' || pg_catalog.format_type(t.oid, NULL)
    FROM with_fields w
    JOIN pg_catalog.pg_type t ON t.oid = w.typ
    LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
    WHERE t.typnamespace = 'private'::regnamespace
       OR e.typnamespace = 'private'::regnamespace
    ORDER BY 1";

/// The result columns of every function of schema api: the fields of its
/// composite return type, or its OUT, INOUT and TABLE parameters.
const RESULT_COLUMNS_SQL: &str = "
    SELECT p.proname::text, c.name
    FROM pg_catalog.pg_proc p
    CROSS JOIN LATERAL (
        SELECT a.attname::text AS name
        FROM pg_catalog.pg_type t
        JOIN pg_catalog.pg_attribute a
          ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE t.oid = p.prorettype
        UNION ALL
        SELECT o.name
        FROM unnest(p.proargnames, p.proargmodes::text[]) AS o(name, mode)
        WHERE o.mode IN ('o', 'b', 't')
    ) AS c
    WHERE p.pronamespace = 'api'::regnamespace
    ORDER BY 1, 2";

async fn private_result_types(c: &Client) -> Vec<String> {
    c.query(PRIVATE_RESULT_TYPES_SQL, &[])
        .await
        .expect("query the catalog")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn result_columns(c: &Client) -> Vec<(String, String)> {
    c.query(RESULT_COLUMNS_SQL, &[])
        .await
        .expect("query the catalog")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// No function of schema api returns a type (or SETOF a type) defined in schema private.
#[tokio::test]
async fn no_api_function_returns_a_private_type() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    assert_eq!(private_result_types(&su).await, Vec::<String>::new());

    // The query is not blind: it sees a private row type, a private field
    // and a private array, and the probe functions go with the rollback.
    su.batch_execute(
        "BEGIN;
         CREATE FUNCTION api.probe_row() RETURNS SETOF private.settings
             LANGUAGE sql AS 'SELECT * FROM private.settings';
         CREATE TYPE api.probe_type AS (s private.settings);
         CREATE FUNCTION api.probe_field() RETURNS api.probe_type
             LANGUAGE sql AS 'SELECT NULL::api.probe_type';
         CREATE FUNCTION api.probe_out(OUT a private.settings[], OUT b int)
             LANGUAGE sql AS 'SELECT NULL::private.settings[], 1';",
    )
    .await
    .expect("create probes");
    assert_eq!(
        private_result_types(&su).await,
        [
            "api.probe_field() -> private.settings",
            "api.probe_out() -> private.settings[]",
            "api.probe_row() -> private.settings",
        ]
    );
    su.batch_execute("ROLLBACK").await.expect("drop probes");
}

/// Credentials appear only in the results of the calls that hand them to their own caller.
#[tokio::test]
async fn credentials_appear_only_where_the_caller_needs_them() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let columns = result_columns(&su).await;
    assert!(
        columns
            .iter()
            .any(|(f, c)| f == "find_active_idempotency_key" && c == "status"),
        "the catalog query finds find_active_idempotency_key's columns: {columns:?}"
    );
    let find_active: Vec<&str> = columns
        .iter()
        .filter(|(f, _)| f == "find_active_idempotency_key")
        .map(|(_, c)| c.as_str())
        .collect();
    assert!(
        !find_active.contains(&"lease_token"),
        "find_active_idempotency_key returns {find_active:?}"
    );
    let holders: BTreeSet<(&str, &str)> = columns
        .iter()
        .filter(|(_, c)| matches!(c.as_str(), "lease_token" | "contract_token" | "nonce"))
        .map(|(f, c)| (f.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        holders,
        BTreeSet::from([
            ("create_player", "contract_token"),
            ("idempotency_begin", "lease_token"),
            ("issue_oauth_nonce", "nonce"),
            ("outbox_claim", "lease_token"),
        ])
    );
}

/// Over HTTP, find_active_idempotency_key answers the key's contract fields and no lease_token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_active_idempotency_key_answers_without_the_lease_token() {
    let server = TestServer::start().await;
    let org = create_organization(&server, "Leased Inc", "free").await;
    let started = server
        .service_rpc(
            "idempotency_begin",
            json!({"organization_id": org, "key": "k-1", "endpoint": "/charges", "request_hash": "h1"}),
        )
        .await;
    assert_eq!(started.status, 200, "{}", started.text);
    assert!(started.body["lease_token"].is_string(), "{}", started.text);

    let found = server
        .service_rpc_get(
            "find_active_idempotency_key",
            &[("organization_id", org.as_str()), ("key", "k-1")],
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.text);
    let keys: BTreeSet<&str> = found
        .body
        .as_object()
        .unwrap_or_else(|| panic!("an object: {}", found.text))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "organization_id",
            "key",
            "endpoint",
            "request_hash",
            "status",
            "lease_expires_at",
            "response_status",
            "response_body",
            "created_at",
            "expires_at",
        ])
    );
    assert_eq!(found.body["status"], "processing");
}
