//! One relay's delivery: the webhook client, a claimed batch delivered
//! concurrently within its lease, each event POSTed signed (with its trace
//! context continued), its span exported, and then acknowledged or
//! nacked; and the reconnection to the database after an outage.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, info, warn, Instrument};
use uuid::Uuid;

use super::lease::Db;
use super::{
    signature_header, OutboxEvent, RelayConfig, RelayError, ATTEMPT_HEADER, EVENT_ID_HEADER,
    EVENT_TYPE_HEADER, SIGNATURE_HEADER,
};
use crate::trace::otlp::{Attr, Exporter, Kind, SpanData};
use crate::trace::{TraceParent, TRACEPARENT, TRACESTATE};

/// Longest response body kept for the error message of a failed delivery.
const ERROR_SNIPPET_CHARS: usize = 300;
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// The span of one delivery, a client span in the emitting call's trace.
fn delivery_span(
    event: &OutboxEvent,
    context: &TraceParent,
    parent: [u8; 8],
    start: std::time::SystemTime,
    outcome: &Outcome,
) -> SpanData {
    let (status, error) = match outcome {
        Outcome::Delivered(status) => (Some(status.as_u16()), false),
        Outcome::Failed { .. } | Outcome::LeaseTooShort => (None, true),
    };
    let mut attributes = vec![
        ("messaging.system", Attr::Str("pgrpc_outbox".into())),
        ("messaging.message.id", Attr::Str(event.id.to_string())),
        ("pgrpc.event_type", Attr::Str(event.event_type.clone())),
        ("pgrpc.attempt", Attr::Int(i64::from(event.attempts))),
    ];
    if let Some(status) = status {
        attributes.push(("http.response.status_code", Attr::Int(i64::from(status))));
    }
    SpanData {
        trace_id: context.trace_id,
        span_id: context.parent_id,
        parent: Some(parent),
        name: format!("deliver {}", event.event_type),
        kind: Kind::Client,
        start,
        end: std::time::SystemTime::now(),
        attributes,
        error,
    }
}

/// What became of one event.
enum Outcome {
    Delivered(StatusCode),
    Failed {
        error: String,
        retry_in_seconds: Option<i32>,
    },
    /// Not sent: the request could have outlived the lease.
    LeaseTooShort,
}

pub(super) struct Relay {
    pub(super) config: RelayConfig,
    pub(super) webhook: Uri,
    pub(super) event_types: Option<Vec<String>>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    otlp: Option<Exporter>,
}

impl Relay {
    pub(super) fn new(config: RelayConfig, webhook: Uri) -> Relay {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.request_timeout));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        let event_types = config.event_filter();
        // `validate` has checked the endpoint.
        let otlp = config
            .otlp_endpoint
            .as_deref()
            .and_then(|e| Exporter::start(e, "pgrpc-relay").ok());
        Relay {
            otlp,
            config,
            webhook,
            event_types,
            http,
        }
    }

    /// Whether a notification (comma-separated event types) concerns us.
    pub(super) fn wants(&self, types: &str) -> bool {
        match &self.event_types {
            None => true,
            Some(ours) => types.split(',').any(|t| ours.iter().any(|o| o == t)),
        }
    }

    /// Waits for the database to come back, with capped exponential backoff;
    /// `None` if shutdown came first.
    pub(super) async fn reconnect<S: Future<Output = ()>>(
        &self,
        mut shutdown: std::pin::Pin<&mut S>,
    ) -> Option<Db> {
        let mut delay = Duration::from_millis(250);
        loop {
            tokio::select! {
                () = shutdown.as_mut() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            match Db::connect(&self.config).await {
                Ok(db) => {
                    info!("database connection restored");
                    return Some(db);
                }
                Err(e) => {
                    warn!(cause = %e, retry_in_ms = delay.as_millis() as u64, "reconnect failed");
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
    }

    /// Claims one batch and settles every event in it; returns the number
    /// of events claimed.
    pub(super) async fn batch(&self, db: &Db) -> Result<usize, RelayError> {
        // Measured before the claim, so the relay's view of the lease ends
        // no later than the database's.
        let lease_ends = Instant::now() + Duration::from_secs(self.config.lease_seconds.into());
        let row = db
            .client
            .query_one(
                &db.claim,
                &[
                    &self.config.consumer,
                    &(self.config.batch_size as i32),
                    &(self.config.lease_seconds as i32),
                    &self.event_types,
                ],
            )
            .await?;
        let lease_token: Uuid = row.try_get(0)?;
        let events: Vec<OutboxEvent> = serde_json::from_value(row.try_get(1)?)?;
        let claimed = events.len();
        if claimed == 0 {
            return Ok(0);
        }
        debug!(%lease_token, claimed, "claimed batch");
        stream::iter(events)
            .for_each_concurrent(self.config.concurrency, |event| {
                let trace = event.delivery_context();
                // Every log line of this delivery names the emitting call's trace.
                let span = tracing::info_span!(
                    "delivery",
                    trace_id = %trace.as_ref().map(|(c, _)| hex::encode(c.trace_id)).unwrap_or_default()
                );
                self.deliver_and_settle(db, lease_token, event, trace, lease_ends)
                    .instrument(span)
            })
            .await;
        Ok(claimed)
    }

    /// Delivers one event, exports its span, and settles it.
    async fn deliver_and_settle(
        &self,
        db: &Db,
        lease_token: Uuid,
        event: OutboxEvent,
        trace: Option<(TraceParent, [u8; 8])>,
        lease_ends: Instant,
    ) {
        let started = std::time::SystemTime::now();
        let outcome = self.deliver(&event, lease_ends, trace.as_ref()).await;
        if let (Some(exporter), Some((context, parent))) = (&self.otlp, &trace) {
            if context.sampled() {
                exporter.record(delivery_span(&event, context, *parent, started, &outcome));
            }
        }
        self.settle(db, lease_token, &event, outcome).await;
    }

    async fn deliver(
        &self,
        event: &OutboxEvent,
        lease_ends: Instant,
        trace: Option<&(TraceParent, [u8; 8])>,
    ) -> Outcome {
        if Instant::now() + self.config.request_timeout >= lease_ends {
            return Outcome::LeaseTooShort;
        }
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("cannot encode the event: {e}"),
                    retry_in_seconds: None,
                }
            }
        };
        let signature = signature_header(
            self.config.signing_secret.as_bytes(),
            chrono::Utc::now().timestamp(),
            &body,
        );
        let mut request = Request::post(self.webhook.clone());
        if let Some((context, _)) = trace {
            request = request.header(TRACEPARENT, context.header());
            if let Some(state) = &event.tracestate {
                request = request.header(TRACESTATE, state.as_str());
            }
        }
        let request = request
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                concat!("pgrpc-relay/", env!("CARGO_PKG_VERSION")),
            )
            .header(EVENT_ID_HEADER, event.id)
            .header(EVENT_TYPE_HEADER, event.event_type.as_str())
            .header(ATTEMPT_HEADER, event.attempts)
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("cannot build the request: {e}"),
                    retry_in_seconds: None,
                }
            }
        };
        match tokio::time::timeout(self.config.request_timeout, self.send(request)).await {
            Err(_) => Outcome::Failed {
                error: format!("no response within {:?}", self.config.request_timeout),
                retry_in_seconds: None,
            },
            Ok(Err(error)) => Outcome::Failed {
                error,
                retry_in_seconds: None,
            },
            Ok(Ok((status, _, _))) if status.is_success() => Outcome::Delivered(status),
            Ok(Ok((status, retry_after, snippet))) => Outcome::Failed {
                error: format!("HTTP {status}: {snippet}"),
                retry_in_seconds: retry_after,
            },
        }
    }

    /// Sends one request; returns the status, a Retry-After in seconds and
    /// the start of the response body.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<i32>, String), String> {
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map(|s| s.min(i32::MAX as u32) as i32);
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let snippet: String = String::from_utf8_lossy(&body)
            .chars()
            .take(ERROR_SNIPPET_CHARS)
            .collect();
        Ok((status, retry_after, snippet))
    }

    /// Acknowledges or nacks one event and logs the outcome.
    async fn settle(&self, db: &Db, lease_token: Uuid, event: &OutboxEvent, outcome: Outcome) {
        let (error, retry_in_seconds) = match outcome {
            Outcome::Delivered(status) => {
                match db
                    .client
                    .query_one(&db.ack, &[&lease_token, &vec![event.id]])
                    .await
                {
                    Ok(row) if row.try_get::<_, i32>(0).unwrap_or(0) == 1 => info!(
                        event_id = event.id,
                        event_type = %event.event_type,
                        attempt = event.attempts,
                        status = status.as_u16(),
                        "event delivered"
                    ),
                    Ok(_) => warn!(
                        event_id = event.id,
                        event_type = %event.event_type,
                        "event delivered but its lease was lost; it will be delivered again"
                    ),
                    Err(e) => warn!(
                        event_id = event.id,
                        cause = %e,
                        "event delivered but not acknowledged; it will be delivered again"
                    ),
                }
                return;
            }
            Outcome::Failed {
                error,
                retry_in_seconds,
            } => (error, retry_in_seconds),
            Outcome::LeaseTooShort => (
                "not sent: the request could outlive the lease (raise lease_seconds)".to_string(),
                Some(0),
            ),
        };
        match db
            .client
            .query_one(
                &db.nack,
                &[&lease_token, &event.id, &error, &retry_in_seconds],
            )
            .await
        {
            Ok(row) => {
                let status: String = row.try_get(0).unwrap_or_default();
                warn!(
                    event_id = event.id,
                    event_type = %event.event_type,
                    attempt = event.attempts,
                    cause = %error,
                    now = %status,
                    "event delivery failed"
                );
            }
            Err(e) => warn!(
                event_id = event.id,
                event_type = %event.event_type,
                delivery_error = %error,
                cause = %e,
                "event delivery failed and the nack was refused"
            ),
        }
    }
}
