//! The outbox relay (`pgrpc relay`): delivers `private.outbox` events to one
//! HTTP endpoint.
//!
//! It LISTENs on `pgrpc_outbox` and polls as well, so a lost notification
//! only delays an event. It leases batches with `api.outbox_claim`, POSTs
//! each event as JSON signed with HMAC-SHA256, and acknowledges on 2xx or
//! reports the failure with `api.outbox_nack` (the database then schedules
//! the retry with backoff). Delivery is at-least-once: a relay that dies
//! between the POST and the acknowledgement leaves its lease to expire, and
//! the event is delivered again with the same id, which receivers dedupe on.
//!
//! Several relays may run at once: a lease belongs to one of them, and a
//! relay never starts a request that could outlive its lease, so no event is
//! delivered twice within one lease. A claim holds at most one event per
//! aggregate, so the events of a batch are delivered concurrently without
//! breaking per-aggregate order.
//!
//! This file holds the events, the errors and the loop of [`run`] (claim
//! until nothing is due, then wait for a notification or the poll
//! interval); `config` is [`RelayConfig`], `signature` the HMAC header,
//! `lease` the database side (LISTEN, `outbox_claim`, `outbox_ack`,
//! `outbox_nack`), and `deliver` the delivery of a claimed batch.

mod config;
mod deliver;
mod lease;
mod signature;

pub use config::RelayConfig;
pub use signature::{signature_header, verify_signature};

use std::future::Future;

use futures_util::future::FutureExt;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use deliver::Relay;
use lease::Db;

use crate::trace::TraceParent;

/// The channel the outbox's statement trigger notifies.
pub const CHANNEL: &str = "pgrpc_outbox";
/// The outbox event id: the same on every redelivery, the receiver's dedupe key.
pub const EVENT_ID_HEADER: &str = "x-pgrpc-event-id";
pub const EVENT_TYPE_HEADER: &str = "x-pgrpc-event-type";
/// Which delivery attempt this is (1 on the first).
pub const ATTEMPT_HEADER: &str = "x-pgrpc-attempt";
/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-pgrpc-signature";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid relay setting {setting}: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("malformed claim from the database: {0}")]
    Claim(#[from] serde_json::Error),
}

impl RelayError {
    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> RelayError {
        RelayError::Config {
            setting,
            reason: reason.into(),
        }
    }
}

/// One event as `api.outbox_claim` hands it out, and as the body of the POST.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEvent {
    pub id: i64,
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub created_at: String,
    /// The W3C trace context of the transaction that emitted the event; not
    /// in the body: the webhook call carries it, continued, as headers.
    #[serde(default, skip_serializing)]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing)]
    pub tracestate: Option<String>,
}

impl OutboxEvent {
    /// The delivery's own trace context: the event's trace id with a new
    /// span id, whose parent is the emitting transaction's span. `None` for
    /// an event written without a (valid) context.
    pub fn delivery_context(&self) -> Option<(TraceParent, [u8; 8])> {
        let stored = TraceParent::parse(self.traceparent.as_deref()?.as_bytes())?;
        let delivery = TraceParent {
            parent_id: crate::trace::new_span_id(),
            ..stored
        };
        Some((delivery, stored.parent_id))
    }
}

/// Runs the relay until `shutdown` completes. A batch in flight is finished
/// (its requests end within the lease) and acknowledged before returning.
/// Returns an error only for a bad setting or when the first connection to
/// the database fails; later database outages are waited out.
pub async fn run(
    config: RelayConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RelayError> {
    let webhook = config.validate()?;
    let relay = Relay::new(config, webhook);
    let shutdown = shutdown.fuse();
    tokio::pin!(shutdown);

    let mut db = Db::connect(&relay.config).await?;
    info!(
        consumer = %relay.config.consumer,
        webhook = %relay.webhook,
        event_types = ?relay.event_types,
        "relay started"
    );

    'relay: loop {
        // Claim and deliver until nothing is due, checking for shutdown
        // between batches only.
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                break 'relay;
            }
            match relay.batch(&db).await {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => {
                    error!(cause = %e, "claim failed");
                    if db.client.is_closed() {
                        match relay.reconnect(shutdown.as_mut()).await {
                            Some(fresh) => db = fresh,
                            None => break 'relay,
                        }
                        continue;
                    }
                    // A SQL error (privileges, migrations): wait a poll
                    // interval rather than spin.
                    break;
                }
            }
        }

        let poll = tokio::time::sleep(relay.config.poll_interval);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                () = shutdown.as_mut() => break 'relay,
                () = poll.as_mut() => break,
                note = db.notifications.recv() => match note {
                    Some(types) if relay.wants(&types) => {
                        // One claim serves every notification queued so far.
                        while db.notifications.try_recv().is_ok() {}
                        break;
                    }
                    Some(_) => continue,
                    None => {
                        warn!("database connection lost");
                        match relay.reconnect(shutdown.as_mut()).await {
                            Some(fresh) => db = fresh,
                            None => break 'relay,
                        }
                        break;
                    }
                },
            }
        }
    }
    info!(consumer = %relay.config.consumer, "relay stopped");
    Ok(())
}
