//! OAuth nonces (SPEC 4.5): single use, expiry-aware, replays recorded,
//! and an append-only table.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::api::create_organization;
use crate::support::db::{
    assert_refused, count, count_for, outbox_payloads, query_value, PRIVILEGED_ROLES_AND_SUPERUSER,
};
use crate::support::{join_tasks, Resp, TestDb, TestServer};

async fn issue(server: &TestServer, body: Value) -> Resp {
    server.service_rpc("issue_oauth_nonce", body).await
}

async fn issue_nonce(server: &TestServer, ttl_seconds: i32) -> String {
    let r = issue(server, json!({"ttl_seconds": ttl_seconds})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["nonce"].as_str().expect("nonce").to_string()
}

async fn consume(server: &TestServer, nonce: Value) -> Resp {
    server
        .service_rpc("consume_oauth_nonce", json!({"nonce": nonce}))
        .await
}

/// How far ahead of now an issued nonce's expires_at lies.
fn expires_in(issued: &Resp) -> chrono::Duration {
    let expires: chrono::DateTime<chrono::Utc> = issued.body["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("timestamp");
    expires - chrono::Utc::now()
}

/// The payloads of the security.oauth_nonce_replayed events, oldest first.
async fn replay_events(db: &TestDb) -> Vec<Value> {
    outbox_payloads(&db.superuser().await, "security.oauth_nonce_replayed").await
}

/// Of thirty concurrent HTTP consumers of one nonce exactly one gets true, and every loser is recorded as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_concurrent_consumers_of_one_nonce_have_exactly_one_winner() {
    // A small pool: the thirty requests queue for eight connections, so that
    // opening connections under load does not hit the pool's create timeout.
    let server = TestServer::start_with(|c| c.pool_size = 8).await;
    let nonce = issue_nonce(&server, 600).await;
    let responses = join_all((0..30).map(|_| consume(&server, json!(nonce)))).await;

    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let winners = responses.iter().filter(|r| r.body == json!(true)).count();
    let losers = responses.iter().filter(|r| r.body == json!(false)).count();
    assert_eq!(winners, 1, "{responses:#?}");
    assert_eq!(losers, 29);
    assert_eq!(replay_events(&server.db).await.len(), 29);
}

/// Thirty sessions consuming one nonce at the same moment: exactly one true, twenty-nine false.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_simultaneous_sessions_consume_a_nonce_once() {
    let db = TestDb::new().await;
    let issuer = db
        .as_request("pgrpc_service", &json!({"sub": "issuer"}))
        .await;
    let nonce: String =
        query_value(&issuer, "SELECT nonce FROM api.issue_oauth_nonce()", &[]).await;
    let sessions = join_all((0..30).map(|i| {
        let db = &db;
        async move {
            db.as_request("pgrpc_service", &json!({"sub": format!("callback-{i}")}))
                .await
        }
    }))
    .await;
    // Every session is connected before any consumes: they start together.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(sessions.len()));
    let tasks = sessions.into_iter().map(|c| {
        let barrier = barrier.clone();
        let nonce = nonce.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            c.query_one("SELECT api.consume_oauth_nonce($1)", &[&nonce])
                .await
                .expect("consume")
                .get::<_, bool>(0)
        })
    });
    let results: Vec<bool> = join_tasks(tasks).await;
    assert_eq!(results.iter().filter(|&&won| won).count(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|&&won| !won).count(), 29);
    assert_eq!(replay_events(&db).await.len(), 29);
}

/// A nonce is accepted once; its second use returns false and emits security.oauth_nonce_replayed keyed by its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_use_is_refused_and_reported_as_a_replay() {
    let server = TestServer::start().await;
    let nonce = issue_nonce(&server, 600).await;

    let first = consume(&server, json!(nonce)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body, json!(true));
    assert!(
        replay_events(&server.db).await.is_empty(),
        "a first use is no replay"
    );

    let second = consume(&server, json!(nonce)).await;
    assert_eq!(second.body, json!(false));
    let events = replay_events(&server.db).await;
    assert_eq!(events.len(), 1);
    let hash = hex::encode(Sha256::digest(nonce.as_bytes()));
    assert_eq!(events[0]["nonce_sha256"], json!(hash));
    assert_eq!(events[0]["request_role"], "pgrpc_service");
    assert!(
        !events[0].to_string().contains(&nonce),
        "the event must not leak the nonce"
    );

    // The record keeps only the hash.
    let su = server.db.superuser().await;
    let kept = count_for(
        &su,
        "SELECT count(*) FROM private.oauth_nonce_consumptions WHERE nonce_hash = sha256(convert_to($1, 'UTF8'))",
        &nonce,
    )
    .await;
    assert_eq!(kept, 1);

    // An unknown nonce is false and no replay.
    let unknown = consume(&server, json!("A".repeat(43))).await;
    assert_eq!(unknown.body, json!(false));
    assert_eq!(replay_events(&server.db).await.len(), 1);
}

/// A nonce issued with a one-second TTL is refused two seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_with_a_one_second_ttl_fails_after_two_seconds() {
    let server = TestServer::start().await;
    let nonce = issue_nonce(&server, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the nonce expire
    let r = consume(&server, json!(nonce)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!(false));
    assert!(
        replay_events(&server.db).await.is_empty(),
        "an expired nonce was never consumed"
    );

    // It stays refused, until the sweep removes it.
    assert_eq!(consume(&server, json!(nonce)).await.body, json!(false));
    let admin = server.db.as_role("pgrpc_admin").await;
    let swept: i32 = query_value(&admin, "SELECT admin.sweep_oauth_nonces()", &[]).await;
    assert_eq!(swept, 1);
}

/// A transaction that began before the nonce expired cannot consume it after: expiry uses clock_timestamp(), not now().
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_that_expires_during_a_long_transaction_is_refused() {
    let db = TestDb::new().await;
    let long = db
        .as_request("pgrpc_service", &json!({"sub": "callback"}))
        .await;
    let issuer = db
        .as_request("pgrpc_service", &json!({"sub": "issuer"}))
        .await;

    long.batch_execute("BEGIN").await.expect("begin");
    // now() is fixed here, before the nonce even exists.
    let started: chrono::DateTime<chrono::Utc> = query_value(&long, "SELECT now()", &[]).await;
    let row = issuer
        .query_one(
            "SELECT nonce, expires_at FROM api.issue_oauth_nonce(NULL, 1)",
            &[],
        )
        .await
        .expect("issue");
    let nonce: String = row.get(0);
    let expires_at: chrono::DateTime<chrono::Utc> = row.get(1);
    assert!(
        started < expires_at,
        "by now() the nonce would still be valid"
    );

    long.batch_execute("SELECT pg_sleep(1.5)")
        .await
        .expect("the transaction runs long");
    let accepted: bool = query_value(&long, "SELECT api.consume_oauth_nonce($1)", &[&nonce]).await;
    long.batch_execute("COMMIT").await.expect("commit");
    assert!(
        !accepted,
        "an expired nonce was accepted inside a long transaction"
    );

    let still_there: i64 = db
        .superuser()
        .await
        .query_one(
            "SELECT count(*) FROM private.oauth_nonces WHERE nonce = $1",
            &[&nonce],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(still_there, 1, "the refused nonce was not consumed");
}

/// Empty, null and non-string nonces are 400 invalid_nonce; out-of-range TTLs are 400 invalid_ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_or_non_string_nonces_and_bad_ttls_are_400() {
    let server = TestServer::start().await;
    for bad in [
        json!(""),
        json!(null),
        json!(123),
        json!(true),
        json!({"a": 1}),
        json!("short"),
        json!("x y"),
    ] {
        let r = consume(&server, bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.error_key(), "invalid_nonce", "{bad}");
    }
    for ttl in [json!(0), json!(-5), json!(86_401), json!(null)] {
        let r = issue(&server, json!({"ttl_seconds": ttl})).await;
        assert_eq!(r.status, 400, "ttl {ttl}: {}", r.text);
        assert_eq!(r.error_key(), "invalid_ttl");
    }
    let su = server.db.superuser().await;
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.oauth_nonces").await,
        0
    );
}

/// Issued nonces are distinct, URL-safe, 43 characters (32 random bytes), and expire after ttl_seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_nonces_are_url_safe_encodings_of_32_random_bytes() {
    let server = TestServer::start().await;
    let org_id = create_organization(&server, "OAuth", "free").await;
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let r = issue(
            &server,
            json!({"organization_id": org_id, "ttl_seconds": 300}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let nonce = r.body["nonce"].as_str().expect("nonce").to_string();
        assert_eq!(nonce.len(), 43, "{nonce}");
        assert!(
            nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "not base64url: {nonce}"
        );
        let ahead = expires_in(&r);
        assert!(
            ahead > chrono::Duration::seconds(240) && ahead <= chrono::Duration::seconds(301),
            "{ahead}"
        );
        assert!(seen.insert(nonce));
    }
    let unknown_org = issue(&server, json!({"organization_id": uuid::Uuid::new_v4()})).await;
    assert_eq!(unknown_org.status, 409, "{}", unknown_org.text);

    // The default TTL is 600 seconds.
    let r = issue(&server, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ahead = expires_in(&r);
    assert!(
        ahead > chrono::Duration::seconds(540) && ahead <= chrono::Duration::seconds(601),
        "{ahead}"
    );
}

/// UPDATE and TRUNCATE are refused on the nonce tables for every role, and DELETE for all but the sanctioned functions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_tables_are_append_only_for_every_role() {
    let server = TestServer::start().await;
    let consumed = issue_nonce(&server, 600).await;
    assert_eq!(consume(&server, json!(consumed)).await.body, json!(true));
    let live = issue_nonce(&server, 600).await;

    let tables = ["private.oauth_nonces", "private.oauth_nonce_consumptions"];
    let mut refused = Vec::new();
    for table in tables {
        refused.push(format!(
            "UPDATE {table} SET expires_at = expires_at + interval '1 day'"
        ));
        refused.push(format!("UPDATE {table} SET created_at = now()"));
        refused.push(format!("TRUNCATE {table}"));
    }
    refused.push(
        "UPDATE private.oauth_nonces SET nonce = 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'"
            .to_string(),
    );
    assert_refused(&server.db, &PRIVILEGED_ROLES_AND_SUPERUSER, &refused, &[]).await;
    let deletes = tables.map(|table| format!("DELETE FROM {table}"));
    assert_refused(
        &server.db,
        &["pgrpc_admin", "pgrpc_owner", "postgres"],
        &deletes,
        &[],
    )
    .await;

    // Nothing changed: the live nonce still works once, the consumed one is still a replay.
    assert_eq!(consume(&server, json!(live)).await.body, json!(true));
    assert_eq!(consume(&server, json!(consumed)).await.body, json!(false));
    assert_eq!(replay_events(&server.db).await.len(), 1);
}

/// The sweep deletes expired nonces only; live ones remain consumable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_only_expired_nonces() {
    let server = TestServer::start().await;
    let short_a = issue_nonce(&server, 1).await;
    let _short_b = issue_nonce(&server, 1).await;
    let long = issue_nonce(&server, 600).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the short ones expire

    let admin = server.db.as_role("pgrpc_admin").await;
    let swept: i32 = query_value(&admin, "SELECT admin.sweep_oauth_nonces()", &[]).await;
    assert_eq!(swept, 2);
    assert_eq!(consume(&server, json!(short_a)).await.body, json!(false));
    assert_eq!(consume(&server, json!(long)).await.body, json!(true));
    let again: i32 = query_value(&admin, "SELECT admin.sweep_oauth_nonces()", &[]).await;
    assert_eq!(again, 0);
}
