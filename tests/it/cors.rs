//! CORS for browser clients (supabase-js in a page), as PostgREST answers
//! it: a preflight is answered before routing, and every answer to a
//! request with an `Origin` says who may read it and which headers.

use serde_json::json;

use crate::support::{send, TestServer};

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
