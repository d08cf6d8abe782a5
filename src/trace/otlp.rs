//! OTLP/HTTP export of spans (JSON encoding, `POST <endpoint>/v1/traces`),
//! on when `PGRPC_OTLP_ENDPOINT` is set.
//!
//! Requests never wait for the collector: a span goes into a bounded queue
//! with `try_send`, and is dropped (and counted) when the queue is full. One
//! task sends the queue in batches, at most a second after a batch's first
//! span. A collector that is down or slow costs dropped spans, never
//! latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::warn;

/// Spans waiting for export at most; past it, new spans are dropped.
pub const QUEUE_SPANS: usize = 2048;
/// Spans in one export request at most.
pub const BATCH_SPANS: usize = 512;
/// How long a batch waits for more spans after its first.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Limit for one export request, connection included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// OTLP span kinds used here.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

#[derive(Clone, Debug)]
pub enum Attr {
    Str(String),
    Int(i64),
}

/// One finished span.
#[derive(Clone, Debug)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    pub error: bool,
}

/// Counters of the exporter, shown in `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// The sending side of the export queue; cloning shares the queue.
#[derive(Clone, Debug)]
pub struct Exporter {
    queue: mpsc::Sender<SpanData>,
    stats: Arc<Stats>,
}

impl Exporter {
    /// Starts the export task. `endpoint` is the collector's base URL
    /// (`http://collector:4318`), to which `/v1/traces` is added unless it
    /// already ends with it. Must be called within a Tokio runtime.
    pub fn start(endpoint: &str, service: &'static str) -> Result<Exporter, String> {
        let uri = traces_uri(endpoint)?;
        let (queue, rx) = mpsc::channel(QUEUE_SPANS);
        let stats = Arc::new(Stats::default());
        tokio::spawn(export(rx, uri, service, stats.clone()));
        Ok(Exporter { queue, stats })
    }

    /// Queues a span, or drops and counts it when the queue is full.
    pub fn record(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }
}

/// `<endpoint>/v1/traces`, checked: `http://` with a host (TLS goes
/// through a local collector or sidecar).
pub fn traces_uri(endpoint: &str) -> Result<Uri, String> {
    let base = endpoint.trim().trim_end_matches('/');
    let full = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let uri: Uri = full
        .parse()
        .map_err(|e| format!("PGRPC_OTLP_ENDPOINT is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(
            "PGRPC_OTLP_ENDPOINT must be an http:// URL with a host (for TLS, export through a local collector)"
                .into(),
        );
    }
    Ok(uri)
}

async fn export(
    mut rx: mpsc::Receiver<SpanData>,
    uri: Uri,
    service: &'static str,
    stats: Arc<Stats>,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
    let http: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build(connector);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < BATCH_SPANS {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let n = batch.len() as u64;
        let body = Bytes::from(encode(&batch, service).to_string());
        let request = Request::post(uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body));
        let sent = match request {
            Ok(request) => tokio::time::timeout(EXPORT_TIMEOUT, http.request(request))
                .await
                .map_err(|_| "no response in time".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .and_then(|r| {
                    if r.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("HTTP {}", r.status()))
                    }
                }),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => stats.exported.fetch_add(n, Ordering::Relaxed),
            Err(cause) => {
                warn!(%cause, spans = n, "OTLP export failed; spans dropped");
                stats.failed.fetch_add(n, Ordering::Relaxed)
            }
        };
    }
}

/// The OTLP/JSON `ExportTraceServiceRequest` of `spans`.
pub fn encode(spans: &[SpanData], service: &str) -> Value {
    let spans: Vec<Value> = spans.iter().map(span_json).collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                attr("service.name", &Attr::Str(service.to_string())),
                attr("service.version", &Attr::Str(env!("CARGO_PKG_VERSION").to_string())),
            ]},
            "scopeSpans": [{
                "scope": {"name": "pgrpc", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    })
}

fn span_json(s: &SpanData) -> Value {
    let mut v = json!({
        "traceId": hex::encode(s.trace_id),
        "spanId": hex::encode(s.span_id),
        "name": s.name,
        "kind": s.kind as i32,
        "startTimeUnixNano": nanos(s.start).to_string(),
        "endTimeUnixNano": nanos(s.end).to_string(),
        "attributes": s.attributes.iter().map(|(k, a)| attr(k, a)).collect::<Vec<_>>(),
        "status": {"code": if s.error { 2 } else { 1 }},
    });
    if let Some(parent) = s.parent {
        v["parentSpanId"] = Value::String(hex::encode(parent));
    }
    v
}

fn attr(key: &str, value: &Attr) -> Value {
    match value {
        Attr::Str(s) => json!({"key": key, "value": {"stringValue": s}}),
        Attr::Int(i) => json!({"key": key, "value": {"intValue": i.to_string()}}),
    }
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gets_the_traces_path_once_and_must_be_http() {
        assert_eq!(
            traces_uri("http://c:4318").expect("ok").to_string(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_uri("http://c:4318/v1/traces/")
                .expect("ok")
                .to_string(),
            "http://c:4318/v1/traces"
        );
        assert!(traces_uri("https://c:4318").is_err());
        assert!(traces_uri("c:4318").is_err());
    }

    #[test]
    fn spans_encode_as_otlp_json_with_hex_ids() {
        let t = UNIX_EPOCH + Duration::from_secs(1);
        let v = encode(
            &[SpanData {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent: Some([3; 8]),
                name: "POST /rpc/f".into(),
                kind: Kind::Server,
                start: t,
                end: t + Duration::from_millis(5),
                attributes: vec![("http.response.status_code", Attr::Int(200))],
                error: false,
            }],
            "pgrpc",
        );
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "01".repeat(16));
        assert_eq!(span["spanId"], "02".repeat(8));
        assert_eq!(span["parentSpanId"], "03".repeat(8));
        assert_eq!(span["kind"], 2);
        assert_eq!(span["startTimeUnixNano"], "1000000000");
        assert_eq!(span["endTimeUnixNano"], "1005000000");
        assert_eq!(span["attributes"][0]["value"]["intValue"], "200");
    }

    // A collector that accepts connections and never answers holds one
    // batch in flight; the queue fills, every further span is dropped and
    // counted, and recording never waits.
    #[tokio::test]
    async fn a_full_queue_drops_and_counts_spans_without_waiting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let exporter = Exporter::start(&format!("http://{addr}"), "pgrpc").expect("exporter");
        let span = SpanData {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            name: "s".into(),
            kind: Kind::Internal,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: Vec::new(),
            error: false,
        };
        let total = 10_000u64;
        let started = std::time::Instant::now();
        for _ in 0..total {
            exporter.record(span.clone());
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "recording took {took:?}");
        let dropped = exporter.stats().dropped.load(Ordering::Relaxed);
        let bound = (QUEUE_SPANS + BATCH_SPANS) as u64;
        assert!(dropped >= total - bound, "dropped {dropped}");
        assert!(dropped < total);
    }
}
