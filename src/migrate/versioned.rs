//! The versioned migrations (`sql/V<n>__<name>.sql`, the history),
//! embedded at build time and applied by refinery, each file in its own
//! transaction.

use tokio_postgres::Client;

use super::lock::{is_lock_timeout, lock_timeout_ms};
use super::{MigrateError, Options};

refinery::embed_migrations!("sql");

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

/// Applies the versioned migrations `options` asks for (all, or up to its
/// target); a divergent history (a changed applied file) is refused.
pub(super) async fn apply(
    client: &mut Client,
    options: &Options,
) -> Result<refinery::Report, MigrateError> {
    match runner() {
        Ok(runner) => {
            let runner = runner.set_abort_divergent(true);
            let runner = match options.target {
                Some(v) => runner.set_target(refinery::Target::Version(v)),
                None => runner,
            };
            runner.run_async(client).await.map_err(|e| {
                if is_lock_timeout(&e) {
                    MigrateError::LockTimeout {
                        what: "a versioned migration".into(),
                        ms: lock_timeout_ms(options.lock_timeout),
                        holder: "a transaction holds a lock on a table it changes",
                        applied: "that migration was rolled back; the ones before it are committed",
                    }
                } else {
                    MigrateError::from(e)
                }
            })
        }
        Err(e) => Err(MigrateError::from(e)),
    }
}
