//! The relay's database side: one session that LISTENs for new events and
//! leases them with `api.outbox_claim`, then acknowledges (`outbox_ack`) or
//! reports failures (`outbox_nack`).

use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};
use tracing::{debug, warn};

use super::{RelayConfig, RelayError, CHANNEL};
use crate::db::quote_ident;

/// The relay's database session: one connection, used for claims and acks
/// and for LISTEN, whose notifications arrive on `notifications`.
pub(super) struct Db {
    pub(super) client: Client,
    pub(super) notifications: mpsc::UnboundedReceiver<String>,
    pub(super) claim: Statement,
    pub(super) ack: Statement,
    pub(super) nack: Statement,
}

impl Db {
    pub(super) async fn connect(config: &RelayConfig) -> Result<Db, RelayError> {
        let (client, mut connection) = tokio_postgres::connect(&config.database_url, NoTls).await?;
        let (tx, notifications) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            break;
                        }
                    }
                    Ok(AsyncMessage::Notice(notice)) => debug!(notice = %notice, "database notice"),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(cause = %e, "database connection error");
                        break;
                    }
                }
            }
            // Dropping tx tells the relay that the connection is gone.
        });
        client
            .batch_execute(&format!(
                "SET ROLE {}; LISTEN {CHANNEL}",
                quote_ident(&config.db_role)
            ))
            .await?;
        client
            .execute(
                "SELECT pg_catalog.set_config('application_name', $1, false)",
                &[&format!("pgrpc-relay {}", config.consumer)],
            )
            .await?;
        let claim = client
            .prepare(
                "SELECT lease_token, events \
                 FROM api.outbox_claim($1::text, $2::integer, $3::integer, $4::text[])",
            )
            .await?;
        let ack = client
            .prepare("SELECT api.outbox_ack($1::uuid, $2::bigint[])")
            .await?;
        let nack = client
            .prepare(
                "SELECT status FROM api.outbox_nack($1::uuid, $2::bigint, $3::text, $4::integer)",
            )
            .await?;
        Ok(Db {
            client,
            notifications,
            claim,
            ack,
            nack,
        })
    }
}
