//! `GET /`: an OpenAPI 3 description of the exposed functions, built from
//! the function cache; each `COMMENT ON FUNCTION` becomes the description.
//!
//! The document says what the proxy does, so that a schema-driven tool
//! (schemathesis, a client generator) can trust it: argument types as
//! `json_to_record` reads them, result schemas from the return type's
//! columns, `null` wherever SQL may give NULL, the query-string operations
//! and headers of `docs/proxy.md`, and every status a call can answer.
//! `tests/it/clients.rs` fuzzes the document against the server.

use serde_json::{json, Map, Value};

use crate::db::schema::{Column, Naming, Param, Routine, SchemaCache, Shape, Volatility};

/// Where a value travels: its JSON form differs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A JSON body member, read by `json_to_record`.
    Body,
    /// A query-string argument: always text, parsed by PostgreSQL.
    Query,
    /// A value of the response, as `to_json` writes it.
    Result,
}

/// Text PostgreSQL can store: anything but NUL.
const TEXT_PATTERN: &str = "^[^\\u0000]*$";

fn integer_bounds(base: &str) -> Option<(i64, i64)> {
    match base {
        "smallint" => Some((i16::MIN.into(), i16::MAX.into())),
        "integer" => Some((i32::MIN.into(), i32::MAX.into())),
        "bigint" => Some((i64::MIN, i64::MAX)),
        _ => None,
    }
}

/// The schema of one value of PostgreSQL type `pg` (as `format_type`
/// writes it) in `place`.
fn value_schema(pg: &str, place: Place) -> Value {
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
fn nullable(mut schema: Value) -> Value {
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
fn result_schema(r: &Routine) -> Option<Value> {
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

/// Whether the query string may operate on the result (filter, order,
/// page): a set, or a composite; a scalar set has one column named after
/// the function.
fn operable(r: &Routine) -> bool {
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

fn header_param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": false, "schema": schema,
           "description": description})
}

/// A function argument in the query string of a GET.
fn argument_param(p: &Param) -> Value {
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
fn operation_params(r: &Routine, read: bool) -> Vec<Value> {
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

fn header_params(r: &Routine, read: bool) -> Vec<Value> {
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
