//! The call: one statement per (routine, provided arguments) that turns the
//! JSON arguments into typed named arguments, calls the routine, shapes its
//! result as JSON text and reads the `response.*` settings, and the pipelined
//! transaction around it.
//!
//! Every identifier spliced into SQL comes from the catalog (see
//! `schema.rs`), quoted; request data only ever travels as `$1`.

use std::fmt::Write as _;

use deadpool_postgres::Object;
use tokio_postgres::Statement;

use super::schema::{Routine, Shape};

/// What the call statement returns: `(body, rows, response.headers, response.status)`.
#[derive(Debug)]
pub struct CallResult {
    pub body: Option<String>,
    pub rows: i64,
    pub headers: Option<String>,
    pub status: Option<String>,
}

/// The per-request settings, applied with `set_config(..., true)` so they
/// last for the transaction only.
pub struct RequestSettings<'a> {
    pub role: &'a str,
    pub claims: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a str,
}

impl RequestSettings<'_> {
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.role,
            &self.claims,
            &self.method,
            &self.path,
            &self.headers,
        ]
    }
}

pub const SETTINGS_SQL: &str = "SELECT set_config('role', $1, true), \
     set_config('request.jwt.claims', $2, true), \
     set_config('request.method', $3, true), \
     set_config('request.path', $4, true), \
     set_config('request.headers', $5, true)";

pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Builds the call statement. `$1` is the JSON argument object as text (or
/// the whole body for a single unnamed json parameter).
pub fn build_sql(r: &Routine, mask: u64, singular: bool) -> String {
    let func = format!("{}.{}", quote_ident(&r.schema), quote_ident(&r.name));
    let mut call = String::new();
    let mut from = String::new();
    if r.takes_body {
        let _ = write!(call, "{func}($1::text::{})", r.params[0].type_sql);
    } else {
        let provided: Vec<_> = r
            .params
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, p)| p)
            .collect();
        let args: Vec<String> = provided
            .iter()
            .map(|p| {
                let q = quote_ident(&p.name);
                if p.variadic {
                    format!("VARIADIC {q} := _a.{q}")
                } else {
                    format!("{q} := _a.{q}")
                }
            })
            .collect();
        let _ = write!(call, "{func}({})", args.join(", "));
        if !provided.is_empty() {
            let cols: Vec<String> = provided
                .iter()
                .map(|p| format!("{} {}", quote_ident(&p.name), p.type_sql))
                .collect();
            let _ = write!(
                from,
                " FROM json_to_record($1::text::json) AS _a({})",
                cols.join(", ")
            );
        } else {
            // Keep $1 in the statement so every call binds one parameter.
            from.push_str(" FROM (SELECT $1::text) AS _a");
        }
    }
    let tail =
        "current_setting('response.headers', true), current_setting('response.status', true)";
    match r.shape {
        Shape::SetOf => {
            let body = if singular {
                "(json_agg(_r) -> 0)::text"
            } else {
                "coalesce(json_agg(_r), '[]')::text"
            };
            let lateral = if from.is_empty() {
                format!(" FROM {call} AS _r")
            } else {
                format!("{from} CROSS JOIN LATERAL {call} AS _r")
            };
            format!("SELECT {body}, count(*), {tail}{lateral}")
        }
        Shape::Void => {
            format!("SELECT NULL::text, 1::bigint, {tail} FROM (SELECT {call}{from} OFFSET 0) AS _r")
        }
        Shape::Scalar | Shape::Composite => format!(
            "SELECT to_json(_r.v)::text, 1::bigint, {tail} FROM (SELECT {call} AS v{from} OFFSET 0) AS _r"
        ),
    }
}

/// Runs `BEGIN; settings; call; COMMIT` as one pipeline: a single round trip
/// once the statements are prepared. An error anywhere aborts the
/// transaction, and the trailing COMMIT then rolls it back.
pub async fn call_pipelined(
    client: &Object,
    read_only: bool,
    settings: &RequestSettings<'_>,
    call: &Statement,
    args: &str,
) -> Result<CallResult, tokio_postgres::Error> {
    let settings_stmt = client.prepare_cached(SETTINGS_SQL).await?;
    let begin = if read_only {
        "BEGIN READ ONLY"
    } else {
        "BEGIN"
    };
    let params = settings.params();
    let args = [&args as &(dyn tokio_postgres::types::ToSql + Sync)];
    let (b, s, c, e) = futures_util::join!(
        client.batch_execute(begin),
        client.query_one(&settings_stmt, &params,),
        client.query_one(call, &args),
        client.batch_execute("COMMIT"),
    );
    b?;
    s?;
    let row = c?;
    e?;
    Ok(read_call_row(&row))
}

/// Starts the transaction and applies the settings (one round trip), for
/// requests that must decide between COMMIT and ROLLBACK after the call.
pub async fn begin_with_settings(
    client: &Object,
    read_only: bool,
    settings: &RequestSettings<'_>,
) -> Result<(), tokio_postgres::Error> {
    let settings_stmt = client.prepare_cached(SETTINGS_SQL).await?;
    let begin = if read_only {
        "BEGIN READ ONLY"
    } else {
        "BEGIN"
    };
    let params = settings.params();
    let (b, s) = futures_util::join!(
        client.batch_execute(begin),
        client.query_one(&settings_stmt, &params,),
    );
    if let Err(e) = b.and(s.map(|_| ())) {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    Ok(())
}

/// Runs the call inside a transaction opened by `begin_with_settings`.
pub async fn call_in_transaction(
    client: &Object,
    call: &Statement,
    args: &str,
) -> Result<CallResult, tokio_postgres::Error> {
    let row = client.query_one(call, &[&args]).await?;
    Ok(read_call_row(&row))
}

fn read_call_row(row: &tokio_postgres::Row) -> CallResult {
    CallResult {
        body: row.get(0),
        rows: row.get(1),
        headers: row.get::<_, Option<String>>(2).filter(|s| !s.is_empty()),
        status: row.get::<_, Option<String>>(3).filter(|s| !s.is_empty()),
    }
}
