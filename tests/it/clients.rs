//! Real clients against a real server (issue 13, items 7 and 8): schemathesis
//! fuzzes the OpenAPI document at `GET /` against the behaviour it
//! describes, and postgrest-py runs its own calls (tests/clients/).
//!
//! Both come from the pinned Python environment `target/pyenv`, which
//! `scripts/test` creates from `tests/clients/requirements.txt`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

use crate::support::api::{create_opportunity, create_organization, create_site, service_ok};
use crate::support::{service_token, TestServer};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned Python environment, or a failure that says how to make it:
/// a missing environment must not pass for a passing suite.
fn pyenv() -> PathBuf {
    let env = std::env::var_os("PGRPC_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/pyenv"));
    let wanted = std::fs::read(repo().join("tests/clients/requirements.txt"))
        .expect("tests/clients/requirements.txt");
    let installed = std::fs::read(env.join("requirements.txt")).unwrap_or_default();
    assert!(
        env.join("bin/st").exists() && env.join("bin/pytest").exists() && installed == wanted,
        "the Python environment {} is missing or not the pinned one: run scripts/test \
         (it creates it from tests/clients/requirements.txt)",
        env.display()
    );
    env
}

/// Runs a command to its end on a blocking thread, so that the in-process
/// server keeps answering it.
async fn run(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rows for the fuzzer to find: list functions then return real rows,
/// whose shape the response schemas must describe (`items` and `scores`
/// answer rows for tags the fuzzer tries first, such as the empty one).
async fn seed(server: &TestServer) {
    for i in 0..3 {
        let org = create_organization(server, &format!("Fuzz {i}"), "freemium").await;
        let site = create_site(server, &org, &format!("https://fuzz{i}.example")).await;
        create_opportunity(server, &site, "broken-backlinks").await;
    }
    service_ok(server, "issue_oauth_nonce", json!({})).await;
    for (i, tag) in ["", "a", "b"].iter().enumerate() {
        let row = json!({"name": format!("item {i}"), "score": i, "tag": tag});
        service_ok(server, "add_item", row).await;
    }
}

/// Every operation of the OpenAPI document, fuzzed with every schemathesis
/// check: no 5xx, no undocumented status, header or media type, no response
/// outside its schema, no valid request refused as malformed and no invalid
/// one accepted (tests/clients/schemathesis.toml, st_hooks.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_mismatch_between_the_openapi_and_the_server() {
    let env = pyenv();
    let server = TestServer::start_with_sql(ITEMS_FIXTURES, |_| {}).await;
    seed(&server).await;
    let mut cmd = Command::new(env.join("bin/st"));
    cmd.current_dir(repo())
        .args(["--config-file", "tests/clients/schemathesis.toml", "run"])
        .arg(server.url("/"))
        .args(["--url", &server.base_url, "--checks", "all", "--no-color"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", service_token()),
        ]);
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    assert_success("st run", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "schemathesis: {:?}, {}",
        started.elapsed(),
        stdout
            .lines()
            .filter(|l| l.contains("generated"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// The document types results from the return type: a composite's columns,
/// `null` where SQL may give NULL, arrays for SETOF; and it declares the
/// query-string operations and headers of a set-returning function.
#[tokio::test]
async fn openapi_describes_result_columns_nullability_and_operations() {
    let server = TestServer::start().await;
    // As the service: an anonymous caller is shown only what it may call.
    let doc = crate::support::send(
        server
            .http
            .get(server.url("/"))
            .bearer_auth(crate::support::service_token()),
    )
    .await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let paths = &doc.body["paths"];
    let ok = |path: &str, method: &str| {
        paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"].clone()
    };
    // NULL when no key is active: a nullable object of the type's columns.
    let key = ok("/rpc/find_active_idempotency_key", "get");
    assert_eq!(key["type"], "object", "{key}");
    assert_eq!(key["nullable"], true, "{key}");
    assert_eq!(
        key["properties"]["expires_at"]["format"], "date-time",
        "{key}"
    );
    assert_eq!(
        key["properties"]["response_status"]["type"], "integer",
        "{key}"
    );
    assert_eq!(ok("/rpc/ticket_for_suggestion", "post")["nullable"], true);
    // SETOF: an array of rows; scalars mapped.
    let tokens = ok("/rpc/site_tokens", "get");
    assert_eq!(tokens["type"], "array", "{tokens}");
    assert_eq!(
        tokens["items"]["properties"]["site_id"]["format"], "uuid",
        "{tokens}"
    );
    assert_eq!(ok("/rpc/is_granted", "get")["type"], "boolean");
    // void: 204.
    let complete = &paths["/rpc/idempotency_complete"]["post"]["responses"];
    assert!(
        complete.get("204").is_some() && complete.get("200").is_none(),
        "{complete}"
    );
    // Arguments: required ones, defaults optional, nothing else.
    let body =
        &paths["/rpc/site_tokens"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["additionalProperties"], false, "{body}");
    assert!(body.get("required").is_none(), "{body}");
    // Operations and headers, and the statuses they may bring.
    let names: Vec<&str> = paths["/rpc/site_tokens"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in [
        "select", "order", "limit", "offset", "base_url", "Prefer", "Range",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let responses = &paths["/rpc/site_tokens"]["get"]["responses"];
    for status in ["200", "206", "400", "416"] {
        assert!(
            responses.get(status).is_some(),
            "{status} missing: {responses}"
        );
    }
    // A single OUT parameter is an object keyed by it; a one-column TABLE
    // an array of such objects (as PostgREST answers).
    let fixtures = TestServer::start_with_sql(ITEMS_FIXTURES, |_| {}).await;
    let doc2 = crate::support::send(fixtures.http.get(fixtures.url("/"))).await;
    let schema_of = |path: &str| {
        doc2.body["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            .clone()
    };
    assert_eq!(
        schema_of("/rpc/plus_one")["properties"]["num_plus_one"]["type"],
        "integer"
    );
    assert_eq!(
        schema_of("/rpc/item_names")["items"]["properties"]["name"]["type"],
        "string"
    );
    assert_eq!(schema_of("/rpc/scores")["items"]["type"], "integer");
    let error =
        &doc.body["components"]["responses"]["Error"]["content"]["application/json"]["schema"];
    assert_eq!(
        error["required"],
        json!(["code", "message", "details", "hint"])
    );
}

/// The fixtures of tests/clients/test_postgrest_py.py: a table the suite
/// fills through `add_item`, read back through `items` with postgrest-py's
/// filters, and a function that fails with every error field set.
pub const ITEMS_FIXTURES: &str = r#"
CREATE TABLE public.client_items (id serial PRIMARY KEY, name text NOT NULL, score int NOT NULL, tag text NOT NULL);
GRANT SELECT, INSERT ON public.client_items TO pgrpc_service;
GRANT USAGE ON SEQUENCE public.client_items_id_seq TO pgrpc_service;
CREATE FUNCTION api.add_item(name text, score int, tag text)
  RETURNS TABLE(id int, name text, score int, tag text) LANGUAGE sql VOLATILE AS $$
  INSERT INTO public.client_items (name, score, tag) VALUES (add_item.name, add_item.score, add_item.tag)
  RETURNING id, name, score, tag $$;
CREATE FUNCTION api.items(tag text)
  RETURNS TABLE(id int, name text, score int, tag text) LANGUAGE sql STABLE AS $$
  SELECT i.id, i.name, i.score, i.tag FROM public.client_items i WHERE i.tag = items.tag $$;
CREATE FUNCTION api.scores(tag text) RETURNS SETOF int LANGUAGE sql STABLE AS $$
  SELECT i.score FROM public.client_items i WHERE i.tag = scores.tag $$;
-- Saturates at the largest int, so every argument the schema allows has an answer.
CREATE FUNCTION api.plus_one(num int, OUT num_plus_one int) LANGUAGE sql IMMUTABLE AS $$ SELECT num + (num < 2147483647)::int $$;
CREATE FUNCTION api.item_names(tag text) RETURNS TABLE(name text) LANGUAGE sql STABLE AS $$
  SELECT i.name FROM public.client_items i WHERE i.tag = item_names.tag $$;
CREATE FUNCTION api.refuse_item(name text) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RAISE SQLSTATE 'PT409' USING MESSAGE = 'item_taken',
    DETAIL = format('An item named %s exists.', name), HINT = 'Pick another name.';
END $$;
"#;

/// postgrest-py 2.x (from PyPI) calls a pgrpc started here: rpc with
/// filters, order, limit and range, counts with and without head, single,
/// maybe_single, csv and an error (tests/clients/test_postgrest_py.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_py_calls_get_what_postgrest_answers() {
    let env = pyenv();
    let server = TestServer::start_with_sql(ITEMS_FIXTURES, |_| {}).await;
    let mut cmd = Command::new(env.join("bin/pytest"));
    cmd.current_dir(repo())
        .args([
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/clients/test_postgrest_py.py",
        ])
        .env("PGRPC_URL", &server.base_url)
        .env("PGRPC_TOKEN", service_token());
    let out = run(cmd).await;
    assert_success("pytest tests/clients/test_postgrest_py.py", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("passed"), "pytest ran nothing:\n{stdout}");
}
