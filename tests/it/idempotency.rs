//! Idempotency keys (SPEC 4.4) and the `Idempotency-Key` header (SPEC 2.3).
//!
//! The SQL protocol is driven through HTTP, as a service would call it;
//! the table rules are checked in SQL as each privileged role.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::api::{create_organization, create_site, service_ok};
use crate::support::db::{
    assert_refused, assert_refused_as, count, count_for, error_of, query_column, query_value,
    PRIVILEGED_ROLES,
};
use crate::support::{assert_error, send, service_token, token, Resp, TestDb, TestServer};

async fn create_org(server: &TestServer) -> String {
    create_organization(server, "Idempotent Inc", "free").await
}

async fn begin(server: &TestServer, body: Value) -> Resp {
    server.service_rpc("idempotency_begin", body).await
}

fn begin_args(org: &str, key: &str, hash: &str) -> Value {
    json!({"organization_id": org, "key": key, "endpoint": "/charges", "request_hash": hash})
}

/// A POST with an Idempotency-Key header.
async fn post_with_key(
    server: &TestServer,
    function: &str,
    bearer: &str,
    key: &str,
    body: Value,
) -> Resp {
    send(
        server
            .http
            .post(server.url(&format!("/rpc/{function}")))
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string()),
    )
    .await
}

/// POSTs `idem_record` for `label` with the Idempotency-Key `key`.
async fn record(server: &TestServer, bearer: &str, key: &str, label: &str) -> Resp {
    post_with_key(
        server,
        "idem_record",
        bearer,
        key,
        json!({ "label": label }),
    )
    .await
}

/// Creates, in this test's database only, a function with a visible effect
/// (one row per run in public.idem_effects), an optional pause that keeps
/// its transaction open, and a switch that makes it fail with 503 after
/// its effect.
async fn install_effect_function(server: &TestServer) {
    let su = server.db.superuser().await;
    su.batch_execute(
        r#"
        CREATE TABLE public.idem_effects (id serial PRIMARY KEY, label text NOT NULL);
        CREATE TABLE public.idem_switch (fail boolean NOT NULL);
        INSERT INTO public.idem_switch VALUES (false);
        CREATE FUNCTION api.idem_record(label text, pause double precision DEFAULT 0)
        RETURNS json
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $$
        DECLARE
            v_id integer;
        BEGIN
            INSERT INTO public.idem_effects (label) VALUES (idem_record.label) RETURNING id INTO v_id;
            PERFORM pg_sleep(idem_record.pause);
            IF (SELECT s.fail FROM public.idem_switch s) THEN
                RAISE SQLSTATE 'PT503' USING MESSAGE = 'injected_failure', DETAIL = 'The test switch is on.';
            END IF;
            RETURN json_build_object('id', v_id, 'label', idem_record.label, 'at', clock_timestamp());
        END
        $$;
        REVOKE ALL ON FUNCTION api.idem_record(text, double precision) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION api.idem_record(text, double precision) TO pgrpc_service;
        "#,
    )
    .await
    .expect("install test function");
    server.reload_and_wait("idem_record").await;
}

async fn effects(db: &TestDb, label: &str) -> i64 {
    count_for(
        &db.superuser().await,
        "SELECT count(*) FROM public.idem_effects WHERE label = $1",
        &label,
    )
    .await
}

// --- The SQL protocol ---------------------------------------------------------

/// Of ten concurrent begins with one key, exactly one starts and nine get 409 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_begins_start_once_and_refuse_nine_with_retry_after() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    let args = begin_args(&org, "charge-1", "h1");
    let responses = join_all((0..10).map(|_| begin(&server, args.clone()))).await;

    let started: Vec<&Resp> = responses.iter().filter(|r| r.status == 200).collect();
    assert_eq!(started.len(), 1, "{responses:#?}");
    assert_eq!(started[0].body["state"], "started");
    assert!(started[0].body["lease_token"].is_string());

    let refused: Vec<&Resp> = responses.iter().filter(|r| r.status == 409).collect();
    assert_eq!(refused.len(), 9, "{responses:#?}");
    for r in refused {
        assert_eq!(r.error_code(), "idempotency_key_in_use", "{}", r.text);
        let retry: u64 = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {r:?}"))
            .parse()
            .expect("Retry-After is whole seconds");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
}

/// A completed key replays its stored status and body, and the row reads back as completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_key_replays_its_stored_response() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    let started = begin(&server, begin_args(&org, "charge-2", "h1")).await;
    assert_eq!(started.status, 200, "{}", started.text);
    let lease = started.body["lease_token"].clone();

    let done = server
        .service_rpc(
            "idempotency_complete",
            json!({"organization_id": org, "key": "charge-2", "lease_token": lease,
                   "response_status": 201, "response_body": {"charge": "ch_1"}}),
        )
        .await;
    assert_eq!(done.status, 204, "{}", done.text);

    let replay = begin(&server, begin_args(&org, "charge-2", "h1")).await;
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(replay.body["state"], "replay");
    assert_eq!(replay.body["response_status"], 201);
    assert_eq!(replay.body["response_body"], json!({"charge": "ch_1"}));
    assert!(replay.body["lease_token"].is_null());

    let found = server
        .service_rpc_get(
            "find_active_idempotency_key",
            &[("organization_id", org.as_str()), ("key", "charge-2")],
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.text);
    assert_eq!(found.body["status"], "completed");
    assert_eq!(found.body["response_status"], 201);

    // Completing again, even with the right token, cannot rewrite the response.
    let again = server
        .service_rpc(
            "idempotency_complete",
            json!({"organization_id": org, "key": "charge-2", "lease_token": lease,
                   "response_status": 500, "response_body": null}),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.error_key(), "lease_lost");
}

/// The same key with another request hash or endpoint is 422 idempotency_key_reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_for_another_request_is_refused_with_422() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    let first = begin(&server, begin_args(&org, "charge-3", "h1")).await;
    assert_eq!(first.status, 200, "{}", first.text);

    let other_hash = begin(&server, begin_args(&org, "charge-3", "h2")).await;
    assert_eq!(other_hash.status, 422, "{}", other_hash.text);
    assert_eq!(other_hash.error_key(), "idempotency_key_reused");

    let mut other_endpoint = begin_args(&org, "charge-3", "h1");
    other_endpoint["endpoint"] = json!("/refunds");
    let r = begin(&server, other_endpoint).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.error_key(), "idempotency_key_reused");

    // The same key in another organization is another key.
    let org2 = create_org(&server).await;
    let elsewhere = begin(&server, begin_args(&org2, "charge-3", "h2")).await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.text);
    assert_eq!(elsewhere.body["state"], "started");
}

/// An expired lease is taken over by the next caller, and the old holder then gets lease_lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_and_the_old_holder_loses_it() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    let mut args = begin_args(&org, "charge-4", "h1");
    args["lease_seconds"] = json!(1);
    let first = begin(&server, args.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let old_lease = first.body["lease_token"].clone();

    // While the lease lives, a duplicate is refused.
    let busy = begin(&server, args.clone()).await;
    assert_eq!(busy.status, 409, "{}", busy.text);

    tokio::time::sleep(Duration::from_millis(1500)).await; // let the lease expire

    let second = begin(&server, begin_args(&org, "charge-4", "h1")).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.body["state"], "started");
    let new_lease = second.body["lease_token"].clone();
    assert_ne!(new_lease, old_lease);

    let late = server
        .service_rpc(
            "idempotency_complete",
            json!({"organization_id": org, "key": "charge-4", "lease_token": old_lease,
                   "response_status": 200, "response_body": {"from": "old"}}),
        )
        .await;
    assert_eq!(late.status, 409, "{}", late.text);
    assert_eq!(late.error_key(), "lease_lost");

    let done = server
        .service_rpc(
            "idempotency_complete",
            json!({"organization_id": org, "key": "charge-4", "lease_token": new_lease,
                   "response_status": 200, "response_body": {"from": "new"}}),
        )
        .await;
    assert_eq!(done.status, 204, "{}", done.text);
    let replay = begin(&server, begin_args(&org, "charge-4", "h1")).await;
    assert_eq!(replay.body["response_body"], json!({"from": "new"}));
}

/// A lease token that never held the key gets 409 lease_lost, for complete and for fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_lease_token_gets_lease_lost() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    let started = begin(&server, begin_args(&org, "charge-5", "h1")).await;
    assert_eq!(started.status, 200, "{}", started.text);
    let wrong = uuid::Uuid::new_v4().to_string();

    let complete = server
        .service_rpc(
            "idempotency_complete",
            json!({"organization_id": org, "key": "charge-5", "lease_token": wrong,
                   "response_status": 200, "response_body": {}}),
        )
        .await;
    assert_eq!(complete.status, 409, "{}", complete.text);
    assert_eq!(complete.error_key(), "lease_lost");

    let fail = server
        .service_rpc(
            "idempotency_fail",
            json!({"organization_id": org, "key": "charge-5", "lease_token": wrong,
                   "response_status": 500, "response_body": null, "retryable": true}),
        )
        .await;
    assert_eq!(fail.status, 409, "{}", fail.text);
    assert_eq!(fail.error_key(), "lease_lost");

    // The real holder is unaffected: the key is still processing, and its
    // lease still completes it.
    let found = server
        .service_rpc_get(
            "find_active_idempotency_key",
            &[("organization_id", org.as_str()), ("key", "charge-5")],
        )
        .await;
    assert_eq!(found.body["status"], "processing");
    let completed = server
        .service_rpc(
            "idempotency_complete",
            json!({"organization_id": org, "key": "charge-5", "lease_token": started.body["lease_token"],
                   "response_status": 200, "response_body": {}}),
        )
        .await;
    assert_eq!(completed.status, 204, "{}", completed.text);
}

/// A retryable failure releases the key for a fresh start; a final failure is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_releases_the_key_and_a_final_failure_is_replayed() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    let first = begin(&server, begin_args(&org, "charge-6", "h1")).await;
    let fail = server
        .service_rpc(
            "idempotency_fail",
            json!({"organization_id": org, "key": "charge-6", "lease_token": first.body["lease_token"],
                   "response_status": 503, "response_body": null, "retryable": true}),
        )
        .await;
    assert_eq!(fail.status, 204, "{}", fail.text);

    let retry = begin(&server, begin_args(&org, "charge-6", "h1")).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(
        retry.body["state"], "started",
        "a released key starts afresh"
    );

    let final_fail = server
        .service_rpc(
            "idempotency_fail",
            json!({"organization_id": org, "key": "charge-6", "lease_token": retry.body["lease_token"],
                   "response_status": 402, "response_body": {"error": "card_declined"}}),
        )
        .await;
    assert_eq!(final_fail.status, 204, "{}", final_fail.text);

    let replay = begin(&server, begin_args(&org, "charge-6", "h1")).await;
    assert_eq!(replay.body["state"], "replay");
    assert_eq!(replay.body["response_status"], 402);
    assert_eq!(
        replay.body["response_body"],
        json!({"error": "card_declined"})
    );
}

/// An expired key reads as absent, is replaced by the next begin, and the sweep deletes expired keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_counts_as_absent_and_is_swept() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    for key in ["old-a", "old-b"] {
        let mut args = begin_args(&org, key, "h1");
        args["ttl_seconds"] = json!(1);
        args["lease_seconds"] = json!(1);
        let r = begin(&server, args).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let live = begin(&server, begin_args(&org, "live", "h1")).await;
    assert_eq!(live.status, 200, "{}", live.text);

    tokio::time::sleep(Duration::from_millis(1500)).await; // let the keys expire

    let found = server
        .service_rpc_get(
            "find_active_idempotency_key",
            &[("organization_id", org.as_str()), ("key", "old-a")],
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.text);
    assert!(
        found.body.is_null(),
        "expired key still visible: {}",
        found.text
    );

    // Another request may now use the expired key.
    let reuse = begin(&server, begin_args(&org, "old-a", "other")).await;
    assert_eq!(reuse.status, 200, "{}", reuse.text);
    assert_eq!(reuse.body["state"], "started");

    let admin = server.db.as_role("pgrpc_admin").await;
    let swept: i32 = query_value(&admin, "SELECT admin.sweep_idempotency_keys()", &[]).await;
    assert_eq!(swept, 1, "only old-b was still expired");
    let left = count_for(
        &admin,
        "SELECT count(*) FROM private.idempotency_keys WHERE organization_id = $1::text::uuid",
        &org,
    )
    .await;
    assert_eq!(left, 2);
}

/// Keys outside 1..255 characters, blank hashes and out-of-range TTLs are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_begin_arguments_are_400() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    let too_long = "k".repeat(256);
    for key in ["", too_long.as_str()] {
        let r = begin(&server, begin_args(&org, key, "h1")).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.error_key(), "invalid_idempotency_key");
    }
    let ok = begin(&server, begin_args(&org, &"k".repeat(255), "h1")).await;
    assert_eq!(ok.status, 200, "a 255-character key is valid: {}", ok.text);

    let blank = begin(&server, begin_args(&org, "k", " ")).await;
    assert_eq!(blank.status, 400, "{}", blank.text);
    assert_eq!(blank.error_key(), "invalid_argument");
    for (field, value) in [
        ("ttl_seconds", 0),
        ("ttl_seconds", 100_000_000),
        ("lease_seconds", 0),
    ] {
        let mut args = begin_args(&org, "k", "h1");
        args[field] = json!(value);
        let r = begin(&server, args).await;
        assert_eq!(r.status, 400, "{field}={value}: {}", r.text);
        assert_eq!(r.error_key(), "invalid_argument");
    }
}

/// The status machine and write-once columns hold for pgrpc_api, pgrpc_admin and the owner; only the sanctioned functions delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rows_keep_their_rules_for_every_role() {
    let server = TestServer::start().await;
    let org = create_org(&server).await;
    let started = begin(&server, begin_args(&org, "done", "h1")).await;
    let done = server
        .service_rpc(
            "idempotency_complete",
            json!({"organization_id": org, "key": "done", "lease_token": started.body["lease_token"],
                   "response_status": 200, "response_body": {"ok": true}}),
        )
        .await;
    assert_eq!(done.status, 204, "{}", done.text);
    let processing = begin(&server, begin_args(&org, "busy", "h1")).await;
    assert_eq!(processing.status, 200, "{}", processing.text);

    let done_row = "(SELECT id FROM private.idempotency_keys WHERE key = 'done')";
    let busy_row = "(SELECT id FROM private.idempotency_keys WHERE key = 'busy')";
    let mut refused = Vec::new();
    for set in [
        "key = 'x'",
        "endpoint = '/x'",
        "request_hash = 'x'",
        "expires_at = expires_at + interval '1 day'",
    ] {
        for row in [done_row, busy_row] {
            refused.push(format!(
                "UPDATE private.idempotency_keys SET {set} WHERE id = {row}"
            ));
        }
    }
    for set in [
        "response_status = 500",
        "response_body = '{\"ok\": false}'",
        "lease_token = gen_random_uuid()",
    ] {
        refused.push(format!(
            "UPDATE private.idempotency_keys SET {set} WHERE id = {done_row}"
        ));
    }
    refused.push("TRUNCATE private.idempotency_keys".to_string());
    assert_refused(&server.db, &PRIVILEGED_ROLES, &refused, &[]).await;
    assert_refused(
        &server.db,
        &["pgrpc_admin", "pgrpc_owner"],
        &[format!(
            "DELETE FROM private.idempotency_keys WHERE id = {done_row}"
        )],
        &[],
    )
    .await;
    // Going back to processing, or being born completed, is refused: by
    // privilege for the admin and the owner, by the status machine
    // (check_violation) for pgrpc_api.
    let back =
        format!("UPDATE private.idempotency_keys SET status = 'processing' WHERE id = {done_row}");
    let born_done = format!(
        "INSERT INTO private.idempotency_keys (organization_id, key, endpoint, request_hash, status, response_status, expires_at) \
         VALUES ('{org}', 'forged', '/x', 'h', 'completed', 200, clock_timestamp() + interval '1 hour')"
    );
    for role in PRIVILEGED_ROLES {
        let c = server.db.as_role(role).await;
        let expected = if role != "pgrpc_api" {
            "42501"
        } else {
            "23514"
        };
        for sql in [&back, &born_done] {
            let (code, _) = error_of(&c, sql).await;
            assert_eq!(code, expected, "{role}: {sql}");
        }
    }

    let su = server.db.superuser().await;
    let row = su
        .query_one(
            "SELECT status, response_status, response_body FROM private.idempotency_keys WHERE key = 'done'",
            &[],
        )
        .await
        .expect("row survives");
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(200));
    assert_eq!(row.get::<_, Option<Value>>(2), Some(json!({"ok": true})));

    // Deleting the organization cascades to its keys.
    su.execute(
        "DELETE FROM private.organizations WHERE id = $1::text::uuid",
        &[&org],
    )
    .await
    .expect("the cascade may delete keys");
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.idempotency_keys").await,
        0
    );
}

// --- The Idempotency-Key header ------------------------------------------------

/// Eight concurrent POSTs with one Idempotency-Key run the function once and all answer the same body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_posts_with_one_key_take_effect_once() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let bearer = service_token();
    let body = json!({"label": "concurrent", "pause": 0.3});
    let responses = join_all(
        (0..8).map(|_| post_with_key(&server, "idem_record", &bearer, "same-key", body.clone())),
    )
    .await;

    assert_eq!(
        effects(&server.db, "concurrent").await,
        1,
        "the function ran more than once"
    );
    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let bodies: HashSet<&str> = responses.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(bodies.len(), 1, "responses differ: {bodies:#?}");
    let replayed = responses
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert!(replayed >= 1, "no response was marked replayed");
    assert_eq!(
        replayed, 7,
        "every duplicate waits for the first and replays it"
    );
}

/// A retry replays the stored response; the same key with another body is 422; nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_replays_and_a_changed_request_is_refused() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let bearer = service_token();

    let first = record(&server, &bearer, "k-1", "retry").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);

    // Same request, keys reordered and reformatted: the canonical body matches.
    let again = send(
        server
            .http
            .post(server.url("/rpc/idem_record"))
            .bearer_auth(&bearer)
            .header("idempotency-key", "k-1")
            .body(r#"{ "label" : "retry" }"#),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, first.text);

    let changed = record(&server, &bearer, "k-1", "other").await;
    assert_eq!(changed.status, 422, "{}", changed.text);
    assert_eq!(changed.error_key(), "idempotency_key_reused");

    let other_function = post_with_key(
        &server,
        "create_organization",
        &bearer,
        "k-1",
        json!({"name": "x", "plan": "free"}),
    )
    .await;
    assert_eq!(other_function.status, 422, "{}", other_function.text);

    assert_eq!(effects(&server.db, "retry").await, 1);
    assert_eq!(effects(&server.db, "other").await, 0);
}

/// A call that fails stores nothing and leaves no effect, so the retry with the same key runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_stores_nothing_so_the_retry_runs() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let bearer = service_token();
    let su = server.db.superuser().await;

    su.batch_execute("UPDATE public.idem_switch SET fail = true")
        .await
        .expect("switch on");
    let failed = record(&server, &bearer, "k-2", "flaky").await;
    assert_eq!(failed.status, 503, "{}", failed.text);
    assert_eq!(failed.error_key(), "injected_failure");
    assert_eq!(
        effects(&server.db, "flaky").await,
        0,
        "the failed call's effect was rolled back"
    );
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.http_idempotency_keys").await,
        0,
        "a failed call stores no key"
    );

    su.batch_execute("UPDATE public.idem_switch SET fail = false")
        .await
        .expect("switch off");
    let retry = record(&server, &bearer, "k-2", "flaky").await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(
        retry.header("idempotent-replayed"),
        None,
        "the retry ran, it was not replayed"
    );
    assert_eq!(effects(&server.db, "flaky").await, 1);
}

/// A call that fails with a final client error (here 422) under a key of a
/// caller with a sub: its effect is rolled back, the error is stored, and
/// the retry replays it (Idempotent-Replayed) without running the call,
/// even once the cause is gone, as the IETF draft asks. A 5xx is not
/// final: see a_failed_call_stores_nothing_so_the_retry_runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_client_error_is_stored_and_replayed() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let su = server.db.superuser().await;
    su.batch_execute(
        r#"
        CREATE FUNCTION api.idem_refuse(label text) RETURNS json
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $$
        BEGIN
            INSERT INTO public.idem_effects (label) VALUES (idem_refuse.label);
            PERFORM set_config('response.headers', '[{"X-Refused": "yes"}]', true);
            IF (SELECT s.fail FROM public.idem_switch s) THEN
                RAISE SQLSTATE 'PT422' USING MESSAGE = 'refused_for_test', DETAIL = 'The test switch is on.';
            END IF;
            RETURN json_build_object('label', idem_refuse.label);
        END
        $$;
        REVOKE ALL ON FUNCTION api.idem_refuse(text) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION api.idem_refuse(text) TO pgrpc_service;
        UPDATE public.idem_switch SET fail = true;
        "#,
    )
    .await
    .expect("install");
    server.reload_and_wait("idem_refuse").await;
    let bearer = service_token();
    let call = || {
        post_with_key(
            &server,
            "idem_refuse",
            &bearer,
            "k-final",
            json!({"label": "refused"}),
        )
    };

    let first = call().await;
    assert_eq!(first.status, 422, "{}", first.text);
    assert_eq!(first.error_key(), "refused_for_test");
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(
        effects(&server.db, "refused").await,
        0,
        "the effect rolled back"
    );
    let stored: (i32, String) = {
        let row = su
            .query_one(
                "SELECT response_status, response_body FROM private.http_idempotency_keys WHERE key = 'k-final'",
                &[],
            )
            .await
            .expect("the key row was committed");
        (row.get(0), row.get(1))
    };
    assert_eq!(stored.0, 422);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stored.1).expect("json")["message"],
        "refused_for_test"
    );

    su.batch_execute("UPDATE public.idem_switch SET fail = false")
        .await
        .expect("switch off");
    let retry = call().await;
    assert_eq!(retry.status, 422, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, first.body, "the same error body");
    assert_eq!(
        retry.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        retry.header("x-refused"),
        None,
        "the rolled-back call's headers were not kept"
    );
    assert_eq!(
        effects(&server.db, "refused").await,
        0,
        "the retry did not run the call"
    );

    // Another request under the same key is still 422 idempotency_key_reused.
    let other = post_with_key(
        &server,
        "idem_refuse",
        &bearer,
        "k-final",
        json!({"label": "other"}),
    )
    .await;
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.error_key(), "idempotency_key_reused");
}

/// The same key from two callers (different sub) is two keys: each call runs once for its caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_to_the_caller() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let alice = token(json!({"role": "pgrpc_service", "sub": "alice"}));
    let bob = token(json!({"role": "pgrpc_service", "sub": "bob"}));
    let body = json!({"label": "scoped"});

    let a1 = post_with_key(&server, "idem_record", &alice, "shared", body.clone()).await;
    let b1 = post_with_key(&server, "idem_record", &bob, "shared", body.clone()).await;
    let a2 = post_with_key(&server, "idem_record", &alice, "shared", body.clone()).await;
    for r in [&a1, &b1, &a2] {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(
        b1.header("idempotent-replayed"),
        None,
        "bob must not see alice's response"
    );
    assert_ne!(a1.body["id"], b1.body["id"]);
    assert_eq!(a2.header("idempotent-replayed"), Some("true"));
    assert_eq!(a2.text, a1.text);
    assert_eq!(effects(&server.db, "scoped").await, 2);

    let scopes: Vec<String> = query_column(
        &server.db.superuser().await,
        "SELECT scope FROM private.http_idempotency_keys ORDER BY scope",
        &[],
    )
    .await;
    assert_eq!(scopes.len(), 2, "{scopes:?}");
    assert_ne!(scopes[0], scopes[1]);
    for scope in &scopes {
        assert!(
            scope.starts_with("pgrpc_service:claims:"),
            "a caller with a sub is scoped by role and claims: {scope}"
        );
    }
}

/// Once the idempotency_ttl has passed, the key is forgotten and the same request runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_header_key_runs_the_call_again() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let su = server.db.superuser().await;
    su.batch_execute("SELECT admin.set_setting('idempotency_ttl', '1 second')")
        .await
        .expect("shorten ttl");
    let bearer = service_token();

    let first = record(&server, &bearer, "k-ttl", "ttl").await;
    assert_eq!(first.status, 200, "{}", first.text);
    let extra = record(&server, &bearer, "k-other", "ttl").await;
    assert_eq!(extra.status, 200, "{}", extra.text);
    // Keys stored from now on live long again, so the sweep below counts exactly.
    su.batch_execute("SELECT admin.set_setting('idempotency_ttl', '24 hours')")
        .await
        .expect("restore ttl");

    tokio::time::sleep(Duration::from_millis(1500)).await; // let the keys expire

    let second = record(&server, &bearer, "k-ttl", "ttl").await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.header("idempotent-replayed"), None);
    assert_ne!(second.body["id"], first.body["id"]);
    assert_eq!(effects(&server.db, "ttl").await, 3);

    // The sweep removes the one key still expired (k-ttl was replaced).
    let admin = server.db.as_role("pgrpc_admin").await;
    let swept: i32 = query_value(&admin, "SELECT admin.sweep_idempotency_keys()", &[]).await;
    assert_eq!(swept, 1);
}

/// The header is ignored on GET, and a key over 255 characters is 400 on POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_is_ignored_on_get_and_validated_on_post() {
    let server = TestServer::start().await;
    let bearer = service_token();
    for _ in 0..2 {
        let r = send(
            server
                .http
                .get(server.url("/rpc/version"))
                .bearer_auth(&bearer)
                .header("idempotency-key", "get-key"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("idempotent-replayed"), None);
    }
    let su = server.db.superuser().await;
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.http_idempotency_keys").await,
        0,
        "GET must not record keys"
    );

    let long = "k".repeat(256);
    let r = post_with_key(
        &server,
        "create_organization",
        &bearer,
        &long,
        json!({"name": "long key", "plan": "free"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_key(), "invalid_idempotency_key");
    assert_eq!(
        count(
            &su,
            "SELECT count(*) FROM private.organizations WHERE name = 'long key'"
        )
        .await,
        0,
        "a refused key runs nothing"
    );
}

/// Stored header responses never change and leave only through the sweep, for every role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_header_responses_are_write_once_for_every_role() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let r = record(&server, &service_token(), "k-w", "w").await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut refused: Vec<String> = [
        "response_body = 'forged'",
        "response_status = 500",
        "response_headers = '{}'",
        "request_hash = 'x'",
        "expires_at = expires_at + interval '1 day'",
    ]
    .iter()
    .map(|set| format!("UPDATE private.http_idempotency_keys SET {set}"))
    .collect();
    refused.push("TRUNCATE private.http_idempotency_keys".to_string());
    assert_refused(&server.db, &PRIVILEGED_ROLES, &refused, &[]).await;
    assert_refused(
        &server.db,
        &["pgrpc_admin", "pgrpc_owner"],
        &["DELETE FROM private.http_idempotency_keys"],
        &[],
    )
    .await;
    // Request roles cannot read or write the table directly, only call the functions.
    let service = server
        .db
        .as_request("pgrpc_service", &json!({"sub": "x"}))
        .await;
    assert_refused_as(
        &service,
        "pgrpc_service",
        &["SELECT * FROM private.http_idempotency_keys"],
        &[],
    )
    .await;

    let replay = record(&server, &service_token(), "k-w", "w").await;
    assert_eq!(replay.text, r.text, "the stored response is unchanged");
}

/// Waits until `n` backends of this database are blocked on a lock.
async fn wait_for_lock_waiters(db: &TestDb, n: i64) {
    let su = db.superuser().await;
    for _ in 0..400 {
        let waiting = count(
            &su,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
        if waiting >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no backend ever waited on the claim");
}

type ClaimRow = (String, Option<i32>, Option<String>);

fn spawn_claim(client: Client, key: &'static str) -> tokio::task::JoinHandle<(Client, ClaimRow)> {
    tokio::spawn(async move {
        let row = client
            .query_one(
                "SELECT state, response_status, response_body FROM pgrpc_http.http_idempotency_claim($1, 'h')",
                &[&key],
            )
            .await
            .expect("duplicate claim");
        let out = (row.get(0), row.get(1), row.get(2));
        (client, out)
    })
}

/// In SQL, a duplicate claim waits on the uncommitted first claim, then replays its commit or claims after its rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_duplicate_claim_follows_the_first_claims_outcome() {
    let db = TestDb::new().await;
    let claims = json!({"role": "pgrpc_user", "sub": "u1"});
    let first = db.as_request("pgrpc_user", &claims).await;
    let second = db.as_request("pgrpc_user", &claims).await;

    // The first commits: the duplicate replays what it stored.
    first.batch_execute("BEGIN").await.expect("begin");
    let state: String = query_value(
        &first,
        "SELECT state FROM pgrpc_http.http_idempotency_claim('k', 'h')",
        &[],
    )
    .await;
    assert_eq!(state, "claimed");
    let waiter = spawn_claim(second, "k");
    wait_for_lock_waiters(&db, 1).await;
    assert!(
        !waiter.is_finished(),
        "the duplicate did not wait for the first claim"
    );
    first
        .batch_execute(
            "SELECT pgrpc_http.http_idempotency_store('k', 201, '[]', '{\"done\":true}'); COMMIT",
        )
        .await
        .expect("store and commit");
    let (second, (state, status, body)) = waiter.await.expect("join");
    assert_eq!(state, "replay");
    assert_eq!(status, Some(201));
    assert_eq!(body.as_deref(), Some("{\"done\":true}"));

    // The first rolls back: the duplicate's own insert goes through.
    first.batch_execute("BEGIN").await.expect("begin");
    first
        .query_one(
            "SELECT state FROM pgrpc_http.http_idempotency_claim('k2', 'h')",
            &[],
        )
        .await
        .expect("claim");
    let waiter = spawn_claim(second, "k2");
    wait_for_lock_waiters(&db, 1).await;
    assert!(
        !waiter.is_finished(),
        "the duplicate did not wait for the first claim"
    );
    first.batch_execute("ROLLBACK").await.expect("rollback");
    let (_, (state, status, _)) = waiter.await.expect("join");
    assert_eq!(state, "claimed");
    assert_eq!(status, None);
}

// --- The Idempotency-Key scope: a replay never crosses callers -----------------

/// A POST with an Idempotency-Key header and no token (the anonymous role).
async fn anonymous_post_with_key(
    server: &TestServer,
    function: &str,
    key: &str,
    body: Value,
) -> Resp {
    send(
        server
            .http
            .post(server.url(&format!("/rpc/{function}")))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string()),
    )
    .await
}

/// A pgrpc_user token with exactly these identity claims.
fn user_claims_token(sub: &str, org_id: &str, email: &str) -> String {
    token(json!({"role": "pgrpc_user", "sub": sub, "org_id": org_id, "email": email}))
}

/// Asserts that `r` ran as a call of its own: not a replay, and not `first`'s body.
fn assert_not_a_replay_of(r: &Resp, first: &Resp) {
    assert_eq!(r.header("idempotent-replayed"), None, "{}", r.text);
    assert_ne!(r.text, first.text, "the first caller's response leaked");
}

/// Asserts that `r` is `first`'s stored response, replayed.
fn assert_replay_of(r: &Resp, first: &Resp) {
    assert_eq!(r.status, first.status, "{}", r.text);
    assert_eq!(r.header("idempotent-replayed"), Some("true"), "{}", r.text);
    assert_eq!(r.text, first.text);
}

/// A user of another organization with the same sub, reusing a key on token_balances, gets its own 403, never the first user's balances (a read stores nothing under a key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_from_another_organization_never_replays_token_balances() {
    let server = TestServer::start().await;
    let org_a = create_organization(&server, "Org A", "freemium").await;
    let site_a = create_site(&server, &org_a, "https://a.example.com").await;
    let org_b = create_organization(&server, "Org B", "freemium").await;
    let user_a = user_claims_token("same-sub", &org_a, "ann@example.com");
    let user_b = user_claims_token("same-sub", &org_b, "ann@example.com");
    let body = json!({"site_id": site_a});

    let first = post_with_key(&server, "token_balances", &user_a, "k-bal", body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(
        first.body.as_array().is_some_and(|a| !a.is_empty()),
        "{}",
        first.text
    );

    let other_org = post_with_key(&server, "token_balances", &user_b, "k-bal", body.clone()).await;
    assert_error(&other_org, 403, "forbidden");
    assert_not_a_replay_of(&other_org, &first);

    // A read stores nothing under its key (issue 18): the retry reads again.
    let retry = post_with_key(&server, "token_balances", &user_a, "k-bal", body).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), None, "{}", retry.text);
    assert_eq!(retry.body, first.body);
}

/// A user of another organization with the same sub, reusing a key on recent_receives, gets its own 403 and never sees the sender IPs (a read stores nothing under a key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_from_another_organization_never_replays_recent_receives() {
    let server = TestServer::start().await;
    let org_a = uuid::Uuid::new_v4().to_string();
    let org_b = uuid::Uuid::new_v4().to_string();
    service_ok(
        &server,
        "finalize_receive",
        json!({"reservation_id": uuid::Uuid::new_v4(), "owner_email": "ann@example.com",
               "file_count": 1, "total_bytes": 10, "sender_ip": "203.0.113.7"}),
    )
    .await;
    let user_a = user_claims_token("same-sub", &org_a, "ann@example.com");
    let intruder = user_claims_token("same-sub", &org_b, "eve@example.com");
    let namesake = user_claims_token("same-sub", &org_b, "ann@example.com");
    let body = json!({"owner_email": "ann@example.com"});

    let first = post_with_key(&server, "recent_receives", &user_a, "k-feed", body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.text.contains("203.0.113.7"), "{}", first.text);

    let stolen = post_with_key(
        &server,
        "recent_receives",
        &intruder,
        "k-feed",
        body.clone(),
    )
    .await;
    assert_error(&stolen, 403, "forbidden");
    assert!(!stolen.text.contains("203.0.113.7"), "{}", stolen.text);

    // Even a token that could read the mailbox runs its own call under another org_id.
    let own_call = post_with_key(
        &server,
        "recent_receives",
        &namesake,
        "k-feed",
        body.clone(),
    )
    .await;
    assert_eq!(own_call.status, 200, "{}", own_call.text);
    assert_eq!(
        own_call.header("idempotent-replayed"),
        None,
        "{}",
        own_call.text
    );

    // A read stores nothing under its key (issue 18): the retry reads again.
    let retry = post_with_key(&server, "recent_receives", &user_a, "k-feed", body).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), None, "{}", retry.text);
    assert!(retry.text.contains("203.0.113.7"), "{}", retry.text);
}

/// A token with the same sub and organization but another email, reusing a key, gets its own 403, not the first mailbox's feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_under_another_email_never_replays_the_first_mailbox() {
    let server = TestServer::start().await;
    let org = uuid::Uuid::new_v4().to_string();
    service_ok(
        &server,
        "finalize_receive",
        json!({"reservation_id": uuid::Uuid::new_v4(), "owner_email": "ann@example.com",
               "file_count": 1, "total_bytes": 10, "sender_ip": "198.51.100.4"}),
    )
    .await;
    let ann = user_claims_token("same-sub", &org, "ann@example.com");
    let bob = user_claims_token("same-sub", &org, "bob@example.com");
    let body = json!({"owner_email": "ann@example.com"});

    let first = post_with_key(&server, "recent_receives", &ann, "k-mail", body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.text.contains("198.51.100.4"), "{}", first.text);

    let other_mailbox = post_with_key(&server, "recent_receives", &bob, "k-mail", body).await;
    assert_error(&other_mailbox, 403, "forbidden");
    assert!(
        !other_mailbox.text.contains("198.51.100.4"),
        "{}",
        other_mailbox.text
    );
}

/// A fresh token of the same caller (new exp, iat and jti) still replays: only lifetime claims are left out of the scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_of_the_same_caller_still_replays() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let claims = |exp: i64, jti: &str| {
        token(
            json!({"role": "pgrpc_service", "sub": "billing", "exp": exp,
                     "iat": exp - 3600, "jti": jti}),
        )
    };
    let now = chrono::Utc::now().timestamp();
    let body = json!({"label": "refresh"});

    let first = post_with_key(
        &server,
        "idem_record",
        &claims(now + 600, "t-1"),
        "k-fresh",
        body.clone(),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let after_refresh = post_with_key(
        &server,
        "idem_record",
        &claims(now + 3600, "t-2"),
        "k-fresh",
        body,
    )
    .await;
    assert_replay_of(&after_refresh, &first);
    assert_eq!(effects(&server.db, "refresh").await, 1);
}

/// A token without sub (a service's, here) cannot use the header: 400 idempotency_key_requires_sub, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_sub_is_refused_the_header_with_400() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let no_sub = token(json!({"role": "pgrpc_service"}));
    let body = json!({"label": "anonymous service"});

    let refused = post_with_key(&server, "idem_record", &no_sub, "k-nosub", body.clone()).await;
    assert_error(&refused, 400, "idempotency_key_requires_sub");
    assert_eq!(refused.body["code"], "PT400", "{}", refused.text);
    assert!(refused.body["details"].is_string() && refused.body["hint"].is_string());
    assert_eq!(
        effects(&server.db, "anonymous service").await,
        0,
        "nothing ran"
    );
    let su = server.db.superuser().await;
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.http_idempotency_keys").await,
        0,
        "nothing was stored"
    );

    // The same token may still call without the header.
    let plain = server.rpc("idem_record", Some(&no_sub), body).await;
    assert_eq!(plain.status, 200, "{}", plain.text);
}

/// Two anonymous signers reusing one key with different contract tokens both sign, and each replay returns only its own response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_reusing_a_key_neither_block_nor_see_each_other() {
    let server = TestServer::start().await;
    let team = service_ok(
        &server,
        "create_team",
        json!({"tenant_id": 7, "name": "U12"}),
    )
    .await;
    let parent = service_ok(
        &server,
        "create_parent",
        json!({"tenant_id": 7, "name": "Pat", "email": "pat@example.com"}),
    )
    .await;
    let mut players = Vec::new();
    for name in ["Sam", "Alex"] {
        players.push(
            service_ok(
                &server,
                "create_player",
                json!({"tenant_id": 7, "team_id": team["id"], "parent_id": parent["id"], "name": name}),
            )
            .await,
        );
    }
    let sign = |player: &Value| json!({"contract_token": player["contract_token"], "signature_ref": "esign-1"});

    let a = anonymous_post_with_key(&server, "sign_contract", "k-anon", sign(&players[0])).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["player_id"], players[0]["id"]);
    let b = anonymous_post_with_key(&server, "sign_contract", "k-anon", sign(&players[1])).await;
    assert_eq!(
        b.status, 200,
        "the second signer is not refused: {}",
        b.text
    );
    assert_eq!(b.body["player_id"], players[1]["id"]);
    assert_not_a_replay_of(&b, &a);

    for (player, first) in [(&players[0], &a), (&players[1], &b)] {
        let retry = anonymous_post_with_key(&server, "sign_contract", "k-anon", sign(player)).await;
        assert_replay_of(&retry, first);
    }
}

/// While one anonymous call holds a key, another anonymous call with that key and another body runs at once instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_anonymous_call_in_flight_does_not_hold_up_another_with_the_same_key() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let su = server.db.superuser().await;
    su.batch_execute(
        "GRANT EXECUTE ON FUNCTION api.idem_record(text, double precision) TO pgrpc_anon",
    )
    .await
    .expect("grant to anon");

    let slow = {
        let http = server.http.clone();
        let url = server.url("/rpc/idem_record");
        tokio::spawn(async move {
            send(
                http.post(url)
                    .header("idempotency-key", "k-busy")
                    .body(json!({"label": "slow", "pause": 3}).to_string()),
            )
            .await
        })
    };
    // The slow call has claimed the key once its function sleeps.
    let mut sleeping = 0;
    for _ in 0..200 {
        sleeping = count(
            &su,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        .await;
        if sleeping == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(sleeping, 1, "the slow call never started");

    let fast =
        anonymous_post_with_key(&server, "idem_record", "k-busy", json!({"label": "fast"})).await;
    assert_eq!(fast.status, 200, "{}", fast.text);
    assert_eq!(fast.body["label"], "fast");
    assert!(!slow.is_finished(), "the fast call waited for the slow one");

    let slow = slow.await.expect("join");
    assert_eq!(slow.status, 200, "{}", slow.text);
    assert_eq!(slow.body["label"], "slow");
    assert_eq!(slow.header("idempotent-replayed"), None);
    assert_eq!(effects(&server.db, "slow").await, 1);
    assert_eq!(effects(&server.db, "fast").await, 1);
}

/// Concurrent identical anonymous requests with one key still take effect once: the request scope keeps exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_anonymous_requests_take_effect_once() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    server
        .db
        .superuser()
        .await
        .batch_execute(
            "GRANT EXECUTE ON FUNCTION api.idem_record(text, double precision) TO pgrpc_anon",
        )
        .await
        .expect("grant to anon");
    let body = json!({"label": "anon-once", "pause": 0.3});
    let responses = join_all(
        (0..4).map(|_| anonymous_post_with_key(&server, "idem_record", "k-same", body.clone())),
    )
    .await;

    assert_eq!(effects(&server.db, "anon-once").await, 1);
    let replayed = responses
        .iter()
        .filter(|r| r.status == 200 && r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 3, "{responses:#?}");
    let bodies: HashSet<&str> = responses.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(bodies.len(), 1, "responses differ: {bodies:#?}");
}

// --- draft-ietf-httpapi-idempotency-key-header ---------------------------------

/// The draft's form of the key, an RFC 8941 string, names the same key as
/// the bare key: a retry in either form replays; a malformed string, or
/// two Idempotency-Key fields, is 400 and runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_key_is_the_same_key_and_malformed_ones_are_400() {
    let server = TestServer::start().await;
    install_effect_function(&server).await;
    let bearer = service_token();
    let first = record(&server, &bearer, "\"8e03978e-40d5\"", "sf").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    let bare = record(&server, &bearer, "8e03978e-40d5", "sf").await;
    assert_eq!(
        bare.header("idempotent-replayed"),
        Some("true"),
        "{}",
        bare.text
    );
    assert_eq!(bare.text, first.text);
    // Escapes are read: "a\"b" is the key a"b.
    let escaped = record(&server, &bearer, r#""a\"b""#, "esc").await;
    assert_eq!(escaped.status, 200, "{}", escaped.text);
    let same = record(&server, &bearer, r#"a"b"#, "esc").await;
    assert_eq!(
        same.header("idempotent-replayed"),
        Some("true"),
        "{}",
        same.text
    );
    for bad in [r#""open"#, r#""a"b"#, r#""bad\escape""#, r#""k";param=1"#] {
        let r = record(&server, &bearer, bad, "bad").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "PGRST100"),
            "{bad}: {}",
            r.text
        );
        assert!(r.text.contains("RFC 8941"), "{bad}: {}", r.text);
    }
    let twice = send(
        server
            .http
            .post(server.url("/rpc/idem_record"))
            .bearer_auth(&bearer)
            .header("idempotency-key", "k-a")
            .header("idempotency-key", "k-b")
            .json(&json!({"label": "bad"})),
    )
    .await;
    assert_eq!(
        (twice.status, twice.error_code().as_str()),
        (400, "PGRST100"),
        "{}",
        twice.text
    );
    assert_eq!(effects(&server.db, "bad").await, 0);
    assert_eq!(effects(&server.db, "sf").await, 1);
    assert_eq!(effects(&server.db, "esc").await, 1);
}

/// A retry while the first request is still in flight waits for it up to
/// pgrpc.idempotency_wait, then is 409 idempotency_key_in_use with
/// Retry-After (the draft's answer); once the first ends, a retry replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_while_the_first_is_in_flight_is_409_past_the_wait() {
    // Set for the database before the proxy connects, as an operator would.
    let server = TestServer::start_with_sql(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET pgrpc.idempotency_wait = %L', current_database(), '300ms'); END $$",
        |_| {},
    )
    .await;
    install_effect_function(&server).await;
    let su = server.db.superuser().await;
    let bearer = service_token();
    let slow = {
        let (http, url, bearer) = (
            server.http.clone(),
            server.url("/rpc/idem_record"),
            bearer.clone(),
        );
        tokio::spawn(async move {
            send(
                http.post(url)
                    .bearer_auth(bearer)
                    .header("idempotency-key", "k-flight")
                    .json(&json!({"label": "flight", "pause": 3})),
            )
            .await
        })
    };
    let mut sleeping = 0;
    for _ in 0..200 {
        sleeping = count(
            &su,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        .await;
        if sleeping == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(sleeping, 1, "the first call never started");
    let started = std::time::Instant::now();
    let busy = post_with_key(
        &server,
        "idem_record",
        &bearer,
        "\"k-flight\"",
        json!({"label": "flight", "pause": 3}),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(busy.status, 409, "{}", busy.text);
    assert_eq!(busy.error_key(), "idempotency_key_in_use");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(2500),
        "waited {waited:?}"
    );
    assert!(!slow.is_finished(), "the first call ended before the 409");
    let first = slow.await.expect("join");
    assert_eq!(first.status, 200, "{}", first.text);
    let retry = post_with_key(
        &server,
        "idem_record",
        &bearer,
        "k-flight",
        json!({"label": "flight", "pause": 3}),
    )
    .await;
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.text, first.text);
    assert_eq!(effects(&server.db, "flight").await, 1);
}

/// The server publishes its rules, expiry included, where a client reads
/// them: the Idempotency-Key parameter of the OpenAPI document.
#[tokio::test]
async fn the_openapi_document_publishes_the_key_rules() {
    let server = TestServer::start().await;
    let doc = send(
        server
            .http
            .get(server.url("/"))
            .bearer_auth(service_token()),
    )
    .await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let params = doc.body["paths"]["/rpc/create_organization"]["post"]["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let key = params
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap_or_else(|| panic!("no Idempotency-Key parameter: {params:?}"));
    let text = key["description"].as_str().unwrap_or_default();
    for rule in [
        "RFC 8941",
        "422 idempotency_key_reused",
        "409 idempotency_key_in_use",
        "Retry-After",
        "idempotency_ttl setting (24 hours by default)",
    ] {
        assert!(text.contains(rule), "{rule} missing from: {text}");
    }
}
