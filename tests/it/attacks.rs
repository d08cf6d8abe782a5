//! The hostile corpus of the third attack review (issue 18): each break it
//! found, sent through real HTTP (or, for the SQL ones, through real login
//! roles) against a real PostgreSQL. Each test asserts the answer, that the
//! proxy is still up afterwards, and that nothing was written.
//!
//! Sections follow the layer where each rule belongs: client-input parsers,
//! the transport and process, the database's locks and roles, and the
//! commit path.

// ---------------------------------------------------------------------------
// Section: parsers (logic trees, fts operands, NUL bytes, cookies)
// ---------------------------------------------------------------------------

/// A set-returning function any caller may filter and project, for the
/// parser attacks that need rows and columns.
const PARSER_FIXTURES: &str = r#"
CREATE FUNCTION api.parser_rows() RETURNS TABLE (id int, note text)
LANGUAGE sql STABLE AS $$ SELECT 1, 'one' UNION ALL SELECT 2, 'two' $$;
CREATE FUNCTION api.parser_echo(note text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT note $$;
CREATE FUNCTION api.parser_nest(depth int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF depth <= 0 THEN RETURN 0; END IF;
  RETURN 1 + api.parser_nest(depth - 1);
END $$;
"#;

/// Asserts a refusal with the four-key body and returns its code.
fn parser_refusal(r: &crate::support::Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text);
    r.error_code()
}

/// Asserts that the proxy still answers an ordinary call.
async fn parser_proxy_lives(server: &crate::support::TestServer) {
    let r = crate::support::send(server.http.get(server.url("/rpc/parser_rows?id=eq.2"))).await;
    assert_eq!(r.status, 200, "the proxy no longer answers: {}", r.text);
    assert_eq!(r.body, serde_json::json!([{"id": 2, "note": "two"}]));
}

// Item 1: `or=(or(or(…)))` 10,000 levels deep overflowed a worker's stack
// and aborted the process; it is now 400 PGRST100 and the proxy lives.
#[tokio::test]
async fn logic_trees_nested_ten_thousand_deep_are_refused_and_the_proxy_lives() {
    let server = crate::support::TestServer::start_with_sql(PARSER_FIXTURES, |_| {}).await;
    let levels = 10_000;
    let tree = format!("({}a.eq.1{})", "or(".repeat(levels), ")".repeat(levels));
    for key in ["or", "and", "not.or"] {
        let url = server.url(&format!("/rpc/parser_rows?{key}={tree}"));
        let r = crate::support::send(server.http.get(url)).await;
        assert_eq!(parser_refusal(&r, 400), "PGRST100");
        assert!(
            r.text.contains("64"),
            "the message names the bound: {}",
            r.text
        );
    }
    // 64 levels are still a tree the proxy answers.
    let ok = format!("(id.eq.2,{}id.eq.9{})", "and(".repeat(62), ")".repeat(62));
    let r = crate::support::send(
        server
            .http
            .get(server.url(&format!("/rpc/parser_rows?or={ok}"))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    parser_proxy_lives(&server).await;
}

// Item 6: an `fts` operand nested 10,000 deep reached PostgreSQL and came
// back 500 54001 with a hint naming max_stack_depth; it is now refused by
// the proxy with 400, for a pgrpc_user on api.recent_receives.
#[tokio::test]
async fn fts_operands_nested_ten_thousand_deep_are_refused_without_a_server_hint() {
    let server = crate::support::TestServer::start_with_sql(PARSER_FIXTURES, |_| {}).await;
    let email = "deep@example.com";
    let token = crate::support::user_token(&uuid::Uuid::new_v4().to_string(), email);
    let finalize = server
        .service_rpc(
            "finalize_receive",
            serde_json::json!({
                "reservation_id": uuid::Uuid::new_v4(), "owner_email": email,
                "file_count": 1, "total_bytes": 1, "sender_ip": null, "sender_label": "sender",
            }),
        )
        .await;
    assert_eq!(finalize.status, 200, "{}", finalize.text);
    let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
    for op in [
        "fts",
        "plfts",
        "phfts",
        "wfts",
        "fts(english)",
        "match",
        "imatch",
    ] {
        let url = server.url(&format!(
            "/rpc/recent_receives?owner_email={email}&sender_label={op}.{deep}"
        ));
        let r = crate::support::send(server.http.get(url).bearer_auth(&token)).await;
        assert_eq!(parser_refusal(&r, 400), "PGRST100", "{op}");
        assert!(!r.text.contains("max_stack_depth"), "{op}: {}", r.text);
    }
    // A long flat operand is refused as well, before the database.
    let long = "a".repeat(5_000);
    let url = server.url(&format!(
        "/rpc/recent_receives?owner_email={email}&sender_label=fts.{long}"
    ));
    let r = crate::support::send(server.http.get(url).bearer_auth(&token)).await;
    assert_eq!(parser_refusal(&r, 400), "PGRST100");
    // Whatever still overflows PostgreSQL's stack (here a recursion the
    // input drives) is the caller's 400 54001, with no hint about settings.
    let r = crate::support::send(
        server
            .http
            .get(server.url("/rpc/parser_nest?depth=1000000")),
    )
    .await;
    assert_eq!(parser_refusal(&r, 400), "54001");
    assert!(!r.text.contains("max_stack_depth"), "{}", r.text);
    parser_proxy_lives(&server).await;
}

// Item 8: a NUL in a `select` alias was spliced into the statement and
// answered 503 "Database connection lost" with Retry-After; a NUL anywhere
// in the query string is now 400 PGRST100, in a JSON body 400, and in a
// header 400, and none of them costs a connection.
#[tokio::test]
async fn nul_bytes_in_the_query_string_headers_or_json_are_400_never_5xx() {
    let server = crate::support::TestServer::start_with_sql(PARSER_FIXTURES, |_| {}).await;
    for query in [
        "select=a%00b:note",
        "select=no%00te",
        "note=eq.a%00b",
        "or=(note.eq.a%00b,id.eq.1)",
        "order=no%00te",
        "no%00te=eq.1",
    ] {
        let r = crate::support::send(
            server
                .http
                .get(server.url(&format!("/rpc/parser_rows?{query}"))),
        )
        .await;
        assert_eq!(parser_refusal(&r, 400), "PGRST100", "{query}");
        assert!(r.headers.get("retry-after").is_none(), "{query}");
    }
    let r = crate::support::send(server.http.get(server.url("/rpc/parser_echo?note=a%00b"))).await;
    assert_eq!(parser_refusal(&r, 400), "PGRST100");
    let r = crate::support::send(
        server
            .http
            .post(server.url("/rpc/parser_echo"))
            .header("content-type", "application/json")
            .body(r#"{"note":"a\u0000b"}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    r.error_code();
    // A raw NUL in a header is refused by the HTTP parser before routing.
    let mut stream = tokio::net::TcpStream::connect(server.base_url.trim_start_matches("http://"))
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /rpc/parser_rows HTTP/1.1\r\nHost: pgrpc\r\nX-Note: a\0b\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = vec![0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut head)
        .await
        .expect("read");
    let line = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(line.starts_with("HTTP/1.1 400"), "{line}");
    parser_proxy_lives(&server).await;
}

// Item 11: a Cookie header of 11,000 pairs was parsed in quadratic time
// (100-150 ms of CPU each); it is now read in one pass and refused past
// 256 pairs with 400 PGRST100, while 256 pairs still reach request.cookies.
#[tokio::test]
async fn a_cookie_header_of_eleven_thousand_pairs_is_refused_and_the_proxy_lives() {
    let server = crate::support::TestServer::start_with_sql(PARSER_FIXTURES, |_| {}).await;
    let name = |i: usize| {
        let a = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let b = |k: usize| a[k % a.len()] as char;
        format!("{}{}{}", b(i), b(i / a.len()), b(i / a.len() / a.len()))
    };
    let pairs = |n: usize| {
        (0..n)
            .map(|i| format!("{}=", name(i)))
            .collect::<Vec<_>>()
            .join(";")
    };
    let cookie = pairs(11_000);
    assert!(
        cookie.len() < 60_000,
        "fits the request head: {}",
        cookie.len()
    );
    let r = crate::support::send(
        server
            .http
            .get(server.url("/rpc/parser_rows"))
            .header("cookie", cookie),
    )
    .await;
    assert_eq!(parser_refusal(&r, 400), "PGRST100");
    assert!(
        r.text.contains("256"),
        "the message names the bound: {}",
        r.text
    );
    let r = crate::support::send(
        server
            .http
            .get(server.url("/rpc/parser_rows"))
            .header("cookie", pairs(256)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    parser_proxy_lives(&server).await;
}

// The query string's other bounds (docs/limits.md): parameters, in lists,
// select items and order terms past their bounds are 400 PGRST100 naming
// the bound, and a URL past 65,534 bytes is 414; the proxy lives.
#[tokio::test]
async fn query_string_bounds_are_answered_before_the_database() {
    let server = crate::support::TestServer::start_with_sql(PARSER_FIXTURES, |_| {}).await;
    let params = (0..1_001)
        .map(|i| format!("p{i}=1"))
        .collect::<Vec<_>>()
        .join("&");
    let in_list = format!("id=in.({})", vec!["1"; 10_001].join(","));
    let select = format!("select={}", vec!["id"; 1_001].join(","));
    let order = format!("order={}", vec!["id"; 101].join(","));
    for (query, bound) in [
        (params, "1000"),
        (in_list, "10000"),
        (select, "1000"),
        (order, "100"),
    ] {
        let r = crate::support::send(
            server
                .http
                .get(server.url(&format!("/rpc/parser_rows?{query}"))),
        )
        .await;
        assert_eq!(parser_refusal(&r, 400), "PGRST100", "{}", &query[..20]);
        assert!(r.text.contains(bound), "{}", r.text);
    }
    let huge = format!(
        "GET /rpc/parser_rows?note=eq.{} HTTP/1.1\r\nHost: pgrpc\r\n\r\n",
        "a".repeat(70_000)
    );
    let mut stream = tokio::net::TcpStream::connect(server.base_url.trim_start_matches("http://"))
        .await
        .expect("connect");
    // The server may answer before it has read all of it.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, huge.as_bytes()).await;
    let mut head = vec![0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut head)
        .await
        .expect("read");
    let line = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(line.starts_with("HTTP/1.1 414"), "{line}");
    parser_proxy_lives(&server).await;
}

// Header bounds (docs/limits.md): more than 64 Accept ranges or Prefer
// items is 400 PGRST100, a bearer token over 16 KiB is 401 PGRST301.
#[tokio::test]
async fn header_list_bounds_are_answered_and_the_proxy_lives() {
    let server = crate::support::TestServer::start_with_sql(PARSER_FIXTURES, |_| {}).await;
    let url = server.url("/rpc/parser_rows");
    let accept = vec!["application/json"; 65].join(",");
    let r = crate::support::send(server.http.get(&url).header("accept", accept)).await;
    assert_eq!(parser_refusal(&r, 400), "PGRST100");
    let prefer = vec!["count=exact"; 65].join(",");
    let r = crate::support::send(server.http.get(&url).header("prefer", prefer)).await;
    assert_eq!(parser_refusal(&r, 400), "PGRST100");
    let token = format!("{}.e30.x", "a".repeat(16 * 1024));
    let r = crate::support::send(server.http.get(&url).bearer_auth(token)).await;
    assert_eq!(parser_refusal(&r, 401), "PGRST301");
    assert!(r.text.contains("16384"), "{}", r.text);
    let ok = vec!["application/json"; 64].join(",");
    let r = crate::support::send(server.http.get(&url).header("accept", ok)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    parser_proxy_lives(&server).await;
}

// (end of section: parsers)

// ---------------------------------------------------------------------------
// Section: transport (body read deadline, panics, metrics labels, reloads, GET /)
// ---------------------------------------------------------------------------

// (end of section: transport)

// ---------------------------------------------------------------------------
// Section: database (advisory locks, the api login rule)
// ---------------------------------------------------------------------------

// (end of section: database)

// ---------------------------------------------------------------------------
// Section: commit path (idempotency rows, response settings before COMMIT)
// ---------------------------------------------------------------------------

// (end of section: commit path)
