//! The parameters of an operation: a GET's arguments, the query-string
//! operations on the result (`select`, `order`, `limit`, `offset`, one
//! filter per column, with each operand's pattern) and the request
//! headers.

use serde_json::{json, Value};

use super::schema::{integer_bounds, value_schema, Place};
use crate::db::schema::{Column, Param, Routine, Shape, Volatility};

/// Whether the query string may operate on the result (filter, order,
/// page): a set, or a composite; a scalar set has one column named after
/// the function.
pub(super) fn operable(r: &Routine) -> bool {
    matches!(r.shape, Shape::SetOf | Shape::Composite)
}

fn columns_alternation(columns: &[Column]) -> String {
    let names: Vec<String> = columns.iter().map(|c| regex_escape(&c.name)).collect();
    format!("({})", names.join("|"))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\^$.|?*+()[]{}".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// The operand patterns of a filter on a column of type `pg`, for
/// documentation and for generators: `is.null` fits every type.
fn filter_pattern(pg: &str) -> String {
    let typed = match pg {
        _ if integer_bounds(pg).is_some() => "|(eq|neq|gt|gte|lt|lte)\\.-?[0-9]{1,9}",
        "uuid" => "|(eq|neq)\\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "boolean" => "|(eq|neq|is)\\.(true|false)",
        "timestamp with time zone" | "date" => {
            "|(eq|neq|gt|gte|lt|lte)\\.20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
        }
        "text" => "|(eq|neq|gt|gte|lt|lte|like|ilike)\\.[A-Za-z0-9_*]*",
        _ => "",
    };
    format!("^(not\\.)?(is\\.(null|not_null){typed})$")
}

fn query_param(name: &str, required: bool, schema: Value, description: &str) -> Value {
    let mut p = json!({"name": name, "in": "query", "required": required, "schema": schema});
    if !description.is_empty() {
        p["description"] = Value::String(description.to_string());
    }
    p
}

pub(super) fn header_param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": false, "schema": schema,
           "description": description})
}

/// A function argument in the query string of a GET.
pub(super) fn argument_param(p: &Param) -> Value {
    if matches!(p.type_sql.as_str(), "json" | "jsonb") {
        // JSON text: declared with a media type so that tools serialize it.
        return json!({"name": p.name, "in": "query", "required": !p.has_default,
                      "content": {"application/json": {"schema": {}}}});
    }
    query_param(
        &p.name,
        !p.has_default,
        value_schema(&p.type_sql, Place::Query),
        if p.variadic {
            "VARIADIC: repeat the parameter for each element"
        } else {
            ""
        },
    )
}

/// `select`, `order`, `limit`, `offset` and one filter per result column
/// (docs/proxy.md, "Query-string operations"). On GET a column named like
/// an argument is the argument.
pub(super) fn operation_params(r: &Routine, read: bool) -> Vec<Value> {
    let mut params = Vec::new();
    if !operable(r) {
        return params;
    }
    let cols = columns_alternation(&r.columns);
    params.push(query_param(
        "select",
        false,
        json!({"type": "string", "pattern": format!("^(\\*|{cols}(,{cols})*)$")}),
        "the result columns to return, comma-separated",
    ));
    params.push(query_param(
        "order",
        false,
        json!({"type": "string",
               "pattern": format!("^{cols}(\\.(asc|desc))?(\\.(nullsfirst|nullslast))?(,{cols}(\\.(asc|desc))?(\\.(nullsfirst|nullslast))?)*$")}),
        "column[.asc|.desc][.nullsfirst|.nullslast], comma-separated",
    ));
    for name in ["limit", "offset"] {
        params.push(query_param(
            name,
            false,
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": i64::MAX}),
            "",
        ));
    }
    const RESERVED: [&str; 6] = ["select", "order", "limit", "offset", "or", "and"];
    for c in &r.columns {
        let is_argument = read && r.params.iter().any(|p| p.name == c.name);
        if is_argument || RESERVED.contains(&c.name.as_str()) {
            continue;
        }
        params.push(query_param(
            &c.name,
            false,
            json!({"type": "string", "pattern": filter_pattern(&c.type_sql)}),
            "a filter on this result column, operator.value as in PostgREST: every operator of docs/proxy.md works; the pattern gives the forms that always parse for the column's type",
        ));
    }
    params
}

pub(super) fn header_params(r: &Routine, read: bool) -> Vec<Value> {
    // Preferences are lenient by default, as PostgREST's: one the proxy
    // does not know is ignored, so any value is valid unless it asks for
    // handling=strict.
    let mut params = vec![header_param(
        "Prefer",
        json!({"type": "string"}),
        "comma-separated preferences (docs/proxy.md, Preferences): count=exact|planned|estimated (the total after filters, in Content-Range), handling=lenient|strict (strict refuses an unknown or invalid one: 400 PGRST122), max-affected=N, tx=commit|rollback, timezone=<zone>",
    )];
    if read && operable(r) {
        params.push(header_param(
            "Range",
            json!({"type": "string"}),
            "[items=]first-last (0-based, inclusive) rows of the result; 416 when it cannot be satisfied, ignored when it does not parse",
        ));
        params.push(header_param(
            "Range-Unit",
            json!({"type": "string"}),
            "items (any other unit is ignored)",
        ));
    }
    // A call that cannot write (a STABLE or IMMUTABLE function) ignores the
    // key and stores nothing (docs/proxy.md), so only writes declare it.
    if !read && r.volatility == Volatility::Volatile {
        params.push(header_param(
            "Idempotency-Key",
            // The unquoted form; `"…"` (an RFC 8941 string) is accepted too.
            json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!#-~][ -~]*$"}),
            "draft-ietf-httpapi-idempotency-key-header: an RFC 8941 string (\"8e03978e-…\") or the key unquoted, 1 to 255 characters of printable ASCII, scoped to the caller. A retry with the same key and request replays the stored answer (Idempotent-Replayed: true); the same key for another request is 422 idempotency_key_reused; a retry while the first request is still in flight waits for it up to 10 s, then is 409 idempotency_key_in_use with Retry-After; a call that fails stores nothing, so its retry runs again. Keys expire after the idempotency_ttl setting (24 hours by default). docs/idempotency-keys.md",
        ));
    }
    params
}
