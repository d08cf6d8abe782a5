//! The JWT options of SPEC §2.2 item 14, as PostgREST users set them, through
//! real HTTP: the role claim key, the audience, asymmetric keys given as a
//! JWK or JWK Set, the validated-token cache, and Authorization headers of
//! other schemes.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pgrpc::config::ServeConfig;
use serde_json::{json, Value};

use crate::support::{send, token, Resp, TestServer};

#[path = "../fixtures/jwt_test_keys.rs"]
pub(crate) mod keys;
use keys::*;

const FIXTURE: &str = r#"
CREATE FUNCTION api.jwt_whoami() RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'user', current_user,
    'claims', current_setting('request.jwt.claims', true)::jsonb) $$;
"#;

async fn server(tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
    TestServer::start_with_sql(FIXTURE, tune).await
}

/// `POST /rpc/jwt_whoami` with the Authorization header given as is.
async fn whoami(s: &TestServer, authorization: Option<&str>) -> Resp {
    let mut req = s.http.post(s.url("/rpc/jwt_whoami")).json(&json!({}));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    send(req).await
}

fn assert_refused(r: &Resp, code: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    assert_eq!(r.error_code(), code, "{what}: {}", r.text);
    assert!(
        r.header("www-authenticate")
            .unwrap_or("")
            .starts_with("Bearer"),
        "{what}"
    );
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn der(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("test key is base64")
}

/// `Bearer <token>` signed with the test key of `alg`, `kid` in the header.
fn bearer(alg: Algorithm, kid: Option<&str>, mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(&der(TEST_ES256A_PRIVATE_PKCS8)),
        Algorithm::ES384 => EncodingKey::from_ec_der(&der(TEST_ES384_PRIVATE_PKCS8)),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&der(TEST_ED25519_PRIVATE_PKCS8)),
        Algorithm::RS256 => EncodingKey::from_rsa_der(&der(TEST_RS256_PRIVATE_PKCS1)),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    format!("Bearer {}", encode(&header, &claims, &key).expect("sign"))
}

/// The public test keys as a JWK Set, each with a kid.
fn test_jwks() -> String {
    json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "es256", "alg": "ES256", "use": "sig",
         "x": TEST_ES256A_X, "y": TEST_ES256A_Y},
        {"kty": "EC", "crv": "P-384", "kid": "es384", "x": TEST_ES384_X, "y": TEST_ES384_Y},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": TEST_ED25519_X},
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": TEST_RS256_N, "e": TEST_RS256_E},
    ]})
    .to_string()
}

/// A Supabase-style token whose role sits in app_metadata runs as that role, and request.jwt.claims.role says so.
#[tokio::test]
async fn role_claim_key_selects_a_nested_role() {
    let s = server(|c| c.jwt_role_claim_key = ".app_metadata.role".into()).await;
    let t = format!(
        "Bearer {}",
        token(
            json!({"role": "authenticated", "sub": "u-1", "app_metadata": {"role": "pgrpc_user"}})
        )
    );
    let r = whoami(&s, Some(&t)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"], "pgrpc_user");
    assert_eq!(r.body["claims"]["role"], "pgrpc_user");
    assert_eq!(r.body["claims"]["sub"], "u-1");

    let none = format!("Bearer {}", token(json!({"role": "pgrpc_user"})));
    let r = whoami(&s, Some(&none)).await;
    assert_eq!(r.body["user"], "pgrpc_anon", "no app_metadata.role: anon");

    let foreign = format!(
        "Bearer {}",
        token(json!({"app_metadata": {"role": "postgres"}}))
    );
    assert_refused(
        &whoami(&s, Some(&foreign)).await,
        "PGRST303",
        "superuser role",
    );
}

/// A URL-named claim holding an array of roles is reached with a quoted key and an index.
#[tokio::test]
async fn role_claim_key_reads_quoted_keys_and_indexes() {
    let s = server(|c| c.jwt_role_claim_key = r#"."https://example.com/roles"[1]"#.into()).await;
    let t = format!(
        "Bearer {}",
        token(json!({"https://example.com/roles": ["viewer", "pgrpc_service"]}))
    );
    let r = whoami(&s, Some(&t)).await;
    assert_eq!(
        (r.status, r.body["user"].clone()),
        (200, json!("pgrpc_service")),
        "{}",
        r.text
    );
}

/// ES256 (Supabase's new keys), ES384, EdDSA and RS256 tokens verify against a JWKS, with or without kid.
#[tokio::test]
async fn asymmetric_tokens_verify_against_a_jwks() {
    let s = server(|c| c.jwt_secret = Some(test_jwks())).await;
    for (alg, kid) in [
        (Algorithm::ES256, "es256"),
        (Algorithm::ES384, "es384"),
        (Algorithm::EdDSA, "ed"),
        (Algorithm::RS256, "rsa"),
    ] {
        for kid in [Some(kid), None] {
            let t = bearer(alg, kid, json!({"role": "pgrpc_user", "sub": "s"}));
            let r = whoami(&s, Some(&t)).await;
            assert_eq!(r.status, 200, "{alg:?} kid {kid:?}: {}", r.text);
            assert_eq!(r.body["user"], "pgrpc_user", "{alg:?} kid {kid:?}");
        }
    }
}

/// Under a JWKS, an unknown kid, a mislabelled kid, an HS256 token and a tampered token are all 401 PGRST301.
#[tokio::test]
async fn a_jwks_refuses_tokens_it_did_not_sign() {
    let s = server(|c| c.jwt_secret = Some(test_jwks())).await;
    let claims = json!({"role": "pgrpc_user"});
    let unknown_kid = bearer(Algorithm::ES256, Some("retired"), claims.clone());
    let mislabelled = bearer(Algorithm::ES256, Some("es384"), claims.clone());
    let hs256 = format!("Bearer {}", token(claims.clone()));
    // Same header and signature, claims swapped for a more powerful role.
    let tampered = {
        let good = bearer(Algorithm::ES256, Some("es256"), claims.clone());
        let parts: Vec<&str> = good.split('.').collect();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"role": "pgrpc_service", "exp": now() + 3600}).to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    for (what, t) in [
        ("unknown kid", unknown_kid),
        ("kid of another key", mislabelled),
        ("HS256 with the old secret", hs256),
        ("tampered claims", tampered),
    ] {
        assert_refused(&whoami(&s, Some(&t)).await, "PGRST301", what);
    }
}

/// PGRPC_JWT_SECRET=@file reads a JWK from the file at startup.
#[tokio::test]
async fn a_jwk_is_read_from_a_file() {
    let dir = std::env::temp_dir().join(format!("pgrpc-jwt-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("es256.jwk");
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": TEST_ES256A_X, "y": TEST_ES256A_Y});
    std::fs::write(&path, format!("{jwk}\n")).expect("write JWK");
    let s = server(|c| c.jwt_secret = Some(format!("@{}", path.display()))).await;
    let t = bearer(Algorithm::ES256, None, json!({"role": "pgrpc_user"}));
    let r = whoami(&s, Some(&t)).await;
    assert_eq!(
        (r.status, r.body["user"].clone()),
        (200, json!("pgrpc_user")),
        "{}",
        r.text
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With PGRPC_JWT_AUD set, aud must name it (string or array); a token without aud passes, as in PostgREST.
#[tokio::test]
async fn audience_is_enforced_when_configured() {
    let s = server(|c| c.jwt_aud = Some("https://api.example.com".into())).await;
    let with_aud = |aud: Value| {
        format!(
            "Bearer {}",
            token(json!({"role": "pgrpc_user", "aud": aud}))
        )
    };
    for aud in [
        json!("https://api.example.com"),
        json!(["other", "https://api.example.com"]),
        json!([]),
        json!(null),
    ] {
        let r = whoami(&s, Some(&with_aud(aud.clone()))).await;
        assert_eq!(r.status, 200, "{aud}: {}", r.text);
    }
    let r = whoami(
        &s,
        Some(&format!("Bearer {}", token(json!({"role": "pgrpc_user"})))),
    )
    .await;
    assert_eq!(r.status, 200, "no aud: {}", r.text);
    for aud in [json!("https://other.example.com"), json!(["other"])] {
        assert_refused(
            &whoami(&s, Some(&with_aud(aud.clone()))).await,
            "PGRST303",
            &aud.to_string(),
        );
    }
}

/// iat in the future, aud of another type, and exp/nbf/iat that are not numbers get 401 PGRST303.
#[tokio::test]
async fn malformed_registered_claims_get_pgrst303() {
    let s = server(|_| {}).await;
    let cases = [
        ("iat in the future", json!({"iat": now() + 600})),
        ("nbf in the future", json!({"nbf": now() + 600})),
        ("numeric aud", json!({"aud": 42})),
        ("object aud", json!({"aud": {"a": "b"}})),
        ("aud array of numbers", json!({"aud": [1]})),
        ("string exp", json!({"exp": "2099-01-01"})),
        ("string nbf", json!({"nbf": "0"})),
        ("boolean iat", json!({"iat": true})),
    ];
    for (what, mut claims) in cases {
        claims["role"] = json!("pgrpc_user");
        let t = format!("Bearer {}", token(claims));
        assert_refused(&whoami(&s, Some(&t)).await, "PGRST303", what);
    }
    let t = format!(
        "Bearer {}",
        token(json!({"role": "pgrpc_user", "iat": now() + 10}))
    );
    assert_eq!(
        whoami(&s, Some(&t)).await.status,
        200,
        "iat within the leeway"
    );
}

/// An Authorization header of another scheme is ignored: the request runs as anonymous.
#[tokio::test]
async fn other_authorization_schemes_run_as_anonymous() {
    let s = server(|_| {}).await;
    for header in ["Basic dXNlcjpwYXNz", "Digest username=\"u\"", "Token abc"] {
        let r = whoami(&s, Some(header)).await;
        assert_eq!(r.status, 200, "{header}: {}", r.text);
        assert_eq!(r.body["user"], "pgrpc_anon", "{header}");
    }
    for header in ["Bearer", "bearer not-a-jwt"] {
        assert_refused(&whoami(&s, Some(header)).await, "PGRST301", header);
    }
}

/// A cached token stops working once its exp is past: the cache never outlives a token.
#[tokio::test]
async fn a_cached_token_is_refused_after_it_expires() {
    let s = server(|c| c.jwt_leeway_secs = 0).await;
    let exp = now() + 2;
    let t = format!(
        "Bearer {}",
        token(json!({"role": "pgrpc_user", "exp": exp}))
    );
    for _ in 0..3 {
        let r = whoami(&s, Some(&t)).await;
        assert_eq!(r.body["user"], "pgrpc_user", "{}", r.text);
    }
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_refused(
        &whoami(&s, Some(&t)).await,
        "PGRST303",
        "expired after caching",
    );
}

/// Many distinct tokens at once through a small cache: each request gets its own claims, never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cache_never_mixes_up_concurrent_tokens() {
    let s = server(|c| {
        c.jwt_secret = Some(test_jwks());
        c.jwt_cache_max_entries = 4;
    })
    .await;
    let s = std::sync::Arc::new(s);
    let tasks = (0..48).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            let sub = format!("user-{}", i % 12);
            let role = if i % 2 == 0 {
                "pgrpc_user"
            } else {
                "pgrpc_service"
            };
            let t = bearer(
                Algorithm::ES256,
                Some("es256"),
                json!({"role": role, "sub": sub}),
            );
            let r = whoami(&s, Some(&t)).await;
            (sub, role, r)
        })
    });
    for (sub, role, r) in crate::support::join_tasks(tasks).await {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["claims"]["sub"], json!(sub), "{}", r.text);
        assert_eq!(r.body["user"], json!(role), "{}", r.text);
    }
}

/// A bad role claim key, JWK Set or audience stops the server at startup with the setting's name.
#[tokio::test]
async fn misconfigured_jwt_settings_stop_startup() {
    type Tune = fn(&mut ServeConfig);
    let cases: [(&str, Tune); 5] = [
        ("PGRPC_JWT_ROLE_CLAIM_KEY", |c| {
            c.jwt_role_claim_key = "app_metadata.role".into()
        }),
        ("PGRPC_JWT_SECRET", |c| {
            c.jwt_secret =
                Some(r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#.into())
        }),
        ("PGRPC_JWT_SECRET", |c| {
            c.jwt_secret = Some("{\"kty\": ".into())
        }),
        ("PGRPC_JWT_SECRET", |c| {
            c.jwt_secret = Some("@/nonexistent/pgrpc-test/jwks.json".into())
        }),
        ("PGRPC_JWT_AUD", |c| c.jwt_aud = Some(String::new())),
    ];
    for (setting, tune) in cases {
        let mut config = ServeConfig::new("postgres://unused@127.0.0.1:1/none");
        tune(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            pgrpc::server::serve(listener, config, std::future::pending()),
        )
        .await
        .expect("startup fails at once, before the database");
        let err = outcome.expect_err(setting).to_string();
        assert!(err.contains(setting), "{setting}: {err}");
    }
}
