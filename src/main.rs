//! The `pgrpc` binary: parses arguments, starts logging, and hands over to
//! the library (`migrate::run`, `server::serve`, `relay::run`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pgrpc::config::{ServeConfig, DEFAULT_LISTEN};
use pgrpc::embedded::{self, Embedded};
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "pgrpc",
    version,
    about = "PostgreSQL integrity core with a PostgREST-compatible RPC proxy"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "PGRPC_LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the pending migrations of sql/ (as an owner or superuser).
    Migrate(MigrateArgs),
    /// Serve the exposed schemas over HTTP.
    Serve(ServeArgs),
    /// Deliver outbox events to an HTTP endpoint.
    Relay(RelayArgs),
}

#[derive(Args)]
struct MigrateArgs {
    /// Owner or superuser connection URL.
    #[arg(long, env = "PGRPC_MIGRATE_URL")]
    database_url: String,
}

#[derive(Args)]
struct ServeArgs {
    /// pgrpc_authenticator connection URL; without it, an embedded
    /// PostgreSQL is started in PGRPC_DATA_DIR.
    #[arg(long, env = "PGRPC_DATABASE_URL")]
    database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "PGRPC_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// HS256 secret, at least 32 characters (embedded mode generates one).
    #[arg(long, env = "PGRPC_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Exposed schemas, comma-separated; the first is the default [default: api].
    #[arg(long, env = "PGRPC_SCHEMAS", value_delimiter = ',')]
    schemas: Option<Vec<String>>,
    /// Role for requests without a token [default: pgrpc_anon].
    #[arg(long, env = "PGRPC_ANON_ROLE")]
    anon_role: Option<String>,
    /// Pooled connections [default: 16].
    #[arg(long, env = "PGRPC_POOL_SIZE")]
    pool_size: Option<usize>,
    /// Wait for a pooled connection before 504, in ms [default: 10000].
    #[arg(long, env = "PGRPC_POOL_TIMEOUT_MS")]
    pool_timeout_ms: Option<u64>,
    /// Largest request body in bytes [default: 1048576].
    #[arg(long, env = "PGRPC_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Clock skew allowed on token expiry, in seconds [default: 30].
    #[arg(long, env = "PGRPC_JWT_LEEWAY_SECS")]
    jwt_leeway_secs: Option<u64>,
    /// How long SIGTERM waits for in-flight requests, in ms [default: 30000].
    #[arg(long, env = "PGRPC_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
    /// Time a client has to send a request's headers, idle keep-alive
    /// included, in ms [default: 10000].
    #[arg(long, env = "PGRPC_HEADER_READ_TIMEOUT_MS")]
    header_read_timeout_ms: Option<u64>,
    /// Open client connections at most [default: 1000].
    #[arg(long, env = "PGRPC_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Embedded mode: data directory.
    #[arg(long, env = "PGRPC_DATA_DIR", default_value = "./.pgrpc")]
    data_dir: PathBuf,
    /// Embedded mode: directory of initdb and postgres (found automatically otherwise).
    #[arg(long, env = "PGRPC_PG_BIN_DIR")]
    pg_bin_dir: Option<PathBuf>,
}

#[derive(Args)]
struct RelayArgs {
    /// Connection URL of a role that may SET ROLE to --db-role.
    #[arg(long, env = "PGRPC_DATABASE_URL")]
    database_url: String,
    /// Role that runs the claims [default: pgrpc_service].
    #[arg(long, env = "PGRPC_RELAY_DB_ROLE")]
    db_role: Option<String>,
    /// http:// URL that receives one POST per event.
    #[arg(long, env = "PGRPC_RELAY_WEBHOOK_URL")]
    webhook_url: String,
    /// HMAC-SHA256 key for the signature header, at least 32 bytes.
    #[arg(long, env = "PGRPC_RELAY_SIGNING_SECRET", hide_env_values = true)]
    signing_secret: String,
    /// Consumer name recorded on leases [default: pgrpc-relay-<pid>].
    #[arg(long, env = "PGRPC_RELAY_CONSUMER")]
    consumer: Option<String>,
    /// Deliver only these event types (comma-separated).
    #[arg(long, env = "PGRPC_RELAY_EVENT_TYPES", value_delimiter = ',')]
    event_types: Option<Vec<String>>,
    /// Events per claim [default: 100].
    #[arg(long, env = "PGRPC_RELAY_BATCH_SIZE")]
    batch_size: Option<u32>,
    /// Lease length in seconds [default: 60].
    #[arg(long, env = "PGRPC_RELAY_LEASE_SECONDS")]
    lease_seconds: Option<u32>,
    /// Poll interval when no notification arrives, in ms [default: 5000].
    #[arg(long, env = "PGRPC_RELAY_POLL_MS")]
    poll_ms: Option<u64>,
    /// Deliveries in flight at once within a batch [default: 8].
    #[arg(long, env = "PGRPC_RELAY_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Limit for one POST, connection included, in ms [default: 10000].
    #[arg(long, env = "PGRPC_RELAY_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Migrate(args) => migrate(&args.database_url).await,
        Command::Serve(args) => serve(args).await,
        Command::Relay(args) => relay(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("pgrpc: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(url: &str) -> Result<(), String> {
    let report = pgrpc::migrate::run(url).await.map_err(|e| e.to_string())?;
    if report.applied.is_empty() {
        println!("migrations: nothing to apply, the database is up to date");
    } else {
        for name in &report.applied {
            println!("applied {name}");
        }
        println!("migrations: applied {}", report.applied.len());
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (PGRPC_LISTEN): {e}", args.listen))?;
    let mut embedded_server = None;
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            let pg = Embedded::start(&args.data_dir, args.pg_bin_dir.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let result = pgrpc::migrate::run(&pg.superuser_url()).await;
            match result {
                Ok(report) => {
                    for name in &report.applied {
                        info!(migration = %name, "applied");
                    }
                }
                Err(e) => {
                    pg.stop().await;
                    return Err(format!("embedded migration failed: {e}"));
                }
            }
            let url = pg.authenticator_url();
            embedded_server = Some(pg);
            url
        }
    };
    let mut config = ServeConfig::new(database_url);
    config.jwt_secret = args.jwt_secret;
    if config.jwt_secret.is_none() {
        if let Some(pg) = &embedded_server {
            config.jwt_secret =
                Some(embedded::jwt_secret(&pg.data_dir).map_err(|e| e.to_string())?);
            info!(file = %pg.data_dir.join("jwt_secret").display(), "JWT secret of the embedded mode");
        }
    }
    if let Some(v) = args.schemas {
        config.schemas = v.into_iter().map(|s| s.trim().to_string()).collect();
    }
    if let Some(v) = args.anon_role {
        config.anon_role = v;
    }
    if let Some(v) = args.pool_size {
        config.pool_size = v;
    }
    if let Some(v) = args.pool_timeout_ms {
        config.pool_timeout = Duration::from_millis(v);
    }
    if let Some(v) = args.max_body_bytes {
        config.max_body_bytes = v;
    }
    if let Some(v) = args.jwt_leeway_secs {
        config.jwt_leeway_secs = v;
    }
    if let Some(v) = args.shutdown_grace_ms {
        config.shutdown_grace = Duration::from_millis(v);
    }
    if let Some(v) = args.header_read_timeout_ms {
        config.header_read_timeout = Duration::from_millis(v);
    }
    if let Some(v) = args.max_connections {
        config.max_connections = v;
    }
    let result = pgrpc::server::serve(listener, config, shutdown_signal()).await;
    if let Some(pg) = embedded_server {
        pg.stop().await;
    }
    result.map_err(|e| e.to_string())
}

async fn relay(args: RelayArgs) -> Result<(), String> {
    let mut config =
        pgrpc::relay::RelayConfig::new(args.database_url, args.webhook_url, args.signing_secret);
    if let Some(v) = args.db_role {
        config.db_role = v;
    }
    if let Some(v) = args.consumer {
        config.consumer = v;
    }
    if let Some(v) = args.event_types {
        config.event_types = Some(v);
    }
    if let Some(v) = args.batch_size {
        config.batch_size = v;
    }
    if let Some(v) = args.lease_seconds {
        config.lease_seconds = v;
    }
    if let Some(v) = args.poll_ms {
        config.poll_interval = Duration::from_millis(v);
    }
    if let Some(v) = args.concurrency {
        config.concurrency = v;
    }
    if let Some(v) = args.request_timeout_ms {
        config.request_timeout = Duration::from_millis(v);
    }
    pgrpc::relay::run(config, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
