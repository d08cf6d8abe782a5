//! The call statement: how a routine is called with its arguments bound
//! from `$1` (`json_to_record`, or the whole body), and the statement for
//! each result shape, media handler and set of query-string operations,
//! with the response settings read (and, for a call that may write,
//! checked) after the call. Statements are cached per routine, so that
//! each connection prepares a statement once.
//!
//! Every identifier spliced into SQL comes from the catalog, quoted; request
//! data only ever travels as parameters.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::db::quote_ident;
use crate::db::schema::{Naming, Routine, Shape};
pub use crate::db::stream::StreamFormat;
use crate::negotiate::{Handler, Negotiated};
use crate::query::{self, QueryError, QueryOps};
use crate::response_settings;

/// How many statements with query-string operations a routine keeps; past
/// it, such statements are built per request and not kept, so that
/// requests cannot grow the caches without bound.
const MAX_CACHED_SHAPES: usize = 64;

/// The statement with query-string operations: the call's rows filtered
/// in a CTE, then ordered, paginated and projected. Statements are cached
/// per shape (the SQL text; values are parameters), up to
/// `MAX_CACHED_SHAPES` per routine.
pub fn ops_sql(
    r: &Routine,
    mask: u64,
    media: &Negotiated,
    ops: &QueryOps,
    (offset, limit): (i64, Option<i64>),
    count: bool,
    tail: &str,
) -> Result<(Arc<str>, Vec<String>, bool), QueryError> {
    let singular = media.singular();
    let scalar = (r.shape == Shape::SetOf && r.naming == Naming::Bare) || r.shape == Shape::Scalar;
    let c = query::compile(ops, &r.columns, scalar, 2)?;
    let mut params = c.params;
    let page = page_sql(&mut params, offset, limit);
    let source = source_sql(r, mask);
    let agg = match &c.bare_column {
        Some(col) => format!("json_agg(_s.{col})"),
        None => "json_agg(_s)".to_string(),
    };
    let agg = match media.handler {
        Handler::JsonStripped | Handler::Single { stripped: true } => {
            format!("json_strip_nulls({agg})")
        }
        _ => agg,
    };
    let body = if singular || r.shape == Shape::Composite {
        format!("({agg} -> 0)::text")
    } else {
        format!("coalesce({agg}, '[]')::text")
    };
    let bare = c.bare_column.as_ref().map(|col| format!("_s.{col}"));
    let body = rows_body(media, "_s", bare.as_deref()).unwrap_or(body);
    let total = if count {
        "(SELECT count(*) FROM _f)"
    } else {
        "NULL::bigint"
    };
    // `LIMIT 0` fetches nothing, so PostgreSQL would never run the call:
    // its arguments would go unchecked and a write would be answered
    // without happening. A qual without columns is evaluated once before
    // any row is fetched, and this one reads the whole call.
    let run_call = if limit == Some(0) {
        " WHERE (SELECT count(*) FROM _f) >= 0"
    } else {
        ""
    };
    let sql = if media.needs_rows() {
        format!(
            "WITH _f AS (SELECT {}{source}{}), _s AS (SELECT {} FROM _f{}{page}) \
             SELECT {}, count(*), {tail}, {total} FROM _s{run_call}",
            c.source_cols,
            c.where_sql,
            c.select_sql,
            c.order_sql,
            csv_body("_s")
        )
    } else {
        format!(
            "WITH _f AS (SELECT {}{source}{}) SELECT {body}, count(*), {tail}, {total} \
             FROM (SELECT {} FROM _f{}{page}) AS _s{run_call}",
            c.source_cols, c.where_sql, c.select_sql, c.order_sql
        )
    };
    Ok(cached(r, mask, singular, sql, params))
}

/// A statement of one request's shape, cached per routine by its text (up
/// to `MAX_CACHED_SHAPES`; past that, prepared per request and not kept).
pub fn cached(
    r: &Routine,
    mask: u64,
    singular: bool,
    sql: String,
    params: Vec<String>,
) -> (Arc<str>, Vec<String>, bool) {
    // The text tells the checked tail from the plain one.
    let key = (mask, singular, false, sql);
    if let Ok(cache) = r.sql_cache.read() {
        if let Some(sql) = cache.get(&key) {
            return (sql.clone(), params, false);
        }
    }
    let sql: Arc<str> = key.3.as_str().into();
    if let Ok(mut cache) = r.sql_cache.write() {
        if cache.len() < MAX_CACHED_SHAPES {
            cache.insert(key, sql.clone());
            return (sql, params, false);
        }
    }
    (sql, params, true)
}

/// The call statement for the provided parameters; built once per
/// (mask, singular, tail) and kept with the routine, so that prepared
/// statements can be cached per connection.
pub fn call_sql(r: &Routine, mask: u64, singular: bool, tail: &str) -> Arc<str> {
    let key = (mask, singular, tail == CHECKED_TAIL, String::new());
    if let Ok(cache) = r.sql_cache.read() {
        if let Some(sql) = cache.get(&key) {
            return sql.clone();
        }
    }
    let sql: Arc<str> = build_sql(r, mask, singular, tail).into();
    if let Ok(mut cache) = r.sql_cache.write() {
        cache.insert(key, sql.clone());
    }
    sql
}

/// `response.headers` and `response.status`, the third and fourth columns
/// of a call statement that may write, checked in the statement itself (a
/// call whose answer cannot be sent raises, so it is never committed).
pub const CHECKED_TAIL: &str = response_settings::CALL_TAIL;

/// The same columns, unchecked, for a read-only call.
pub const PLAIN_TAIL: &str = response_settings::PLAIN_TAIL;

/// The call expression and the `FROM` that binds its arguments from `$1`
/// (empty for a single unnamed json parameter).
fn call_parts(r: &Routine, mask: u64) -> (String, String) {
    let func = format!("{}.{}", quote_ident(&r.schema), quote_ident(&r.name));
    let mut call = String::new();
    let mut from = String::new();
    if r.takes_body && r.params[0].type_sql == "bytea" {
        // The body travels in base64, as text like every `$1`.
        let _ = write!(call, "{func}(decode($1::text, 'base64'))");
    } else if r.takes_body {
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
    (call, from)
}

/// Builds the call statement: `$1` is the JSON argument object as text (or
/// the whole body for a single unnamed json parameter). It returns
/// `(body, rows, response.headers, response.status, total)`; the total is
/// NULL here (the row count is the total).
pub fn build_sql(r: &Routine, mask: u64, singular: bool, tail: &str) -> String {
    let (call, from) = call_parts(r, mask);
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
            if r.naming == Naming::OutParam {
                // `_r` of a base-type function is its bare value; `_r.*`
                // is its one column, named for the TABLE/OUT parameter.
                return format!(
                    "SELECT {body}, count(*), {tail}, NULL::bigint FROM (SELECT _r.*{lateral}) AS _r"
                );
            }
            format!("SELECT {body}, count(*), {tail}, NULL::bigint{lateral}")
        }
        Shape::Composite if r.naming == Naming::OutParam => {
            let column = r.columns.first().map_or("v".to_string(), |c| quote_ident(&c.name));
            format!(
                "SELECT to_json(_r)::text, 1::bigint, {tail}, NULL::bigint FROM (SELECT {call} AS {column}{from} OFFSET 0) AS _r"
            )
        }
        Shape::Void => {
            format!("SELECT NULL::text, 1::bigint, {tail}, NULL::bigint FROM (SELECT {call}{from} OFFSET 0) AS _r")
        }
        Shape::Scalar | Shape::Composite => format!(
            "SELECT to_json(_r.v)::text, 1::bigint, {tail}, NULL::bigint FROM (SELECT {call} AS v{from} OFFSET 0) AS _r"
        ),
    }
}

/// The call statement for a media type other than plain JSON (no
/// query-string operations): the body of a media-type domain or aggregate,
/// or JSON without nulls. None for plain JSON, singular JSON and `void`,
/// which `build_sql` builds.
pub fn media_sql(r: &Routine, mask: u64, media: &Negotiated, tail: &str) -> Option<String> {
    if matches!(
        media.handler,
        Handler::Json | Handler::Single { stripped: false }
    ) || r.shape == Shape::Void
    {
        return None;
    }
    let (call, from) = call_parts(r, mask);
    let stripped = matches!(
        media.handler,
        Handler::JsonStripped | Handler::Single { stripped: true }
    );
    Some(match r.shape {
        Shape::SetOf => {
            let body = match rows_body(media, "_r", None) {
                Some(body) => body,
                None if media.singular() => "(json_strip_nulls(json_agg(_r)) -> 0)::text".into(),
                None => "coalesce(json_strip_nulls(json_agg(_r)), '[]')::text".into(),
            };
            let lateral = if from.is_empty() {
                format!(" FROM {call} AS _r")
            } else {
                format!("{from} CROSS JOIN LATERAL {call} AS _r")
            };
            if r.naming == Naming::OutParam {
                // As in `build_sql`: `_r.*` is the one named column.
                return Some(format!(
                    "SELECT {body}, count(*), {tail}, NULL::bigint FROM (SELECT _r.*{lateral}) AS _r"
                ));
            }
            format!("SELECT {body}, count(*), {tail}, NULL::bigint{lateral}")
        }
        _ => {
            // A single OUT parameter is a row of that one column (`_r`),
            // anything else the value `_r.v`.
            let (column, value) = match (r.shape, r.columns.first()) {
                (Shape::Composite, Some(c)) if r.naming == Naming::OutParam => {
                    (quote_ident(&c.name), "_r")
                }
                _ => ("v".to_string(), "_r.v"),
            };
            let body = match rows_body(media, value, Some(value)) {
                Some(body) => body,
                None if stripped => format!("json_strip_nulls(to_json({value}))::text"),
                None => format!("to_json({value})::text"),
            };
            format!(
                "SELECT {body}, 1::bigint, {tail}, NULL::bigint FROM (SELECT {call} AS {column}{from} OFFSET 0) AS _r"
            )
        }
    })
}

/// The statement of a streamed call: one row per element of the answer,
/// `(text, csv header, total, response.headers, response.status)`, with
/// the request's filters, `select`, order and page applied as `ops_sql`
/// applies them. The text is the row's JSON (the bare value of a scalar
/// set) or its CSV line; the CSV header is on the first row only
/// (`row_number()` streams: it reads no row ahead); the total, when a
/// count is asked for, is `count(*) OVER ()` over the filtered rows
/// before the page, which reads every row before the first is sent.
pub fn stream_sql(
    r: &Routine,
    mask: u64,
    media: &Negotiated,
    ops: &QueryOps,
    (offset, limit): (i64, Option<i64>),
    count: bool,
) -> Result<(Arc<str>, Vec<String>, bool, StreamFormat), QueryError> {
    let scalar = (r.shape == Shape::SetOf && r.naming == Naming::Bare) || r.shape == Shape::Scalar;
    // Without query-string operations the statement depends on nothing but
    // the routine, the mask, the format, the count and whether there is a
    // limit and an offset: it is looked up under a short key before it is
    // built (building and hashing it whole cost more than the rest of the
    // request's planning).
    let plain = ops.is_empty().then(|| {
        let handler = match media.handler {
            Handler::Csv => 'c',
            Handler::Ndjson => 'n',
            _ => 'j',
        };
        let mut key = String::with_capacity(12);
        key.push_str("stream ");
        key.push(handler);
        for flag in [count, limit.is_some(), offset > 0] {
            key.push(if flag { '1' } else { '0' });
        }
        (mask, false, false, key)
    });
    if let Some(key) = &plain {
        let found = r
            .sql_cache
            .read()
            .ok()
            .and_then(|cache| cache.get(key).cloned());
        if let Some(sql) = found {
            let mut params = Vec::new();
            page_sql(&mut params, offset, limit);
            let bare = scalar && !r.columns.is_empty();
            return Ok((sql, params, false, stream_format(r, media, bare)));
        }
    }
    let c = query::compile(ops, &r.columns, scalar, 2)?;
    let mut params = c.params;
    let page = page_sql(&mut params, offset, limit);
    let source = source_sql(r, mask);
    let json = match &c.bare_column {
        Some(col) => format!("coalesce(to_json(_s.{col})::text, 'null')"),
        None => "row_to_json(_s)::text".to_string(),
    };
    let format = stream_format(r, media, c.bare_column.is_some());
    let (text, header) = match format {
        StreamFormat::Csv => (
            "substring(_s::text, 2, length(_s::text) - 2)".to_string(),
            "CASE WHEN row_number() OVER () = 1 THEN (SELECT coalesce(string_agg(_k, ','), '') \
             FROM json_object_keys(row_to_json(_s)) AS _k) END",
        ),
        StreamFormat::Ndjson | StreamFormat::Json { .. } => (json, "NULL::text"),
    };
    let (window, total) = if count {
        (
            ", count(*) OVER () AS \"pgrpc.total\"",
            "_f.\"pgrpc.total\"",
        )
    } else {
        ("", "NULL::bigint")
    };
    let sql = format!(
        "SELECT {text}, {header}, {total}, {PLAIN_TAIL} FROM (SELECT _f.*{window} FROM \
         (SELECT {}{source}{}) AS _f{}{page}) AS _f CROSS JOIN LATERAL (SELECT {}) AS _s",
        c.source_cols, c.where_sql, c.order_sql, c.select_sql
    );
    if let Some(key) = plain {
        // Bounded as every cached shape is: masks are the client's choice.
        let sql: Arc<str> = sql.into();
        if let Ok(mut cache) = r.sql_cache.write() {
            if cache.len() < MAX_CACHED_SHAPES {
                cache.insert(key, sql.clone());
                return Ok((sql, params, false, format));
            }
        }
        return Ok((sql, params, true, format));
    }
    let (sql, params, transient) = cached(r, mask, false, sql, params);
    Ok((sql, params, transient, format))
}

/// ` FROM <call> AS _r`, or the argument source's FROM clause with the
/// call joined LATERAL: where a call statement reads the routine's rows.
fn source_sql(r: &Routine, mask: u64) -> String {
    let (call, from) = call_parts(r, mask);
    if from.is_empty() {
        format!(" FROM {call} AS _r")
    } else {
        format!("{from} CROSS JOIN LATERAL {call} AS _r")
    }
}

/// ` LIMIT $n OFFSET $m` of a call statement, their values pushed on
/// `params` (after the filters' values).
fn page_sql(params: &mut Vec<String>, offset: i64, limit: Option<i64>) -> String {
    let mut page = String::new();
    if let Some(l) = limit {
        params.push(l.to_string());
        let _ = write!(page, " LIMIT ${}::text::bigint", params.len() + 1);
    }
    if offset > 0 {
        params.push(offset.to_string());
        let _ = write!(page, " OFFSET ${}::text::bigint", params.len() + 1);
    }
    page
}

/// How a streamed answer's rows become its body; `bare`: the rows are a
/// scalar set's bare values (no `select`).
fn stream_format(r: &Routine, media: &Negotiated, bare: bool) -> StreamFormat {
    match media.handler {
        Handler::Csv => StreamFormat::Csv,
        Handler::Ndjson => StreamFormat::Ndjson,
        // `json_agg` puts a newline before each composite or array
        // element after the first.
        _ => StreamFormat::Json {
            sep_newline: !bare
                || r.columns
                    .first()
                    .is_some_and(|c| c.type_sql.ends_with("[]")),
        },
    }
}

/// The body column over a set of rows, for handlers other than the JSON
/// ones: `rows` names the row (`_r` or `_s`), `value` the bare value of a
/// scalar result when there is one. Returns None for the JSON handlers.
fn rows_body(n: &Negotiated, rows: &str, value: Option<&str>) -> Option<String> {
    match &n.handler {
        Handler::Aggregate(agg) => {
            let arg = match &agg.target_sql {
                Some(target) => format!("{rows}::{target}"),
                None => value.unwrap_or(rows).to_string(),
            };
            Some(format!("{}({arg})::{}", agg.func_sql, base(agg.bytea)))
        }
        Handler::Domain { bytea } => Some(format!("{}::{}", value.unwrap_or(rows), base(*bytea))),
        Handler::Ndjson => Some(format!(
            "coalesce(string_agg(coalesce(to_json({})::text, 'null') || E'\\n', ''), '')",
            value.unwrap_or(rows)
        )),
        _ => None,
    }
}

/// The CSV body over the CTE `rows`: PostgREST's `asCsvF`, the header from
/// the first row's keys, each row as PostgreSQL's record text without its
/// parentheses (fields with commas, quotes, spaces or backslashes quoted,
/// quotes and backslashes doubled, NULL empty).
fn csv_body(rows: &str) -> String {
    format!(
        "(SELECT coalesce(string_agg(_k, ','), '') FROM json_object_keys(\
         (SELECT row_to_json(_h) FROM {rows} AS _h LIMIT 1)) AS _k) || E'\\n' || \
         coalesce(string_agg(substring({rows}::text, 2, length({rows}::text) - 2), E'\\n'), '')"
    )
}

fn base(bytea: bool) -> &'static str {
    if bytea {
        "bytea"
    } else {
        "text"
    }
}
