//! `RelayConfig`: the flags and environment of `pgrpc relay`, each default
//! written once, here.

use std::fmt;
use std::time::Duration;

use clap::Args;
use hyper::Uri;

use super::RelayError;
use crate::config::{from_args, millis};

/// Everything `pgrpc relay` needs.
#[derive(Clone, Args)]
pub struct RelayConfig {
    /// A connection that may become `db_role` (for example as
    /// `pgrpc_authenticator`, or a login role granted `pgrpc_service`).
    #[arg(long, env = "PGRPC_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Role taken with `SET ROLE` after connecting; needs EXECUTE on
    /// `api.outbox_claim/ack/nack`.
    #[arg(long, env = "PGRPC_RELAY_DB_ROLE", default_value = "pgrpc_service")]
    pub db_role: String,
    /// `http://` URL the events are POSTed to, one POST per event.
    #[arg(long, env = "PGRPC_RELAY_WEBHOOK_URL")]
    pub webhook_url: String,
    /// HMAC-SHA256 key for the signature header; at least 32 bytes.
    #[arg(long, env = "PGRPC_RELAY_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: String,
    /// Name recorded on each lease (`private.outbox.leased_by`).
    #[arg(long, env = "PGRPC_RELAY_CONSUMER", default_value_t = format!("pgrpc-relay-{}", std::process::id()))]
    pub consumer: String,
    /// Deliver only these event types (comma-separated); all when unset.
    #[arg(long, env = "PGRPC_RELAY_EVENT_TYPES", value_delimiter = ',')]
    pub event_types: Option<Vec<String>>,
    /// Events leased per claim (1..=1000).
    #[arg(long, env = "PGRPC_RELAY_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: u32,
    /// Lease length in seconds; must exceed the request timeout.
    #[arg(long, env = "PGRPC_RELAY_LEASE_SECONDS", default_value_t = 60)]
    pub lease_seconds: u32,
    /// Deliveries in flight at once within a batch.
    #[arg(long, env = "PGRPC_RELAY_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// How often to claim when no notification arrives, in ms.
    #[arg(long = "poll-ms", env = "PGRPC_RELAY_POLL_MS", default_value = "5000", value_parser = millis)]
    pub poll_interval: Duration,
    /// Limit for one POST, connection included, in ms.
    #[arg(long = "request-timeout-ms", env = "PGRPC_RELAY_REQUEST_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub request_timeout: Duration,
    /// An OTLP/HTTP collector (`http://collector:4318`): a span per
    /// delivery, in the trace of the call that emitted the event, is POSTed
    /// to `<it>/v1/traces`. Unset: no export.
    #[arg(long, env = "PGRPC_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl RelayConfig {
    /// The defaults, with the three settings that have none.
    pub fn new(
        database_url: impl Into<String>,
        webhook_url: impl Into<String>,
        signing_secret: impl Into<String>,
    ) -> RelayConfig {
        let (database_url, webhook_url, signing_secret): (String, String, String) = (
            database_url.into(),
            webhook_url.into(),
            signing_secret.into(),
        );
        from_args(&[
            "--database-url",
            &database_url,
            "--webhook-url",
            &webhook_url,
            "--signing-secret",
            &signing_secret,
        ])
        .expect("every other setting of RelayConfig has a default")
    }

    /// Checks every setting and returns the parsed webhook URL; the error
    /// names the setting to fix.
    pub(super) fn validate(&self) -> Result<Uri, RelayError> {
        let uri: Uri = self
            .webhook_url
            .parse()
            .map_err(|e| RelayError::config("webhook_url", format!("not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(RelayError::config(
                    "webhook_url",
                    "https is not supported by this build; point the relay at a local \
                     TLS-terminating proxy over http",
                ))
            }
            _ => return Err(RelayError::config("webhook_url", "must start with http://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(RelayError::config("webhook_url", "has no host"));
        }
        if self.signing_secret.len() < 32 {
            return Err(RelayError::config(
                "signing_secret",
                "must be at least 32 bytes",
            ));
        }
        if self.consumer.trim().is_empty() || self.consumer.len() > 200 {
            return Err(RelayError::config(
                "consumer",
                "must be 1 to 200 characters",
            ));
        }
        if self.db_role.trim().is_empty() {
            return Err(RelayError::config("db_role", "must name a role"));
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(RelayError::config(
                "batch_size",
                "must be between 1 and 1000",
            ));
        }
        if self.concurrency == 0 {
            return Err(RelayError::config("concurrency", "must be at least 1"));
        }
        if self.poll_interval.is_zero() {
            return Err(RelayError::config("poll_interval", "must be positive"));
        }
        if self.request_timeout.is_zero() {
            return Err(RelayError::config("request_timeout", "must be positive"));
        }
        if !(1..=86_400).contains(&self.lease_seconds)
            || Duration::from_secs(self.lease_seconds.into()) <= self.request_timeout
        {
            return Err(RelayError::config(
                "lease_seconds",
                "must be at most 86400 and longer than request_timeout",
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            crate::trace::otlp::traces_uri(endpoint)
                .map_err(|e| RelayError::config("otlp_endpoint", e))?;
        }
        if let Some(types) = &self.event_types {
            if types.iter().any(|t| t.trim().is_empty()) {
                return Err(RelayError::config("event_types", "contains an empty type"));
            }
        }
        Ok(uri)
    }

    /// An empty filter would match nothing; treat it as "all types".
    pub(super) fn event_filter(&self) -> Option<Vec<String>> {
        self.event_types.clone().filter(|types| !types.is_empty())
    }
}

impl fmt::Debug for RelayConfig {
    // The secret and the database password stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("database_url", &"<redacted>")
            .field("db_role", &self.db_role)
            .field("webhook_url", &self.webhook_url)
            .field("signing_secret", &"<redacted>")
            .field("consumer", &self.consumer)
            .field("event_types", &self.event_types)
            .field("batch_size", &self.batch_size)
            .field("lease_seconds", &self.lease_seconds)
            .field("concurrency", &self.concurrency)
            .field("poll_interval", &self.poll_interval)
            .field("request_timeout", &self.request_timeout)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated_with_the_setting_named() {
        let ok = RelayConfig::new("postgres://x", "http://127.0.0.1:9/hook", "s".repeat(32));
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.webhook_url = "ftp://x".into();
        assert!(matches!(
            bad.validate(),
            Err(RelayError::Config {
                setting: "webhook_url",
                ..
            })
        ));
        let mut bad = ok.clone();
        bad.signing_secret = "short".into();
        assert!(matches!(
            bad.validate(),
            Err(RelayError::Config {
                setting: "signing_secret",
                ..
            })
        ));
        let mut bad = ok;
        bad.lease_seconds = 5;
        assert!(matches!(
            bad.validate(),
            Err(RelayError::Config {
                setting: "lease_seconds",
                ..
            })
        ));
    }
}
