//! The PostgREST-compatible RPC contract of SPEC §2.2, through real HTTP
//! against the proxy started in-process.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, send, service_token, token, TestDb, TestServer};

/// Test-only functions covering every result shape and error path.
const FIXTURES: &str = r#"
CREATE TABLE public.hits (id serial PRIMARY KEY, note text NOT NULL);
GRANT SELECT, INSERT ON public.hits TO pgrpc_anon, pgrpc_user, pgrpc_service;
GRANT USAGE ON SEQUENCE public.hits_id_seq TO pgrpc_anon, pgrpc_user, pgrpc_service;
CREATE TYPE public.pair AS (a int, b text);

CREATE FUNCTION api.add(a int, b int DEFAULT 10) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT a + b $$;
CREATE FUNCTION api.echo_text(t text) RETURNS text LANGUAGE sql STABLE AS $$ SELECT t $$;
CREATE FUNCTION api.make_pair(a int, b text) RETURNS public.pair LANGUAGE sql STABLE AS $$ SELECT (a, b)::public.pair $$;
CREATE FUNCTION api.out_params(x int, OUT doubled int, OUT label text) LANGUAGE sql STABLE AS $$ SELECT x * 2, 'n' || x $$;
CREATE FUNCTION api.series(n int) RETURNS SETOF int LANGUAGE sql STABLE AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION api.table_rows(n int) RETURNS TABLE(i int, sq int) LANGUAGE sql STABLE AS $$ SELECT g, g * g FROM generate_series(1, n) g $$;
CREATE FUNCTION api.nothing() RETURNS void LANGUAGE sql VOLATILE AS $$ SELECT $$;
CREATE FUNCTION api.null_value() RETURNS text LANGUAGE sql STABLE AS $$ SELECT NULL::text $$;
CREATE FUNCTION api.whole_body(jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$ SELECT jsonb_build_object('got', $1) $$;
CREATE FUNCTION api.hit(note text) RETURNS int LANGUAGE sql VOLATILE AS $$ INSERT INTO public.hits (note) VALUES (note) RETURNING id $$;
CREATE FUNCTION api.hit_twice(note text) RETURNS SETOF int LANGUAGE sql VOLATILE AS $$
  INSERT INTO public.hits (note) VALUES (note), (note) RETURNING id $$;
CREATE FUNCTION api.hit_count() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM public.hits $$;
CREATE FUNCTION api.ambiguous(x int) RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'int' $$;
CREATE FUNCTION api.ambiguous(x text) RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'text' $$;
CREATE FUNCTION api.fail_with(state text) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RAISE SQLSTATE 'P0001' USING MESSAGE = 'placeholder' ;
END $$;
CREATE OR REPLACE FUNCTION api.fail_with(state text) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  EXECUTE format('DO $d$ BEGIN RAISE SQLSTATE %L USING MESSAGE = %L, DETAIL = %L, HINT = %L; END $d$',
                 state, 'failed with ' || state, 'some detail', 'some hint');
END $$;
CREATE FUNCTION api.teapot() RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RAISE SQLSTATE 'PGRST' USING
    MESSAGE = '{"code":"tea_time","message":"I am a teapot","details":"short and stout","hint":"brew"}',
    DETAIL = '{"status":418,"headers":{"X-Brew":"earl-grey","Retry-After":"7"}}';
END $$;
CREATE FUNCTION api.created() RETURNS text LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM set_config('response.status', '201', true);
  PERFORM set_config('response.headers', '[{"Location":"/things/1"},{"X-Extra":"yes"}]', true);
  RETURN 'made';
END $$;
CREATE FUNCTION api.whoami() RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'user', current_user,
    'claims', current_setting('request.jwt.claims', true)::jsonb,
    'method', current_setting('request.method', true),
    'path', current_setting('request.path', true),
    'headers', current_setting('request.headers', true)::jsonb) $$;
CREATE FUNCTION api.service_only() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'secret' $$;
REVOKE EXECUTE ON FUNCTION api.service_only() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.service_only() TO pgrpc_service;
CREATE FUNCTION api.tx_read_only(a int) RETURNS text LANGUAGE sql VOLATILE AS $$ SELECT current_setting('transaction_read_only') || ':' || a $$;
CREATE FUNCTION api.slow(seconds float8) RETURNS text LANGUAGE sql VOLATILE AS $$ SELECT pg_sleep(seconds)::text || 'done' $$;
COMMENT ON FUNCTION api.add(int, int) IS 'Adds two numbers.

b defaults to 10.';
"#;

/// A server whose database also holds the fixture functions.
async fn fixture_server() -> TestServer {
    fixture_server_with(|_| {}).await
}

async fn fixture_server_with(tune: impl FnOnce(&mut pgrpc::config::ServeConfig)) -> TestServer {
    TestServer::start_with_sql(FIXTURES, tune).await
}

fn anon() -> Option<&'static str> {
    None
}

/// A JSON object body calls the function with named arguments; defaults fill the rest.
#[tokio::test]
async fn post_calls_the_function_with_named_arguments() {
    let s = fixture_server().await;
    let r = s.rpc("add", anon(), json!({"a": 1, "b": 2})).await;
    assert_eq!((r.status, r.body.clone()), (200, json!(3)), "{}", r.text);
    let r = s.rpc("add", anon(), json!({"a": 1})).await;
    assert_eq!(r.body, json!(11));
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
}

/// No Content-Type counts as JSON, an empty body as {}, an array body uses its first element.
#[tokio::test]
async fn body_forms_follow_postgrest() {
    let s = fixture_server().await;
    let r = send(s.http.post(s.url("/rpc/version"))).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!("0.1.0")),
        "{}",
        r.text
    );
    let r = send(s.http.post(s.url("/rpc/add")).body(r#"{"a": 5}"#)).await;
    assert_eq!(r.body, json!(15), "{}", r.text);
    let r = send(
        s.http
            .post(s.url("/rpc/add"))
            .header("content-type", "application/json")
            .body(r#"[{"a": 1, "b": 1}, {"a": 100, "b": 100}]"#),
    )
    .await;
    assert_eq!(r.body, json!(2), "{}", r.text);
    let r = send(
        s.http
            .post(s.url("/rpc/add"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=4&b=4"),
    )
    .await;
    assert_eq!(r.body, json!(8), "{}", r.text);
}

/// GET passes query parameters, runs read-only, and a repeated parameter keeps its last value.
#[tokio::test]
async fn get_runs_stable_functions_with_query_arguments() {
    let s = fixture_server().await;
    let r = s
        .rpc_get("add", anon(), &[("a", "1"), ("a", "7"), ("b", "3")])
        .await;
    assert_eq!((r.status, r.body.clone()), (200, json!(10)), "{}", r.text);
    let head = send(s.http.head(s.url("/rpc/add?a=1"))).await;
    assert_eq!(head.status, 200);
    assert!(head.text.is_empty());
    // Read-only even for a VOLATILE function, which POST runs read-write.
    let get = s.rpc_get("tx_read_only", anon(), &[("a", "5")]).await;
    assert_eq!((get.status, get.body), (200, json!("on:5")), "{}", get.text);
    let post = s.rpc("tx_read_only", anon(), json!({"a": 6})).await;
    assert_eq!(
        (post.status, post.body),
        (200, json!("off:6")),
        "{}",
        post.text
    );
}

/// A function that writes, called by GET, fails with 405 and SQLSTATE 25006, and writes nothing.
#[tokio::test]
async fn get_of_a_writing_function_is_405_and_writes_nothing() {
    let s = fixture_server().await;
    let r = s.rpc_get("hit", anon(), &[("note", "x")]).await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.error_code(), "25006");
    let count = s.rpc_get("hit_count", anon(), &[]).await;
    assert_eq!(count.body, json!(0));
}

/// Result shapes: scalar, composite, OUT parameters, SETOF, TABLE, void and NULL.
#[tokio::test]
async fn results_are_shaped_by_the_return_type() {
    let s = fixture_server().await;
    let cases: Vec<(&str, Value, u16, Value)> = vec![
        ("echo_text", json!({"t": "hi"}), 200, json!("hi")),
        (
            "make_pair",
            json!({"a": 1, "b": "x"}),
            200,
            json!({"a": 1, "b": "x"}),
        ),
        (
            "out_params",
            json!({"x": 4}),
            200,
            json!({"doubled": 8, "label": "n4"}),
        ),
        ("series", json!({"n": 3}), 200, json!([1, 2, 3])),
        ("series", json!({"n": 0}), 200, json!([])),
        (
            "table_rows",
            json!({"n": 2}),
            200,
            json!([{"i": 1, "sq": 1}, {"i": 2, "sq": 4}]),
        ),
        ("null_value", json!({}), 200, Value::Null),
    ];
    for (f, body, status, want) in cases {
        let r = s.rpc(f, anon(), body).await;
        assert_eq!((r.status, &r.body), (status, &want), "{f}: {}", r.text);
    }
    let r = s.rpc("null_value", anon(), json!({})).await;
    assert_eq!(r.text, "null");
    let r = s.rpc("nothing", anon(), json!({})).await;
    assert_eq!(r.status, 204);
    assert!(r.text.is_empty());
}

/// A single unnamed json/jsonb parameter receives the whole body.
#[tokio::test]
async fn single_unnamed_json_parameter_receives_the_whole_body() {
    let s = fixture_server().await;
    let r = s
        .rpc(
            "whole_body",
            anon(),
            json!({"anything": [1, 2], "goes": true}),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"got": {"anything": [1, 2], "goes": true}}),
        "{}",
        r.text
    );
}

/// Unknown functions and unknown arguments are 404 PGRST202 with a hint; ambiguity is 300 PGRST203.
#[tokio::test]
async fn function_resolution_errors() {
    let s = fixture_server().await;
    let r = s.rpc("ad", anon(), json!({"a": 1})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "PGRST202");
    assert!(
        r.body["hint"].as_str().unwrap_or("").contains("api.add"),
        "{}",
        r.text
    );
    let r = s.rpc("add", anon(), json!({"a": 1, "zzz": 2})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "PGRST202");
    let r = s.rpc("add", anon(), json!({"b": 1})).await;
    assert_eq!(r.status, 404, "a missing required argument does not match");
    let r = s.rpc("ambiguous", anon(), json!({"x": "1"})).await;
    assert_eq!(r.status, 300, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST203");
}

/// Accept: application/vnd.pgrst.object+json gives one object, or 406 PGRST116 and a rollback.
#[tokio::test]
async fn singular_accept_requires_exactly_one_row() {
    let s = fixture_server().await;
    let one = send(
        s.http
            .post(s.url("/rpc/table_rows"))
            .header("accept", "application/vnd.pgrst.object+json")
            .json(&json!({"n": 1})),
    )
    .await;
    assert_eq!(
        (one.status, one.body.clone()),
        (200, json!({"i": 1, "sq": 1})),
        "{}",
        one.text
    );
    let two = send(
        s.http
            .post(s.url("/rpc/hit_twice"))
            .header("accept", "application/vnd.pgrst.object+json")
            .json(&json!({"note": "n"})),
    )
    .await;
    assert_eq!(two.status, 406, "{}", two.text);
    assert_eq!(two.error_code(), "PGRST116");
    let count = s.rpc_get("hit_count", anon(), &[]).await;
    assert_eq!(count.body, json!(0), "the 406 rolled the inserts back");
    let none = send(
        s.http
            .get(s.url("/rpc/series?n=0"))
            .header("accept", "application/vnd.pgrst.object+json"),
    )
    .await;
    assert_eq!(none.status, 406);
    let bad = send(
        s.http
            .get(s.url("/rpc/series?n=1"))
            .header("accept", "text/html"),
    )
    .await;
    assert_eq!(bad.status, 406);
    assert_eq!(bad.error_code(), "PGRST107");
}

/// OPTIONS answers with Allow, which lists GET and HEAD for every function
/// (a VOLATILE one runs READ ONLY under them), as the OpenAPI at `/` does;
/// any other method is 405 PGRST101.
#[tokio::test]
async fn options_and_unsupported_methods() {
    let s = fixture_server().await;
    let r = send(s.http.request(reqwest::Method::OPTIONS, s.url("/rpc/add"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("allow"), Some("OPTIONS,GET,HEAD,POST"));
    let r = send(s.http.request(reqwest::Method::OPTIONS, s.url("/rpc/hit"))).await;
    assert_eq!(r.header("allow"), Some("OPTIONS,GET,HEAD,POST"));
    for m in [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let r = send(s.http.request(m.clone(), s.url("/rpc/add"))).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.error_code(), "PGRST101");
    }
}

/// Every SQLSTATE row of SPEC §2.2 item 7 maps to its status, with all four error keys.
#[tokio::test]
async fn sqlstates_map_to_http_statuses() {
    let s = fixture_server().await;
    let cases = [
        ("23505", 409),
        ("23503", 409),
        ("25006", 405),
        ("P0001", 400),
        ("42883", 404),
        ("42P01", 404),
        ("42501", 403),
        ("08006", 503),
        ("53300", 503),
        ("53400", 500),
        ("57P01", 503),
        // The server restarting or starting up, as in a failover: 503 (pgrpc's
        // addition to PostgREST's map, docs/cluster.md).
        ("57P02", 503),
        ("57P03", 503),
        ("57P04", 500),
        ("PT402", 402),
        ("PT429", 429),
        ("40001", 500),
        // Too deep or too large input (issue 18): a 400, as the client
        // sent it (docs/limits.md), not a server fault.
        ("54000", 400),
        ("55P03", 500),
        ("57014", 500),
        ("XX000", 500),
        ("22023", 400),
        ("23502", 400),
        ("23514", 400),
    ];
    let svc = service_token();
    for (state, status) in cases {
        let r = s
            .rpc("fail_with", Some(&svc), json!({"state": state}))
            .await;
        assert_eq!(r.status, status, "{state}: {}", r.text);
        assert_eq!(r.error_code(), state);
        assert_eq!(r.body["message"], json!(format!("failed with {state}")));
        assert_eq!(r.body["details"], json!("some detail"));
        assert_eq!(r.body["hint"], json!("some hint"));
        assert!(r
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json"));
        if status == 503 {
            assert!(
                r.header("retry-after").is_some(),
                "{state} carries Retry-After"
            );
        }
    }
    // 42501 is 401 for the anonymous role.
    let r = s.rpc("fail_with", anon(), json!({"state": "42501"})).await;
    assert_eq!(r.status, 401);
    let r = s.rpc("service_only", anon(), json!({})).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let user = token(json!({"role": "pgrpc_user", "sub": "u"}));
    let r = s.rpc("service_only", Some(&user), json!({})).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.rpc("service_only", Some(&svc), json!({})).await;
    assert_eq!(r.body, json!("secret"));
}

/// RAISE SQLSTATE 'PGRST' and the response.status / response.headers settings shape the response.
#[tokio::test]
async fn database_sets_status_and_headers() {
    let s = fixture_server().await;
    let r = s.rpc("teapot", anon(), json!({})).await;
    assert_eq!(r.status, 418, "{}", r.text);
    assert_eq!(r.error_code(), "tea_time");
    assert_eq!(r.body["message"], "I am a teapot");
    assert_eq!(r.header("x-brew"), Some("earl-grey"));
    assert_eq!(r.header("retry-after"), Some("7"));
    let r = s.rpc("created", anon(), json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("location"), Some("/things/1"));
    assert_eq!(r.header("x-extra"), Some("yes"));
    assert_eq!(r.body, json!("made"));
}

/// A valid token switches the role and exposes its claims and the request settings.
#[tokio::test]
async fn jwt_selects_the_role_and_exposes_claims() {
    let s = fixture_server().await;
    let t = token(json!({"role": "pgrpc_user", "sub": "u-1", "org_id": "o", "email": "a@b.c"}));
    let r = send(
        s.http
            .post(s.url("/rpc/whoami"))
            .bearer_auth(&t)
            .header("X-Custom-Thing", "Value-1")
            .json(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"], "pgrpc_user");
    assert_eq!(r.body["claims"]["sub"], "u-1");
    assert_eq!(r.body["method"], "POST");
    assert_eq!(r.body["path"], "/rpc/whoami");
    assert_eq!(r.body["headers"]["x-custom-thing"], "Value-1");
    let anon = s.rpc("whoami", anon(), json!({})).await;
    assert_eq!(anon.body["user"], "pgrpc_anon");
}

/// Malformed, expired, wrongly signed and foreign-role bearer tokens get 401, and nothing runs.
#[tokio::test]
async fn bad_tokens_get_401_and_nothing_runs() {
    let s = fixture_server().await;
    let now = chrono::Utc::now().timestamp();
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"role": "pgrpc_service", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the-secret"),
    )
    .expect("sign");
    let none_alg = {
        use base64_like::encode;
        format!(
            "{}.{}.",
            encode(br#"{"alg":"none","typ":"JWT"}"#),
            encode(br#"{"role":"pgrpc_service"}"#)
        )
    };
    let cases = vec![
        ("Bearer".to_string(), "PGRST301"),
        ("Bearer ".to_string(), "PGRST301"),
        ("Bearer garbage".to_string(), "PGRST301"),
        ("Bearer a.b.c".to_string(), "PGRST301"),
        (format!("Bearer {wrong_key}"), "PGRST301"),
        (format!("Bearer {none_alg}"), "PGRST301"),
        (
            format!(
                "Bearer {}",
                token(json!({"role": "pgrpc_service", "exp": now - 120}))
            ),
            "PGRST303",
        ),
        (
            format!("Bearer {}", token(json!({"role": "postgres"}))),
            "PGRST303",
        ),
        (
            format!("Bearer {}", token(json!({"role": "pgrpc_owner"}))),
            "PGRST303",
        ),
        (
            format!("Bearer {}", token(json!({"role": "pgrpc_admin"}))),
            "PGRST303",
        ),
        (
            format!("Bearer {}", token(json!({"role": "no_such_role"}))),
            "PGRST303",
        ),
        (format!("Bearer {}", token(json!({"role": 42}))), "PGRST303"),
    ];
    for (header, code) in cases {
        let r = send(
            s.http
                .post(s.url("/rpc/hit"))
                .header("authorization", &header)
                .json(&json!({"note": "should not run"})),
        )
        .await;
        assert_eq!(r.status, 401, "{header}: {}", r.text);
        assert_eq!(r.error_code(), code, "{header}");
        assert!(
            r.header("www-authenticate")
                .unwrap_or("")
                .starts_with("Bearer"),
            "{header}"
        );
    }
    // Within the 30 s leeway a just-expired token still works.
    let fresh = token(json!({"role": "pgrpc_service", "exp": now - 5}));
    let r = s.rpc("version", Some(&fresh), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let count = s.rpc_get("hit_count", anon(), &[]).await;
    assert_eq!(count.body, json!(0), "no refused request ran");
}

/// Minimal base64url for building an unsigned token in the test.
mod base64_like {
    pub fn encode(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

/// Accept-Profile and Content-Profile pick among the exposed schemas; others are 406 PGRST106.
#[tokio::test]
async fn profiles_pick_the_schema() {
    let db = TestDb::new().await;
    db.superuser()
        .await
        .batch_execute(
            "CREATE SCHEMA api2;
             GRANT USAGE ON SCHEMA api2 TO pgrpc_anon, pgrpc_authenticator;
             CREATE FUNCTION api2.version() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'two' $$;",
        )
        .await
        .expect("second schema");
    let s = TestServer::start_on(db, |c| c.schemas = vec!["api".into(), "api2".into()]).await;
    let r = send(
        s.http
            .get(s.url("/rpc/version"))
            .header("accept-profile", "api2"),
    )
    .await;
    assert_eq!(r.body, json!("two"), "{}", r.text);
    assert_eq!(r.header("content-profile"), Some("api2"));
    let r = send(
        s.http
            .post(s.url("/rpc/version"))
            .header("content-profile", "api2"),
    )
    .await;
    assert_eq!(r.body, json!("two"));
    let r = send(s.http.get(s.url("/rpc/version"))).await;
    assert_eq!(r.body, json!("0.1.0"));
    let r = send(
        s.http
            .get(s.url("/rpc/version"))
            .header("accept-profile", "private"),
    )
    .await;
    assert_eq!(r.status, 406);
    assert_eq!(r.error_code(), "PGRST106");
}

/// NOTIFY pgrst, 'reload schema' makes a new function callable without a restart.
#[tokio::test]
async fn notify_reloads_the_function_cache() {
    let s = TestServer::start().await;
    let before = s.rpc("brand_new", anon(), json!({})).await;
    assert_eq!(before.status, 404);
    s.db.superuser()
        .await
        .batch_execute(
            "CREATE FUNCTION api.brand_new() RETURNS int LANGUAGE sql STABLE AS $$ SELECT 7 $$",
        )
        .await
        .expect("create");
    s.reload_and_wait("brand_new").await;
    let after = s.rpc("brand_new", anon(), json!({})).await;
    assert_eq!((after.status, after.body), (200, json!(7)));
}

/// /live answers at once; /ready is 503 while the database is unreachable, and RPC is 503 PGRST002 with Retry-After.
#[tokio::test]
async fn health_endpoints_follow_the_database() {
    let s = TestServer::start().await;
    assert_eq!(send(s.http.get(s.url("/live"))).await.status, 200);
    assert_eq!(send(s.http.get(s.url("/ready"))).await.status, 200);

    // A server pointed at a port where nothing listens.
    let dead =
        TestServer::start_on_unready("postgresql://pgrpc_authenticator:x@127.0.0.1:1/none").await;
    assert_eq!(send(dead.http.get(dead.url("/live"))).await.status, 200);
    let ready = send(dead.http.get(dead.url("/ready"))).await;
    assert_eq!(ready.status, 503);
    let r = dead.rpc("version", anon(), json!({})).await;
    assert_eq!(r.status, 503, "{}", r.text);
    // The function cache could never be loaded: PostgREST's PGRST002.
    assert_eq!(r.error_code(), "PGRST002", "{}", r.text);
    assert!(r.header("retry-after").is_some());
}

/// A body over the limit is 413 with the error body.
#[tokio::test]
async fn oversized_bodies_are_413() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 1024).await;
    let big = json!({"name": "x".repeat(4096)}).to_string();
    let r = send(s.http.post(s.url("/rpc/version")).body(big)).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.error_code(), "PGRPC413", "{}", r.text);
}

/// Waiting on an exhausted pool past its timeout is 504 PGRST003.
#[tokio::test]
async fn pool_exhaustion_is_504() {
    let s = fixture_server_with(|c| {
        c.pool_size = 1;
        c.pool_timeout = Duration::from_millis(200);
    })
    .await;
    let slow = s.rpc("slow", anon(), json!({"seconds": 1.5}));
    let quick = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.rpc("version", anon(), json!({})).await
    };
    let (slow, quick) = tokio::join!(slow, quick);
    assert_eq!(slow.status, 200, "{}", slow.text);
    assert_eq!(quick.status, 504, "{}", quick.text);
    assert_eq!(quick.error_code(), "PGRST003");
}

/// Losing the database gives 503 with Retry-After, and the proxy recovers by itself.
#[tokio::test]
async fn database_outage_is_503_and_recovers() {
    let db = TestDb::new().await;
    let gate = support::Gate::start(&db).await;
    let url = gate.authenticator_url(&db);
    let s = TestServer::start_on_url(db, url, |c| c.pool_size = 2).await;
    assert_eq!(s.rpc("version", anon(), json!({})).await.status, 200);
    gate.close().await;
    let mut saw_503 = false;
    for _ in 0..5 {
        let r = s.rpc("version", anon(), json!({})).await;
        if r.status == 503 {
            assert!(r.header("retry-after").is_some());
            assert!(r.body.get("code").is_some());
            saw_503 = true;
            break;
        }
    }
    assert!(saw_503, "an outage must be answered with 503");
    gate.open().await;
    let mut recovered = false;
    for _ in 0..100 {
        if s.rpc("version", anon(), json!({})).await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the proxy recovers once the database is back");
    s.wait_ready().await;
}

/// On shutdown, an in-flight request still completes before the server exits.
#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let s = fixture_server().await;
    let http = s.http.clone();
    let url = s.url("/rpc/slow");
    let inflight =
        tokio::spawn(async move { send(http.post(url).json(&json!({"seconds": 0.8}))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = s.base_url.clone();
    tokio::time::timeout(Duration::from_secs(10), s.stop())
        .await
        .expect("server stops after draining");
    let r = inflight.await.expect("request task");
    assert_eq!((r.status, r.body), (200, json!("done")));
    assert!(
        reqwest::get(format!("{base}/live")).await.is_err(),
        "no longer accepting"
    );
}

/// Malformed JSON, wrong types, hostile names and garbage never give a 500.
#[tokio::test]
async fn bad_input_never_gives_a_500() {
    let s = fixture_server().await;
    let posts: Vec<(&str, &str, u16)> = vec![
        ("/rpc/add", "{", 400),
        ("/rpc/add", r#"{"a": "not a number"}"#, 400),
        ("/rpc/add", r#"{"a": 99999999999999999999}"#, 400),
        ("/rpc/add", r#"{"a": [1,2]}"#, 400),
        ("/rpc/add", r#"{"a": {"x": 1}}"#, 400),
        ("/rpc/add", "\"just a string\"", 400),
        ("/rpc/add", "[1, 2]", 400),
        ("/rpc/echo_text", r#"{"t": "nul \u0000 byte"}"#, 400),
        ("/rpc/add", "\u{0}\u{1}\u{2}", 400),
        ("/rpc/version;drop%20table%20x", "{}", 404),
        ("/rpc/%22version%22", "{}", 404),
        ("/rpc/..%2F..%2Fetc%2Fpasswd", "{}", 404),
        ("/rpc/pg_sleep", r#"{"x": 10}"#, 404),
        ("/rpc/", "{}", 404),
        ("/nope", "{}", 404),
    ];
    for (path, body, status) in posts {
        let r = send(
            s.http
                .post(s.url(path))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await;
        assert_eq!(r.status, status, "{path} {body:?}: {}", r.text);
        r.error_code();
    }
    let long = format!("/rpc/{}", "a".repeat(5000));
    let r = send(s.http.post(s.url(&long))).await;
    assert!(r.status >= 400 && r.status < 500, "long name: {}", r.status);
    let r = send(
        s.http
            .post(s.url("/rpc/add"))
            .header("content-type", "image/png")
            .body("<a/>"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "PGRST102");
    let r = send(s.http.get(s.url("/rpc/add?a=%FF%FE"))).await;
    assert!(r.status >= 400 && r.status < 500, "{}", r.text);
}

/// Responses echo X-Request-Id; /metrics counts requests; / describes the functions.
#[tokio::test]
async fn request_ids_metrics_and_openapi() {
    let s = fixture_server().await;
    let r = send(
        s.http
            .post(s.url("/rpc/version"))
            .header("x-request-id", "abc-123"),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r = send(s.http.post(s.url("/rpc/version"))).await;
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
    let m = send(s.http.get(s.url("/metrics"))).await;
    assert_eq!(m.status, 200);
    assert!(
        m.text
            .contains(r#"pgrpc_requests_total{function="version",status="200"} 2"#),
        "{}",
        m.text
    );
    assert!(m.text.contains("pgrpc_request_duration_seconds_bucket"));
    assert!(m.text.contains("pgrpc_pool_connections{state=\"max\"}"));
    let doc = send(s.http.get(s.url("/"))).await;
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.body["paths"]["/rpc/add"]["post"]["summary"],
        "Adds two numbers."
    );
    assert_eq!(
        doc.body["paths"]["/rpc/add"]["post"]["description"],
        "b defaults to 10."
    );
    assert!(doc.body["paths"]["/rpc/add"].get("get").is_some());
    // GET serves a VOLATILE function too (READ ONLY), so it is described,
    // with the 405 a write gets.
    let hit = &doc.body["paths"]["/rpc/hit"]["get"];
    assert!(
        hit["description"]
            .as_str()
            .is_some_and(|d| d.contains("25006")),
        "{hit}"
    );
    assert!(hit["responses"].get("405").is_some(), "{hit}");
}

/// `pgrpc migrate` applies everything once, then nothing; a second database in the cluster migrates too.
#[tokio::test]
async fn migrate_is_idempotent_and_roles_are_cluster_safe() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let name = format!("{}_fresh", db.name);
    su.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create");
    let url = db
        .url()
        .replace(&format!("/{}", db.name), &format!("/{name}"));
    let bin = env!("CARGO_BIN_EXE_pgrpc");
    let first = std::process::Command::new(bin)
        .args(["migrate", "--database-url", &url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run migrate");
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(out.contains("applied V1__roles_schemas_settings"), "{out}");
    let second = std::process::Command::new(bin)
        .args(["migrate", "--database-url", &url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run migrate");
    let out2 = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(second.status.success());
    assert!(out2.contains("nothing to apply"), "{out2}");
    assert!(!out2.contains("applied V"), "{out2}");
}
