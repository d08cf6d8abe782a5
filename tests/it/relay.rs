//! The outbox relay (`pgrpc relay`, SPEC §4.6): run in-process against a
//! test HTTP receiver, it delivers every event at least once, signed and
//! carrying its id, in per-aggregate order, and survives being killed.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pgrpc::relay::{
    self, RelayConfig, RelayError, ATTEMPT_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::outbox::emit;
use crate::support::db::{count, query_column};
use crate::support::TestDb;

const SECRET: &str = "relay-test-signing-secret-0123456789abcdef";

/// One POST as the receiver saw it.
#[derive(Clone, Debug)]
struct Delivery {
    header_id: i64,
    header_type: String,
    attempt: i32,
    signature: String,
    body: Bytes,
    json: Value,
}

/// The distinct event ids of `deliveries`.
fn event_ids(deliveries: &[Delivery]) -> BTreeSet<i64> {
    deliveries.iter().map(|d| d.header_id).collect()
}

/// Decides the answer to the `nth` (0-based) delivery of an event id:
/// status and how long to wait before answering.
type Behavior = Arc<dyn Fn(i64, usize) -> (u16, Duration) + Send + Sync>;

struct ReceiverState {
    deliveries: Mutex<Vec<Delivery>>,
    changed: watch::Sender<usize>,
    behavior: Behavior,
}

/// A webhook endpoint on 127.0.0.1 that records every request on arrival.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(behavior: Behavior) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ReceiverState {
            deliveries: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            behavior,
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { state.handle(req).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}/hooks/outbox"),
            state,
            task,
        }
    }

    /// Always 200 at once.
    async fn accepting() -> Receiver {
        Receiver::start(Arc::new(|_, _| (200, Duration::ZERO))).await
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().expect("deliveries").clone()
    }

    fn distinct_ids(&self) -> BTreeSet<i64> {
        event_ids(&self.deliveries())
    }

    /// Waits until every id of `expected` has been received.
    async fn wait_for_every(&self, expected: &BTreeSet<i64>, within: Duration) {
        self.wait_for("every event", within, |d| event_ids(d) == *expected)
            .await;
    }

    /// Waits (event-driven, with a deadline) until `pred` holds.
    async fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&[Delivery]) -> bool) {
        let mut changes = self.state.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if pred(&self.deliveries()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out after {within:?} waiting for {what}; received ids {:?}",
                    self.distinct_ids()
                );
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReceiverState {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let headers = req.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let delivery = Delivery {
            header_id: header(EVENT_ID_HEADER).parse().unwrap_or(-1),
            header_type: header(EVENT_TYPE_HEADER),
            attempt: header(ATTEMPT_HEADER).parse().unwrap_or(-1),
            signature: header(SIGNATURE_HEADER),
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            body,
        };
        let id = delivery.header_id;
        let nth = {
            let mut all = self.deliveries.lock().expect("deliveries");
            let nth = all.iter().filter(|d| d.header_id == id).count();
            all.push(delivery);
            nth
        };
        self.changed.send_modify(|n| *n += 1);
        let (status, delay) = (self.behavior)(id, nth);
        tokio::time::sleep(delay).await;
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":false}")));
        *response.status_mut() = StatusCode::from_u16(status).expect("test status");
        if status == 503 {
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        Ok(response)
    }
}

/// A relay task and the means to stop it gracefully.
struct RunningRelay {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl RunningRelay {
    fn start(config: RelayConfig) -> RunningRelay {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay::run(config, async {
            let _ = stopped.await;
        }));
        RunningRelay {
            stop: Some(stop),
            task,
        }
    }

    /// Graceful shutdown; the relay must return Ok within `within`.
    async fn stop(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(within, &mut self.task)
            .await
            .expect("relay stops in time")
            .expect("relay task");
        result.expect("relay ran without error");
    }

    /// The crash: the task is dropped wherever it is, nothing is acknowledged.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn config(db: &TestDb, receiver: &Receiver, consumer: &str) -> RelayConfig {
    let mut config = RelayConfig::new(db.authenticator_url(), receiver.url.clone(), SECRET);
    config.consumer = consumer.to_string();
    config.poll_interval = Duration::from_millis(250);
    config.request_timeout = Duration::from_secs(2);
    config.lease_seconds = 4;
    config
}

/// Every delivery is signed over its body and names its event in the headers.
fn assert_well_formed(deliveries: &[Delivery]) {
    let now = chrono::Utc::now().timestamp();
    for d in deliveries {
        let timestamp = relay::verify_signature(SECRET.as_bytes(), &d.signature, &d.body)
            .unwrap_or_else(|| panic!("bad signature on event {}: {}", d.header_id, d.signature));
        assert!(
            (now - timestamp).abs() < 300,
            "stale signature timestamp {timestamp}"
        );
        assert_eq!(
            d.json["id"].as_i64(),
            Some(d.header_id),
            "header and body ids differ"
        );
        assert_eq!(d.json["event_type"].as_str(), Some(d.header_type.as_str()));
        assert_eq!(d.json["attempts"].as_i64(), Some(d.attempt.into()));
        assert!(d.json["payload"].is_object(), "payload missing: {}", d.json);
    }
}

/// Each aggregate's events were delivered in strictly increasing id order.
fn assert_aggregate_order(deliveries: &[Delivery]) {
    let mut per_aggregate: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for d in deliveries {
        let aggregate = d.json["aggregate_id"]
            .as_str()
            .expect("aggregate_id")
            .to_string();
        per_aggregate
            .entry(aggregate)
            .or_default()
            .push(d.header_id);
    }
    for (aggregate, ids) in per_aggregate {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "aggregate {aggregate} delivered out of order: {ids:?}"
        );
    }
}

/// Asserts that a run without failures delivered each of `expected` once,
/// well-formed and in per-aggregate order, and acknowledged every delivery.
async fn assert_delivered_once_each(
    deliveries: &[Delivery],
    expected: &BTreeSet<i64>,
    su: &Client,
) {
    assert_well_formed(deliveries);
    assert_eq!(&event_ids(deliveries), expected, "an event was lost");
    assert_eq!(
        deliveries.len(),
        expected.len(),
        "an event was delivered twice"
    );
    assert_eq!(undelivered(su).await, 0, "a delivery was not acknowledged");
    assert_aggregate_order(deliveries);
}

async fn all_ids(su: &Client) -> BTreeSet<i64> {
    query_column(su, "SELECT id FROM private.outbox", &[])
        .await
        .into_iter()
        .collect()
}

async fn undelivered(su: &Client) -> i64 {
    count(
        su,
        "SELECT count(*) FROM private.outbox WHERE status <> 'delivered'",
    )
    .await
}

/// Polls the outbox until every event is delivered (acknowledged), or fails.
async fn wait_all_delivered(su: &Client, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while undelivered(su).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events still undelivered after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The relay delivers every event (emitted before and while it runs), signed, with its id, in per-aggregate order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_delivers_every_event_signed_and_in_aggregate_order() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let receiver = Receiver::accepting().await;
    for round in 0..3 {
        for a in 0..8 {
            emit(
                &su,
                "order",
                &format!("order-{a}"),
                &format!("order.step{round}"),
            )
            .await;
        }
    }
    let relay = RunningRelay::start(config(&db, &receiver, "relay-1"));
    // More events while it runs, including a signed contract.
    for a in 0..8 {
        emit(&su, "order", &format!("order-{a}"), "order.closed").await;
    }
    let team: uuid::Uuid = su
        .query_one("SELECT id FROM api.create_team(5, 'T')", &[])
        .await
        .expect("team")
        .get(0);
    let parent: uuid::Uuid = su
        .query_one(
            "SELECT id FROM api.create_parent(5, 'P', 'p@example.com')",
            &[],
        )
        .await
        .expect("parent")
        .get(0);
    let token: String = su
        .query_one(
            "SELECT contract_token FROM api.create_player(5, $1, 'Kid', $2)",
            &[&team, &parent],
        )
        .await
        .expect("player")
        .get(0);
    su.query_one("SELECT * FROM api.sign_contract($1, 'sig')", &[&token])
        .await
        .expect("sign a contract");
    let expected = all_ids(&su).await;
    assert_eq!(expected.len(), 33);

    receiver
        .wait_for_every(&expected, Duration::from_secs(30))
        .await;
    relay.stop(Duration::from_secs(10)).await;

    let deliveries = receiver.deliveries();
    assert_delivered_once_each(&deliveries, &expected, &su).await;
    let signed = deliveries
        .iter()
        .find(|d| d.header_type == "contract.signed")
        .expect("the contract.signed event");
    assert_eq!(signed.json["payload"]["tenant_id"], 5);
    assert_eq!(signed.json["payload"]["player_name"], "Kid");
}

/// A notification wakes an idle relay at once, and the poll delivers an event whose notification never came.
#[tokio::test]
async fn notify_wakes_the_relay_and_polling_covers_a_lost_notification() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let receiver = Receiver::accepting().await;

    // Polls only once a minute: a prompt delivery must come from LISTEN.
    let mut listening = config(&db, &receiver, "listening");
    listening.poll_interval = Duration::from_secs(60);
    let relay = RunningRelay::start(listening);
    let first = emit(&su, "order", "o1", "order.created").await;
    receiver
        .wait_for("the first event", Duration::from_secs(20), |d| d.len() == 1)
        .await;
    // The relay is now idle and listening.
    let second = emit(&su, "order", "o2", "order.created").await;
    receiver
        .wait_for("the notified event", Duration::from_secs(10), |d| {
            d.len() == 2
        })
        .await;
    relay.stop(Duration::from_secs(10)).await;

    // An insert whose NOTIFY never fires (triggers off for this session):
    // only the poll can find it.
    let relay = RunningRelay::start(config(&db, &receiver, "polling"));
    su.batch_execute(
        "SET session_replication_role = replica;
         SELECT private.outbox_emit('order', 'o3', 'order.created', '{}');
         SET session_replication_role = origin;",
    )
    .await
    .expect("silent emit");
    receiver
        .wait_for("the silent event", Duration::from_secs(10), |d| {
            d.len() == 3
        })
        .await;
    relay.stop(Duration::from_secs(10)).await;
    let ids: Vec<i64> = receiver.deliveries().iter().map(|d| d.header_id).collect();
    assert_eq!(&ids[..2], &[first, second]);
    assert_eq!(undelivered(&su).await, 0);
}

/// After a relay is killed mid-batch and another starts, nothing is lost, failed and unacknowledged events come again with the same id, and every signature verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_batch_loses_nothing_and_redelivers_with_the_same_ids() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let mut failing = BTreeSet::new();
    for i in 0..40 {
        let id = emit(&su, "item", &format!("item-{i}"), "item.created").await;
        if i % 7 == 3 {
            failing.insert(id);
        }
    }
    // Slow answers keep requests in flight; some events fail their first
    // delivery (503 with Retry-After: 1, or 500).
    let fail_first = failing.clone();
    let receiver = Receiver::start(Arc::new(move |id, nth| {
        if nth == 0 && fail_first.contains(&id) {
            (
                if id % 2 == 0 { 503 } else { 500 },
                Duration::from_millis(50),
            )
        } else {
            (200, Duration::from_millis(300))
        }
    }))
    .await;

    let mut first = config(&db, &receiver, "doomed");
    first.batch_size = 10;
    first.concurrency = 4;
    let doomed = RunningRelay::start(first);
    receiver
        .wait_for("deliveries in flight", Duration::from_secs(20), |d| {
            d.len() >= 6
        })
        .await;
    doomed.kill().await;
    let seen_before_kill = receiver.deliveries().len();

    let mut second = config(&db, &receiver, "survivor");
    second.batch_size = 10;
    second.concurrency = 4;
    let survivor = RunningRelay::start(second);
    wait_all_delivered(&su, Duration::from_secs(60)).await;
    survivor.stop(Duration::from_secs(10)).await;

    let deliveries = receiver.deliveries();
    assert_well_formed(&deliveries);
    let expected = all_ids(&su).await;
    assert_eq!(event_ids(&deliveries), expected, "an event was lost");

    let mut by_id: BTreeMap<i64, Vec<&Delivery>> = BTreeMap::new();
    for d in &deliveries {
        by_id.entry(d.header_id).or_default().push(d);
    }
    let redelivered: Vec<i64> = by_id
        .iter()
        .filter(|(_, ds)| ds.len() > 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !redelivered.is_empty(),
        "the killed relay had {seen_before_kill} deliveries in flight, none came again"
    );
    for (id, ds) in &by_id {
        for d in ds {
            assert_eq!(
                d.json["payload"], ds[0].json["payload"],
                "event {id} changed between deliveries"
            );
            assert_eq!(d.json["aggregate_id"], ds[0].json["aggregate_id"]);
        }
        let attempts: Vec<i32> = ds.iter().map(|d| d.attempt).collect();
        let mut sorted = attempts.clone();
        sorted.sort_unstable();
        assert_eq!(attempts, sorted, "event {id}: attempts went backwards");
    }
    let mut nacked = 0;
    for id in &failing {
        assert!(by_id[id].len() >= 2, "failed event {id} was not retried");
        let last_error: Option<String> = su
            .query_one("SELECT last_error FROM private.outbox WHERE id = $1", &[id])
            .await
            .expect("last_error")
            .get(0);
        // None only if the kill came between the failure and its nack.
        if let Some(error) = last_error {
            assert!(
                error.starts_with("HTTP 50"),
                "event {id}: last_error {error:?}"
            );
            nacked += 1;
        }
    }
    assert!(nacked > 0, "no failure was reported with outbox_nack");
}

/// Several relays at once never deliver an event twice while its lease holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_relays_never_deliver_an_event_twice_within_its_lease() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    su.batch_execute(
        "SELECT private.outbox_emit('item', (g % 20)::text, 'item.changed', jsonb_build_object('n', g))
         FROM generate_series(1, 60) g",
    )
    .await
    .expect("emit");
    let expected = all_ids(&su).await;
    let receiver = Receiver::start(Arc::new(|_, _| (200, Duration::from_millis(20)))).await;
    let relays: Vec<RunningRelay> = (0..3)
        .map(|i| {
            let mut c = config(&db, &receiver, &format!("relay-{i}"));
            c.batch_size = 5;
            c.concurrency = 2;
            c.lease_seconds = 30;
            RunningRelay::start(c)
        })
        .collect();
    receiver
        .wait_for_every(&expected, Duration::from_secs(60))
        .await;
    for relay in relays {
        relay.stop(Duration::from_secs(10)).await;
    }
    // Per-aggregate order held across relays too.
    assert_delivered_once_each(&receiver.deliveries(), &expected, &su).await;
}

/// Shutdown lets the requests in flight finish and acknowledges them before the relay returns.
#[tokio::test]
async fn shutdown_finishes_and_acknowledges_the_batch_in_flight() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    for i in 0..3 {
        emit(&su, "order", &format!("o{i}"), "order.created").await;
    }
    let receiver = Receiver::start(Arc::new(|_, _| (200, Duration::from_millis(700)))).await;
    let relay = RunningRelay::start(config(&db, &receiver, "graceful"));
    receiver
        .wait_for("three requests in flight", Duration::from_secs(20), |d| {
            d.len() == 3
        })
        .await;
    relay.stop(Duration::from_secs(10)).await;
    assert_eq!(
        undelivered(&su).await,
        0,
        "the batch in flight was not acknowledged"
    );
    assert_eq!(receiver.deliveries().len(), 3);
}

/// Runs the relay with `config` and asserts that it fails at once, naming `setting`.
async fn assert_bad_setting(config: RelayConfig, setting: &str) {
    let err = relay::run(config, std::future::pending())
        .await
        .expect_err(setting);
    assert!(
        matches!(&err, RelayError::Config { setting: named, .. } if *named == setting),
        "{err}"
    );
}

/// Bad settings fail fast, naming the setting; an unreachable database fails at startup.
#[tokio::test]
async fn bad_settings_fail_fast_and_name_the_setting() {
    let db = TestDb::new().await;
    let receiver = Receiver::accepting().await;
    let mut weak = config(&db, &receiver, "x");
    weak.signing_secret = "short".into();
    assert_bad_setting(weak, "signing_secret").await;

    let mut tls = config(&db, &receiver, "x");
    tls.webhook_url = "https://example.invalid/hook".into();
    assert_bad_setting(tls, "webhook_url").await;

    let mut unreachable = config(&db, &receiver, "x");
    unreachable.database_url = "postgresql://nobody:wrong@127.0.0.1:1/none".into();
    let err = relay::run(unreachable, std::future::pending())
        .await
        .expect_err("no database");
    assert!(matches!(err, RelayError::Database(_)), "{err}");
    assert!(receiver.deliveries().is_empty());
}
