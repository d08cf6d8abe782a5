//! The call: one statement per (routine, provided arguments) that turns the
//! JSON arguments into typed named arguments, calls the routine, shapes its
//! result as JSON text and reads the `response.*` settings; and the
//! per-request settings statement. `db::exec` runs them.
//!
//! Every identifier spliced into SQL comes from the catalog (see
//! `schema.rs`), quoted; request data only ever travels as `$1`.

use std::fmt::Write as _;

use std::sync::Arc;

use super::schema::{RoleSettings, Routine, Shape};

/// What the call statement returns: `(body, rows, response.headers, response.status)`.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub body: Option<String>,
    pub rows: i64,
    pub headers: Option<String>,
    pub status: Option<String>,
}

/// The per-request settings, applied with `set_config(..., true)` so they
/// last for the transaction only: the role, the request GUCs PostgREST
/// sets, and the role's own settings (`ALTER ROLE … SET`), which `SET ROLE`
/// alone would not apply.
pub struct RequestSettings {
    pub role: String,
    pub claims: String,
    pub method: String,
    pub path: String,
    pub headers: String,
    pub role_settings: Arc<RoleSettings>,
}

impl RequestSettings {
    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.role,
            &self.claims,
            &self.method,
            &self.path,
            &self.headers,
            &self.role_settings.names,
            &self.role_settings.values,
        ]
    }
}

pub const SETTINGS_SQL: &str = "SELECT set_config('role', $1, true), \
     set_config('request.jwt.claims', $2, true), \
     set_config('request.method', $3, true), \
     set_config('request.path', $4, true), \
     set_config('request.headers', $5, true), \
     (SELECT count(set_config(k, v, true)) FROM unnest($6::text[], $7::text[]) AS s(k, v))";

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

pub(super) fn read_call_row(row: &tokio_postgres::Row) -> CallResult {
    CallResult {
        body: row.get(0),
        rows: row.get(1),
        headers: row.get::<_, Option<String>>(2).filter(|s| !s.is_empty()),
        status: row.get::<_, Option<String>>(3).filter(|s| !s.is_empty()),
    }
}
