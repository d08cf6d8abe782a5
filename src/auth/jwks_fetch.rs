//! Fetching keys from an identity provider: one bounded HTTP(S) GET, its
//! `Cache-Control`, and the key-fetching settings; the parsers of what
//! comes back (an OpenID Connect discovery document, a JWK Set) are in
//! [`jwks_parse`](super::jwks_parse). Each bound is a constant here and a
//! row of docs/limits.md; whatever the provider sends, a fetch gives keys
//! or a [`FetchError`], and the caller keeps its last good keys on an
//! error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, LOCATION};
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::ServeConfig;

/// The largest discovery document or JWK Set read; a longer one is
/// refused whole (a provider's set is a few KiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The most keys a fetched JWK Set may hold; a set with more is refused
/// whole, before any key is parsed.
pub const MAX_KEYS: usize = 1000;

/// The path an OpenID Connect issuer serves its configuration at.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Why a fetch gave no keys. The last good keys stay in use.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("cannot reach {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered {status} redirecting to {location:?}; redirects are not followed")]
    Redirect {
        url: String,
        status: u16,
        location: String,
    },
    #[error("{url} sent more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {cause}")]
    Body { url: String, cause: String },
    #[error("the discovery document {0}")]
    Discovery(String),
    #[error("the JWK Set {0}")]
    Jwks(String),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// A document as fetched: its body and the `max-age` it may be kept for.
pub struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// A GET that follows no redirect, gives up after `timeout` (connection
/// included) and reads at most [`MAX_DOCUMENT_BYTES`].
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl Fetcher {
    /// `https` needs the system's CA certificates (Debian's
    /// `ca-certificates`); a plain `http://` URL needs none.
    pub fn new(timeout: Duration, needs_tls: bool) -> Result<Fetcher, FetchError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(builder) => builder,
            Err(e) if needs_tls => return Err(FetchError::Tls(e.to_string())),
            // No CA certificates on this machine: plain http still works,
            // and an https URL would fail to verify, as it should.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| FetchError::Tls(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        Ok(Fetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// The document at `url`, or why there is none.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        let uri = parse_url(url)?;
        match tokio::time::timeout(self.timeout, self.get_uri(url, uri)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    async fn get_uri(&self, url: &str, uri: Uri) -> Result<Fetched, FetchError> {
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "pgrpc")
            .body(Empty::new())
            .map_err(|e| FetchError::BadUrl(format!("{url} ({e})")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| FetchError::Unreachable {
                url: url.to_string(),
                cause: error_chain(&e),
            })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            return Err(FetchError::Redirect {
                url: url.to_string(),
                status: status.as_u16(),
                location,
            });
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
            });
        }
        let cache_control: Vec<String> = response
            .headers()
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge {
                        url: url.to_string(),
                    }
                } else {
                    FetchError::Body {
                        url: url.to_string(),
                        cause: e.to_string(),
                    }
                }
            })?
            .to_bytes();
        Ok(Fetched {
            body,
            max_age: max_age(cache_control.iter().map(String::as_str)),
        })
    }
}

/// An error and its causes on one line: hyper's client error alone says
/// only "client error (Connect)".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An absolute `http://` or `https://` URL with a host.
pub fn parse_url(url: &str) -> Result<Uri, FetchError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| FetchError::BadUrl(url.to_string()))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(FetchError::BadUrl(url.to_string())),
    }
}

/// How long a response may be kept, from its `Cache-Control` values:
/// `max-age=N` (the first one), zero for `no-cache` or `no-store`, `None`
/// when it says neither.
pub fn max_age<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Duration> {
    let mut no_cache = false;
    for value in values {
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = match directive.split_once('=') {
                Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case("max-age") {
                if let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok()) {
                    return Some(Duration::from_secs(secs));
                }
            } else if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store")
            {
                no_cache = true;
            }
        }
    }
    no_cache.then_some(Duration::ZERO)
}
/// Checks the key-fetching settings of `config`, naming the one to fix.
pub fn validate_settings(config: &ServeConfig) -> Result<(), String> {
    if config.jwt_jwks_url.is_some() && config.jwt_oidc_issuer.is_some() {
        return Err(
            "PGRPC_JWT_JWKS_URL and PGRPC_JWT_OIDC_ISSUER are both set; set one \
             (the issuer's discovery document names its JWK Set)"
                .into(),
        );
    }
    if let Some(url) = &config.jwt_jwks_url {
        parse_url(url).map_err(|e| format!("PGRPC_JWT_JWKS_URL: {e}"))?;
    }
    if let Some(issuer) = &config.jwt_oidc_issuer {
        parse_url(issuer).map_err(|e| format!("PGRPC_JWT_OIDC_ISSUER: {e}"))?;
    }
    if config.jwt_jwks_min_refresh_secs == 0 {
        return Err("PGRPC_JWT_JWKS_MIN_REFRESH_SECS must be at least 1".into());
    }
    if config.jwt_jwks_max_refresh_secs < config.jwt_jwks_min_refresh_secs {
        return Err(
            "PGRPC_JWT_JWKS_MAX_REFRESH_SECS must be at least PGRPC_JWT_JWKS_MIN_REFRESH_SECS"
                .into(),
        );
    }
    if config.jwt_jwks_timeout.is_zero() {
        return Err("PGRPC_JWT_JWKS_TIMEOUT_MS must be at least 1".into());
    }
    if config
        .jwt_jwks_cache_file
        .as_deref()
        .is_some_and(|p| p.trim().is_empty())
    {
        return Err("PGRPC_JWT_JWKS_CACHE_FILE must not be empty; unset it to keep no copy".into());
    }
    Ok(())
}

/// The discovery document's URL for an issuer.
pub fn discovery_url(issuer: &str) -> String {
    format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    // max-age is read from any Cache-Control value; no-cache is zero; nothing usable is None.
    #[test]
    fn max_age_reads_cache_control() {
        let secs = |v: &[&str]| max_age(v.iter().copied()).map(|d| d.as_secs());
        assert_eq!(secs(&["public, max-age=300"]), Some(300));
        assert_eq!(
            secs(&["public", "Max-Age=\"20\", must-revalidate"]),
            Some(20)
        );
        assert_eq!(secs(&["no-cache"]), Some(0));
        assert_eq!(secs(&["no-store, max-age=9"]), Some(9));
        assert_eq!(secs(&["max-age=-1"]), None);
        assert_eq!(secs(&["max-age=99999999999999999999999"]), None);
        assert_eq!(secs(&[]), None);
    }

    // Conflicting or impossible key-fetching settings stop startup, naming the setting.
    #[test]
    fn bad_settings_name_the_setting() {
        let base = ServeConfig::new("postgres://x");
        type Tune = fn(&mut ServeConfig);
        let cases: [(&str, Tune); 5] = [
            ("PGRPC_JWT_JWKS_URL and", |c| {
                c.jwt_jwks_url = Some("http://a/j".into());
                c.jwt_oidc_issuer = Some("http://a".into());
            }),
            ("PGRPC_JWT_JWKS_URL", |c| {
                c.jwt_jwks_url = Some("ftp://a/j".into())
            }),
            ("PGRPC_JWT_OIDC_ISSUER", |c| {
                c.jwt_oidc_issuer = Some("idp.example.com".into())
            }),
            ("PGRPC_JWT_JWKS_MIN_REFRESH_SECS", |c| {
                c.jwt_jwks_min_refresh_secs = 0
            }),
            ("PGRPC_JWT_JWKS_MAX_REFRESH_SECS", |c| {
                c.jwt_jwks_max_refresh_secs = 1
            }),
        ];
        for (setting, tune) in cases {
            let mut c = base.clone();
            tune(&mut c);
            let err = c.validate().expect_err(setting);
            assert!(err.starts_with(setting), "{setting}: {err}");
        }
    }
}
