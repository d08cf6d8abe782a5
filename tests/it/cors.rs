//! CORS for browser clients (supabase-js in a page), as PostgREST answers
//! it: a preflight is answered before routing, and every answer to a
//! request with an `Origin` says who may read it and which headers.

use serde_json::json;

use crate::support::{send, service_token, TestServer};

#[tokio::test]
async fn any_origin_by_default_with_postgrest_headers() {
    let s = TestServer::start().await;
    // The preflight a browser sends before supabase-js's POST /rpc/version.
    let r = send(
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/rpc/version"))
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type, prefer, x-client-info",
            ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    let methods = r.header("access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Authorization, content-type, prefer, x-client-info")
    );
    assert_eq!(r.header("access-control-max-age"), Some("86400"));
    assert!(r.text.is_empty());

    // The call itself: readable, with Content-Range exposed.
    let r = send(
        s.http
            .post(s.url("/rpc/version"))
            .header("Origin", "https://app.example")
            .json(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(exposed.contains("Content-Range"), "{exposed}");
    // Errors too, or the script could not read them.
    let r = send(
        s.http
            .post(s.url("/rpc/no_such_function"))
            .header("Origin", "https://app.example")
            .json(&json!({})),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // Without an Origin (a server-side client), no CORS headers at all, and
    // OPTIONS is the function's own answer.
    let r = send(s.http.post(s.url("/rpc/version")).json(&json!({}))).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = send(
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/rpc/version")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("allow").is_some(), "{:?}", r.headers);
}

#[tokio::test]
async fn a_list_of_origins_echoes_only_those() {
    let s = TestServer::start_with(|c| {
        c.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let r = send(
        s.http
            .post(s.url("/rpc/version"))
            .header("Origin", "https://app.example")
            .json(&json!({})),
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // Another origin: answered (as PostgREST ignores CORS failures), but
    // with no CORS header, so a browser keeps it from the script.
    let r = send(
        s.http
            .post(s.url("/rpc/version"))
            .header("Origin", "https://evil.example")
            .json(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = send(
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/rpc/version"))
            .header("Origin", "https://evil.example")
            .header("Access-Control-Request-Method", "POST"),
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// What a browser lets a script read of a cross-origin answer without
/// `Access-Control-Expose-Headers` (the CORS-safelisted response headers),
/// and the CORS headers themselves.
const READABLE_WITHOUT_EXPOSING: [&str; 8] = [
    "cache-control",
    "content-language",
    "content-length",
    "content-type",
    "expires",
    "last-modified",
    "pragma",
    "vary",
];

/// Every header the proxy sets on an answer for a client is in
/// `Access-Control-Expose-Headers`, so a script in a page can read it: a
/// batch's `X-Pgrpc-Batch-Index`, `Idempotent-Replayed`,
/// `Preference-Applied`, `Server-Timing`, `Proxy-Status`, `X-Request-Id`,
/// `WWW-Authenticate`, and those no answer here carries (`X-Pgrpc-Lsn`
/// comes from a replica setup, `Retry-After` from a busy key).
#[tokio::test]
async fn every_header_the_proxy_sets_for_clients_is_exposed() {
    let s = TestServer::start_with(|c| c.server_timing = true).await;
    let post = |path: &str, body: serde_json::Value| {
        s.http
            .post(s.url(path))
            .header("Origin", "https://app.example")
            .bearer_auth(service_token())
            .json(&body)
    };
    let team = |name: &str| json!({"tenant_id": 1, "name": name});
    let batch = json!([
        {"fn": "create_team", "args": team("a")},
        {"fn": "create_team", "args": {"tenant_id": {"not": "a number"}, "name": "b"}},
    ]);
    let failed_batch = send(post("/rpc", batch)).await;
    assert_eq!(failed_batch.status, 400, "{}", failed_batch.text);
    assert_eq!(failed_batch.header("x-pgrpc-batch-index"), Some("1"));
    let keyed = || {
        post("/rpc/create_team", team("keyed"))
            .header("idempotency-key", "cors-1")
            .header("prefer", "handling=lenient")
    };
    let first = send(keyed()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("preference-applied"), Some("handling=lenient"));
    assert!(
        first.header("server-timing").is_some(),
        "{:?}",
        first.headers
    );
    let replay = send(keyed()).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let unauthorized = send(
        s.http
            .post(s.url("/rpc/version"))
            .header("Origin", "https://app.example")
            .bearer_auth("not.a.jwt"),
    )
    .await;
    assert_eq!(unauthorized.status, 401, "{}", unauthorized.text);
    assert!(unauthorized.header("www-authenticate").is_some());

    for r in [&failed_batch, &first, &replay, &unauthorized] {
        let exposed: Vec<String> = r
            .header("access-control-expose-headers")
            .unwrap_or_default()
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        for name in r.headers.keys().map(|n| n.as_str()) {
            if READABLE_WITHOUT_EXPOSING.contains(&name) || name.starts_with("access-control-") {
                continue;
            }
            assert!(
                exposed.iter().any(|e| e == name),
                "{name} is set but not in Access-Control-Expose-Headers: {exposed:?}"
            );
        }
        for name in ["x-pgrpc-lsn", "retry-after", "content-profile"] {
            assert!(exposed.iter().any(|e| e == name), "{name}: {exposed:?}");
        }
    }
}
