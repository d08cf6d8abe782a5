//! The headers caches and operators read (issue 22, item 3): `Vary` on RPC
//! answers, batches included, `Server-Timing` when enabled, `Proxy-Status`
//! on errors, and `Content-Length` wherever a body is known (HEAD included).

use reqwest::Method;
use serde_json::json;

use crate::support::{send, service_token, TestServer};

/// Every `/rpc/*` answer, errors included, says it depends on Accept,
/// Prefer, Range and the credentials (Authorization, and supabase-js'
/// apikey), so a shared cache never gives one caller's answer to another;
/// with a listed origin echoed, on Origin too.
#[tokio::test]
async fn rpc_answers_vary_on_accept_prefer_range_credentials_and_an_echoed_origin() {
    let s = TestServer::start_with(|c| {
        c.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let ok = send(s.http.post(s.url("/rpc/version")).json(&json!({}))).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(
        ok.header("vary"),
        Some("Accept, Prefer, Range, Authorization, apikey")
    );
    let missing = send(s.http.post(s.url("/rpc/no_such_function")).json(&json!({}))).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("vary"),
        Some("Accept, Prefer, Range, Authorization, apikey")
    );
    let from_app = send(
        s.http
            .get(s.url("/rpc/version"))
            .header("Origin", "https://app.example"),
    )
    .await;
    assert_eq!(
        from_app.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        from_app.header("vary"),
        Some("Accept, Prefer, Range, Authorization, apikey, Origin")
    );
    // Not an RPC answer: no Vary.
    let live = send(s.http.get(s.url("/live"))).await;
    assert_eq!(live.header("vary"), None);
}

/// `Server-Timing` is absent by default; with PGRPC_SERVER_TIMING=true an
/// RPC answer lists jwt, plan, transaction and render, each with a
/// duration in milliseconds.
#[tokio::test]
async fn server_timing_lists_the_stages_only_when_enabled() {
    let off = TestServer::start().await;
    let r = send(off.http.get(off.url("/rpc/version"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("server-timing"), None);

    let on = TestServer::start_with(|c| c.server_timing = true).await;
    let r = send(
        on.http
            .post(on.url("/rpc/version"))
            .bearer_auth(service_token())
            .json(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let timing = r
        .header("server-timing")
        .expect("Server-Timing")
        .to_string();
    let stages: Vec<(&str, f64)> = timing
        .split(", ")
        .map(|part| {
            let (name, dur) = part.split_once(";dur=").expect("name;dur=ms");
            (name, dur.parse::<f64>().expect("a number of ms"))
        })
        .collect();
    let names: Vec<&str> = stages.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["jwt", "plan", "transaction", "render"], "{timing}");
    assert!(stages.iter().all(|(_, ms)| *ms >= 0.0), "{timing}");
    assert!(stages[2].1 > 0.0, "a transaction takes time: {timing}");
}

/// The stage names of a `Server-Timing` value, each checked to carry a
/// duration in milliseconds.
fn timing_stages(r: &crate::support::Resp) -> Vec<String> {
    let timing = r.header("server-timing").unwrap_or_default();
    timing
        .split(", ")
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, dur) = part.split_once(";dur=").expect("name;dur=ms");
            assert!(
                dur.parse::<f64>().expect("a number of ms") >= 0.0,
                "{timing}"
            );
            name.to_string()
        })
        .collect()
}

/// An error answer carries `Server-Timing` too, with the stages that ran,
/// the one that failed included: jwt for a token refused, jwt and plan for
/// an unknown function, jwt, plan and transaction for an error the
/// function raised. Disabled, errors carry none.
#[tokio::test]
async fn server_timing_is_sent_on_errors_with_the_stages_that_ran() {
    let on = TestServer::start_with(|c| c.server_timing = true).await;
    let refused = send(
        on.http
            .post(on.url("/rpc/version"))
            .bearer_auth("not.a.jwt"),
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(timing_stages(&refused), ["jwt"], "{:?}", refused.headers);
    let unknown = send(
        on.http
            .post(on.url("/rpc/no_such_function"))
            .bearer_auth(service_token())
            .json(&json!({})),
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(
        timing_stages(&unknown),
        ["jwt", "plan"],
        "{:?}",
        unknown.headers
    );
    let raised = send(
        on.http
            .post(on.url("/rpc/outbox_claim"))
            .bearer_auth(service_token())
            .json(&json!({"consumer": "timing", "max_events": 0})),
    )
    .await;
    assert_eq!(raised.status, 400, "{}", raised.text);
    assert_eq!(
        raised.body["message"], "invalid_max_events",
        "{}",
        raised.text
    );
    assert_eq!(
        timing_stages(&raised),
        ["jwt", "plan", "transaction"],
        "{:?}",
        raised.headers
    );

    let off = TestServer::start().await;
    let raised = send(
        off.http
            .post(off.url("/rpc/outbox_claim"))
            .bearer_auth(service_token())
            .json(&json!({"consumer": "timing", "max_events": 0})),
    )
    .await;
    assert_eq!(raised.status, 400, "{}", raised.text);
    assert_eq!(raised.header("server-timing"), None);
}

/// `POST /rpc` with `calls` as the service, from `origin` if given.
async fn batch(
    s: &TestServer,
    calls: serde_json::Value,
    origin: Option<&str>,
) -> crate::support::Resp {
    let mut req = s
        .http
        .post(s.url("/rpc"))
        .bearer_auth(service_token())
        .json(&calls);
    if let Some(origin) = origin {
        req = req.header("Origin", origin);
    }
    send(req).await
}

/// A batch (`POST /rpc`) is an RPC answer like `/rpc/<fn>`'s: `Vary` on
/// its success and its failures (with `Origin` where CORS echoed one),
/// and with PGRPC_SERVER_TIMING=true `Server-Timing` with jwt, plan,
/// transaction and render, or the stages that ran up to the failure.
/// A body refused before the token is read carries none.
#[tokio::test]
async fn a_batch_answer_carries_vary_and_server_timing_like_a_single_call() {
    const VARY: &str = "Accept, Prefer, Range, Authorization, apikey";
    let on = TestServer::start_with(|c| {
        c.server_timing = true;
        c.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let ok = batch(&on, json!([{"fn": "version"}, {"fn": "version"}]), None).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body.as_array().map(Vec::len), Some(2), "{}", ok.text);
    assert_eq!(ok.header("vary"), Some(VARY));
    assert_eq!(
        timing_stages(&ok),
        ["jwt", "plan", "transaction", "render"],
        "{:?}",
        ok.headers
    );

    let from_app = batch(&on, json!([{"fn": "version"}]), Some("https://app.example")).await;
    assert_eq!(from_app.status, 200, "{}", from_app.text);
    assert_eq!(
        from_app.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        from_app.header("vary"),
        Some(format!("{VARY}, Origin").as_str())
    );

    let unknown = batch(
        &on,
        json!([{"fn": "version"}, {"fn": "no_such_function"}]),
        None,
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(unknown.header("x-pgrpc-batch-index"), Some("1"));
    assert_eq!(unknown.header("vary"), Some(VARY));
    assert_eq!(
        timing_stages(&unknown),
        ["jwt", "plan"],
        "{:?}",
        unknown.headers
    );

    let raised = batch(
        &on,
        json!([
            {"fn": "outbox_claim", "args": {"consumer": "timing", "max_events": 1}},
            {"fn": "outbox_claim", "args": {"consumer": "timing", "max_events": 0}},
        ]),
        None,
    )
    .await;
    assert_eq!(raised.status, 400, "{}", raised.text);
    assert_eq!(
        raised.body["message"], "invalid_max_events",
        "{}",
        raised.text
    );
    assert_eq!(raised.header("x-pgrpc-batch-index"), Some("1"));
    assert_eq!(raised.header("vary"), Some(VARY));
    assert_eq!(
        timing_stages(&raised),
        ["jwt", "plan", "transaction"],
        "{:?}",
        raised.headers
    );

    let refused = send(
        on.http
            .post(on.url("/rpc"))
            .bearer_auth("not.a.jwt")
            .json(&json!([{"fn": "version"}])),
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(timing_stages(&refused), ["jwt"], "{:?}", refused.headers);

    let malformed = batch(&on, json!([]), None).await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    assert_eq!(malformed.header("vary"), Some(VARY));
    assert_eq!(malformed.header("server-timing"), None);

    let off = TestServer::start().await;
    let ok = batch(&off, json!([{"fn": "version"}]), None).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.header("vary"), Some(VARY));
    assert_eq!(ok.header("server-timing"), None);
    let raised = batch(
        &off,
        json!([{"fn": "outbox_claim", "args": {"consumer": "timing", "max_events": 0}}]),
        None,
    )
    .await;
    assert_eq!(raised.status, 400, "{}", raised.text);
    assert_eq!(raised.header("vary"), Some(VARY));
    assert_eq!(raised.header("server-timing"), None);
}

/// Every error answer names its code in `Proxy-Status` (RFC 9209), as
/// PostgREST 13 does, so that a HEAD, which has no body, still says why.
#[tokio::test]
async fn errors_carry_proxy_status_with_their_code() {
    let s = TestServer::start().await;
    let cases = [
        (s.http.post(s.url("/rpc/no_such_function")), 404, "PGRST202"),
        (s.http.head(s.url("/rpc/no_such_function")), 404, "PGRST202"),
        (
            s.http.post(s.url("/rpc/version")).bearer_auth("not.a.jwt"),
            401,
            "PGRST301",
        ),
        (
            s.http
                .post(s.url("/rpc/create_organization"))
                .json(&json!({"name": "x", "plan": "free"})),
            401,
            "42501",
        ),
        (s.http.get(s.url("/nowhere")), 404, "PGRST125"),
    ];
    for (req, status, code) in cases {
        let r = send(req).await;
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(
            r.header("proxy-status"),
            Some(format!("pgrpc; error={code}").as_str()),
            "{code}"
        );
    }
    let ok = send(s.http.get(s.url("/rpc/version"))).await;
    assert_eq!(ok.header("proxy-status"), None);
}

/// `Content-Length` is sent wherever the body is known: answers, errors,
/// OPTIONS, `/metrics`, `/`; a HEAD carries the length its GET would have;
/// a 204 carries none (RFC 9110 §8.6).
#[tokio::test]
async fn content_length_is_sent_wherever_the_body_is_known() {
    let s = TestServer::start_with_sql(
        "CREATE FUNCTION api.nothing() RETURNS void LANGUAGE sql AS 'SELECT'",
        |_| {},
    )
    .await;
    let void = send(s.http.post(s.url("/rpc/nothing")).json(&json!({}))).await;
    assert_eq!(void.status, 204, "{}", void.text);
    assert_eq!(void.header("content-length"), None);
    let length = |r: &crate::support::Resp| {
        r.header("content-length")
            .map(|v| v.parse::<usize>().expect("a length"))
    };
    for path in ["/rpc/version", "/", "/metrics", "/live", "/ready"] {
        let get = send(s.http.get(s.url(path))).await;
        assert_eq!(get.status, 200, "{path}: {}", get.text);
        assert_eq!(length(&get), Some(get.text.len()), "GET {path}");
        if path == "/metrics" {
            continue; // its counters move between two requests
        }
        let head = send(s.http.head(s.url(path))).await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.text.is_empty());
        assert_eq!(length(&head), Some(get.text.len()), "HEAD {path}");
    }
    let error = send(s.http.post(s.url("/rpc/no_such_function")).json(&json!({}))).await;
    assert_eq!(length(&error), Some(error.text.len()));
    let options = send(s.http.request(Method::OPTIONS, s.url("/rpc/version"))).await;
    assert_eq!(options.status, 200, "{}", options.text);
    assert_eq!(length(&options), Some(0));
}
