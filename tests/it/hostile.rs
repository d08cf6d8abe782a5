//! Attacks on the proxy from the outside (issue: integrity holes found by an
//! attack review): clients that vanish mid-call, input nested past any
//! parser's stack, calls that run forever, clients that never finish their
//! headers, and tokens that say two things at once. Each runs through real
//! HTTP against a real PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;

use crate::support::db::query_value;
use crate::support::{send, service_token, token, TestServer};

/// A row lock a test can hold, and a function that waits for it, then
/// writes, so that a call can be caught in the middle of its transaction.
const FIXTURES: &str = r#"
CREATE TABLE public.gate (id int PRIMARY KEY);
INSERT INTO public.gate VALUES (1);
CREATE TABLE public.hits (id serial PRIMARY KEY, note text NOT NULL);
GRANT SELECT, UPDATE ON public.gate TO pgrpc_anon, pgrpc_service;
GRANT SELECT, INSERT ON public.hits TO pgrpc_anon, pgrpc_service;
GRANT USAGE ON SEQUENCE public.hits_id_seq TO pgrpc_anon, pgrpc_service;
CREATE FUNCTION api.gated_hit(note text) RETURNS SETOF int LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM 1 FROM public.gate WHERE id = 1 FOR UPDATE;
  RETURN QUERY INSERT INTO public.hits (note) VALUES (note) RETURNING id;
END $$;
CREATE FUNCTION api.hit_count(note text) RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT count(*) FROM public.hits h WHERE h.note = hit_count.note $$;
CREATE FUNCTION api.slow(seconds float8) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT pg_sleep(seconds)::text || 'done' $$;
CREATE FUNCTION api.sum_ints(v int[]) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
  SELECT sum(x) FROM unnest(v) AS x $$;
CREATE FUNCTION api.depth(doc jsonb) RETURNS int LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_array_length(doc) $$;
CREATE FUNCTION api.current_timeout() RETURNS text LANGUAGE sql STABLE AS $$
  SELECT current_setting('statement_timeout') $$;
"#;

async fn fixture_server(tune: impl FnOnce(&mut pgrpc::config::ServeConfig)) -> TestServer {
    TestServer::start_with_sql(FIXTURES, tune).await
}

fn addr(s: &TestServer) -> String {
    s.base_url.trim_start_matches("http://").to_string()
}

/// Sessions of the proxy's pool that sit in an open transaction.
async fn idle_in_transaction(su: &Client, db: &str) -> i64 {
    query_value(
        su,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = $1 AND usename = 'pgrpc_authenticator' \
           AND state IN ('idle in transaction', 'idle in transaction (aborted)')",
        &[&db],
    )
    .await
}

/// How a call asks for its transaction: the three drivers it can take.
#[derive(Clone, Copy, Debug)]
enum Path {
    Pipelined,
    Singular,
    Idempotent,
}

fn raw_request(path: Path, note: &str, complete_body: bool) -> Vec<u8> {
    let body = json!({ "note": note }).to_string();
    let mut head = format!(
        "POST /rpc/gated_hit HTTP/1.1\r\nHost: pgrpc\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {}\r\n",
        service_token()
    );
    match path {
        Path::Pipelined => {}
        Path::Singular => head.push_str("Accept: application/vnd.pgrst.object+json\r\n"),
        Path::Idempotent => head.push_str(&format!("Idempotency-Key: key-{note}\r\n")),
    }
    if complete_body {
        head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        // Promise more body than is ever sent.
        head.push_str(&format!(
            "Content-Length: {}\r\n\r\n{}",
            body.len() + 100,
            body
        ));
    }
    head.into_bytes()
}

/// A client that disconnects at any point, on any of the three transaction
/// drivers, never leaves a pooled connection in a transaction; the call
/// either ran once and committed, or never ran.
#[tokio::test]
async fn a_client_that_disconnects_mid_call_leaves_no_open_transaction() {
    let s = fixture_server(|c| c.pool_size = 2).await;
    let su = s.db.superuser().await;
    for path in [Path::Pipelined, Path::Singular, Path::Idempotent] {
        // (drop after, hold the lock for, the body arrives whole)
        for (i, (drop_after, hold, whole)) in [
            (Duration::from_millis(0), Duration::from_millis(300), true),
            (
                Duration::from_millis(400),
                Duration::from_millis(1500),
                true,
            ),
            (Duration::from_millis(200), Duration::from_millis(0), false),
        ]
        .into_iter()
        .enumerate()
        {
            let note = format!("{path:?}-{i}");
            let lock = s.db.superuser().await;
            lock.batch_execute("BEGIN; SELECT * FROM public.gate WHERE id = 1 FOR UPDATE")
                .await
                .expect("hold the lock");
            let mut sock = TcpStream::connect(addr(&s)).await.expect("connect");
            sock.write_all(&raw_request(path, &note, whole))
                .await
                .expect("send");
            tokio::time::sleep(drop_after).await;
            drop(sock);
            tokio::time::sleep(hold).await;
            lock.batch_execute("COMMIT").await.expect("release");

            // The abandoned call finishes on its own, then nothing stays open.
            let want = i64::from(whole);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let hits: i64 = query_value(
                    &su,
                    "SELECT count(*) FROM public.hits WHERE note = $1",
                    &[&note],
                )
                .await;
                if hits == want || Instant::now() > deadline {
                    assert_eq!(hits, want, "{note}: the call ran {hits} times");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for _ in 0..5 {
                assert_eq!(
                    idle_in_transaction(&su, &s.db.name).await,
                    0,
                    "{note}: a pooled connection was left in a transaction"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The pool serves the next callers, who see committed work only.
            for _ in 0..3 {
                let r = s.service_rpc("hit_count", json!({ "note": note })).await;
                assert_eq!((r.status, r.body.clone()), (200, json!(want)), "{note}");
            }
        }
    }
    // An abandoned idempotent call still stored its response: a retry replays it.
    let note = "Idempotent-1";
    let r = send(
        s.http
            .post(s.url("/rpc/gated_hit"))
            .bearer_auth(service_token())
            .header("Idempotency-Key", format!("key-{note}"))
            .json(&json!({ "note": note })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    let hits: i64 = query_value(
        &su,
        "SELECT count(*) FROM public.hits WHERE note = $1",
        &[&note],
    )
    .await;
    assert_eq!(hits, 1);
}

/// A singular response replayed under its Idempotency-Key keeps the media
/// type of the first response.
#[tokio::test]
async fn a_replayed_singular_response_keeps_its_media_type() {
    let s = fixture_server(|_| {}).await;
    let call = || {
        send(
            s.http
                .post(s.url("/rpc/gated_hit"))
                .bearer_auth(service_token())
                .header("Accept", "application/vnd.pgrst.object+json")
                .header("Idempotency-Key", "singular-media-type")
                .json(&json!({ "note": "media" })),
        )
    };
    let first = call().await;
    let again = call().await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.text, again.text);
    for r in [&first, &again] {
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.pgrst.object+json; charset=utf-8")
        );
    }
    // The same key asking for an array is another request, not a replay.
    let other = send(
        s.http
            .post(s.url("/rpc/gated_hit"))
            .bearer_auth(service_token())
            .header("Idempotency-Key", "singular-media-type")
            .json(&json!({ "note": "media" })),
    )
    .await;
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.error_code(), "PT422");
}

fn nested(open: &str, close: &str, depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// JSON nested 100,000 deep, in a body or a query string, is a 400 before
/// the database sees it; so is an array literal deeper than PostgreSQL's six
/// dimensions. Nothing of it is a 500.
#[tokio::test]
async fn input_nested_past_the_parsers_stack_is_a_400_not_a_500() {
    let s = fixture_server(|c| c.max_body_bytes = 4 * 1024 * 1024).await;
    let deep_array = nested("[", "]", 100_000, "");
    let deep_object = nested("{\"a\":", "}", 100_000, "1");
    for body in [
        format!("{{\"contract_token\": {deep_array}, \"signature_ref\": \"x\"}}"),
        format!("{{\"contract_token\": {deep_object}, \"signature_ref\": \"x\"}}"),
        format!("{{\"doc\": {deep_array}}}"),
        format!("{{\"doc\": \"{deep_array}\"}}"),
        format!("[{deep_array}]"),
    ] {
        for function in ["sign_contract", "depth"] {
            let r = send(
                s.http
                    .post(s.url(&format!("/rpc/{function}")))
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
            .await;
            assert_eq!(r.status, 400, "{function}: {}", &r.text);
            assert_eq!(r.error_code(), "PGRST102", "{function}");
        }
    }
    // A URI is bounded (64 KiB in the http crate), so 2,000 levels is about
    // as deep as one gets there.
    for query in [
        format!("doc={}", nested("%5B", "%5D", 2_000, "")),
        format!("doc={}", nested("%7B%22a%22:", "%7D", 2_000, "1")),
        format!("v={}", nested("%7B", "%7D", 2_000, "1")),
    ] {
        for function in ["depth", "sum_ints"] {
            let r = send(s.http.get(s.url(&format!("/rpc/{function}?{query}")))).await;
            assert_eq!(r.status, 400, "{function}: {}", &r.text);
        }
    }
    // Deep but within bounds still reaches the function.
    let r = send(
        s.http
            .post(s.url("/rpc/depth"))
            .header("content-type", "application/json")
            .body(format!("{{\"doc\": [{}]}}", nested("[", "]", 200, ""))),
    )
    .await;
    assert_eq!((r.status, r.body.clone()), (200, json!(1)), "{}", r.text);
    // Seven array dimensions: PostgreSQL's own limit, the caller's mistake.
    let r = send(
        s.http
            .get(s.url(&format!("/rpc/sum_ints?v={}", nested("%7B", "%7D", 7, "1")))),
    )
    .await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "54000".to_string()),
        "{}",
        r.text
    );
    let r = s
        .rpc("sum_ints", None, json!({ "v": nested("{", "}", 7, "1") }))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

/// A role's own settings (ALTER ROLE … SET) apply to requests as that role,
/// so statement_timeout bounds an anonymous call; the shipped defaults bound
/// every request role, and a timeout answers with SQLSTATE 57014.
#[tokio::test]
async fn role_settings_bound_how_long_a_call_may_run() {
    let s = fixture_server(|c| c.pool_size = 2).await;
    let su = s.db.superuser().await;
    // The shipped, cluster-wide defaults.
    for (role, want) in [
        ("pgrpc_anon", "5s"),
        ("pgrpc_user", "15s"),
        ("pgrpc_service", "1min"),
    ] {
        let r = send(
            s.http
                .get(s.url("/rpc/current_timeout"))
                .bearer_auth(token(json!({ "role": role, "sub": "t" }))),
        )
        .await;
        assert_eq!(
            (r.status, r.body.clone()),
            (200, json!(want)),
            "{role}: {}",
            r.text
        );
    }
    // This database only: tighter for anonymous callers.
    su.batch_execute(&format!(
        "ALTER ROLE pgrpc_anon IN DATABASE {} SET statement_timeout = '300ms'",
        s.db.name
    ))
    .await
    .expect("alter role");
    s.reload_and_wait("current_timeout").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send(s.http.get(s.url("/rpc/current_timeout"))).await;
        if r.body == json!("300ms") || Instant::now() > deadline {
            assert_eq!(r.body, json!("300ms"), "{}", r.text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let r = s.rpc("slow", None, json!({ "seconds": 3 })).await;
    assert_eq!(
        (r.status, r.error_code()),
        (500, "57014".to_string()),
        "{}",
        r.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the call ran {:?}",
        started.elapsed()
    );
    // Twenty slow anonymous calls no longer hold the pool: a service call
    // right behind them is served.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let http = s.http.clone();
        let url = s.url("/rpc/slow");
        slow.push(tokio::spawn(async move {
            http.post(url).json(&json!({ "seconds": 30 })).send().await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = s.service_rpc("hit_count", json!({ "note": "x" })).await;
    assert_eq!((r.status, r.body.clone()), (200, json!(0)), "{}", r.text);
    for t in slow {
        let r = t.await.expect("task").expect("response");
        assert_eq!(r.status().as_u16(), 500);
    }
    // The setting lasts for its transaction only: on the same two pooled
    // connections, service calls keep their own timeout.
    for _ in 0..4 {
        let r = send(s.http.get(s.url("/rpc/current_timeout"))).await;
        assert_eq!(r.body, json!("300ms"), "{}", r.text);
        let r = send(
            s.http
                .get(s.url("/rpc/current_timeout"))
                .bearer_auth(service_token()),
        )
        .await;
        assert_eq!(r.body, json!("1min"), "{}", r.text);
    }
}

/// Two thousand clients that never finish their headers neither exhaust the
/// proxy nor lock out a well-behaved client: each is cut off after the
/// header-read timeout, and the connection cap keeps them waiting outside.
#[tokio::test]
async fn slow_clients_are_cut_off_and_capped() {
    let s = fixture_server(|c| {
        c.header_read_timeout = Duration::from_millis(500);
        c.max_connections = 256;
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..2000 {
        let mut sock = TcpStream::connect(addr(&s)).await.expect("connect");
        let _ = sock
            .write_all(b"POST /rpc/hit_count HTTP/1.1\r\nHost: pgrpc\r\nX-Slow: ")
            .await;
        slow.push(sock);
    }
    // A well-behaved client gets through while all of them still hang on.
    let started = Instant::now();
    let r = send(
        s.http
            .get(s.url("/rpc/hit_count?note=x"))
            .timeout(Duration::from_secs(60)),
    )
    .await;
    assert_eq!((r.status, r.body.clone()), (200, json!(0)), "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "served after {:?}",
        started.elapsed()
    );
    // Every slow client is eventually disconnected by the proxy.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut closed = 0;
    for mut sock in slow {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 512];
        let ended = loop {
            match tokio::time::timeout(left, sock.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        closed += usize::from(ended);
    }
    assert_eq!(closed, 2000, "slow clients still connected");
}

/// A token that names its role twice, or demands an extension through
/// `crit`, is refused with 401 and runs nothing.
#[tokio::test]
async fn ambiguous_or_critical_extension_tokens_are_refused() {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let s = fixture_server(|_| {}).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let sign = |header: &str, payload: &str| {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(crate::support::JWT_SECRET.as_bytes())
            .expect("hmac key");
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    };
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let good = sign(hs, r#"{"role":"pgrpc_service","sub":"s"}"#);
    let r = send(
        s.http
            .get(s.url("/rpc/hit_count?note=x"))
            .bearer_auth(&good),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for bad in [
        sign(
            hs,
            r#"{"role":"pgrpc_anon","sub":"s","role":"pgrpc_service"}"#,
        ),
        sign(
            r#"{"alg":"HS256","typ":"JWT","crit":["http://example.com/ext"],"http://example.com/ext":true}"#,
            r#"{"role":"pgrpc_service","sub":"s"}"#,
        ),
    ] {
        let r = send(
            s.http
                .post(s.url("/rpc/gated_hit"))
                .bearer_auth(&bad)
                .json(&json!({ "note": "jwt" })),
        )
        .await;
        assert_eq!(
            (r.status, r.error_code()),
            (401, "PGRST301".to_string()),
            "{}",
            r.text
        );
    }
    let r = s.service_rpc("hit_count", json!({ "note": "jwt" })).await;
    assert_eq!(r.body, json!(0));
}

/// A write that reaches a node that cannot write (a standby, or a primary
/// still finishing its promotion; here a database whose sessions default
/// to read-only) is a retryable 503, not the 405 of a GET on a volatile
/// function, and the proxy drops those sessions and reconnects.
#[tokio::test]
async fn a_write_on_a_read_only_node_is_a_retryable_503() {
    let s = fixture_server(|c| c.pool_size = 2).await;
    let su = s.db.superuser().await;
    su.batch_execute(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        s.db.name
    ))
    .await
    .expect("read-only database");
    // Sessions made from now on read only, as on a standby.
    su.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND usename = 'pgrpc_authenticator' AND pid <> pg_backend_pid()",
        &[&s.db.name],
    )
    .await
    .expect("end the pooled sessions");
    let mut saw_503 = false;
    for _ in 0..10 {
        let r = send(
            s.http
                .post(s.url("/rpc/gated_hit"))
                .bearer_auth(service_token())
                .json(&json!({ "note": "ro" })),
        )
        .await;
        assert_ne!(r.status, 500, "{}", r.text);
        assert_ne!(r.status, 405, "{}", r.text);
        if r.status == 503 {
            assert_eq!(r.error_code(), "PGRST001");
            assert_eq!(r.header("retry-after"), Some("1"));
            saw_503 = true;
            break;
        }
    }
    assert!(saw_503, "no 503 for a write on a read-only node");
    // The node can write again (the new primary): the proxy reconnects.
    su.batch_execute(&format!(
        "ALTER DATABASE {} RESET default_transaction_read_only",
        s.db.name
    ))
    .await
    .expect("writable again");
    let mut wrote = false;
    for _ in 0..20 {
        let r = send(
            s.http
                .post(s.url("/rpc/gated_hit"))
                .bearer_auth(service_token())
                .json(&json!({ "note": "rw" })),
        )
        .await;
        if r.status == 200 {
            wrote = true;
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(wrote, "the proxy did not recover");
}
