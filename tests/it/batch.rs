//! Atomic batches (`POST /rpc`, docs/proxy.md#batches): every call of the
//! array runs in order in one transaction, as the request's role; the
//! answer is the array of the results, or the failed call's error with its
//! index, and nothing of the batch kept.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::api::{create_organization, create_site};
use crate::support::db::count;
use crate::support::{send, service_token, Resp, TestServer};

const FIXTURES: &str = r#"
CREATE FUNCTION api.ro_state() RETURNS text LANGUAGE sql STABLE
  AS $$ SELECT current_setting('transaction_read_only') $$;
CREATE FUNCTION api.nothing() RETURNS void LANGUAGE sql VOLATILE AS $$ SELECT $$;
CREATE FUNCTION api.serial_state() RETURNS text LANGUAGE sql STABLE
  SET default_transaction_isolation = 'serializable'
  AS $$ SELECT current_setting('transaction_isolation') $$;
CREATE TABLE public.pre_calls (at timestamptz NOT NULL DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON public.pre_calls TO PUBLIC;
CREATE FUNCTION public.count_pre() RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.pre_calls DEFAULT VALUES $$;
"#;

async fn server() -> TestServer {
    TestServer::start_with_sql(FIXTURES, |_| {}).await
}

/// `POST /rpc` with `calls` as the service, with extra headers.
async fn batch_with(s: &TestServer, calls: &Value, headers: &[(&str, &str)]) -> Resp {
    let mut req = s
        .http
        .post(s.url("/rpc"))
        .bearer_auth(service_token())
        .header("content-type", "application/json")
        .body(calls.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req).await
}

async fn batch(s: &TestServer, calls: &Value) -> Resp {
    batch_with(s, calls, &[]).await
}

async fn rows(s: &TestServer, table: &str) -> i64 {
    let su = s.db.superuser().await;
    count(&su, &format!("SELECT count(*) FROM {table}")).await
}

fn team(tenant: i64, name: &str) -> Value {
    json!({"fn": "create_team", "args": {"tenant_id": tenant, "name": name}})
}

fn parent(tenant: i64, name: &str) -> Value {
    json!({"fn": "create_parent", "args": {"tenant_id": tenant, "name": name, "email": "p@example.com"}})
}

// create_team then create_parent answer both rows, in order, each as the
// call alone answers it; a void call is null; both rows are committed.
#[tokio::test]
async fn a_batch_answers_every_result_in_order_and_commits_them() {
    let s = server().await;
    let r = batch(
        &s,
        &json!([team(7, "Falcons"), parent(7, "Pat"), {"fn": "nothing"}]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let results = r.body.as_array().expect("an array");
    assert_eq!(results.len(), 3, "{}", r.text);
    assert_eq!(results[0]["name"], "Falcons");
    assert_eq!(results[0]["tenant_id"], 7);
    assert!(results[0]["id"].is_string());
    assert_eq!(results[1]["name"], "Pat");
    assert_eq!(results[1]["email"], "p@example.com");
    assert_eq!(results[2], Value::Null);
    // Each result is what the call alone answers: the same keys.
    let alone = s
        .service_rpc("create_team", json!({"tenant_id": 7, "name": "Alone"}))
        .await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&results[0]), keys(&alone.body));
    assert_eq!(rows(&s, "private.teams").await, 2);
    assert_eq!(rows(&s, "private.parents").await, 1);
    // Schema-qualified within the exposed schemas; another schema is 406.
    let r = batch(
        &s,
        &json!([{"fn": "api.create_team", "args": {"tenant_id": 7, "name": "Q"}}]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = batch(
        &s,
        &json!([team(7, "Lost"), {"fn": "private.create_team", "args": {"tenant_id": 7, "name": "x"}}]),
    )
    .await;
    assert_eq!(r.status, 406, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST106");
    assert_eq!(r.header("x-pgrpc-batch-index"), Some("1"));
    assert_eq!(rows(&s, "private.teams").await, 3);
}

// A failure at position 0, 1 or 2 answers that call's status and error
// body, names it in X-Pgrpc-Batch-Index, and keeps nothing of the batch.
#[tokio::test]
async fn a_failure_at_any_position_keeps_nothing() {
    let s = server().await;
    for at in 0..3usize {
        let mut calls = vec![team(1, "A"), parent(1, "B"), team(1, "C")];
        // A blank name breaks teams_name_not_blank / parents_name_not_blank.
        calls[at]["args"]["name"] = json!("  ");
        let r = batch(&s, &Value::Array(calls)).await;
        assert_eq!(r.status, 400, "failure at {at}: {}", r.text);
        assert_eq!(r.error_code(), "23514", "{}", r.text);
        assert_eq!(
            r.header("x-pgrpc-batch-index"),
            Some(at.to_string().as_str()),
            "{}",
            r.text
        );
        assert_eq!(rows(&s, "private.teams").await, 0, "failure at {at}");
        assert_eq!(rows(&s, "private.parents").await, 0, "failure at {at}");
    }
    // A call that resolves to no function is 404, named, before anything runs.
    let r = batch(
        &s,
        &json!([team(1, "A"), {"fn": "create_teams", "args": {}}, team(1, "C")]),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST202");
    assert_eq!(r.header("x-pgrpc-batch-index"), Some("1"));
    // EXECUTE is PostgreSQL's: an anonymous batch of a service function is 401.
    let r = send(
        s.http
            .post(s.url("/rpc"))
            .header("content-type", "application/json")
            .body(json!([{"fn": "nothing"}, team(1, "A")]).to_string()),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.error_code(), "42501");
    assert_eq!(r.header("x-pgrpc-batch-index"), Some("1"));
    assert_eq!(rows(&s, "private.teams").await, 0);
}

// Concurrent batches that each spend two tokens of a budget of ten: the
// budget is never over-spent, a batch refused at its second call keeps
// its first token unspent, and the counter ends at exactly what the
// successful batches spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_never_overspend_the_token_budget() {
    let s = server().await;
    let org = create_organization(&s, "batch org", "freemium").await;
    let site = create_site(&s, &org, "https://batch.test").await;
    let spend = json!({"fn": "consume_token", "args": {"site_id": site, "token_type": "alt_text"}});
    let calls = json!([spend, spend]);
    let responses = join_all((0..12).map(|_| batch(&s, &calls))).await;
    let (ok, refused): (Vec<&Resp>, Vec<&Resp>) = responses.iter().partition(|r| r.status == 200);
    for r in &refused {
        assert_eq!(r.status, 429, "{}", r.text);
        assert_eq!(r.body["message"], "tokens_exhausted", "{}", r.text);
        assert!(r.header("retry-after").is_some());
        assert!(matches!(r.header("x-pgrpc-batch-index"), Some("0" | "1")));
    }
    assert_eq!(ok.len(), 5, "ten tokens, two a batch");
    let mut used: Vec<i64> = ok
        .iter()
        .flat_map(|r| r.body.as_array().expect("array").clone())
        .map(|v| v["used"].as_i64().expect("used"))
        .collect();
    used.sort_unstable();
    assert_eq!(used, (1..=10).collect::<Vec<_>>(), "no token spent twice");
    let r = s
        .service_rpc_get(
            "token_balance",
            &[("site_id", site.as_str()), ("token_type", "alt_text")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["used"], 10);
    assert_eq!(r.body["remaining"], 0);
}

// An Idempotency-Key covers the whole batch: a retry replays the same
// answer and runs nothing; the same key with another batch is 422.
#[tokio::test]
async fn an_idempotency_key_replays_a_batch_once() {
    let s = server().await;
    let calls = json!([team(3, "Once"), parent(3, "P")]);
    let key = [("idempotency-key", "batch-key-1")];
    let first = batch_with(&s, &calls, &key).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    // The same calls, re-serialized with other spacing: the same request.
    let respaced = serde_json::to_string_pretty(&calls).expect("json");
    let again = send(
        s.http
            .post(s.url("/rpc"))
            .bearer_auth(service_token())
            .header("content-type", "application/json")
            .header("idempotency-key", "batch-key-1")
            .body(respaced),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(rows(&s, "private.teams").await, 1);
    assert_eq!(rows(&s, "private.parents").await, 1);
    let other = batch_with(&s, &json!([team(3, "Other")]), &key).await;
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.error_key(), "idempotency_key_reused");
    assert_eq!(rows(&s, "private.teams").await, 1);
}

// A batch of STABLE calls runs READ ONLY; one VOLATILE call makes the
// whole transaction read-write.
#[tokio::test]
async fn a_batch_of_stable_calls_runs_read_only() {
    let s = server().await;
    let r = batch(
        &s,
        &json!([{"fn": "ro_state"}, {"fn": "ro_state", "args": {}}]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!(["on", "on"]));
    let r = batch(&s, &json!([{"fn": "ro_state"}, team(1, "W")])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body[0], "off");
    assert_eq!(rows(&s, "private.teams").await, 1);
}

// One transaction has one isolation level: calls that hoist different ones
// are refused with 400 before anything runs; the same one applies.
#[tokio::test]
async fn calls_that_hoist_different_settings_are_refused() {
    let s = server().await;
    let r = batch(&s, &json!([{"fn": "serial_state"}, {"fn": "serial_state"}])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!(["serializable", "serializable"]));
    let r = batch(&s, &json!([{"fn": "serial_state"}, {"fn": "ro_state"}])).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST102");
    assert_eq!(r.header("x-pgrpc-batch-index"), Some("1"));
}

// PGRPC_PRE_REQUEST runs once per batch, before its first call.
#[tokio::test]
async fn the_pre_request_function_runs_once_per_batch() {
    let s = TestServer::start_with_sql(FIXTURES, |c| {
        c.pre_request = Some("public.count_pre".into())
    })
    .await;
    let r = batch(&s, &json!([team(1, "A"), team(1, "B"), team(1, "C")])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(rows(&s, "public.pre_calls").await, 1);
}

// GET / describes POST /rpc: an array of {fn, args}, fn one of the
// functions the caller may execute, args that function's body.
#[tokio::test]
async fn the_openapi_document_describes_the_batch() {
    let s = server().await;
    let doc = send(s.http.get(s.url("/")).bearer_auth(service_token())).await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let op = &doc.body["paths"]["/rpc"]["post"];
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(schema["type"], "array");
    let items = schema["items"]["anyOf"].as_array().expect("anyOf");
    let team = items
        .iter()
        .find(|i| i["properties"]["fn"]["enum"] == json!(["create_team"]))
        .expect("create_team is a batch item");
    assert_eq!(team["required"], json!(["fn", "args"]));
    assert_eq!(
        team["properties"]["args"]["properties"]["tenant_id"]["format"],
        "int64"
    );
    assert!(op["responses"]["200"].is_object());
    assert!(doc.body["paths"]["/rpc"].get("get").is_none());
}
