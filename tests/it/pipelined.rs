//! `PGRPC_POOL_PIPELINE`: plain reads lent a connection (`db::inflight`).
//! With one pooled connection, a warm read gives the connection back as
//! soon as its statements are queued, and the next request's go out
//! behind them. Each read still runs in its own implicit transaction, as
//! its own role, with its own settings; at most `PGRPC_POOL_PIPELINE` are
//! in flight on a connection; a write or a stream (which may cancel its
//! statement) waits until none is, no longer than for a connection.

use std::time::Duration;

use serde_json::json;

use crate::framing::{counted, items, sessions, start, Relay};
use crate::support::{send, token, Resp, TestServer};

/// Warms `/rpc/<function>` for the anonymous role and the user (prepares
/// its statements on the one connection), and checks that the next call
/// is one implicit transaction.
async fn warm(relay: &Relay, server: &TestServer, user: &str, path: &str) {
    for bearer in [None, Some(user)] {
        for _ in 0..2 {
            let mut req = server.http.get(server.url(path));
            if let Some(bearer) = bearer {
                req = req.bearer_auth(bearer);
            }
            let r = send(req).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
        }
    }
    let (r, syncs) = counted(relay, server.http.get(server.url(path))).await;
    assert_eq!((r.status, syncs), (200, 1), "{path} is warm: {}", r.text);
}

#[tokio::test]
async fn reads_share_one_connection_each_as_its_own_role_and_settings() {
    let (relay, server, s) = start(|c| {
        c.pool_pipeline = 4;
        c.pool_timeout = Duration::from_secs(10);
    })
    .await;
    let user =
        |sub: usize| token(json!({"role": format!("frm_user_{s}"), "sub": format!("u{sub}")}));
    warm(&relay, &server, &user(0), "/rpc/seen").await;
    warm(&relay, &server, &user(0), "/rpc/nap?ms=1").await;

    // 60 reads at once on the one connection, anonymous and as users with
    // their own `sub`, by GET and by POST.
    let calls = (0..60).map(|i| {
        let server = &server;
        let bearer = (i % 3 != 0).then(|| user(i));
        async move {
            let mut req = if i % 2 == 0 {
                server.http.get(server.url("/rpc/seen"))
            } else {
                server.http.post(server.url("/rpc/seen")).json(&json!({}))
            };
            if let Some(bearer) = &bearer {
                req = req.bearer_auth(bearer);
            }
            (i, send(req).await)
        }
    });
    for (i, r) in futures_util::future::join_all(calls).await {
        assert_eq!(r.status, 200, "call {i}: {}", r.text);
        let (role, sub) = if i % 3 != 0 {
            (format!("frm_user_{s}"), json!(format!("u{i}")))
        } else {
            (format!("frm_anon_{s}"), json!(null))
        };
        assert_eq!(r.body["user"], json!(role), "call {i}: {}", r.text);
        assert_eq!(r.body["sub"], sub, "call {i}: {}", r.text);
        assert_eq!(r.body["read_only"], json!("on"), "call {i}: {}", r.text);
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        assert_eq!(r.body["method"], json!(method), "call {i}: {}", r.text);
        // The user's own `ALTER ROLE … SET timezone`, never the other's.
        let tokyo = r.body["timezone"] == json!("Asia/Tokyo");
        assert_eq!(tokyo, i % 3 != 0, "call {i}: {}", r.text);
    }

    // A read that fails ends its own transaction only: a read queued
    // behind it on the connection (sent while the first sleeps) answers
    // as usual, as its own role.
    let failing = send(
        server
            .http
            .get(server.url("/rpc/nap_fail?ms=600"))
            .bearer_auth(user(1)),
    );
    let after = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        send(
            server
                .http
                .get(server.url("/rpc/seen"))
                .bearer_auth(user(2)),
        )
        .await
    };
    let (failing, after) = tokio::join!(failing, after);
    assert_eq!(failing.status, 418, "{}", failing.text);
    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(after.body["sub"], json!("u2"), "{}", after.text);

    // No transaction was left open.
    all_idle(&server, &s).await;
}

/// The proxy's sessions (the pooled one and the reload listener's) are
/// idle: no transaction left open.
async fn all_idle(server: &TestServer, s: &str) {
    let states = sessions(&server.db, s).await;
    assert!(
        !states.is_empty() && states.iter().all(|st| st == "idle"),
        "{states:?}"
    );
}

/// A slow read of `ms` as `bearer`, and 150 ms into it a write (an item
/// with `note`): both answers.
async fn write_behind_a_read(
    server: &TestServer,
    bearer: &str,
    ms: u32,
    note: &str,
) -> (Resp, Resp) {
    let write = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        send(
            server
                .http
                .post(server.url("/rpc/add"))
                .bearer_auth(bearer)
                .json(&json!({"parent": 1, "note": note})),
        )
        .await
    };
    tokio::join!(nap(server, ms, bearer), write)
}

/// A slow read (`/rpc/nap`) as `bearer`.
async fn nap(server: &TestServer, ms: u32, bearer: &str) -> Resp {
    send(
        server
            .http
            .get(server.url(&format!("/rpc/nap?ms={ms}")))
            .bearer_auth(bearer),
    )
    .await
}

#[tokio::test]
async fn at_most_the_pipeline_is_in_flight_and_writes_wait_for_the_reads() {
    // Two places on the one connection, and a short pool wait (700 ms): a request
    // that finds no place waits for the connection and gives up.
    let (relay, server, s) = start(|c| {
        c.pool_pipeline = 2;
        c.pool_timeout = Duration::from_millis(700);
    })
    .await;
    let user = token(json!({"role": format!("frm_user_{s}"), "sub": "u1"}));
    warm(&relay, &server, &user, "/rpc/seen").await;
    warm(&relay, &server, &user, "/rpc/nap?ms=1").await;

    // A slow read lends the connection on: a second read goes out behind
    // it at once (it does not wait for the pool, which would give up
    // before the first read ends), and answers after it, as its own role.
    let slow = nap(&server, 1500, &user);
    let second = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        send(server.http.get(server.url("/rpc/seen"))).await
    };
    // The second read filled the last place and keeps the connection: a
    // third finds no connection within the pool's wait.
    let third = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(server.http.get(server.url("/rpc/seen"))).await
    };
    let (slow, second, third) = tokio::join!(slow, second, third);
    assert_eq!(slow.status, 200, "{}", slow.text);
    assert_eq!(slow.body["user"], json!(format!("frm_user_{s}")));
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.body["user"], json!(format!("frm_anon_{s}")));
    assert_eq!(third.status, 504, "no third read in flight: {}", third.text);

    // A write behind a lent read answers after it, in its own transaction,
    // and commits.
    let (slow, write) = write_behind_a_read(&server, &user, 500, "behind-a-read").await;
    assert_eq!(slow.status, 200, "{}", slow.text);
    assert_eq!(write.status, 200, "{}", write.text);
    assert_eq!(items(&server.db, "behind-a-read").await, 1);

    // A write waits for a lent read no longer than for a connection: past
    // the pool's wait it is 504, and the read answers as usual.
    let (slow, write) = write_behind_a_read(&server, &user, 2000, "too-long").await;
    assert_eq!(slow.status, 200, "{}", slow.text);
    assert_eq!(write.status, 504, "{}", write.text);
    assert_eq!(write.body["code"], json!("PGRST003"), "{}", write.text);
    assert_eq!(items(&server.db, "too-long").await, 0);

    // A client that gives up mid-read: the connection serves the next
    // request, and no transaction is left open.
    let gone = server
        .http
        .get(server.url("/rpc/nap?ms=600"))
        .bearer_auth(&user)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    let r = send(server.http.get(server.url("/rpc/seen"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    all_idle(&server, &s).await;
}

#[tokio::test]
async fn a_stream_given_up_cancels_only_its_own_statement() {
    // A stream past its longest duration cancels its statement. It waits
    // until the read lent its connection has answered, so the cancel can
    // only reach its own statement, never the read's.
    let (relay, server, s) = start(|c| {
        c.pool_pipeline = 2;
        c.stream_threshold_bytes = 64;
        c.stream_max_duration = Duration::from_millis(300);
    })
    .await;
    let user = token(json!({"role": format!("frm_user_{s}"), "sub": "u1"}));
    warm(&relay, &server, &user, "/rpc/nap?ms=1").await;
    // The stream's statements prepared: its rows would come at once.
    warm(&relay, &server, &user, "/rpc/seen_rows?n=1").await;

    let slow = nap(&server, 1200, &user);
    let stream = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        send(
            server
                .http
                .get(server.url("/rpc/seen_rows?n=200000"))
                .bearer_auth(&user),
        )
        .await
    };
    let (slow, _) = tokio::join!(slow, stream);
    assert_eq!(
        slow.status, 200,
        "the read was not cancelled: {}",
        slow.text
    );
    assert_eq!(slow.body["user"], json!(format!("frm_user_{s}")));
    let r = send(server.http.get(server.url("/rpc/seen"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
}
