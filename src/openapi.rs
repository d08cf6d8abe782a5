//! `GET /`: an OpenAPI 3 description of the exposed functions, built from
//! the function cache; each `COMMENT ON FUNCTION` becomes the description.

use serde_json::{json, Map, Value};

use crate::db::schema::{Routine, SchemaCache, Shape};

fn json_type(pg: &str) -> Value {
    let base = pg.trim_end_matches("[]");
    let scalar = match base {
        "smallint" | "integer" | "bigint" => json!({"type": "integer"}),
        "numeric" | "real" | "double precision" => json!({"type": "number"}),
        "boolean" => json!({"type": "boolean"}),
        "json" | "jsonb" => json!({}),
        "uuid" => json!({"type": "string", "format": "uuid"}),
        "timestamp with time zone" | "timestamp without time zone" => {
            json!({"type": "string", "format": "date-time"})
        }
        "date" => json!({"type": "string", "format": "date"}),
        _ => json!({"type": "string"}),
    };
    if pg.ends_with("[]") {
        json!({"type": "array", "items": scalar})
    } else {
        scalar
    }
}

fn operation(r: &Routine, read: bool) -> Value {
    let (summary, description) = match &r.description {
        Some(text) => {
            let mut parts = text.splitn(2, "\n\n");
            let summary = parts.next().unwrap_or("").trim().to_string();
            let rest = parts.next().map(|s| s.trim().to_string());
            (summary, rest)
        }
        None => (format!("{}.{}", r.schema, r.name), None),
    };
    let mut props = Map::new();
    let mut required = Vec::new();
    for p in &r.params {
        let mut schema = json_type(&p.type_sql);
        if let Value::Object(o) = &mut schema {
            o.insert("x-pg-type".into(), Value::String(p.type_sql.clone()));
        }
        props.insert(p.name.clone(), schema);
        if !p.has_default {
            required.push(Value::String(p.name.clone()));
        }
    }
    let result = match r.shape {
        Shape::SetOf => json!({"type": "array", "items": {}}),
        Shape::Composite => json!({"type": "object"}),
        Shape::Void => Value::Null,
        Shape::Scalar => json_type(&r.return_type),
    };
    let mut responses = Map::new();
    if r.shape == Shape::Void {
        responses.insert("204".into(), json!({"description": "No Content"}));
    } else {
        responses.insert(
            "200".into(),
            json!({"description": format!("returns {}", r.return_type),
                   "content": {"application/json": {"schema": result}}}),
        );
    }
    responses.insert(
        "default".into(),
        json!({"$ref": "#/components/responses/Error"}),
    );
    let mut op = json!({
        "summary": summary,
        "operationId": format!("{}_{}", if read { "get" } else { "post" }, r.name),
        "tags": ["rpc"],
        "responses": responses,
    });
    if let Some(d) = description {
        op["description"] = Value::String(d);
    }
    if read {
        let params: Vec<Value> = r
            .params
            .iter()
            .map(|p| {
                json!({"name": p.name, "in": "query", "required": !p.has_default,
                       "schema": json_type(&p.type_sql)})
            })
            .collect();
        op["parameters"] = Value::Array(params);
    } else {
        op["requestBody"] = json!({
            "required": !required.is_empty(),
            "content": {"application/json": {"schema": {
                "type": "object", "properties": props, "required": required}}}
        });
    }
    op
}

/// The document for one schema (profile).
pub fn document(cache: &SchemaCache, schema: &str) -> Value {
    let mut paths = Map::new();
    for r in cache.routines_in(schema) {
        let key = format!("/rpc/{}", r.name);
        let entry = paths.entry(key).or_insert_with(|| json!({}));
        if entry.get("post").is_none() {
            entry["post"] = operation(r, false);
            if r.is_read_only() {
                entry["get"] = operation(r, true);
            }
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "pgrpc", "version": env!("CARGO_PKG_VERSION"),
                 "description": format!("RPC functions of the {schema} schema")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Error": {"description": "PostgREST-style error",
                "content": {"application/json": {"schema": {"type": "object",
                    "required": ["code", "message", "details", "hint"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                   "details": {"type": "string", "nullable": true},
                                   "hint": {"type": "string", "nullable": true}}}}}}}
        },
        "security": [{}, {"bearer": []}]
    })
}
