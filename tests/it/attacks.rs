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
    // PostgreSQL's own refusal of a NUL in text (untranslatable character).
    assert_eq!(r.error_code(), "22P05", "{}", r.text);
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

mod transport {
    use std::time::{Duration, Instant};

    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::support::{send, TestServer};

    fn host(s: &TestServer) -> String {
        s.base_url.trim_start_matches("http://").to_string()
    }

    /// A port free on 127.0.0.1 a moment ago, for the admin address.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// Everything `sock` receives until the peer closes it or `within` passes.
    async fn read_until_closed(sock: &mut TcpStream, within: Duration) -> (String, bool) {
        let deadline = Instant::now() + within;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into(), true),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return (String::from_utf8_lossy(&buf).into(), false),
            }
        }
    }

    /// A raw HTTP/1.1 response's status, lowercase head and JSON body.
    fn parse_raw(text: &str) -> (u16, String, Value) {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (
            status,
            head.to_ascii_lowercase(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    // Every connection slot held by a body that stopped after one byte: /live
    // answers on the admin address meanwhile, a normal call waiting behind them
    // is served within the body deadline, and each stalled client gets 408
    // PGRPC408 with Connection: close, then a closed connection.
    #[tokio::test]
    async fn stalled_bodies_are_cut_off_with_408_and_the_proxy_keeps_answering() {
        const SLOTS: usize = 8;
        let deadline = Duration::from_millis(1500);
        let admin = format!("127.0.0.1:{}", free_port());
        let admin_addr = admin.clone();
        let s = TestServer::start_with(move |c| {
            c.max_connections = SLOTS;
            c.body_read_timeout = deadline;
            c.admin_listen = Some(admin_addr);
        })
        .await;
        // The harness's idle keep-alive connection holds a slot too: more
        // stalled clients than slots, so that every slot is surely taken.
        let mut stalled = Vec::new();
        for _ in 0..SLOTS + 2 {
            let mut sock = TcpStream::connect(host(&s)).await.expect("connect");
            sock.write_all(
                b"POST /rpc/version HTTP/1.1\r\nHost: pgrpc\r\n\
                  Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .expect("write");
            stalled.push(sock);
        }
        let started = Instant::now();
        // The orchestrator's probe: on the admin address, whatever the main one holds.
        let fresh = reqwest::Client::new();
        let live = send(
            fresh
                .get(format!("http://{admin}/live"))
                .timeout(Duration::from_millis(500)),
        )
        .await;
        assert_eq!(live.status, 200, "{}", live.text);
        // A normal call on a connection of its own waits for a slot and is served.
        let r = send(
            reqwest::Client::new()
                .get(s.url("/rpc/version"))
                .timeout(Duration::from_secs(30)),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            started.elapsed() < deadline * 2 + Duration::from_secs(2),
            "served after {:?}",
            started.elapsed()
        );
        for mut sock in stalled {
            let (text, closed) = read_until_closed(&mut sock, deadline * 4).await;
            let (status, head, body) = parse_raw(&text);
            assert_eq!(status, 408, "{text}");
            assert!(head.contains("connection: close"), "{text}");
            assert_eq!(body["code"], "PGRPC408", "{text}");
            for key in ["code", "message", "details", "hint"] {
                assert!(body.get(key).is_some(), "{key} missing: {text}");
            }
            assert!(closed, "the connection stayed open after the 408");
        }
        // Still up, on both addresses.
        let r = s.service_rpc_get("version", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }

    /// The value of an unlabelled counter on `/metrics`.
    async fn counter(s: &TestServer, name: &str) -> u64 {
        let r = send(s.http.get(s.url("/metrics"))).await;
        r.text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not on /metrics:\n{}", r.text))
    }

    // 3,000 NOTIFY pgrst from a login granted nothing, each its own
    // transaction, give at most three function cache reloads, and the
    // proxy still answers.
    #[tokio::test]
    async fn a_burst_of_reload_notifications_from_any_login_is_coalesced() {
        let s = TestServer::start().await;
        let login = format!("storm_{}", s.db.name);
        s.db.superuser()
            .await
            .batch_execute(&format!("CREATE ROLE {login} LOGIN PASSWORD 'storm'"))
            .await
            .expect("create login");
        let storm = crate::support::connect(&s.db.url_as(&login, "storm")).await;
        let before = counter(&s, "pgrpc_schema_reloads_total").await;
        let started = Instant::now();
        // Pipelined on one connection, each NOTIFY is a transaction of its
        // own, so PostgreSQL delivers every one.
        let notes = (0..3000).map(|_| storm.execute("NOTIFY pgrst, 'reload schema'", &[]));
        futures_util::future::try_join_all(notes)
            .await
            .expect("a login granted nothing may NOTIFY");
        let burst = started.elapsed();
        // Wait until the reloads settle: the count stays still for 2 s.
        let mut last = counter(&s, "pgrpc_schema_reloads_total").await;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = counter(&s, "pgrpc_schema_reloads_total").await;
            if now == last {
                break;
            }
            last = now;
        }
        let reloads = last - before;
        println!("3000 notifications in {burst:?}: {reloads} reloads");
        assert!(reloads >= 1, "the burst was never seen");
        assert!(reloads <= 3, "{reloads} reloads for one burst of {burst:?}");
        let r = send(s.http.get(s.url("/rpc/version"))).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }

    // 1,000 anonymous junk paths leave the metrics' labels as they were: a
    // real function called for the first time afterwards is counted under
    // its own name, and junk shares the one label `other`.
    #[tokio::test]
    async fn junk_paths_cannot_blind_the_metrics() {
        use futures_util::StreamExt;
        let s = TestServer::start().await;
        let junk = futures_util::stream::iter(0..1000)
            .map(|i| {
                let path = if i % 2 == 0 {
                    format!("/rpc/junk_{i}")
                } else {
                    format!("/junk_{i}")
                };
                send(s.http.get(s.url(&path)))
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        assert!(junk.iter().all(|r| r.status == 404), "junk was found");
        let r = send(s.http.get(s.url("/rpc/version"))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let m = send(s.http.get(s.url("/metrics"))).await;
        assert!(
            m.text
                .contains(r#"pgrpc_requests_total{function="version",status="200"} 1"#),
            "{}",
            m.text
        );
        assert!(
            m.text
                .contains(r#"pgrpc_requests_total{function="other",status="404"} 1000"#),
            "{}",
            m.text
        );
        let labels: std::collections::BTreeSet<&str> = m
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("pgrpc_requests_total{function=\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert!(labels.len() <= 4, "labels grew with junk: {labels:?}");
    }

    /// The `/rpc/...` paths of an OpenAPI document.
    fn documented(doc: &Value) -> std::collections::BTreeSet<String> {
        doc["paths"]
            .as_object()
            .map(|paths| paths.keys().cloned().collect())
            .unwrap_or_default()
    }

    // GET / shows each caller only the functions its role may execute: an
    // anonymous caller sees version and sign_contract, with nothing of the
    // rest's descriptions; a service token sees more.
    #[tokio::test]
    async fn the_openapi_document_lists_only_what_the_caller_may_execute() {
        let s = TestServer::start().await;
        let anon = send(s.http.get(s.url("/"))).await;
        assert_eq!(anon.status, 200, "{}", anon.text);
        let seen = documented(&anon.body);
        // `/rpc`, the batch, lists the same functions as its calls.
        let expected: std::collections::BTreeSet<String> =
            ["/rpc", "/rpc/sign_contract", "/rpc/version"]
                .into_iter()
                .map(String::from)
                .collect();
        assert_eq!(seen, expected, "anonymous callers see {seen:?}");
        let service = send(
            s.http
                .get(s.url("/"))
                .bearer_auth(crate::support::service_token()),
        )
        .await;
        assert_eq!(service.status, 200, "{}", service.text);
        let more = documented(&service.body);
        assert!(
            more.len() > seen.len() && more.contains("/rpc/version"),
            "a service token sees {more:?}"
        );
        // The anonymous document says nothing of what it does not list.
        for path in more.difference(&seen) {
            assert!(!anon.text.contains(path.as_str()), "{path} leaked");
        }
    }

    // More header fields than MAX_HEADERS, or headers over 64 KiB, are
    // answered 431 and cost nothing more; the proxy answers the next call.
    #[tokio::test]
    async fn too_many_or_too_large_headers_are_431() {
        let s = TestServer::start().await;
        let mut many = String::from("GET /rpc/version HTTP/1.1\r\nHost: pgrpc\r\n");
        for i in 0..pgrpc::server::MAX_HEADERS + 1 {
            many.push_str(&format!("X-H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let big = format!(
            "GET /rpc/version HTTP/1.1\r\nHost: pgrpc\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70 * 1024)
        );
        for request in [many, big] {
            let mut sock = TcpStream::connect(host(&s)).await.expect("connect");
            let _ = sock.write_all(request.as_bytes()).await;
            let (text, _) = read_until_closed(&mut sock, Duration::from_secs(10)).await;
            assert_eq!(parse_raw(&text).0, 431, "{} bytes: {text}", request.len());
        }
        let r = send(s.http.get(s.url("/rpc/version"))).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

// (end of section: transport)

// ---------------------------------------------------------------------------
// Section: database (advisory locks, the api login rule)
// ---------------------------------------------------------------------------

/// A login of the database section's attacks, granted nothing at all.
async fn database_login_granted_nothing(
    db: &crate::support::TestDb,
    tag: &str,
) -> (String, tokio_postgres::Client) {
    let name = format!("{tag}_{}", db.name);
    db.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {name} LOGIN PASSWORD 'pw'"))
        .await
        .expect("create a login granted nothing");
    let client = crate::support::connect(&db.url_as(&name, "pw")).await;
    (name, client)
}

async fn database_drop_login(db: &crate::support::TestDb, name: &str) {
    db.superuser()
        .await
        .batch_execute(&format!("DROP OWNED BY {name}; DROP ROLE {name}"))
        .await
        .expect("drop login");
}

/// No function of pgrpc's schemas takes an advisory lock: any login may
/// take the same key (they need no privilege) and hold it, stalling every
/// caller that waits on it. Waits are on rows and tables that only the
/// core may lock.
#[tokio::test]
async fn no_function_of_the_core_takes_an_advisory_lock() {
    let db = crate::support::TestDb::new().await;
    let su = db.superuser().await;
    let found: Vec<String> = crate::support::db::query_column(
        &su,
        "SELECT p.oid::regprocedure::text FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname IN ('api', 'private', 'admin', 'pgrpc_http', 'pgrpc_guard') \
           AND p.prosrc ~* 'pg_(try_)?advisory_' ORDER BY 1",
        &[],
    )
    .await;
    let checked: i64 = crate::support::db::query_value(
        &su,
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname IN ('api', 'private', 'pgrpc_http') AND p.prolang <> 12",
        &[],
    )
    .await;
    assert!(checked > 50, "the core's functions are there: {checked}");
    assert_eq!(
        found,
        Vec::<String>::new(),
        "functions that take advisory locks"
    );
}

/// A login granted nothing holds the outbox's old advisory key of an aggregate and cannot take its new lock, while an anonymous sign_contract over HTTP still answers promptly.
#[tokio::test]
async fn a_login_granted_nothing_cannot_stall_an_anonymous_signature() {
    let s = crate::support::TestServer::start().await;
    let team = s
        .service_rpc(
            "create_team",
            serde_json::json!({"tenant_id": 18, "name": "T"}),
        )
        .await;
    assert_eq!(team.status, 200, "{}", team.text);
    let parent = s
        .service_rpc(
            "create_parent",
            serde_json::json!({"tenant_id": 18, "name": "P", "email": "p@example.com"}),
        )
        .await;
    assert_eq!(parent.status, 200, "{}", parent.text);
    let player = s
        .service_rpc(
            "create_player",
            serde_json::json!({"tenant_id": 18, "team_id": team.body["id"],
                               "name": "Kid", "parent_id": parent.body["id"]}),
        )
        .await;
    assert_eq!(player.status, 200, "{}", player.text);
    let player_id = player.body["id"].as_str().expect("a player id").to_string();

    let (name, login) = database_login_granted_nothing(&s.db, "lck").await;
    // The key private.outbox_emit locked until V17, held for the session.
    let key = format!("pgrpc_outbox:player:{player_id}");
    login
        .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&key])
        .await
        .expect("advisory locks need no privilege");

    let started = std::time::Instant::now();
    let signed = s
        .rpc(
            "sign_contract",
            None,
            serde_json::json!({"contract_token": player.body["contract_token"],
                               "signature_ref": "sig"}),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(signed.status, 200, "{}", signed.text);
    assert!(
        elapsed < std::time::Duration::from_secs(2),
        "the signature waited {elapsed:?} on a lock a stranger holds"
    );

    // The lock the emitters take now is out of the login's reach.
    for attempt in [
        "SELECT 1 FROM private.outbox_aggregate_locks FOR UPDATE",
        "LOCK TABLE private.outbox_aggregate_locks IN ROW SHARE MODE",
        "SELECT private.outbox_lock_aggregate('player', 'x')",
    ] {
        let err = login
            .batch_execute(&format!("BEGIN; {attempt}"))
            .await
            .expect_err(attempt);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{attempt}: {err}"
        );
        login.batch_execute("ROLLBACK").await.expect("rollback");
    }
    let su = s.db.superuser().await;
    let events = crate::support::db::count(
        &su,
        "SELECT count(*) FROM private.outbox WHERE event_type = 'contract.signed'",
    )
    .await;
    assert_eq!(events, 1, "one contract.signed event");
    drop(login);
    database_drop_login(&s.db, &name).await;
    assert_eq!(
        s.rpc("version", None, serde_json::json!({})).await.status,
        200
    );
}

/// A login granted nothing holds pgrpc migrate's old advisory key and cannot take its new lock, while pgrpc migrate still runs to the end.
#[tokio::test]
async fn a_login_granted_nothing_cannot_hold_up_pgrpc_migrate() {
    let db = crate::support::TestDb::new().await;
    let (name, login) = database_login_granted_nothing(&db, "mlk").await;
    // The session advisory lock src/migrate.rs took until V17 (0x0070_6772_7063).
    login
        .execute("SELECT pg_advisory_lock(482771890275)", &[])
        .await
        .expect("advisory locks need no privilege");
    let err = login
        .batch_execute(
            "BEGIN; LOCK TABLE information_schema.sql_features IN SHARE ROW EXCLUSIVE MODE",
        )
        .await
        .expect_err("only a superuser takes the migration lock");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    login.batch_execute("ROLLBACK").await.expect("rollback");

    let started = std::time::Instant::now();
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        pgrpc::migrate::run(&db.url()),
    )
    .await
    .expect("pgrpc migrate is not held up by a stranger's lock")
    .expect("pgrpc migrate succeeds");
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(login);
    database_drop_login(&db, &name).await;
}

/// While a login holds pgrpc_api (directly or through a NOLOGIN role), pgrpc migrate and every superuser DDL are refused, and the guard's report names the login and its chain.
#[tokio::test]
async fn a_login_holding_pgrpc_api_stops_migrate_and_superuser_ddl() {
    let db = crate::support::TestDb::new().await;
    let su = db.superuser().await;
    let (group, direct, via) = (
        format!("apigrp_{}", db.name),
        format!("apidir_{}", db.name),
        format!("apivia_{}", db.name),
    );
    // Roles are cluster-wide: the memberships stay inside this transaction,
    // invisible to the tests running beside it (and to their DDL).
    for (login, grant) in [
        (
            &direct,
            format!("CREATE ROLE {direct} LOGIN IN ROLE pgrpc_api"),
        ),
        (
            &via,
            format!(
                "CREATE ROLE {group} NOLOGIN IN ROLE pgrpc_api; \
                 CREATE ROLE {via} LOGIN IN ROLE {group}"
            ),
        ),
    ] {
        su.batch_execute(&format!("BEGIN; {grant}"))
            .await
            .expect("a login holding pgrpc_api");
        let report: Vec<String> = crate::support::db::query_column(
            &su,
            "SELECT role || ' ' || member || ' ' || via FROM pgrpc_guard.forbidden_memberships()",
            &[],
        )
        .await;
        let chain = if login == &direct {
            format!("pgrpc_api {direct} {direct} -> pgrpc_api")
        } else {
            format!("pgrpc_api {via} {via} -> {group} -> pgrpc_api")
        };
        assert_eq!(report, vec![chain], "the guard reports the login");

        // pgrpc migrate's check, before it applies anything.
        su.batch_execute("SAVEPOINT before")
            .await
            .expect("savepoint");
        let refused = pgrpc::migrate::refuse_forbidden_memberships(&su)
            .await
            .expect_err("pgrpc migrate refuses");
        let text = refused.to_string();
        assert!(
            text.contains("api_role_held_by_login") && text.contains(login.as_str()),
            "{text}"
        );
        su.batch_execute("ROLLBACK TO before")
            .await
            .expect("rollback to");

        // Any superuser DDL, so a migration stops at its first statement.
        let err = su
            .batch_execute("CREATE TABLE public.while_an_api_login_exists (x int)")
            .await
            .expect_err("superuser DDL while a login holds pgrpc_api");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{err}"
        );
        assert_eq!(crate::support::db::message(&err), "api_role_held_by_login");
        su.batch_execute("ROLLBACK TO before")
            .await
            .expect("rollback to");

        // A role that cannot log in may hold it: the rule is about logins.
        su.batch_execute(&format!(
            "ALTER ROLE {login} NOLOGIN; CREATE TABLE public.once_it_cannot_log_in (x int)"
        ))
        .await
        .expect("superuser DDL once no login holds pgrpc_api");
        su.batch_execute("ROLLBACK").await.expect("rollback");
    }
    pgrpc::migrate::refuse_forbidden_memberships(&su)
        .await
        .expect("nothing to refuse once the memberships are gone");
}

// (end of section: database)

// ---------------------------------------------------------------------------
// Section: commit path (idempotency rows, response settings before COMMIT)
// ---------------------------------------------------------------------------

/// Fixtures of the commit-path attacks: a writing function that echoes its
/// input into `response.headers` and `response.status`, one that raises
/// `SQLSTATE 'PGRST'` with a header and status from its input, and one that
/// always fails after writing.
const COMMIT_PATH_FIXTURES: &str = r#"
CREATE TABLE public.cp_writes (id serial PRIMARY KEY, note text NOT NULL);
GRANT SELECT, INSERT ON public.cp_writes TO pgrpc_anon, pgrpc_user, pgrpc_service;
GRANT USAGE ON SEQUENCE public.cp_writes_id_seq TO pgrpc_anon, pgrpc_user, pgrpc_service;
CREATE FUNCTION api.cp_write(note text, name text DEFAULT NULL, value text DEFAULT NULL,
                             status text DEFAULT NULL) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  INSERT INTO public.cp_writes (note) VALUES (cp_write.note);
  IF cp_write.name IS NOT NULL THEN
    PERFORM set_config('response.headers',
                       json_build_array(json_build_object(cp_write.name, cp_write.value))::text, true);
  END IF;
  IF cp_write.status IS NOT NULL THEN
    PERFORM set_config('response.status', cp_write.status, true);
  END IF;
  RETURN NEXT cp_write.note;
END $$;
CREATE FUNCTION api.cp_raise(name text, status int) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  INSERT INTO public.cp_writes (note) VALUES ('raised');
  RAISE SQLSTATE 'PGRST' USING
    MESSAGE = '{"code":"cp","message":"refused","details":null,"hint":null}',
    DETAIL = json_build_object('status', cp_raise.status,
                               'headers', json_build_object(cp_raise.name, '5'))::text;
END $$;
CREATE FUNCTION api.cp_raise_state(state text) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  EXECUTE format('DO $d$ BEGIN RAISE SQLSTATE %L USING MESSAGE = %L; END $d$', state, 'raised');
END $$;
CREATE FUNCTION api.cp_fail(note text) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  INSERT INTO public.cp_writes (note) VALUES (cp_fail.note);
  RAISE SQLSTATE 'PT409' USING MESSAGE = 'always_fails';
END $$;
"#;

/// A fixture server whose pool has one connection, so that a call's first
/// run takes the path that prepares its statement and the next one the
/// pipelined path.
async fn commit_path_server(prepared: bool) -> crate::support::TestServer {
    crate::support::TestServer::start_with_sql(COMMIT_PATH_FIXTURES, |c| {
        c.pool_size = 1;
        c.prepared_statements = prepared;
        c.tx_end = pgrpc::prefer::TxEnd::CommitAllowOverride;
    })
    .await
}

/// Rows the fixture functions wrote with this note.
async fn cp_written(server: &crate::support::TestServer, note: &str) -> i64 {
    let su = server.db.superuser().await;
    crate::support::db::query_value(
        &su,
        "SELECT count(*) FROM public.cp_writes WHERE note = $1",
        &[&note],
    )
    .await
}

/// Rows stored under `Idempotency-Key`s.
async fn stored_keys(server: &crate::support::TestServer) -> i64 {
    let su = server.db.superuser().await;
    crate::support::db::query_value(
        &su,
        "SELECT count(*) FROM private.http_idempotency_keys",
        &[],
    )
    .await
}

/// One way to send a writing call: headers of the request, and a label.
type CallShape = (&'static str, Vec<(&'static str, String)>);

/// Every transaction path of a writing call: plain (its first run prepares
/// the statement, the next is pipelined), under an `Idempotency-Key`,
/// singular, counted, with `max-affected`, and `Prefer: tx=rollback`.
fn every_write_path() -> Vec<CallShape> {
    let key = || ("idempotency-key", uuid::Uuid::new_v4().to_string());
    vec![
        ("plain, preparing", vec![]),
        ("plain, pipelined", vec![]),
        ("idempotency key", vec![key()]),
        (
            "singular",
            vec![("accept", "application/vnd.pgrst.object+json".into())],
        ),
        ("counted", vec![("prefer", "count=exact".into())]),
        (
            "max-affected",
            vec![("prefer", "handling=strict, max-affected=5".into())],
        ),
        ("tx=rollback", vec![("prefer", "tx=rollback".into())]),
    ]
}

/// POSTs `cp_write` with `body`, as a service with a sub, with `extra` headers.
async fn cp_post(
    server: &crate::support::TestServer,
    body: &serde_json::Value,
    extra: &[(&str, String)],
) -> crate::support::Resp {
    let t =
        crate::support::token(serde_json::json!({"role": "pgrpc_service", "sub": "commit-path"}));
    let mut req = server
        .http
        .post(server.url("/rpc/cp_write"))
        .bearer_auth(t)
        .json(body);
    for (name, value) in extra {
        req = req.header(*name, value.as_str());
    }
    crate::support::send(req).await
}

/// Sends `body` through every write path and asserts `code` and nothing written.
async fn assert_refused_on_every_path(
    server: &crate::support::TestServer,
    body: serde_json::Value,
    code: &str,
) {
    let note = body["note"].as_str().unwrap_or_default().to_string();
    for (path, extra) in every_write_path() {
        let r = cp_post(server, &body, &extra).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text);
        assert_eq!(r.error_code(), code, "{path}: {}", r.text);
        assert_eq!(
            cp_written(server, &note).await,
            0,
            "{path}: the write was committed"
        );
    }
    assert_eq!(
        stored_keys(server).await,
        0,
        "a refused call stored its key"
    );
    // The proxy still takes writes on the same connection.
    let ok = cp_post(
        server,
        &serde_json::json!({"note": format!("{note}-after")}),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(cp_written(server, &format!("{note}-after")).await, 1);
}

/// A header value echoed from input with a control character is 500 PGRST111 on every path, and the write is rolled back, prepared or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_header_value_cannot_be_sent_is_rolled_back_on_every_path() {
    for prepared in [true, false] {
        let server = commit_path_server(prepared).await;
        let body =
            serde_json::json!({"note": "ctl", "name": "X-Echo", "value": "a\r\nSet-Cookie: s=1"});
        assert_refused_on_every_path(&server, body, "PGRST111").await;
        let body = serde_json::json!({"note": "name", "name": "Bad Name", "value": "1"});
        assert_refused_on_every_path(&server, body, "PGRST111").await;
    }
}

/// A status that is not a number is 500 PGRST112 on every path, and the write is rolled back, prepared or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_status_cannot_be_sent_is_rolled_back_on_every_path() {
    for prepared in [true, false] {
        let server = commit_path_server(prepared).await;
        let body = serde_json::json!({"note": "st", "status": "2O1"});
        assert_refused_on_every_path(&server, body, "PGRST112").await;
    }
}

/// Sends one HTTP/1.1 request on a kept-alive socket and reads one response
/// framed by its Content-Length: (status, lowercased head, body).
async fn exchange(stream: &mut tokio::net::TcpStream, request: &str) -> (u16, String, String) {
    tokio::io::AsyncWriteExt::write_all(stream, request.as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(stream, &mut chunk),
        )
        .await
        .expect("response in time")
        .expect("read");
        assert!(
            n > 0,
            "the connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(stream, &mut chunk)
            .await
            .expect("read body");
        assert!(n > 0, "the body was cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf.len(), head_end + length, "bytes past the declared body");
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    (status, head, body)
}

/// A keep-alive POST of `function` with a JSON body, as the service.
fn raw_post(
    server: &crate::support::TestServer,
    function: &str,
    body: &serde_json::Value,
) -> String {
    let body = body.to_string();
    let t =
        crate::support::token(serde_json::json!({"role": "pgrpc_service", "sub": "commit-path"}));
    format!(
        "POST /rpc/{function} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.base_url.trim_start_matches("http://"),
        body.len()
    )
}

/// A function cannot set framing or hop-by-hop headers (any case): 500 PGRST111 before COMMIT, nothing written, and the kept-alive connection answers the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_headers_from_a_function_are_refused_before_commit() {
    let server = commit_path_server(true).await;
    let mut stream = tokio::net::TcpStream::connect(server.base_url.trim_start_matches("http://"))
        .await
        .expect("connect");
    for name in [
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "Keep-Alive",
        "UPGRADE",
        "TE",
        "Trailer",
    ] {
        let value = match name {
            "Content-Length" => "3",
            "transfer-encoding" => "chunked",
            "Connection" => "close",
            "UPGRADE" => "websocket",
            _ => "x",
        };
        let body = serde_json::json!({"note": name, "name": name, "value": value});
        let (status, head, text) =
            exchange(&mut stream, &raw_post(&server, "cp_write", &body)).await;
        assert_eq!(status, 500, "{name}: {head}{text}");
        assert!(text.contains("PGRST111"), "{name}: {text}");
        assert_eq!(
            cp_written(&server, name).await,
            0,
            "{name}: the write was committed"
        );
    }
    let body = serde_json::json!({"note": "next"});
    let (status, _, text) = exchange(&mut stream, &raw_post(&server, "cp_write", &body)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(cp_written(&server, "next").await, 1);
}

/// A function cannot answer a status outside 200-599 (101 switches protocols, 1xx announce another answer): 500 PGRST112 before COMMIT, nothing written, and the connection still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_outside_200_to_599_are_refused_before_commit() {
    let server = commit_path_server(true).await;
    let mut stream = tokio::net::TcpStream::connect(server.base_url.trim_start_matches("http://"))
        .await
        .expect("connect");
    for status in ["101", "100", "103", "199", "600", "99"] {
        let note = format!("status-{status}");
        let body = serde_json::json!({"note": note, "status": status});
        let (got, head, text) = exchange(&mut stream, &raw_post(&server, "cp_write", &body)).await;
        assert_eq!(got, 500, "{status}: {head}{text}");
        assert!(text.contains("PGRST112"), "{status}: {text}");
        assert_eq!(
            cp_written(&server, &note).await,
            0,
            "{status}: the write was committed"
        );
    }
    let body = serde_json::json!({"note": "created", "status": "201"});
    let (status, _, text) = exchange(&mut stream, &raw_post(&server, "cp_write", &body)).await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(cp_written(&server, "created").await, 1);
}

/// A raised error cannot carry framing headers or a 1xx status either (RAISE SQLSTATE 'PGRST' and 'PT101'): the answer stays a valid, framed 500, and the connection still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_error_cannot_break_framing() {
    let server = commit_path_server(true).await;
    let mut stream = tokio::net::TcpStream::connect(server.base_url.trim_start_matches("http://"))
        .await
        .expect("connect");
    let cases = [
        (
            serde_json::json!({"name": "Content-Length", "status": 400}),
            500,
            "PGRST111",
        ),
        (
            serde_json::json!({"name": "Transfer-Encoding", "status": 400}),
            500,
            "PGRST111",
        ),
        (
            serde_json::json!({"name": "X-Fine", "status": 101}),
            500,
            "PGRST112",
        ),
        (
            serde_json::json!({"name": "X-Fine", "status": 103}),
            500,
            "PGRST112",
        ),
        (
            serde_json::json!({"name": "X-Fine", "status": 418}),
            418,
            "cp",
        ),
    ];
    for (body, want, code) in cases {
        let (status, head, text) =
            exchange(&mut stream, &raw_post(&server, "cp_raise", &body)).await;
        assert_eq!(status, want, "{body}: {head}{text}");
        assert!(
            text.contains(&format!("\"code\":\"{code}\"")),
            "{body}: {text}"
        );
    }
    for state in ["PT101", "PT100", "PT199"] {
        let body = serde_json::json!({"state": state});
        let (status, head, text) =
            exchange(&mut stream, &raw_post(&server, "cp_raise_state", &body)).await;
        assert_eq!(status, 500, "{state}: {head}{text}");
    }
    assert_eq!(cp_written(&server, "raised").await, 0);
    let (status, _, text) = exchange(
        &mut stream,
        &raw_post(&server, "cp_write", &serde_json::json!({"note": "ok"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

/// The SQL check run before COMMIT and the proxy's own parse agree on which settings can be sent, value by value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_before_commit_agrees_with_what_the_proxy_can_send() {
    let db = crate::support::TestDb::new().await;
    let su = db.superuser().await;
    let headers = [
        r#"[{"X-A": "1"}]"#,
        r#"[{"X-A": "tab\tand é"}]"#,
        r#"[{"X-A": "a\nb"}]"#,
        r#"[{"X-A": "a\u007fb"}]"#,
        r#"[{"X-A": "a\u0001b"}]"#,
        r#"[{"X-A": "a\u0000b"}]"#,
        r#"[{"X-A": {"nested": "a\nb"}}]"#,
        r#"[{"X-A": {"nested": "a\u007f"}}]"#,
        r#"[{"X-A": 12.5}, {"X-B": null}, {"X-C": true}]"#,
        r#"[{"X-A": "bad\u0001", "X-A": "good"}]"#,
        r#"[{"Bad Name": "1"}]"#,
        r#"[{"": "1"}]"#,
        r#"[{"x(y)": "1"}]"#,
        r#"[{"!#$%&'*+-.^_`|~9aZ": "1"}]"#,
        r#"[{"é": "1"}]"#,
        r#"[{"Content-Length": "3"}]"#,
        r#"[{"cOnNeCtIoN": "close"}]"#,
        r#"[{"te": "trailers"}, {"X-B": "1"}]"#,
        r#"[{"Trailers": "x"}]"#,
        r#"[]"#,
        r#"[{}]"#,
        r#"{"X-A": "1"}"#,
        r#"["X-A"]"#,
        r#"[[{"X-A": "1"}]]"#,
        r#"not json"#,
        r#"null"#,
        "",
    ];
    let statuses = [
        "200",
        "599",
        "201",
        " 201 ",
        "\t404\n",
        "+404",
        "0200",
        "00000000000000000204",
        "199",
        "600",
        "101",
        "100",
        "65736",
        "99999999999999999999",
        "-200",
        "2 00",
        "2O1",
        "++200",
        "",
        " ",
        "\u{a0}200",
        "١٢٣",
    ];
    let check =
        |h: &str, s: &str| -> bool { pgrpc::response_settings::check(Some(h), Some(s)).is_ok() };
    let mut cases: Vec<(&str, &str)> = headers.iter().map(|h| (*h, "")).collect();
    cases.extend(statuses.iter().map(|s| ("", *s)));
    for (h, s) in cases {
        su.batch_execute("BEGIN").await.expect("begin");
        su.query(
            "SELECT set_config('response.headers', $1, true), set_config('response.status', $2, true)",
            &[&h, &s],
        )
        .await
        .expect("set");
        let sql_ok = su
            .query(pgrpc::response_settings::CHECK_SQL, &[])
            .await
            .is_ok();
        su.batch_execute("ROLLBACK").await.expect("rollback");
        assert_eq!(sql_ok, check(h, s), "headers {h:?}, status {s:?}");
    }
}

/// Three hundred anonymous read-only calls with fresh Idempotency-Keys store no row, and neither do a user's: a call that cannot write runs and keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_calls_with_fresh_keys_store_nothing() {
    let server = commit_path_server(true).await;
    let calls = (0..300).map(|_| {
        let req = server
            .http
            .post(server.url("/rpc/version"))
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&serde_json::json!({}));
        crate::support::send(req)
    });
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("idempotent-replayed"), None);
    }
    let user = crate::support::token(
        serde_json::json!({"role": "pgrpc_user", "sub": "u-1", "org_id": uuid::Uuid::new_v4()}),
    );
    for _ in 0..3 {
        let r = crate::support::send(
            server
                .http
                .post(server.url("/rpc/version"))
                .bearer_auth(&user)
                .header("idempotency-key", "same-key")
                .json(&serde_json::json!({})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("idempotent-replayed"), None, "a read was replayed");
    }
    assert_eq!(stored_keys(&server).await, 0);
}

/// Anonymous keys are kept only for committed writes: reads, failing writes and refused contract signings with fresh keys store nothing; one committed anonymous write stores one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_keys_are_kept_only_for_committed_writes() {
    let server = commit_path_server(true).await;
    let anon_post = |function: &str, body: serde_json::Value| {
        crate::support::send(
            server
                .http
                .post(server.url(&format!("/rpc/{function}")))
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .json(&body),
        )
    };
    for i in 0..100 {
        let r = anon_post("cp_fail", serde_json::json!({"note": format!("fail-{i}")})).await;
        assert_eq!(r.status, 409, "{}", r.text);
        let r = anon_post(
            "sign_contract",
            serde_json::json!({"contract_token": format!("forged-{i}"), "signature_ref": "sig"}),
        )
        .await;
        assert_eq!(r.status, 404, "{}", r.text);
        let r = anon_post("version", serde_json::json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(
        stored_keys(&server).await,
        0,
        "calls that committed nothing stored keys"
    );
    let r = anon_post("cp_write", serde_json::json!({"note": "anon-write"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(stored_keys(&server).await, 1);
}

// (end of section: commit path)

// ---- guard: CREATEROLE logins, migrate's lock waits, module privileges, response writes ----

mod guard {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_postgres::error::SqlState;

    use crate::support::db::{message, query_column, query_value};
    use crate::support::{TestDb, TestServer};
    use pgrpc::migrate::{self, MigrateError, Options};

    /// On PostgreSQL 15 a login with CREATEROLE (or one that may SET ROLE to
    /// a role with it) grants itself pgrpc_api and pgrpc_migrator and
    /// revokes them again, which nothing can refuse; what is refused is
    /// every superuser DDL and pgrpc migrate for as long as it may, and the
    /// guard's report names it and its chain.
    #[tokio::test]
    async fn a_createrole_login_stops_migrate_and_superuser_ddl_though_it_revoked_what_it_took() {
        let db = TestDb::new().await;
        let su = db.superuser().await;
        let (direct, group, via) = (
            format!("crdir_{}", db.name),
            format!("crgrp_{}", db.name),
            format!("crvia_{}", db.name),
        );
        // Roles are cluster-wide: everything stays inside this transaction,
        // invisible to the tests running beside it.
        for (login, create, chain) in [
            (
                &direct,
                format!("CREATE ROLE {direct} LOGIN CREATEROLE"),
                format!("CREATEROLE {direct} {direct} (CREATEROLE)"),
            ),
            (
                &via,
                format!(
                    "CREATE ROLE {group} NOLOGIN CREATEROLE; CREATE ROLE {via} LOGIN IN ROLE {group}"
                ),
                format!("CREATEROLE {via} {via} -> {group} (CREATEROLE)"),
            ),
        ] {
            su.batch_execute(&format!("BEGIN; {create}"))
                .await
                .expect("a CREATEROLE login");
            // What the database cannot refuse: the role grants itself both
            // roles (as itself: SET ROLE), holds them, and revokes them.
            let acting = if login == &direct {
                direct.clone()
            } else {
                group.clone()
            };
            su.batch_execute(&format!(
                "SET ROLE {acting}; GRANT pgrpc_api, pgrpc_migrator TO {login}"
            ))
            .await
            .expect("CREATEROLE grants any role but a superuser on PostgreSQL 15");
            let held: bool = query_value(
                &su,
                "SELECT pg_has_role($1, 'pgrpc_api', 'USAGE') AND pg_has_role($1, 'pgrpc_migrator', 'USAGE')",
                &[&login.as_str()],
            )
            .await;
            assert!(held, "{login} holds both roles");
            su.batch_execute(&format!(
                "REVOKE pgrpc_api, pgrpc_migrator FROM {login}; RESET ROLE"
            ))
            .await
            .expect("and revokes them again");

            // What is refused: the report still names the login ...
            let report: Vec<String> = query_column(
                &su,
                "SELECT role || ' ' || member || ' ' || via FROM pgrpc_guard.forbidden_memberships()",
                &[],
            )
            .await;
            assert_eq!(report, vec![chain], "the guard reports the login");
            // ... pgrpc migrate's check refuses before anything is applied ...
            su.batch_execute("SAVEPOINT before")
                .await
                .expect("savepoint");
            let refused = migrate::refuse_forbidden_memberships(&su)
                .await
                .expect_err("pgrpc migrate refuses");
            let text = refused.to_string();
            assert!(
                text.contains("createrole_held_by_login") && text.contains(login.as_str()),
                "{text}"
            );
            su.batch_execute("ROLLBACK TO before")
                .await
                .expect("rollback to");
            // ... and so does any superuser DDL.
            let err = su
                .batch_execute("CREATE TABLE public.while_a_createrole_login_exists (x int)")
                .await
                .expect_err("superuser DDL while a CREATEROLE login exists");
            assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
            assert_eq!(message(&err), "createrole_held_by_login");
            su.batch_execute("ROLLBACK TO before")
                .await
                .expect("rollback to");
            // Without CREATEROLE, nothing is refused.
            su.batch_execute(&format!(
                "ALTER ROLE {acting} NOCREATEROLE; CREATE TABLE public.once_it_cannot (x int)"
            ))
            .await
            .expect("superuser DDL once no login may create roles");
            su.batch_execute("ROLLBACK").await.expect("rollback");
        }
        migrate::refuse_forbidden_memberships(&su)
            .await
            .expect("nothing to refuse once the roles are gone");
    }

    /// A run of pgrpc migrate behind a transaction that holds what it must
    /// lock gives up within PGRPC_MIGRATE_LOCK_TIMEOUT_MS with an error that
    /// says so, for its migration lock and for a module's view alike, and
    /// runs once the transaction ends.
    #[tokio::test]
    async fn pgrpc_migrate_behind_a_long_transaction_gives_up_within_its_lock_timeout() {
        let db = TestDb::new().await;
        let options = Options {
            lock_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let run = || async {
            let started = Instant::now();
            let result = tokio::time::timeout(
                Duration::from_secs(20),
                migrate::run_with(&db.url(), options),
            )
            .await
            .expect("pgrpc migrate gives up instead of waiting forever");
            (result, started.elapsed())
        };

        // 1. Another run (or any superuser transaction) holds the lock.
        let holder = db.superuser().await;
        holder
            .batch_execute(
                "BEGIN; LOCK TABLE information_schema.sql_features IN SHARE ROW EXCLUSIVE MODE",
            )
            .await
            .expect("take the migration lock");
        let (result, took) = run().await;
        let err = result.expect_err("the lock is held");
        assert!(matches!(err, MigrateError::LockTimeout { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("PGRPC_MIGRATE_LOCK_TIMEOUT_MS")
                && text.contains("500 ms")
                && text.contains("information_schema.sql_features"),
            "{text}"
        );
        assert!(took < Duration::from_secs(5), "gave up after {took:?}");
        holder.batch_execute("COMMIT").await.expect("release");

        // 2. A reader of a module's view holds it while the module must be
        //    applied again (CREATE OR REPLACE VIEW locks the view).
        let su = db.superuser().await;
        su.batch_execute(
            "UPDATE pgrpc_guard.module_checksums SET checksum = 'stale' WHERE module = 'outbox'",
        )
        .await
        .expect("mark the outbox module changed");
        holder
            .batch_execute("BEGIN; SELECT count(*) FROM admin.outbox_health")
            .await
            .expect("read the view in an open transaction");
        let (result, took) = run().await;
        let err = result.expect_err("the view is held");
        let text = err.to_string();
        assert!(
            matches!(err, MigrateError::LockTimeout { .. })
                && text.contains("sql/modules/outbox.sql")
                && text.contains("PGRPC_MIGRATE_LOCK_TIMEOUT_MS"),
            "{text}"
        );
        assert!(took < Duration::from_secs(5), "gave up after {took:?}");
        holder.batch_execute("COMMIT").await.expect("release");

        let (result, _) = run().await;
        let report = result.expect("pgrpc migrate runs once nothing holds its locks");
        assert_eq!(report.modules, vec!["outbox"]);
    }

    /// Only its owner has any privilege on private.outbox_aggregate_locks:
    /// an operator or owner login cannot read it, so it cannot hold even
    /// ACCESS SHARE on it in front of a migration and the emitters queued
    /// behind that migration.
    #[tokio::test]
    async fn nobody_but_its_owner_may_touch_the_outbox_lock_table() {
        let db = TestDb::new().await;
        let su = db.superuser().await;
        let grantees: Vec<String> = query_column(
            &su,
            "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END \
             FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
             WHERE c.oid = 'private.outbox_aggregate_locks'::regclass AND a.grantee <> c.relowner",
            &[],
        )
        .await;
        assert_eq!(
            grantees,
            Vec::<String>::new(),
            "privileges beyond the owner"
        );
        for role in ["pgrpc_admin", "pgrpc_owner", "pgrpc_service"] {
            let client = db.as_role(role).await;
            let err = client
                .batch_execute("BEGIN; SELECT count(*) FROM private.outbox_aggregate_locks")
                .await
                .expect_err(role);
            assert_eq!(
                err.code(),
                Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                "{role}: {err}"
            );
        }
    }

    async fn holds_a_hand_made_grant(su: &tokio_postgres::Client, login: &str) -> bool {
        query_value::<bool>(
            su,
            "SELECT has_function_privilege($1, 'private.outbox_lock_aggregate(text,text)', 'EXECUTE') \
             OR has_table_privilege($1, 'admin.outbox_health', 'SELECT') \
             OR has_function_privilege($1, 'private.outbox_emit(text,text,text,jsonb)', 'EXECUTE')",
            &[&login],
        )
        .await
    }

    /// A grant made by hand on a module's private helper (and on its view)
    /// is gone after the module is applied again; the declared grants stay,
    /// and the privileges are exactly those before the hand-made grant.
    #[tokio::test]
    async fn applying_a_module_again_revokes_grants_made_by_hand() {
        let db = TestDb::new().await;
        let su = db.superuser().await;
        let login = format!("handgrant_{}", db.name);
        const ACLS: &str = "SELECT (SELECT proacl::text FROM pg_proc \
               WHERE oid = 'private.outbox_lock_aggregate(text,text)'::regprocedure) \
             || ' ' || (SELECT relacl::text FROM pg_class WHERE oid = 'admin.outbox_health'::regclass)";
        let declared: String = query_value(&su, ACLS, &[]).await;
        su.batch_execute(&format!(
            "CREATE ROLE {login} LOGIN PASSWORD 'pw'; \
             GRANT EXECUTE ON FUNCTION private.outbox_lock_aggregate(text, text) TO {login} WITH GRANT OPTION; \
             GRANT SELECT ON admin.outbox_health TO {login}; \
             GRANT EXECUTE ON FUNCTION private.outbox_emit(text, text, text, jsonb) TO PUBLIC"
        ))
        .await
        .expect("grants by hand");
        assert!(
            holds_a_hand_made_grant(&su, &login).await,
            "the hand-made grants hold"
        );
        su.batch_execute(
            "UPDATE pgrpc_guard.module_checksums SET checksum = 'stale' WHERE module = 'outbox'",
        )
        .await
        .expect("mark the outbox module changed");
        let report = migrate::run(&db.url()).await.expect("pgrpc migrate");
        assert_eq!(report.modules, vec!["outbox"]);
        assert!(
            !holds_a_hand_made_grant(&su, &login).await,
            "a hand-made grant survived the module"
        );
        let after: String = query_value(&su, ACLS, &[]).await;
        assert_eq!(after, declared, "exactly the declared privileges");
        let api_may: bool = query_value(
            &su,
            "SELECT has_function_privilege('pgrpc_api', 'private.outbox_lock_aggregate(text,text)', 'EXECUTE')",
            &[],
        )
        .await;
        assert!(api_may, "the declared grant stays");
        su.batch_execute(&format!("DROP ROLE {login}"))
            .await
            .expect("the login holds nothing any more");
    }

    const BIG_RESPONSE: &str = r#"
CREATE FUNCTION api.guard_big() RETURNS text
LANGUAGE sql STABLE SET statement_timeout = '60s'
AS $$ SELECT repeat('x', 16 * 1024 * 1024) $$;
CREATE FUNCTION api.guard_small() RETURNS int
LANGUAGE sql STABLE AS $$ SELECT 1 $$;
"#;

    /// A client that asks for a 16 MiB answer (four times the largest send
    /// buffer Linux gives a socket) and stops reading holds its
    /// connection no longer than PGRPC_RESPONSE_WRITE_TIMEOUT_MS: with one
    /// connection slot, the next client is served soon after.
    #[tokio::test]
    async fn a_client_that_stops_reading_a_large_response_frees_its_slot() {
        let server = TestServer::start_with_sql(BIG_RESPONSE, |c| {
            c.max_connections = 1;
            c.response_write_timeout = Duration::from_millis(700);
        })
        .await;
        let addr: std::net::SocketAddr = server
            .base_url
            .trim_start_matches("http://")
            .parse()
            .expect("an address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("a small buffer");
        let mut stalled = socket.connect(addr).await.expect("connect");
        stalled
            .write_all(b"GET /rpc/guard_big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        // The answer starts; then this client reads nothing more.
        let mut first = [0u8; 512];
        stalled
            .read_exact(&mut first)
            .await
            .expect("the answer starts");
        let first = String::from_utf8_lossy(&first);
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");

        let started = Instant::now();
        let mut next = tokio::net::TcpStream::connect(addr).await.expect("connect");
        next.write_all(b"GET /rpc/guard_small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), next.read_to_end(&mut answer))
            .await
            .expect("the next client is served once the stalled one is cut off")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "served after {:?}",
            started.elapsed()
        );
        // The stalled connection was closed: draining it ends (EOF or reset)
        // well short of 16 MiB.
        let mut drained = 0usize;
        let mut chunk = vec![0u8; 65536];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => drained += n,
                Err(_) => panic!("the stalled connection is still open"),
            }
        }
        assert!(drained < 16 * 1024 * 1024, "{drained} bytes");
    }
}

// ---- trace: trace context headers ----

mod trace {
    use serde_json::json;

    use crate::observability::{traced_post, FIXTURES};
    use crate::support::TestServer;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // A 10 KB traceparent, of a valid one's shape stretched or of one digit
    // repeated, is not parsed past its 55 bytes: the call succeeds under a
    // new trace, which is what the outbox stores.
    #[tokio::test]
    async fn a_ten_kilobyte_traceparent_is_replaced_and_the_call_succeeds() {
        let server = TestServer::start_with_sql(FIXTURES, |_| {}).await;
        let stretched = format!("{CALLER}{}", "-01".repeat(3_400));
        for huge in ["0".repeat(10 * 1024), stretched] {
            let r = traced_post(
                &server,
                "trace_emit",
                json!({}),
                None,
                &[("traceparent", &huge)],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let sent = r.body["traceparent"].as_str().expect("a new traceparent");
            assert_eq!(sent.len(), 55);
            assert_ne!(r.body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
            let su = server.db.superuser().await;
            let id = r.body["ids"][0].as_i64().expect("id");
            let stored: Option<String> = su
                .query_one(
                    "SELECT traceparent FROM private.outbox WHERE id = $1",
                    &[&id],
                )
                .await
                .expect("row")
                .get(0);
            assert_eq!(stored.as_deref(), Some(sent));
        }
    }

    /// The `n`th of the keys a, b, ..., z, aa, ab, ...: short and distinct.
    fn short_key(mut n: usize) -> String {
        let mut key = Vec::new();
        loop {
            key.push(b'a' + (n % 26) as u8);
            n /= 26;
            if n == 0 {
                break;
            }
            n -= 1;
        }
        key.reverse();
        String::from_utf8(key).expect("ascii")
    }

    // A tracestate of 10,000 distinct members (59 KB, in one field or spread
    // over 50, within the 64 KiB request head) is dropped whole at the
    // 32-member, 512-byte bound; the caller's trace is kept, the call
    // succeeds, and SQL sees no tracestate.
    #[tokio::test]
    async fn a_ten_thousand_member_tracestate_is_dropped_and_the_call_succeeds() {
        let server = TestServer::start_with_sql(FIXTURES, |_| {}).await;
        let members: Vec<String> = (0..10_000).map(|i| format!("{}=v", short_key(i))).collect();
        assert_eq!(
            members
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            10_000
        );
        let one_field = members.join(",");
        let r = traced_post(
            &server,
            "trace_emit",
            json!({}),
            None,
            &[("traceparent", CALLER), ("tracestate", &one_field)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r.body["tracestate"], serde_json::Value::Null);

        let fields: Vec<String> = members.chunks(200).map(|c| c.join(",")).collect();
        let mut headers: Vec<(&str, &str)> = vec![("traceparent", CALLER)];
        headers.extend(fields.iter().map(|f| ("tracestate", f.as_str())));
        let r = traced_post(&server, "trace_emit", json!({}), None, &headers).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["tracestate"], serde_json::Value::Null);
        let su = server.db.superuser().await;
        let id = r.body["ids"][0].as_i64().expect("id");
        let stored: Option<String> = su
            .query_one(
                "SELECT tracestate FROM private.outbox WHERE id = $1",
                &[&id],
            )
            .await
            .expect("row")
            .get(0);
        assert_eq!(stored, None);
    }
}

// (end of section: trace)

// ---- supabase-js: apikey, API keys, Idempotency-Key strings, CORS reflection ----

mod supabase {
    use serde_json::json;

    use crate::support::{send, service_token, Resp, TestServer};

    async fn lives(s: &TestServer) {
        let r = send(s.http.get(s.url("/rpc/version"))).await;
        assert_eq!(r.status, 200, "the proxy no longer answers: {}", r.text);
    }

    fn refused(r: &Resp, status: u16, code: &str) {
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.error_code(), code, "{}", r.text);
    }

    /// Hostile `apikey` values: past the 16 KiB bound, non-ASCII bytes,
    /// padding around a real key's near misses, forged JWT shapes and a
    /// thousand random keys in a row: each is 401 PGRST301, none runs as
    /// anyone, and the proxy lives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_apikeys_are_401_and_the_proxy_lives() {
        let key = "sb_secret_attack_target_key_0123456789";
        let path = std::env::temp_dir().join(format!("pgrpc-keys-{}", uuid::Uuid::new_v4()));
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(key.as_bytes()))
        };
        std::fs::write(
            &path,
            format!("{digest} pgrpc_service {{\"sub\": \"k\"}}\n"),
        )
        .expect("keys file");
        let file = path.to_string_lossy().into_owned();
        let s = TestServer::start_with(move |c| c.api_keys = Some(file)).await;
        // The proxy read the file at its start.
        let _ = std::fs::remove_file(&path);
        let call = |apikey: Vec<u8>| {
            send(
                s.http
                    .post(s.url("/rpc/create_organization"))
                    .header(
                        "apikey",
                        reqwest::header::HeaderValue::from_bytes(&apikey).expect("header"),
                    )
                    .json(&json!({"name": "attack", "plan": "free"})),
            )
        };
        let long = format!("{key}{}", "x".repeat(16 * 1024));
        let cases: Vec<Vec<u8>> = vec![
            long.into_bytes(),
            b"sb_secret_\xff\xfe\x80".to_vec(),
            key.to_uppercase().into_bytes(),
            format!("{key}x").into_bytes(),
            key.as_bytes()[1..].to_vec(),
            b"eyJhbGciOiJub25lIn0.eyJyb2xlIjoicGdycGNfc2VydmljZSJ9.".to_vec(),
            b"a.b.c".to_vec(),
            format!(
                "{}.{}.{}",
                "A".repeat(5000),
                "B".repeat(5000),
                "C".repeat(5000)
            )
            .into_bytes(),
        ];
        for apikey in cases {
            let r = call(apikey.clone()).await;
            refused(&r, 401, "PGRST301");
        }
        for i in 0..1000 {
            let r = call(format!("sb_secret_{i:040}").into_bytes()).await;
            assert_eq!(r.status, 401, "{}", r.text);
        }
        // The real key still works, and nothing ran before it.
        let r = call(key.as_bytes().to_vec()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let su = s.db.superuser().await;
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM private.organizations WHERE name = 'attack'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 1);
        lives(&s).await;
    }

    /// Hostile `Idempotency-Key` strings: unterminated, bad escapes, control
    /// bytes, parameters, 1 KiB of escapes, two fields: 400 PGRST100 and
    /// nothing runs; a quoted key over 255 characters is the database's
    /// 400 invalid_idempotency_key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_idempotency_key_strings_are_400_and_run_nothing() {
        let s = TestServer::start().await;
        let post = |key: Vec<u8>| {
            send(
                s.http
                    .post(s.url("/rpc/create_organization"))
                    .bearer_auth(service_token())
                    .header(
                        "idempotency-key",
                        reqwest::header::HeaderValue::from_bytes(&key).expect("header"),
                    )
                    .json(&json!({"name": "idem attack", "plan": "free"})),
            )
        };
        let cases: Vec<Vec<u8>> = vec![
            b"\"open".to_vec(),
            b"\"a\\x\"".to_vec(),
            b"\"a\"b\"".to_vec(),
            b"\"a\tb\"".to_vec(),
            b"\"\xc3\xa9\"".to_vec(),
            b"\"k\";a=1;b=2".to_vec(),
            format!("\"{}\"", "\\\\".repeat(600)).into_bytes(),
            "x".repeat(2000).into_bytes(),
        ];
        for key in cases {
            let r = post(key.clone()).await;
            refused(&r, 400, "PGRST100");
        }
        let long = format!("\"{}\"", "k".repeat(256));
        let r = post(long.into_bytes()).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.error_key(), "invalid_idempotency_key");
        let su = s.db.superuser().await;
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM private.organizations WHERE name = 'idem attack'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "a refused key ran the call");
        lives(&s).await;
    }

    /// Preflights whose `Access-Control-Request-Headers` lists 10,000 names,
    /// a 60 KiB value, names with separators or control bytes: 400
    /// PGRST100, nothing reflected; 64 names are still reflected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_preflight_header_lists_are_400_and_never_reflected() {
        let s = TestServer::start().await;
        let preflight = |asked: String| {
            send(
                s.http
                    .request(reqwest::Method::OPTIONS, s.url("/rpc/version"))
                    .header("Origin", "https://app.example")
                    .header("Access-Control-Request-Method", "POST")
                    .header("Access-Control-Request-Headers", asked),
            )
        };
        let cases = [
            vec!["x-a"; 10_000].join(","),
            "x".repeat(60_000),
            "x-ok, bad name".to_string(),
            "x-ok, a:b".to_string(),
            "x-ok, \"quoted\"".to_string(),
            "x-ok, a/b".to_string(),
        ];
        for asked in cases {
            let r = preflight(asked).await;
            refused(&r, 400, "PGRST100");
            assert_eq!(r.header("access-control-allow-headers"), None);
        }
        let names: Vec<String> = (0..64).map(|i| format!("x-h{i}")).collect();
        let r = preflight(names.join(", ")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let allowed = r.header("access-control-allow-headers").unwrap_or_default();
        assert!(allowed.ends_with("x-h63"), "{allowed}");
        lives(&s).await;
    }
}

// ---- jwks: keys from a URL ----
//
// A provider turned hostile after startup: each answer below is refused
// whole, the last good keys stay in use, and a token signed by the key the
// hostile answer tried to slip in is 401.

mod jwks {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use jsonwebtoken::Algorithm;
    use serde_json::{json, Value};

    use crate::jwks::{
        accepted, bearer, bearer_es_b, bearer_hs, ed_jwk, es_a_jwk, es_b_jwk, refused, server_for,
        Provider, Reply,
    };

    /// Switches the provider to `reply`, then checks that the attacker's
    /// kid is refused after a real fetch and the old key still verifies.
    async fn hostile(provider: &Provider, s: &crate::support::TestServer, reply: Reply) {
        provider.serve("/jwks.json", reply);
        let before = provider.hits("/jwks.json");
        refused(
            s,
            &bearer_es_b("attacker", json!({"sub": "attacker"})),
            "PGRST301",
            "the hostile set's key",
        )
        .await;
        assert_eq!(provider.hits("/jwks.json"), before + 1, "it was fetched");
        accepted(
            s,
            &bearer(Algorithm::ES256, "es-1", json!({"sub": "after"})),
            "the last good key",
        )
        .await;
    }

    async fn setup() -> (Provider, crate::support::TestServer) {
        let provider = Provider::start().await;
        provider.publish(&[es_a_jwk("es-1")], Some(3600));
        let s = server_for(&provider, |c| {
            c.jwt_jwks_timeout = Duration::from_millis(1000)
        })
        .await;
        (provider, s)
    }

    /// A JWK Set of 10,000 keys (under the size bound) is refused whole past 1,000 keys.
    #[tokio::test]
    async fn a_fetched_jwks_of_ten_thousand_keys_is_refused() {
        let (provider, s) = setup().await;
        let mut keys: Vec<Value> = (0..9_999).map(|i| ed_jwk(&format!("k{i}"))).collect();
        keys.push(es_b_jwk("attacker"));
        let body = json!({ "keys": keys });
        assert!(
            body.to_string().len() < 1024 * 1024,
            "only the count is over"
        );
        hostile(&provider, &s, Reply::json(&body, None)).await;
    }

    /// A 10 MB JWK Set is refused, whether its length is declared or it streams in chunks.
    #[tokio::test]
    async fn a_ten_megabyte_jwks_is_refused() {
        let (provider, s) = setup().await;
        let padding = "x".repeat(10 * 1024 * 1024);
        let body = json!({"keys": [es_b_jwk("attacker")], "padding": padding});
        for chunked in [false, true] {
            let mut reply = Reply::json(&body, None);
            reply.chunked = chunked;
            hostile(&provider, &s, reply).await;
        }
    }

    /// A provider that answers after the timeout is given up on within it.
    #[tokio::test]
    async fn a_slow_key_provider_is_given_up_on_after_the_timeout() {
        let (provider, s) = setup().await;
        let mut reply = Reply::json(&json!({"keys": [es_b_jwk("attacker")]}), None);
        reply.delay = Duration::from_secs(6);
        let started = Instant::now();
        hostile(&provider, &s, reply).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited {:?} for a 1 s timeout",
            started.elapsed()
        );
    }

    /// A redirect, here to another host serving the attacker's key, is not followed.
    #[tokio::test]
    async fn a_redirect_to_another_host_is_not_followed() {
        let (provider, s) = setup().await;
        let elsewhere = Provider::start_on("localhost").await;
        elsewhere.publish(&[es_a_jwk("es-1"), es_b_jwk("attacker")], None);
        let reply = Reply {
            status: 302,
            headers: vec![("location".into(), elsewhere.url("/jwks.json"))],
            body: Bytes::new(),
            delay: Duration::ZERO,
            chunked: false,
        };
        hostile(&provider, &s, reply).await;
        assert_eq!(
            elsewhere.hits("/jwks.json"),
            0,
            "the other host was never asked"
        );
    }

    /// An oct key published in a JWK Set is public: an HS256 token signed with it is refused, by kid or without one.
    #[tokio::test]
    async fn an_oct_key_in_a_fetched_jwks_never_verifies_a_token() {
        let provider = Provider::start().await;
        let secret = b"a-public-value-anyone-can-read-0123456789";
        let k = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret);
        provider.publish(
            &[
                es_a_jwk("es-1"),
                json!({"kty": "oct", "kid": "hs", "alg": "HS256", "k": k}),
                // Under the EC key's kid, labelled for an asymmetric algorithm.
                json!({"kty": "oct", "kid": "es-1", "alg": "ES256", "k": k}),
            ],
            None,
        );
        let s = server_for(&provider, |_| {}).await;
        let forged = json!({"role": "pgrpc_service", "sub": "forged"});
        refused(
            &s,
            &bearer_hs(Some("hs"), secret, forged.clone()),
            "PGRST301",
            "oct by kid",
        )
        .await;
        refused(
            &s,
            &bearer_hs(Some("es-1"), secret, forged.clone()),
            "PGRST301",
            "oct under the EC key's kid",
        )
        .await;
        refused(
            &s,
            &bearer_hs(None, secret, forged),
            "PGRST301",
            "oct without kid",
        )
        .await;
        accepted(
            &s,
            &bearer(Algorithm::ES256, "es-1", json!({})),
            "the EC key",
        )
        .await;
    }
}

// (end of section: jwks)

// ---- batch: POST /rpc, an atomic batch of calls ----
mod batch {
    use serde_json::{json, Value};

    use crate::support::db::count;
    use crate::support::{send, service_token, Resp, TestServer};

    async fn post_batch(s: &TestServer, body: String) -> Resp {
        send(
            s.http
                .post(s.url("/rpc"))
                .bearer_auth(service_token())
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    async fn teams(s: &TestServer) -> i64 {
        let su = s.db.superuser().await;
        count(&su, "SELECT count(*) FROM private.teams").await
    }

    fn team(i: usize) -> Value {
        json!({"fn": "create_team", "args": {"tenant_id": 1, "name": format!("t{i}")}})
    }

    // Ten thousand calls in one body are refused (413, the batch bound)
    // and none of them runs; the proxy answers the next batch.
    #[tokio::test]
    async fn ten_thousand_calls_are_refused_and_nothing_runs() {
        let s = TestServer::start().await;
        let calls: Vec<Value> = (0..10_000).map(team).collect();
        let r = post_batch(&s, Value::Array(calls).to_string()).await;
        assert_eq!(r.status, 413, "{}", r.text);
        assert_eq!(r.error_code(), "PGRPC413");
        assert_eq!(teams(&s).await, 0, "a refused batch wrote");
        // Over the body bound too: 413 before parsing.
        let calls: Vec<Value> = (0..30_000).map(team).collect();
        let r = post_batch(&s, Value::Array(calls).to_string()).await;
        assert_eq!(r.status, 413, "{}", r.text);
        assert_eq!(teams(&s).await, 0);
        let r = post_batch(&s, Value::Array((0..100).map(team).collect()).to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(teams(&s).await, 100);
    }

    // Nested `fn` objects, a non-string `fn`, extra keys, references and
    // arguments that are not an object are 400 PGRST102, and nothing of
    // the batch runs, the valid calls before them included.
    #[tokio::test]
    async fn malformed_calls_are_400_and_nothing_runs() {
        let s = TestServer::start().await;
        for bad in [
            json!({"fn": {"fn": "create_team"}, "args": {}}),
            json!({"fn": ["create_team"]}),
            json!({"fn": 1}),
            json!({"fn": null}),
            json!({"fn": "create_team", "args": null}),
            json!({"fn": "create_team", "args": {"tenant_id": 1, "name": "x"}, "extra": 1}),
            json!({"fn": "create_team", "args": {"tenant_id": {"$ref": "0.id"}, "name": "x"}, "$ref": "0"}),
            json!({"fn": "create_team", "args": [1, "x"]}),
            json!({"args": {"tenant_id": 1, "name": "x"}}),
            json!({"fn": ""}),
            json!(["create_team", {"tenant_id": 1, "name": "x"}]),
        ] {
            let body = json!([team(0), bad]).to_string();
            let r = post_batch(&s, body.clone()).await;
            assert_eq!(r.status, 400, "{body}: {}", r.text);
            assert_eq!(r.error_code(), "PGRST102", "{body}");
        }
        // A reference is not a syntax: `{"$ref": …}` in args is an object
        // argument like any other, and PostgreSQL refuses it as a bigint.
        let body = json!([team(0), {"fn": "create_team",
            "args": {"tenant_id": {"$ref": "0.tenant_id"}, "name": "x"}}])
        .to_string();
        let r = post_batch(&s, body).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.header("x-pgrpc-batch-index"), Some("1"), "{}", r.text);
        for body in [
            "{}",
            "[]",
            "[[]]",
            "\"create_team\"",
            "[{\"fn\":\"create_team\"}",
        ] {
            let r = post_batch(&s, body.to_string()).await;
            assert_eq!(r.status, 400, "{body}: {}", r.text);
        }
        assert_eq!(teams(&s).await, 0, "a refused batch wrote");
    }

    // A batch is never a read: GET (and HEAD) /rpc is 405 whatever it
    // carries, so a VOLATILE call cannot hide in a GET; a query string on
    // POST is 400, and nothing runs.
    #[tokio::test]
    async fn a_volatile_call_hidden_in_a_get_is_405_and_nothing_runs() {
        let s = TestServer::start().await;
        let body = json!([team(0)]).to_string();
        for method in [
            reqwest::Method::GET,
            reqwest::Method::HEAD,
            reqwest::Method::PUT,
        ] {
            let r = send(
                s.http
                    .request(method.clone(), s.url("/rpc"))
                    .bearer_auth(service_token())
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
            .await;
            assert_eq!(r.status, 405, "{method}: {}", r.text);
            assert_eq!(r.header("allow"), Some("OPTIONS,POST"));
        }
        let r = send(
            s.http
                .get(s.url("/rpc"))
                .query(&[("fn", "create_team"), ("tenant_id", "1"), ("name", "x")])
                .bearer_auth(service_token()),
        )
        .await;
        assert_eq!(r.status, 405, "{}", r.text);
        let r = send(
            s.http
                .post(s.url("/rpc?select=id"))
                .bearer_auth(service_token())
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.error_code(), "PGRST100");
        assert_eq!(teams(&s).await, 0, "a refused batch wrote");
    }
}

// (end of section: batch)
