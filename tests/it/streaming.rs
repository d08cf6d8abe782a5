//! Streaming of large SETOF answers (issue 23, item 2): the bodies a
//! stream sends (JSON, NDJSON, CSV) are the buffered path's, with the
//! query-string operations, `Range` and counts applied; a failure after
//! the headers is detectable. The hostile cases are in `attacks_stream`.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{send, service_token, TestServer};

/// `stream_rows` is STABLE (it streams); `buffered_rows` is the same
/// VOLATILE (a POST of it is answered whole, as before streaming).
/// `stream_fail` divides by zero at row `at`.
pub const FIXTURES: &str = r#"
CREATE FUNCTION api.stream_rows(n int) RETURNS TABLE(id int, label text, note text)
  LANGUAGE sql STABLE AS $$
  SELECT i, 'row ' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'a,"b" ' || repeat('x', i % 50) END
  FROM generate_series(1, n) AS i $$;
CREATE FUNCTION api.buffered_rows(n int) RETURNS TABLE(id int, label text, note text)
  LANGUAGE sql VOLATILE AS $$
  SELECT i, 'row ' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'a,"b" ' || repeat('x', i % 50) END
  FROM generate_series(1, n) AS i $$;
CREATE FUNCTION api.stream_numbers(n int) RETURNS SETOF int
  LANGUAGE sql STABLE AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION api.buffered_numbers(n int) RETURNS SETOF int
  LANGUAGE sql VOLATILE AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION api.stream_one() RETURNS int LANGUAGE sql STABLE AS $$ SELECT 42 $$;
CREATE FUNCTION api.stream_pair() RETURNS TABLE(a int, b text) LANGUAGE sql STABLE AS $$ SELECT 1, NULL $$;
CREATE FUNCTION api.stream_fail(n int, at int) RETURNS TABLE(id int, q int)
  LANGUAGE sql STABLE AS $$ SELECT i, 1 / (at - i) FROM generate_series(1, n) AS i $$;
"#;

/// A server whose streams start past 1 KiB, so that a few thousand rows
/// stream.
pub async fn server() -> TestServer {
    TestServer::start_with_sql(FIXTURES, |c| c.stream_threshold_bytes = 1024).await
}

async fn call(
    server: &TestServer,
    post: bool,
    function: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> crate::support::Resp {
    let url = server.url(&format!("/rpc/{function}?{query}"));
    let mut req = if post {
        server
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
    } else {
        server.http.get(url)
    };
    req = req.bearer_auth(service_token());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

fn chunked(r: &crate::support::Resp) -> bool {
    r.header("content-length").is_none()
        && r.header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
}

// JSON, NDJSON and CSV of a result that streams are, parsed, what the
// buffered path answers for the same rows; the JSON and CSV texts are the
// same bytes.
#[tokio::test]
async fn streamed_bodies_are_the_buffered_ones_in_every_format() {
    let server = server().await;
    let body = r#"{"n": 5000}"#;
    let streamed = call(&server, true, "stream_rows", "", &[], body).await;
    let buffered = call(&server, true, "buffered_rows", "", &[], body).await;
    assert_eq!(
        streamed.status,
        200,
        "{}",
        &streamed.text[..200.min(streamed.text.len())]
    );
    assert!(chunked(&streamed), "{:?}", streamed.headers);
    assert!(!chunked(&buffered));
    assert_eq!(streamed.body, buffered.body);
    assert_eq!(streamed.body.as_array().map(Vec::len), Some(5000));
    assert_eq!(streamed.text, buffered.text, "json_agg's own separators");
    assert_eq!(streamed.header("content-range"), Some("0-*/*"));
    assert_eq!(
        streamed.header("content-type"),
        Some("application/json; charset=utf-8")
    );

    let csv = [("accept", "text/csv")];
    let streamed = call(&server, true, "stream_rows", "", &csv, body).await;
    let buffered = call(&server, true, "buffered_rows", "", &csv, body).await;
    assert!(chunked(&streamed));
    assert_eq!(
        streamed.header("content-type"),
        Some("text/csv; charset=utf-8")
    );
    assert!(
        streamed.text.starts_with("id,label,note\n1,\"row 1\","),
        "{}",
        &streamed.text[..80]
    );
    assert_eq!(streamed.text, buffered.text);

    let nd = [("accept", "application/x-ndjson")];
    let streamed = call(&server, true, "stream_rows", "", &nd, body).await;
    let buffered = call(&server, true, "buffered_rows", "", &nd, body).await;
    assert!(chunked(&streamed));
    assert!(!chunked(&buffered));
    assert_eq!(
        streamed.header("content-type"),
        Some("application/x-ndjson; charset=utf-8")
    );
    assert_eq!(streamed.text, buffered.text);
    let lines: Vec<Value> = streamed
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let json = call(&server, true, "buffered_rows", "", &[], body).await;
    assert_eq!(Value::Array(lines), json.body);
    assert!(streamed.text.ends_with("}\n"));

    // A scalar set: bare values, as json_agg gives them.
    let streamed = call(&server, false, "stream_numbers", "n=3000", &[], "").await;
    let buffered = call(&server, true, "buffered_numbers", "", &[], r#"{"n":3000}"#).await;
    assert!(chunked(&streamed));
    assert_eq!(streamed.text, buffered.text);
    let streamed = call(&server, false, "stream_numbers", "n=3000", &nd, "").await;
    assert_eq!(streamed.text.lines().nth(2999), Some("3000"));
}

// A result within the threshold is answered whole, with Content-Length,
// byte for byte as the buffered path answers it; an empty one too.
#[tokio::test]
async fn a_result_that_fits_is_answered_whole() {
    let server = server().await;
    for accept in ["application/json", "text/csv", "application/x-ndjson"] {
        for n in ["0", "3"] {
            let body = format!(r#"{{"n": {n}}}"#);
            let h = [("accept", accept)];
            let small = call(&server, true, "stream_rows", "", &h, &body).await;
            let buffered = call(&server, true, "buffered_rows", "", &h, &body).await;
            assert_eq!(small.status, 200);
            assert!(small.header("content-length").is_some(), "{accept} {n}");
            assert_eq!(small.text, buffered.text, "{accept} {n}");
            assert_eq!(
                small.header("content-range"),
                buffered.header("content-range")
            );
        }
    }
}

// Filters, select, order, limit and offset, and the Range header apply to
// a stream as to the buffered answer; a count gives the exact range.
#[tokio::test]
async fn operations_ranges_and_counts_apply_to_a_stream() {
    let server = server().await;
    let q = "n=6000&select=id,note&id=gt.100&order=id.desc&limit=4000&offset=10";
    let streamed = call(&server, false, "stream_rows", q, &[], "").await;
    let buffered = call(&server, false, "buffered_rows", q, &[], "").await;
    // GET of a VOLATILE function runs READ ONLY, and is streamable too:
    // compare with a POST of the volatile twin.
    let post = call(
        &server,
        true,
        "buffered_rows",
        "select=id,note&id=gt.100&order=id.desc&limit=4000&offset=10",
        &[],
        r#"{"n": 6000}"#,
    )
    .await;
    assert!(chunked(&streamed));
    assert_eq!(streamed.body, post.body);
    assert_eq!(buffered.body, post.body);
    let rows = streamed.body.as_array().expect("an array");
    assert_eq!(rows.len(), 4000);
    assert_eq!(
        rows[0],
        serde_json::json!({"id": 5990, "note": format!("a,\"b\" {}", "x".repeat(40))})
    );
    assert_eq!(streamed.header("content-range"), Some("10-*/*"));

    let counted = [("prefer", "count=exact"), ("range", "5-2004")];
    let streamed = call(
        &server,
        false,
        "stream_rows",
        "n=6000&id=gt.100",
        &counted,
        "",
    )
    .await;
    assert!(chunked(&streamed));
    assert_eq!(streamed.status, 206);
    assert_eq!(streamed.header("content-range"), Some("5-2004/5900"));
    assert_eq!(streamed.header("preference-applied"), Some("count=exact"));
    let rows = streamed.body.as_array().expect("an array");
    assert_eq!(
        (rows.len(), &rows[0]["id"]),
        (2000, &serde_json::json!(106))
    );

    let all = call(
        &server,
        false,
        "stream_rows",
        "n=6000",
        &[("prefer", "count=exact")],
        "",
    )
    .await;
    assert_eq!(
        (all.status, all.header("content-range")),
        (200, Some("0-5999/6000"))
    );
    assert_eq!(all.body.as_array().map(Vec::len), Some(6000));

    // An offset past the end with a count is 416, as buffered.
    let past = call(
        &server,
        false,
        "stream_rows",
        "n=6000&offset=7000",
        &[("prefer", "count=exact")],
        "",
    )
    .await;
    assert_eq!(past.status, 416, "{}", past.text);
    // PGRPC_MAX_ROWS caps a stream too.
    let capped = TestServer::start_with_sql(FIXTURES, |c| {
        c.stream_threshold_bytes = 1024;
        c.max_rows = Some(2500);
    })
    .await;
    let r = call(
        &capped,
        false,
        "stream_rows",
        "n=6000",
        &[("prefer", "count=exact")],
        "",
    )
    .await;
    assert!(chunked(&r));
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("0-2499/6000"))
    );
    assert_eq!(r.body.as_array().map(Vec::len), Some(2500));
}

/// A raw HTTP/1.1 exchange: the head, the de-chunked body, and whether
/// the final zero-length chunk arrived (a complete response).
pub struct Raw {
    pub head: String,
    pub body: Vec<u8>,
    pub complete: bool,
}

pub async fn raw_get(server: &TestServer, target: &str, headers: &[(&str, &str)]) -> Raw {
    let auth = format!("Bearer {}", service_token());
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    raw_get_with(server, target, &all).await
}

/// `raw_get` with these headers only (no token of its own).
pub async fn raw_get_with(server: &TestServer, target: &str, headers: &[(&str, &str)]) -> Raw {
    let addr = server.base_url.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: t\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                all.extend_from_slice(&buf[..n]);
                if all.ends_with(b"\r\n0\r\n\r\n") || all.starts_with(b"0\r\n\r\n") {
                    break;
                }
            }
            Err(_) => panic!("the response neither ended nor was cut off"),
        }
    }
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..end]).to_string();
    let (body, complete) = dechunk(&all[end + 4..]);
    Raw {
        head,
        body,
        complete,
    }
}

/// The chunks' data, and whether the last chunk (size 0) was read.
pub fn dechunk(mut wire: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = wire.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&wire[..eol]).trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            return (body, true);
        }
        let data = &wire[eol + 2..];
        if data.len() < size + 2 {
            body.extend_from_slice(&data[..size.min(data.len())]);
            return (body, false);
        }
        body.extend_from_slice(&data[..size]);
        wire = &data[size + 2..];
    }
}

// A division by zero after the headers went out: JSON and CSV end without
// the final chunk; NDJSON ends with an error line, then the same cut. The
// transaction is rolled back and the next calls are served.
#[tokio::test]
async fn a_failure_mid_stream_is_detectable_in_every_format() {
    let server = server().await;
    let target = "/rpc/stream_fail?n=50000&at=30000";
    for accept in ["application/json", "text/csv", "application/x-ndjson"] {
        let r = raw_get(&server, target, &[("Accept", accept)]).await;
        assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.head);
        assert!(r
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"));
        assert!(!r.complete, "{accept}: the response must be cut short");
        let text = String::from_utf8_lossy(&r.body);
        assert!(text.len() > 1024, "{accept}: rows came before the error");
        if accept == "application/x-ndjson" {
            let last = text.lines().last().expect("lines");
            let error: Value = serde_json::from_str(last).expect("an error line");
            let e = &error["$error"];
            assert_eq!(e["code"], "22012", "{last}");
            for key in ["code", "message", "details", "hint"] {
                assert!(e.get(key).is_some(), "{key}: {last}");
            }
            assert_eq!(
                text.lines().count(),
                30000,
                "29,999 rows, then the error line"
            );
        }
        if accept == "application/json" {
            assert!(!text.ends_with(']'));
        }
    }
    // Before the threshold, the failure is an ordinary error answer.
    let early = call(&server, false, "stream_fail", "n=50000&at=3", &[], "").await;
    assert_eq!(early.status, 400, "{}", early.text);
    assert_eq!(early.error_code(), "22012");
    crate::attacks_stream::assert_no_open_transaction(&server).await;
    let next = call(&server, false, "stream_rows", "n=3", &[], "").await;
    assert_eq!(next.status, 200);
}

// Without prepared statements (a transaction-mode pooler in front), the
// streaming statement runs unnamed, and streams the same body.
#[tokio::test]
async fn a_stream_without_prepared_statements_is_the_same() {
    let server = TestServer::start_with_sql(FIXTURES, |c| {
        c.stream_threshold_bytes = 1024;
        c.prepared_statements = false;
    })
    .await;
    let q = "n=5000&select=id,label&id=gt.10";
    let counted = [("prefer", "count=exact")];
    let streamed = call(&server, false, "stream_rows", q, &counted, "").await;
    let buffered = call(
        &server,
        true,
        "buffered_rows",
        "select=id,label&id=gt.10",
        &counted,
        r#"{"n": 5000}"#,
    )
    .await;
    assert!(chunked(&streamed));
    assert_eq!(streamed.text, buffered.text);
    assert_eq!(streamed.header("content-range"), Some("0-4989/4990"));
    assert_eq!(buffered.header("content-range"), Some("0-4989/4990"));
}

// NDJSON is served for every function: a scalar is one line, a
// one-row table one object line, a void function 204 as in JSON.
#[tokio::test]
async fn ndjson_answers_a_scalar_as_one_line() {
    let server = server().await;
    let nd = [("accept", "application/x-ndjson")];
    let one = call(&server, false, "stream_one", "", &nd, "").await;
    assert_eq!((one.status, one.text.as_str()), (200, "42\n"));
    assert_eq!(
        one.header("content-type"),
        Some("application/x-ndjson; charset=utf-8")
    );
    let pair = call(&server, false, "stream_pair", "", &nd, "").await;
    assert_eq!(pair.text, "{\"a\":1,\"b\":null}\n");
    let none = call(&server, false, "stream_rows", "n=0", &nd, "").await;
    assert_eq!((none.status, none.text.as_str()), (200, ""));
}
