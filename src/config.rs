//! Server configuration: one struct whose fields are the command-line flags
//! and environment variables of `pgrpc serve`, each default written once,
//! here. Tests build it with `ServeConfig::new` (the defaults, no
//! environment) and change fields.

use std::time::Duration;

use clap::{Args, FromArgMatches};

use crate::prefer::TxEnd;

/// Everything `serve` needs.
#[derive(Clone, Debug, Args)]
pub struct ServeConfig {
    /// The `pgrpc_authenticator` connection; `main` sets it from
    /// `PGRPC_DATABASE_URL` or from the embedded server.
    #[arg(skip)]
    pub database_url: String,
    /// The key that verifies tokens, as PostgREST's `jwt-secret`: an HS256
    /// secret of at least 32 characters (embedded mode generates one), a
    /// JWK, or a JWK Set `{"keys":[...]}`; `@/path` reads it from a file.
    /// Without one, every request with a token is refused with 401.
    #[arg(long, env = "PGRPC_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Clock skew allowed on token times (exp, nbf, iat), in seconds.
    #[arg(long, env = "PGRPC_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,
    /// Where the role is in the claims, as PostgREST's `jwt-role-claim-key`
    /// JSPath: `.app_metadata.role`, `."https://example.com/role"`,
    /// `.roles[0]`.
    #[arg(long, env = "PGRPC_JWT_ROLE_CLAIM_KEY", default_value = ".role")]
    pub jwt_role_claim_key: String,
    /// When set, a token's `aud` claim (if it has one) must name this
    /// audience, as PostgREST's `jwt-aud`.
    #[arg(long, env = "PGRPC_JWT_AUD")]
    pub jwt_aud: Option<String>,
    /// Validated tokens remembered, so that a token seen again is not
    /// verified again; 0 disables the cache.
    #[arg(long, env = "PGRPC_JWT_CACHE_MAX_ENTRIES", default_value_t = 1000)]
    pub jwt_cache_max_entries: usize,
    /// A JWK Set fetched over HTTP(S) and refreshed, as an identity
    /// provider publishes it (`https://idp.example.com/.well-known/jwks.json`);
    /// its keys verify tokens alongside `PGRPC_JWT_SECRET`'s (docs/jwt.md).
    #[arg(long, env = "PGRPC_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// An OpenID Connect issuer: its `/.well-known/openid-configuration`
    /// names the JWK Set (`jwks_uri`), and a token's `iss` must equal it.
    #[arg(long, env = "PGRPC_JWT_OIDC_ISSUER")]
    pub jwt_oidc_issuer: Option<String>,
    /// The shortest time between two scheduled refreshes of fetched keys,
    /// whatever the provider's `Cache-Control: max-age` says, in seconds.
    #[arg(long, env = "PGRPC_JWT_JWKS_MIN_REFRESH_SECS", default_value_t = 60)]
    pub jwt_jwks_min_refresh_secs: u64,
    /// The longest time between two scheduled refreshes of fetched keys,
    /// and the interval when the provider sends no max-age, in seconds.
    #[arg(
        long,
        env = "PGRPC_JWT_JWKS_MAX_REFRESH_SECS",
        default_value_t = 86_400
    )]
    pub jwt_jwks_max_refresh_secs: u64,
    /// The shortest time between two refreshes caused by a token whose
    /// `kid` names no fetched key, in ms: unknown kids cannot flood the
    /// provider.
    #[arg(long = "jwt-jwks-kid-refresh-ms", env = "PGRPC_JWT_JWKS_KID_REFRESH_MS", default_value = "10000", value_parser = millis)]
    pub jwt_jwks_kid_refresh: Duration,
    /// How long one fetch of the discovery document or the JWK Set may
    /// take, connection included, in ms.
    #[arg(long = "jwt-jwks-timeout-ms", env = "PGRPC_JWT_JWKS_TIMEOUT_MS", default_value = "5000", value_parser = millis)]
    pub jwt_jwks_timeout: Duration,
    /// A file where the last good JWK Set is kept: at startup, a provider
    /// that does not answer is replaced by it. Unset, the server does not
    /// start until the provider answers.
    #[arg(long, env = "PGRPC_JWT_JWKS_CACHE_FILE")]
    pub jwt_jwks_cache_file: Option<String>,
    /// Exposed schemas, comma-separated; the first is the default profile.
    #[arg(
        long,
        env = "PGRPC_SCHEMAS",
        value_delimiter = ',',
        default_value = DEFAULT_SCHEMAS
    )]
    pub schemas: Vec<String>,
    /// Schemas searched after the profile's schema, comma-separated, as
    /// PostgREST's db-extra-search-path.
    #[arg(
        long,
        env = "PGRPC_EXTRA_SEARCH_PATH",
        value_delimiter = ',',
        default_value = "public"
    )]
    pub extra_search_path: Vec<String>,
    /// A function's own settings applied to its whole transaction, as
    /// PostgREST's db-hoisted-tx-settings.
    #[arg(
        long,
        env = "PGRPC_HOISTED_TX_SETTINGS",
        value_delimiter = ',',
        default_value = "statement_timeout,plan_filter.statement_cost_limit,default_transaction_isolation"
    )]
    pub hoisted_tx_settings: Vec<String>,
    /// A function called after the settings and before every call, as
    /// PostgREST's db-pre-request (for example `api.check_request`); its
    /// errors answer like the call's.
    #[arg(long, env = "PGRPC_PRE_REQUEST")]
    pub pre_request: Option<String>,
    /// Origins a browser may call from, comma-separated, as PostgREST's
    /// server-cors-allowed-origins; empty: any origin (`*`).
    #[arg(long, env = "PGRPC_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Role for requests without a token.
    #[arg(long, env = "PGRPC_ANON_ROLE", default_value = "pgrpc_anon")]
    pub anon_role: String,
    /// Pooled database connections.
    #[arg(long, env = "PGRPC_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// How many plain reads one pooled connection may carry at once: above
    /// 1, a read sent as one implicit transaction gives its connection
    /// back as soon as its statements are queued, and the next request's
    /// follow them on it, each ending at its own Sync (docs/benchmarks.md).
    /// 1: one request per connection at a time, as PostgREST.
    #[arg(long, env = "PGRPC_POOL_PIPELINE", default_value_t = 1)]
    pub pool_pipeline: usize,
    /// Serve the address on this many threads (1 to 256), each with a
    /// single-threaded runtime of its own, its own listener on the address
    /// (`SO_REUSEPORT`: the kernel spreads new client connections over
    /// them) and its share of `PGRPC_POOL_SIZE`, so that a request never
    /// leaves the thread that accepted it; unset, one runtime of
    /// `PGRPC_WORKER_THREADS` threads serves every connection
    /// (docs/configuration.md).
    #[arg(long, env = "PGRPC_SHARDS")]
    pub shards: Option<usize>,
    /// How long a request waits for a pooled connection before 504, in ms.
    #[arg(long = "pool-timeout-ms", env = "PGRPC_POOL_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub pool_timeout: Duration,
    /// The most rows a set-returning function's response carries, as
    /// PostgREST's db-max-rows; unset, no limit.
    #[arg(long, env = "PGRPC_MAX_ROWS")]
    pub max_rows: Option<i64>,
    /// How every call's transaction ends, as PostgREST's db-tx-end:
    /// `commit`, `commit-allow-override`, `rollback` or
    /// `rollback-allow-override`; with `…-allow-override`, a request's
    /// `Prefer: tx=commit|rollback` decides.
    #[arg(long, env = "PGRPC_TX_END", value_enum, default_value_t = TxEnd::Commit)]
    pub tx_end: TxEnd,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "PGRPC_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// The most calls of one batch (`POST /rpc`).
    #[arg(long, env = "PGRPC_MAX_BATCH_CALLS", default_value_t = 100)]
    pub max_batch_calls: usize,
    /// How long SIGTERM waits for in-flight requests, in ms.
    #[arg(long = "shutdown-grace-ms", env = "PGRPC_SHUTDOWN_GRACE_MS", default_value = "30000", value_parser = millis)]
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request's headers, idle
    /// keep-alive time included, before its connection is closed, in ms.
    #[arg(long = "header-read-timeout-ms", env = "PGRPC_HEADER_READ_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub header_read_timeout: Duration,
    /// The longest a request's body may go without a byte arriving, and
    /// the grace period before `PGRPC_BODY_MIN_BYTES_PER_SEC` applies, in
    /// ms; past it the request is 408 and its connection closed.
    #[arg(long = "body-read-timeout-ms", env = "PGRPC_BODY_READ_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub body_read_timeout: Duration,
    /// The slowest average rate a body may arrive at once its grace period
    /// (`PGRPC_BODY_READ_TIMEOUT_MS`) is over, in bytes per second; 0 turns
    /// the rate check off.
    #[arg(long, env = "PGRPC_BODY_MIN_BYTES_PER_SEC", default_value_t = 1024)]
    pub body_min_bytes_per_sec: u64,
    /// The longest a connection may wait for its client to accept another
    /// byte of a response, in ms; past it the connection is closed, so a
    /// client that stops reading holds its slot no longer.
    #[arg(long = "response-write-timeout-ms", env = "PGRPC_RESPONSE_WRITE_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub response_write_timeout: Duration,
    /// The size a streamable result (a SETOF of a read-only call, as JSON,
    /// NDJSON or CSV) is buffered to before its answer switches to a
    /// chunked stream, in bytes; a result that fits is answered whole,
    /// with `Content-Length`, as any other. 0 turns streaming off.
    #[arg(long, env = "PGRPC_STREAM_THRESHOLD_BYTES", default_value_t = 262_144)]
    pub stream_threshold_bytes: usize,
    /// The longest a streamed answer may take, from its call's start, in
    /// ms; past it the stream is cut short (no final chunk), its statement
    /// cancelled and its connection closed.
    #[arg(long = "stream-max-ms", env = "PGRPC_STREAM_MAX_MS", default_value = "300000", value_parser = millis)]
    pub stream_max_duration: Duration,
    /// Open client connections at most; further clients wait in the listen
    /// backlog until one closes.
    #[arg(long, env = "PGRPC_MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,
    /// A second listen address serving only `/live`, `/ready` and
    /// `/metrics`, with connections of its own, as PostgREST's
    /// admin-server-port: an orchestrator's probes reach it even when
    /// clients hold every connection of the main address.
    #[arg(long, env = "PGRPC_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// A read replica (or a pooler in front of several, such as HAProxy's
    /// replica port) in the `pgrpc_authenticator` role: GET and HEAD calls
    /// of STABLE or IMMUTABLE functions run there (docs/replicas.md).
    #[arg(long, env = "PGRPC_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,
    /// How long a read that sends back an `X-Pgrpc-Lsn` waits for the
    /// replica to replay it before it runs on the primary, in ms.
    #[arg(long = "read-wait-ms", env = "PGRPC_READ_WAIT_MS", default_value = "200", value_parser = millis)]
    pub read_wait: Duration,
    /// A replica further behind the primary than this is skipped, in ms.
    #[arg(long = "read-max-lag-ms", env = "PGRPC_READ_MAX_LAG_MS", default_value = "5000", value_parser = millis)]
    pub read_max_lag: Duration,
    /// Set the `pgrpc_lsn` cookie (HttpOnly, SameSite=Lax, Path=/) on every
    /// answer that carries `X-Pgrpc-Lsn`, so that a browser's next reads
    /// see its writes with no client code (docs/replicas.md).
    #[arg(long, env = "PGRPC_LSN_COOKIE", default_value_t = false, action = clap::ArgAction::Set)]
    pub lsn_cookie: bool,
    /// Named prepared statements on pooled connections; `false` behind a
    /// transaction-mode pooler (pgbouncer), as PostgREST's
    /// db-prepared-statements.
    #[arg(long, env = "PGRPC_PREPARED_STATEMENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub prepared_statements: bool,
    /// The schema listener's connection (LISTEN pgrst and the function
    /// cache), when PGRPC_DATABASE_URL goes through a transaction-mode
    /// pooler, which cannot deliver notifications; default
    /// PGRPC_DATABASE_URL.
    #[arg(long, env = "PGRPC_LISTENER_DATABASE_URL", hide_env_values = true)]
    pub listener_database_url: Option<String>,
    /// An OTLP/HTTP collector (`http://collector:4318`): spans of every
    /// request and transaction are POSTed to `<it>/v1/traces` as JSON
    /// (docs/observability.md). Unset: no export.
    #[arg(long, env = "PGRPC_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// A file of API keys (supabase's `sb_publishable_…`/`sb_secret_…`,
    /// or any opaque key) sent in the `apikey` header: lines of
    /// `<sha256 hex of the key> <role> [<claims JSON object>]`, or a JSON
    /// array of `{"sha256", "role", "claims"}` (docs/jwt.md).
    #[arg(long, env = "PGRPC_API_KEYS")]
    pub api_keys: Option<String>,
    /// A `Server-Timing` header on RPC answers, with the jwt, plan,
    /// transaction and render stages, as PostgREST's server-timing-enabled.
    #[arg(long, env = "PGRPC_SERVER_TIMING", default_value_t = false, action = clap::ArgAction::Set)]
    pub server_timing: bool,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// The exposed schemas without `PGRPC_SCHEMAS` (`serve`, `gen types`).
pub const DEFAULT_SCHEMAS: &str = "api";

pub const MIN_JWT_SECRET_LEN: usize = 32;

/// `schema.function` or `function`, each part a plain identifier.
pub fn pre_request_parts(name: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = name.trim().split('.').collect();
    let plain = |p: &&str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
            && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
    };
    (parts.len() <= 2 && parts.iter().all(plain)).then_some(parts)
}

/// A duration given in milliseconds.
pub fn millis(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("expected milliseconds: {e}"))
}

/// A clap-derived settings struct from `args` and its declared defaults,
/// without reading the environment: how code and tests build one.
pub fn from_args<T: Args + FromArgMatches>(args: &[&str]) -> Result<T, clap::Error> {
    let cmd = T::augment_args(clap::Command::new("pgrpc")).mut_args(|a| a.env(None::<&str>));
    let matches = cmd.try_get_matches_from(std::iter::once("pgrpc").chain(args.iter().copied()))?;
    T::from_arg_matches(&matches)
}

/// The most plain reads one connection may carry at once
/// (`PGRPC_POOL_PIPELINE`): past a few, a slow read holds up more requests
/// queued behind it than the saved wake-ups are worth.
pub const MAX_POOL_PIPELINE: usize = 8;

/// The most worker threads `PGRPC_WORKER_THREADS` may ask for: more
/// than any machine this runs on has cores, and each thread reserves a
/// stack.
pub const MAX_WORKER_THREADS: usize = 256;

/// Checks `PGRPC_WORKER_THREADS`, naming the setting.
pub fn check_worker_threads(n: usize) -> Result<(), String> {
    if (1..=MAX_WORKER_THREADS).contains(&n) {
        Ok(())
    } else {
        Err(format!(
            "PGRPC_WORKER_THREADS must be from 1 to {MAX_WORKER_THREADS}; unset it for one per core"
        ))
    }
}

/// The most threads `PGRPC_SHARDS` may ask for, as `MAX_WORKER_THREADS`.
pub const MAX_SHARDS: usize = 256;

impl ServeConfig {
    /// The schema listener's URL: `PGRPC_LISTENER_DATABASE_URL`, or the
    /// pool's.
    pub fn listener_url(&self) -> &str {
        self.listener_database_url
            .as_deref()
            .unwrap_or(&self.database_url)
    }

    pub fn new(database_url: impl Into<String>) -> Self {
        ServeConfig {
            database_url: database_url.into(),
            ..from_args(&[]).expect("every setting of ServeConfig has a default")
        }
    }

    /// Checks the settings that would otherwise fail later, naming the
    /// setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        // PGRPC_JWT_SECRET may name a file, so `auth::Auth::new` reads and
        // checks it, as it does the role claim key it parses.
        crate::auth::role_claim::RoleClaimKey::parse(&self.jwt_role_claim_key)
            .map_err(|e| format!("PGRPC_JWT_ROLE_CLAIM_KEY: {e}"))?;
        if self.jwt_aud.as_deref().is_some_and(|a| a.trim().is_empty()) {
            return Err("PGRPC_JWT_AUD must not be empty; unset it to accept any audience".into());
        }
        crate::auth::jwks_fetch::validate_settings(self)?;
        if self.schemas.is_empty() || self.schemas.iter().any(|s| s.trim().is_empty()) {
            return Err("PGRPC_SCHEMAS must list at least one schema".into());
        }
        if self.pool_size == 0 {
            return Err("PGRPC_POOL_SIZE must be at least 1".into());
        }
        if let Some(shards) = self.shards {
            if !(1..=MAX_SHARDS).contains(&shards) {
                return Err(format!(
                    "PGRPC_SHARDS must be from 1 to {MAX_SHARDS}; unset it for one runtime"
                ));
            }
            if shards > self.pool_size {
                return Err(format!(
                    "PGRPC_SHARDS ({shards}) must not be above PGRPC_POOL_SIZE ({}): each shard has a share of the pool, at least one connection",
                    self.pool_size
                ));
            }
            if shards > self.max_connections {
                return Err(format!(
                    "PGRPC_SHARDS ({shards}) must not be above PGRPC_MAX_CONNECTIONS ({}): each shard serves a share of them, at least one",
                    self.max_connections
                ));
            }
        }
        if !(1..=MAX_POOL_PIPELINE).contains(&self.pool_pipeline) {
            return Err(format!(
                "PGRPC_POOL_PIPELINE must be from 1 to {MAX_POOL_PIPELINE}"
            ));
        }
        if self.max_body_bytes == 0 {
            return Err("PGRPC_MAX_BODY_BYTES must be at least 1".into());
        }
        if self.max_batch_calls == 0 {
            return Err("PGRPC_MAX_BATCH_CALLS must be at least 1".into());
        }
        if self.max_rows.is_some_and(|n| n < 0) {
            return Err("PGRPC_MAX_ROWS must not be negative; unset it for no limit".into());
        }
        if self.max_connections == 0 {
            return Err("PGRPC_MAX_CONNECTIONS must be at least 1".into());
        }
        if self.header_read_timeout.is_zero() {
            return Err("PGRPC_HEADER_READ_TIMEOUT_MS must be at least 1".into());
        }
        if self.body_read_timeout.is_zero() {
            return Err("PGRPC_BODY_READ_TIMEOUT_MS must be at least 1".into());
        }
        if self.response_write_timeout.is_zero() {
            return Err("PGRPC_RESPONSE_WRITE_TIMEOUT_MS must be at least 1".into());
        }
        if self.stream_max_duration.is_zero() {
            return Err("PGRPC_STREAM_MAX_MS must be at least 1".into());
        }
        if self
            .admin_listen
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(
                "PGRPC_ADMIN_LISTEN must not be empty; unset it to serve no admin address".into(),
            );
        }
        if self
            .read_database_url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            return Err(
                "PGRPC_READ_DATABASE_URL must not be empty; unset it to read from the primary"
                    .into(),
            );
        }
        if self.read_max_lag.is_zero() {
            return Err("PGRPC_READ_MAX_LAG_MS must be at least 1".into());
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            crate::trace::otlp::traces_uri(endpoint)?;
        }
        if self.anon_role.trim().is_empty() {
            return Err("PGRPC_ANON_ROLE must name a role".into());
        }
        if let Some(name) = &self.pre_request {
            if pre_request_parts(name).is_none() {
                return Err(format!(
                    "PGRPC_PRE_REQUEST must name a function as schema.function or function, got {name:?}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_one_declaration() {
        let c = ServeConfig::new("postgres://x");
        assert_eq!(c.schemas, vec!["api".to_string()]);
        assert_eq!(c.pool_size, 16);
        assert_eq!(c.pool_pipeline, 1);
        assert_eq!(c.pool_timeout, Duration::from_secs(10));
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.body_read_timeout, Duration::from_secs(10));
        assert_eq!(c.response_write_timeout, Duration::from_secs(10));
        assert_eq!(c.body_min_bytes_per_sec, 1024);
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.jwt_role_claim_key, ".role");
        assert_eq!(c.jwt_aud, None);
        assert_eq!(c.jwt_cache_max_entries, 1000);
        assert!(c.prepared_statements);
        assert_eq!(c.read_database_url, None);
        assert_eq!(c.read_wait, Duration::from_millis(200));
        assert_eq!(c.read_max_lag, Duration::from_secs(5));
        assert_eq!(c.listener_url(), "postgres://x");
        assert_eq!(c.tx_end, TxEnd::Commit);
        assert!(c.validate().is_ok());
    }

    // PGRPC_PREPARED_STATEMENTS takes an explicit false, as PostgREST's setting does.
    #[test]
    fn prepared_statements_can_be_turned_off() {
        let c: ServeConfig = from_args(&["--prepared-statements", "false"]).expect("parses");
        assert!(!c.prepared_statements);
    }

    // A connection carries 1 to MAX_POOL_PIPELINE reads at once.
    #[test]
    fn the_pool_pipeline_is_bounded() {
        for n in [0, MAX_POOL_PIPELINE + 1] {
            let mut c = ServeConfig::new("postgres://x");
            c.pool_pipeline = n;
            let err = c.validate().expect_err("out of range");
            assert!(err.starts_with("PGRPC_POOL_PIPELINE"), "{n}: {err}");
        }
        for n in [1, MAX_POOL_PIPELINE] {
            let mut c = ServeConfig::new("postgres://x");
            c.pool_pipeline = n;
            assert_eq!(c.validate(), Ok(()), "{n}");
        }
    }

    // Shards: 1 to MAX_SHARDS, and no more than the pool has connections.
    #[test]
    fn the_shards_are_bounded_by_the_limit_and_the_pool() {
        for (shards, pool, setting) in [
            (0, 16, "PGRPC_SHARDS must be from"),
            (MAX_SHARDS + 1, 1000, "PGRPC_SHARDS must be from"),
            (
                5,
                4,
                "PGRPC_SHARDS (5) must not be above PGRPC_POOL_SIZE (4)",
            ),
            (300, 300, "PGRPC_SHARDS must be from"),
        ] {
            let mut c = ServeConfig::new("postgres://x");
            (c.shards, c.pool_size) = (Some(shards), pool);
            let err = c.validate().expect_err("out of range");
            assert!(err.starts_with(setting), "{shards}/{pool}: {err}");
        }
        for (shards, pool) in [(1, 1), (4, 4), (MAX_SHARDS, MAX_SHARDS)] {
            let mut c = ServeConfig::new("postgres://x");
            (c.shards, c.pool_size) = (Some(shards), pool);
            assert_eq!(c.validate(), Ok(()), "{shards}/{pool}");
        }
        let mut c = ServeConfig::new("postgres://x");
        (c.shards, c.max_connections) = (Some(3), 2);
        let err = c.validate().expect_err("more shards than connections");
        assert!(
            err.starts_with("PGRPC_SHARDS (3) must not be above PGRPC_MAX_CONNECTIONS (2)"),
            "{err}"
        );
        let c: ServeConfig = from_args(&["--shards", "2"]).expect("parses");
        assert_eq!(c.shards, Some(2));
        assert_eq!(ServeConfig::new("postgres://x").shards, None);
    }

    // The runtime's worker threads: 1 to MAX_WORKER_THREADS.
    #[test]
    fn the_worker_threads_are_bounded() {
        for n in [0, MAX_WORKER_THREADS + 1] {
            let err = check_worker_threads(n).expect_err("out of range");
            assert!(err.starts_with("PGRPC_WORKER_THREADS"), "{n}: {err}");
        }
        for n in [1, MAX_WORKER_THREADS] {
            assert_eq!(check_worker_threads(n), Ok(()), "{n}");
        }
    }

    // An empty replica URL or a zero lag bound stops startup naming the setting.
    #[test]
    fn bad_replica_settings_name_the_setting() {
        let mut c = ServeConfig::new("postgres://x");
        c.read_database_url = Some(" ".into());
        let err = c.validate().expect_err("empty url");
        assert!(err.starts_with("PGRPC_READ_DATABASE_URL"), "{err}");
        let mut c = ServeConfig::new("postgres://x");
        c.read_max_lag = Duration::ZERO;
        let err = c.validate().expect_err("zero lag");
        assert!(err.starts_with("PGRPC_READ_MAX_LAG_MS"), "{err}");
    }

    // A role claim key that is not a JSPath, or an empty audience, stops startup naming the setting.
    #[test]
    fn bad_jwt_settings_name_the_setting() {
        let mut c = ServeConfig::new("postgres://x");
        c.jwt_role_claim_key = "app_metadata.role".into();
        let err = c.validate().expect_err("not a JSPath");
        assert!(err.starts_with("PGRPC_JWT_ROLE_CLAIM_KEY"), "{err}");
        let mut c = ServeConfig::new("postgres://x");
        c.jwt_aud = Some(" ".into());
        let err = c.validate().expect_err("empty audience");
        assert!(err.starts_with("PGRPC_JWT_AUD"), "{err}");
    }
}
