//! Keys from an identity provider (SPEC §2.2 item 8, §2.3): a real HTTP
//! server on 127.0.0.1 plays the provider and rotates its JWK Set while a
//! real pgrpc verifies RS256, ES256 and EdDSA tokens against it, with no
//! restart; one test runs the provider as a process of its own
//! (`python3 -m http.server`) and kills it. The hostile providers are in
//! `attacks.rs` (section `jwks`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pgrpc::config::ServeConfig;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::{send, Resp, TestServer};

use crate::jwt::keys::*;

pub const FIXTURE: &str = r#"
CREATE FUNCTION api.jwks_whoami() RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'user', current_user,
    'claims', current_setting('request.jwt.claims', true)::jsonb) $$;
"#;

/// What the provider answers on one path.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Waits this long before answering.
    pub delay: Duration,
    /// Sends the body in 64 KiB chunks without a Content-Length.
    pub chunked: bool,
}

impl Reply {
    pub fn json(body: &Value, max_age: Option<u64>) -> Reply {
        let mut headers = vec![("content-type".into(), "application/json".into())];
        if let Some(secs) = max_age {
            headers.push(("cache-control".into(), format!("public, max-age={secs}")));
        }
        Reply {
            status: 200,
            headers,
            body: Bytes::from(body.to_string()),
            delay: Duration::ZERO,
            chunked: false,
        }
    }
}

#[derive(Default)]
struct ProviderState {
    routes: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
}

/// A JWKS provider: a real hyper server on 127.0.0.1, whose answers a test
/// changes while pgrpc fetches from it.
pub struct Provider {
    pub base: String,
    state: Arc<Mutex<ProviderState>>,
    task: Option<JoinHandle<()>>,
}

impl Provider {
    /// Listens on `host` (an address of this machine, as written in its URLs).
    pub async fn start_on(host: &str) -> Provider {
        let listener = TcpListener::bind((host, 0)).await.expect("bind provider");
        let port = listener.local_addr().expect("provider addr").port();
        let state = Arc::new(Mutex::new(ProviderState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, and every connection with it.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
                while connections.try_join_next().is_some() {}
            }
        });
        Provider {
            base: format!("http://{host}:{port}"),
            state,
            task: Some(task),
        }
    }

    pub async fn start() -> Provider {
        Self::start_on("127.0.0.1").await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn serve(&self, path: &str, reply: Reply) {
        let mut state = self.state.lock().expect("provider state");
        state.routes.insert(path.to_string(), reply);
    }

    /// Publishes `keys` as the JWK Set at `/jwks.json`.
    pub fn publish(&self, keys: &[Value], max_age: Option<u64>) {
        self.serve("/jwks.json", Reply::json(&json!({ "keys": keys }), max_age));
    }

    pub fn hits(&self, path: &str) -> usize {
        let state = self.state.lock().expect("provider state");
        state.hits.get(path).copied().unwrap_or(0)
    }

    /// Goes down: the port refuses connections from now on.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn answer(
    state: Arc<Mutex<ProviderState>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let path = req.uri().path().to_string();
    let reply = {
        let mut state = state.lock().expect("provider state");
        *state.hits.entry(path.clone()).or_default() += 1;
        state.routes.get(&path).cloned()
    };
    let Some(reply) = reply else {
        let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"not found")).boxed());
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        return Ok(r);
    };
    tokio::time::sleep(reply.delay).await;
    let body = if reply.chunked {
        let chunks: Vec<Bytes> = reply
            .body
            .chunks(64 * 1024)
            .map(Bytes::copy_from_slice)
            .collect();
        StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Frame::data(c))),
        ))
        .boxed()
    } else {
        Full::new(reply.body).boxed()
    };
    let mut r = hyper::Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(reply.status).expect("status");
    for (name, value) in reply.headers {
        r.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            hyper::header::HeaderValue::from_str(&value).expect("header value"),
        );
    }
    Ok(r)
}

// ---- keys and tokens ----

pub fn rsa_jwk(kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": TEST_RS256_N, "e": TEST_RS256_E})
}

/// ES256 key A (`Algorithm::ES256` in [`bearer`]).
pub fn es_a_jwk(kid: &str) -> Value {
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": TEST_ES256A_X, "y": TEST_ES256A_Y})
}

/// ES256 key B ([`bearer_es_b`]).
pub fn es_b_jwk(kid: &str) -> Value {
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": TEST_ES256B_X, "y": TEST_ES256B_Y})
}

pub fn ed_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": TEST_ED25519_X})
}

fn der(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("test key is base64")
}

fn sign(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(chrono::Utc::now().timestamp() + 3600);
    }
    if claims.get("role").is_none() {
        claims["role"] = json!("pgrpc_user");
    }
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims, key).expect("sign")
}

/// A token signed by the test key of `alg` (RS256, ES256 key A, EdDSA).
pub fn bearer(alg: Algorithm, kid: &str, claims: Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_der(&der(TEST_RS256_PRIVATE_PKCS1)),
        Algorithm::ES256 => EncodingKey::from_ec_der(&der(TEST_ES256A_PRIVATE_PKCS8)),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&der(TEST_ED25519_PRIVATE_PKCS8)),
        other => panic!("no test key for {other:?}"),
    };
    sign(&key, alg, Some(kid), claims)
}

/// A token signed by ES256 key B.
pub fn bearer_es_b(kid: &str, claims: Value) -> String {
    let key = EncodingKey::from_ec_der(&der(TEST_ES256B_PRIVATE_PKCS8));
    sign(&key, Algorithm::ES256, Some(kid), claims)
}

/// An HS256 token keyed with `secret`.
pub fn bearer_hs(kid: Option<&str>, secret: &[u8], claims: Value) -> String {
    sign(
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
        kid,
        claims,
    )
}

// ---- the server under test ----

/// A pgrpc whose only keys come from `provider`'s `/jwks.json`, with an
/// unknown kid refreshing at once (tests of the rate limit set it).
pub async fn server_for(provider: &Provider, tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
    let url = provider.url("/jwks.json");
    TestServer::start_with_sql(FIXTURE, |c| {
        c.jwt_secret = None;
        c.jwt_jwks_url = Some(url);
        c.jwt_jwks_kid_refresh = Duration::ZERO;
        tune(c);
    })
    .await
}

/// `POST /rpc/jwks_whoami` with `token` as the bearer.
pub async fn whoami(s: &TestServer, token: &str) -> Resp {
    send(
        s.http
            .post(s.url("/rpc/jwks_whoami"))
            .bearer_auth(token)
            .json(&json!({})),
    )
    .await
}

/// Asserts the token is accepted and runs as pgrpc_user.
pub async fn accepted(s: &TestServer, token: &str, what: &str) {
    let r = whoami(s, token).await;
    assert_eq!(r.status, 200, "{what}: {}", r.text);
    assert_eq!(r.body["user"], "pgrpc_user", "{what}");
}

/// Asserts a 401 with `code` and `WWW-Authenticate: Bearer`.
pub async fn refused(s: &TestServer, token: &str, code: &str, what: &str) {
    let r = whoami(s, token).await;
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    assert_eq!(r.error_code(), code, "{what}: {}", r.text);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{what}"
    );
}

/// Starts `serve` with `tune` on a database that does not exist: the key
/// fetch fails or passes before the database is needed.
pub async fn startup_error(tune: impl FnOnce(&mut ServeConfig)) -> Option<String> {
    let mut config = ServeConfig::new("postgres://unused@127.0.0.1:1/none");
    tune(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serve = pgrpc::server::serve(listener, config, async {
        let _ = rx.await;
    });
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            r = serve => Some(r),
            _ = tokio::time::sleep(Duration::from_secs(3)) => None,
        }
    })
    .await
    .expect("startup decides within 20 s");
    drop(tx);
    match outcome {
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    }
}

// ---- tests ----

/// RS256, ES256 and EdDSA keys rotate at the provider: new kids work as soon as they are published, old tokens until their key is removed, all without a restart.
#[tokio::test]
async fn keys_rotated_at_the_provider_are_accepted_without_a_restart() {
    let provider = Provider::start().await;
    provider.publish(&[rsa_jwk("rsa-1"), es_a_jwk("es-1")], Some(3600));
    let s = server_for(&provider, |_| {}).await;
    let old_rsa = bearer(Algorithm::RS256, "rsa-1", json!({"sub": "a"}));
    let old_es = bearer(Algorithm::ES256, "es-1", json!({"sub": "b"}));
    accepted(&s, &old_rsa, "RS256 before rotation").await;
    accepted(&s, &old_es, "ES256 before rotation").await;

    let new_ed = bearer(Algorithm::EdDSA, "ed-2", json!({"sub": "c"}));
    let new_es = bearer_es_b("es-2", json!({"sub": "d"}));
    refused(&s, &new_ed, "PGRST301", "EdDSA kid not yet published").await;

    // Published: accepted on the next request, by the unknown-kid refresh.
    provider.publish(
        &[
            rsa_jwk("rsa-1"),
            es_a_jwk("es-1"),
            ed_jwk("ed-2"),
            es_b_jwk("es-2"),
        ],
        Some(3600),
    );
    let fetches = provider.hits("/jwks.json");
    accepted(&s, &new_ed, "EdDSA after publication").await;
    accepted(&s, &new_es, "second ES256 key after publication").await;
    assert_eq!(provider.hits("/jwks.json"), fetches + 1, "one refresh");
    accepted(&s, &old_rsa, "RS256 while its key is published").await;
    accepted(&s, &old_es, "ES256 while its key is published").await;

    // Removed at the provider: still accepted until a refresh sees it...
    provider.publish(&[ed_jwk("ed-2"), es_b_jwk("es-2")], Some(3600));
    accepted(&s, &old_rsa, "RS256 until the next refresh").await;
    // ...which the next unknown kid causes; the cached tokens go with it.
    let probe = bearer(Algorithm::EdDSA, "ed-3", json!({}));
    refused(&s, &probe, "PGRST301", "a kid nobody published").await;
    refused(&s, &old_rsa, "PGRST301", "RS256 after its key was removed").await;
    refused(&s, &old_es, "PGRST301", "ES256 after its key was removed").await;
    accepted(&s, &new_ed, "EdDSA key still published").await;
    accepted(&s, &new_es, "ES256 key B still published").await;
}

/// The scheduled refresh follows max-age, raised to the floor (max-age=0 does not loop) and cut to the ceiling (a removed key is noticed within it).
#[tokio::test]
async fn the_scheduled_refresh_follows_max_age_between_floor_and_ceiling() {
    let provider = Provider::start().await;
    provider.publish(&[es_a_jwk("es-1")], Some(0));
    let s = server_for(&provider, |c| {
        c.jwt_jwks_min_refresh_secs = 1;
        c.jwt_jwks_max_refresh_secs = 2;
        // Only the schedule refreshes here, not an unknown kid.
        c.jwt_jwks_kid_refresh = Duration::from_secs(600);
    })
    .await;
    let before = provider.hits("/jwks.json");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let during = provider.hits("/jwks.json") - before;
    assert!(
        (2..=5).contains(&during),
        "max-age=0 under a 1 s floor: {during} fetches in 3.5 s"
    );

    // A day's max-age, cut to the 2 s ceiling: once the floor's refresh
    // has read it, the next refresh is 2 s away, and it sees a removal
    // without any token asking for it.
    let old = bearer(Algorithm::ES256, "es-1", json!({}));
    accepted(&s, &old, "before removal").await;
    provider.publish(&[es_a_jwk("es-1")], Some(86_400));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read = provider.hits("/jwks.json");
    provider.publish(&[es_b_jwk("es-2")], Some(86_400));
    let removed = Instant::now();
    loop {
        let r = whoami(&s, &old).await;
        if r.status == 401 {
            break;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(5),
            "the removed key still verifies after the ceiling"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        provider.hits("/jwks.json") <= read + 1,
        "one refresh at the ceiling saw the removal"
    );
    accepted(&s, &bearer_es_b("es-2", json!({})), "the published key").await;
}

/// Concurrent tokens with unknown kids share one fetch, and further unknown kids within PGRPC_JWT_JWKS_KID_REFRESH_MS fetch nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_share_one_refresh_and_are_rate_limited() {
    let provider = Provider::start().await;
    provider.publish(&[es_a_jwk("es-1")], Some(3600));
    let s = Arc::new(
        server_for(&provider, |c| {
            c.jwt_jwks_kid_refresh = Duration::from_millis(4000)
        })
        .await,
    );
    // The startup fetch counts: wait out the interval once.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let before = provider.hits("/jwks.json");
    let flood = (0..40).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            let t = bearer(Algorithm::ES256, &format!("unknown-{i}"), json!({}));
            whoami(&s, &t).await
        })
    });
    for r in crate::support::join_tasks(flood).await {
        assert_eq!(r.status, 401, "{}", r.text);
    }
    assert_eq!(
        provider.hits("/jwks.json"),
        before + 1,
        "40 concurrent unknown kids: one fetch"
    );
    // Published now, but within the interval: not fetched yet.
    provider.publish(&[es_a_jwk("es-1"), es_b_jwk("es-2")], Some(3600));
    let fresh = bearer_es_b("es-2", json!({}));
    for i in 0..20 {
        let t = bearer(Algorithm::ES256, &format!("more-{i}"), json!({}));
        refused(&s, &t, "PGRST301", "unknown kid within the interval").await;
    }
    refused(&s, &fresh, "PGRST301", "published within the interval").await;
    assert_eq!(provider.hits("/jwks.json"), before + 1, "rate-limited");
    tokio::time::sleep(Duration::from_millis(4100)).await;
    accepted(&s, &fresh, "after the interval").await;
    assert_eq!(provider.hits("/jwks.json"), before + 2);
}

/// A provider that goes down leaves the last good keys in use: known kids pass, unknown ones are refused promptly.
#[tokio::test]
async fn a_provider_that_goes_down_keeps_the_last_good_keys() {
    let mut provider = Provider::start().await;
    provider.publish(&[es_a_jwk("es-1"), ed_jwk("ed-1")], Some(3600));
    let s = server_for(&provider, |_| {}).await;
    provider.stop().await;
    for sub in ["x", "y"] {
        let t = bearer(Algorithm::ES256, "es-1", json!({"sub": sub}));
        accepted(&s, &t, "ES256 with the provider down").await;
    }
    let started = Instant::now();
    let unknown = bearer(Algorithm::ES256, "es-9", json!({}));
    refused(&s, &unknown, "PGRST301", "unknown kid, provider down").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a refused connection is not waited on"
    );
    accepted(
        &s,
        &bearer(Algorithm::EdDSA, "ed-1", json!({})),
        "EdDSA after the failed refresh",
    )
    .await;
}

/// The server does not start without keys: a provider that is down stops startup naming the setting, unless PGRPC_JWT_JWKS_CACHE_FILE holds the last good set.
#[tokio::test]
async fn startup_needs_the_provider_or_the_cached_keys() {
    let dir = std::env::temp_dir().join(format!("pgrpc-jwks-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cache = dir.join("jwks.json").display().to_string();
    let mut provider = Provider::start().await;
    provider.publish(&[es_a_jwk("es-1")], Some(3600));
    let url = provider.url("/jwks.json");
    let first = server_for(&provider, |c| c.jwt_jwks_cache_file = Some(cache.clone())).await;
    accepted(
        &first,
        &bearer(Algorithm::ES256, "es-1", json!({})),
        "provider up",
    )
    .await;
    first.stop().await;
    provider.stop().await;

    let err = startup_error(|c| c.jwt_jwks_url = Some(url.clone())).await;
    let err = err.expect("no provider, no cache file: startup fails");
    assert!(err.contains("PGRPC_JWT_JWKS_URL"), "{err}");
    assert!(err.contains("PGRPC_JWT_JWKS_CACHE_FILE"), "{err}");

    let garbage = dir.join("garbage.json").display().to_string();
    std::fs::write(&garbage, "{\"keys\": [").expect("write");
    let err = startup_error(|c| {
        c.jwt_jwks_url = Some(url.clone());
        c.jwt_jwks_cache_file = Some(garbage.clone());
    })
    .await;
    assert!(err.is_some_and(|e| e.contains("PGRPC_JWT_JWKS_CACHE_FILE")));

    let second = server_for(&provider, |c| {
        c.jwt_jwks_url = Some(url.clone());
        c.jwt_jwks_cache_file = Some(cache.clone());
    })
    .await;
    accepted(
        &second,
        &bearer(Algorithm::ES256, "es-1", json!({"sub": "restarted"})),
        "restarted from the cache file",
    )
    .await;
    refused(
        &second,
        &bearer(Algorithm::ES256, "es-2", json!({})),
        "PGRST301",
        "unknown kid",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// PGRPC_JWT_OIDC_ISSUER reads the issuer's discovery document for its jwks_uri, and a token's iss must be that issuer; a document naming another issuer stops startup.
#[tokio::test]
async fn oidc_discovery_finds_the_keys_and_checks_iss() {
    let provider = Provider::start().await;
    let issuer = provider.base.clone();
    provider.serve(
        "/.well-known/openid-configuration",
        Reply::json(
            &json!({"issuer": issuer, "jwks_uri": provider.url("/jwks.json")}),
            Some(3600),
        ),
    );
    provider.publish(&[es_a_jwk("es-1")], Some(3600));
    let s = TestServer::start_with_sql(FIXTURE, |c| {
        c.jwt_secret = None;
        c.jwt_oidc_issuer = Some(issuer.clone());
    })
    .await;
    assert_eq!(provider.hits("/.well-known/openid-configuration"), 1);
    accepted(
        &s,
        &bearer(Algorithm::ES256, "es-1", json!({"iss": issuer})),
        "iss is the issuer",
    )
    .await;
    for (what, claims) in [
        ("another issuer", json!({"iss": "https://evil.example.com"})),
        (
            "issuer with a trailing slash",
            json!({"iss": format!("{issuer}/")}),
        ),
        ("no iss", json!({})),
        ("numeric iss", json!({"iss": 1})),
    ] {
        refused(
            &s,
            &bearer(Algorithm::ES256, "es-1", claims),
            "PGRST303",
            what,
        )
        .await;
    }

    provider.serve(
        "/.well-known/openid-configuration",
        Reply::json(
            &json!({"issuer": "https://evil.example.com", "jwks_uri": provider.url("/jwks.json")}),
            None,
        ),
    );
    let err = startup_error(|c| c.jwt_oidc_issuer = Some(issuer.clone())).await;
    let err = err.expect("a discovery document of another issuer stops startup");
    assert!(
        err.contains("PGRPC_JWT_OIDC_ISSUER") && err.contains("names issuer"),
        "{err}"
    );
}

/// An https:// URL is fetched over TLS only: a provider that speaks plain HTTP on that port gives no keys, and the server does not start.
#[tokio::test]
async fn an_https_url_is_never_fetched_in_plain_text() {
    let provider = Provider::start().await;
    provider.publish(&[es_a_jwk("es-1")], Some(3600));
    let https = provider
        .url("/jwks.json")
        .replacen("http://", "https://", 1);
    let err = startup_error(|c| c.jwt_jwks_url = Some(https.clone())).await;
    let err = err.expect("a TLS handshake with a plain HTTP server fails");
    assert!(err.contains("PGRPC_JWT_JWKS_URL"), "{err}");
    assert_eq!(
        provider.hits("/jwks.json"),
        0,
        "no plain-text request was made"
    );
}

/// With no rate limit, 40 concurrent unknown kids that arrive during one slow fetch wait for it and share it: one fetch, not 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_share_the_fetch_in_flight() {
    let provider = Provider::start().await;
    provider.publish(&[es_a_jwk("es-1")], Some(3600));
    let s = Arc::new(server_for(&provider, |_| {}).await);
    let mut slow = Reply::json(&json!({"keys": [es_a_jwk("es-1"), es_b_jwk("es-2")]}), None);
    slow.delay = Duration::from_millis(1500);
    provider.serve("/jwks.json", slow);
    let before = provider.hits("/jwks.json");
    let burst = (0..40).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            let t = bearer_es_b("es-2", json!({"sub": format!("burst-{i}")}));
            whoami(&s, &t).await
        })
    });
    for r in crate::support::join_tasks(burst).await {
        assert_eq!(
            r.status, 200,
            "the fetch they waited for has es-2: {}",
            r.text
        );
    }
    assert_eq!(
        provider.hits("/jwks.json"),
        before + 1,
        "one fetch for 40 requests"
    );
}

/// PGRPC_JWT_SECRET and a JWK Set URL together: HS256 tokens of the secret and asymmetric tokens of the set both pass, a wrong HS256 signature is still reported as one, and an unknown kid still refreshes the set.
#[tokio::test]
async fn a_secret_and_fetched_keys_verify_side_by_side() {
    let provider = Provider::start().await;
    provider.publish(&[es_a_jwk("es-1")], Some(3600));
    let s = server_for(&provider, |c| {
        c.jwt_secret = Some(crate::support::JWT_SECRET.to_string())
    })
    .await;
    let hs = crate::support::token(json!({"role": "pgrpc_user"}));
    accepted(&s, &hs, "HS256 of PGRPC_JWT_SECRET").await;
    accepted(
        &s,
        &bearer(Algorithm::ES256, "es-1", json!({})),
        "ES256 of the set",
    )
    .await;
    let wrong = bearer_hs(None, b"another-secret-another-secret-0123456789", json!({}));
    let r = whoami(&s, &wrong).await;
    assert_eq!((r.status, r.error_code()), (401, "PGRST301".to_string()));
    assert_eq!(
        r.body["message"], "JWT signature does not match",
        "{}",
        r.text
    );
    let before = provider.hits("/jwks.json");
    provider.publish(&[es_a_jwk("es-1"), es_b_jwk("es-2")], Some(3600));
    accepted(&s, &bearer_es_b("es-2", json!({})), "a kid published later").await;
    assert_eq!(provider.hits("/jwks.json"), before + 1);
}

/// A JWT sent in supabase-js's apikey header (no Authorization) is checked against the fetched keys too, and its unknown kid refreshes them.
#[tokio::test]
async fn an_apikey_jwt_of_a_newly_published_key_is_accepted() {
    let provider = Provider::start().await;
    provider.publish(&[es_a_jwk("es-1")], Some(3600));
    let s = server_for(&provider, |_| {}).await;
    let token = bearer_es_b("es-2", json!({"sub": "apikey"}));
    let call = || {
        send(
            s.http
                .post(s.url("/rpc/jwks_whoami"))
                .header("apikey", token.as_str())
                .json(&json!({})),
        )
    };
    let r = call().await;
    assert_eq!(
        (r.status, r.error_code()),
        (401, "PGRST301".to_string()),
        "{}",
        r.text
    );
    provider.publish(&[es_a_jwk("es-1"), es_b_jwk("es-2")], Some(3600));
    let r = call().await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"], "pgrpc_user");
    assert_eq!(r.body["claims"]["sub"], "apikey");
}

/// The provider as a process of its own (`python3 -m http.server` serving a
/// directory whose `jwks.json` the test rewrites): a key published there is
/// accepted at once, a removed one is refused, and once the process is
/// killed the last keys fetched keep working.
#[tokio::test]
async fn a_provider_process_rotates_its_keys_and_its_death_keeps_the_last_ones() {
    let dir = std::env::temp_dir().join(format!(
        "pgrpc-jwks-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).expect("provider directory");
    let write_keys = |keys: &[Value]| {
        let staged = dir.join("jwks.json.tmp");
        std::fs::write(&staged, json!({ "keys": keys }).to_string()).expect("write keys");
        std::fs::rename(&staged, dir.join("jwks.json")).expect("publish keys");
    };
    write_keys(&[rsa_jwk("p-rsa-1")]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = tokio::process::Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 -m http.server");
    let url = format!("http://127.0.0.1:{port}/jwks.json");
    let probe = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !probe
        .get(&url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the provider process did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let s = TestServer::start_with_sql(FIXTURE, |c| {
        c.jwt_secret = None;
        c.jwt_jwks_url = Some(url.clone());
        c.jwt_jwks_kid_refresh = Duration::ZERO;
    })
    .await;
    let rsa = bearer(Algorithm::RS256, "p-rsa-1", json!({"sub": "u1"}));
    let ed = bearer(Algorithm::EdDSA, "p-ed-1", json!({"sub": "u2"}));
    accepted(&s, &rsa, "RS256 key published at startup").await;
    refused(&s, &ed, "PGRST301", "EdDSA key not yet published").await;

    // Rotation at the provider: the EdDSA key in, the RSA key out.
    write_keys(&[ed_jwk("p-ed-1")]);
    accepted(&s, &ed, "EdDSA key once published, no restart").await;
    refused(&s, &rsa, "PGRST301", "RS256 once its key was removed").await;

    // The provider dies: the keys fetched last keep working.
    child.kill().await.expect("kill the provider");
    let _ = child.wait().await;
    assert!(
        probe.get(&url).send().await.is_err(),
        "the provider is down"
    );
    // New tokens (not in the validated-token cache) are checked against
    // the keys kept from the last fetch.
    let fresh = bearer(Algorithm::EdDSA, "p-ed-1", json!({"sub": "u4"}));
    accepted(&s, &fresh, "a new EdDSA token with the provider down").await;
    let unknown = bearer(Algorithm::ES256, "p-es-never", json!({"sub": "u3"}));
    refused(
        &s,
        &unknown,
        "PGRST301",
        "an unknown kid while the provider is down",
    )
    .await;
    let later = bearer(Algorithm::EdDSA, "p-ed-1", json!({"sub": "u5"}));
    accepted(&s, &later, "a new EdDSA token after a failed refresh").await;
    let _ = std::fs::remove_dir_all(&dir);
}
