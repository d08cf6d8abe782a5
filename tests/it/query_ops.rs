//! Query-string operations on function results (select, filters, order,
//! limit/offset), ranges and counts, through real HTTP, as PostgREST 12
//! answers them for RPC (issue 13, items 1–3).

use serde_json::{json, Value};

use crate::support::{send, Resp, TestServer};

/// Set-returning fixtures: a table-shaped result, a scalar set, a writing
/// set, and a scalar for contrast.
const FIXTURES: &str = r#"
CREATE TABLE public.made (id serial PRIMARY KEY, n int NOT NULL);
GRANT SELECT, INSERT ON public.made TO pgrpc_anon, pgrpc_user, pgrpc_service;
GRANT USAGE ON SEQUENCE public.made_id_seq TO pgrpc_anon, pgrpc_user, pgrpc_service;
CREATE FUNCTION api.items(n int DEFAULT 15)
  RETURNS TABLE(id int, name text, score int, tags text[], note text)
  LANGUAGE sql STABLE AS $$
  SELECT g, 'Item ' || g, (g * 7) % 10, ARRAY['t' || (g % 3)],
         CASE WHEN g % 5 = 0 THEN NULL ELSE 'the quick fox ' || g END
  FROM generate_series(1, n) g $$;
CREATE FUNCTION api.numbers(n int) RETURNS SETOF int LANGUAGE sql STABLE AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION api.make(n int) RETURNS TABLE(id int, n int) LANGUAGE sql VOLATILE AS $$
  INSERT INTO public.made (n) SELECT generate_series(1, n) RETURNING id, n $$;
CREATE FUNCTION api.made_count() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM public.made $$;
CREATE FUNCTION api.spans() RETURNS TABLE(id int, span int4range) LANGUAGE sql STABLE AS $$
  SELECT g, int4range(g * 10, g * 10 + 10) FROM generate_series(1, 5) g $$;
CREATE FUNCTION api.plus(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT a + b $$;
CREATE FUNCTION api.pairish(x int, OUT doubled int, OUT label text) LANGUAGE sql STABLE AS $$ SELECT x * 2, 'n' || x $$;
"#;

async fn server_with(tune: impl FnOnce(&mut pgrpc::config::ServeConfig)) -> TestServer {
    TestServer::start_with_sql(FIXTURES, tune).await
}

async fn server() -> TestServer {
    server_with(|_| {}).await
}

/// `GET /rpc/<path>` with a raw query string and extra headers.
async fn get(s: &TestServer, path_and_query: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = s.http.get(s.url(&format!("/rpc/{path_and_query}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

/// `POST /rpc/<path>` with a raw query string, a JSON body and extra headers.
async fn post(s: &TestServer, path_and_query: &str, body: Value, headers: &[(&str, &str)]) -> Resp {
    let mut req = s
        .http
        .post(s.url(&format!("/rpc/{path_and_query}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

fn ids(r: &Resp) -> Vec<i64> {
    r.body
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {} {}", r.status, r.text))
        .iter()
        .map(|row| row["id"].as_i64().expect("id"))
        .collect()
}

/// Every documented operator filters the result rows on GET and on POST.
#[tokio::test]
async fn horizontal_filters_narrow_the_rows_on_get_and_post() {
    let s = server().await;
    let cases: &[(&str, &[i64])] = &[
        ("id=eq.3", &[3]),
        ("id=neq.1&id=lte.3", &[2, 3]), // filters on one column all apply
        ("id=gt.13", &[14, 15]),
        ("id=gte.14", &[14, 15]),
        ("id=lt.3", &[1, 2]),
        ("id=lte.2", &[1, 2]),
        ("id=in.(2,4,6)", &[2, 4, 6]),
        ("id=not.in.(1,2,3,4,5,6,7,8,9,10,11,12)", &[13, 14, 15]),
        ("id=in.()", &[]),
        ("note=is.null", &[5, 10, 15]),
        ("note=not.is.null&id=lte.2", &[1, 2]),
        ("name=like.*m 1?", &[]),
        ("name=like.Item 1*&id=lt.12", &[1, 10, 11]),
        ("name=ilike.item 1_", &[10, 11, 12, 13, 14, 15]),
        ("name=match.^Item [23]$", &[2, 3]),
        ("name=imatch.^item 1[45]$", &[14, 15]),
        ("note=isdistinct.the quick fox 1&id=lte.5", &[2, 3, 4, 5]),
        ("tags=cs.{t0}&id=lt.7", &[3, 6]),
        ("tags=cd.{t0,t1}&id=lt.5", &[1, 3, 4]),
        ("tags=ov.{t2}&id=lt.6", &[2, 5]),
        ("note=fts.quick %26 14", &[14]),
        ("note=plfts(english).fox 13", &[13]),
        ("note=phfts.quick fox 12", &[12]),
        ("note=wfts.fox -quick", &[]),
        ("id=eq(any).{1,3}", &[1, 3]),
        ("id=gt(all).{10,13}", &[14, 15]),
        ("name=like(any).{*m 2,*m 3}", &[2, 3]),
        ("or=(id.eq.1,id.eq.15)", &[1, 15]),
        ("or=(id.lt.2,and(id.gt.13,score.lt.9))", &[1, 14, 15]),
        ("not.or=(id.gt.2,score.gt.5)", &[2]),
        ("and=(id.gt.2,id.lt.5)", &[3, 4]),
        ("or=(name.eq.\"Item 7\",id.in.(8,9))", &[7, 8, 9]),
    ];
    for (query, want) in cases {
        let query = query.replace(' ', "%20");
        let r = get(&s, &format!("items?{query}&order=id"), &[]).await;
        assert_eq!(r.status, 200, "GET {query}: {}", r.text);
        assert_eq!(ids(&r), want.to_vec(), "GET {query}");
        let r = post(&s, &format!("items?{query}&order=id"), json!({}), &[]).await;
        assert_eq!(r.status, 200, "POST {query}: {}", r.text);
        assert_eq!(ids(&r), want.to_vec(), "POST {query}");
    }
}

/// The range operators compare a range column with a range literal.
#[tokio::test]
async fn range_operators_compare_ranges() {
    let s = server().await;
    let cases: &[(&str, &[i64])] = &[
        ("span=sl.[35,100)", &[1, 2]),
        ("span=sr.[0,25)", &[3, 4, 5]),
        ("span=nxr.[0,30)", &[1, 2]),
        ("span=nxl.[30,100)", &[3, 4, 5]),
        ("span=adj.[30,40)", &[2, 4]),
        ("span=cs.[25,26)", &[2]),
        ("span=ov.[25,31)", &[2, 3]),
        ("span=cd.[10,30)", &[1, 2]),
        ("span=not.adj.[30,40)", &[1, 3, 5]),
    ];
    for (query, want) in cases {
        let r = get(&s, &format!("spans?{query}&order=id"), &[]).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text);
        assert_eq!(ids(&r), want.to_vec(), "{query}");
    }
}

/// On GET, a parameter without an operator is an argument; with one, a filter.
#[tokio::test]
async fn get_tells_arguments_from_filters_by_their_operator() {
    let s = server().await;
    let r = get(&s, "items?n=4&id=gte.3", &[]).await;
    assert_eq!((r.status, ids(&r)), (200, vec![3, 4]), "{}", r.text);
    let r = get(&s, "numbers?n=5&numbers=gt.3", &[]).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!([4, 5])),
        "{}",
        r.text
    );
    // On POST the body holds the arguments; the query string only operations.
    let r = post(&s, "items?id=lt.3", json!({"n": 2}), &[]).await;
    assert_eq!(ids(&r), vec![1, 2]);
    let r = post(&s, "items?n=4", json!({}), &[]).await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "PGRST100".into()),
        "{}",
        r.text
    );
}

/// `select` projects and renames; `order` sorts; `limit`/`offset` page.
#[tokio::test]
async fn select_order_limit_and_offset_shape_the_result() {
    let s = server().await;
    let r = get(&s, "items?select=ident:id,name&id=lte.2", &[]).await;
    assert_eq!(
        r.body,
        json!([{"ident": 1, "name": "Item 1"}, {"ident": 2, "name": "Item 2"}]),
        "{}",
        r.text
    );
    assert!(r.text.find("ident").expect("ident") < r.text.find("name").expect("name"));
    let r = get(
        &s,
        "items?select=score,id&order=score.desc,id.asc&limit=3",
        &[],
    )
    .await;
    assert_eq!(
        r.body,
        json!([{"score": 9, "id": 7}, {"score": 8, "id": 4}, {"score": 8, "id": 14}])
    );
    let r = get(
        &s,
        "items?order=note.desc.nullsfirst,id&limit=4&select=id",
        &[],
    )
    .await;
    assert_eq!(ids(&r), vec![5, 10, 15, 9]);
    let r = get(
        &s,
        "items?order=note.asc.nullslast,id&offset=12&select=id",
        &[],
    )
    .await;
    assert_eq!(ids(&r), vec![5, 10, 15]);
    let r = get(&s, "items?order=id.desc&limit=2&offset=1", &[]).await;
    assert_eq!(ids(&r), vec![14, 13]);
    let r = get(&s, "numbers?n=3&select=numbers&order=numbers.desc", &[]).await;
    assert_eq!(
        r.body,
        json!([{"numbers": 3}, {"numbers": 2}, {"numbers": 1}])
    );
    let r = get(&s, "items?limit=0", &[]).await;
    assert_eq!((r.status, r.body.clone()), (200, json!([])));
    assert_eq!(r.header("content-range"), Some("*/*"));
    // OUT parameters are columns too.
    let r = get(&s, "pairish?x=4&select=label", &[]).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"label": "n4"})),
        "{}",
        r.text
    );
    let r = get(&s, "pairish?x=4&doubled=gt.100", &[]).await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null), "{}", r.text);
    // `select=*` is the whole row, also for a scalar.
    let r = get(&s, "plus?a=1&b=2&select=*", &[]).await;
    assert_eq!((r.status, r.body.clone()), (200, json!(3)));
}

/// Content-Range on every response; Range and counts give 206 and 416.
#[tokio::test]
async fn ranges_and_counts_follow_postgrest() {
    let s = server().await;
    let r = get(&s, "items", &[]).await;
    assert_eq!((r.status, r.header("content-range")), (200, Some("0-14/*")));
    let r = get(&s, "plus?a=1&b=2", &[]).await;
    assert_eq!((r.status, r.header("content-range")), (200, Some("0-0/*")));
    let r = get(&s, "items", &[("prefer", "count=exact")]).await;
    assert_eq!(
        (r.status, r.header("content-range")),
        (200, Some("0-14/15"))
    );
    assert_eq!(r.header("preference-applied"), Some("count=exact"));
    // Without a count the status stays 200, as in PostgREST.
    let r = get(&s, "items", &[("range-unit", "items"), ("range", "0-4")]).await;
    assert_eq!((r.status, r.header("content-range")), (200, Some("0-4/*")));
    assert_eq!(ids(&r), vec![1, 2, 3, 4, 5]);
    let r = get(
        &s,
        "items",
        &[("range", "items=3-5"), ("prefer", "count=exact")],
    )
    .await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("3-5/15")));
    assert_eq!(ids(&r), vec![4, 5, 6]);
    let r = get(
        &s,
        "items",
        &[("range", "10-"), ("prefer", "count=planned")],
    )
    .await;
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("10-14/15"))
    );
    // The Range header and limit/offset intersect.
    let r = get(&s, "items?offset=2&limit=10", &[("range", "0-4")]).await;
    assert_eq!(
        (ids(&r), r.header("content-range")),
        (vec![3, 4, 5], Some("2-4/*"))
    );
    let r = get(
        &s,
        "items?id=gt.10",
        &[("prefer", "count=estimated"), ("range", "0-1")],
    )
    .await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("0-1/5")));
    let r = get(&s, "items", &[("range", "5-2")]).await;
    assert_eq!(
        (r.status, r.error_code()),
        (416, "PGRST103".into()),
        "{}",
        r.text
    );
    // A Range and an offset that do not meet are 416 too; limit=0 is not.
    let r = get(&s, "items?offset=10", &[("range", "0-4")]).await;
    assert_eq!(
        (r.status, r.error_code()),
        (416, "PGRST103".into()),
        "{}",
        r.text
    );
    let r = get(&s, "items?limit=0", &[("range", "0-4")]).await;
    assert_eq!((r.status, r.body.clone()), (200, json!([])), "{}", r.text);
    // Range counts on GET only, as in PostgREST (RFC 9110); HEAD and POST ignore it.
    let r = send(s.http.head(s.url("/rpc/items")).header("range", "0-1")).await;
    assert_eq!((r.status, r.header("content-range")), (200, Some("0-14/*")));
    let r = post(&s, "items", json!({}), &[("range", "0-1")]).await;
    assert_eq!((r.status, r.header("content-range")), (200, Some("0-14/*")));
    // PostgREST's RpcSpec: a scalar counts as one row.
    let r = get(&s, "plus?a=3&b=4", &[("prefer", "count=exact")]).await;
    assert_eq!((r.status, r.header("content-range")), (200, Some("0-0/1")));
    let r = get(&s, "items?offset=20", &[("prefer", "count=exact")]).await;
    assert_eq!(
        (r.status, r.error_code()),
        (416, "PGRST103".into()),
        "{}",
        r.text
    );
    let r = get(&s, "items?offset=20", &[]).await;
    assert_eq!(
        (r.status, r.body.clone(), r.header("content-range")),
        (200, json!([]), Some("*/*"))
    );
    let r = post(&s, "items?limit=2", json!({}), &[("prefer", "count=exact")]).await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("0-1/15")));
}

/// HEAD with a count answers the count alone, and a writing function under
/// a count still runs once.
#[tokio::test]
async fn head_with_count_and_volatile_functions_run_once() {
    let s = server().await;
    let r = send(
        s.http
            .head(s.url("/rpc/items?id=gt.5"))
            .header("prefer", "count=exact"),
    )
    .await;
    assert_eq!((r.status, r.text.as_str()), (200, ""));
    assert_eq!(r.header("content-range"), Some("0-9/10"));
    let r = post(
        &s,
        "make?n=gt.2&select=n",
        json!({"n": 4}),
        &[("prefer", "count=exact")],
    )
    .await;
    assert_eq!(
        (r.status, r.body.clone(), r.header("content-range")),
        (200, json!([{"n": 3}, {"n": 4}]), Some("0-1/2")),
        "{}",
        r.text
    );
    let r = get(&s, "made_count", &[]).await;
    assert_eq!(r.body, json!(4));
    // A counted range past the end is 416, and the writes it made are
    // rolled back: no error answers a committed change.
    let r = post(
        &s,
        "make?offset=50",
        json!({"n": 3}),
        &[("prefer", "count=exact")],
    )
    .await;
    assert_eq!(
        (r.status, r.error_code()),
        (416, "PGRST103".to_string()),
        "{}",
        r.text
    );
    let r = get(&s, "made_count", &[]).await;
    assert_eq!(r.body, json!(4), "the 416 call's rows were committed");
}

/// `application/vnd.pgrst.object+json` counts the filtered rows.
#[tokio::test]
async fn singular_counts_the_rows_after_filters() {
    let s = server().await;
    let object = [("accept", "application/vnd.pgrst.object+json")];
    let r = get(&s, "items?id=eq.3&select=id,name", &object).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"id": 3, "name": "Item 3"})),
        "{}",
        r.text
    );
    let r = post(&s, "items?name=eq.Item%207", json!({}), &object).await;
    assert_eq!((r.status, r.body["id"].clone()), (200, json!(7)));
    let r = get(&s, "items?id=gt.3", &object).await;
    assert_eq!((r.status, r.error_code()), (406, "PGRST116".into()));
    let r = get(&s, "items?id=gt.3&limit=1", &object).await;
    assert_eq!((r.status, r.body["id"].clone()), (200, json!(4)));
    let r = get(&s, "items?id=gt.30", &object).await;
    assert_eq!((r.status, r.error_code()), (406, "PGRST116".into()));
}

/// PGRPC_MAX_ROWS caps every set, and limit cannot raise it.
#[tokio::test]
async fn max_rows_caps_the_result() {
    let s = server_with(|c| c.max_rows = Some(4)).await;
    let r = get(&s, "items", &[("prefer", "count=exact")]).await;
    assert_eq!(ids(&r), vec![1, 2, 3, 4]);
    assert_eq!((r.status, r.header("content-range")), (206, Some("0-3/15")));
    let r = get(&s, "items?limit=10&offset=10", &[]).await;
    assert_eq!(ids(&r), vec![11, 12, 13, 14]);
    let r = get(&s, "plus?a=1&b=2", &[]).await;
    assert_eq!(r.body, json!(3));
}

/// Hostile or malformed operations are 4xx with PostgREST's codes, never a 500.
#[tokio::test]
async fn hostile_operations_get_4xx_never_500() {
    let s = server().await;
    let cases: &[(&str, u16, &str)] = &[
        ("items?nope=eq.1", 400, "42703"),
        ("items?select=nope", 400, "42703"),
        ("items?order=nope", 400, "42703"),
        ("items?or=(nope.eq.1)", 400, "42703"),
        (
            "items?id%3B%20drop%20table%20public.made=eq.1",
            400,
            "42703",
        ),
        ("items?select=id%2C(select%201)", 400, "PGRST100"),
        ("items?select=%22id%22%20from%20pg_roles--", 400, "42703"),
        ("items?select=id::text", 400, "PGRST100"),
        ("items?order=id.sideways", 400, "PGRST100"),
        ("items?order=id%3B%20select%201", 400, "42703"),
        ("items?id=eq(some).{1}", 400, "PGRST100"),
        ("items?id=in.(1,2", 400, "PGRST100"),
        ("items?id=is.maybe", 400, "PGRST100"),
        ("items?or=(id.eq.1", 400, "PGRST100"),
        ("items?or=id.eq.1", 400, "PGRST100"),
        ("items?limit=-1", 400, "PGRST100"),
        ("items?limit=99999999999999999999", 400, "PGRST100"),
        ("items?offset=abc", 400, "PGRST100"),
        ("items?id=eq.abc", 400, "22P02"),
        ("items?tags=cs.notanarray", 400, "22P02"),
        ("plus?a=1&b=2&plus=gt.1", 400, "PGRST100"),
        ("plus?a=1&b=2&limit=1", 400, "PGRST100"),
        // An unknown operator on GET makes the parameter an argument.
        ("items?id=foo.1", 404, "PGRST202"),
    ];
    for (path, status, code) in cases {
        let r = get(&s, path, &[]).await;
        assert_eq!(
            (r.status, r.error_code()),
            (*status, code.to_string()),
            "GET {path}: {}",
            r.text
        );
    }
    let r = post(&s, "items?id=foo.1", json!({}), &[]).await;
    assert_eq!((r.status, r.error_code()), (400, "PGRST100".into()));
    // Values are bound, never spliced.
    let r = get(&s, "items?name=eq.x'%20OR%20'1'%3D'1", &[]).await;
    assert_eq!((r.status, r.body.clone()), (200, json!([])));
    let r = get(
        &s,
        "items?limit=9223372036854775807&offset=9223372036854775807",
        &[],
    )
    .await;
    assert_eq!((r.status, r.body.clone()), (200, json!([])), "{}", r.text);
    let many: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    let r = get(
        &s,
        &format!("items?id=in.({})&select=id", many.join(",")),
        &[],
    )
    .await;
    assert_eq!((r.status, ids(&r).len()), (200, 15), "{}", r.text);
    // Many shapes neither fail nor grow the statement caches without bound.
    for i in 0..80 {
        let r = get(
            &s,
            &format!("items?id=in.({})&select=id", many[..i + 1].join(",")),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

/// The requests postgrest-js builds, as its source writes them
/// (supabase/postgrest-js src/PostgrestClient.ts `rpc`: POST with the
/// arguments as body, or HEAD/GET with them in the query string, and
/// `Prefer: count=<count>`; src/PostgrestFilterBuilder.ts `gt`: `x=gt.1`;
/// src/PostgrestTransformBuilder.ts `order`: `x.asc`, `limit`: `limit=2`,
/// `range(0, 9)`: `offset=0&limit=10`).
#[tokio::test]
async fn postgrest_js_rpc_requests_get_what_postgrest_answers() {
    let s = server().await;
    // supabase.rpc('items', { n: 10 }).gt('score', 1).order('score').limit(2)
    let r = send(
        s.http
            .post(s.url("/rpc/items?score=gt.1&order=score.asc&limit=2"))
            .header("content-type", "application/json")
            .header("x-client-info", "postgrest-js/1.15.0")
            .body(r#"{"n":10}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body
            .as_array()
            .expect("rows")
            .iter()
            .map(|x| (
                x["id"].as_i64().unwrap_or(0),
                x["score"].as_i64().unwrap_or(0)
            ))
            .collect::<Vec<_>>(),
        vec![(6, 2), (9, 3)]
    );
    assert_eq!(r.header("content-range"), Some("0-1/*"));
    // supabase.rpc('items', { n: 10 }, { count: 'exact', head: true }).gt('id', 3)
    let r = send(
        s.http
            .head(s.url("/rpc/items?n=10&id=gt.3"))
            .header("prefer", "count=exact"),
    )
    .await;
    assert_eq!((r.status, r.header("content-range")), (200, Some("0-6/7")));
    // supabase.rpc('items', {}, { count: 'exact' }).range(0, 9)
    let r = send(
        s.http
            .post(s.url("/rpc/items?offset=0&limit=10"))
            .header("content-type", "application/json")
            .header("prefer", "count=exact")
            .body("{}"),
    )
    .await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("0-9/15")));
    // supabase.rpc('items').eq('id', 2).single()
    let r = send(
        s.http
            .post(s.url("/rpc/items?id=eq.2"))
            .header("content-type", "application/json")
            .header("accept", "application/vnd.pgrst.object+json")
            .body("{}"),
    )
    .await;
    assert_eq!((r.status, r.body["name"].clone()), (200, json!("Item 2")));
}

/// Under an `Idempotency-Key`, the query string is part of the request: a
/// replay returns the filtered rows and their Content-Range, and the same
/// key with other operations is refused.
#[tokio::test]
async fn idempotent_replays_keep_the_operations() {
    let s = server().await;
    let bearer = crate::support::service_token();
    let call = |query: &'static str| {
        send(
            s.http
                .post(s.url(&format!("/rpc/make?{query}")))
                .bearer_auth(&bearer)
                .header("content-type", "application/json")
                .header("idempotency-key", "qops-1")
                .header("prefer", "count=exact")
                .body(r#"{"n":3}"#),
        )
    };
    let first = call("n=gt.1&select=n").await;
    assert_eq!(
        (first.status, first.body.clone()),
        (200, json!([{"n": 2}, {"n": 3}])),
        "{}",
        first.text
    );
    let again = call("n=gt.1&select=n").await;
    assert_eq!(
        again.header("idempotent-replayed"),
        Some("true"),
        "{}",
        again.text
    );
    assert_eq!(
        (again.status, again.text.as_str()),
        (200, first.text.as_str())
    );
    assert_eq!(again.header("content-range"), Some("0-1/2"));
    let other = call("n=gt.2&select=n").await;
    assert_eq!(
        (other.status, other.error_key()),
        (422, "idempotency_key_reused".into()),
        "{}",
        other.text
    );
    assert_eq!(get(&s, "made_count", &[]).await.body, json!(3));
}

/// `limit=0` still runs the call: a write happens (and is answered with no
/// rows), and arguments that cannot be converted are a 400, not a 200 for
/// a call PostgreSQL never made.
#[tokio::test]
async fn limit_zero_still_runs_the_call_and_checks_its_arguments() {
    let s = server().await;
    let r = post(&s, "make?limit=0", json!({"n": 3}), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!([]));
    let made = get(&s, "made_count", &[]).await;
    assert_eq!(
        made.body,
        json!(3),
        "the write behind limit=0 did not happen"
    );
    for path in ["make?limit=0", "items?limit=0&order=id"] {
        let r = post(&s, path, json!({"n": {}}), &[]).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert_eq!(r.body["code"], json!("22P02"), "{path}: {}", r.text);
    }
    let r = get(&s, "items?n=x&limit=0", &[]).await;
    assert_eq!(r.status, 400, "{}", r.text);
}
