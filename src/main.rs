//! The `pgrpc` binary: parses arguments, starts logging, and hands over to
//! the library (`migrate::run`, `server::serve`, `relay::run`,
//! `gen_types::typescript_from_url`). Every
//! setting and its default is declared once, in `config::ServeConfig` and
//! `relay::RelayConfig`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pgrpc::config::{ServeConfig, DEFAULT_LISTEN, DEFAULT_SCHEMAS};
use pgrpc::relay::RelayConfig;
use tracing::{error, info};

// The request path allocates many small, short-lived buffers; mimalloc
// serves them with fewer instructions than glibc's allocator (measured with
// callgrind: see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Apply the pending migrations of sql/ (as a superuser).
    Migrate(MigrateArgs),
    /// Serve the exposed schemas over HTTP.
    Serve(Box<ServeArgs>),
    /// Deliver outbox events to an HTTP endpoint.
    Relay(RelayConfig),
    /// Generate client code from the exposed schemas.
    Gen(GenArgs),
}

#[derive(Args)]
struct GenArgs {
    #[command(subcommand)]
    what: GenCommand,
}

#[derive(Subcommand)]
enum GenCommand {
    /// Write the types of the exposed functions to stdout
    /// (`pgrpc gen types typescript > database.types.ts`).
    Types(TypesArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Language {
    /// The `Database` type of supabase-js and postgrest-js.
    Typescript,
}

/// The database and schemas are read from the same settings as `serve`.
#[derive(Args)]
struct TypesArgs {
    #[arg(value_enum)]
    language: Language,
    /// Connection URL (the authenticator's, as for `serve`; any role that
    /// can read pg_catalog will do).
    #[arg(long, env = "PGRPC_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Exposed schemas, comma-separated, as for `serve`.
    #[arg(long, env = "PGRPC_SCHEMAS", value_delimiter = ',', default_value = DEFAULT_SCHEMAS)]
    schemas: Vec<String>,
}

#[derive(Args)]
struct MigrateArgs {
    /// Superuser connection URL.
    #[arg(long, env = "PGRPC_MIGRATE_URL")]
    database_url: String,
    /// Apply the versioned migrations (sql/V*.sql) only, not the module
    /// files of sql/modules: the database scripts/sql-modules-extract reads.
    #[arg(long, hide = true)]
    versioned_only: bool,
    /// The longest any lock wait of the run may take (the migration lock,
    /// and each table lock a migration takes), in ms; past it the run stops
    /// with an error naming what it waited for.
    #[arg(long = "lock-timeout-ms", env = "PGRPC_MIGRATE_LOCK_TIMEOUT_MS", default_value = "60000", value_parser = pgrpc::config::millis)]
    lock_timeout: std::time::Duration,
}

#[derive(Args)]
struct ServeArgs {
    /// pgrpc_authenticator connection URL; without it, an embedded
    /// PostgreSQL is started in PGRPC_DATA_DIR.
    #[arg(long, env = "PGRPC_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "PGRPC_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Embedded mode: data directory.
    #[arg(long, env = "PGRPC_DATA_DIR", default_value = "./.pgrpc")]
    data_dir: PathBuf,
    /// Embedded mode: directory of initdb and postgres (found automatically otherwise).
    #[arg(long, env = "PGRPC_PG_BIN_DIR")]
    pg_bin_dir: Option<PathBuf>,
    /// The runtime's worker threads (1 to 256); unset, one per core
    /// (docs/configuration.md).
    #[arg(long, env = "PGRPC_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(flatten)]
    config: ServeConfig,
}

/// Logs go to stdout, or to stderr when stdout carries the command's output.
fn init_logging(format: &str, to_stderr: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let writer = if to_stderr {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Command::Serve(args) = &cli.command {
        if let Some(n) = args.worker_threads {
            if let Err(message) = pgrpc::config::check_worker_threads(n) {
                eprintln!("pgrpc: invalid configuration: {message}");
                return ExitCode::FAILURE;
            }
            runtime.worker_threads(n);
        } else if args.config.shards.is_some() {
            // The shards serve the clients on threads of their own; this
            // runtime keeps the admin address and the background tasks.
            runtime.worker_threads(1);
        }
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("pgrpc: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.log_format, matches!(cli.command, Command::Gen(_)));
    pgrpc::server::log_panics();
    let result = match cli.command {
        Command::Migrate(args) => {
            migrate(&args.database_url, args.versioned_only, args.lock_timeout).await
        }
        Command::Serve(args) => serve(*args).await,
        Command::Relay(config) => pgrpc::relay::run(config, shutdown_signal())
            .await
            .map_err(|e| e.to_string()),
        Command::Gen(GenArgs {
            what: GenCommand::Types(args),
        }) => gen_types(args).await,
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

async fn migrate(
    url: &str,
    versioned_only: bool,
    lock_timeout: std::time::Duration,
) -> Result<(), String> {
    let options = pgrpc::migrate::Options {
        modules: !versioned_only,
        lock_timeout,
        ..Default::default()
    };
    let report = pgrpc::migrate::run_with(url, options)
        .await
        .map_err(|e| e.to_string())?;
    if report.applied.is_empty() {
        println!("migrations: nothing to apply, the database is up to date");
    } else {
        for name in &report.applied {
            println!("applied {name}");
        }
        println!("migrations: applied {}", report.applied.len());
    }
    if versioned_only {
        println!("modules: not applied (--versioned-only)");
    } else if report.modules.is_empty() {
        println!("modules: nothing to apply, every sql/modules file is up to date");
    } else {
        for name in &report.modules {
            println!("applied sql/modules/{name}.sql");
        }
        println!("modules: applied {}", report.modules.len());
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let listeners: pgrpc::server::Listeners = match args.config.shards {
        Some(n) => {
            // Checked again, with the rest, by `server::serve`; here so
            // that a refused setting binds nothing.
            args.config
                .validate()
                .map_err(|e| format!("invalid configuration: {e}"))?;
            pgrpc::server::bind_shards(&args.listen, n).await
        }
        None => tokio::net::TcpListener::bind(&args.listen)
            .await
            .map(Into::into),
    }
    .map_err(|e| format!("cannot listen on {} (PGRPC_LISTEN): {e}", args.listen))?;
    let mut config = args.config;
    let embedded = match args.database_url {
        Some(url) => {
            config.database_url = url;
            None
        }
        None => Some(
            pgrpc::embedded::serve_setup(&args.data_dir, args.pg_bin_dir.as_deref(), &mut config)
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    let result = pgrpc::server::serve(listeners, config, shutdown_signal()).await;
    if let Some(pg) = embedded {
        pg.stop().await;
    }
    result.map_err(|e| e.to_string())
}

async fn gen_types(args: TypesArgs) -> Result<(), String> {
    let url = args.database_url.ok_or(
        "gen types reads the catalog of a running database: set PGRPC_DATABASE_URL (or --database-url)",
    )?;
    let text = match args.language {
        Language::Typescript => pgrpc::gen_types::typescript_from_url(&url, &args.schemas)
            .await
            .map_err(|e| e.to_string())?,
    };
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}
