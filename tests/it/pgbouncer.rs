//! The proxy behind a real pgbouncer (Debian's 1.18, from the test image) in
//! transaction mode: with `PGRPC_PREPARED_STATEMENTS=false` every call works
//! while many client transactions share few server sessions; with named
//! prepared statements they collide.

use std::time::Duration;

use serde_json::json;

use crate::support::replication::{start_pgbouncer, Node};
use crate::support::{join_tasks, send, Resp, TestDb, TestServer};

const FIXTURES: &str = r#"
CREATE TABLE public.hits (id serial PRIMARY KEY, n int NOT NULL);
GRANT SELECT, INSERT ON public.hits TO pgrpc_anon;
GRANT USAGE ON SEQUENCE public.hits_id_seq TO pgrpc_anon;
CREATE FUNCTION api.hit(n int) RETURNS int LANGUAGE sql VOLATILE
  AS $$ INSERT INTO public.hits (n) VALUES (n) RETURNING id $$;
CREATE FUNCTION api.hits() RETURNS TABLE(id int, n int) LANGUAGE sql STABLE
  AS $$ SELECT id, n FROM public.hits $$;
CREATE FUNCTION api.checked() RETURNS text LANGUAGE sql STABLE
  AS $$ SELECT current_setting('app.checked', true) || ' ' || current_user $$;
CREATE FUNCTION public.check_request() RETURNS void LANGUAGE sql
  AS $$ SELECT set_config('app.checked', 'yes', true) $$;
"#;

const CLIENTS: usize = 50;

/// A proxy whose pool (20 connections) goes through `bouncer` (3 server
/// sessions), with the schema listener connected directly.
async fn server_behind(bouncer: &Node, prepared: bool) -> TestServer {
    let db = TestDb::new().await;
    db.superuser()
        .await
        .batch_execute(FIXTURES)
        .await
        .expect("fixtures");
    let url = bouncer.authenticator_url(&db.name);
    let direct = db.authenticator_url();
    TestServer::start_on_url(db, url, move |c| {
        c.prepared_statements = prepared;
        c.listener_database_url = Some(direct);
        c.pool_size = 20;
        c.pool_timeout = Duration::from_secs(20);
        c.pre_request = Some("public.check_request".into());
    })
    .await
}

/// Each client: a write, a read with query-string operations (bound
/// values), reads of what the pre-request function set (one with a time
/// zone preference), and a write under an Idempotency-Key sent twice.
async fn workload(s: &std::sync::Arc<TestServer>, round: usize) -> Vec<Resp> {
    let tasks = (0..CLIENTS).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            out.push(s.rpc("hit", None, json!({ "n": i })).await);
            out.push(
                s.rpc_get(
                    "hits",
                    None,
                    &[("n", &format!("gte.{i}")), ("order", "id"), ("limit", "3")],
                )
                .await,
            );
            out.push(s.rpc_get("checked", None, &[]).await);
            // The time zone preference reads the server's zone names once.
            out.push(
                send(
                    s.http
                        .get(s.url("/rpc/checked"))
                        .header("Prefer", "timezone=Europe/Paris"),
                )
                .await,
            );
            let key = format!("key-{round}-{i}");
            for _ in 0..2 {
                out.push(
                    send(
                        s.http
                            .post(s.url("/rpc/hit"))
                            .header("Idempotency-Key", &key)
                            .header("Content-Type", "application/json")
                            .body(json!({ "n": 1000 + i }).to_string()),
                    )
                    .await,
                );
            }
            out
        })
    });
    join_tasks(tasks).await.into_iter().flatten().collect()
}

// Without named prepared statements, 50 concurrent clients through 3 pgbouncer server sessions in transaction
// mode get every answer right: settings, pre-request, bound query operations and Idempotency-Key bookkeeping
// included; and the listener, connected directly, still reloads the function cache.
#[tokio::test]
async fn behind_pgbouncer_without_prepared_statements_every_call_succeeds() {
    let bouncer = start_pgbouncer(3);
    let s = std::sync::Arc::new(server_behind(&bouncer, false).await);
    for round in 0..2 {
        for r in workload(&s, round).await {
            assert_eq!(r.status, 200, "{}", r.text);
        }
    }
    let r = s.rpc_get("checked", None, &[]).await;
    assert_eq!(
        r.body,
        json!("yes pgrpc_anon"),
        "the pre-request function ran in the call's transaction"
    );
    let counts = s
        .db
        .superuser()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE n < 1000), count(*) FILTER (WHERE n >= 1000) FROM public.hits",
            &[],
        )
        .await
        .expect("count");
    let (plain, keyed): (i64, i64) = (counts.get(0), counts.get(1));
    assert_eq!(
        (plain, keyed),
        (2 * CLIENTS as i64, 2 * CLIENTS as i64),
        "one effect per key"
    );

    // NOTIFY reaches the directly connected listener: a new function is served through pgbouncer.
    s.db.superuser()
        .await
        .batch_execute(
            "CREATE FUNCTION api.late() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 42'",
        )
        .await
        .expect("new function");
    s.reload_and_wait("late").await;
    let r = s.rpc_get("late", None, &[]).await;
    assert_eq!((r.status, r.body.clone()), (200, json!(42)), "{}", r.text);
}

// With named prepared statements (the default), the same proxy behind pgbouncer in transaction mode fails:
// statements prepared on one server session are missing on another, or their names collide.
#[tokio::test]
async fn behind_pgbouncer_named_prepared_statements_break() {
    let bouncer = start_pgbouncer(3);
    let db = TestDb::new().await;
    db.superuser()
        .await
        .batch_execute(FIXTURES)
        .await
        .expect("fixtures");
    let url = bouncer.authenticator_url(&db.name);
    let direct = db.authenticator_url();
    // Not waiting for /ready: the cache loads over the direct listener.
    let s = std::sync::Arc::new(
        TestServer::start_on_url(db, url, move |c| {
            c.prepared_statements = true;
            c.listener_database_url = Some(direct);
            c.pool_size = 20;
            c.pool_timeout = Duration::from_secs(20);
            c.pre_request = Some("public.check_request".into());
        })
        .await,
    );
    let responses = workload(&s, 0).await;
    let failed: Vec<&Resp> = responses.iter().filter(|r| r.status != 200).collect();
    assert!(
        !failed.is_empty(),
        "named prepared statements behind a transaction-mode pgbouncer should fail"
    );
    for r in &failed {
        assert!(
            r.text.contains("prepared statement"),
            "a failure names the prepared statement: {} {}",
            r.status,
            r.text
        );
    }
    let mut kinds: Vec<String> = failed
        .iter()
        .map(|r| format!("{} {}", r.status, r.body["code"].as_str().unwrap_or("?")))
        .collect();
    kinds.sort();
    kinds.dedup();
    eprintln!(
        "prepared statements behind pgbouncer: {} of {} calls failed ({}), e.g. {}",
        failed.len(),
        responses.len(),
        kinds.join(", "),
        failed[0].text
    );
}
