//! A database set up for PostgREST, served unchanged (issue: deployment
//! parity). The fixture follows PostgREST's tutorial and test fixtures: a
//! NOINHERIT authenticator that is a member of the request roles and holds
//! no privilege of its own, USAGE and EXECUTE granted to the request roles
//! only. Nothing here is granted for pgrpc's sake.

use serde_json::json;

use crate::support::db::query_value;
use crate::support::{send, token, TestDb, TestServer};

/// The tutorial's setup, with names made unique per test database (roles
/// are cluster-wide).
fn fixture(suffix: &str) -> String {
    format!(
        r#"
SET check_function_bodies = off;
CREATE SCHEMA tut;
CREATE ROLE web_anon_{suffix} NOLOGIN;
CREATE ROLE todo_user_{suffix} NOLOGIN;
CREATE ROLE authenticator_{suffix} NOINHERIT LOGIN PASSWORD 'tutorial';
GRANT web_anon_{suffix}, todo_user_{suffix} TO authenticator_{suffix};

CREATE TABLE tut.todos (id serial PRIMARY KEY, done boolean NOT NULL DEFAULT false, task text NOT NULL);
INSERT INTO tut.todos (task) VALUES ('finish tutorial 0'), ('pat self on back');

CREATE FUNCTION tut.todo_count() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM tut.todos $$;
CREATE FUNCTION tut.todos_done(done boolean) RETURNS SETOF tut.todos LANGUAGE sql STABLE AS
  $$ SELECT * FROM tut.todos t WHERE t.done = todos_done.done ORDER BY id $$;
CREATE FUNCTION tut.first_todo() RETURNS tut.todos LANGUAGE sql STABLE AS $$ SELECT * FROM tut.todos ORDER BY id LIMIT 1 $$;
CREATE FUNCTION tut.add_todo(task text) RETURNS int LANGUAGE sql VOLATILE AS
  $$ INSERT INTO tut.todos (task) VALUES (task) RETURNING id $$;
CREATE FUNCTION tut.counts(OUT total bigint, OUT open bigint) LANGUAGE sql STABLE AS
  $$ SELECT count(*), count(*) FILTER (WHERE NOT done) FROM tut.todos $$;
-- Unqualified calls: resolved through search_path, as PostgREST sets it
-- (the profile's schema, then db-extra-search-path).
CREATE FUNCTION tut.helper() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'helped' $$;
CREATE FUNCTION tut.uses_helper() RETURNS text LANGUAGE sql STABLE AS $$ SELECT helper() $$;
CREATE FUNCTION public.shared_helper_{suffix}() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'public' $$;
CREATE FUNCTION tut.uses_public() RETURNS text LANGUAGE sql STABLE AS $$ SELECT shared_helper_{suffix}() $$;
CREATE FUNCTION tut.search_path() RETURNS text LANGUAGE sql STABLE AS $$ SELECT current_setting('search_path') $$;
-- Declared STABLE, yet it writes (through a VOLATILE helper, which
-- PostgreSQL lets a STABLE function call): PostgREST runs it READ ONLY
-- whatever the method.
CREATE FUNCTION tut.do_write(task text) RETURNS int LANGUAGE sql VOLATILE AS
  $$ INSERT INTO tut.todos (task) VALUES (task) RETURNING id $$;
CREATE FUNCTION tut.sneaky_write(task text) RETURNS int LANGUAGE sql STABLE AS
  $$ SELECT tut.do_write(task) $$;
CREATE FUNCTION tut.whoami() RETURNS text LANGUAGE sql STABLE AS $$ SELECT current_user $$;
CREATE FUNCTION tut.settings_seen(names text[]) RETURNS text[] LANGUAGE sql STABLE AS
  $$ SELECT array_agg(coalesce(current_setting(n, true), '')) FROM unnest(names) AS n $$;
CREATE FUNCTION tut.request_gucs() RETURNS json LANGUAGE sql STABLE AS $$
  SELECT json_build_object('cookies', current_setting('request.cookies', true)::json,
                           'headers', current_setting('request.headers', true)::json) $$;
-- A function's own settings, hoisted to its transaction (db-hoisted-tx-settings).
CREATE FUNCTION tut.slow_hoisted(seconds float8) RETURNS text LANGUAGE sql VOLATILE
  SET statement_timeout = '300ms' AS $$ SELECT pg_sleep(seconds)::text $$;
CREATE FUNCTION tut.isolation() RETURNS text LANGUAGE sql STABLE
  SET default_transaction_isolation = 'serializable' AS $$ SELECT current_setting('transaction_isolation') $$;
-- db-pre-request: ban a caller by a header.
CREATE FUNCTION tut.check_request() RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF current_setting('request.headers', true)::json ->> 'x-tenant' = 'banned' THEN
    RAISE SQLSTATE 'PT403' USING MESSAGE = 'tenant_banned', DETAIL = 'This tenant is banned.';
  END IF;
END $$;

GRANT USAGE ON SCHEMA tut TO web_anon_{suffix}, todo_user_{suffix};
GRANT SELECT ON tut.todos TO web_anon_{suffix};
GRANT ALL ON tut.todos TO todo_user_{suffix};
GRANT USAGE, SELECT ON SEQUENCE tut.todos_id_seq TO todo_user_{suffix};
GRANT EXECUTE ON FUNCTION public.shared_helper_{suffix}() TO web_anon_{suffix}, todo_user_{suffix};
"#
    )
}

async fn tutorial_server() -> (TestServer, String) {
    tutorial_server_with(|_| {}).await
}

async fn tutorial_server_with(
    tune: impl FnOnce(&mut pgrpc::config::ServeConfig),
) -> (TestServer, String) {
    let db = TestDb::new().await;
    let suffix = db.name.clone();
    db.superuser()
        .await
        .batch_execute(&fixture(&suffix))
        .await
        .expect("fixture");
    let url = db.url_as(&format!("authenticator_{suffix}"), "tutorial");
    let anon = format!("web_anon_{suffix}");
    let server = TestServer::start_on_url(db, url, |c| {
        c.schemas = vec!["tut".to_string()];
        c.anon_role = anon;
        tune(c);
    })
    .await;
    (server, suffix)
}

/// Every result shape answers through a PostgREST-configured database with
/// no grant beyond the tutorial's: the authenticator has no USAGE on the
/// schema, and the calls are parsed as the request role.
#[tokio::test]
async fn a_postgrest_database_is_served_without_any_extra_grant() {
    let (s, suffix) = tutorial_server().await;
    let su = s.db.superuser().await;
    let usage: bool = query_value(
        &su,
        "SELECT has_schema_privilege($1, 'tut', 'USAGE')",
        &[&format!("authenticator_{suffix}")],
    )
    .await;
    assert!(!usage, "the fixture must not grant the authenticator USAGE");

    let get = |path: &str| send(s.http.get(s.url(path)));
    let r = get("/rpc/todo_count").await;
    assert_eq!((r.status, r.body.clone()), (200, json!(2)), "{}", r.text);
    let r = get("/rpc/todos_done?done=false").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_array().map(Vec::len), Some(2), "{}", r.text);
    let r = get("/rpc/first_todo").await;
    assert_eq!(r.body["task"], json!("finish tutorial 0"), "{}", r.text);
    let r = get("/rpc/counts").await;
    assert_eq!(r.body, json!({"total": 2, "open": 2}), "{}", r.text);
    let r = get("/rpc/whoami").await;
    assert_eq!(r.body, json!(format!("web_anon_{suffix}")), "{}", r.text);

    // Writes need the role the tutorial gives them to.
    let r = s.rpc("add_todo", None, json!({"task": "anon"})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (401, "42501".to_string()),
        "{}",
        r.text
    );
    let user = token(json!({"role": format!("todo_user_{suffix}")}));
    let r = s
        .rpc("add_todo", Some(&user), json!({"task": "user"}))
        .await;
    assert_eq!((r.status, r.body.clone()), (200, json!(3)), "{}", r.text);
    // The same prepared statement, now used by another role on the same
    // pooled connections: privileges are still checked for each caller.
    for _ in 0..4 {
        let r = s.rpc("add_todo", None, json!({"task": "anon again"})).await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
}

/// search_path is the profile's schema, then PGRPC_EXTRA_SEARCH_PATH
/// (public), so a function may call a helper of its schema unqualified.
#[tokio::test]
async fn search_path_is_the_profile_then_the_extra_search_path() {
    let (s, _) = tutorial_server().await;
    let get = |path: &str| send(s.http.get(s.url(path)));
    let r = get("/rpc/search_path").await;
    assert_eq!(r.body, json!("\"tut\", \"public\""), "{}", r.text);
    let r = get("/rpc/uses_helper").await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!("helped")),
        "{}",
        r.text
    );
    let r = get("/rpc/uses_public").await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!("public")),
        "{}",
        r.text
    );
}

/// A STABLE function runs READ ONLY even when called by POST, as PostgREST
/// runs it: one that writes anyway gets 405, and nothing is written.
#[tokio::test]
async fn a_stable_function_runs_read_only_whatever_the_method() {
    let (s, suffix) = tutorial_server().await;
    let user = token(json!({"role": format!("todo_user_{suffix}"), "sub": "tutorial"}));
    let r = s
        .rpc("sneaky_write", Some(&user), json!({"task": "sneaky"}))
        .await;
    assert_eq!(
        (r.status, r.error_code()),
        (405, "25006".to_string()),
        "{}",
        r.text
    );
    // Under an Idempotency-Key (enabled for this role as an operator would,
    // with the two helper functions), the call still runs READ ONLY.
    s.db.superuser()
        .await
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA pgrpc_http TO todo_user_{suffix}; \
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgrpc_http TO todo_user_{suffix}"
        ))
        .await
        .expect("grant the Idempotency-Key helpers");
    let r = send(
        s.http
            .post(s.url("/rpc/sneaky_write"))
            .bearer_auth(&user)
            .header("Idempotency-Key", "sneaky")
            .json(&json!({"task": "sneaky"})),
    )
    .await;
    assert_eq!(r.status, 405, "{}", r.text);
    let su = s.db.superuser().await;
    let n: i64 = query_value(
        &su,
        "SELECT count(*) FROM tut.todos WHERE task = 'sneaky'",
        &[],
    )
    .await;
    assert_eq!(n, 0);
}

/// pgrpc's own database needs no extra grant either: the authenticator has
/// no USAGE on api or private, and the request roles none on private.
#[tokio::test]
async fn pgrpcs_authenticator_holds_no_privilege_on_exposed_schemas() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    for (role, schema) in [
        ("pgrpc_authenticator", "api"),
        ("pgrpc_authenticator", "private"),
        ("pgrpc_anon", "private"),
        ("pgrpc_user", "private"),
        ("pgrpc_service", "private"),
    ] {
        let usage: bool = query_value(
            &su,
            "SELECT has_schema_privilege($1, $2, 'USAGE')",
            &[&role, &schema],
        )
        .await;
        assert!(!usage, "{role} has USAGE on {schema}");
    }
}

/// request.cookies holds the parsed cookies, and request.headers leaves the
/// Cookie header out, as PostgREST sets them.
#[tokio::test]
async fn cookies_are_their_own_setting() {
    let (s, _) = tutorial_server().await;
    let r = send(
        s.http
            .get(s.url("/rpc/request_gucs"))
            .header("Cookie", "session=abc; theme=dark")
            .header("X-Custom", "yes"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["cookies"],
        json!({"session": "abc", "theme": "dark"})
    );
    assert_eq!(r.body["headers"]["x-custom"], json!("yes"));
    assert!(r.body["headers"].get("cookie").is_none(), "{}", r.text);
}

/// A function's own statement_timeout and isolation level apply to its
/// whole transaction (PostgREST's db-hoisted-tx-settings), so the timeout
/// stops the call itself.
#[tokio::test]
async fn a_functions_own_settings_are_hoisted_to_its_transaction() {
    let (s, _) = tutorial_server().await;
    let started = std::time::Instant::now();
    let r = s.rpc("slow_hoisted", None, json!({"seconds": 3})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (500, "57014".to_string()),
        "{}",
        r.text
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let r = send(s.http.get(s.url("/rpc/isolation"))).await;
    assert_eq!(r.body, json!("serializable"), "{}", r.text);
    let r = s.rpc("slow_hoisted", None, json!({"seconds": 0})).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// PGRPC_PRE_REQUEST runs before every call, and its error answers like the
/// call's; one that names a missing function stops the server at startup.
#[tokio::test]
async fn the_pre_request_function_runs_before_every_call() {
    let (s, _) = tutorial_server_with(|c| c.pre_request = Some("tut.check_request".into())).await;
    for _ in 0..3 {
        let r = send(s.http.get(s.url("/rpc/todo_count"))).await;
        assert_eq!((r.status, r.body.clone()), (200, json!(2)), "{}", r.text);
        let r = send(
            s.http
                .get(s.url("/rpc/todo_count"))
                .header("X-Tenant", "banned"),
        )
        .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(r.body["message"], json!("tenant_banned"));
        let r = s.rpc("add_todo", None, json!({"task": "x"})).await;
        assert_eq!(r.status, 401, "{}", r.text);
    }

    let mut config = pgrpc::config::ServeConfig::new(s.db.authenticator_url());
    config.pre_request = Some("tut.no_such_check".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = pgrpc::server::serve(listener, config, std::future::pending())
        .await
        .expect_err("a missing pre-request function stops the server");
    assert!(err.to_string().contains("PGRPC_PRE_REQUEST"), "{err}");
    let mut config = pgrpc::config::ServeConfig::new(s.db.authenticator_url());
    config.pre_request = Some("tut.check(); DROP".into());
    assert!(config
        .validate()
        .is_err_and(|e| e.contains("PGRPC_PRE_REQUEST")));
}

/// Every role setting applies, however many a role has: up to four go as
/// direct `set_config` arguments, more through `unnest` (two forms of the
/// settings statement), and each lasts for its transaction only, prepared
/// or not.
#[tokio::test]
async fn every_role_setting_applies_whatever_their_number() {
    for prepared in [true, false] {
        let db = TestDb::new().await;
        let suffix = db.name.clone();
        let su = db.superuser().await;
        su.batch_execute(&fixture(&suffix)).await.expect("fixture");
        let names: Vec<String> = (1..=6).map(|i| format!("app.s{i}")).collect();
        for count in [0usize, 1, 4, 5, 6] {
            let role = format!("many_{count}_{suffix}");
            let mut sql = format!(
                "CREATE ROLE {role} NOLOGIN; GRANT {role} TO authenticator_{suffix}; \
                 GRANT USAGE ON SCHEMA tut TO {role}; "
            );
            for (i, name) in names.iter().take(count).enumerate() {
                sql.push_str(&format!(
                    "ALTER ROLE {role} IN DATABASE {suffix} SET {name} = 'v{i}-{count}'; "
                ));
            }
            su.batch_execute(&sql).await.expect("role");
        }
        let url = db.url_as(&format!("authenticator_{suffix}"), "tutorial");
        let anon = format!("web_anon_{suffix}");
        let s = TestServer::start_on_url(db, url, |c| {
            c.schemas = vec!["tut".to_string()];
            c.anon_role = anon;
            c.prepared_statements = prepared;
        })
        .await;
        // Each role twice, interleaved, on a pool of connections the
        // roles share: nothing carries over from one call to the next.
        for _ in 0..2 {
            for count in [6usize, 0, 5, 1, 4] {
                let t = token(json!({"role": format!("many_{count}_{suffix}")}));
                let r = send(
                    s.http
                        .post(s.url("/rpc/settings_seen"))
                        .bearer_auth(t)
                        .json(&json!({ "names": names })),
                )
                .await;
                let want: Vec<String> = (0..6)
                    .map(|i| {
                        if i < count {
                            format!("v{i}-{count}")
                        } else {
                            String::new()
                        }
                    })
                    .collect();
                assert_eq!(
                    (r.status, r.body.clone()),
                    (200, json!(want)),
                    "{count} settings, prepared {prepared}: {}",
                    r.text
                );
            }
        }
    }
}
