//! `GET /`: an OpenAPI 3 description of the exposed functions, built from
//! the function cache; each `COMMENT ON FUNCTION` becomes the description.
//!
//! The document says what the proxy does, so that a schema-driven tool
//! (schemathesis, a client generator) can trust it: argument types as
//! `json_to_record` reads them, result schemas from the return type's
//! columns, `null` wherever SQL may give NULL, the query-string operations
//! and headers of `docs/proxy.md`, and every status a call can answer.
//! `tests/it/clients.rs` fuzzes the document against the server.//!
//! This file holds the document, its operations, request bodies and
//! responses; [`schema`] the JSON schemas of values and results, [`params`]
//! the parameters of an operation.

mod params;
mod schema;

use serde_json::{json, Map, Value};

use crate::db::schema::{Routine, SchemaCache, Shape, Volatility};
use params::{argument_param, header_param, header_params, operable, operation_params};
use schema::{nullable, result_schema, value_schema, Place};

/// A body that is the value itself: text, or bytes.
fn string_schema(bytes: bool) -> Value {
    if bytes {
        json!({"type": "string", "format": "binary"})
    } else {
        json!({"type": "string"})
    }
}

fn error_ref() -> Value {
    json!({"$ref": "#/components/responses/Error"})
}

fn responses(r: &Routine, read: bool) -> Map<String, Value> {
    let mut responses = Map::new();
    let content_range = json!({"Content-Range": {
        "description": "first-last/total of the rows returned (* when not counted)",
        "schema": {"type": "string"}}});
    match result_schema(r) {
        None => {
            responses.insert("204".into(), json!({"description": "No Content (void)"}));
        }
        Some(_) if r.media.is_some() => {
            // A media-type handler: its domain's type, its value as the body.
            let media = r.media.as_ref().map_or("*/*", |m| m.media.mime());
            let body = string_schema(r.media.as_ref().is_some_and(|m| m.bytea));
            responses.insert(
                "200".into(),
                json!({"description": format!("returns {}", r.return_type),
                       "content": {media: {"schema": body}}}),
            );
        }
        Some(schema) => {
            let mut content = json!({"application/json": {"schema": schema}});
            if operable(r) {
                let one = match &schema["items"] {
                    Value::Null => schema.clone(),
                    items => items.clone(),
                };
                content["application/vnd.pgrst.object+json"] = json!({"schema": one});
                // `Accept: text/csv`: a header line, then one line per row.
                content["text/csv"] = json!({"schema": {"type": "string"}});
                // `Accept: application/x-ndjson`: one JSON value per line.
                content["application/x-ndjson"] = json!({"schema": {"type": "string"}});
            }
            // A plain text, xml or bytea result also answers its raw value.
            let raw = (r.shape == Shape::Scalar)
                .then(|| crate::media::raw_media(&r.return_type))
                .flatten();
            if let Some((media, bytea)) = raw {
                content[media.mime()] = json!({"schema": string_schema(bytea)});
            }
            responses.insert(
                "200".into(),
                json!({"description": format!("returns {}", r.return_type),
                       "headers": content_range, "content": content}),
            );
            if operable(r) {
                responses.insert(
                    "206".into(),
                    json!({"description": "Partial Content: fewer rows than the counted total",
                           "headers": content_range, "content": content}),
                );
            }
        }
    }
    // Every status a call may answer (docs/errors.md): the business rules
    // in SQL answer 4xx for inputs the types allow.
    let mut statuses = vec![
        "400", "401", "403", "404", "405", "406", "409", "422", "429", "503", "504",
    ];
    if operable(r) {
        statuses.push("416");
    }
    if !read {
        statuses.extend(["413", "415"]);
    }
    for s in statuses {
        responses.insert(s.into(), error_ref());
    }
    responses
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
    let mut description = description.unwrap_or_default();
    if read && r.volatility == Volatility::Volatile {
        description.push_str(
            "\n\nGET runs this VOLATILE function in a READ ONLY transaction: if it writes, the answer is 405 with SQLSTATE 25006. Call it with POST.",
        );
    }
    let mut op = json!({
        "summary": summary,
        "operationId": format!("{}_{}", if read { "get" } else { "post" }, r.name),
        "tags": ["rpc"],
        "responses": responses(r, read),
    });
    let description = description.trim();
    if !description.is_empty() {
        op["description"] = Value::String(description.to_string());
    }
    let mut params: Vec<Value> = Vec::new();
    if read {
        // An unnamed parameter has no query-string name.
        params.extend(
            r.params
                .iter()
                .filter(|p| !p.name.is_empty())
                .map(argument_param),
        );
    }
    params.extend(operation_params(r, read));
    params.extend(header_params(r, read));
    op["parameters"] = Value::Array(params);
    if !read {
        op["requestBody"] = request_body(r);
    }
    op
}

/// The POST body: the arguments by name. A key that names no parameter
/// finds no function (404), hence no additional properties.
fn request_body(r: &Routine) -> Value {
    if r.takes_body {
        // A single unnamed parameter takes the whole body, of the media
        // type its parameter type reads (docs/media-types.md).
        let raw = r
            .params
            .first()
            .and_then(|p| crate::media::raw_media(&p.type_sql));
        let content = match raw {
            Some((media, bytea)) => json!({media.mime(): {"schema": string_schema(bytea)}}),
            None => json!({"application/json": {"schema": {}}}),
        };
        return json!({"required": false, "content": content});
    }
    let mut props = Map::new();
    let mut required = Vec::new();
    for p in &r.params {
        let mut schema = nullable(value_schema(&p.type_sql, Place::Body));
        if p.has_default {
            schema["description"] = Value::String("optional: has a default".into());
        }
        props.insert(p.name.clone(), schema);
        if !p.has_default {
            required.push(Value::String(p.name.clone()));
        }
    }
    let mut schema = json!({"type": "object", "properties": props, "additionalProperties": false});
    if !required.is_empty() {
        schema["required"] = Value::Array(required.clone());
    }
    json!({
        "required": !required.is_empty(),
        "content": {"application/json": {"schema": schema}}
    })
}

/// One call of a batch to `r`: its name as `fn`, its body as `args`.
/// A function that takes a raw body (text, xml, bytea) cannot be batched.
fn batch_item(r: &Routine) -> Option<Value> {
    if r.takes_body && crate::media::raw_media(&r.params[0].type_sql).is_some() {
        return None;
    }
    let body = request_body(r);
    // `args` may be left out only where the function needs no argument.
    let required = if body["required"] == json!(true) {
        json!(["fn", "args"])
    } else {
        json!(["fn"])
    };
    let args = body["content"]["application/json"]["schema"].clone();
    let args = match args {
        Value::Object(o) if o.is_empty() => json!({"type": "object"}),
        other => other,
    };
    Some(json!({
        "type": "object",
        "required": required,
        "additionalProperties": false,
        "properties": {"fn": {"type": "string", "enum": [r.name]}, "args": args},
    }))
}

/// `POST /rpc`: a batch of calls, all or nothing (docs/proxy.md, Batches).
fn batch_operation(items: Vec<Value>) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({"description": "each call's result, in order, as that call alone would answer it (null for a void call)",
               "content": {"application/json": {"schema": {"type": "array", "items": {}}}}}),
    );
    for s in [
        "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "429", "503", "504",
    ] {
        responses.insert(s.into(), error_ref());
    }
    json!({
        "summary": "Runs a batch of calls in one transaction, all or nothing",
        "description": "The calls run in order, as the request's role, each checked as if sent alone. If one fails, nothing is kept, and the answer is that call's error with X-Pgrpc-Batch-Index naming it (0-based). At most PGRPC_MAX_BATCH_CALLS calls (100 by default; more is 413). No query string; Prefer is ignored. docs/proxy.md#batches",
        "operationId": "post_batch",
        "tags": ["rpc"],
        "parameters": [header_param(
            "Idempotency-Key",
            json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!#-~][ -~]*$"}),
            "covers the whole batch: a retry with the same key and body replays the stored answer (Idempotent-Replayed: true); a failed batch stores nothing, so its retry runs again. docs/idempotency-keys.md",
        )],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
            "type": "array", "minItems": 1, "items": {"anyOf": items}}}}},
        "responses": responses,
    })
}

/// The document for one schema (profile). Every function answers POST,
/// GET and HEAD (SPEC 2.2: GET runs READ ONLY, whatever the volatility).
pub fn document(cache: &SchemaCache, schema: &str, role: &str) -> Value {
    let mut paths = Map::new();
    let mut batch_items = Vec::new();
    for r in cache.routines_in(schema) {
        // As PostgREST: a caller is shown only what its role may call.
        if !cache.may_execute(role, r) {
            continue;
        }
        if let Some(item) = batch_item(r) {
            batch_items.push(item);
        }
        let key = format!("/rpc/{}", r.name);
        let entry = paths.entry(key).or_insert_with(|| json!({}));
        if entry.get("post").is_none() {
            entry["post"] = operation(r, false);
            entry["get"] = operation(r, true);
        }
    }
    if !batch_items.is_empty() {
        paths.insert("/rpc".into(), json!({"post": batch_operation(batch_items)}));
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
