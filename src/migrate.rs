//! `pgrpc migrate`: the SQL in `sql/`, embedded at build time and applied
//! by refinery, each file in its own transaction.
//!
//! Two concurrent runs are serialised by a table lock that only a
//! superuser can take (see [`LOCK`]), held by a second connection for the
//! whole run, so the second run waits and then finds nothing to apply. An
//! advisory lock would need no privilege: any login could hold its key and
//! stall every migration (SPEC §1: no login other than a superuser can
//! block another caller's write).

use tokio_postgres::{Client, NoTls};

refinery::embed_migrations!("sql");

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot take the migration lock (pgrpc migrate needs a superuser connection): {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error("refused: {}", db_error(.0))]
    Refused(#[source] tokio_postgres::Error),
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

/// A database error with its detail and hint, which say what to fix.
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut out = db.message().to_string();
            if let Some(detail) = db.detail() {
                out.push_str(": ");
                out.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                out.push_str(" Hint: ");
                out.push_str(hint);
            }
            out
        }
        None => e.to_string(),
    }
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

/// The migration lock: a self-conflicting table lock on a table that every
/// database has and that only a superuser may lock in that mode (PUBLIC may
/// only read it, and ACCESS SHARE conflicts with SHARE ROW EXCLUSIVE not at
/// all). No migration writes this table, so the run never waits on itself.
const LOCK: &str = "LOCK TABLE information_schema.sql_features IN SHARE ROW EXCLUSIVE MODE";

/// Refuses (through the database's own check, once V17 has created it)
/// while a role is a member of `pgrpc_migrator` or a login holds
/// `pgrpc_api`: `migrator_role_has_members`, `api_role_held_by_login`.
pub async fn refuse_forbidden_memberships(client: &Client) -> Result<(), MigrateError> {
    let row = client
        .query_one(
            "SELECT to_regprocedure('pgrpc_guard.refuse_forbidden_memberships(text)') IS NOT NULL",
            &[],
        )
        .await
        .map_err(MigrateError::Refused)?;
    if row.get::<_, bool>(0) {
        client
            .execute(
                "SELECT pgrpc_guard.refuse_forbidden_memberships('pgrpc migrate')",
                &[],
            )
            .await
            .map_err(MigrateError::Refused)?;
    }
    Ok(())
}

pub async fn run(database_url: &str) -> Result<Report, MigrateError> {
    let (lock, lock_connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .map_err(MigrateError::Connect)?;
    let lock_driver = tokio::spawn(lock_connection);
    lock.batch_execute(&format!("BEGIN; {LOCK}"))
        .await
        .map_err(MigrateError::Lock)?;
    refuse_forbidden_memberships(&lock).await?;
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .map_err(MigrateError::Connect)?;
    let driver = tokio::spawn(connection);
    let result = match runner() {
        Ok(runner) => {
            runner
                .set_abort_divergent(true)
                .run_async(&mut client)
                .await
        }
        Err(e) => Err(e),
    };
    drop(client);
    let _ = driver.await;
    // Ending the lock's transaction (or its connection) releases the lock.
    let _ = lock.batch_execute("COMMIT").await;
    drop(lock);
    let _ = lock_driver.await;
    let report = result?;
    Ok(Report {
        applied: report
            .applied_migrations()
            .iter()
            .map(|m| format!("V{}__{}", m.version(), m.name()))
            .collect(),
    })
}
