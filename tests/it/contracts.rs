//! Contracts (SPEC §4.7): creating teams, parents and players, and signing
//! through the emailed link, with the contract.signed event emitted by the
//! database in the signing transaction.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::support::api::service_ok;
use crate::support::db::{
    assert_refused, assert_refused_as, count, message, outbox_count, query_value, sqlstate,
    PRIVILEGED_ROLES_AND_SUPERUSER,
};
use crate::support::{join_tasks, split_refusals, TestDb, TestServer};

/// A team, a parent and a player of `tenant_id`, created over HTTP by a
/// service; returns the player row.
async fn player_with_parent(server: &TestServer, tenant_id: i64, with_parent: bool) -> Value {
    let team = service_ok(
        server,
        "create_team",
        json!({"tenant_id": tenant_id, "name": "Under 12"}),
    )
    .await;
    let mut body = json!({"tenant_id": tenant_id, "team_id": team["id"], "name": "Sam Player"});
    if with_parent {
        let parent = service_ok(
            server,
            "create_parent",
            json!({"tenant_id": tenant_id, "name": "Pat Parent", "email": "pat@example.com"}),
        )
        .await;
        body["parent_id"] = parent["id"].clone();
    }
    service_ok(server, "create_player", body).await
}

/// Players created directly in SQL (as a service would through the API).
async fn sql_players(
    client: &Client,
    tenant_id: i64,
    count: usize,
    with_parent: bool,
) -> Vec<String> {
    let team: uuid::Uuid = query_value(
        client,
        "SELECT id FROM api.create_team($1, 'Team')",
        &[&tenant_id],
    )
    .await;
    let parent: Option<uuid::Uuid> = if with_parent {
        Some(
            client
                .query_one(
                    "SELECT id FROM api.create_parent($1, 'Parent', 'p@example.com')",
                    &[&tenant_id],
                )
                .await
                .expect("parent")
                .get(0),
        )
    } else {
        None
    };
    let mut tokens = Vec::new();
    for i in 0..count {
        let token: String = query_value(
            client,
            "SELECT contract_token FROM api.create_player($1, $2, $3, $4)",
            &[&tenant_id, &team, &format!("Player {i}"), &parent],
        )
        .await;
        tokens.push(token);
    }
    tokens
}

/// Signs the contract of `token` as `client`; returns the player's id.
async fn sign(client: &Client, token: &str) -> uuid::Uuid {
    query_value(
        client,
        "SELECT player_id FROM api.sign_contract($1, 'sig')",
        &[&token],
    )
    .await
}

const SIGNED_PLAYERS: &str =
    "SELECT count(*) FROM private.players WHERE contract_status = 'signed'";

/// create_player returns the row with a database-generated, URL-safe token of at least 32 random bytes.
#[tokio::test]
async fn a_created_player_carries_a_strong_url_safe_contract_token() {
    let server = TestServer::start().await;
    let a = player_with_parent(&server, 7, true).await;
    let b = player_with_parent(&server, 7, true).await;
    for player in [&a, &b] {
        let token = player["contract_token"].as_str().expect("contract_token");
        assert!(token.len() >= 43, "token too short: {token}");
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "token is not base64url: {token}"
        );
        assert_eq!(player["contract_status"], "pending");
        assert_eq!(player["tenant_id"], 7);
        assert!(player["signed_at"].is_null());
    }
    assert_ne!(a["contract_token"], b["contract_token"]);

    let anon = server
        .rpc(
            "create_team",
            None,
            json!({"tenant_id": 7, "name": "Sneaky"}),
        )
        .await;
    assert_eq!(anon.status, 401, "{}", anon.text);
}

/// Signing through the link (no JWT) answers {player_id, signed_at} and emits one event with the row's data.
#[tokio::test]
async fn signing_emits_one_contract_signed_event_with_the_players_data() {
    let server = TestServer::start().await;
    let player = player_with_parent(&server, 42, true).await;
    let r = server
        .rpc(
            "sign_contract",
            None,
            json!({"contract_token": player["contract_token"], "signature_ref": "sig-123"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["player_id"], player["id"]);
    assert!(r.body["signed_at"].is_string());

    let su = server.db.superuser().await;
    let rows = su
        .query(
            "SELECT aggregate_type, aggregate_id, payload FROM private.outbox WHERE event_type = 'contract.signed'",
            &[],
        )
        .await
        .expect("events");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "player");
    assert_eq!(
        rows[0].get::<_, String>(1),
        player["id"].as_str().expect("id")
    );
    assert_eq!(
        rows[0].get::<_, Value>(2),
        json!({
            "tenant_id": 42,
            "player_id": player["id"],
            "player_name": "Sam Player",
            "team_id": player["team_id"],
            "parent_id": player["parent_id"],
        })
    );
    let row = su
        .query_one(
            "SELECT contract_status, signature_ref FROM private.players",
            &[],
        )
        .await
        .expect("player");
    assert_eq!(row.get::<_, String>(0), "signed");
    assert_eq!(row.get::<_, String>(1), "sig-123");
}

/// Ten concurrent signings of one token give one 200, nine 409 contract_already_signed, and one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_signings_give_one_success_nine_conflicts_and_one_event() {
    let server = Arc::new(TestServer::start().await);
    let player = player_with_parent(&server, 1, true).await;
    let token = player["contract_token"]
        .as_str()
        .expect("token")
        .to_string();
    let calls = (0..10).map(|i| {
        let server = server.clone();
        let token = token.clone();
        tokio::spawn(async move {
            server
                .rpc(
                    "sign_contract",
                    None,
                    json!({"contract_token": token, "signature_ref": format!("sig-{i}")}),
                )
                .await
        })
    });
    let responses = join_tasks(calls).await;
    let (signed, conflicts) = split_refusals(&responses, 409, "contract_already_signed");
    assert_eq!((signed.len(), conflicts.len()), (1, 9), "{responses:#?}");
    let su = server.db.superuser().await;
    assert_eq!(outbox_count(&su, "contract.signed").await, 1);
    assert_eq!(count(&su, SIGNED_PLAYERS).await, 1);
}

/// A player without a parent cannot sign: 422, the player stays pending, and no event is written.
#[tokio::test]
async fn signing_without_a_parent_is_422_and_changes_nothing() {
    let server = TestServer::start().await;
    let player = player_with_parent(&server, 3, false).await;
    assert!(player["parent_id"].is_null());
    let r = server
        .rpc(
            "sign_contract",
            None,
            json!({"contract_token": player["contract_token"], "signature_ref": "sig"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.error_key(), "contract_missing_parent");

    let su = server.db.superuser().await;
    let row = su
        .query_one(
            "SELECT contract_status, signed_at IS NULL, signature_ref IS NULL FROM private.players",
            &[],
        )
        .await
        .expect("player");
    assert_eq!(row.get::<_, String>(0), "pending");
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2));
    assert_eq!(count(&su, "SELECT count(*) FROM private.outbox").await, 0);
}

/// An unknown token is 404 contract_not_found; a blank signature is 400.
#[tokio::test]
async fn an_unknown_token_is_404_and_a_blank_signature_400() {
    let server = TestServer::start().await;
    let player = player_with_parent(&server, 3, true).await;
    let r = server
        .rpc(
            "sign_contract",
            None,
            json!({"contract_token": "no-such-token", "signature_ref": "s"}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.error_key(), "contract_not_found");
    let r = server
        .rpc(
            "sign_contract",
            None,
            json!({"contract_token": player["contract_token"], "signature_ref": "  "}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_key(), "invalid_signature_ref");
}

/// A transaction that signs and then rolls back leaves neither a signed player nor an event.
#[tokio::test]
async fn a_signing_rolled_back_leaves_no_event() {
    let db = TestDb::new().await;
    let svc = db.as_role("pgrpc_service").await;
    let tokens = sql_players(&svc, 5, 1, true).await;
    let mut anon = db.as_role("pgrpc_anon").await;
    let tx = anon.transaction().await.expect("begin");
    tx.query_one("SELECT * FROM api.sign_contract($1, 'sig')", &[&tokens[0]])
        .await
        .expect("sign");
    tx.rollback().await.expect("rollback");

    let su = db.superuser().await;
    assert_eq!(count(&su, SIGNED_PLAYERS).await, 0);
    assert_eq!(count(&su, "SELECT count(*) FROM private.outbox").await, 0);
    // And the same contract can still be signed, once.
    sign(&anon, &tokens[0]).await;
    assert_eq!(outbox_count(&su, "contract.signed").await, 1);
}

/// An operator's UPDATE to signed in psql emits the event too: no code path can forget it.
#[tokio::test]
async fn an_operators_update_to_signed_emits_the_event_too() {
    let db = TestDb::new().await;
    let svc = db.as_role("pgrpc_service").await;
    sql_players(&svc, 9, 2, true).await;
    let superuser = db.superuser().await;
    let changed = superuser
        .execute(
            "UPDATE private.players SET contract_status = 'signed', signed_at = now(), signature_ref = 'paper'",
            &[],
        )
        .await
        .expect("sign by hand");
    assert_eq!(changed, 2);
    let su = db.superuser().await;
    assert_eq!(outbox_count(&su, "contract.signed").await, 2);
    assert_eq!(
        count(
            &su,
            "SELECT count(*) FROM private.players p JOIN private.outbox o
               ON o.aggregate_id = p.id::text AND o.event_type = 'contract.signed'
             WHERE (o.payload->>'tenant_id')::bigint = p.tenant_id"
        )
        .await,
        2
    );
}

/// signed_at, signature_ref and the token are write-once, and a signed contract never returns to pending, for every role.
#[tokio::test]
async fn signature_columns_are_write_once_for_every_role() {
    let db = TestDb::new().await;
    let svc = db.as_role("pgrpc_service").await;
    let tokens = sql_players(&svc, 11, 1, true).await;
    sign(&svc, &tokens[0]).await;
    let changes = [
        "UPDATE private.players SET signed_at = now() - interval '1 day'",
        "UPDATE private.players SET signature_ref = 'forged'",
        "UPDATE private.players SET contract_token = 'x'",
        "UPDATE private.players SET tenant_id = 999",
    ];
    for role in PRIVILEGED_ROLES_AND_SUPERUSER {
        let client = db.as_role(role).await;
        assert_refused_as(&client, role, &changes, &[]).await;
        let err = client
            .execute(
                "UPDATE private.players SET contract_status = 'pending', signed_at = NULL, signature_ref = NULL",
                &[],
            )
            .await
            .expect_err("unsign");
        let code = err.code().cloned();
        assert!(
            code == Some(SqlState::INSUFFICIENT_PRIVILEGE)
                || code == Some(SqlState::CHECK_VIOLATION),
            "{role} unsign: {err}"
        );
    }
    let su = db.superuser().await;
    let row = su
        .query_one(
            "SELECT contract_status, signature_ref FROM private.players",
            &[],
        )
        .await
        .expect("player");
    assert_eq!(row.get::<_, String>(0), "signed");
    assert_eq!(row.get::<_, String>(1), "sig");
    assert_eq!(outbox_count(&su, "contract.signed").await, 1);
}

/// A player cannot point at another tenant's team or parent (409).
#[tokio::test]
async fn a_player_cannot_use_another_tenants_team_or_parent() {
    let server = TestServer::start().await;
    let team = service_ok(
        &server,
        "create_team",
        json!({"tenant_id": 1, "name": "T1"}),
    )
    .await;
    let parent = service_ok(
        &server,
        "create_parent",
        json!({"tenant_id": 1, "name": "P1", "email": "p1@example.com"}),
    )
    .await;
    let other_team = service_ok(
        &server,
        "create_team",
        json!({"tenant_id": 2, "name": "T2"}),
    )
    .await;
    let cross_team = server
        .service_rpc(
            "create_player",
            json!({"tenant_id": 2, "team_id": team["id"], "name": "X"}),
        )
        .await;
    assert_eq!(cross_team.status, 409, "{}", cross_team.text);
    let cross_parent = server
        .service_rpc(
            "create_player",
            json!({"tenant_id": 2, "team_id": other_team["id"], "name": "X", "parent_id": parent["id"]}),
        )
        .await;
    assert_eq!(cross_parent.status, 409, "{}", cross_parent.text);
}

/// Under concurrent signing with injected failures (errors before and at commit, rollbacks, dropped connections), signed players equal contract.signed events, one to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_players_equal_contract_signed_events_under_concurrent_load_with_failures() {
    const PLAYERS: usize = 40;
    let server = Arc::new(TestServer::start().await);
    let su = server.db.superuser().await;
    let svc = server.db.as_role("pgrpc_service").await;
    let mut tokens = sql_players(&svc, 77, PLAYERS - 5, true).await;
    tokens.extend(sql_players(&svc, 78, 5, false).await);

    // Failure injection, test-only: an error right after the event is
    // written, and another at commit (a deferred constraint trigger).
    su.batch_execute(
        "CREATE FUNCTION private.test_fail_sometimes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF random() < 0.25 THEN
                 RAISE EXCEPTION 'injected failure in %', TG_NAME;
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER zz_test_fail AFTER INSERT ON private.outbox
             FOR EACH ROW EXECUTE FUNCTION private.test_fail_sometimes();
         CREATE CONSTRAINT TRIGGER zz_test_fail_at_commit AFTER UPDATE ON private.players
             DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION private.test_fail_sometimes();",
    )
    .await
    .expect("install failure injection");

    // Every token is attacked by several callers at once: HTTP signings,
    // SQL transactions that sign and roll back, and connections dropped
    // mid-transaction.
    // At most 16 callers at once (the four attacks on one token run
    // together), so that the proxy's pool and the cluster's connection limit
    // are not what the test measures.
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        for attempt in 0..4 {
            let server = server.clone();
            let token = token.clone();
            let slots = slots.clone();
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore");
                match (i + attempt) % 4 {
                    0 | 1 => {
                        let r = server
                            .rpc(
                                "sign_contract",
                                None,
                                json!({"contract_token": token, "signature_ref": "sig"}),
                            )
                            .await;
                        // 400/500: an injected failure (before or at commit);
                        // 503: the pool could not connect in time on a busy
                        // machine, one more failure the invariant must survive.
                        assert!(
                            [200, 400, 409, 422, 500, 503].contains(&r.status),
                            "unexpected {}: {}",
                            r.status,
                            r.text
                        );
                    }
                    2 => {
                        let mut anon = server.db.as_role("pgrpc_anon").await;
                        let tx = anon.transaction().await.expect("begin");
                        let _ = tx
                            .query_one("SELECT * FROM api.sign_contract($1, 'sig')", &[&token])
                            .await;
                        let _ = tx.rollback().await;
                    }
                    _ => {
                        let anon = server.db.as_role("pgrpc_anon").await;
                        let _ = anon
                            .batch_execute(&format!(
                                "BEGIN; SELECT api.sign_contract('{token}', 'sig');"
                            ))
                            .await;
                        drop(anon); // the server aborts the open transaction
                    }
                }
            }));
        }
    }
    join_tasks(tasks).await;
    assert_one_event_per_signed_player(&su).await;
    let signed_under_load = count(&su, SIGNED_PLAYERS).await;
    assert!(
        signed_under_load > 0,
        "no signing survived the injected failures"
    );

    // A final round without injected failures signs whatever is left.
    su.batch_execute(
        "DROP TRIGGER zz_test_fail ON private.outbox;
         DROP TRIGGER zz_test_fail_at_commit ON private.players;",
    )
    .await
    .expect("remove failure injection");
    for token in &tokens {
        let mut r = server
            .rpc(
                "sign_contract",
                None,
                json!({"contract_token": token, "signature_ref": "sig"}),
            )
            .await;
        for _ in 0..5 {
            if r.status != 503 {
                break;
            }
            r = server
                .rpc(
                    "sign_contract",
                    None,
                    json!({"contract_token": token, "signature_ref": "sig"}),
                )
                .await;
        }
        assert!(
            [200, 409, 422].contains(&r.status),
            "{}: {}",
            r.status,
            r.text
        );
    }
    assert_one_event_per_signed_player(&su).await;
    let signed = count(&su, SIGNED_PLAYERS).await;
    assert_eq!(
        signed,
        (PLAYERS - 5) as i64,
        "every player with a parent ends up signed"
    );
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.players WHERE parent_id IS NULL AND contract_status = 'signed'").await,
        0
    );
}

/// Asserts the outbox invariant: as many contract.signed events as signed
/// players, each signed player with exactly one, and no event without one.
async fn assert_one_event_per_signed_player(su: &Client) {
    let signed = count(su, SIGNED_PLAYERS).await;
    let events = outbox_count(su, "contract.signed").await;
    assert_eq!(
        signed, events,
        "signed players and contract.signed events diverged"
    );
    assert_eq!(
        count(
            su,
            "SELECT count(*) FROM private.players p
             WHERE p.contract_status = 'signed'
               AND (SELECT count(*) FROM private.outbox o
                    WHERE o.event_type = 'contract.signed' AND o.aggregate_id = p.id::text) = 1"
        )
        .await,
        signed,
        "a signed player without exactly one event"
    );
    assert_eq!(
        count(
            su,
            "SELECT count(*) FROM private.outbox o
             WHERE o.event_type = 'contract.signed'
               AND NOT EXISTS (SELECT 1 FROM private.players p
                               WHERE p.id::text = o.aggregate_id AND p.contract_status = 'signed')"
        )
        .await,
        0,
        "an event without a signed player"
    );
}

/// A signed player cannot be deleted or truncated away (TRUNCATE of teams or parents CASCADE included) by pgrpc_api, pgrpc_admin, the owner or a superuser; a pending player can be deleted.
#[tokio::test]
async fn a_signed_player_is_never_deleted_or_truncated_by_any_role() {
    let db = TestDb::new().await;
    let svc = db.as_role("pgrpc_service").await;
    let tokens = sql_players(&svc, 21, 2, true).await;
    sign(&svc, &tokens[0]).await;
    let statements = [
        "DELETE FROM private.players",
        "DELETE FROM private.players WHERE contract_status = 'signed'",
        "TRUNCATE private.players",
        "TRUNCATE private.teams CASCADE",
        "TRUNCATE private.parents CASCADE",
    ];
    assert_refused(
        &db,
        &PRIVILEGED_ROLES_AND_SUPERUSER,
        &statements,
        &["signed_contract_kept"],
    )
    .await;
    let su = db.superuser().await;
    assert_eq!(count(&su, SIGNED_PLAYERS).await, 1);
    assert_one_event_per_signed_player(&su).await;

    // Only signed players are kept: a pending one may go.
    let deleted = db
        .superuser()
        .await
        .execute(
            "DELETE FROM private.players WHERE contract_status = 'pending'",
            &[],
        )
        .await
        .expect("delete a pending player");
    assert_eq!(deleted, 1);
    assert_eq!(count(&su, "SELECT count(*) FROM private.players").await, 1);
}

/// Nobody can write a contract.signed event for a pending, unknown or differently spelled player, nor a second one for a signed player; the trigger path still writes exactly one.
#[tokio::test]
async fn a_contract_signed_event_cannot_be_fabricated_or_duplicated() {
    let db = TestDb::new().await;
    let svc = db.as_role("pgrpc_service").await;
    let tokens = sql_players(&svc, 31, 2, true).await;
    let signed = sign(&svc, &tokens[0]).await;
    let su = db.superuser().await;
    let pending: uuid::Uuid = su
        .query_one(
            "SELECT id FROM private.players WHERE contract_token = $1",
            &[&tokens[1]],
        )
        .await
        .expect("pending player")
        .get(0);

    let forgeries = [
        ("player", pending.to_string()),
        ("player", uuid::Uuid::new_v4().to_string()),
        ("player", signed.to_string().to_uppercase()),
        ("team", signed.to_string()),
        ("player", "not-a-uuid".to_string()),
    ];
    let duplicate = ("player", signed.to_string());
    let paths = [
        "SELECT private.outbox_emit($1, $2, 'contract.signed', '{}')",
        "INSERT INTO private.outbox (aggregate_type, aggregate_id, event_type, payload) \
         VALUES ($1, $2, 'contract.signed', '{}')",
    ];
    // pgrpc_owner writes no table at all (trust.rs); the check stops the rest.
    for role in ["pgrpc_api", "postgres"] {
        let client = db.as_role(role).await;
        for sql in paths {
            for (aggregate_type, aggregate_id) in &forgeries {
                let err = client
                    .execute(sql, &[aggregate_type, aggregate_id])
                    .await
                    .expect_err(&format!(
                        "{role} forges for {aggregate_type} {aggregate_id}"
                    ));
                assert_eq!(sqlstate(&err), "42501", "{role}: {sql}: {err}");
                assert_eq!(message(&err), "contract_signed_without_signed_player");
            }
            let err = client
                .execute(sql, &[&duplicate.0, &duplicate.1])
                .await
                .expect_err(&format!("{role} duplicates the event"));
            assert_eq!(
                err.code(),
                Some(&SqlState::UNIQUE_VIOLATION),
                "{role}: {err}"
            );
            assert_eq!(
                err.as_db_error().and_then(|e| e.constraint()),
                Some("outbox_contract_signed_once_per_player")
            );
        }
    }
    assert_eq!(outbox_count(&su, "contract.signed").await, 1);
    assert_one_event_per_signed_player(&su).await;

    // The legitimate paths pass the check: signing, and inserting a signed player.
    sign(&svc, &tokens[1]).await;
    db.superuser()
        .await
        .execute(
            "INSERT INTO private.players (tenant_id, team_id, parent_id, name, contract_status, signed_at, signature_ref)
             SELECT tenant_id, team_id, parent_id, 'Paper', 'signed', now(), 'paper' FROM private.players WHERE id = $1",
            &[&pending],
        )
        .await
        .expect("insert a player signed on paper");
    assert_eq!(outbox_count(&su, "contract.signed").await, 3);
    assert_one_event_per_signed_player(&su).await;
}
