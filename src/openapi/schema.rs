//! The JSON schemas of the document: a value of a PostgreSQL type as it
//! travels in a body, a query string or a result, and a function's result
//! (rows whose every column may be NULL).

use serde_json::{json, Map, Value};

use crate::db::schema::{Column, Naming, Routine, Shape};

/// Where a value travels: its JSON form differs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// A JSON body member, read by `json_to_record`.
    Body,
    /// A query-string argument: always text, parsed by PostgreSQL.
    Query,
    /// A value of the response, as `to_json` writes it.
    Result,
}

/// Text PostgreSQL can store: anything but NUL.
pub(super) const TEXT_PATTERN: &str = "^[^\\u0000]*$";

pub(super) fn integer_bounds(base: &str) -> Option<(i64, i64)> {
    match base {
        "smallint" => Some((i16::MIN.into(), i16::MAX.into())),
        "integer" => Some((i32::MIN.into(), i32::MAX.into())),
        "bigint" => Some((i64::MIN, i64::MAX)),
        _ => None,
    }
}

/// The schema of one value of PostgreSQL type `pg` (as `format_type`
/// writes it) in `place`.
pub(super) fn value_schema(pg: &str, place: Place) -> Value {
    if let Some(element) = pg.strip_suffix("[]") {
        return array_schema(element, place);
    }
    let mut schema = if let Some((min, max)) = integer_bounds(pg) {
        let format = if pg == "bigint" { "int64" } else { "int32" };
        json!({"type": "integer", "format": format, "minimum": min, "maximum": max})
    } else {
        scalar_schema(pg, place)
    };
    if let Value::Object(o) = &mut schema {
        o.insert("x-pg-type".into(), Value::String(pg.to_string()));
    }
    schema
}

fn scalar_schema(pg: &str, place: Place) -> Value {
    match pg {
        "numeric" | "real" | "double precision" => json!({"type": "number"}),
        "boolean" => json!({"type": "boolean"}),
        // Any JSON value; in a query string, JSON text (declared with
        // `content` by `argument_param`).
        "json" | "jsonb" => json!({}),
        "uuid" => json!({"type": "string", "format": "uuid"}),
        "timestamp with time zone" => json!({"type": "string", "format": "date-time"}),
        "date" => json!({"type": "string", "format": "date"}),
        "inet" => json!({"type": "string", "format": "ipv4"}),
        // A body member of a text type may be any JSON value: a string is
        // taken as it is, any other value as its JSON text.
        _ if place == Place::Body => json!({"pattern": TEXT_PATTERN}),
        _ if place == Place::Query => json!({"type": "string", "pattern": TEXT_PATTERN}),
        _ => json!({"type": "string"}),
    }
}

/// An array: a JSON array in a body or a result, PostgreSQL's array
/// literal (`{a,b}`) in a query string.
fn array_schema(element: &str, place: Place) -> Value {
    if place == Place::Query {
        let item = match element {
            _ if integer_bounds(element).is_some() => "-?[0-9]{1,9}",
            "uuid" => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "boolean" => "(true|false)",
            _ => "[A-Za-z0-9_]+",
        };
        return json!({
            "type": "string",
            "pattern": format!("^\\{{({item}(,{item})*)?\\}}$"),
            "description": "a PostgreSQL array literal, such as {a,b}",
            "x-pg-type": format!("{element}[]"),
        });
    }
    let mut items = nullable(value_schema(element, place));
    // One dimension: a nested array in a body is "expected JSON array"
    // (22P02), so an untyped text element is a string there.
    if let (Place::Body, Value::Object(o)) = (place, &mut items) {
        o.entry("type").or_insert_with(|| json!("string"));
    }
    json!({"type": "array", "items": items, "x-pg-type": format!("{element}[]")})
}

/// `schema`, also allowing `null` (OpenAPI 3.0's `nullable`).
pub(super) fn nullable(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.insert("nullable".into(), Value::Bool(true));
    }
    schema
}

/// One result row: every column may be NULL (composite attributes, OUT and
/// TABLE parameters carry no NOT NULL).
fn row_schema(columns: &[Column]) -> Value {
    let props: Map<String, Value> = columns
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                nullable(value_schema(&c.type_sql, Place::Result)),
            )
        })
        .collect();
    json!({"type": "object", "properties": props})
}

/// What the function's result is as a JSON response body.
pub(super) fn result_schema(r: &Routine) -> Option<Value> {
    match r.shape {
        Shape::Void => None,
        Shape::SetOf if r.naming == Naming::Bare => Some(json!({
            "type": "array",
            "items": nullable(value_schema(&r.return_type, Place::Result)),
        })),
        Shape::SetOf => Some(json!({"type": "array", "items": row_schema(&r.columns)})),
        Shape::Composite => Some(nullable(row_schema(&r.columns))),
        Shape::Scalar => Some(nullable(value_schema(&r.return_type, Place::Result))),
    }
}
