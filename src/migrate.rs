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
    #[error("migration failed: {}", chain(.0))]
    Apply(#[from] refinery::Error),
}

/// What one run applied, in order (`V3__organizations`, ...).
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<String>,
}

/// The error and its causes, so the PostgreSQL message is not lost.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// The embedded migrations, each followed by `RESET ROLE`: the files switch
/// roles with `SET LOCAL ROLE`, and refinery records the migration in its
/// history table inside the same transaction, as the connecting role.
fn runner() -> Result<refinery::Runner, refinery::Error> {
    let mut list = Vec::new();
    for m in migrations::runner().get_migrations() {
        let sql = format!("{}\n;RESET ROLE;\n", m.sql().unwrap_or_default());
        list.push(refinery::Migration::unapplied(
            &format!("V{}__{}", m.version(), m.name()),
            &sql,
        )?);
    }
    Ok(refinery::Runner::new(&list))
}

const LOCK_KEY: i64 = 0x0070_6772_7063; // "pgrpc"

pub async fn run(database_url: &str) -> Result<Report, MigrateError> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .map_err(MigrateError::Connect)?;
    let driver = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?;
    let result = match runner() {
        Ok(runner) => {
            runner
                .set_abort_divergent(true)
                .run_async(&mut client)
                .await
        }
        Err(e) => Err(e),
    };
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
