//! `PGRPC_SHARDS`: a real `pgrpc serve` process serving one address on
//! several threads, each with its own listener (`SO_REUSEPORT`), runtime,
//! share of the pool and share of the client connections.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use crate::observability::{json_serve, next_json, wait_ready};
use crate::support::TestDb;

/// A value of `/metrics`' exposition: the sample named exactly `name`
/// (with its labels).
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .expect("a number")
}

/// A client that opens a new connection for every request, so that the
/// kernel chooses a shard for each.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// Sends SIGTERM to `child` and waits for it to exit, or fails.
async fn terminate(mut child: tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("running") as i32;
    // SAFETY: signalling a child process this test spawned.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("pgrpc serve ended after SIGTERM")
        .expect("wait")
}

// Two shards serve one address: the log line says so, the kernel gives
// each shard some of 48 new connections (each answered 200, concurrently
// too), `/metrics` counts every connection once per shard, sums the
// shards' request counts (each shard records its own) and the
// two shares of the pool, PostgreSQL never sees more connections from the
// pool than PGRPC_POOL_SIZE (beside the schema listener's), and SIGTERM
// ends the process cleanly.
#[tokio::test]
async fn shards_share_the_address_the_pool_and_the_metrics() {
    let db = TestDb::new().await;
    let (child, base, mut lines) = json_serve(&db, &["--shards", "2", "--pool-size", "4"]);
    let serving = loop {
        let v = next_json(&mut lines).await;
        if v["fields"]["message"] == "pgrpc serving" {
            break v;
        }
    };
    assert_eq!(serving["fields"]["shards"], 2, "{serving}");
    // The runtime beside the shards keeps one worker for the admin side.
    assert_eq!(serving["fields"]["workers"], 1, "{serving}");
    wait_ready(&base).await;

    let client = fresh_connections();
    // Request ids: each shard numbers its own, from an instance of its own.
    let mut ids = std::collections::HashSet::new();
    for _ in 0..16 {
        let r = client
            .get(format!("{base}/rpc/version"))
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-request-id"].to_str().expect("ascii");
        assert!(ids.insert(id.to_string()), "request id {id} given twice");
    }
    let answers = join_all((0..32).map(|_| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = client
                .get(format!("{base}/rpc/version"))
                .send()
                .await
                .expect("call");
            let id = r.headers()["x-request-id"]
                .to_str()
                .expect("ascii")
                .to_string();
            (
                r.status().as_u16(),
                id,
                r.json::<Value>().await.expect("json"),
            )
        }
    }))
    .await;
    for (status, id, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(body.as_str().is_some_and(|v| !v.is_empty()), "{body}");
        assert!(ids.insert(id.clone()), "request id {id} given twice");
    }
    // Both shards answered (below): two instances among the ids.
    let instances: std::collections::HashSet<&str> =
        ids.iter().filter_map(|id| id.split('-').next()).collect();
    assert_eq!(instances.len(), 2, "{ids:?}");

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let per_shard = [
        sample(&metrics, "pgrpc_shard_connections_total{shard=\"0\"}"),
        sample(&metrics, "pgrpc_shard_connections_total{shard=\"1\"}"),
    ];
    // 16 + 32 calls, the readiness probes and this scrape, each on a
    // connection of its own: 48 of them could all reach one shard only
    // with a chance of 2^-47.
    assert!(per_shard.iter().all(|&n| n >= 1.0), "{per_shard:?}");
    assert!(per_shard.iter().sum::<f64>() >= 49.0, "{per_shard:?}");
    assert_eq!(
        sample(&metrics, "pgrpc_pool_connections{state=\"max\"}"),
        4.0
    );
    // Each shard records its own requests; the scrape sums them: every
    // call once, whichever shard served it.
    assert_eq!(
        sample(
            &metrics,
            "pgrpc_requests_total{function=\"version\",status=\"200\"}"
        ),
        48.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "pgrpc_request_duration_seconds_count{function=\"version\",status_class=\"2xx\"}"
        ),
        48.0,
        "{metrics}"
    );
    let su = db.superuser().await;
    let open: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = 'pgrpc_authenticator' AND datname = current_database()",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    // The pool's (at most 4) and the schema listener's.
    assert!((2..=5).contains(&open), "{open} connections");

    let status = terminate(child).await;
    assert!(status.success(), "{status}");
}

// A request dropped mid-call on a shard: its transaction ends on the
// shard's runtime (the pool's one connection of that shard comes back and
// serves again). At SIGTERM, a call and a streamed answer in flight are
// both answered whole within the grace period before the process exits:
// the server stops (and cuts streams short) only once every shard has
// drained.
#[tokio::test]
async fn a_shard_ends_the_transaction_of_a_dropped_request_and_drains() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    su.batch_execute(
        "CREATE FUNCTION api.shards_slow(ms int) RETURNS int LANGUAGE sql VOLATILE \
           AS $$ SELECT pg_sleep(ms / 1000.0); SELECT ms $$; \
         GRANT EXECUTE ON FUNCTION api.shards_slow(int) TO pgrpc_anon; \
         CREATE FUNCTION api.shards_pause(g int) RETURNS int LANGUAGE plpgsql STABLE \
           AS $$ BEGIN PERFORM pg_sleep(0.003); RETURN g; END $$; \
         CREATE FUNCTION api.shards_rows(n int) RETURNS SETOF int LANGUAGE sql STABLE \
           AS $$ SELECT api.shards_pause(g) FROM generate_series(1, n) AS g $$; \
         GRANT EXECUTE ON FUNCTION api.shards_pause(int), api.shards_rows(int) TO pgrpc_anon;",
    )
    .await
    .expect("function");
    // One connection per shard: a transaction left open would hold it.
    let (child, base, _lines) = json_serve(
        &db,
        &[
            "--shards",
            "2",
            "--pool-size",
            "2",
            "--pool-timeout-ms",
            "5000",
            // Every answer of a set streams.
            "--stream-threshold-bytes",
            "1",
        ],
    );
    wait_ready(&base).await;
    let client = fresh_connections();
    for _ in 0..6 {
        let given_up = client
            .post(format!("{base}/rpc/shards_slow"))
            .json(&serde_json::json!({"ms": 300}))
            .timeout(Duration::from_millis(100))
            .send()
            .await;
        assert!(given_up.is_err(), "answered within 100 ms: {given_up:?}");
    }
    // Every shard's connection is free again: 16 calls on new
    // connections, spread over both shards, all answered.
    for _ in 0..16 {
        let r = client
            .post(format!("{base}/rpc/shards_slow"))
            .json(&serde_json::json!({"ms": 1}))
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
    let stuck: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND datname = current_database()",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stuck, 0, "a transaction outlived its request");

    // In flight at SIGTERM: a stream of 300 rows, 3 ms each (its head
    // comes about a second after the call), and a call,
    // both answered whole, then a clean exit.
    let streamed = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = client
                .get(format!("{base}/rpc/shards_rows?n=300"))
                .send()
                .await
                .expect("the stream's head");
            assert_eq!(r.status(), 200);
            assert!(r.content_length().is_none(), "not streamed");
            r.json::<Vec<i64>>().await
        }
    });
    let in_flight = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .post(format!("{base}/rpc/shards_slow"))
                .json(&serde_json::json!({"ms": 700}))
                .send()
                .await
                .expect("answered during the drain")
                .json::<Value>()
                .await
                .expect("json")
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = terminate(child).await;
    assert!(status.success(), "{status}");
    assert_eq!(in_flight.await.expect("task"), 700);
    let rows = streamed
        .await
        .expect("task")
        .expect("the whole stream, ended by its final chunk");
    assert_eq!(rows, (1..=300).collect::<Vec<i64>>());
}

// Out of bounds, `pgrpc serve` refuses to start and names the setting.
#[tokio::test]
async fn shards_out_of_bounds_are_refused() {
    let db = TestDb::new().await;
    for (env, expected) in [
        (
            vec![("PGRPC_SHARDS", "0")],
            "PGRPC_SHARDS must be from 1 to 256",
        ),
        (
            vec![("PGRPC_SHARDS", "257")],
            "PGRPC_SHARDS must be from 1 to 256",
        ),
        (
            vec![("PGRPC_SHARDS", "5"), ("PGRPC_POOL_SIZE", "4")],
            "PGRPC_SHARDS (5) must not be above PGRPC_POOL_SIZE (4)",
        ),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrpc"))
            .args(["serve", "--database-url", &db.authenticator_url()])
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .output()
            .await
            .expect("pgrpc serve");
        assert!(!out.status.success(), "{env:?}: started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    }
}

// PGRPC_MAX_CONNECTIONS still bounds the clients served at once with
// shards (each shard serves its share): 20 clients that connect and send
// nothing fill both shards' single slots (the rest wait in the backlogs),
// so a call gets no answer; once they leave, calls are answered again.
#[tokio::test]
async fn shards_keep_the_connection_cap_against_idle_clients() {
    let db = TestDb::new().await;
    let (child, base, _lines) = json_serve(
        &db,
        &[
            "--shards",
            "2",
            "--pool-size",
            "2",
            "--max-connections",
            "2",
        ],
    );
    wait_ready(&base).await;
    let addr = base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // The chance that all 20 reach one shard is 2^-19.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = fresh_connections();
    let refused = client
        .get(format!("{base}/rpc/version"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(refused.is_err(), "answered past the cap: {refused:?}");
    drop(idle);
    let r = client
        .get(format!("{base}/rpc/version"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answered once the idle clients left");
    assert_eq!(r.status(), 200);
    let status = terminate(child).await;
    assert!(status.success(), "{status}");
}
