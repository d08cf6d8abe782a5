//! Task-management connections, tickets and ticket suggestions (SPEC §4.3).
//! The database validates metadata and URLs and runs the connection status
//! state machine. A suggestion is ticketed at most once, even under
//! concurrency. Links are append-only, write-once columns stay put, and a
//! connection's delete cascades all the way down.
//!
//! Services and users are exercised through HTTP (`POST`/`GET /rpc/...`);
//! operator, cascade and privilege rules directly in SQL as the role concerned.

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::support::api::{
    create_opportunity, create_organization, create_site, create_suggestion, id_of, service_ok,
};
use crate::support::db::{
    aggregate_payloads, assert_documented, assert_refused, count, count_for, db_error,
    holds_privilege, outbox_count, query_column, query_value, table_privileges, updatable_columns,
    PRIVILEGED_ROLES_AND_SUPERUSER,
};
use crate::support::{self, assert_error, split_refusals, Resp, TestDb, TestServer};

const CLOUD_ID: &str = "6f1d2c3a-1111-4222-8333-123456789abc";
const STATUSES: [&str; 5] = [
    "active",
    "disabled",
    "requires_reauth",
    "error",
    "disconnected",
];
const STATUS_EVENT: &str = "task_management.connection_status_changed";

// Helpers -------------------------------------------------------------------

fn jira_metadata() -> Value {
    json!({"cloudId": CLOUD_ID, "scopes": ["read:jira-work", "write:jira-work"]})
}

/// The `details` of an error body.
fn details(r: &Resp) -> String {
    r.body["details"].as_str().unwrap_or_default().to_string()
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap_or_else(|e| panic!("{s} is not a uuid: {e}"))
}

/// An organization with one site, one opportunity and `n` suggestions on it.
struct Org {
    id: String,
    opportunity: String,
    suggestions: Vec<String>,
}

async fn org_with_suggestions(server: &TestServer, n: usize) -> Org {
    let org_id = create_organization(server, "Acme", "paid").await;
    let site = create_site(server, &org_id, "https://acme.test").await;
    let opportunity = create_opportunity(server, &site, "broken-backlinks").await;
    let mut suggestions = Vec::with_capacity(n);
    for i in 0..n {
        suggestions.push(create_suggestion(server, &opportunity, json!({"n": i}), None).await);
    }
    Org {
        id: org_id,
        opportunity,
        suggestions,
    }
}

fn connect_body(org: &str, instance: &str) -> Value {
    json!({
        "organization_id": org,
        "provider": "jira_cloud",
        "external_instance_id": instance,
        "instance_url": format!("https://{instance}.atlassian.net"),
        "display_name": format!("{instance} Jira"),
        "metadata": jira_metadata(),
    })
}

/// Connects `org` to the Jira instance `instance` as the service; returns the connection.
async fn connect(server: &TestServer, org: &str, instance: &str) -> Value {
    service_ok(
        server,
        "connect_task_management",
        connect_body(org, instance),
    )
    .await
}

const NO_SUGGESTIONS: [&str; 0] = [];

fn ticket_body<S: AsRef<str>>(connection: &str, key: &str, suggestions: &[S]) -> Value {
    let suggestions: Vec<&str> = suggestions.iter().map(AsRef::as_ref).collect();
    json!({
        "connection_id": connection,
        "external_ticket_id": format!("ext-{key}"),
        "ticket_key": key,
        "ticket_url": format!("https://acme.atlassian.net/browse/{key}"),
        "suggestion_ids": suggestions,
    })
}

async fn set_status(server: &TestServer, connection: &str, status: &str) -> Resp {
    server
        .service_rpc(
            "set_connection_status",
            json!({"connection_id": connection, "status": status}),
        )
        .await
}

/// How many connection_status_changed events a connection has emitted.
async fn status_events(c: &Client, connection: &str) -> i64 {
    aggregate_payloads(c, STATUS_EVENT, "task_management_connection", connection)
        .await
        .len() as i64
}

/// How many tickets and ticket-suggestion links there are.
async fn ticket_rows(c: &Client) -> (i64, i64) {
    (
        count(c, "SELECT count(*) FROM private.tickets").await,
        count(c, "SELECT count(*) FROM private.ticket_suggestions").await,
    )
}

/// A connection's last_used_at, as text.
async fn last_used_at(c: &Client, connection: &Uuid) -> Option<String> {
    c.query_one(
        "SELECT last_used_at::text FROM private.task_management_connections WHERE id = $1",
        &[connection],
    )
    .await
    .expect("last_used_at")
    .get(0)
}

/// What SQL made as a service would leave: an organization, an opportunity
/// with two suggestions, a connection and one ticket linking the first.
struct SqlFixture {
    org: Uuid,
    opportunity: Uuid,
    linked: Uuid,
    free: Uuid,
    connection: Uuid,
    ticket: Uuid,
}

async fn sql_fixture(c: &Client) -> SqlFixture {
    c.batch_execute("SELECT set_config('request.jwt.claims', '{\"sub\":\"svc-sql\"}', false)")
        .await
        .expect("claims");
    let org: Uuid = query_value(
        c,
        "SELECT id FROM api.create_organization('SQL org', 'paid')",
        &[],
    )
    .await;
    let site: Uuid = query_value(
        c,
        "SELECT id FROM api.create_site($1, 'https://sql.test')",
        &[&org],
    )
    .await;
    let opportunity: Uuid = query_value(
        c,
        "SELECT id FROM api.create_opportunity($1, 'broken-backlinks')",
        &[&site],
    )
    .await;
    let mut suggestions = Vec::new();
    for _ in 0..2 {
        let s: Uuid = query_value(
            c,
            "SELECT id FROM api.create_suggestion($1, '{}')",
            &[&opportunity],
        )
        .await;
        suggestions.push(s);
    }
    let connection: Uuid = c
        .query_one(
            "SELECT id FROM api.connect_task_management($1, 'jira_cloud', 'sql-cloud', \
             'https://sql.atlassian.net', 'SQL Jira', \
             '{\"cloudId\": \"6f1d2c3a-1111-4222-8333-123456789abc\"}')",
            &[&org],
        )
        .await
        .expect("connection")
        .get(0);
    let ticket: Uuid = c
        .query_one(
            "SELECT id FROM api.create_ticket($1, 'ext-1', 'SQL-1', \
             'https://sql.atlassian.net/browse/SQL-1', ARRAY[$2::uuid], $3)",
            &[&connection, &suggestions[0], &opportunity],
        )
        .await
        .expect("ticket")
        .get(0);
    SqlFixture {
        org,
        opportunity,
        linked: suggestions[0],
        free: suggestions[1],
        connection,
        ticket,
    }
}

/// Whether the state machine allows `from` → `to` (from ≠ to).
fn transition_allowed(from: &str, to: &str) -> bool {
    match from {
        "active" => true,
        "disabled" | "requires_reauth" | "error" => to == "active" || to == "disconnected",
        _ => false,
    }
}

fn needs_attention(status: &str) -> bool {
    matches!(status, "requires_reauth" | "error" | "disabled")
}

// Validation ----------------------------------------------------------------

/// Every invalid metadata shape gets a 400 invalid_metadata whose details name
/// the field, and nothing is stored; the limits themselves are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_metadata_shapes_are_refused_with_a_400_naming_the_field() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 0).await;
    let too_many: Vec<String> = (0..101).map(|i| format!("scope-{i}")).collect();
    let too_long = "s".repeat(257);
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "metadata must be a JSON object, got array"),
        (
            json!([{"cloudId": CLOUD_ID}]),
            "metadata must be a JSON object, got array",
        ),
        (json!("cloud"), "metadata must be a JSON object, got string"),
        (json!(42), "metadata must be a JSON object, got number"),
        (json!(true), "metadata must be a JSON object, got boolean"),
        (json!({}), "metadata.cloudId is required"),
        (json!({"scopes": []}), "metadata.cloudId is required"),
        (
            json!({"cloudId": null}),
            "metadata.cloudId must be a string holding a UUID, got null",
        ),
        (
            json!({"cloudId": 7}),
            "metadata.cloudId must be a string holding a UUID, got number",
        ),
        (
            json!({"cloudId": "not-a-uuid"}),
            "metadata.cloudId must be a UUID, got 'not-a-uuid'",
        ),
        (
            json!({"cloudId": format!("{CLOUD_ID}0")}),
            "metadata.cloudId must be a UUID",
        ),
        (
            json!({"cloudId": CLOUD_ID, "extra": 1}),
            "unknown key(s) 'extra'",
        ),
        (
            json!({"cloudId": CLOUD_ID, "CloudId": CLOUD_ID}),
            "unknown key(s) 'CloudId'",
        ),
        (
            json!({"cloudId": CLOUD_ID, "scopes": "read"}),
            "metadata.scopes must be an array of strings, got string",
        ),
        (
            json!({"cloudId": CLOUD_ID, "scopes": null}),
            "metadata.scopes must be an array of strings, got null",
        ),
        (
            json!({"cloudId": CLOUD_ID, "scopes": {"a": 1}}),
            "metadata.scopes must be an array of strings, got object",
        ),
        (
            json!({"cloudId": CLOUD_ID, "scopes": too_many}),
            "metadata.scopes has 101 items; at most 100 are allowed",
        ),
        (
            json!({"cloudId": CLOUD_ID, "scopes": ["ok", 3]}),
            "metadata.scopes[1] must be a string, got number",
        ),
        (
            json!({"cloudId": CLOUD_ID, "scopes": [["nested"]]}),
            "metadata.scopes[0] must be a string, got array",
        ),
        (
            json!({"cloudId": CLOUD_ID, "scopes": ["ok", too_long]}),
            "metadata.scopes[1] is 257 characters long",
        ),
    ];
    for (metadata, expected) in &cases {
        let mut body = connect_body(&org.id, "acme");
        body["metadata"] = metadata.clone();
        let r = server.service_rpc("connect_task_management", body).await;
        assert_error(&r, 400, "invalid_metadata");
        assert_eq!(r.error_code(), "PT400", "{}", r.text);
        assert!(
            details(&r).contains(*expected),
            "metadata {metadata}: expected details with {expected:?}, got {}",
            r.text
        );
    }

    // JSON null is no metadata at all: the NOT NULL column refuses it (400).
    let mut body = connect_body(&org.id, "acme");
    body["metadata"] = Value::Null;
    let r = server.service_rpc("connect_task_management", body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "23502", "{}", r.text);

    // There is no default: leaving metadata out matches no function.
    let mut body = connect_body(&org.id, "acme");
    body.as_object_mut().expect("object").remove("metadata");
    let r = server.service_rpc("connect_task_management", body).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST202", "{}", r.text);

    let su = server.db.superuser().await;
    assert_eq!(
        count(
            &su,
            "SELECT count(*) FROM private.task_management_connections"
        )
        .await,
        0
    );

    // The limits are inclusive: 100 scopes of 256 characters, any UUID case.
    let mut body = connect_body(&org.id, "acme");
    let at_limit: Vec<String> = (0..100).map(|_| "s".repeat(256)).collect();
    body["metadata"] = json!({"cloudId": CLOUD_ID.to_uppercase(), "scopes": at_limit});
    let conn = service_ok(&server, "connect_task_management", body).await;
    assert_eq!(
        conn["metadata"]["scopes"].as_array().map(Vec::len),
        Some(100)
    );
}

/// An unknown provider is refused by its CHECK with a 400, before metadata is looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_provider_is_a_400() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 0).await;
    let mut body = connect_body(&org.id, "acme");
    body["provider"] = json!("github");
    let r = server.service_rpc("connect_task_management", body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "23514", "{}", r.text);
    assert!(
        r.text
            .contains("task_management_connections_provider_known"),
        "{}",
        r.text
    );
}

/// instance_url must be an absolute https URL with a host, and ticket_url an
/// absolute http(s) URL with a host: anything else is 400 invalid_url.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_that_are_not_absolute_with_a_host_are_refused_with_invalid_url() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 0).await;
    let bad_instance_urls: &[(&str, &str)] = &[
        (
            "http://acme.atlassian.net",
            "must use the https scheme, not http",
        ),
        (
            "ftp://acme.atlassian.net",
            "must use the https scheme, not ftp",
        ),
        (
            "javascript:alert(1)",
            "must use the https scheme, not javascript",
        ),
        ("acme.atlassian.net", "has no scheme"),
        ("//acme.atlassian.net", "has no scheme"),
        ("", "has no scheme"),
        ("https://", "has no host"),
        ("https:///browse", "has no host"),
        ("https://:443/", "has no host"),
        ("https:acme.atlassian.net", "has no //host part"),
        (
            "https://acme.atlassian.net@evil.example",
            "must not carry credentials",
        ),
        (
            "https://user:secret@acme.atlassian.net",
            "must not carry credentials",
        ),
        ("https://acme .atlassian.net", "characters not allowed"),
        (
            "https://acme.atlassian.net\\@evil.example",
            "characters not allowed",
        ),
        ("https://acmé.atlassian.net", "characters not allowed"),
        ("https://-acme.atlassian.net", "has an invalid host"),
        ("https://acme..atlassian.net", "has an invalid host"),
        ("https://acme.atlassian.net:99999", "has an invalid port"),
    ];
    for &(url, expected) in bad_instance_urls {
        let mut body = connect_body(&org.id, "acme");
        body["instance_url"] = json!(url);
        let r = server.service_rpc("connect_task_management", body).await;
        assert_error(&r, 400, "invalid_url");
        assert!(
            details(&r).starts_with("instance_url") && details(&r).contains(expected),
            "{url:?}: expected {expected:?}, got {}",
            r.text
        );
    }
    let su = server.db.superuser().await;
    assert_eq!(
        count(
            &su,
            "SELECT count(*) FROM private.task_management_connections"
        )
        .await,
        0
    );

    // Valid forms are accepted (each call re-authorizes the same instance).
    for url in [
        "https://acme.atlassian.net",
        "HTTPS://ACME.atlassian.net:443/jira/?a=1#top",
        "https://[2001:db8::1]:8443/",
    ] {
        let mut body = connect_body(&org.id, "acme");
        body["instance_url"] = json!(url);
        let conn = service_ok(&server, "connect_task_management", body).await;
        assert_eq!(conn["instance_url"], json!(url));
    }
    let conn = connect(&server, &org.id, "acme").await;
    let conn_id = id_of(&conn);

    for url in [
        "javascript:alert(1)",
        "ftp://acme.atlassian.net/browse/ACME-1",
        "/browse/ACME-1",
        "https://",
        "https://acme.atlassian.net/browse/ACME 1",
    ] {
        let mut body = ticket_body(&conn_id, "ACME-1", &NO_SUGGESTIONS);
        body["ticket_url"] = json!(url);
        let r = server.service_rpc("create_ticket", body).await;
        assert_error(&r, 400, "invalid_url");
        assert!(details(&r).starts_with("ticket_url"), "{}", r.text);
    }
    assert_eq!(count(&su, "SELECT count(*) FROM private.tickets").await, 0);
    let mut body = ticket_body(&conn_id, "ACME-1", &NO_SUGGESTIONS);
    body["ticket_url"] = json!("http://jira.internal.example/browse/ACME-1");
    service_ok(&server, "create_ticket", body).await;
}

// Status state machine ------------------------------------------------------

/// Every ordered pair of distinct statuses follows the state machine: allowed
/// moves answer 200, the others 409 invalid_transition naming both statuses
/// and change nothing; entering requires_reauth, error or disabled emits one
/// event each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_status_transition_follows_the_state_machine() {
    let server = TestServer::start().await;
    let pairs: Vec<(&str, &str)> = STATUSES
        .iter()
        .flat_map(|from| STATUSES.iter().map(move |to| (*from, *to)))
        .filter(|(from, to)| from != to)
        .collect();
    assert_eq!(pairs.len(), 20);

    // One organization per pair, all pairs at once.
    let results = join_all(pairs.iter().map(|&(from, to)| {
        let server = &server;
        async move {
            let org = org_with_suggestions(server, 0).await;
            let conn = id_of(&connect(server, &org.id, "acme").await);
            if from != "active" {
                let r = set_status(server, &conn, from).await;
                assert_eq!(r.status, 200, "active -> {from}: {}", r.text);
            }
            let r = set_status(server, &conn, to).await;
            (from, to, conn, r)
        }
    }))
    .await;

    let su = server.db.superuser().await;
    for (from, to, conn, r) in results {
        let conn_id = uuid(&conn);
        let status: String = query_value(
            &su,
            "SELECT status FROM private.task_management_connections WHERE id = $1",
            &[&conn_id],
        )
        .await;
        let allowed = transition_allowed(from, to);
        if allowed {
            assert_eq!(r.status, 200, "{from} -> {to} must be allowed: {}", r.text);
            assert_eq!(r.body["status"], json!(to));
            assert_eq!(status, to);
        } else {
            assert_error(&r, 409, "invalid_transition");
            let d = details(&r);
            assert!(
                d.contains(&format!("from {from} to {to}")),
                "{from} -> {to}: {d}"
            );
            assert_eq!(status, from, "a refused transition leaves the status");
        }
        let expected_events =
            i64::from(needs_attention(from)) + i64::from(allowed && needs_attention(to));
        let events = status_events(&su, &conn).await;
        assert_eq!(events, expected_events, "{from} -> {to}: events");
    }
}

/// Entering requires_reauth, error or disabled emits one
/// connection_status_changed event carrying both statuses; returning to
/// active, disconnecting, repeating a status and refused moves emit none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_that_need_attention_emit_one_event_each() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 0).await;
    let conn = id_of(&connect(&server, &org.id, "acme").await);

    let steps: [(&str, Option<&str>, u16); 8] = [
        ("requires_reauth", Some("refresh token revoked"), 200),
        ("active", None, 200),
        ("error", Some("HTTP 500 from Jira"), 200),
        ("error", Some("HTTP 502 from Jira"), 200),
        ("disabled", None, 409),
        ("active", None, 200),
        ("disabled", None, 200),
        ("disconnected", None, 200),
    ];
    for (status, message, expected) in steps {
        let r = server
            .service_rpc(
                "set_connection_status",
                json!({"connection_id": conn, "status": status, "error_message": message}),
            )
            .await;
        assert_eq!(r.status, expected, "-> {status}: {}", r.text);
        if expected == 200 {
            assert_eq!(r.body["error_message"], json!(message));
        }
    }

    let su = server.db.superuser().await;
    let payloads: Vec<Value> = query_column(
        &su,
        "SELECT payload FROM private.outbox \
         WHERE aggregate_type = 'task_management_connection' AND aggregate_id = $1 \
         ORDER BY id",
        &[&conn],
    )
    .await;
    let moves: Vec<(String, String, Value)> = payloads
        .iter()
        .map(|p| {
            (
                p["previous_status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["status"].as_str().unwrap_or_default().to_string(),
                p["error_message"].clone(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            (
                "active".into(),
                "requires_reauth".into(),
                json!("refresh token revoked")
            ),
            ("active".into(), "error".into(), json!("HTTP 500 from Jira")),
            ("active".into(), "disabled".into(), Value::Null),
        ]
    );
    for p in &payloads {
        assert_eq!(p["connection_id"], json!(conn));
        assert_eq!(p["organization_id"], json!(org.id));
        assert_eq!(p["provider"], json!("jira_cloud"));
    }
    let all_status_events = outbox_count(&su, STATUS_EVENT).await;
    assert_eq!(
        all_status_events, 3,
        "{STATUS_EVENT} emitted once per entry"
    );
}

/// Connecting the same instance again re-authorizes the same row: display
/// name, URL and metadata are updated, error_message is cleared and the
/// status is active again; connected_by never changes. After a disconnect,
/// connecting creates a new row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_the_same_instance_again_reauthorizes_and_restores_active() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 2).await;
    let first = connect(&server, &org.id, "acme").await;
    let conn = id_of(&first);
    assert_eq!(first["status"], json!("active"));
    assert_eq!(
        first["connected_by"],
        json!("service-test"),
        "defaults to the JWT sub"
    );

    let r = server
        .service_rpc(
            "set_connection_status",
            json!({"connection_id": conn, "status": "requires_reauth", "error_message": "token expired"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = server
        .service_rpc(
            "create_ticket",
            ticket_body(&conn, "ACME-1", &[&org.suggestions[0]]),
        )
        .await;
    assert_error(&r, 409, "connection_not_active");

    let mut body = connect_body(&org.id, "acme");
    body["display_name"] = json!("Acme Jira (renamed)");
    body["instance_url"] = json!("https://acme-new.atlassian.net");
    body["metadata"] = json!({"cloudId": CLOUD_ID, "scopes": ["read:jira-work"]});
    body["connected_by"] = json!("someone-else");
    let again = service_ok(&server, "connect_task_management", body).await;
    assert_eq!(id_of(&again), conn, "a re-auth keeps the row");
    assert_eq!(again["status"], json!("active"));
    assert_eq!(again["error_message"], Value::Null);
    assert_eq!(again["display_name"], json!("Acme Jira (renamed)"));
    assert_eq!(
        again["instance_url"],
        json!("https://acme-new.atlassian.net")
    );
    assert_eq!(
        again["metadata"],
        json!({"cloudId": CLOUD_ID, "scopes": ["read:jira-work"]})
    );
    assert_eq!(
        again["connected_by"],
        json!("service-test"),
        "connected_by is write-once"
    );
    assert_eq!(again["created_at"], first["created_at"]);
    assert_ne!(
        again["updated_at"], first["updated_at"],
        "updated_at is kept by its trigger"
    );

    let ticket = service_ok(
        &server,
        "create_ticket",
        ticket_body(&conn, "ACME-1", &[&org.suggestions[0]]),
    )
    .await;
    assert_eq!(ticket["connection_id"], json!(conn));

    // disconnected is terminal: the next connect is a new connection.
    let r = server
        .service_rpc("disconnect_task_management", json!({"connection_id": conn}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("disconnected"));
    let fresh = connect(&server, &org.id, "acme").await;
    assert_ne!(id_of(&fresh), conn);
    assert_eq!(fresh["status"], json!("active"));
    let r = set_status(&server, &conn, "active").await;
    assert_error(&r, 409, "invalid_transition");

    let active = server
        .service_rpc_get(
            "active_task_management_connection",
            &[("organization_id", &org.id), ("provider", "jira_cloud")],
        )
        .await;
    assert_eq!(active.status, 200, "{}", active.text);
    assert_eq!(id_of(&active.body), id_of(&fresh));
}

/// At most one active connection per organization and provider: a second
/// instance, or reactivating another one, is 409 active_connection_exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_active_connection_per_organization_and_provider_is_a_409() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 0).await;
    let first = id_of(&connect(&server, &org.id, "acme").await);

    let r = server
        .service_rpc("connect_task_management", connect_body(&org.id, "acme-eu"))
        .await;
    assert_error(&r, 409, "active_connection_exists");
    assert!(details(&r).contains(&first), "{}", r.text);

    // Disabling the first frees the slot; reactivating it then collides.
    assert_eq!(set_status(&server, &first, "disabled").await.status, 200);
    let second = id_of(&connect(&server, &org.id, "acme-eu").await);
    assert_ne!(second, first);
    let r = set_status(&server, &first, "active").await;
    assert_error(&r, 409, "active_connection_exists");

    let su = server.db.superuser().await;
    let active = count_for(
        &su,
        "SELECT count(*) FROM private.task_management_connections \
         WHERE organization_id = $1 AND status = 'active'",
        &uuid(&org.id),
    )
    .await;
    assert_eq!(active, 1);

    // Other organizations are unaffected.
    let other = org_with_suggestions(&server, 0).await;
    connect(&server, &other.id, "acme").await;
}

// Tickets -------------------------------------------------------------------

/// Ten concurrent create_ticket calls for one suggestion: one ticket, nine 409
/// suggestion_already_ticketed, one link, one ticket.created event and no
/// stray ticket rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_tickets_for_one_suggestion_make_exactly_one() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 1).await;
    let conn = id_of(&connect(&server, &org.id, "acme").await);
    let token = support::service_token();
    let suggestion = org.suggestions[0].clone();

    let responses = join_all((0..10).map(|i| {
        let server = &server;
        let token = token.clone();
        let body = ticket_body(&conn, &format!("ACME-{i}"), &[&suggestion]);
        async move { server.rpc("create_ticket", Some(&token), body).await }
    }))
    .await;

    let (created, _) = split_refusals(&responses, 409, "suggestion_already_ticketed");
    assert_eq!(created.len(), 1, "{responses:#?}");
    let ticket_id = id_of(&created[0].body);

    let su = server.db.superuser().await;
    assert_eq!(ticket_rows(&su).await, (1, 1));
    assert_eq!(outbox_count(&su, "ticket.created").await, 1);
    let linked: Uuid =
        query_value(&su, "SELECT ticket_id FROM private.ticket_suggestions", &[]).await;
    assert_eq!(linked, uuid(&ticket_id));
}

/// create_ticket links every suggestion or none: one already-ticketed
/// suggestion makes it 409 suggestion_already_ticketed with no ticket, no
/// link, no event and no last_used_at change; a success sets last_used_at and
/// emits ticket.created with the ticket and its suggestions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ticket_links_every_suggestion_or_none() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 3).await;
    let [a, b, c] = [
        org.suggestions[0].as_str(),
        org.suggestions[1].as_str(),
        org.suggestions[2].as_str(),
    ];
    let conn = connect(&server, &org.id, "acme").await;
    let conn_id = id_of(&conn);
    assert_eq!(conn["last_used_at"], Value::Null);

    let mut body = ticket_body(&conn_id, "ACME-1", &[a, b, a]);
    body["opportunity_id"] = json!(org.opportunity);
    let first = service_ok(&server, "create_ticket", body).await;
    assert_eq!(first["ticket_provider"], json!("jira_cloud"));
    assert_eq!(first["organization_id"], json!(org.id));
    assert_eq!(first["ticket_status"], Value::Null);
    assert_eq!(first["created_by"], json!("service-test"));

    let su = server.db.superuser().await;
    let conn_uuid = uuid(&conn_id);
    let after_first = last_used_at(&su, &conn_uuid).await;
    assert!(after_first.is_some(), "create_ticket sets last_used_at");

    let event: Value = query_value(
        &su,
        "SELECT payload FROM private.outbox WHERE event_type = 'ticket.created' AND aggregate_id = $1",
        &[&id_of(&first)],
    )
    .await;
    assert_eq!(event["ticket_key"], json!("ACME-1"));
    assert_eq!(event["connection_id"], json!(conn_id));
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(
        event["suggestion_ids"],
        json!(expected),
        "duplicates are linked once"
    );

    // c is free but b is taken: nothing at all happens.
    let r = server
        .service_rpc("create_ticket", ticket_body(&conn_id, "ACME-2", &[c, b]))
        .await;
    assert_error(&r, 409, "suggestion_already_ticketed");
    assert!(
        details(&r).contains(b) && details(&r).contains(&id_of(&first)),
        "{}",
        r.text
    );
    assert_eq!(ticket_rows(&su).await, (1, 2));
    assert_eq!(outbox_count(&su, "ticket.created").await, 1);
    assert_eq!(
        last_used_at(&su, &conn_uuid).await,
        after_first,
        "a refused call leaves last_used_at"
    );

    // c alone still works, and an unknown suggestion is 404.
    service_ok(
        &server,
        "create_ticket",
        ticket_body(&conn_id, "ACME-3", &[c]),
    )
    .await;
    let ghost = Uuid::new_v4().to_string();
    let r = server
        .service_rpc("create_ticket", ticket_body(&conn_id, "ACME-4", &[&ghost]))
        .await;
    assert_error(&r, 404, "not_found");
    assert_eq!(count(&su, "SELECT count(*) FROM private.tickets").await, 2);
}

/// suggestion_ids is a one-dimensional array (as OpenAPI describes it): a
/// nested array is 400 invalid_suggestion_ids, and nothing is created.
#[tokio::test]
async fn a_nested_suggestion_ids_array_is_400_and_creates_nothing() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 2).await;
    let [a, b] = [org.suggestions[0].as_str(), org.suggestions[1].as_str()];
    let conn_id = id_of(&connect(&server, &org.id, "acme").await);
    let su = server.db.superuser().await;
    for ids in [json!([[a, b]]), json!([[a], [b]])] {
        let mut body = ticket_body(&conn_id, "ACME-1", &NO_SUGGESTIONS);
        body["suggestion_ids"] = ids;
        let r = server.service_rpc("create_ticket", body).await;
        assert_error(&r, 400, "invalid_suggestion_ids");
        assert_eq!(
            ticket_rows(&su).await,
            (0, 0),
            "a refused call created a ticket"
        );
        assert_eq!(outbox_count(&su, "ticket.created").await, 0);
    }
    service_ok(
        &server,
        "create_ticket",
        ticket_body(&conn_id, "ACME-1", &[a, b]),
    )
    .await;
    assert_eq!(ticket_rows(&su).await, (1, 2));
}

/// create_ticket needs an active connection: disabled, requires_reauth, error
/// and disconnected all give 409 connection_not_active and create nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ticket_requires_an_active_connection() {
    let server = TestServer::start().await;
    for status in ["disabled", "requires_reauth", "error", "disconnected"] {
        let org = org_with_suggestions(&server, 1).await;
        let conn = id_of(&connect(&server, &org.id, "acme").await);
        assert_eq!(set_status(&server, &conn, status).await.status, 200);
        let r = server
            .service_rpc(
                "create_ticket",
                ticket_body(&conn, "ACME-1", &[&org.suggestions[0]]),
            )
            .await;
        assert_error(&r, 409, "connection_not_active");
        assert!(details(&r).contains(status), "{}", r.text);
    }
    let su = server.db.superuser().await;
    assert_eq!(ticket_rows(&su).await, (0, 0));
}

/// A user of the organization works within it: created_by defaults to its
/// sub, it may not create tickets as someone else, and it finds tickets by
/// suggestion and by opportunity (GET); the service updates the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_create_and_find_tickets_within_their_organization() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 2).await;
    let conn = id_of(&connect(&server, &org.id, "acme").await);
    let user = support::user_token(&org.id, "ada@acme.test");

    let r = server
        .rpc_get(
            "active_task_management_connection",
            Some(&user),
            &[("organization_id", &org.id), ("provider", "jira_cloud")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(id_of(&r.body), conn);

    let mut as_other = ticket_body(&conn, "ACME-0", &[&org.suggestions[0]]);
    as_other["created_by"] = json!("user:someone@acme.test");
    let r = server.rpc("create_ticket", Some(&user), as_other).await;
    assert_error(&r, 403, "forbidden");

    let r = server
        .rpc(
            "create_ticket",
            Some(&user),
            ticket_body(&conn, "ACME-1", &[&org.suggestions[0]]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["created_by"], json!("user:ada@acme.test"));
    let ticket = id_of(&r.body);

    let r = server
        .rpc_get(
            "ticket_for_suggestion",
            Some(&user),
            &[("suggestion_id", &org.suggestions[0])],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(id_of(&r.body), ticket);
    let r = server
        .rpc_get(
            "ticket_for_suggestion",
            Some(&user),
            &[("suggestion_id", &org.suggestions[1])],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        Value::Null,
        "an unticketed suggestion has no ticket"
    );

    let r = server
        .rpc_get(
            "tickets_for_opportunity",
            Some(&user),
            &[("opportunity_id", &org.opportunity)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let keys: Vec<&str> = r
        .body
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["ticket_key"].as_str())
        .collect();
    assert_eq!(keys, vec!["ACME-1"]);

    let updated = service_ok(
        &server,
        "update_ticket_status",
        json!({"ticket_id": ticket, "ticket_status": "In Progress"}),
    )
    .await;
    assert_eq!(updated["ticket_status"], json!("In Progress"));
    assert_eq!(updated["ticket_key"], json!("ACME-1"));
    let r = server
        .service_rpc(
            "update_ticket_status",
            json!({"ticket_id": Uuid::new_v4(), "ticket_status": "Done"}),
        )
        .await;
    assert_error(&r, 404, "not_found");

    let r = server
        .rpc(
            "disconnect_task_management",
            Some(&user),
            json!({"connection_id": conn}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = server
        .rpc_get(
            "active_task_management_connection",
            Some(&user),
            &[("organization_id", &org.id), ("provider", "jira_cloud")],
        )
        .await;
    assert_error(&r, 404, "not_found");
}

/// A user of another organization gets 403 forbidden from every function it
/// may call, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_another_organization_gets_403() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 2).await;
    let conn = id_of(&connect(&server, &org.id, "acme").await);
    service_ok(
        &server,
        "create_ticket",
        ticket_body(&conn, "ACME-1", &[&org.suggestions[0]]),
    )
    .await;
    let other = org_with_suggestions(&server, 1).await;
    let intruder = support::user_token(&other.id, "eve@other.test");

    let r = server
        .rpc_get(
            "active_task_management_connection",
            Some(&intruder),
            &[("organization_id", &org.id), ("provider", "jira_cloud")],
        )
        .await;
    assert_error(&r, 403, "forbidden");
    let r = server
        .rpc(
            "create_ticket",
            Some(&intruder),
            ticket_body(&conn, "ACME-2", &[&org.suggestions[1]]),
        )
        .await;
    assert_error(&r, 403, "forbidden");
    let r = server
        .rpc(
            "disconnect_task_management",
            Some(&intruder),
            json!({"connection_id": conn}),
        )
        .await;
    assert_error(&r, 403, "forbidden");
    let r = server
        .rpc_get(
            "ticket_for_suggestion",
            Some(&intruder),
            &[("suggestion_id", &org.suggestions[0])],
        )
        .await;
    assert_error(&r, 403, "forbidden");
    let r = server
        .rpc_get(
            "tickets_for_opportunity",
            Some(&intruder),
            &[("opportunity_id", &org.opportunity)],
        )
        .await;
    assert_error(&r, 403, "forbidden");

    // Nor can it link another organization's suggestion to its own ticket.
    let own_conn = id_of(&connect(&server, &other.id, "other").await);
    let own_user = support::user_token(&other.id, "eve@other.test");
    let r = server
        .rpc(
            "create_ticket",
            Some(&own_user),
            ticket_body(
                &own_conn,
                "OTHER-1",
                &[&other.suggestions[0], &org.suggestions[1]],
            ),
        )
        .await;
    assert_error(&r, 403, "forbidden");

    let su = server.db.superuser().await;
    let status: String = query_value(
        &su,
        "SELECT status FROM private.task_management_connections WHERE id = $1",
        &[&uuid(&conn)],
    )
    .await;
    assert_eq!(status, "active");
    assert_eq!(ticket_rows(&su).await, (1, 1));
}

/// A 403 for linking another organization's opportunity or suggestion names
/// what the caller passed but never the other organization's id (nor the
/// ticket's), for a service and for a user alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_for_a_foreign_opportunity_or_suggestion_does_not_name_the_other_organization() {
    let server = TestServer::start().await;
    let own = org_with_suggestions(&server, 1).await;
    let foreign = org_with_suggestions(&server, 1).await;
    let conn = id_of(&connect(&server, &own.id, "acme").await);
    let user = support::user_token(&own.id, "ann@acme.test");

    for token in [support::service_token(), user] {
        let mut with_opportunity = ticket_body(&conn, "ACME-1", &NO_SUGGESTIONS);
        with_opportunity["opportunity_id"] = json!(foreign.opportunity);
        let with_suggestion = ticket_body(&conn, "ACME-2", &[&foreign.suggestions[0]]);
        for (body, named) in [
            (with_opportunity, &foreign.opportunity),
            (with_suggestion, &foreign.suggestions[0]),
        ] {
            let r = server.rpc("create_ticket", Some(&token), body).await;
            assert_error(&r, 403, "forbidden");
            let text = format!("{} {}", details(&r), r.body["hint"]);
            assert!(details(&r).contains(named.as_str()), "{}", r.text);
            assert!(details(&r).contains("another organization"), "{}", r.text);
            assert!(
                !text.contains(&foreign.id),
                "leaks the other org: {}",
                r.text
            );
            assert!(!text.contains(&own.id), "names an organization: {}", r.text);
        }
    }
    let su = server.db.superuser().await;
    assert_eq!(count(&su, "SELECT count(*) FROM private.tickets").await, 0);
}

// Cascade, append-only and write-once, in SQL --------------------------------

/// admin.delete_task_management_connection removes the connection, its
/// tickets and their suggestion links, leaves the suggestions, which can then
/// be ticketed again, and touches no other connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_connection_cascades_to_tickets_and_their_suggestion_links() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let doomed = sql_fixture(&su).await;
    let kept = sql_fixture(&su).await;
    su.execute(
        "SELECT api.create_ticket($1, 'ext-2', 'SQL-2', 'https://sql.atlassian.net/browse/SQL-2', ARRAY[$2::uuid])",
        &[&doomed.connection, &doomed.free],
    )
    .await
    .expect("second ticket");

    let admin = db.as_role("pgrpc_admin").await;
    let report: Value = query_value(
        &admin,
        "SELECT admin.delete_task_management_connection($1)",
        &[&doomed.connection],
    )
    .await;
    assert_eq!(report["tickets_deleted"], json!(2));
    assert_eq!(report["ticket_suggestions_deleted"], json!(2));

    let by_org = |table: &'static str| {
        format!("SELECT count(*) FROM private.{table} WHERE organization_id = $1")
    };
    assert_eq!(
        count_for(&su, &by_org("task_management_connections"), &doomed.org).await,
        0
    );
    assert_eq!(count_for(&su, &by_org("tickets"), &doomed.org).await, 0);
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.ticket_suggestions WHERE opportunity_id = $1",
            &doomed.opportunity
        )
        .await,
        0
    );
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.suggestions WHERE opportunity_id = $1",
            &doomed.opportunity
        )
        .await,
        2,
        "suggestions stay"
    );
    assert_eq!(count_for(&su, &by_org("tickets"), &kept.org).await, 1);
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.ticket_suggestions WHERE ticket_id = $1",
            &kept.ticket
        )
        .await,
        1
    );

    let err = admin
        .query_one(
            "SELECT admin.delete_task_management_connection($1)",
            &[&doomed.connection],
        )
        .await
        .expect_err("a second delete finds nothing");
    assert_eq!(
        db_error(&err),
        ("PT404".to_string(), "not_found".to_string())
    );

    // The freed suggestion can be ticketed again on a new connection.
    let conn: Uuid = su
        .query_one(
            "SELECT id FROM api.connect_task_management($1, 'jira_cloud', 'sql-cloud', \
             'https://sql.atlassian.net', 'SQL Jira', '{\"cloudId\": \"6f1d2c3a-1111-4222-8333-123456789abc\"}')",
            &[&doomed.org],
        )
        .await
        .expect("reconnect")
        .get(0);
    su.execute(
        "SELECT api.create_ticket($1, 'ext-9', 'SQL-9', 'https://sql.atlassian.net/browse/SQL-9', ARRAY[$2::uuid])",
        &[&conn, &doomed.linked],
    )
    .await
    .expect("the suggestion is free again");

    // Deleting an organization cascades down both paths (sites and connections).
    su.execute(
        "DELETE FROM private.organizations WHERE id = $1",
        &[&kept.org],
    )
    .await
    .expect("delete organization");
    assert_eq!(count_for(&su, &by_org("tickets"), &kept.org).await, 0);
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.ticket_suggestions WHERE ticket_id = $1",
            &kept.ticket
        )
        .await,
        0
    );
}

/// UPDATE, DELETE and TRUNCATE of ticket_suggestions are refused (42501) for
/// pgrpc_api, pgrpc_admin, pgrpc_owner and a superuser, and the link survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_suggestions_refuse_update_delete_and_truncate_for_every_role() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let f = sql_fixture(&su).await;

    let statements = [
        "UPDATE private.ticket_suggestions SET created_at = now()".to_string(),
        format!(
            "UPDATE private.ticket_suggestions SET suggestion_id = '{}'",
            f.free
        ),
        "DELETE FROM private.ticket_suggestions".to_string(),
        "TRUNCATE private.ticket_suggestions".to_string(),
        "TRUNCATE private.tickets CASCADE".to_string(),
        "TRUNCATE private.task_management_connections CASCADE".to_string(),
    ];
    assert_refused(
        &db,
        &PRIVILEGED_ROLES_AND_SUPERUSER,
        &statements,
        &["append_only"],
    )
    .await;

    let row = su
        .query_one(
            "SELECT count(*), min(ticket_id::text), min(suggestion_id::text) FROM private.ticket_suggestions",
            &[],
        )
        .await
        .expect("links");
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, Option<String>>(1), Some(f.ticket.to_string()));
    assert_eq!(row.get::<_, Option<String>>(2), Some(f.linked.to_string()));

    // Deleting a ticketed suggestion is refused too: the link only leaves with its ticket.
    let err = su
        .execute(
            "DELETE FROM private.suggestions WHERE id = $1",
            &[&f.linked],
        )
        .await
        .expect_err("a ticketed suggestion cannot be deleted");
    assert_eq!(err.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION), "{err}");
}

/// Every write-once column of connections and tickets refuses a change for
/// pgrpc_api, pgrpc_admin, pgrpc_owner and a superuser, while the mutable
/// columns stay writable for pgrpc_api.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_once_columns_refuse_changes_for_every_role() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let f = sql_fixture(&su).await;

    let connection_changes = [
        ("organization_id", "gen_random_uuid()"),
        ("provider", "'jira_server'"),
        ("external_instance_id", "'other-cloud'"),
        ("connected_by", "'mallory'"),
    ];
    let ticket_changes = [
        ("external_ticket_id", "'ext-999'"),
        ("ticket_key", "'EVIL-1'"),
        ("ticket_provider", "'jira_server'"),
        ("created_by", "'mallory'"),
    ];
    let mut statements = Vec::new();
    for (column, value) in connection_changes {
        statements.push(format!(
            "UPDATE private.task_management_connections SET {column} = {value} WHERE id = '{}'",
            f.connection
        ));
    }
    for (column, value) in ticket_changes {
        statements.push(format!(
            "UPDATE private.tickets SET {column} = {value} WHERE id = '{}'",
            f.ticket
        ));
    }
    assert_refused(
        &db,
        &PRIVILEGED_ROLES_AND_SUPERUSER,
        &statements,
        &["write_once"],
    )
    .await;

    let row = su
        .query_one(
            "SELECT c.organization_id = $3 AND c.provider = 'jira_cloud' \
                    AND c.external_instance_id = 'sql-cloud' AND c.connected_by = 'svc-sql' \
                    AND t.external_ticket_id = 'ext-1' AND t.ticket_key = 'SQL-1' \
                    AND t.ticket_provider = 'jira_cloud' AND t.created_by = 'svc-sql' \
             FROM private.task_management_connections c, private.tickets t \
             WHERE c.id = $1 AND t.id = $2",
            &[&f.connection, &f.ticket, &f.org],
        )
        .await
        .expect("values");
    assert!(row.get::<_, bool>(0), "every write-once value is unchanged");

    // The mutable columns are not frozen: pgrpc_api may change them.
    let api = db.as_role("pgrpc_api").await;
    api.batch_execute(&format!(
        "UPDATE private.tickets SET ticket_status = 'Done' WHERE id = '{}'; \
         UPDATE private.task_management_connections SET display_name = 'Renamed' WHERE id = '{}'",
        f.ticket, f.connection
    ))
    .await
    .expect("mutable columns stay writable");
}

/// A ticket's provider and organization are its connection's, by a foreign
/// key in the database, whoever inserts the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_must_match_its_connections_provider_and_organization() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let f = sql_fixture(&su).await;
    let other = sql_fixture(&su).await;
    let superuser = db.superuser().await;

    let insert =
        "INSERT INTO private.tickets (connection_id, organization_id, external_ticket_id, \
                  ticket_key, ticket_url, ticket_provider, created_by) \
                  VALUES ($1, $2, $3, 'X-1', 'https://x.atlassian.net/browse/X-1', $4, 'owner')";
    let err = superuser
        .execute(
            insert,
            &[&f.connection, &f.org, &"wrong-provider", &"asana"],
        )
        .await
        .expect_err("provider must be the connection's");
    assert_eq!(err.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION), "{err}");
    let err = superuser
        .execute(
            insert,
            &[&f.connection, &other.org, &"wrong-org", &"jira_cloud"],
        )
        .await
        .expect_err("organization must be the connection's");
    assert_eq!(err.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION), "{err}");
    superuser
        .execute(insert, &[&f.connection, &f.org, &"right", &"jira_cloud"])
        .await
        .expect("a consistent ticket is accepted");

    // A link's suggestion must belong to the ticket's organization.
    let err = superuser
        .execute(
            "INSERT INTO private.ticket_suggestions (ticket_id, suggestion_id) VALUES ($1, $2)",
            &[&f.ticket, &other.free],
        )
        .await
        .expect_err("a suggestion of another organization");
    assert_eq!(
        db_error(&err),
        ("PT403".to_string(), "forbidden".to_string())
    );
}

// Events and updated_at --------------------------------------------------------

/// The ticket.created events of one ticket, as payloads.
async fn ticket_created_events(c: &Client, ticket: &Uuid) -> Vec<Value> {
    aggregate_payloads(c, "ticket.created", "ticket", &ticket.to_string()).await
}

/// A ticket inserted directly in SQL, by pgrpc_owner or a superuser, emits
/// exactly one ticket.created at commit, listing the links inserted after it
/// in the same transaction; a rolled-back ticket, or one deleted again before
/// commit, emits none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_inserted_directly_emits_one_ticket_created_with_its_links() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let f = sql_fixture(&su).await;
    let insert_ticket = "INSERT INTO private.tickets (id, connection_id, organization_id, \
             external_ticket_id, ticket_key, ticket_url, ticket_provider, created_by) \
         VALUES ($1, $2, $3, $4, $4, 'https://sql.atlassian.net/browse/X', 'jira_cloud', 'operator')";
    let insert_link =
        "INSERT INTO private.ticket_suggestions (ticket_id, suggestion_id) VALUES ($1, $2)";

    {
        let (role, key) = ("postgres", "SU-1");
        let suggestion: Uuid = query_value(
            &su,
            "SELECT id FROM api.create_suggestion($1, '{}')",
            &[&f.opportunity],
        )
        .await;
        let c = db.as_role(role).await;
        let ticket = Uuid::new_v4();
        c.batch_execute("BEGIN").await.expect("begin");
        c.execute(insert_ticket, &[&ticket, &f.connection, &f.org, &key])
            .await
            .unwrap_or_else(|e| panic!("{role}: insert ticket: {e}"));
        c.execute(insert_link, &[&ticket, &suggestion])
            .await
            .unwrap_or_else(|e| panic!("{role}: insert link: {e}"));
        c.batch_execute("COMMIT").await.expect("commit");

        let events = ticket_created_events(&su, &ticket).await;
        assert_eq!(events.len(), 1, "{role}: one event per ticket: {events:?}");
        assert_eq!(events[0]["ticket_id"], json!(ticket));
        assert_eq!(events[0]["ticket_key"], json!(key));
        assert_eq!(events[0]["created_by"], json!("operator"));
        assert_eq!(events[0]["organization_id"], json!(f.org));
        assert_eq!(
            events[0]["suggestion_ids"],
            json!([suggestion]),
            "{role}: the links inserted after the ticket are in the payload"
        );

        let rolled_back = Uuid::new_v4();
        c.batch_execute("BEGIN").await.expect("begin");
        c.execute(
            insert_ticket,
            &[&rolled_back, &f.connection, &f.org, &format!("{key}-rb")],
        )
        .await
        .expect("insert");
        c.batch_execute("ROLLBACK").await.expect("rollback");
        assert!(ticket_created_events(&su, &rolled_back).await.is_empty());

        let deleted = Uuid::new_v4();
        c.batch_execute("BEGIN").await.expect("begin");
        c.execute(
            insert_ticket,
            &[&deleted, &f.connection, &f.org, &format!("{key}-del")],
        )
        .await
        .expect("insert");
        c.execute("DELETE FROM private.tickets WHERE id = $1", &[&deleted])
            .await
            .expect("delete");
        c.batch_execute("COMMIT").await.expect("commit");
        assert!(
            ticket_created_events(&su, &deleted).await.is_empty(),
            "{role}: a ticket gone before commit announces nothing"
        );
    }
    assert_eq!(
        outbox_count(&su, "ticket.created").await,
        count(&su, "SELECT count(*) FROM private.tickets").await,
        "one ticket.created per committed ticket"
    );
}

/// create_ticket's event lists its suggestions even when the caller made
/// every constraint IMMEDIATE: the event is written at commit, once, as the
/// request role (which may not write the outbox itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ticket_lists_its_suggestions_even_when_constraints_are_immediate() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let f = sql_fixture(&su).await;
    let second: Uuid = query_value(
        &su,
        "SELECT id FROM api.create_suggestion($1, '{}')",
        &[&f.opportunity],
    )
    .await;

    let service = db.as_service("svc").await;
    service
        .batch_execute("BEGIN; SET CONSTRAINTS ALL IMMEDIATE")
        .await
        .expect("begin");
    let ticket: Uuid = service
        .query_one(
            "SELECT id FROM api.create_ticket($1, 'ext-imm', 'SQL-IMM', \
             'https://sql.atlassian.net/browse/SQL-IMM', ARRAY[$2, $3]::uuid[])",
            &[&f.connection, &second, &f.free],
        )
        .await
        .expect("create_ticket")
        .get(0);
    service.batch_execute("COMMIT").await.expect("commit");

    let events = ticket_created_events(&su, &ticket).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let mut expected = vec![second, f.free];
    expected.sort();
    assert_eq!(events[0]["suggestion_ids"], json!(expected));
    assert_eq!(events[0]["created_by"], json!("svc"));
}

/// The updated_at of one row of a table of this module.
async fn updated_at(c: &Client, table: &str, id: &Uuid) -> chrono::DateTime<chrono::Utc> {
    c.query_one(
        &format!("SELECT updated_at FROM private.{table} WHERE id = $1"),
        &[id],
    )
    .await
    .unwrap_or_else(|e| panic!("{table}.updated_at: {e}"))
    .get(0)
}

/// Every path that updates a connection or a ticket works and advances its
/// updated_at: re-auth, status changes, last_used_at, disconnect, ticket
/// status, and a direct UPDATE that tries to set updated_at itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_of_a_connection_or_ticket_advances_updated_at() {
    let server = TestServer::start().await;
    let org = org_with_suggestions(&server, 1).await;
    let conn_id = id_of(&connect(&server, &org.id, "acme").await);
    let conn = uuid(&conn_id);
    let su = server.db.superuser().await;
    let mut last = updated_at(&su, "task_management_connections", &conn).await;

    let steps = [
        (
            "set_connection_status",
            "error",
            json!({"connection_id": conn_id, "status": "error", "error_message": "boom"}),
        ),
        (
            "connect_task_management",
            "active",
            connect_body(&org.id, "acme"),
        ),
        (
            "create_ticket",
            "active",
            ticket_body(&conn_id, "ACME-1", &[&org.suggestions[0]]),
        ),
        (
            "disconnect_task_management",
            "disconnected",
            json!({"connection_id": conn_id}),
        ),
    ];
    let mut ticket = None;
    for (function, status, body) in steps {
        let out = service_ok(&server, function, body).await;
        if function == "create_ticket" {
            ticket = Some(uuid(&id_of(&out)));
        }
        let row = su
            .query_one(
                "SELECT status, updated_at FROM private.task_management_connections WHERE id = $1",
                &[&conn],
            )
            .await
            .expect("connection");
        assert_eq!(row.get::<_, String>(0), status, "{function}");
        let now: chrono::DateTime<chrono::Utc> = row.get(1);
        assert!(now > last, "{function} advances updated_at");
        last = now;
    }

    let ticket = ticket.expect("a ticket");
    let before = updated_at(&su, "tickets", &ticket).await;
    let out = service_ok(
        &server,
        "update_ticket_status",
        json!({"ticket_id": ticket, "ticket_status": "In Progress"}),
    )
    .await;
    assert_eq!(out["ticket_status"], json!("In Progress"));
    let after = updated_at(&su, "tickets", &ticket).await;
    assert!(after > before, "update_ticket_status advances updated_at");

    // updated_at belongs to the trigger: a direct UPDATE cannot backdate it.
    for table in ["tickets", "task_management_connections"] {
        let id = if table == "tickets" { ticket } else { conn };
        let before = updated_at(&su, table, &id).await;
        su.execute(
            &format!(
                "UPDATE private.{table} SET updated_at = '2000-01-01T00:00:00Z' WHERE id = $1"
            ),
            &[&id],
        )
        .await
        .expect("update");
        assert!(
            updated_at(&su, table, &id).await > before,
            "{table}: updated_at is set by the trigger"
        );
    }
}

// Privileges and catalog ----------------------------------------------------

/// pgrpc_api holds only the privileges its functions need: SELECT and INSERT
/// on the links, and UPDATE only on the mutable columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgrpc_api_holds_only_the_privileges_its_functions_need() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    assert_eq!(
        table_privileges(&su, "pgrpc_api", "private.ticket_suggestions").await,
        ["SELECT", "INSERT"],
        "pgrpc_api on ticket_suggestions"
    );

    assert_eq!(
        updatable_columns(&su, "pgrpc_api", "private.task_management_connections").await,
        vec![
            "display_name",
            "error_message",
            "instance_url",
            "last_used_at",
            "metadata",
            "status"
        ]
    );
    assert_eq!(
        updatable_columns(&su, "pgrpc_api", "private.tickets").await,
        vec!["ticket_status"]
    );
    assert!(!holds_privilege(&su, "pgrpc_api", "private.tickets", "DELETE").await);
    assert!(holds_privilege(&su, "pgrpc_admin", "private.tickets", "SELECT").await);
    assert!(
        !holds_privilege(
            &su,
            "pgrpc_admin",
            "private.task_management_connections",
            "DELETE"
        )
        .await
    );
}

/// Every function of the module documents itself (summary, blank line,
/// details), read-only ones are STABLE, and each is callable by exactly the
/// roles SPEC §4.3 lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_management_function_is_documented_and_granted_as_specified() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let functions: [(&str, bool, &[&str]); 9] = [
        ("api.connect_task_management", false, &["pgrpc_service"]),
        (
            "api.active_task_management_connection",
            true,
            &["pgrpc_service", "pgrpc_user"],
        ),
        ("api.set_connection_status", false, &["pgrpc_service"]),
        (
            "api.disconnect_task_management",
            false,
            &["pgrpc_service", "pgrpc_user"],
        ),
        ("api.create_ticket", false, &["pgrpc_service", "pgrpc_user"]),
        (
            "api.ticket_for_suggestion",
            true,
            &["pgrpc_service", "pgrpc_user"],
        ),
        (
            "api.tickets_for_opportunity",
            true,
            &["pgrpc_service", "pgrpc_user"],
        ),
        ("api.update_ticket_status", false, &["pgrpc_service"]),
        (
            "admin.delete_task_management_connection",
            false,
            &["pgrpc_admin"],
        ),
    ];
    for (name, read_only, callers) in functions {
        assert_documented(&su, name, read_only).await;
        let row = su
            .query_one(
                "SELECT p.prosecdef, array_to_string(p.proconfig, ','), \
                        ARRAY(SELECT r FROM unnest(ARRAY['pgrpc_anon', 'pgrpc_user', 'pgrpc_service', 'pgrpc_admin']) r \
                              WHERE has_function_privilege(r, p.oid, 'EXECUTE') ORDER BY r) \
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname || '.' || p.proname = $1",
                &[&name],
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(row.get::<_, bool>(0), "{name} is SECURITY DEFINER");
        let config: Option<String> = row.get(1);
        assert_eq!(
            config.as_deref(),
            Some("search_path=pg_catalog, pg_temp"),
            "{name}"
        );
        let mut expected: Vec<&str> = callers.to_vec();
        expected.sort_unstable();
        assert_eq!(row.get::<_, Vec<String>>(2), expected, "{name} callers");
    }
}
