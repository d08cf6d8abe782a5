//! `pgrpc migrate`: the SQL in `sql/`, embedded at build time and applied
//! by refinery, each file in its own transaction. A session advisory lock
//! keeps two concurrent runs from applying the same file twice.

use tokio_postgres::NoTls;

refinery::embed_migrations!("sql");

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot take the migration lock: {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Apply(#[from] refinery::Error),
}

/// What one run applied, in order (`V3__organizations`, ...).
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<String>,
}

const LOCK_KEY: i64 = 0x7067_7270_63; // "pgrpc"

pub async fn run(database_url: &str) -> Result<Report, MigrateError> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .map_err(MigrateError::Connect)?;
    let driver = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?;
    let result = migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    drop(client);
    let _ = driver.await;
    let report = result?;
    Ok(Report {
        applied: report
            .applied_migrations()
            .iter()
            .map(|m| format!("V{}__{}", m.version(), m.name()))
            .collect(),
    })
}
