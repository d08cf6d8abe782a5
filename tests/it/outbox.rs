//! The transactional outbox (SPEC §4.6): emission in the caller's
//! transaction, leased claiming with per-aggregate order, ack/nack with
//! backoff and dead-lettering, the operator's tools, and write-once events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use uuid::Uuid;

use crate::support::db::{assert_refused_as, count, error_of, query_column, query_value, sqlstate};
use crate::support::{assert_error, connect, join_tasks, TestDb, TestServer};

/// Emits one event as a superuser, outside any request.
pub async fn emit(
    client: &Client,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
) -> i64 {
    client
        .query_one(
            "SELECT private.outbox_emit($1, $2, $3, $4)",
            &[
                &aggregate_type,
                &aggregate_id,
                &event_type,
                &json!({"aggregate": aggregate_id}),
            ],
        )
        .await
        .expect("emit")
        .get(0)
}

/// One claim: (lease token, events).
pub async fn claim(
    client: &Client,
    consumer: &str,
    max_events: i32,
    lease_seconds: i32,
    event_types: Option<Vec<String>>,
) -> (Uuid, Vec<Value>) {
    let row = client
        .query_one(
            "SELECT lease_token, events FROM api.outbox_claim($1, $2, $3, $4)",
            &[&consumer, &max_events, &lease_seconds, &event_types],
        )
        .await
        .expect("claim");
    let events: Value = row.get(1);
    (row.get(0), events.as_array().cloned().unwrap_or_default())
}

pub async fn ack(client: &Client, lease_token: Uuid, ids: &[i64]) -> i32 {
    client
        .query_one(
            "SELECT api.outbox_ack($1, $2)",
            &[&lease_token, &ids.to_vec()],
        )
        .await
        .expect("ack")
        .get(0)
}

fn ids_of(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["id"].as_i64().expect("event id"))
        .collect()
}

async fn status_of(client: &Client, id: i64) -> (String, i32) {
    let row = client
        .query_one(
            "SELECT status, attempts FROM private.outbox WHERE id = $1",
            &[&id],
        )
        .await
        .expect("status");
    (row.get(0), row.get(1))
}

/// A committed emission leaves exactly one event and a rolled-back one none.
#[tokio::test]
async fn a_rolled_back_emission_leaves_no_event_and_a_committed_one_exactly_one() {
    let db = TestDb::new().await;
    let mut su = db.superuser().await;

    let tx = su.transaction().await.expect("begin");
    tx.execute(
        "SELECT private.outbox_emit('order', 'o1', 'order.created', '{}')",
        &[],
    )
    .await
    .expect("emit");
    tx.rollback().await.expect("rollback");

    let tx = su.transaction().await.expect("begin");
    tx.execute(
        "SELECT private.outbox_emit('order', 'o2', 'order.created', '{}')",
        &[],
    )
    .await
    .expect("emit");
    tx.commit().await.expect("commit");

    let rows = su
        .query("SELECT aggregate_id, status FROM private.outbox", &[])
        .await
        .expect("select");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "o2");
    assert_eq!(rows[0].get::<_, String>(1), "pending");
}

/// A committed insert notifies pgrpc_outbox with the event types, and a rolled-back one does not.
#[tokio::test]
async fn a_committed_emission_notifies_pgrpc_outbox_and_a_rolled_back_one_does_not() {
    let db = TestDb::new().await;
    let (listener, mut connection) = tokio_postgres::connect(&db.url(), NoTls)
        .await
        .expect("connect");
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(format!("{}:{}", n.channel(), n.payload()));
            }
        }
    });
    listener
        .batch_execute("LISTEN pgrpc_outbox")
        .await
        .expect("listen");

    let su = db.superuser().await;
    su.batch_execute(
        "BEGIN; SELECT private.outbox_emit('a', '1', 'rolled.back', '{}'); ROLLBACK;
         BEGIN; SELECT private.outbox_emit('a', '1', 'a.created', '{}');
                SELECT private.outbox_emit('b', '1', 'b.created', '{}'); COMMIT;",
    )
    .await
    .expect("emit");

    let mut received = Vec::new();
    while received.len() < 2 {
        let note = tokio::time::timeout(Duration::from_secs(10), notes.recv())
            .await
            .expect("a notification within 10 s")
            .expect("listener alive");
        received.push(note);
    }
    received.sort();
    assert_eq!(
        received,
        vec!["pgrpc_outbox:a.created", "pgrpc_outbox:b.created"]
    );
    // Nothing from the rolled-back transaction follows.
    su.batch_execute("NOTIFY pgrpc_outbox, 'marker'")
        .await
        .expect("marker");
    let next = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("marker within 10 s");
    assert_eq!(next.as_deref(), Some("pgrpc_outbox:marker"));
}

/// A service claims and acknowledges over HTTP, and an acknowledged event is never handed out again.
#[tokio::test]
async fn a_service_claims_and_acknowledges_over_http() {
    let server = TestServer::start().await;
    let su = server.db.superuser().await;
    let first = emit(&su, "order", "o1", "order.created").await;
    let second = emit(&su, "order", "o2", "order.created").await;

    let r = server
        .service_rpc(
            "outbox_claim",
            json!({"consumer": "http-test", "max_events": 10}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let lease = r.body["lease_token"]
        .as_str()
        .expect("lease_token")
        .to_string();
    let events = r.body["events"].as_array().expect("events").clone();
    assert_eq!(ids_of(&events), vec![first, second]);
    for key in [
        "id",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "payload",
        "attempts",
        "created_at",
    ] {
        assert!(
            events[0].get(key).is_some(),
            "event lacks {key}: {}",
            events[0]
        );
    }
    assert_eq!(events[0]["attempts"], 1);

    let again = server
        .service_rpc("outbox_claim", json!({"consumer": "http-test-2"}))
        .await;
    assert_eq!(
        again.body["events"],
        json!([]),
        "a leased event was handed out twice"
    );

    let acked = server
        .service_rpc(
            "outbox_ack",
            json!({"lease_token": lease, "ids": [first, second]}),
        )
        .await;
    assert_eq!(acked.status, 200, "{}", acked.text);
    assert_eq!(acked.body, json!(2));
    let twice = server
        .service_rpc(
            "outbox_ack",
            json!({"lease_token": lease, "ids": [first, second]}),
        )
        .await;
    assert_eq!(twice.body, json!(0));

    let bad = server
        .service_rpc("outbox_claim", json!({"consumer": "x", "max_events": 0}))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.error_key(), "invalid_max_events");

    let anon = server
        .rpc("outbox_claim", None, json!({"consumer": "x"}))
        .await;
    assert_eq!(
        anon.status, 401,
        "anonymous callers must not claim events: {}",
        anon.text
    );
}

/// The array arguments are one-dimensional (as OpenAPI describes them): a
/// nested array to outbox_claim or outbox_ack is 400 and changes nothing.
#[tokio::test]
async fn a_nested_array_argument_is_400_and_changes_nothing() {
    let server = TestServer::start().await;
    let su = server.db.superuser().await;
    let first = emit(&su, "order", "o1", "order.created").await;
    let second = emit(&su, "order", "o2", "order.created").await;
    let leased = "SELECT count(*) FROM private.outbox WHERE status = 'leased'";

    for types in [
        json!([["order.created"]]),
        json!([["order.created"], ["order.paid"]]),
    ] {
        let r = server
            .service_rpc(
                "outbox_claim",
                json!({"consumer": "nested", "event_types": types}),
            )
            .await;
        assert_error(&r, 400, "invalid_event_types");
        assert_eq!(count(&su, leased).await, 0, "a refused claim leased events");
    }

    let r = server
        .service_rpc("outbox_claim", json!({"consumer": "flat"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let lease = r.body["lease_token"]
        .as_str()
        .expect("lease_token")
        .to_string();
    for ids in [json!([[first, second]]), json!([[first], [second]])] {
        let r = server
            .service_rpc("outbox_ack", json!({"lease_token": lease, "ids": ids}))
            .await;
        assert_error(&r, 400, "invalid_ids");
        assert_eq!(
            count(&su, leased).await,
            2,
            "a refused ack acknowledged events"
        );
    }
    let r = server
        .service_rpc(
            "outbox_ack",
            json!({"lease_token": lease, "ids": [first, second]}),
        )
        .await;
    assert_eq!(r.body, json!(2), "{}", r.text);
}

/// Only the head of each aggregate is claimable; the next one follows its acknowledgement.
#[tokio::test]
async fn an_event_waits_while_an_earlier_event_of_its_aggregate_is_pending_or_leased() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let svc = db.as_role("pgrpc_service").await;
    let a1 = emit(&su, "order", "A", "order.created").await;
    let a2 = emit(&su, "order", "A", "order.paid").await;
    let b1 = emit(&su, "order", "B", "order.created").await;
    let a3 = emit(&su, "order", "A", "order.shipped").await;

    let (lease, events) = claim(&svc, "c1", 100, 30, None).await;
    assert_eq!(ids_of(&events), vec![a1, b1]);
    let (_, none) = claim(&svc, "c2", 100, 30, None).await;
    assert!(
        none.is_empty(),
        "A's second event was claimable while its first was leased"
    );

    // A filter on the later type does not jump the queue either.
    let (_, none) = claim(&svc, "c2", 100, 30, Some(vec!["order.paid".into()])).await;
    assert!(none.is_empty());

    assert_eq!(ack(&svc, lease, &[a1]).await, 1);
    let (lease2, events) = claim(&svc, "c2", 100, 30, Some(vec!["order.paid".into()])).await;
    assert_eq!(ids_of(&events), vec![a2]);

    // A nacked head stays in front: it is pending again, so a3 still waits.
    svc.query_one(
        "SELECT * FROM api.outbox_nack($1, $2, 'boom', 0)",
        &[&lease2, &a2],
    )
    .await
    .expect("nack");
    let (lease3, events) = claim(&svc, "c3", 100, 30, None).await;
    assert_eq!(ids_of(&events), vec![a2]);
    assert_eq!(events[0]["attempts"], 2);
    assert_eq!(ack(&svc, lease3, &[a2]).await, 1);
    let (_, events) = claim(&svc, "c3", 100, 30, Some(vec!["order.shipped".into()])).await;
    assert_eq!(ids_of(&events), vec![a3]);
}

/// Under concurrent emitters and claimers (with failures), each aggregate's events are processed once each, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_aggregate_order_holds_with_concurrent_claimers() {
    const AGGREGATES: usize = 12;
    const PER_AGGREGATE: usize = 15;
    const CONSUMERS: usize = 8;
    let total = AGGREGATES * PER_AGGREGATE;
    let db = Arc::new(TestDb::new().await);

    // Emitters: one task per aggregate, so events keep arriving while
    // consumers claim.
    let emitters = (0..AGGREGATES).map(|a| {
        let db = db.clone();
        tokio::spawn(async move {
            let su = db.superuser().await;
            for _ in 0..PER_AGGREGATE {
                emit(&su, "order", &format!("agg-{a}"), "order.changed").await;
            }
        })
    });
    let emitters: Vec<_> = emitters.collect();

    // The processing log: appended before the acknowledgement commits, so a
    // successor can only be appended after its predecessor.
    let log: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let consumers = (0..CONSUMERS).map(|c| {
        let db = db.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let svc = db.as_role("pgrpc_service").await;
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut round = 0u64;
            loop {
                if log.lock().expect("log").len() >= total || Instant::now() > deadline {
                    return;
                }
                round += 1;
                let (lease, events) = claim(&svc, &format!("consumer-{c}"), 4, 60, None).await;
                if events.is_empty() {
                    // Nothing due yet: emitters are still writing, or every
                    // head is leased by another consumer.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for event in events {
                    let id = event["id"].as_i64().expect("id");
                    // Fail about one delivery in five; it must come back first.
                    if (id as u64 + round + c as u64).is_multiple_of(5) {
                        svc.query_one(
                            "SELECT * FROM api.outbox_nack($1, $2, 'injected', 0)",
                            &[&lease, &id],
                        )
                        .await
                        .expect("nack");
                        continue;
                    }
                    let aggregate = event["aggregate_id"]
                        .as_str()
                        .expect("aggregate")
                        .to_string();
                    log.lock().expect("log").push((aggregate, id));
                    assert_eq!(ack(&svc, lease, &[id]).await, 1, "ack of a live lease");
                }
            }
        })
    });
    let consumers: Vec<_> = consumers.collect();
    join_tasks(emitters).await;
    join_tasks(consumers).await;

    let log = log.lock().expect("log").clone();
    assert_eq!(log.len(), total, "not every event was processed in time");
    let mut per_aggregate: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (aggregate, id) in log {
        per_aggregate.entry(aggregate).or_default().push(id);
    }
    let su = db.superuser().await;
    for (aggregate, seen) in per_aggregate {
        let expected: Vec<i64> = query_column(
            &su,
            "SELECT id FROM private.outbox WHERE aggregate_id = $1 ORDER BY id",
            &[&aggregate],
        )
        .await;
        assert_eq!(
            seen, expected,
            "aggregate {aggregate} processed out of order or twice"
        );
    }
    assert_eq!(
        count(
            &su,
            "SELECT count(*) FROM private.outbox WHERE status <> 'delivered'"
        )
        .await,
        0
    );
}

/// Concurrent claimers never receive the same event within a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_share_an_event() {
    let db = Arc::new(TestDb::new().await);
    let su = db.superuser().await;
    su.batch_execute(
        "SELECT private.outbox_emit('item', g::text, 'item.created', '{}') FROM generate_series(1, 300) g",
    )
    .await
    .expect("emit");
    let claims = (0..10).map(|c| {
        let db = db.clone();
        tokio::spawn(async move {
            let svc = db.as_role("pgrpc_service").await;
            let mut mine = Vec::new();
            loop {
                let (_, events) = claim(&svc, &format!("c{c}"), 7, 60, None).await;
                if events.is_empty() {
                    return mine;
                }
                mine.extend(ids_of(&events));
            }
        })
    });
    let mut all: Vec<i64> = join_tasks(claims).await.concat();
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count, "an event was leased to two claimers");
    assert_eq!(count, 300);
}

/// A wrong lease token acknowledges nothing and cannot nack; the right one acknowledges once.
#[tokio::test]
async fn a_wrong_lease_token_acknowledges_nothing() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let svc = db.as_role("pgrpc_service").await;
    let id = emit(&su, "order", "o1", "order.created").await;
    let (lease, _) = claim(&svc, "c1", 10, 30, None).await;

    assert_eq!(ack(&svc, Uuid::new_v4(), &[id]).await, 0);
    let err = svc
        .query_one(
            "SELECT * FROM api.outbox_nack($1, $2, 'x')",
            &[&Uuid::new_v4(), &id],
        )
        .await
        .expect_err("nack with a foreign lease");
    assert_eq!(sqlstate(&err), "PT409");
    assert_eq!(status_of(&su, id).await.0, "leased");

    assert_eq!(ack(&svc, lease, &[id, id + 1000]).await, 1);
    assert_eq!(ack(&svc, lease, &[id]).await, 0);
    assert_eq!(status_of(&su, id).await.0, "delivered");
}

/// An expired lease is handed out again under a new token, and the old token can no longer acknowledge.
#[tokio::test]
async fn an_expired_lease_is_redelivered_and_the_old_token_is_refused() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let svc = db.as_role("pgrpc_service").await;
    let id = emit(&su, "order", "o1", "order.created").await;

    let (old, events) = claim(&svc, "slow", 10, 1, None).await;
    assert_eq!(ids_of(&events), vec![id]);
    let (_, none) = claim(&svc, "fast", 10, 30, None).await;
    assert!(none.is_empty(), "a live lease was taken over");

    tokio::time::sleep(Duration::from_millis(1300)).await; // let the 1 s lease pass

    let (new, events) = claim(&svc, "fast", 10, 30, None).await;
    assert_eq!(ids_of(&events), vec![id]);
    assert_eq!(events[0]["attempts"], 2);
    assert_ne!(old, new);
    assert_eq!(
        ack(&svc, old, &[id]).await,
        0,
        "the expired lease acknowledged"
    );
    assert_eq!(ack(&svc, new, &[id]).await, 1);
    let leased_by: String = query_value(
        &su,
        "SELECT leased_by FROM private.outbox WHERE id = $1",
        &[&id],
    )
    .await;
    assert_eq!(leased_by, "fast");
}

/// nack backs off exponentially with jitter, the event dies after max_attempts, and requeue revives it.
#[tokio::test]
async fn nack_reaches_dead_after_max_attempts_and_requeue_revives_it() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let admin = db.as_role("pgrpc_admin").await;
    let svc = db.as_role("pgrpc_service").await;
    admin
        .execute("SELECT admin.set_setting('outbox_max_attempts', '3')", &[])
        .await
        .expect("set max attempts");
    let id = emit(&su, "order", "o1", "order.created").await;

    // First failure, default backoff: 2^1 s times a jitter in [0.5, 1.5).
    let (lease, _) = claim(&svc, "c", 10, 30, None).await;
    let row = svc
        .query_one(
            "SELECT status, attempts, extract(epoch FROM available_at - clock_timestamp())::float8
             FROM api.outbox_nack($1, $2, 'HTTP 503')",
            &[&lease, &id],
        )
        .await
        .expect("nack");
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 1);
    let delay: f64 = row.get(2);
    assert!(
        (0.9..3.0).contains(&delay),
        "backoff {delay}s outside [1, 3)"
    );
    let (_, none) = claim(&svc, "c", 10, 30, None).await;
    assert!(none.is_empty(), "a backed-off event was claimable at once");

    // Make it due now and fail it twice more: the third attempt is the last.
    let mut statuses = Vec::new();
    for attempt in 2..=3 {
        su.execute(
            "UPDATE private.outbox SET available_at = clock_timestamp() WHERE id = $1",
            &[&id],
        )
        .await
        .expect("make due");
        let (lease, events) = claim(&svc, "c", 10, 30, None).await;
        assert_eq!(events[0]["attempts"], attempt);
        let row = svc
            .query_one(
                "SELECT status FROM api.outbox_nack($1, $2, 'HTTP 500', 0)",
                &[&lease, &id],
            )
            .await
            .expect("nack");
        statuses.push(row.get::<_, String>(0));
    }
    assert_eq!(statuses, vec!["pending", "dead"]);
    let (_, none) = claim(&svc, "c", 10, 30, None).await;
    assert!(none.is_empty(), "a dead event was claimed");
    let dead: i64 = query_value(&admin, "SELECT dead FROM admin.outbox_health", &[]).await;
    assert_eq!(dead, 1);
    let last_error: String = query_value(
        &su,
        "SELECT last_error FROM private.outbox WHERE id = $1",
        &[&id],
    )
    .await;
    assert_eq!(last_error, "HTTP 500");

    let revived: i32 = query_value(
        &admin,
        "SELECT admin.outbox_requeue(ARRAY[$1::bigint])",
        &[&id],
    )
    .await;
    assert_eq!(revived, 1);
    let (lease, events) = claim(&svc, "c", 10, 30, None).await;
    assert_eq!(ids_of(&events), vec![id]);
    assert_eq!(events[0]["attempts"], 1, "requeue restarts the attempts");
    assert_eq!(ack(&svc, lease, &[id]).await, 1);
}

/// An operator (a login that is a member of pgrpc_admin) passing a nested
/// array to admin.outbox_requeue gets 400 invalid_ids and revives nothing,
/// as api.outbox_ack refuses one. outbox_requeue is the only function of
/// `admin` with an array parameter: a new one needs the same rule and a
/// case here.
#[tokio::test]
async fn requeue_refuses_a_nested_array_and_revives_nothing() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let svc = db.as_role("pgrpc_service").await;
    let login = format!("ops_{}", db.name);
    su.batch_execute(&format!(
        "CREATE ROLE {login} LOGIN PASSWORD 'pw'; GRANT pgrpc_admin TO {login}"
    ))
    .await
    .expect("create login");
    let ops = connect(&db.url_as(&login, "pw")).await;
    let user: String = query_value(&ops, "SELECT current_user::text", &[]).await;
    assert_eq!(user, login, "the operator's own login, no SET ROLE");

    let arrays: Vec<String> = query_column(
        &su,
        "SELECT p.oid::regprocedure::text FROM pg_proc AS p
         WHERE p.pronamespace = 'admin'::regnamespace
           AND EXISTS (SELECT FROM unnest(p.proargtypes::oid[]) AS a(t)
                       JOIN pg_type AS ty ON ty.oid = a.t
                       WHERE ty.typcategory = 'A')
         ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(arrays, ["admin.outbox_requeue(bigint[])"]);

    ops.execute("SELECT admin.set_setting('outbox_max_attempts', '1')", &[])
        .await
        .expect("set max attempts");
    let first = emit(&su, "order", "o1", "order.created").await;
    let second = emit(&su, "order", "o2", "order.created").await;
    let (lease, events) = claim(&svc, "c", 10, 30, None).await;
    assert_eq!(ids_of(&events), vec![first, second]);
    for id in [first, second] {
        svc.execute(
            "SELECT api.outbox_nack($1, $2, 'HTTP 500', 0)",
            &[&lease, &id],
        )
        .await
        .expect("nack");
    }
    let dead = || async { (status_of(&su, first).await, status_of(&su, second).await) };
    let before = dead().await;
    assert_eq!(before, (("dead".to_string(), 1), ("dead".to_string(), 1)));

    for ids in [
        format!("ARRAY[[{first}, {second}]]"),
        format!("ARRAY[[{first}], [{second}]]"),
        format!("'{{{{{{{first}}}}}}}'::bigint[]"),
    ] {
        let sql = format!("SELECT admin.outbox_requeue({ids})");
        let (state, message) = error_of(&ops, &sql).await;
        assert_eq!(
            (state.as_str(), message.as_str()),
            ("PT400", "invalid_ids"),
            "{sql}"
        );
        assert_eq!(dead().await, before, "{sql} revived events");
    }
    let dims: i32 = query_value(
        &su,
        &format!("SELECT array_ndims('{{{{{{{first}}}}}}}'::bigint[])"),
        &[],
    )
    .await;
    assert_eq!(dims, 3, "the third case is three-dimensional");

    let revived: i32 = query_value(
        &ops,
        "SELECT admin.outbox_requeue(ARRAY[$1::bigint, $2::bigint])",
        &[&first, &second],
    )
    .await;
    assert_eq!(revived, 2);
    assert_eq!(status_of(&su, first).await, ("pending".to_string(), 0));
}

/// A lease that expires on the last allowed attempt makes the event dead instead of looping forever.
#[tokio::test]
async fn a_lease_expiring_on_the_last_attempt_makes_the_event_dead() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let svc = db.as_role("pgrpc_service").await;
    su.execute(
        "UPDATE private.settings SET value = '1' WHERE key = 'outbox_max_attempts'",
        &[],
    )
    .await
    .expect("setting");
    let id = emit(&su, "order", "o1", "order.created").await;
    let (_, events) = claim(&svc, "crashing", 10, 1, None).await;
    assert_eq!(ids_of(&events), vec![id]);
    tokio::time::sleep(Duration::from_millis(1300)).await; // let the 1 s lease pass
    let (_, none) = claim(&svc, "next", 10, 30, None).await;
    assert!(none.is_empty());
    assert_eq!(status_of(&su, id).await, ("dead".to_string(), 1));
}

/// The event columns refuse UPDATE for every role, and undelivered events refuse DELETE and TRUNCATE.
#[tokio::test]
async fn the_event_columns_refuse_update_for_every_role() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let id = emit(&su, "order", "o1", "order.created").await;
    let updates = [
        "aggregate_type = 'x'",
        "aggregate_id = 'x'",
        "event_type = 'x'",
        "payload = '{\"forged\": true}'",
        "created_at = now() - interval '1 day'",
    ]
    .map(|set| format!("UPDATE private.outbox SET {set} WHERE id = {id}"));
    let removals = [
        format!("DELETE FROM private.outbox WHERE id = {id}"),
        "TRUNCATE private.outbox".to_string(),
    ];
    let mut refusals = 0;
    for role in [
        "pgrpc_api",
        "pgrpc_admin",
        "pgrpc_owner",
        "pgrpc_service",
        "postgres",
    ] {
        let client = db.as_role(role).await;
        assert_refused_as(&client, role, &updates, &[]).await;
        refusals += updates.len();
        assert_refused_as(&client, role, &removals, &[]).await;
    }
    assert_eq!(refusals, 25);
    let row = su
        .query_one(
            "SELECT aggregate_id, payload FROM private.outbox WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "o1");
    assert_eq!(row.get::<_, Value>(1), json!({"aggregate": "o1"}));

    // The delivery state machine: a delivered event is never pending again.
    let superuser = db.superuser().await;
    superuser
        .batch_execute(&format!(
            "UPDATE private.outbox SET status = 'leased', lease_token = gen_random_uuid(),
                    lease_expires_at = now() WHERE id = {id};
             UPDATE private.outbox SET status = 'delivered', delivered_at = now() WHERE id = {id};"
        ))
        .await
        .expect("deliver by hand");
    let err = superuser
        .execute(
            "UPDATE private.outbox SET status = 'pending', delivered_at = NULL WHERE id = $1",
            &[&id],
        )
        .await
        .expect_err("redeliver");
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err}");
}

/// The purge deletes only delivered events older than the window, and the health view counts by status.
#[tokio::test]
async fn purge_deletes_only_old_delivered_events_and_health_counts_them() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let svc = db.as_role("pgrpc_service").await;
    let admin = db.as_role("pgrpc_admin").await;
    let mut delivered = Vec::new();
    for i in 0..3 {
        delivered.push(emit(&su, "order", &format!("d{i}"), "order.created").await);
    }
    let (lease, _) = claim(&svc, "c", 10, 30, None).await;
    assert_eq!(ack(&svc, lease, &delivered).await, 3);
    let pending = emit(&su, "order", "p", "order.created").await;

    let health = admin
        .query_one(
            "SELECT pending, leased, delivered, dead, oldest_pending_age IS NOT NULL FROM admin.outbox_health",
            &[],
        )
        .await
        .expect("health");
    assert_eq!(
        (
            health.get::<_, i64>(0),
            health.get::<_, i64>(1),
            health.get::<_, i64>(2),
            health.get::<_, i64>(3)
        ),
        (1, 0, 3, 0)
    );
    assert!(health.get::<_, bool>(4));

    let kept: i64 = query_value(&admin, "SELECT admin.outbox_purge_delivered()", &[]).await;
    assert_eq!(
        kept, 0,
        "events delivered just now are within the 7 day window"
    );
    let purged: i64 = query_value(
        &admin,
        "SELECT admin.outbox_purge_delivered('0 seconds')",
        &[],
    )
    .await;
    assert_eq!(purged, 3);
    let left: Vec<i64> = query_column(&su, "SELECT id FROM private.outbox", &[]).await;
    assert_eq!(left, vec![pending]);

    let svc_err = svc
        .query_one("SELECT admin.outbox_purge_delivered('0 seconds')", &[])
        .await
        .expect_err("a service may not purge");
    assert_eq!(svc_err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
}

/// Each of the six SPEC event types has an emitter in the migrations.
#[tokio::test]
async fn every_spec_event_type_is_emitted_by_some_database_function() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let sources: Vec<String> = query_column(
        &su,
        "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('api', 'private', 'admin')",
        &[],
    )
    .await;
    let mut missing = HashMap::new();
    for event_type in [
        "contract.signed",
        "ticket.created",
        "suggestion.granted",
        "task_management.connection_status_changed",
        "receive.finalized",
        "security.oauth_nonce_replayed",
    ] {
        let emitted = sources
            .iter()
            .any(|src| src.contains("outbox_emit") && src.contains(&format!("'{event_type}'")));
        if !emitted {
            missing.insert(event_type, ());
        }
    }
    assert!(
        missing.is_empty(),
        "no emitter for {:?}",
        missing.keys().collect::<Vec<_>>()
    );
}

/// updated_at moves with every delivery change (claim, ack), is kept by the database alone (pgrpc_api may not write it, an owner's value is overwritten), and the event columns stay write-once beside it.
#[tokio::test]
async fn updated_at_follows_every_delivery_change_and_cannot_be_forged() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let svc = db.as_role("pgrpc_service").await;
    let id = emit(&su, "order", "u1", "order.created").await;
    let read = "SELECT created_at, updated_at, status FROM private.outbox WHERE id = $1";
    type Stamp = (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        String,
    );
    async fn stamp(su: &Client, read: &str, id: i64) -> Stamp {
        let row = su.query_one(read, &[&id]).await.expect("read event");
        (row.get(0), row.get(1), row.get(2))
    }

    let (created, emitted, _) = stamp(&su, read, id).await;
    assert!(emitted >= created);

    let (lease, events) = claim(&svc, "c", 10, 30, None).await;
    assert_eq!(ids_of(&events), vec![id]);
    let (_, claimed, status) = stamp(&su, read, id).await;
    assert_eq!(status, "leased");
    assert!(claimed > emitted, "the claim moved updated_at");

    assert_eq!(ack(&svc, lease, &[id]).await, 1);
    let (created_after, acked, status) = stamp(&su, read, id).await;
    assert_eq!(status, "delivered");
    assert!(acked > claimed, "the ack moved updated_at");
    assert_eq!(created_after, created, "created_at is write-once");

    let err = db
        .as_role("pgrpc_api")
        .await
        .execute(
            "UPDATE private.outbox SET updated_at = now() - interval '1 year' WHERE id = $1",
            &[&id],
        )
        .await
        .expect_err("pgrpc_api writes delivery columns only");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");

    db.superuser()
        .await
        .execute(
            "UPDATE private.outbox SET updated_at = '2000-01-01' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the owner may touch the row");
    let (_, touched, _) = stamp(&su, read, id).await;
    assert!(
        touched > acked,
        "the trigger keeps updated_at, not the caller"
    );
}
