//! `Prefer` preferences on RPC (`handling`, `max-affected`, `tx`,
//! `timezone`, `Preference-Applied`) and PostgREST's result shapes for a
//! single OUT/INOUT parameter, a single-column `RETURNS TABLE` and VARIADIC
//! parameters, through real HTTP, as PostgREST 13 answers them (issue 13,
//! items 4 and 6; after PostgREST's `PreferencesSpec`, `RpcSpec` and
//! `test/spec/fixtures/schema.sql`).

use serde_json::{json, Value};

use crate::support::db::query_value;
use crate::support::{send, service_token, Resp, TestServer};
use pgrpc::prefer::TxEnd;

const FIXTURES: &str = r#"
CREATE TABLE public.notes (id serial PRIMARY KEY, body text NOT NULL);
INSERT INTO public.notes (body) SELECT 'n' || g FROM generate_series(1, 15) g;
CREATE TABLE public.once (k int UNIQUE DEFERRABLE INITIALLY DEFERRED);
GRANT SELECT, INSERT, DELETE ON public.notes, public.once TO pgrpc_anon, pgrpc_service;
GRANT USAGE ON SEQUENCE public.notes_id_seq TO pgrpc_anon, pgrpc_service;

CREATE FUNCTION api.delete_notes_setof() RETURNS SETOF public.notes LANGUAGE sql AS
  $$ DELETE FROM public.notes RETURNING * $$;
CREATE FUNCTION api.delete_notes_table() RETURNS TABLE(id int) LANGUAGE sql AS
  $$ DELETE FROM public.notes RETURNING id $$;
CREATE FUNCTION api.delete_notes_void() RETURNS void LANGUAGE sql AS $$ DELETE FROM public.notes $$;
CREATE FUNCTION api.delete_notes_count() RETURNS bigint LANGUAGE sql AS
  $$ WITH d AS (DELETE FROM public.notes RETURNING 1) SELECT count(*) FROM d $$;
CREATE FUNCTION api.add_note(body text) RETURNS int LANGUAGE sql AS
  $$ INSERT INTO public.notes (body) VALUES (body) RETURNING id $$;
CREATE FUNCTION api.note_count() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM public.notes $$;
CREATE FUNCTION api.twice_once(k int) RETURNS int LANGUAGE sql AS
  $$ INSERT INTO public.once VALUES (k), (k); SELECT k $$;

CREATE FUNCTION api.stamps() RETURNS TABLE(t timestamptz) LANGUAGE sql STABLE AS $$
  VALUES ('2023-10-18 12:37:59.611+00'::timestamptz), ('2023-10-18 14:37:59.611+00') $$;
CREATE FUNCTION api.stamp_note(body text) RETURNS timestamptz LANGUAGE sql AS $$
  INSERT INTO public.notes (body) VALUES (body);
  SELECT '2023-10-18 12:37:59.611+00'::timestamptz $$;

CREATE FUNCTION api.single_out_param(num int, OUT num_plus_one int) LANGUAGE sql IMMUTABLE AS
  $$ SELECT num + 1 $$;
CREATE FUNCTION api.single_json_out_param(a int, b text, OUT my_json json) LANGUAGE sql IMMUTABLE AS
  $$ SELECT json_build_object('a', a, 'b', b) $$;
CREATE FUNCTION api.single_inout_param(INOUT num int) LANGUAGE sql IMMUTABLE AS $$ SELECT num + 1 $$;
CREATE FUNCTION api.many_inout_params(INOUT num int, INOUT str text, INOUT b bool DEFAULT true)
  LANGUAGE sql IMMUTABLE AS $$ SELECT num, str, b $$;
CREATE FUNCTION api.single_column_table_return() RETURNS TABLE(a text) LANGUAGE sql IMMUTABLE AS
  $$ VALUES ('A'), ('B'), ('C') $$;
CREATE FUNCTION api.numbers(n int) RETURNS SETOF int LANGUAGE sql IMMUTABLE AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION api.plus_one(n int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT n + 1 $$;

CREATE FUNCTION api.variadic_param(VARIADIC v text[] DEFAULT '{}') RETURNS text[] LANGUAGE sql IMMUTABLE AS
  $$ SELECT v $$;
CREATE FUNCTION api.sayhello(name text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'Hello, ' || name $$;
CREATE FUNCTION api.sayhello_variadic(name text, VARIADIC v text[]) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT 'Hello, ' || name $$;
"#;

async fn server_with(tune: impl FnOnce(&mut pgrpc::config::ServeConfig)) -> TestServer {
    TestServer::start_with_sql(FIXTURES, tune).await
}

async fn server() -> TestServer {
    server_with(|_| {}).await
}

/// `POST /rpc/<function>` with a JSON body and headers (repeated names are
/// sent as repeated headers).
async fn post(s: &TestServer, function: &str, body: Value, headers: &[(&str, &str)]) -> Resp {
    let mut req = s
        .http
        .post(s.url(&format!("/rpc/{function}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

async fn get(s: &TestServer, path_and_query: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = s.http.get(s.url(&format!("/rpc/{path_and_query}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

/// The rows in public.notes, read by the superuser (outside any call).
async fn notes(s: &TestServer) -> i64 {
    query_value(
        &s.db.superuser().await,
        "SELECT count(*) FROM public.notes",
        &[],
    )
    .await
}

fn assert_pgrst(r: &Resp, status: u16, code: &str, message: &str, details: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"code": code, "message": message, "details": details, "hint": null}),
        "{}",
        r.text
    );
}

// ---------------------------------------------------------------- handling

/// `handling=strict` refuses unknown preferences with PGRST122, listing
/// them in order from one header or several, and runs nothing.
#[tokio::test]
async fn strict_handling_refuses_unknown_preferences_and_runs_nothing() {
    let s = server().await;
    let r = post(
        &s,
        "add_note",
        json!({"body": "x"}),
        &[("prefer", "handling=strict, anything")],
    )
    .await;
    assert_pgrst(
        &r,
        400,
        "PGRST122",
        "Invalid preferences given with handling=strict",
        Some("Invalid preferences: anything"),
    );
    let r = post(
        &s,
        "add_note",
        json!({"body": "x"}),
        &[("prefer", "handling=strict"), ("prefer", "something, else")],
    )
    .await;
    assert_pgrst(
        &r,
        400,
        "PGRST122",
        "Invalid preferences given with handling=strict",
        Some("Invalid preferences: something, else"),
    );
    // A max-affected that is not a number is invalid too; known table
    // preferences (return, resolution, missing) are not.
    let r = get(
        &s,
        "sayhello?name=x",
        &[(
            "prefer",
            "return=minimal, missing=default, handling=strict, max-affected=many",
        )],
    )
    .await;
    assert_eq!(
        r.body["details"],
        json!("Invalid preferences: max-affected=many"),
        "{}",
        r.text
    );
    assert_eq!(notes(&s).await, 15, "a refused call must not run");
}

/// `handling=lenient` (or no handling at all) ignores unknown preferences;
/// `Preference-Applied` echoes the handling only when one was sent.
#[tokio::test]
async fn lenient_handling_ignores_unknown_preferences() {
    let s = server().await;
    let r = post(
        &s,
        "add_note",
        json!({"body": "x"}),
        &[("prefer", "handling=lenient"), ("prefer", "anything")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("preference-applied"), Some("handling=lenient"));
    let r = get(
        &s,
        "sayhello?name=x",
        &[("prefer", "anything, return=minimal")],
    )
    .await;
    assert_eq!((r.status, r.body.clone()), (200, json!("Hello, x")));
    assert_eq!(r.header("preference-applied"), None);
    let r = get(&s, "sayhello?name=x", &[("prefer", "handling=strict")]).await;
    assert_eq!(r.header("preference-applied"), Some("handling=strict"));
    assert_eq!(notes(&s).await, 16);
}

// ------------------------------------------------------------ max-affected

/// Over `max-affected` (with `handling=strict`), a set-returning call is
/// 400 PGRST124 and its deletes are rolled back; within it, the call
/// commits and `Preference-Applied` lists the limit.
#[tokio::test]
async fn max_affected_refuses_and_rolls_back_a_call_returning_too_many_rows() {
    let s = server().await;
    for f in ["delete_notes_setof", "delete_notes_table"] {
        let r = post(
            &s,
            f,
            json!({}),
            &[("prefer", "handling=strict, max-affected=10")],
        )
        .await;
        assert_pgrst(
            &r,
            400,
            "PGRST124",
            "Query result exceeds max-affected preference constraint",
            Some("The query affects 15 rows"),
        );
        assert_eq!(notes(&s).await, 15, "{f}: the deletes must be rolled back");
    }
    let r = post(
        &s,
        "delete_notes_table",
        json!({}),
        &[("prefer", "handling=strict, max-affected=15")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_array().map(Vec::len), Some(15), "{}", r.text);
    assert_eq!(
        r.body[0],
        json!({"id": 1}),
        "a one-column TABLE gives objects"
    );
    assert_eq!(
        r.header("preference-applied"),
        Some("handling=strict, max-affected=15")
    );
    assert_eq!(notes(&s).await, 0);
}

/// Without `handling=strict`, `max-affected` is ignored (as PostgREST
/// ignores it), and it counts the rows returned after filters.
#[tokio::test]
async fn max_affected_needs_strict_handling_and_counts_the_rows_returned() {
    let s = server().await;
    let r = post(
        &s,
        "delete_notes_setof",
        json!({}),
        &[("prefer", "max-affected=1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("preference-applied"), None);
    assert_eq!(notes(&s).await, 0);
    // GET: a read, counted after the filter.
    let r = get(
        &s,
        "numbers?n=10&select=n:numbers&numbers=gt.7",
        &[("prefer", "handling=strict, max-affected=3")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = get(
        &s,
        "numbers?n=10&numbers=gt.6",
        &[("prefer", "handling=strict, max-affected=3")],
    )
    .await;
    assert_eq!(r.body["code"], json!("PGRST124"), "{}", r.text);
    assert_eq!(r.body["details"], json!("The query affects 4 rows"));
}

/// `max-affected` with `handling=strict` on a function that returns no set
/// (void or a scalar) is 400 PGRST128, before anything runs.
#[tokio::test]
async fn max_affected_on_a_function_returning_no_set_is_pgrst128() {
    let s = server().await;
    for f in ["delete_notes_void", "delete_notes_count"] {
        let r = post(
            &s,
            f,
            json!({}),
            &[("prefer", "handling=strict, max-affected=20")],
        )
        .await;
        assert_pgrst(
            &r,
            400,
            "PGRST128",
            "Function must return SETOF or TABLE when max-affected preference is used with handling=strict",
            None,
        );
    }
    assert_eq!(notes(&s).await, 15);
}

/// A call refused by max-affected stores no `Idempotency-Key` response: the
/// key's claim is rolled back with the call, so a corrected retry runs.
#[tokio::test]
async fn a_call_refused_by_max_affected_stores_no_idempotency_key() {
    let s = server().await;
    let bearer = service_token();
    let call = |max: &'static str| {
        let req = s
            .http
            .post(s.url("/rpc/delete_notes_table"))
            .bearer_auth(&bearer)
            .header("idempotency-key", "purge-1")
            .header("prefer", max);
        send(req)
    };
    let r = call("handling=strict, max-affected=2").await;
    assert_eq!(r.body["code"], json!("PGRST124"), "{}", r.text);
    assert_eq!(notes(&s).await, 15);
    let r = call("handling=strict, max-affected=2").await;
    assert_eq!(
        r.body["code"],
        json!("PGRST124"),
        "not a replay: {}",
        r.text
    );
    assert_eq!(r.header("idempotent-replayed"), None);
    let r = call("handling=strict, max-affected=20").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(notes(&s).await, 0);
    let replay = call("handling=strict, max-affected=20").await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, r.body);
    assert_eq!(
        replay.header("preference-applied"),
        Some("handling=strict, max-affected=20")
    );
}

// ---------------------------------------------------------------------- tx

/// With `PGRPC_TX_END=commit-allow-override`, `tx=rollback` answers the
/// call's result and keeps none of its writes; `tx=commit` keeps them.
#[tokio::test]
async fn tx_rollback_answers_the_result_and_keeps_nothing() {
    let s = server_with(|c| c.tx_end = TxEnd::CommitAllowOverride).await;
    let r = post(
        &s,
        "add_note",
        json!({"body": "gone"}),
        &[("prefer", "tx=rollback")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.as_i64().is_some_and(|id| id > 15), "{}", r.text);
    assert_eq!(r.header("preference-applied"), Some("tx=rollback"));
    assert_eq!(notes(&s).await, 15, "the write must be rolled back");
    let r = post(
        &s,
        "delete_notes_setof",
        json!({}),
        &[("prefer", "tx=rollback, count=exact")],
    )
    .await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(15), "{}", r.text);
    assert_eq!(
        r.header("preference-applied"),
        Some("count=exact, tx=rollback")
    );
    assert_eq!(notes(&s).await, 15);
    let r = post(
        &s,
        "add_note",
        json!({"body": "kept"}),
        &[("prefer", "tx=commit")],
    )
    .await;
    assert_eq!(r.header("preference-applied"), Some("tx=commit"));
    assert_eq!(notes(&s).await, 16);
    let r = post(&s, "add_note", json!({"body": "kept"}), &[]).await;
    assert_eq!((r.status, r.header("preference-applied")), (200, None));
    assert_eq!(notes(&s).await, 17);
}

/// `PGRPC_TX_END` as PostgREST's db-tx-end: without `-allow-override` the
/// `tx` preference is ignored (and not listed as applied); `rollback…`
/// rolls every call back unless an allowed `tx=commit` says otherwise.
#[tokio::test]
async fn tx_end_decides_whether_the_tx_preference_may_override() {
    let s = server().await; // commit
    let r = post(
        &s,
        "add_note",
        json!({"body": "a"}),
        &[("prefer", "tx=rollback")],
    )
    .await;
    assert_eq!((r.status, r.header("preference-applied")), (200, None));
    assert_eq!(
        notes(&s).await,
        16,
        "tx=rollback is not allowed to override"
    );
    let r = post(
        &s,
        "add_note",
        json!({"body": "a"}),
        &[("prefer", "handling=strict, tx=rollback")],
    )
    .await;
    assert_eq!(r.status, 200, "tx is a known preference: {}", r.text);
    assert_eq!(notes(&s).await, 17);

    let s = server_with(|c| c.tx_end = TxEnd::Rollback).await;
    let r = post(
        &s,
        "add_note",
        json!({"body": "a"}),
        &[("prefer", "tx=commit")],
    )
    .await;
    assert_eq!((r.status, r.header("preference-applied")), (200, None));
    assert_eq!(notes(&s).await, 15, "rollback: every call is rolled back");

    let s = server_with(|c| c.tx_end = TxEnd::RollbackAllowOverride).await;
    let r = post(&s, "add_note", json!({"body": "a"}), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(notes(&s).await, 15);
    let r = post(
        &s,
        "add_note",
        json!({"body": "a"}),
        &[("prefer", "tx=commit")],
    )
    .await;
    assert_eq!(r.header("preference-applied"), Some("tx=commit"));
    assert_eq!(notes(&s).await, 16);
}

/// A rolled-back call still checks deferred constraints before answering
/// (as PostgREST's `SET CONSTRAINTS ALL IMMEDIATE`): no success is
/// answered for a call that could not have committed.
#[tokio::test]
async fn tx_rollback_still_reports_a_deferred_constraint_violation() {
    let s = server_with(|c| c.tx_end = TxEnd::CommitAllowOverride).await;
    let r = post(
        &s,
        "twice_once",
        json!({"k": 1}),
        &[("prefer", "tx=rollback")],
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["code"], json!("23505"), "{}", r.text);
}

/// Under `tx=rollback`, an `Idempotency-Key` stores nothing (the claim is
/// rolled back with the call), so the same key later runs for real, once;
/// and since `tx` is part of the request hash, a rollback retry of a key
/// stored by a committed call is refused, never answered by a replay.
#[tokio::test]
async fn tx_rollback_with_an_idempotency_key_stores_nothing() {
    let s = server_with(|c| c.tx_end = TxEnd::CommitAllowOverride).await;
    let bearer = service_token();
    let call = |prefer: Option<&'static str>| {
        let mut req = s
            .http
            .post(s.url("/rpc/add_note"))
            .bearer_auth(&bearer)
            .header("content-type", "application/json")
            .header("idempotency-key", "note-1")
            .body(json!({"body": "once"}).to_string());
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        send(req)
    };
    let first = call(Some("tx=rollback")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let second = call(Some("tx=rollback")).await;
    assert_eq!(
        second.header("idempotent-replayed"),
        None,
        "{}",
        second.text
    );
    assert_ne!(first.body, second.body, "each rolled-back call runs");
    assert_eq!(notes(&s).await, 15);

    let real = call(None).await;
    assert_eq!(
        (real.status, real.header("idempotent-replayed")),
        (200, None)
    );
    assert_eq!(notes(&s).await, 16);
    let replay = call(None).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, real.body);
    let other = call(Some("tx=rollback")).await;
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.error_key(), "idempotency_key_reused");
    assert_eq!(notes(&s).await, 16);
}

// ---------------------------------------------------------------- timezone

/// `timezone=` sets the transaction's TimeZone, so timestamptz results
/// render in it, and is listed as applied; the next call on the same
/// pooled connection is back to the server's zone.
#[tokio::test]
async fn timezone_renders_timestamps_in_that_zone_for_that_call_only() {
    let s = server_with(|c| c.pool_size = 1).await;
    let r = get(&s, "stamps", &[("prefer", "timezone=America/Los_Angeles")]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!([{"t": "2023-10-18T05:37:59.611-07:00"}, {"t": "2023-10-18T07:37:59.611-07:00"}])
    );
    assert_eq!(
        r.header("preference-applied"),
        Some("timezone=America/Los_Angeles")
    );
    let r = get(&s, "stamps", &[]).await;
    assert_eq!(
        r.body[0],
        json!({"t": "2023-10-18T12:37:59.611+00:00"}),
        "{}",
        r.text
    );
    let r = get(
        &s,
        "stamps",
        &[("prefer", "handling=strict, timezone=Asia/Kolkata")],
    )
    .await;
    assert_eq!(
        r.body[0],
        json!({"t": "2023-10-18T18:07:59.611+05:30"}),
        "{}",
        r.text
    );
    assert_eq!(
        r.header("preference-applied"),
        Some("handling=strict, timezone=Asia/Kolkata")
    );
    // On POST, through the stepwise path (with a count), too.
    let r = post(
        &s,
        "stamp_note",
        json!({"body": "t"}),
        &[("prefer", "timezone=Asia/Tokyo, count=exact")],
    )
    .await;
    assert_eq!(r.body, json!("2023-10-18T21:37:59.611+09:00"), "{}", r.text);
    assert_eq!(
        r.header("preference-applied"),
        Some("count=exact, timezone=Asia/Tokyo")
    );
}

/// A zone PostgreSQL does not know is ignored under lenient handling (no
/// `Preference-Applied`) and is PGRST122 under strict handling.
#[tokio::test]
async fn an_unknown_timezone_is_ignored_or_refused_by_handling() {
    let s = server().await;
    let r = get(&s, "stamps", &[("prefer", "timezone=Jupiter/Red_Spot")]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body[0], json!({"t": "2023-10-18T12:37:59.611+00:00"}));
    assert_eq!(r.header("preference-applied"), None);
    let r = get(
        &s,
        "stamps",
        &[("prefer", "handling=strict, timezone=Jupiter/Red_Spot")],
    )
    .await;
    assert_pgrst(
        &r,
        400,
        "PGRST122",
        "Invalid preferences given with handling=strict",
        Some("Invalid preferences: timezone=Jupiter/Red_Spot"),
    );
    // A value that is SQL, not a zone, is only ever a bound value.
    let r = get(
        &s,
        "stamps",
        &[("prefer", "timezone='; DROP TABLE public.notes; --")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(notes(&s).await, 15);
}

/// The request hash of an `Idempotency-Key` covers the time zone: a retry
/// asking for another zone is refused rather than replayed in the first.
#[tokio::test]
async fn an_idempotent_retry_in_another_timezone_is_refused() {
    let s = server().await;
    let bearer = service_token();
    let call = |tz: &'static str| {
        send(
            s.http
                .post(s.url("/rpc/stamp_note"))
                .bearer_auth(&bearer)
                .header("content-type", "application/json")
                .header("idempotency-key", "stamp-1")
                .header("prefer", tz)
                .body(json!({"body": "t"}).to_string()),
        )
    };
    let first = call("timezone=Asia/Tokyo").await;
    assert_eq!(
        first.body,
        json!("2023-10-18T21:37:59.611+09:00"),
        "{}",
        first.text
    );
    let replay = call("timezone=Asia/Tokyo").await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        replay.header("preference-applied"),
        Some("timezone=Asia/Tokyo")
    );
    let other = call("timezone=UTC").await;
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(notes(&s).await, 16);
}

// ------------------------------------------------------------ result shapes

/// A single OUT or INOUT parameter gives an object keyed by it, as
/// PostgREST answers; several give an object of all; a single-column TABLE
/// gives an array of objects, while SETOF int and int stay bare.
#[tokio::test]
async fn out_params_and_table_columns_name_the_result() {
    let s = server().await;
    let cases: &[(&str, Value)] = &[
        ("single_out_param?num=5", json!({"num_plus_one": 6})),
        (
            "single_json_out_param?a=1&b=two",
            json!({"my_json": {"a": 1, "b": "two"}}),
        ),
        ("single_inout_param?num=2", json!({"num": 3})),
        (
            "many_inout_params?num=1&str=two",
            json!({"num": 1, "str": "two", "b": true}),
        ),
        (
            "single_column_table_return",
            json!([{"a": "A"}, {"a": "B"}, {"a": "C"}]),
        ),
        ("numbers?n=3", json!([1, 2, 3])),
        ("plus_one?n=1", json!(2)),
    ];
    for (path, want) in cases {
        let r = get(&s, path, &[]).await;
        assert_eq!((r.status, &r.body), (200, want), "{path}: {}", r.text);
    }
    let r = post(&s, "single_out_param", json!({"num": 41}), &[]).await;
    assert_eq!(r.body, json!({"num_plus_one": 42}), "{}", r.text);
    let r = post(&s, "single_column_table_return", json!({}), &[]).await;
    assert_eq!(
        r.body,
        json!([{"a": "A"}, {"a": "B"}, {"a": "C"}]),
        "{}",
        r.text
    );
    let r = get(
        &s,
        "single_column_table_return",
        &[("accept", "application/vnd.pgrst.object+json")],
    )
    .await;
    assert_eq!(r.status, 406, "three rows are not one object: {}", r.text);
}

/// Query-string operations keep working on these shapes: filters, order,
/// select with renames, limit, and a singular response after a filter.
#[tokio::test]
async fn query_ops_work_on_out_param_and_one_column_table_results() {
    let s = server().await;
    let cases: &[(&str, Value)] = &[
        ("single_column_table_return?a=eq.B", json!([{"a": "B"}])),
        (
            "single_column_table_return?order=a.desc&limit=2",
            json!([{"a": "C"}, {"a": "B"}]),
        ),
        (
            "single_column_table_return?select=x:a&a=in.(A,C)",
            json!([{"x": "A"}, {"x": "C"}]),
        ),
        (
            "single_out_param?num=5&select=n:num_plus_one",
            json!({"n": 6}),
        ),
        ("numbers?n=5&numbers=gt.3", json!([4, 5])),
    ];
    for (path, want) in cases {
        let r = get(&s, path, &[]).await;
        assert_eq!((r.status, &r.body), (200, want), "{path}: {}", r.text);
    }
    let r = get(
        &s,
        "single_column_table_return?a=eq.C",
        &[("accept", "application/vnd.pgrst.object+json")],
    )
    .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"a": "C"})),
        "{}",
        r.text
    );
    let r = get(&s, "single_column_table_return?nope=eq.1", &[]).await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "42703".to_string()),
        "{}",
        r.text
    );
}

// ---------------------------------------------------------------- variadic

/// Repeated query parameters fill a VARIADIC parameter on GET, and repeated
/// form fields on POST; a JSON array still works; any other repeated
/// parameter keeps its last value.
#[tokio::test]
async fn repeated_parameters_fill_a_variadic_argument() {
    let s = server().await;
    let cases: &[(&str, Value)] = &[
        ("variadic_param", json!([])),
        ("variadic_param?v=hi", json!(["hi"])),
        ("variadic_param?v=hi&v=there", json!(["hi", "there"])),
        ("variadic_param?v=a,b&v={c}", json!(["a,b", "{c}"])),
        ("sayhello?name=ignored&name=world", json!("Hello, world")),
        (
            "sayhello_variadic?name=ignored&name=world&v=unused",
            json!("Hello, world"),
        ),
    ];
    for (path, want) in cases {
        let r = get(&s, path, &[]).await;
        assert_eq!((r.status, &r.body), (200, want), "{path}: {}", r.text);
    }
    let r = post(
        &s,
        "variadic_param",
        json!({"v": ["hi", "hello", "there"]}),
        &[],
    )
    .await;
    assert_eq!(r.body, json!(["hi", "hello", "there"]), "{}", r.text);
    for (form, want) in [
        ("", json!([])),
        ("v=hi", json!(["hi"])),
        ("v=hi&v=there", json!(["hi", "there"])),
    ] {
        let r = send(
            s.http
                .post(s.url("/rpc/variadic_param"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form),
        )
        .await;
        assert_eq!((r.status, &r.body), (200, &want), "{form}: {}", r.text);
    }
    // A filter on the result is not an argument, even when repeated.
    let r = get(&s, "numbers?n=5&n=6&numbers=gt.4&numbers=lt.6", &[]).await;
    assert_eq!(r.body, json!([5]), "{}", r.text);
}
