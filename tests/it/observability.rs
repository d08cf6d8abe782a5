//! One trace from the HTTP call to the webhook, and per-function metrics
//! (SPEC §2.3): a `traceparent` (sent, or generated when absent or invalid)
//! reaches SQL, is stored with the outbox events of the transaction, and
//! `pgrpc relay` continues it on the webhook call (a webhook process,
//! `deploy/cluster/webhook.py`); spans go to a real OTLP
//! receiver process; the Grafana dashboard queries only metrics a running
//! server exports.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use pgrpc::relay::{self, RelayConfig};
use pgrpc::trace::{parse_tracestate, TraceParent};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;

use crate::support::db::updatable_columns;
use crate::support::{send, service_token, Resp, TestServer};

/// `api.trace_emit(n)` writes n outbox events, as a domain function would
/// (SECURITY DEFINER, owned by pgrpc_api), and answers what SQL saw;
/// `api.trace_seen()` (STABLE) answers it without writing.
pub(crate) const FIXTURES: &str = r#"
CREATE FUNCTION api.trace_emit(n int DEFAULT 1) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE v_ids bigint[] := '{}';
BEGIN
  FOR i IN 1..n LOOP
    v_ids := v_ids || private.outbox_emit('trace_test', gen_random_uuid()::text, 'trace.tested',
                                          jsonb_build_object('i', i));
  END LOOP;
  RETURN jsonb_build_object('ids', to_jsonb(v_ids), 'trace_id', pgrpc_http.trace_id(),
                            'traceparent', pgrpc_http.traceparent(),
                            'tracestate', pgrpc_http.tracestate());
END $$;
ALTER FUNCTION api.trace_emit(int) OWNER TO pgrpc_api;
GRANT EXECUTE ON FUNCTION api.trace_emit(int) TO pgrpc_anon;
CREATE FUNCTION api.trace_seen() RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('trace_id', pgrpc_http.trace_id(),
                            'traceparent', pgrpc_http.traceparent(),
                            'tracestate', pgrpc_http.tracestate(),
                            'header', current_setting('request.headers', true)::jsonb ->> 'traceparent') $$;
"#;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SECRET: &str = "trace-test-signing-secret-0123456789abcdef";

/// `POST /rpc/<function>` with optional trace headers and token.
pub(crate) async fn traced_post(
    server: &TestServer,
    function: &str,
    body: Value,
    token: Option<&str>,
    trace: &[(&str, &str)],
) -> Resp {
    let mut req = server
        .http
        .post(server.url(&format!("/rpc/{function}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in trace {
        req = req.header(*name, *value);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

/// The stored traceparent and tracestate of outbox event `id`.
async fn stored(server: &TestServer, id: i64) -> (Option<String>, Option<String>) {
    let su = server.db.superuser().await;
    let row = su
        .query_one(
            "SELECT traceparent, tracestate FROM private.outbox WHERE id = $1",
            &[&id],
        )
        .await
        .expect("outbox row");
    (row.get(0), row.get(1))
}

fn parsed(traceparent: &str) -> TraceParent {
    TraceParent::parse(traceparent.as_bytes())
        .unwrap_or_else(|| panic!("not a valid traceparent: {traceparent}"))
}

/// An OTLP/HTTP receiver in a child process (`tests/otlp_receiver.py`),
/// which appends every export request's body to a file.
struct OtlpReceiver {
    url: String,
    file: PathBuf,
    _child: tokio::process::Child,
}

impl OtlpReceiver {
    async fn start() -> OtlpReceiver {
        let file = std::env::temp_dir().join(format!(
            "pgrpc-otlp-{}-{}.jsonl",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut child = tokio::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/otlp_receiver.py"
            ))
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the OTLP receiver");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the receiver prints its port")
            .expect("read")
            .expect("a line");
        OtlpReceiver {
            url: format!("http://127.0.0.1:{}", port.trim()),
            file,
            _child: child,
        }
    }

    /// Every span received so far, with its service name under "service".
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut spans = Vec::new();
        for line in text.lines() {
            let body: Value = serde_json::from_str(line).expect("OTLP JSON");
            for rs in body["resourceSpans"].as_array().expect("resourceSpans") {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
                    .map(|a| a["value"]["stringValue"].clone())
                    .unwrap_or(Value::Null);
                for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
                    for span in ss["spans"].as_array().expect("spans") {
                        let mut span = span.clone();
                        span["service"] = service.clone();
                        spans.push(span);
                    }
                }
            }
        }
        spans
    }

    /// Waits until `pred` holds of the spans received.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..150 {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {what} within 15 s; received {:#?}", self.spans());
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The webhook in a child process: the cluster's demo webhook
/// (`deploy/cluster/webhook.py`), which checks each call's signature and
/// records it with its trace headers (`GET /events`).
struct Webhook {
    url: String,
    events: String,
    _child: tokio::process::Child,
}

impl Webhook {
    async fn start() -> Webhook {
        let mut child = tokio::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/cluster/webhook.py"
            ))
            .env("WEBHOOK_PORT", "0")
            .env("PGRPC_RELAY_SIGNING_SECRET", SECRET)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the webhook");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the webhook prints its port")
            .expect("read")
            .expect("a line");
        let base = format!("http://127.0.0.1:{}", port.trim());
        Webhook {
            url: format!("{base}/hooks/outbox"),
            events: format!("{base}/events"),
            _child: child,
        }
    }

    /// The first delivery the webhook recorded, waiting up to 15 s for it.
    async fn first_call(&self) -> Value {
        let client = reqwest::Client::new();
        for _ in 0..150 {
            if let Ok(resp) = client.get(&self.events).send().await {
                let events: Value = resp.json().await.expect("the webhook's events");
                if let Some(first) = events.as_array().and_then(|a| a.first()) {
                    return first.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the webhook was never called");
    }
}

/// Runs `pgrpc relay` in-process until the returned sender fires.
fn start_relay(
    server: &TestServer,
    webhook: &Webhook,
    otlp: Option<&OtlpReceiver>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), relay::RelayError>>,
) {
    let mut config = RelayConfig::new(server.db.authenticator_url(), webhook.url.clone(), SECRET);
    config.consumer = "trace-relay".into();
    config.poll_interval = Duration::from_millis(250);
    config.request_timeout = Duration::from_secs(2);
    config.lease_seconds = 4;
    config.otlp_endpoint = otlp.map(|o| o.url.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(relay::run(config, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

fn find(spans: &[Value], pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    spans.iter().find(|s| pred(s))
}

// A replayed OAuth nonce, called with a traceparent, writes its security
// event with that trace id; the relay's webhook call carries the same trace
// id under a new span; and the OTLP receiver gets the request, transaction
// and delivery spans of that one trace, each the child of the one before.
#[tokio::test]
async fn one_trace_links_the_call_its_outbox_event_and_the_webhook_call() {
    let otlp = OtlpReceiver::start().await;
    let endpoint = otlp.url.clone();
    let server = TestServer::start_with_sql(FIXTURES, |c| c.otlp_endpoint = Some(endpoint)).await;
    let token = service_token();
    let nonce = traced_post(&server, "issue_oauth_nonce", json!({}), Some(&token), &[]).await;
    assert_eq!(nonce.status, 200, "{}", nonce.text);
    let nonce = nonce.body["nonce"].as_str().expect("nonce").to_string();
    let first = traced_post(
        &server,
        "consume_oauth_nonce",
        json!({"nonce": nonce}),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(
        (first.status, first.body.clone()),
        (200, json!(true)),
        "{}",
        first.text
    );

    let state = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7";
    let replay = traced_post(
        &server,
        "consume_oauth_nonce",
        json!({"nonce": nonce}),
        Some(&token),
        &[("traceparent", CALLER), ("tracestate", state)],
    )
    .await;
    assert_eq!(
        (replay.status, replay.body.clone()),
        (200, json!(false)),
        "{}",
        replay.text
    );

    let su = server.db.superuser().await;
    let id: i64 = su
        .query_one(
            "SELECT id FROM private.outbox WHERE event_type = 'security.oauth_nonce_replayed'",
            &[],
        )
        .await
        .expect("one replay event")
        .get(0);
    let (traceparent, tracestate) = stored(&server, id).await;
    let event_context = parsed(&traceparent.expect("a stored traceparent"));
    assert_eq!(hex::encode(event_context.trace_id), CALLER_TRACE);
    assert_ne!(
        hex::encode(event_context.parent_id),
        CALLER_SPAN,
        "the transaction's own span"
    );
    assert_eq!(
        tracestate.as_deref(),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );

    let webhook = Webhook::start().await;
    let (stop, relay) = start_relay(&server, &webhook, Some(&otlp));
    let call = webhook.first_call().await;
    let _ = stop.send(());
    relay.await.expect("relay task").expect("relay ran");
    assert_eq!(call["event_id"], id, "{call}");
    assert_eq!(call["signature_ok"], true, "{call}");
    let delivery = parsed(call["traceparent"].as_str().expect("a traceparent"));
    assert_eq!(hex::encode(delivery.trace_id), CALLER_TRACE, "same trace");
    assert_ne!(delivery.parent_id, event_context.parent_id, "a new span id");
    assert_ne!(hex::encode(delivery.parent_id), CALLER_SPAN);
    assert_eq!(
        call["tracestate"],
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );

    let tx_span = hex::encode(event_context.parent_id);
    let delivery_span = hex::encode(delivery.parent_id);
    let spans = otlp
        .wait_for("request, transaction and delivery spans", |spans| {
            [&tx_span, &delivery_span]
                .iter()
                .all(|id| find(spans, |s| s["spanId"] == ***id).is_some())
                && find(spans, |s| s["parentSpanId"] == CALLER_SPAN).is_some()
        })
        .await;
    let request = find(&spans, |s| s["parentSpanId"] == CALLER_SPAN).expect("request span");
    let transaction = find(&spans, |s| s["spanId"] == tx_span.as_str()).expect("transaction span");
    let delivered = find(&spans, |s| s["spanId"] == delivery_span.as_str()).expect("delivery span");
    for span in [request, transaction, delivered] {
        assert_eq!(span["traceId"], CALLER_TRACE, "{span}");
    }
    assert_eq!(request["service"], "pgrpc");
    assert_eq!(request["kind"], 2);
    assert_eq!(request["name"], "POST consume_oauth_nonce");
    assert_eq!(transaction["parentSpanId"], request["spanId"]);
    assert_eq!(delivered["service"], "pgrpc-relay");
    assert_eq!(delivered["parentSpanId"], tx_span.as_str());
    assert_eq!(delivered["name"], "deliver security.oauth_nonce_replayed");
    let start: u128 = transaction["startTimeUnixNano"]
        .as_str()
        .expect("start")
        .parse()
        .expect("nanos");
    let end: u128 = transaction["endTimeUnixNano"]
        .as_str()
        .expect("end")
        .parse()
        .expect("nanos");
    assert!(end >= start, "{transaction}");
}

// A call without a traceparent gets a new trace: SQL sees it in
// request.headers and through pgrpc_http.trace_id(), every event of the
// transaction stores it, and the next call gets another.
#[tokio::test]
async fn a_call_without_traceparent_gets_a_new_trace_stored_with_its_events() {
    let server = TestServer::start_with_sql(FIXTURES, |_| {}).await;
    let r = traced_post(&server, "trace_emit", json!({"n": 2}), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let trace_id = r.body["trace_id"].as_str().expect("trace_id").to_string();
    let context = parsed(r.body["traceparent"].as_str().expect("traceparent"));
    assert_eq!(hex::encode(context.trace_id), trace_id);
    assert!(context.sampled());
    assert_eq!(r.body["tracestate"], Value::Null);
    let ids: Vec<i64> = serde_json::from_value(r.body["ids"].clone()).expect("ids");
    assert_eq!(ids.len(), 2);
    for id in ids {
        let (traceparent, tracestate) = stored(&server, id).await;
        assert_eq!(traceparent.as_deref(), r.body["traceparent"].as_str());
        assert_eq!(tracestate, None);
    }
    let again = traced_post(&server, "trace_emit", json!({}), None, &[]).await;
    assert_ne!(again.body["trace_id"], r.body["trace_id"]);

    let seen = send(
        server
            .http
            .get(server.url("/rpc/trace_seen"))
            .header("traceparent", CALLER),
    )
    .await;
    assert_eq!(seen.status, 200, "{}", seen.text);
    assert_eq!(seen.body["trace_id"], CALLER_TRACE);
    assert_eq!(seen.body["header"], seen.body["traceparent"]);
}

// An invalid traceparent (another version, uppercase, an all-zero id, a
// second header) is replaced by a new trace, its tracestate dropped, and the
// call succeeds with the new context stored.
#[tokio::test]
async fn an_invalid_traceparent_is_replaced_and_the_call_succeeds() {
    let server = TestServer::start_with_sql(FIXTURES, |_| {}).await;
    for bad in [
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ] {
        let r = traced_post(
            &server,
            "trace_emit",
            json!({}),
            None,
            &[("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        assert_eq!(r.status, 200, "{bad}: {}", r.text);
        let trace_id = r.body["trace_id"].as_str().expect("a new trace id");
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, CALLER_TRACE, "{bad}");
        assert_eq!(r.body["tracestate"], Value::Null, "{bad}");
        let id = r.body["ids"][0].as_i64().expect("id");
        assert_eq!(
            stored(&server, id).await.0.as_deref(),
            r.body["traceparent"].as_str()
        );
    }
    let two = send(
        server
            .http
            .post(server.url("/rpc/trace_emit"))
            .header("traceparent", CALLER)
            .header("traceparent", CALLER),
    )
    .await;
    assert_eq!(two.status, 200, "{}", two.text);
    assert_ne!(
        two.body["trace_id"], CALLER_TRACE,
        "two traceparent headers are invalid"
    );
}

/// Emits one event as the superuser with `headers` as request.headers;
/// returns what was stored.
async fn emit(su: &tokio_postgres::Client, headers: String) -> (Option<String>, Option<String>) {
    su.batch_execute("BEGIN").await.expect("begin");
    su.execute(
        "SELECT set_config('request.headers', $1, true)",
        &[&headers],
    )
    .await
    .expect("set");
    let id: i64 = su
        .query_one(
            "SELECT private.outbox_emit('trace_test', gen_random_uuid()::text, 'trace.tested', '{}')",
            &[],
        )
        .await
        .expect("outbox_emit never fails on a bad context")
        .get(0);
    let row = su
        .query_one(
            "SELECT traceparent, tracestate FROM private.outbox WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the event");
    su.batch_execute("COMMIT").await.expect("commit");
    (row.get(0), row.get(1))
}

// SQL checks the context itself: garbage in request.headers, a bad
// traceparent or tracestate never fails outbox_emit (the event is stored
// without it), the SQL check agrees with the proxy's parser, a direct
// INSERT of a malformed value is refused, and the stored context never
// changes (pgrpc_api has no UPDATE on it; the trigger stops even superusers).
#[tokio::test]
async fn sql_checks_the_trace_context_and_a_bad_one_never_fails_the_write() {
    let server = TestServer::start_with_sql(FIXTURES, |_| {}).await;
    let su = server.db.superuser().await;
    assert_eq!(emit(&su, "not json {".into()).await, (None, None));
    assert_eq!(emit(&su, "[1,2]".into()).await, (None, None));
    assert_eq!(
        emit(&su, json!({"traceparent": 7}).to_string()).await,
        (None, None)
    );
    let states = [
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        " a=1 ,\tb=2 ,, ",
        "tenant@system=x",
        "a=1,a=2",
        "A=1",
        "a=1 ",
        "a=b=c",
        "a=",
        &(0..32)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(","),
        &(0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(","),
        &format!("k={}", "v".repeat(600)),
    ];
    for state in states {
        let got = emit(
            &su,
            json!({"traceparent": CALLER, "tracestate": state}).to_string(),
        )
        .await;
        assert_eq!(got.0.as_deref(), Some(CALLER));
        assert_eq!(
            got.1,
            parse_tracestate([state.as_bytes()]),
            "SQL and Rust agree on {state:?}"
        );
    }
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let got = emit(
            &su,
            json!({"traceparent": bad, "tracestate": "a=1"}).to_string(),
        )
        .await;
        assert_eq!(got, (None, None), "{bad}");
    }

    let refused = su
        .batch_execute(
            "INSERT INTO private.outbox (aggregate_type, aggregate_id, event_type, payload, traceparent)
             VALUES ('trace_test', 'x', 'trace.tested', '{}', '00-zz')",
        )
        .await
        .expect_err("a malformed traceparent is refused");
    assert!(
        refused.to_string().contains("outbox_traceparent_is_w3c")
            || format!("{refused:?}").contains("outbox_traceparent_is_w3c"),
        "{refused:?}"
    );

    let r = traced_post(
        &server,
        "trace_emit",
        json!({}),
        None,
        &[("traceparent", CALLER)],
    )
    .await;
    let id = r.body["ids"][0].as_i64().expect("id");
    let changed = su
        .execute(
            "UPDATE private.outbox SET traceparent = '00-11111111111111111111111111111111-1111111111111111-01' WHERE id = $1",
            &[&id],
        )
        .await
        .expect_err("write-once");
    assert!(format!("{changed:?}").contains("write_once"), "{changed:?}");
    let columns = updatable_columns(&su, "pgrpc_api", "private.outbox").await;
    assert!(
        !columns.iter().any(|c| c.starts_with("trace")),
        "{columns:?}"
    );
}

/// The sample names of a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `expr` string anywhere in the dashboard.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

// After a few calls, /metrics has latency by function and status class,
// transaction time by function and pool wait; and every PromQL expression
// of deploy/monitoring's Grafana dashboard names a metric this server
// exports (the Prometheus configuration scrapes that path).
#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_server_exports() {
    let server = TestServer::start_with_sql(FIXTURES, |_| {}).await;
    for _ in 0..3 {
        let r = traced_post(&server, "trace_emit", json!({}), None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = traced_post(&server, "trace_emit", json!({"n": "many"}), None, &[]).await;
    assert_eq!(r.status / 100, 4, "{}", r.text);
    let r = traced_post(&server, "no_such_function_anywhere", json!({}), None, &[]).await;
    assert_eq!(r.status, 404);
    let r = send(server.http.get(server.url("/rpc/trace_seen"))).await;
    assert_eq!(r.status, 200);
    let metrics = send(server.http.get(server.url("/metrics"))).await;
    assert_eq!(metrics.status, 200);
    let text = &metrics.text;
    for line in [
        r#"pgrpc_request_duration_seconds_count{function="trace_emit",status_class="2xx"} 3"#,
        r#"pgrpc_request_duration_seconds_count{function="trace_emit",status_class="4xx"} 1"#,
        r#"pgrpc_request_duration_seconds_count{function="other",status_class="4xx"} 1"#,
        r#"pgrpc_transaction_duration_seconds_count{function="trace_seen"} 1"#,
        r#"pgrpc_reads_total{target="primary",reason="no_replica"} 1"#,
        "pgrpc_otlp_spans_dropped_total 0",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    let count = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert!(count("pgrpc_pool_wait_seconds_count ") >= 4);
    // The three calls, and the one PostgreSQL refused inside its transaction.
    assert!(count(r#"pgrpc_transaction_duration_seconds_count{function="trace_emit"} "#) >= 3);
    // Buckets are cumulative and end at the count.
    let inf = r#"pgrpc_request_duration_seconds_bucket{function="trace_emit",status_class="2xx",le="+Inf"} 3"#;
    assert!(text.contains(inf), "{text}");

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/pgrpc-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    let exported = exported_names(text);
    let mut unknown = Vec::new();
    for expr in &exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("pgrpc_"))
            .collect();
        assert!(!names.is_empty(), "{expr} names no pgrpc metric");
        unknown.extend(
            names
                .into_iter()
                .filter(|n| !exported.contains(*n))
                .map(|n| format!("{n} (in {expr})")),
        );
    }
    assert!(
        unknown.is_empty(),
        "not exported: {unknown:#?}\nexported: {exported:?}"
    );
    let prometheus = std::fs::read_to_string(root.join("prometheus.yml")).expect("prometheus.yml");
    assert!(
        prometheus.contains("metrics_path: /metrics"),
        "{prometheus}"
    );
}

// The access log line of `pgrpc serve` (JSON format, a real process) names
// the request's trace id: the caller's, or the one generated for it.
#[tokio::test]
async fn the_request_log_line_carries_the_trace_id() {
    let db = crate::support::TestDb::new().await;
    let (mut child, base, mut lines) = json_serve(&db, &[]);
    wait_ready(&base).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/rpc/version"))
        .header("traceparent", CALLER)
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/rpc/version"))
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 200);
    let mut traced = Vec::new();
    while traced.len() < 2 {
        let v = next_json(&mut lines).await;
        if v["fields"]["message"] == "request" && v["fields"]["path"] == "/rpc/version" {
            traced.push(
                v["fields"]["trace_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    assert_eq!(traced[0], CALLER_TRACE);
    assert_eq!(traced[1].len(), 32, "{traced:?}");
    assert_ne!(traced[1], CALLER_TRACE);
    let _ = child.kill().await;
}

pub(crate) type LogLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// `pgrpc serve` as a real process on a free port, with these extra
/// arguments, logging JSON to the lines returned; and its base URL.
pub(crate) fn json_serve(
    db: &crate::support::TestDb,
    extra: &[&str],
) -> (tokio::process::Child, String, LogLines) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrpc"))
        .args(["serve", "--database-url", &db.authenticator_url()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("PGRPC_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("TOKIO_WORKER_THREADS")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("pgrpc serve");
    let lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, format!("http://127.0.0.1:{port}"), lines)
}

/// The next log line that is JSON, within 30 s, or fails.
pub(crate) async fn next_json(lines: &mut LogLines) -> Value {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a log line in time")
            .expect("read")
            .expect("a line before the process ends");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            return v;
        }
    }
}

/// Waits until `base` answers `/ready` with 200 (its function cache is
/// loaded), or fails.
pub(crate) async fn wait_ready(base: &str) {
    for _ in 0..200 {
        match reqwest::get(format!("{base}/ready")).await {
            Ok(r) if r.status() == 200 => return,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("pgrpc serve never became ready");
}

/// The `workers` field of `pgrpc serve`'s "pgrpc serving" log line (JSON
/// format, a real process) started with these extra arguments.
async fn serving_workers(db: &crate::support::TestDb, extra: &[&str]) -> u64 {
    let (mut child, base, mut lines) = json_serve(db, extra);
    let workers = loop {
        let v = next_json(&mut lines).await;
        if v["fields"]["message"] == "pgrpc serving" {
            break v["fields"]["workers"].as_u64().expect("workers: a number");
        }
    };
    // It serves with them.
    wait_ready(&base).await;
    let r = reqwest::get(format!("{base}/rpc/version"))
        .await
        .expect("call");
    assert_eq!(r.status(), 200);
    let _ = child.kill().await;
    workers
}

// PGRPC_WORKER_THREADS (or --worker-threads) sets the runtime's worker
// threads; out of its bounds, `pgrpc serve` refuses to start and names it.
#[tokio::test]
async fn the_worker_threads_follow_the_setting() {
    let db = crate::support::TestDb::new().await;
    assert_eq!(serving_workers(&db, &["--worker-threads", "1"]).await, 1);
    assert_eq!(serving_workers(&db, &["--worker-threads", "3"]).await, 3);
    for bad in ["0", "257"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrpc"))
            .args(["serve", "--database-url", &db.authenticator_url()])
            .args(["--listen", "127.0.0.1:0"])
            .env("PGRPC_WORKER_THREADS", bad)
            .output()
            .await
            .expect("pgrpc serve");
        assert!(!out.status.success(), "{bad}: started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("PGRPC_WORKER_THREADS must be from 1 to 256"),
            "{bad}: {stderr}"
        );
    }
}
