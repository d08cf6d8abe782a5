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
        let expected: std::collections::BTreeSet<String> = ["/rpc/sign_contract", "/rpc/version"]
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

// (end of section: database)

// ---------------------------------------------------------------------------
// Section: commit path (idempotency rows, response settings before COMMIT)
// ---------------------------------------------------------------------------

// (end of section: commit path)
