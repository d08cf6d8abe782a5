//! Keys from an identity provider (`PGRPC_JWT_JWKS_URL`, or the JWK Set an
//! `PGRPC_JWT_OIDC_ISSUER` names), kept fresh without a restart:
//!
//! - a scheduled refresh after the set's `Cache-Control: max-age`, clamped
//!   to `PGRPC_JWT_JWKS_MIN_REFRESH_SECS`..`PGRPC_JWT_JWKS_MAX_REFRESH_SECS`;
//! - a refresh when a token names a `kid` no fetched key has, at most once
//!   per `PGRPC_JWT_JWKS_KID_REFRESH_MS`, so unknown kids cannot flood the
//!   provider. Every refresh holds one lock: requests that arrive while one
//!   is running wait for it and share its result.
//!
//! A refresh that fails keeps the last good keys, logs why, and is tried
//! again after the floor. At startup the server needs keys: from the
//! provider, or else from `PGRPC_JWT_JWKS_CACHE_FILE`, the copy of the last
//! good set that every successful fetch writes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tracing::{info, warn};

use super::jwks_fetch::{self, FetchError, Fetcher};
use super::jwks_parse::{self, ParsedSet};
use super::keys::Keys;
use crate::config::ServeConfig;

/// Where the keys come from.
enum Source {
    JwksUrl(String),
    Issuer(String),
}

impl Source {
    fn setting(&self) -> &'static str {
        match self {
            Source::JwksUrl(_) => "PGRPC_JWT_JWKS_URL",
            Source::Issuer(_) => "PGRPC_JWT_OIDC_ISSUER",
        }
    }
}

/// The refresh schedule's state, guarded by the one refresh lock.
struct Schedule {
    /// When the last fetch (good or bad) ended.
    last_attempt: Option<Instant>,
    /// When the scheduled refresh is due.
    next_due: Instant,
    /// The accepted keys of the current set, to tell a change.
    fingerprint: String,
}

/// Fetched keys and their refresh rules, shared by every request.
pub struct RemoteKeys {
    source: Source,
    fetcher: Fetcher,
    current: RwLock<Option<Arc<Keys>>>,
    /// Goes up each time the set of keys changes: the token cache is
    /// emptied then, so a token of a removed key stops passing at once.
    generation: AtomicU64,
    /// Goes up after each fetch, good or bad: a request that waited for
    /// the lock sees that a refresh ran meanwhile and does not start
    /// another.
    attempts: AtomicU64,
    schedule: Mutex<Schedule>,
    min_refresh: Duration,
    max_refresh: Duration,
    kid_refresh: Duration,
    cache_file: Option<PathBuf>,
}

impl RemoteKeys {
    /// `None` unless a JWK Set URL or an issuer is configured. Nothing is
    /// fetched yet: [`RemoteKeys::start`] does.
    pub fn from_config(config: &ServeConfig) -> Result<Option<RemoteKeys>, String> {
        let source = match (&config.jwt_jwks_url, &config.jwt_oidc_issuer) {
            (Some(url), None) => Source::JwksUrl(url.trim().to_string()),
            (None, Some(issuer)) => Source::Issuer(issuer.trim().to_string()),
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err("PGRPC_JWT_JWKS_URL and PGRPC_JWT_OIDC_ISSUER are both set".into())
            }
        };
        let url = match &source {
            Source::JwksUrl(u) | Source::Issuer(u) => u,
        };
        let fetcher = Fetcher::new(config.jwt_jwks_timeout, url.starts_with("https:"))
            .map_err(|e| format!("{}: {e}", source.setting()))?;
        let min_refresh = Duration::from_secs(config.jwt_jwks_min_refresh_secs.max(1));
        Ok(Some(RemoteKeys {
            source,
            fetcher,
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            schedule: Mutex::new(Schedule {
                last_attempt: None,
                next_due: Instant::now(),
                fingerprint: String::new(),
            }),
            min_refresh,
            max_refresh: Duration::from_secs(config.jwt_jwks_max_refresh_secs).max(min_refresh),
            kid_refresh: config.jwt_jwks_kid_refresh,
            cache_file: config.jwt_jwks_cache_file.as_deref().map(PathBuf::from),
        }))
    }

    /// The issuer a token's `iss` must name, with `PGRPC_JWT_OIDC_ISSUER`.
    pub fn issuer(&self) -> Option<&str> {
        match &self.source {
            Source::Issuer(issuer) => Some(issuer),
            Source::JwksUrl(_) => None,
        }
    }

    /// The keys in use, if any were ever loaded.
    pub fn current(&self) -> Option<Arc<Keys>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The first fetch. Without an answer from the provider, the keys of
    /// the cache file are used when there is one; otherwise startup fails
    /// with a message naming the setting.
    pub async fn start(&self) -> Result<(), String> {
        let mut schedule = self.schedule.lock().await;
        let Err(fetch_error) = self.refresh(&mut schedule).await else {
            return Ok(());
        };
        let setting = self.source.setting();
        let Some(path) = &self.cache_file else {
            return Err(format!(
                "{setting}: no keys at startup: {fetch_error}; the server does not start without \
                 them (set PGRPC_JWT_JWKS_CACHE_FILE to start from the last good keys instead)"
            ));
        };
        let parsed = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|body| jwks_parse::parse_jwks(&body).map_err(|e| e.to_string()))
            .map_err(|cache_error| {
                format!(
                    "{setting}: no keys at startup: {fetch_error}; and PGRPC_JWT_JWKS_CACHE_FILE \
                     {}: {cache_error}",
                    path.display()
                )
            })?;
        warn!(cause = %fetch_error, file = %path.display(), keys = parsed.keys.len(),
            "the key provider does not answer: starting with the cached keys");
        self.install(parsed, &mut schedule);
        Ok(())
    }

    /// The scheduled refreshes, until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let due = self.schedule.lock().await.next_due;
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {
                    let mut schedule = self.schedule.lock().await;
                    // An unknown kid may have refreshed meanwhile.
                    if Instant::now() >= schedule.next_due {
                        let _ = self.refresh(&mut schedule).await;
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// A token named a `kid` no key has: refresh, unless a refresh ran while
    /// this request waited for the lock or one ended less than
    /// `PGRPC_JWT_JWKS_KID_REFRESH_MS` ago. The caller then looks again.
    pub async fn refresh_for_unknown_kid(&self) {
        let seen = self.attempts.load(Ordering::SeqCst);
        let mut schedule = self.schedule.lock().await;
        if self.attempts.load(Ordering::SeqCst) != seen {
            return;
        }
        if schedule
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.kid_refresh)
        {
            return;
        }
        info!("a token names an unknown kid: refreshing the keys");
        let _ = self.refresh(&mut schedule).await;
    }

    /// One fetch; on success the keys are replaced, on failure they are
    /// kept and the error is logged. Either way the next scheduled refresh
    /// is set.
    async fn refresh(&self, schedule: &mut Schedule) -> Result<(), FetchError> {
        let outcome = self.fetch().await;
        schedule.last_attempt = Some(Instant::now());
        self.attempts.fetch_add(1, Ordering::SeqCst);
        match outcome {
            Ok((parsed, body, max_age)) => {
                let wait = max_age
                    .unwrap_or(self.max_refresh)
                    .clamp(self.min_refresh, self.max_refresh);
                schedule.next_due = Instant::now() + wait;
                if parsed.fingerprint != schedule.fingerprint {
                    self.write_cache_file(&body);
                }
                self.install(parsed, schedule);
                Ok(())
            }
            Err(e) => {
                schedule.next_due = Instant::now() + self.min_refresh;
                warn!(cause = %e, setting = self.source.setting(),
                    "cannot refresh the JWT keys; keeping the last good keys");
                Err(e)
            }
        }
    }

    /// Puts a parsed set in use; the generation goes up if its keys differ.
    fn install(&self, parsed: ParsedSet, schedule: &mut Schedule) {
        if parsed.fingerprint == schedule.fingerprint && self.current().is_some() {
            return;
        }
        info!(
            keys = parsed.keys.len(),
            skipped = parsed.skipped,
            "JWT keys loaded"
        );
        schedule.fingerprint = parsed.fingerprint;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(parsed.keys));
        // After the swap: a request that reads the new generation verifies
        // with the new keys.
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The provider's JWK Set, parsed, with its body and max-age.
    async fn fetch(&self) -> Result<(ParsedSet, bytes::Bytes, Option<Duration>), FetchError> {
        let url = match &self.source {
            Source::JwksUrl(url) => url.clone(),
            Source::Issuer(issuer) => {
                let doc = self.fetcher.get(&jwks_fetch::discovery_url(issuer)).await?;
                jwks_parse::parse_discovery(&doc.body, issuer)?
            }
        };
        let fetched = self.fetcher.get(&url).await?;
        let parsed = jwks_parse::parse_jwks(&fetched.body)?;
        Ok((parsed, fetched.body, fetched.max_age))
    }

    /// Keeps the set for a restart while the provider is down: written
    /// beside, then renamed, so a crash never leaves half a file.
    fn write_cache_file(&self, body: &[u8]) {
        let Some(path) = &self.cache_file else {
            return;
        };
        let mut temporary = path.clone().into_os_string();
        temporary.push(".tmp");
        let written =
            std::fs::write(&temporary, body).and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = written {
            warn!(cause = %e, file = %path.display(), "cannot write PGRPC_JWT_JWKS_CACHE_FILE");
        }
    }
}
