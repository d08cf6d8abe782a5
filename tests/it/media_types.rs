//! Media types for RPC, as PostgREST 12/13 serve them (issue 13, item 5):
//! `text/csv`, custom media-type handlers (a domain named for the media
//! type as a function's return type, or as an aggregate's final type),
//! `Accept` q values, raw `text/plain`, `text/xml` and
//! `application/octet-stream` bodies, and `Idempotency-Key` replays of
//! non-JSON bodies. The fixtures follow PostgREST's `test/spec/fixtures/schema.sql`.

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::support::{send, service_token, TestServer};

const FIXTURES: &str = r#"
CREATE DOMAIN public."text/plain" AS text;
CREATE DOMAIN public."text/html" AS text;
CREATE DOMAIN public."text/xml" AS pg_catalog.xml;
CREATE DOMAIN public."application/octet-stream" AS bytea;
CREATE DOMAIN public."image/png" AS bytea;
CREATE DOMAIN public."application/vnd.twkb" AS bytea;
CREATE DOMAIN public."application/vnd.geo2+json" AS jsonb;
CREATE DOMAIN public."text/csv" AS text;
CREATE DOMAIN public."*/*" AS bytea;
-- A domain over a domain over bytea is still bytes.
CREATE DOMAIN public.blob AS bytea;
CREATE DOMAIN public."application/x-blob" AS public.blob;

CREATE TABLE public.items (id int PRIMARY KEY);
INSERT INTO public.items SELECT generate_series(1, 5);
CREATE TABLE public.lines (id int PRIMARY KEY, name text, bin bytea);
INSERT INTO public.lines VALUES (1, 'line-1', '\x00ff01'), (2, 'line-2', '\x02fe00');
GRANT SELECT ON public.items, public.lines TO pgrpc_anon, pgrpc_user, pgrpc_service;

CREATE FUNCTION api.getitemrange(min int, max int) RETURNS SETOF public.items
  LANGUAGE sql STABLE AS $$ SELECT * FROM public.items WHERE id > min AND id <= max ORDER BY id $$;
CREATE FUNCTION api.people() RETURNS TABLE(id int, name text, note text)
  LANGUAGE sql STABLE AS $$
  VALUES (1, 'plain', 'a,b'), (2, 'say "hi"', NULL), (3, '', 'back\slash'), (4, 'two words', '(x)') $$;
CREATE FUNCTION api.numbers(n int) RETURNS SETOF int LANGUAGE sql STABLE AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION api.pair() RETURNS TABLE(a int, b text) LANGUAGE sql STABLE AS $$ SELECT 1, 'x' $$;
CREATE FUNCTION api.plus_one(num int, OUT num_plus_one int) LANGUAGE sql IMMUTABLE AS $$ SELECT num + 1 $$;
CREATE FUNCTION api.letters() RETURNS TABLE(a text) LANGUAGE sql STABLE AS $$ VALUES ('A'), (NULL) $$;
CREATE FUNCTION api.add_them(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT a + b $$;
CREATE FUNCTION api.nothing() RETURNS void LANGUAGE sql VOLATILE AS $$ SELECT $$;
CREATE FUNCTION api.make_rows(n int) RETURNS TABLE(id int, label text) LANGUAGE sql VOLATILE AS
  $$ SELECT g, 'row ' || g FROM generate_series(1, n) g $$;

-- Scalars of a media-type domain: the handler is the function itself.
CREATE FUNCTION api.welcome() RETURNS "text/plain" LANGUAGE sql STABLE AS
  $$ SELECT 'Welcome to pgrpc'::"text/plain" $$;
CREATE FUNCTION api.welcome_twice() RETURNS SETOF "text/plain" LANGUAGE sql STABLE AS
  $$ SELECT 'Welcome' UNION ALL SELECT 'Welcome' $$;
CREATE FUNCTION api."welcome.html"() RETURNS "text/html" LANGUAGE sql STABLE AS
  $$ SELECT '<html><body><h1>Welcome</h1></body></html>'::"text/html" $$;
CREATE FUNCTION api.return_scalar_xml() RETURNS "text/xml" LANGUAGE sql STABLE AS
  $$ SELECT '<my-xml-tag/>'::"text/xml" $$;
CREATE FUNCTION api.ret_bytes() RETURNS "application/octet-stream" LANGUAGE sql STABLE AS
  $$ SELECT '\x00ff41e9'::bytea::"application/octet-stream" $$;
CREATE FUNCTION api.ret_blob() RETURNS "application/x-blob" LANGUAGE sql STABLE AS
  $$ SELECT '\x00fe'::bytea::"application/x-blob" $$;
CREATE FUNCTION api.ret_image() RETURNS "image/png" LANGUAGE sql STABLE AS
  $$ SELECT '\x89504e470d0a1a0a00'::bytea::"image/png" $$;
CREATE FUNCTION api.ret_null_png() RETURNS "image/png" LANGUAGE sql STABLE AS $$ SELECT NULL::"image/png" $$;
-- Plain text, bytea and xml have no built-in text/plain, octet-stream or
-- text/xml output since PostgREST 12: only JSON.
CREATE FUNCTION api.plain_text() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'plain' $$;
CREATE FUNCTION api.plain_bytes() RETURNS bytea LANGUAGE sql STABLE AS $$ SELECT '\x00ff'::bytea $$;
CREATE FUNCTION api.plain_xml() RETURNS xml LANGUAGE sql STABLE AS $$ SELECT '<a>1</a>'::xml $$;
-- The any handler: every media type, application/octet-stream unless the
-- function sets Content-Type.
CREATE FUNCTION api.ret_any_mt() RETURNS "*/*" LANGUAGE sql STABLE AS $$ SELECT 'any'::bytea::"*/*" $$;
CREATE FUNCTION api.ret_some_mt() RETURNS "*/*" LANGUAGE plpgsql STABLE AS $$
DECLARE
  accept text := current_setting('request.headers', true)::json->>'accept';
BEGIN
  CASE accept
    WHEN 'app/chico' THEN
      PERFORM set_config('response.headers', json_build_array(json_build_object('Content-Type', 'app/chico'))::text, true);
      RETURN 'chico';
    WHEN '*/*' THEN
      PERFORM set_config('response.headers', json_build_array(json_build_object('Content-Type', 'app/groucho'))::text, true);
      RETURN 'groucho';
    ELSE
      RAISE sqlstate 'PT415' USING message = 'Unsupported Media Type';
  END CASE;
END $$;

-- Aggregates: a handler for the rows of public.lines, one overriding
-- text/csv for them (with a BOM and a Content-Disposition header), and
-- one for any rows.
CREATE FUNCTION api.lines_bin_trans(state "application/vnd.twkb", next public.lines)
  RETURNS "application/vnd.twkb" LANGUAGE sql IMMUTABLE AS $$ SELECT (state || next.bin)::"application/vnd.twkb" $$;
CREATE AGGREGATE api.lines_bin_agg(public.lines) (
  initcond = '', stype = "application/vnd.twkb", sfunc = api.lines_bin_trans);
CREATE FUNCTION api.bom_csv_trans(state "text/csv", next public.lines) RETURNS "text/csv"
  LANGUAGE sql IMMUTABLE AS $$ SELECT (state || next.id::text || ',' || next.name || E'\n')::"text/csv" $$;
CREATE FUNCTION api.bom_csv_final(data "text/csv") RETURNS "text/csv" LANGUAGE sql AS $$
  SELECT set_config('response.headers', '[{"Content-Disposition": "attachment; filename=\"lines.csv\""}]', true);
  SELECT (convert_from(decode('EFBBBF', 'hex'), 'UTF8') || E'id,name\n' || data)::"text/csv" $$;
CREATE AGGREGATE api.bom_csv_agg(public.lines) (
  initcond = '', stype = "text/csv", sfunc = api.bom_csv_trans, finalfunc = api.bom_csv_final);
CREATE FUNCTION api.geo2_trans(state "application/vnd.geo2+json", next anyelement)
  RETURNS "application/vnd.geo2+json" LANGUAGE sql IMMUTABLE AS
  $$ SELECT jsonb_build_object('type', 'FeatureCollection', 'count', (state->>'count')::int + 1)::"application/vnd.geo2+json" $$;
CREATE AGGREGATE api.geo2_agg(anyelement) (
  initcond = '{"count": 0}', stype = "application/vnd.geo2+json", sfunc = api.geo2_trans);
CREATE FUNCTION api.get_lines() RETURNS SETOF public.lines LANGUAGE sql STABLE AS
  $$ SELECT * FROM public.lines ORDER BY id $$;
CREATE FUNCTION api.get_line(id int) RETURNS "application/vnd.twkb" LANGUAGE sql STABLE AS
  $$ SELECT bin::"application/vnd.twkb" FROM public.lines WHERE lines.id = get_line.id $$;

-- A `*/*` aggregate over a table's rows answers every media type for
-- them (PostgREST's "lines.xml" example): XML, refusing non-XML types.
CREATE TABLE public.notes (id int PRIMARY KEY, body text);
INSERT INTO public.notes VALUES (1, 'a<b'), (2, 'c');
GRANT SELECT ON public.notes TO pgrpc_anon, pgrpc_user, pgrpc_service;
CREATE FUNCTION api.notes_xml_trans(state "*/*", next public.notes) RETURNS "*/*" LANGUAGE sql IMMUTABLE AS
  $$ SELECT (state || convert_to(xmlelement(name note, xmlattributes(next.id AS id), next.body)::text || E'\n', 'UTF8'))::"*/*" $$;
CREATE FUNCTION api.notes_xml_final(data "*/*") RETURNS "*/*" LANGUAGE plpgsql AS $$
DECLARE
  accept text := current_setting('request.headers', true)::json->>'accept';
BEGIN
  IF accept IN ('application/xml', 'text/xml') THEN
    PERFORM set_config('response.headers', json_build_array(json_build_object('Content-Type', accept))::text, true);
  ELSIF accept IS NOT NULL AND accept <> '*/*' THEN
    RAISE sqlstate 'PT415' USING message = 'Unsupported Media Type';
  END IF;
  RETURN data;
END $$;
CREATE AGGREGATE api.notes_xml_agg(public.notes) (
  initcond = '', stype = "*/*", sfunc = api.notes_xml_trans, finalfunc = api.notes_xml_final);
CREATE FUNCTION api.get_notes() RETURNS SETOF public.notes LANGUAGE sql STABLE AS
  $$ SELECT * FROM public.notes ORDER BY id $$;

-- Raw bodies: a single unnamed parameter of the body's type.
CREATE FUNCTION api.unnamed_text_param(text) RETURNS "text/plain" LANGUAGE sql IMMUTABLE AS $$ SELECT $1::"text/plain" $$;
CREATE FUNCTION api.unnamed_xml_param(pg_catalog.xml) RETURNS "text/xml" LANGUAGE sql IMMUTABLE AS $$ SELECT $1::"text/xml" $$;
CREATE FUNCTION api.unnamed_bytea_param(bytea) RETURNS "application/octet-stream" LANGUAGE sql IMMUTABLE AS
  $$ SELECT $1::"application/octet-stream" $$;
CREATE FUNCTION api.unnamed_bytea_len(bytea) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT length($1) $$;
CREATE FUNCTION api.unnamed_int_param(x int, y int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT x + y $$;
CREATE FUNCTION api.overloaded_unnamed_param() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 1 $$;
CREATE FUNCTION api.overloaded_unnamed_param(json) RETURNS json LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
CREATE FUNCTION api.overloaded_unnamed_param(bytea) RETURNS "application/octet-stream" LANGUAGE sql IMMUTABLE AS
  $$ SELECT $1::"application/octet-stream" $$;
CREATE FUNCTION api.overloaded_unnamed_param(text) RETURNS "text/plain" LANGUAGE sql IMMUTABLE AS $$ SELECT $1::"text/plain" $$;
CREATE FUNCTION api.overloaded_unnamed_param(x int, y int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT x + y $$;
CREATE FUNCTION api.overloaded_unnamed_json_jsonb_param(json) RETURNS json LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
CREATE FUNCTION api.overloaded_unnamed_json_jsonb_param(jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
-- Writes, for Idempotency-Key replays.
CREATE TABLE public.uploads (id serial PRIMARY KEY, data bytea NOT NULL);
GRANT SELECT, INSERT ON public.uploads TO pgrpc_service;
GRANT USAGE ON SEQUENCE public.uploads_id_seq TO pgrpc_service;
CREATE FUNCTION api.store_upload(bytea) RETURNS "application/octet-stream" LANGUAGE sql VOLATILE AS
  $$ INSERT INTO public.uploads (data) VALUES ($1) RETURNING (data || '\x00'::bytea)::"application/octet-stream" $$;
CREATE FUNCTION api.upload_count() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM public.uploads $$;
"#;

/// A response read as bytes: media types are not all text.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The PostgREST error body: status, code, message, details, hint.
    fn error(&self) -> (u16, Value) {
        let v = self.json();
        for key in ["code", "message", "details", "hint"] {
            assert!(v.get(key).is_some(), "not an error body: {}", self.text());
        }
        (self.status, v)
    }
}

async fn raw(req: reqwest::RequestBuilder) -> Raw {
    let r = req.send().await.expect("http request");
    Raw {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.expect("http body").to_vec(),
    }
}

async fn server() -> TestServer {
    TestServer::start_with_sql(FIXTURES, |_| {}).await
}

async fn get(s: &TestServer, path: &str, accept: Option<&str>) -> Raw {
    let mut req = s.http.get(s.url(&format!("/rpc/{path}")));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    raw(req).await
}

async fn post(s: &TestServer, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Raw {
    let mut req = s.http.post(s.url(&format!("/rpc/{path}"))).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    raw(req).await
}

const CSV: &str = "text/csv; charset=utf-8";

/// `Accept: text/csv`: a header line, then PostgreSQL's record text per
/// row, as PostgREST's `asCsvF` builds it; on GET, POST and HEAD.
#[tokio::test]
async fn csv_output_follows_postgrest() {
    let s = server().await;
    let r = get(&s, "getitemrange?min=2&max=4", Some("text/csv")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "id\n3\n4"));
    assert_eq!(r.header("content-type"), Some(CSV));
    assert_eq!(r.header("content-range"), Some("0-1/*"));
    let p = post(
        &s,
        "getitemrange",
        &[("accept", "text/csv"), ("content-type", "application/json")],
        br#"{"min": 2, "max": 4}"#.to_vec(),
    )
    .await;
    assert_eq!((p.status, p.text().as_str()), (200, "id\n3\n4"));
    assert_eq!(p.header("content-type"), Some(CSV));
    let h = raw(s
        .http
        .head(s.url("/rpc/getitemrange?min=2&max=4"))
        .header("accept", "text/csv"))
    .await;
    assert_eq!((h.status, h.body.len()), (200, 0));
    assert_eq!(h.header("content-type"), Some(CSV));
    assert_eq!(h.header("content-range"), Some("0-1/*"));

    // Quoting: commas, quotes, backslashes, spaces, parentheses and the
    // empty string are quoted; NULL is empty.
    let r = get(&s, "people", Some("text/csv")).await;
    assert_eq!(
        r.text(),
        "id,name,note\n1,plain,\"a,b\"\n2,\"say \"\"hi\"\"\",\n3,\"\",\"back\\\\slash\"\n4,\"two words\",\"(x)\""
    );
    // The example of docs/media-types.md.
    let r = get(&s, "people?select=name,note&id=lt.3", Some("text/csv")).await;
    assert_eq!(r.text(), "name,note\nplain,\"a,b\"\n\"say \"\"hi\"\"\",");
    // A scalar set, a composite and a scalar: one column named after the function.
    let r = get(&s, "numbers?n=3", Some("text/csv")).await;
    assert_eq!(r.text(), "numbers\n1\n2\n3");
    let r = get(&s, "pair", Some("text/csv")).await;
    assert_eq!(r.text(), "a,b\n1,x");
    let r = get(&s, "add_them?a=3&b=4", Some("text/csv")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "add_them\n7"));
    // A single OUT parameter and a one-column TABLE keep their names.
    let r = get(&s, "plus_one?num=5", Some("text/csv")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "num_plus_one\n6"));
    let r = get(&s, "letters", Some("text/csv")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "a\nA\n"));
    // No rows: an empty header, as PostgREST's (taken from the first row).
    let r = get(&s, "getitemrange?min=4&max=4", Some("text/csv")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "\n"));
    // void stays 204 without a body.
    let r = post(&s, "nothing", &[("accept", "text/csv")], Vec::new()).await;
    assert_eq!((r.status, r.body.len()), (204, 0));
}

/// Query-string operations, ranges and counts apply before the CSV body.
#[tokio::test]
async fn csv_with_operations_ranges_and_counts() {
    let s = server().await;
    let r = get(
        &s,
        "people?select=note,id&id=gt.1&order=id.desc&limit=2",
        Some("text/csv"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "note,id\n\"(x)\",4\n\"back\\\\slash\",3");
    assert_eq!(r.header("content-range"), Some("0-1/*"));
    let r = raw(s
        .http
        .get(s.url("/rpc/getitemrange?min=0&max=5"))
        .header("accept", "text/csv")
        .header("range", "1-2")
        .header("prefer", "count=exact"))
    .await;
    assert_eq!((r.status, r.text().as_str()), (206, "id\n2\n3"));
    assert_eq!(r.header("content-range"), Some("1-2/5"));
    let r = raw(s
        .http
        .head(s.url("/rpc/getitemrange?min=0&max=5&offset=3"))
        .header("accept", "text/csv")
        .header("prefer", "count=exact"))
    .await;
    assert_eq!((r.status, r.body.len()), (206, 0));
    assert_eq!(r.header("content-range"), Some("3-4/5"));
    assert_eq!(r.header("content-type"), Some(CSV));
    // A bad column is still 42703, whatever the media type.
    let r = get(&s, "people?select=nope", Some("text/csv")).await;
    assert_eq!(r.error().1["code"], "42703");
}

/// A function returning a media-type domain is that type's handler: its
/// value is the body, bytes exactly for a domain over bytea.
#[tokio::test]
async fn domain_return_types_are_handlers() {
    let s = server().await;
    let r = get(&s, "welcome", Some("text/plain")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Welcome to pgrpc"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("content-length"), Some("16"));
    let r = get(&s, "welcome.html", Some("text/html")).await;
    assert_eq!(r.text(), "<html><body><h1>Welcome</h1></body></html>");
    assert_eq!(r.header("content-type"), Some("text/html"));
    let r = get(&s, "return_scalar_xml", Some("text/xml")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "<my-xml-tag/>"));
    assert_eq!(r.header("content-type"), Some("text/xml; charset=utf-8"));
    let r = get(&s, "ret_bytes", Some("application/octet-stream")).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &[0x00, 0xff, 0x41, 0xe9][..])
    );
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let r = get(&s, "ret_blob", Some("application/x-blob")).await;
    assert_eq!(
        r.body,
        vec![0x00, 0xfe],
        "a domain over a bytea domain is bytes"
    );
    // q values and order: image/png is picked over */*.
    let png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00];
    for accept in [
        "image/png",
        "image/png, */*",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/png,*/*;q=0.8",
    ] {
        let r = get(&s, "ret_image", Some(accept)).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &png[..]), "{accept}");
        assert_eq!(r.header("content-type"), Some("image/png"));
    }
    // `*/*` alone (and no Accept) is JSON, as PostgREST answers it.
    let r = get(&s, "welcome", Some("*/*")).await;
    assert_eq!(r.json(), json!("Welcome to pgrpc"));
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let r = get(&s, "welcome", None).await;
    assert_eq!(r.json(), json!("Welcome to pgrpc"));
    // No value: an empty body of the type.
    let r = get(&s, "ret_null_png", Some("image/png")).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-type"), Some("image/png"));
    let r = get(&s, "get_line?id=777", Some("application/vnd.twkb")).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    // HEAD: the same headers, no body.
    let r = raw(s
        .http
        .head(s.url("/rpc/ret_bytes"))
        .header("accept", "application/octet-stream"))
    .await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
}

/// Media types no handler serves (a SETOF of a media domain is none):
/// 406 PGRST107 with PostgREST's message.
#[tokio::test]
async fn not_acceptable_where_postgrest_refuses() {
    let s = server().await;
    let cases = [
        ("plain_text", "text/xml", "text/xml"),
        ("plain_bytes", "text/plain", "text/plain"),
        ("welcome", "text/xml", "text/xml"),
        ("welcome_twice", "text/plain", "text/plain"),
        (
            "get_lines",
            "application/octet-stream",
            "application/octet-stream",
        ),
        ("getitemrange?min=1&max=2", "audio/mpeg3", "audio/mpeg3"),
        ("getitemrange?min=1&max=2", "text/*", "text/*"),
        (
            "getitemrange?min=1&max=2",
            "text/plain;q=0.2, text/html",
            "text/html, text/plain",
        ),
        ("getitemrange?min=1&max=2", "undefined", "undefined"),
        // The example of docs/media-types.md.
        (
            "version",
            "text/xml;q=0.2, text/html",
            "text/html, text/xml",
        ),
    ];
    for (path, accept, listed) in cases {
        let r = get(&s, path, Some(accept)).await;
        let (status, body) = r.error();
        assert_eq!(
            (status, body),
            (
                406,
                json!({"code": "PGRST107", "details": null, "hint": null,
                       "message": format!("None of these media types are available: {listed}")})
            ),
            "{path} {accept}"
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
    // The refusal comes before the call: a writing function did not run.
    let bearer = format!("Bearer {}", service_token());
    let r = post(
        &s,
        "store_upload",
        &[
            ("content-type", "application/octet-stream"),
            ("accept", "text/html"),
            ("authorization", bearer.as_str()),
        ],
        vec![1, 2],
    )
    .await;
    assert_eq!(r.status, 406);
    let n = s.service_rpc("upload_count", json!({})).await;
    assert_eq!(n.body, json!(0));
}

/// Accept order and q values pick among the types a function can give.
#[tokio::test]
async fn accept_q_values_and_order() {
    let s = server().await;
    let path = "getitemrange?min=2&max=4";
    let r = get(&s, path, Some("text/csv;q=0.5, application/json;q=0.9")).await;
    assert_eq!(r.json(), json!([{"id": 3}, {"id": 4}]));
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let r = get(&s, path, Some("text/csv, application/json")).await;
    assert_eq!(r.header("content-type"), Some(CSV));
    let r = get(&s, path, Some("text/plain, application/json")).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let r = get(&s, path, Some("text/*, */*;q=0.1")).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let r = get(&s, path, Some("application/*, text/csv;q=0.9")).await;
    assert_eq!(
        r.header("content-type"),
        Some(CSV),
        "application/* is no handler"
    );
    // The vendored JSON forms win in their place and cannot be overridden.
    let r = get(
        &s,
        "getitemrange?min=2&max=3",
        Some("application/vnd.pgrst.object+json, text/csv"),
    )
    .await;
    assert_eq!(r.json(), json!({"id": 3}));
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.pgrst.object+json; charset=utf-8")
    );
    let r = get(
        &s,
        "people?id=eq.2",
        Some("application/vnd.pgrst.object+json;nulls=stripped"),
    )
    .await;
    assert_eq!(r.json(), json!({"id": 2, "name": "say \"hi\""}));
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.pgrst.object+json;nulls=stripped; charset=utf-8")
    );
    let r = get(
        &s,
        "people",
        Some("application/vnd.pgrst.array+json;nulls=stripped"),
    )
    .await;
    assert_eq!(r.json()[1], json!({"id": 2, "name": "say \"hi\""}));
    assert_eq!(r.json()[0]["note"], "a,b");
    let stripped = "application/vnd.pgrst.array+json;nulls=stripped";
    let r = get(&s, "letters", Some(stripped)).await;
    assert_eq!(r.json(), json!([{"a": "A"}, {}]));
    let r = get(&s, "plus_one?num=1", Some(stripped)).await;
    assert_eq!(r.json(), json!({"num_plus_one": 2}));
    let r = get(
        &s,
        "people?select=id,note&id=lt.3",
        Some("application/vnd.pgrst.array+json;nulls=stripped"),
    )
    .await;
    assert_eq!(r.json(), json!([{"id": 1, "note": "a,b"}, {"id": 2}]));
}

/// The `*/*` domain answers every media type, with
/// application/octet-stream unless the function sets Content-Type; it may
/// refuse a type itself (PT415).
#[tokio::test]
async fn any_media_type_handler() {
    let s = server().await;
    for accept in [Some("*/*"), Some("app/bingo"), Some("text/bango"), None] {
        let r = get(&s, "ret_any_mt", accept).await;
        assert_eq!((r.status, r.text().as_str()), (200, "any"), "{accept:?}");
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    }
    let r = get(&s, "ret_some_mt", Some("*/*")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "groucho"));
    assert_eq!(r.header("content-type"), Some("app/groucho"));
    let r = get(&s, "ret_some_mt", Some("app/chico")).await;
    assert_eq!(
        (r.text().as_str(), r.header("content-type")),
        ("chico", Some("app/chico"))
    );
    let r = get(&s, "ret_some_mt", Some("text/csv")).await;
    let (status, body) = r.error();
    assert_eq!((status, body["code"].clone()), (415, json!("PT415")));
    assert_eq!(body["message"], "Unsupported Media Type");
}

/// Aggregates whose final type is a media-type domain: for the rows of a
/// table type (with the default select only), or for any rows.
#[tokio::test]
async fn aggregate_handlers() {
    let s = server().await;
    let r = get(&s, "get_lines", Some("application/vnd.twkb")).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &[0x00, 0xff, 0x01, 0x02, 0xfe, 0x00][..])
    );
    assert_eq!(r.header("content-type"), Some("application/vnd.twkb"));
    assert_eq!(r.header("content-range"), Some("0-1/*"));
    let r = get(&s, "get_lines?id=eq.2", Some("application/vnd.twkb")).await;
    assert_eq!(r.body, vec![0x02, 0xfe, 0x00]);
    let r = get(&s, "get_lines?select=id", Some("application/vnd.twkb")).await;
    assert_eq!(r.status, 406, "a table's handler needs the default select");
    let r = get(
        &s,
        "get_lines?select=id,name,bin",
        Some("application/vnd.twkb"),
    )
    .await;
    assert_eq!(r.status, 406);
    // Overriding text/csv for the table's rows, with a header of its own.
    let r = get(&s, "get_lines", Some("text/csv")).await;
    assert_eq!(r.text(), "\u{feff}id,name\n1,line-1\n2,line-2\n");
    assert_eq!(r.header("content-type"), Some(CSV));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"lines.csv\"")
    );
    // ...but not with another select: the built-in CSV.
    let r = get(&s, "get_lines?select=id,name", Some("text/csv")).await;
    assert_eq!(r.text(), "id,name\n1,line-1\n2,line-2");
    assert_eq!(r.header("content-disposition"), None);
    // An anyelement aggregate serves every function, whatever its rows.
    for (path, count) in [
        ("get_lines", 2),
        ("people?id=gt.1", 3),
        ("numbers?n=4", 4),
        ("plus_one?num=1", 1),
        ("letters", 2),
        ("add_them?a=1&b=2", 1),
    ] {
        let r = get(&s, path, Some("application/vnd.geo2+json")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.json(),
            json!({"type": "FeatureCollection", "count": count}),
            "{path}"
        );
        assert_eq!(r.header("content-type"), Some("application/vnd.geo2+json"));
    }
}

/// A `*/*` aggregate over a table's rows handles every media type for
/// functions returning them (with the default select), JSON included;
/// only the vendored JSON forms stay.
#[tokio::test]
async fn any_aggregate_for_a_table() {
    let s = server().await;
    let xml = "<note id=\"1\">a&lt;b</note>\n<note id=\"2\">c</note>\n";
    for (accept, ct) in [
        ("text/xml", "text/xml"),
        ("application/xml", "application/xml"),
        ("*/*", "application/octet-stream"),
    ] {
        let r = get(&s, "get_notes", Some(accept)).await;
        assert_eq!((r.status, r.text().as_str()), (200, xml), "{accept}");
        assert_eq!(r.header("content-type"), Some(ct), "{accept}");
    }
    let r = get(&s, "get_notes", Some("application/json")).await;
    assert_eq!(r.error().0, 415, "the handler refuses JSON itself");
    let r = get(&s, "get_notes?id=eq.2", Some("text/xml")).await;
    assert_eq!(r.text(), "<note id=\"2\">c</note>\n");
    let r = get(
        &s,
        "get_notes?id=eq.1",
        Some("application/vnd.pgrst.object+json"),
    )
    .await;
    assert_eq!(r.json(), json!({"id": 1, "body": "a<b"}));
    let r = get(&s, "get_notes?select=id", Some("application/json")).await;
    assert_eq!(
        r.json(),
        json!([{"id": 1}, {"id": 2}]),
        "another select: the built-in JSON"
    );
}

/// Raw bodies go to the single unnamed parameter of their type, as
/// PostgREST resolves them; 404, 300 and 400 with its codes otherwise.
#[tokio::test]
async fn raw_bodies_to_a_single_unnamed_parameter() {
    let s = server().await;
    let r = post(
        &s,
        "unnamed_text_param",
        &[("content-type", "text/plain"), ("accept", "text/plain")],
        b"unnamed text arg".to_vec(),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "unnamed text arg"));
    let note = "<note><from>John</from><to>Jane</to><message>Remember me</message></note>";
    let r = post(
        &s,
        "unnamed_xml_param",
        &[("content-type", "text/xml"), ("accept", "text/xml")],
        note.as_bytes().to_vec(),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, note));
    // Every byte value, NUL and invalid UTF-8 included, goes through.
    let bytes: Vec<u8> = (0..=255u8).chain([0x00, 0xff, 0xfe]).collect();
    let r = post(
        &s,
        "unnamed_bytea_param",
        &[
            ("content-type", "application/octet-stream"),
            ("accept", "application/octet-stream"),
        ],
        bytes.clone(),
    )
    .await;
    assert_eq!((r.status, &r.body), (200, &bytes));
    let r = post(
        &s,
        "unnamed_bytea_len",
        &[("content-type", "application/octet-stream")],
        bytes.clone(),
    )
    .await;
    assert_eq!(r.json(), json!(259));
    let r = post(
        &s,
        "unnamed_bytea_len",
        &[("content-type", "application/octet-stream")],
        vec![0x00, 0xff],
    )
    .await;
    assert_eq!(r.text(), "2", "the example of docs/media-types.md");
    // Overloads: the body's type picks the function.
    let ov = "overloaded_unnamed_param";
    let r = post(
        &s,
        ov,
        &[("content-type", "application/json")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.json(), json!(1));
    let r = post(
        &s,
        ov,
        &[("content-type", "application/json")],
        br#"{"x": 1, "y": 2}"#.to_vec(),
    )
    .await;
    assert_eq!(r.json(), json!(3));
    let r = post(
        &s,
        ov,
        &[("content-type", "application/json")],
        br#"{"A": 1, "B": 2}"#.to_vec(),
    )
    .await;
    assert_eq!(r.json(), json!({"A": 1, "B": 2}));
    let r = post(
        &s,
        ov,
        &[("content-type", "text/plain"), ("accept", "text/plain")],
        b"unnamed text arg".to_vec(),
    )
    .await;
    assert_eq!(r.text(), "unnamed text arg");
    let r = post(
        &s,
        ov,
        &[
            ("content-type", "application/octet-stream"),
            ("accept", "application/octet-stream"),
        ],
        vec![0xff, 0x00],
    )
    .await;
    assert_eq!(r.body, vec![0xff, 0x00]);
    // A GET's Content-Type is no body: the function without parameters.
    let r = raw(s
        .http
        .get(s.url(&format!("/rpc/{ov}")))
        .header("content-type", "text/plain"))
    .await;
    assert_eq!((r.status, r.json()), (200, json!(1)));
    // No unnamed parameter of that type: PostgREST's 404.
    for (ct, param) in [
        ("text/plain", "text"),
        ("text/xml", "xml"),
        ("application/octet-stream", "bytea"),
    ] {
        let r = post(
            &s,
            "unnamed_int_param",
            &[("content-type", ct)],
            b"a simple text".to_vec(),
        )
        .await;
        assert_eq!(
            r.error(),
            (
                404,
                json!({"code": "PGRST202", "hint": null,
                       "message": "Could not find the function api.unnamed_int_param in the schema cache",
                       "details": format!("Searched for the function api.unnamed_int_param with a single unnamed {param} parameter, but no matches were found in the schema cache.")})
            ),
            "{ct}"
        );
    }
    let r = post(
        &s,
        "overloaded_unnamed_json_jsonb_param",
        &[("content-type", "application/json")],
        br#"{"A": 1}"#.to_vec(),
    )
    .await;
    assert_eq!(
        r.error(),
        (
            300,
            json!({"code": "PGRST203", "details": null,
                   "hint": "Try renaming the parameters or the function itself in the database so function overloading can be resolved",
                   "message": "Could not choose the best candidate function between: api.overloaded_unnamed_json_jsonb_param( => json), api.overloaded_unnamed_json_jsonb_param( => jsonb)"})
        )
    );
    // Bodies that cannot be read: 400, never 415 (PostgREST 12/13).
    let r = post(
        &s,
        "unnamed_text_param",
        &[("content-type", "image/png")],
        vec![1],
    )
    .await;
    assert_eq!(
        r.error(),
        (
            400,
            json!({"code": "PGRST102", "details": null, "hint": null,
                   "message": "Content-Type not acceptable: image/png"})
        )
    );
    let r = post(
        &s,
        "unnamed_text_param",
        &[("content-type", "text/plain")],
        vec![b'a', 0xff],
    )
    .await;
    assert_eq!(
        (r.error().0, r.error().1["code"].clone()),
        (400, json!("PGRST102"))
    );
    let r = post(
        &s,
        "unnamed_text_param",
        &[("content-type", "text/plain")],
        b"a\0b".to_vec(),
    )
    .await;
    assert_eq!(r.error().0, 400);
    let r = post(
        &s,
        "unnamed_xml_param",
        &[("content-type", "text/xml"), ("accept", "text/xml")],
        b"<".to_vec(),
    )
    .await;
    let (status, body) = r.error();
    assert_eq!(
        (status, body["code"].clone(), body["message"].clone()),
        (400, json!("2200N"), json!("invalid XML content"))
    );
}

/// Under an `Idempotency-Key`, the media type is part of the request, and
/// a replay answers with the first response's Content-Type and exact bytes.
#[tokio::test]
async fn idempotent_replays_keep_media_type_and_bytes() {
    let s = server().await;
    let bearer = format!("Bearer {}", service_token());
    let upload = |key: &'static str, accept: &'static str, body: Vec<u8>| {
        let bearer = bearer.clone();
        let s = &s;
        async move {
            post(
                s,
                "store_upload",
                &[
                    ("authorization", bearer.as_str()),
                    ("content-type", "application/octet-stream"),
                    ("accept", accept),
                    ("idempotency-key", key),
                ],
                body,
            )
            .await
        }
    };
    let bytes = vec![0xff, 0x00, 0xfe, b'a'];
    let first = upload("bin-1", "application/octet-stream", bytes.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.body, [&bytes[..], &[0x00]].concat());
    let again = upload("bin-1", "application/octet-stream", bytes.clone()).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert_eq!(
        again.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        s.service_rpc("upload_count", json!({})).await.body,
        json!(1)
    );
    // The same key asking for another media type is another request.
    let other = upload("bin-1", "application/json", bytes.clone()).await;
    assert_eq!(
        (other.status, other.error().1["message"].clone()),
        (422, json!("idempotency_key_reused"))
    );
    let other = upload("bin-1", "application/octet-stream", vec![0xff]).await;
    assert_eq!(other.status, 422);
    // A JSON response of the same call is stored and replayed as JSON.
    let j1 = upload("bin-2", "application/json", vec![1, 2]).await;
    let j2 = upload("bin-2", "application/json", vec![1, 2]).await;
    assert_eq!(
        (j2.status, j2.body.clone(), j2.header("content-type")),
        (
            200,
            j1.body.clone(),
            Some("application/json; charset=utf-8")
        )
    );
    assert_eq!(j1.json(), json!("\\x010200"));
    // CSV: the header and rows come back byte for byte.
    let csv = |key: &'static str, accept: &'static str| {
        let bearer = bearer.clone();
        let s = &s;
        async move {
            post(
                s,
                "make_rows?id=gt.1",
                &[
                    ("authorization", bearer.as_str()),
                    ("content-type", "application/json"),
                    ("accept", accept),
                    ("idempotency-key", key),
                    ("prefer", "count=exact"),
                ],
                br#"{"n": 3}"#.to_vec(),
            )
            .await
        }
    };
    let c1 = csv("csv-1", "text/csv").await;
    assert_eq!(
        (c1.status, c1.text().as_str()),
        (200, "id,label\n2,\"row 2\"\n3,\"row 3\"")
    );
    let c2 = csv("csv-1", "text/csv").await;
    assert_eq!(c2.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        (
            c2.body.clone(),
            c2.header("content-type"),
            c2.header("content-range")
        ),
        (c1.body.clone(), Some(CSV), Some("0-1/2"))
    );
    let c3 = csv("csv-1", "application/json").await;
    assert_eq!(c3.status, 422, "{}", c3.text());
}

/// /metrics counts requests of every media type, under the function.
#[tokio::test]
async fn metrics_count_media_requests() {
    let s = server().await;
    get(&s, "getitemrange?min=1&max=2", Some("text/csv")).await;
    get(&s, "ret_bytes", Some("application/octet-stream")).await;
    let m = send(s.http.get(s.url("/metrics"))).await;
    for line in [
        r#"pgrpc_requests_total{function="getitemrange",status="200"} 1"#,
        r#"pgrpc_requests_total{function="ret_bytes",status="200"} 1"#,
    ] {
        assert!(m.text.contains(line), "{line} in {}", m.text);
    }
    // text/csv is served for any function, so the q=0.1 CSV answers.
    let r = get(&s, "ret_bytes", Some("audio/mpeg, text/csv;q=0.1")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ret_bytes\n\"\\\\x00ff41e9\"")
    );
}

/// The OpenAPI document says what these functions take and answer: a raw
/// body of the unnamed parameter's media type (no nameless query
/// parameter), a handler's own media type, and CSV beside JSON for rows.
#[tokio::test]
async fn openapi_declares_media_types() {
    let s = server().await;
    let doc: serde_json::Value =
        serde_json::from_slice(&get_doc(&s).await).expect("OpenAPI is JSON");
    let paths = &doc["paths"];
    for (path, media) in [
        ("/rpc/unnamed_text_param", "text/plain"),
        ("/rpc/unnamed_xml_param", "text/xml"),
        ("/rpc/unnamed_bytea_param", "application/octet-stream"),
    ] {
        let content = &paths[path]["post"]["requestBody"]["content"];
        assert!(content.get(media).is_some(), "{path}: {content}");
        assert!(
            content.get("application/json").is_none(),
            "{path}: {content}"
        );
        let params = paths[path]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        assert!(
            params.iter().all(|p| p["name"] != ""),
            "{path}: a nameless parameter in {params:?}"
        );
    }
    for (path, media) in [
        ("/rpc/welcome", "text/plain"),
        ("/rpc/ret_image", "image/png"),
    ] {
        let content = &paths[path]["get"]["responses"]["200"]["content"];
        assert!(content.get(media).is_some(), "{path}: {content}");
        assert!(
            content.get("application/json").is_none(),
            "{path}: {content}"
        );
    }
    for (path, media) in [
        ("/rpc/plain_text", "text/plain"),
        ("/rpc/plain_xml", "text/xml"),
        ("/rpc/plain_bytes", "application/octet-stream"),
    ] {
        let content = &paths[path]["get"]["responses"]["200"]["content"];
        assert!(content.get(media).is_some(), "{path}: {content}");
        assert!(
            content.get("application/json").is_some(),
            "{path}: {content}"
        );
    }
    let content = &paths["/rpc/people"]["get"]["responses"]["200"]["content"];
    assert!(content.get("text/csv").is_some(), "{content}");
    assert!(content.get("application/json").is_some(), "{content}");
}

async fn get_doc(s: &TestServer) -> Vec<u8> {
    let r = raw(s.http.get(s.url("/"))).await;
    assert_eq!(r.status, 200);
    r.body
}

/// A function returning plain text, xml or bytea answers its raw value in
/// the matching media type (PostgREST up to 11; issue 13), and JSON still.
#[tokio::test]
async fn raw_output_of_text_xml_and_bytea_results() {
    let s = server().await;
    let r = get(&s, "plain_text", Some("text/plain")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"plain".as_slice()));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = get(&s, "plain_bytes", Some("application/octet-stream")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, [0u8, 255].as_slice()));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let r = get(&s, "plain_xml", Some("text/xml")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"<a>1</a>".as_slice()));
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/xml")));
    let r = get(&s, "plain_text", Some("application/json")).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"\"plain\"".as_slice())
    );
    // The example of docs/media-types.md.
    let r = get(&s, "version", Some("text/plain")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, env!("CARGO_PKG_VERSION").as_bytes());
}
