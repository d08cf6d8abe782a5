//! Server configuration: one struct, with every default visible here.
//! `main` builds it from flags and environment (clap); tests build it with
//! `ServeConfig::new` and change fields.

use std::time::Duration;

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The `pgrpc_authenticator` connection (`PGRPC_DATABASE_URL`).
    pub database_url: String,
    /// HS256 secret (`PGRPC_JWT_SECRET`), at least 32 characters. Without
    /// one, every request with a token is refused with 401.
    pub jwt_secret: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    pub jwt_leeway_secs: u64,
    /// Exposed schemas (`PGRPC_SCHEMAS`); the first is the default profile.
    pub schemas: Vec<String>,
    /// Role for requests without a token (`PGRPC_ANON_ROLE`).
    pub anon_role: String,
    /// Maximum pooled connections (`PGRPC_POOL_SIZE`).
    pub pool_size: usize,
    /// How long a request waits for a pooled connection before 504
    /// (`PGRPC_POOL_TIMEOUT_MS`).
    pub pool_timeout: Duration,
    /// Largest accepted request body (`PGRPC_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request's headers, idle
    /// keep-alive time included, before its connection is closed
    /// (`PGRPC_HEADER_READ_TIMEOUT_MS`).
    pub header_read_timeout: Duration,
    /// Open client connections at most (`PGRPC_MAX_CONNECTIONS`); further
    /// clients wait in the listen backlog until one closes.
    pub max_connections: usize,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl ServeConfig {
    pub fn new(database_url: impl Into<String>) -> Self {
        ServeConfig {
            database_url: database_url.into(),
            jwt_secret: None,
            jwt_leeway_secs: 30,
            schemas: vec!["api".to_string()],
            anon_role: "pgrpc_anon".to_string(),
            pool_size: 16,
            pool_timeout: Duration::from_millis(10_000),
            max_body_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1000,
        }
    }

    /// Checks the settings that would otherwise fail later, naming the
    /// setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(secret) = &self.jwt_secret {
            if secret.chars().count() < MIN_JWT_SECRET_LEN {
                return Err(format!(
                    "PGRPC_JWT_SECRET must be at least {MIN_JWT_SECRET_LEN} characters"
                ));
            }
        }
        if self.schemas.is_empty() || self.schemas.iter().any(|s| s.trim().is_empty()) {
            return Err("PGRPC_SCHEMAS must list at least one schema".into());
        }
        if self.pool_size == 0 {
            return Err("PGRPC_POOL_SIZE must be at least 1".into());
        }
        if self.max_body_bytes == 0 {
            return Err("PGRPC_MAX_BODY_BYTES must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("PGRPC_MAX_CONNECTIONS must be at least 1".into());
        }
        if self.header_read_timeout.is_zero() {
            return Err("PGRPC_HEADER_READ_TIMEOUT_MS must be at least 1".into());
        }
        if self.anon_role.trim().is_empty() {
            return Err("PGRPC_ANON_ROLE must name a role".into());
        }
        Ok(())
    }
}
