//! The requests postgrest-js builds for `.rpc()`, sent as it sends them, and
//! the response read as it reads it (issue 13, item 8). npm is not
//! reachable here, so the client's source is mirrored instead, from
//! supabase/postgrest-js at 63c5d9a61a403c8b9b1af683fb259ff84a98ed39:
//!
//! - `src/PostgrestClient.ts`, `rpc()`: POST with the arguments as the JSON
//!   body; with `{ get: true }` or `{ head: true }`, GET or HEAD with each
//!   argument as a query parameter (arrays as `{a,b}`); `{ count }` sets
//!   `Prefer: count=<count>`.
//! - `src/PostgrestFilterBuilder.ts`: `.eq(c, v)` appends `c=eq.v`, and so
//!   on for `gt`, `lte`, `in` (`c=in.(a,b)`).
//! - `src/PostgrestTransformBuilder.ts`: `.order(c, {ascending})` sets
//!   `order=c.asc|c.desc`; `.limit(n)` sets `limit`; `.range(from, to)` sets
//!   `offset=from&limit=to-from+1`; `.single()` sets `Accept:
//!   application/vnd.pgrst.object+json`; `.maybeSingle()` sets it too on
//!   POST but `Accept: application/json` on GET; `.csv()` sets `Accept:
//!   text/csv`.
//! - `src/PostgrestBuilder.ts`, `then()`: `Accept-Profile: <schema>` on GET
//!   and HEAD, `Content-Profile` and `Content-Type: application/json`
//!   otherwise; `body: JSON.stringify(body)`; on success the body is text for
//!   `text/csv`, else `JSON.parse`d; `count` is `parseInt` of what follows
//!   `/` in `Content-Range`, only when `Prefer` asked for a count; a HEAD
//!   reads no body; `maybeSingle` on GET keeps `data[0]` or `null` (and
//!   makes more than one row a PGRST116), and on POST turns a 406 whose
//!   `details` contain `0 rows` into `data: null` without error. An error
//!   body is `JSON.parse`d as `{code, message, details, hint}`.

use reqwest::Method;
use serde_json::{json, Value};

use crate::clients::ITEMS_FIXTURES;
use crate::support::{send, service_token, Resp, TestServer};

/// `new PostgrestClient(url, { schema: 'api', headers })`: DEFAULT_HEADERS
/// (src/constants.ts) plus the caller's Authorization.
const CLIENT_INFO: &str = "postgrest-js/0.0.0-automated";

/// One `rpc()` call as postgrest-js sends it.
struct JsRpc {
    method: Method,
    query: Vec<(String, String)>,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
}

impl JsRpc {
    /// `client.rpc(fn, args, { head, get, count })`.
    fn new(args: &Value, head: bool, get: bool, count: Option<&str>) -> JsRpc {
        let (method, query, body) = if head || get {
            let query = args
                .as_object()
                .expect("args object")
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Array(items) => {
                            let parts: Vec<String> = items.iter().map(js_string).collect();
                            format!("{{{}}}", parts.join(","))
                        }
                        other => js_string(other),
                    };
                    (k.clone(), v)
                })
                .collect();
            let m = if head { Method::HEAD } else { Method::GET };
            (m, query, None)
        } else {
            (Method::POST, Vec::new(), Some(args.to_string()))
        };
        let mut headers = vec![
            ("X-Client-Info", CLIENT_INFO.to_string()),
            ("Authorization", format!("Bearer {}", service_token())),
        ];
        if let Some(c) = count {
            headers.push(("Prefer", format!("count={c}")));
        }
        JsRpc {
            method,
            query,
            headers,
            body,
        }
    }

    /// A filter or transform: `url.searchParams.append` / `set`.
    fn param(mut self, key: &str, value: &str) -> JsRpc {
        self.query.retain(|(k, _)| !(k == key && is_transform(key)));
        self.query.push((key.to_string(), value.to_string()));
        self
    }

    fn accept(mut self, value: &str) -> JsRpc {
        self.headers.retain(|(k, _)| *k != "Accept");
        self.headers.push(("Accept", value.to_string()));
        self
    }

    /// `PostgrestBuilder.then()`: the profile and content headers, then fetch.
    async fn send(mut self, s: &TestServer, function: &str) -> Resp {
        if self.method == Method::GET || self.method == Method::HEAD {
            self.headers.push(("Accept-Profile", "api".into()));
        } else {
            self.headers.push(("Content-Profile", "api".into()));
            self.headers
                .push(("Content-Type", "application/json".into()));
        }
        let mut req = s
            .http
            .request(self.method, s.url(&format!("/rpc/{function}")))
            .query(&self.query);
        for (k, v) in &self.headers {
            req = req.header(*k, v);
        }
        if let Some(b) = self.body {
            req = req.body(b);
        }
        send(req).await
    }
}

/// `${value}` in JavaScript, for the scalars the tests pass.
fn js_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_transform(key: &str) -> bool {
    matches!(key, "order" | "limit" | "offset" | "select")
}

/// `count` as `then()` computes it: only when `Prefer` asked for one.
fn js_count(r: &Resp, asked: bool) -> Option<i64> {
    let range = r.header("content-range")?;
    let (_, total) = range.split_once('/')?;
    asked.then(|| total.parse().ok()).flatten()
}

/// The rows `add_item` made, as postgrest-js would get them back.
async fn fill(s: &TestServer, tag: &str, scores: &[i64]) -> Vec<Value> {
    let mut rows = Vec::new();
    for (i, score) in scores.iter().enumerate() {
        let r = JsRpc::new(
            &json!({"name": format!("item {i}"), "score": score, "tag": tag}),
            false,
            false,
            None,
        )
        .send(s, "add_item")
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        rows.push(r.body[0].clone());
    }
    rows
}

const SCORES: [i64; 5] = [7, 3, 9, 1, 5];

async fn server_with_rows() -> (TestServer, Vec<Value>) {
    let s = TestServer::start_with_sql(ITEMS_FIXTURES, |_| {}).await;
    let rows = fill(&s, "js", &SCORES).await;
    (s, rows)
}

fn by<F: Fn(&Value) -> bool>(rows: &[Value], keep: F) -> Vec<Value> {
    rows.iter().filter(|r| keep(r)).cloned().collect()
}

fn score(r: &Value) -> i64 {
    r["score"].as_i64().expect("score")
}

/// `.rpc('items', {tag}).gt('score', 2).order('score', {ascending: false}).limit(2)`
/// is a POST with the filters in the query string, and returns the two
/// best matching rows.
#[tokio::test]
async fn rpc_post_with_filter_order_and_limit() {
    let (s, rows) = server_with_rows().await;
    let r = JsRpc::new(&json!({"tag": "js"}), false, false, None)
        .param("score", "gt.2")
        .param("order", "score.desc")
        .param("limit", "2")
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut expected = by(&rows, |r| score(r) > 2);
    expected.sort_by_key(|r| -score(r));
    expected.truncate(2);
    assert_eq!(r.body, Value::Array(expected));
}

/// `.rpc('items', {tag}, {get: true}).in('id', [a, b]).range(0, 0)`: a GET
/// with the argument in the query string, `offset=0&limit=1`.
#[tokio::test]
async fn rpc_get_with_in_filter_and_range() {
    let (s, rows) = server_with_rows().await;
    let (a, b) = (rows[1]["id"].clone(), rows[3]["id"].clone());
    let r = JsRpc::new(&json!({"tag": "js"}), false, true, None)
        .param("id", &format!("in.({a},{b})"))
        .param("order", "id.asc")
        .param("offset", "0")
        .param("limit", "1")
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!([rows[1]]));
}

/// `{count: 'exact'}` on POST: the rows, and `count` from `Content-Range`
/// as the total after filters.
#[tokio::test]
async fn rpc_with_count_exact_reads_the_total_from_content_range() {
    let (s, rows) = server_with_rows().await;
    let r = JsRpc::new(&json!({"tag": "js"}), false, false, Some("exact"))
        .param("score", "gte.3")
        .param("limit", "1")
        .send(&s, "items")
        .await;
    assert!(r.status == 200 || r.status == 206, "{}", r.text);
    let total = by(&rows, |r| score(r) >= 3).len() as i64;
    assert_eq!(js_count(&r, true), Some(total));
    assert_eq!(r.body.as_array().map(Vec::len), Some(1));
}

/// `{head: true, count: 'exact'}` is a HEAD: no body, only the count.
#[tokio::test]
async fn rpc_with_head_and_count_reads_only_the_count() {
    let (s, rows) = server_with_rows().await;
    let r = JsRpc::new(&json!({"tag": "js"}), true, false, Some("exact"))
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.is_empty(), "HEAD answered a body: {}", r.text);
    assert_eq!(js_count(&r, true), Some(rows.len() as i64));
    // Without `count`, postgrest-js reports none, whatever the header says.
    let r = JsRpc::new(&json!({"tag": "js"}), true, false, None)
        .send(&s, "items")
        .await;
    assert_eq!(js_count(&r, false), None);
}

/// `.eq('id', x).single()`: one object, counted after the filter.
#[tokio::test]
async fn rpc_single_after_a_filter_is_one_object() {
    let (s, rows) = server_with_rows().await;
    let id = rows[2]["id"].to_string();
    let r = JsRpc::new(&json!({"tag": "js"}), false, false, None)
        .param("id", &format!("eq.{id}"))
        .accept("application/vnd.pgrst.object+json")
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, rows[2]);
    // More than one row: the PGRST116 error postgrest-js hands back.
    let r = JsRpc::new(&json!({"tag": "js"}), false, false, None)
        .accept("application/vnd.pgrst.object+json")
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 406, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST116");
}

/// `.maybeSingle()` on POST asks for an object; no row is a 406 whose
/// details contain `0 rows`, which postgrest-js turns into `data: null`.
#[tokio::test]
async fn rpc_maybe_single_by_post_with_no_row_reads_as_null() {
    let (s, rows) = server_with_rows().await;
    let r = JsRpc::new(&json!({"tag": "js"}), false, false, None)
        .param("score", "gt.1000")
        .accept("application/vnd.pgrst.object+json")
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 406, "{}", r.text);
    let details = r.body["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("0 rows"),
        "postgrest-js would report an error: {}",
        r.text
    );
    let id = rows[0]["id"].to_string();
    let r = JsRpc::new(&json!({"tag": "js"}), false, false, None)
        .param("id", &format!("eq.{id}"))
        .accept("application/vnd.pgrst.object+json")
        .send(&s, "items")
        .await;
    assert_eq!(r.body, rows[0], "{}", r.text);
}

/// `.maybeSingle()` on GET asks for `application/json` and keeps `data[0]`.
#[tokio::test]
async fn rpc_maybe_single_by_get_reads_the_first_of_an_array() {
    let (s, rows) = server_with_rows().await;
    let id = rows[4]["id"].to_string();
    let r = JsRpc::new(&json!({"tag": "js"}), false, true, None)
        .param("id", &format!("eq.{id}"))
        .accept("application/json")
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!([rows[4]]));
}

/// `.csv()`: `Accept: text/csv`, the body kept as text: a header line, then
/// one line per row (PostgREST's format; every name here has a space).
#[tokio::test]
async fn rpc_csv_is_text_with_a_header_line() {
    let (s, rows) = server_with_rows().await;
    let r = JsRpc::new(&json!({"tag": "js"}), false, false, None)
        .param("order", "id.asc")
        .accept("text/csv")
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/csv"),
        "{:?}",
        r.headers
    );
    // PostgREST's CSV is each row's text form without its parentheses, so
    // a value with a space is double-quoted, as record_out quotes it.
    let mut expected = String::from("id,name,score,tag");
    for row in &rows {
        expected.push_str(&format!(
            "\n{},\"{}\",{},{}",
            row["id"],
            row["name"].as_str().unwrap_or_default(),
            row["score"],
            row["tag"].as_str().unwrap_or_default()
        ));
    }
    assert_eq!(r.text, expected);
}

/// A failing call: postgrest-js parses the body as its error, with the
/// four keys the function set.
#[tokio::test]
async fn rpc_error_is_the_four_key_body() {
    let (s, _) = server_with_rows().await;
    let r = JsRpc::new(&json!({"name": "x"}), false, false, None)
        .send(&s, "refuse_item")
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"code": "PT409", "message": "item_taken",
               "details": "An item named x exists.", "hint": "Pick another name."})
    );
}

// ---- supabase-js: its headers, `.select()`, `.rollback()`, `.maxAffected()` ----
//
// From supabase/supabase-js at the commits below (packages/core/postgrest-js,
// the monorepo's copy of postgrest-js):
//
// - `src/PostgrestTransformBuilder.ts` @ 6a47684084751bf33ce50bd0d03ecab165e9c52e:
//   `select(columns)` sets `select=<columns without blanks>` and
//   `headers.append('Prefer', 'return=representation')`; `rollback()`
//   appends `Prefer: tx=rollback`; `maxAffected(n)` appends `Prefer:
//   handling=strict` then `Prefer: max-affected=<n>`; `single()`,
//   `maybeSingle()` and `csv()` set `Accept` as above. `headers` is a fetch
//   `Headers`, so appended values go out as one field joined by `, `.
// - `src/fetchWithRetry.ts` @ 4856f5e8ece7fe08324806372303e98122f362cf: a
//   retried GET or HEAD (after a 503 or 520) carries `X-Retry-Count: <n>`.
// - supabase-js's `SupabaseClient` sends `apikey: <key>` on every request,
//   with `Authorization: Bearer <session token, else the key>`, and
//   `X-Client-Info: supabase-js-<platform>/<version>`.

/// Fixtures for the supabase-js tests: the items, and a function that
/// answers who it ran as and the headers it saw.
fn supabase_fixtures() -> String {
    format!(
        "{ITEMS_FIXTURES}
CREATE FUNCTION api.whoami() RETURNS json LANGUAGE sql STABLE AS $$
  SELECT json_build_object(
    'role', current_user,
    'claims', current_setting('request.jwt.claims', true)::json,
    'headers', current_setting('request.headers', true)::json) $$;
GRANT EXECUTE ON FUNCTION api.whoami() TO pgrpc_anon, pgrpc_service;
"
    )
}

/// The SHA-256 hex of `key`, as `PGRPC_API_KEYS` lists it
/// (`printf %s "$KEY" | sha256sum`).
fn key_digest(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

const SECRET_KEY: &str = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
const PUBLISHABLE_KEY: &str = "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH";

/// A server with the fixtures and an API keys file listing the two keys.
async fn supabase_server(tune: impl FnOnce(&mut pgrpc::config::ServeConfig)) -> TestServer {
    let path = std::env::temp_dir().join(format!("pgrpc-api-keys-{}", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        format!(
            "# supabase keys\n{} pgrpc_service {{\"sub\": \"edge-function\", \"key\": \"secret\"}}\n{} pgrpc_anon\n",
            key_digest(SECRET_KEY),
            key_digest(PUBLISHABLE_KEY)
        ),
    )
    .expect("write the API keys file");
    let file = path.to_string_lossy().into_owned();
    let server = TestServer::start_with_sql(&supabase_fixtures(), move |c| {
        c.api_keys = Some(file);
        tune(c);
    })
    .await;
    // The proxy read the file at its start.
    let _ = std::fs::remove_file(&path);
    server
}

/// `supabase.rpc('whoami', {}, {get: true})` with the headers supabase-js
/// sends: `apikey`, and `Authorization` when `bearer` is given.
async fn whoami(s: &TestServer, apikey: Option<&str>, bearer: Option<&str>) -> Resp {
    let mut req = s
        .http
        .get(s.url("/rpc/whoami"))
        .header("Accept-Profile", "api")
        .header("X-Client-Info", "supabase-js-node/2.57.4");
    if let Some(k) = apikey {
        req = req.header("apikey", k);
    }
    if let Some(b) = bearer {
        req = req.header("Authorization", format!("Bearer {b}"));
    }
    send(req).await
}

/// `apikey` alone: a JWT authenticates as the bearer token would; a listed
/// opaque key runs as its role with its claims; an unknown one is 401.
/// With both headers, `Authorization` decides.
#[tokio::test]
async fn supabase_js_apikey_authenticates_without_authorization() {
    let s = supabase_server(|_| {}).await;
    let jwt = service_token();

    let r = whoami(&s, Some(&jwt), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["role"], "pgrpc_service");
    assert_eq!(r.body["claims"]["sub"], "service-test");

    let r = whoami(&s, Some(SECRET_KEY), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["role"], "pgrpc_service");
    assert_eq!(
        r.body["claims"],
        json!({"sub": "edge-function", "key": "secret", "role": "pgrpc_service"})
    );

    let r = whoami(&s, Some(PUBLISHABLE_KEY), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["role"], "pgrpc_anon");

    // A key that is not listed, or a near miss of one: 401, nothing runs.
    for bad in [
        "sb_secret_unknown",
        &SECRET_KEY[..SECRET_KEY.len() - 1],
        "a.b.c",
    ] {
        let r = whoami(&s, Some(bad), None).await;
        assert_eq!(r.status, 401, "{bad}: {}", r.text);
        assert_eq!(r.error_code(), "PGRST301", "{bad}");
        assert!(r.header("www-authenticate").is_some(), "{bad}");
    }

    // supabase-js without a session sends its key as the bearer token too.
    let r = whoami(&s, Some(PUBLISHABLE_KEY), Some(PUBLISHABLE_KEY)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["role"], "pgrpc_anon");
    let r = whoami(&s, Some(SECRET_KEY), Some(SECRET_KEY)).await;
    assert_eq!(r.body["role"], "pgrpc_service", "{}", r.text);
    let r = whoami(&s, Some(PUBLISHABLE_KEY), Some("sb_secret_unknown")).await;
    assert_eq!(r.status, 401, "{}", r.text);

    // supabase-js with a signed-in user: apikey is the publishable key,
    // Authorization the user's token, which wins.
    let r = whoami(&s, Some(PUBLISHABLE_KEY), Some(&jwt)).await;
    assert_eq!(r.body["role"], "pgrpc_service", "{}", r.text);
    // Even a bad apikey is ignored when Authorization is there.
    let r = whoami(&s, Some("sb_secret_unknown"), Some(&jwt)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["role"], "pgrpc_service");
    // And the OpenAPI document lists what the key's role may call.
    let doc = send(s.http.get(s.url("/")).header("apikey", SECRET_KEY)).await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    // idempotency_begin is granted to pgrpc_service only.
    assert!(
        doc.body["paths"]["/rpc/idempotency_begin"].is_object(),
        "{}",
        doc.text
    );
    let anon_doc = send(s.http.get(s.url("/")).header("apikey", PUBLISHABLE_KEY)).await;
    assert_eq!(anon_doc.status, 200, "{}", anon_doc.text);
    assert!(anon_doc.body["paths"]["/rpc/idempotency_begin"].is_null());
}

/// `X-Client-Info`, and `X-Retry-Count` on a retried GET, reach
/// `request.headers` as sent.
#[tokio::test]
async fn supabase_js_client_info_and_retry_count_are_in_request_headers() {
    let s = supabase_server(|_| {}).await;
    let r = send(
        s.http
            .get(s.url("/rpc/whoami"))
            .header("Accept-Profile", "api")
            .header("apikey", PUBLISHABLE_KEY)
            .header("Authorization", format!("Bearer {}", service_token()))
            .header("X-Client-Info", "supabase-js-web/2.57.4")
            .header("X-Retry-Count", "2"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let h = &r.body["headers"];
    assert_eq!(h["x-client-info"], "supabase-js-web/2.57.4");
    assert_eq!(h["x-retry-count"], "2");
    assert_eq!(h["apikey"], PUBLISHABLE_KEY);
}

/// `.rpc('add_item', {...}).select('id, name')`: a POST with
/// `select=id,name` and `Prefer: return=representation`, which an RPC
/// ignores: the rows come back with the selected columns.
#[tokio::test]
async fn supabase_js_rpc_select_appends_return_representation() {
    let s = supabase_server(|_| {}).await;
    let mut call = JsRpc::new(
        &json!({"name": "sel", "score": 4, "tag": "supa"}),
        false,
        false,
        None,
    )
    .param("select", "id,name");
    call.headers
        .push(("Prefer", "return=representation".to_string()));
    let r = call.send(&s, "add_item").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rows = r.body.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{}", r.text);
    assert_eq!(rows[0]["name"], "sel");
    assert!(rows[0].get("score").is_none(), "{}", r.text);
}

/// `.rpc(...).rollback()`: `Prefer: tx=rollback`. Where the server allows
/// the override (PGRPC_TX_END=commit-allow-override), the answer is the
/// call's result and nothing is kept.
#[tokio::test]
async fn supabase_js_rollback_answers_and_keeps_nothing() {
    let s = supabase_server(|c| c.tx_end = pgrpc::prefer::TxEnd::CommitAllowOverride).await;
    let mut call = JsRpc::new(
        &json!({"name": "gone", "score": 1, "tag": "rb"}),
        false,
        false,
        None,
    );
    call.headers.push(("Prefer", "tx=rollback".to_string()));
    let r = call.send(&s, "add_item").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body[0]["name"], "gone");
    assert_eq!(r.header("preference-applied"), Some("tx=rollback"));
    let r = JsRpc::new(&json!({"tag": "rb"}), false, true, None)
        .send(&s, "items")
        .await;
    assert_eq!(r.body, json!([]), "the rolled-back row was kept");
}

/// `.rpc('items', {tag}).maxAffected(n)`: one `Prefer: handling=strict,
/// max-affected=<n>` (two appends to fetch's Headers); more rows than n is
/// 400 PGRST124, n or fewer answer as usual.
#[tokio::test]
async fn supabase_js_max_affected_is_strict() {
    let (s, rows) = server_with_rows().await;
    let call = |n: usize| {
        let mut c = JsRpc::new(&json!({"tag": "js"}), false, false, None);
        c.headers
            .push(("Prefer", format!("handling=strict, max-affected={n}")));
        c
    };
    let r = call(rows.len() - 1).send(&s, "items").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST124");
    let r = call(rows.len()).send(&s, "items").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_array().map(Vec::len), Some(rows.len()));
}

/// supabase-js's `{ head: true, count: 'exact' }` and `{ get: true }` with
/// `apikey` as the only credential, `.single()` and `.csv()`: the same
/// answers as with a bearer token.
#[tokio::test]
async fn supabase_js_transforms_with_an_apikey_only() {
    let s = supabase_server(|_| {}).await;
    fill(&s, "key", &SCORES).await;
    let keyed = |mut c: JsRpc| {
        c.headers.retain(|(k, _)| *k != "Authorization");
        c.headers.push(("apikey", SECRET_KEY.to_string()));
        c
    };
    let r = keyed(JsRpc::new(
        &json!({"tag": "key"}),
        true,
        false,
        Some("exact"),
    ))
    .send(&s, "items")
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(js_count(&r, true), Some(SCORES.len() as i64));
    let r = keyed(JsRpc::new(&json!({"tag": "key"}), false, true, None))
        .param("score", "eq.9")
        .accept("application/vnd.pgrst.object+json")
        .send(&s, "items")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["score"], 9);
    let r = keyed(JsRpc::new(&json!({"tag": "key"}), false, false, None))
        .param("select", "score")
        .param("order", "score.asc")
        .accept("text/csv")
        .send(&s, "items")
        .await;
    assert_eq!(r.text, "score\n1\n3\n5\n7\n9", "{}", r.text);
}
