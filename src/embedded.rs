//! Embedded PostgreSQL: with no `PGRPC_DATABASE_URL`, `pgrpc serve` runs
//! its own server from the installed binaries, in a data directory that
//! survives restarts, listening only on a private Unix socket.
//!
//! initdb and postgres refuse to run as root. When pgrpc runs as root, the
//! server's processes run as the unprivileged `postgres` account (created by
//! the distribution's packages) and the data directory is owned by it.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_postgres::NoTls;
use tracing::{info, warn};

/// The database pgrpc creates and serves in the embedded cluster.
pub const DATABASE: &str = "pgrpc";
const SOCKET_PORT: u16 = 5432;

pub const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found. \
Install them (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; \
macOS: brew install postgresql), or point PGRPC_PG_BIN_DIR at the directory holding initdb and postgres, \
or set PGRPC_DATABASE_URL to serve an existing PostgreSQL instead.";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("{INSTALL_HINT}")]
    NoBinaries,
    #[error("pgrpc runs as root, and PostgreSQL refuses to: create an unprivileged 'postgres' account (useradd --system postgres) or run pgrpc as a normal user")]
    NoUnprivilegedUser,
    #[error("the socket path {0} is too long for a Unix socket: choose a shorter PGRPC_DATA_DIR")]
    SocketPathTooLong(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb failed (see {log}): {output}")]
    Initdb { log: String, output: String },
    #[error("PostgreSQL did not start within {secs} s; its log ({log}) ends with:\n{tail}")]
    Start {
        secs: u64,
        log: String,
        tail: String,
    },
    #[error("cannot create the {DATABASE} database: {0}")]
    CreateDb(#[source] tokio_postgres::Error),
    #[error("embedded migration failed: {0}")]
    Migrate(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let what = what.into();
    move |source| EmbeddedError::Io { what, source }
}

/// A running embedded server.
pub struct Embedded {
    child: Option<Child>,
    pub data_dir: PathBuf,
    socket_dir: PathBuf,
}

/// Finds `initdb` and `postgres`: an explicit directory, then `pg_config
/// --bindir`, then the newest `/usr/lib/postgresql/*/bin`, then `PATH`.
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = explicit {
        return if has_both(d) {
            Ok(d.to_path_buf())
        } else {
            Err(EmbeddedError::NoBinaries)
        };
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_both(&d) {
            return Ok(d);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, d)| has_both(d))
            .collect();
        versions.sort();
        if let Some((_, d)) = versions.pop() {
            return Ok(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_both(&d) {
                return Ok(d);
            }
        }
    }
    Err(EmbeddedError::NoBinaries)
}

/// The account the server runs as: none (ourselves) unless we are root.
fn server_account() -> Result<Option<(u32, u32)>, EmbeddedError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").map_err(|_| EmbeddedError::NoUnprivilegedUser)?;
    // SAFETY: getpwnam takes a valid C string; the returned record is read
    // immediately, before any other passwd call can overwrite it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(EmbeddedError::NoUnprivilegedUser);
    }
    // SAFETY: pw was checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, account: Option<(u32, u32)>) -> Result<(), EmbeddedError> {
    if let Some((uid, gid)) = account {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(format!(
            "cannot hand {} to the postgres account",
            path.display()
        )))?;
    }
    Ok(())
}

fn as_account(cmd: &mut Command, account: Option<(u32, u32)>) {
    if let Some((uid, gid)) = account {
        // std drops root's supplementary groups before switching uid.
        cmd.uid(uid).gid(gid);
    }
}

fn conn_string(socket_dir: &Path, user: &str, db: &str) -> String {
    let host = socket_dir
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('\'', "\\'");
    format!("host='{host}' port={SOCKET_PORT} user={user} dbname={db}")
}

impl Embedded {
    /// Initializes `data_dir` on first use, starts the server and creates
    /// the `pgrpc` database if needed.
    pub async fn start(data_dir: &Path, bin_dir: Option<&Path>) -> Result<Embedded, EmbeddedError> {
        let bin = find_bin_dir(bin_dir)?;
        let account = server_account()?;
        std::fs::create_dir_all(data_dir)
            .map_err(io(format!("cannot create {}", data_dir.display())))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io(format!("cannot resolve {}", data_dir.display())))?;
        chown(&data_dir, account)?;
        let pgdata = data_dir.join("pgdata");
        let socket_dir = data_dir.join("run");
        std::fs::create_dir_all(&socket_dir).map_err(io("cannot create the socket directory"))?;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("cannot restrict the socket directory"))?;
        chown(&socket_dir, account)?;
        let socket_file = socket_dir.join(format!(".s.PGSQL.{SOCKET_PORT}"));
        if socket_file.as_os_str().len() > 100 {
            return Err(EmbeddedError::SocketPathTooLong(
                socket_file.display().to_string(),
            ));
        }
        let log = data_dir.join("postgres.log");

        if !pgdata.join("PG_VERSION").is_file() {
            info!(dir = %pgdata.display(), "initializing a new PostgreSQL cluster");
            let mut cmd = Command::new(bin.join("initdb"));
            cmd.arg("-D")
                .arg(&pgdata)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ])
                .current_dir(&data_dir)
                .stdin(Stdio::null());
            as_account(&mut cmd, account);
            let out = cmd.output().await.map_err(io("cannot run initdb"))?;
            if !out.status.success() {
                let output = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = std::fs::write(&log, &output);
                return Err(EmbeddedError::Initdb {
                    log: log.display().to_string(),
                    output,
                });
            }
        }

        let superuser = conn_string(&socket_dir, "postgres", "postgres");
        let child = if try_connect(&superuser).await {
            warn!("an embedded PostgreSQL is already running on this data directory; reusing it");
            None
        } else {
            let logfile = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(io(format!("cannot open {}", log.display())))?;
            chown(&log, account)?;
            let logfile2 = logfile
                .try_clone()
                .map_err(io("cannot duplicate the log handle"))?;
            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D")
                .arg(&pgdata)
                .arg("-c")
                .arg("listen_addresses=")
                .arg("-c")
                .arg(format!("unix_socket_directories={}", socket_dir.display()))
                .arg("-c")
                .arg(format!("port={SOCKET_PORT}"))
                .current_dir(&data_dir)
                .stdin(Stdio::null())
                .stdout(logfile)
                .stderr(logfile2)
                .kill_on_drop(false);
            as_account(&mut cmd, account);
            let mut child = cmd.spawn().map_err(io("cannot start postgres"))?;
            let started = Instant::now();
            let limit = Duration::from_secs(60);
            loop {
                if try_connect(&superuser).await {
                    break;
                }
                let exited = matches!(child.try_wait(), Ok(Some(_)));
                if exited || started.elapsed() > limit {
                    let _ = child.start_kill();
                    return Err(EmbeddedError::Start {
                        secs: limit.as_secs(),
                        log: log.display().to_string(),
                        tail: tail(&log),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            info!(socket = %socket_dir.display(), "embedded PostgreSQL started");
            Some(child)
        };

        let embedded = Embedded {
            child,
            data_dir: data_dir.clone(),
            socket_dir,
        };
        embedded.create_database().await?;
        Ok(embedded)
    }

    async fn create_database(&self) -> Result<(), EmbeddedError> {
        let (client, conn) = tokio_postgres::connect(
            &conn_string(&self.socket_dir, "postgres", "postgres"),
            NoTls,
        )
        .await
        .map_err(EmbeddedError::CreateDb)?;
        let driver = tokio::spawn(conn);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await
            .map_err(EmbeddedError::CreateDb)?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await
                .map_err(EmbeddedError::CreateDb)?;
        }
        drop(client);
        let _ = driver.await;
        Ok(())
    }

    /// Superuser connection to the served database (for migrations).
    pub fn superuser_url(&self) -> String {
        conn_string(&self.socket_dir, "postgres", DATABASE)
    }

    /// The proxy's connection (trust over the private socket).
    pub fn authenticator_url(&self) -> String {
        conn_string(&self.socket_dir, "pgrpc_authenticator", DATABASE)
    }

    /// Fast shutdown: SIGINT, then wait for the server to exit.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: signalling our own child process by pid.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(_) => info!("embedded PostgreSQL stopped"),
            Err(_) => {
                warn!("embedded PostgreSQL did not stop in 30 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

async fn try_connect(url: &str) -> bool {
    match tokio_postgres::connect(url, NoTls).await {
        Ok((client, conn)) => {
            let driver = tokio::spawn(conn);
            let ok = client.simple_query("SELECT 1").await.is_ok();
            drop(client);
            let _ = driver.await;
            ok
        }
        Err(_) => false,
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Everything `pgrpc serve` does without a database URL: starts the
/// server, migrates it, points `config` at it as the authenticator, and
/// gives it the data directory's JWT secret unless one is set.
pub async fn serve_setup(
    data_dir: &Path,
    bin_dir: Option<&Path>,
    config: &mut crate::config::ServeConfig,
) -> Result<Embedded, EmbeddedError> {
    let pg = Embedded::start(data_dir, bin_dir).await?;
    match crate::migrate::run(&pg.superuser_url()).await {
        Ok(report) => {
            for name in &report.applied {
                info!(migration = %name, "applied");
            }
        }
        Err(e) => {
            pg.stop().await;
            return Err(EmbeddedError::Migrate(e.to_string()));
        }
    }
    config.database_url = pg.authenticator_url();
    if config.jwt_secret.is_none() {
        match jwt_secret(&pg.data_dir) {
            Ok(secret) => config.jwt_secret = Some(secret),
            Err(e) => {
                pg.stop().await;
                return Err(e);
            }
        }
        info!(file = %pg.data_dir.join("jwt_secret").display(), "JWT secret of the embedded mode");
    }
    Ok(pg)
}

/// The JWT secret kept in the data directory, created on first start, so
/// that tokens stay valid across restarts.
pub fn jwt_secret(data_dir: &Path) -> Result<String, EmbeddedError> {
    let path = data_dir.join("jwt_secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if s.len() >= crate::config::MIN_JWT_SECRET_LEN {
            return Ok(s);
        }
    }
    use rand::Rng;
    let secret: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(48)
        .map(char::from)
        .collect();
    std::fs::write(&path, format!("{secret}\n"))
        .map_err(io(format!("cannot write {}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot restrict {}", path.display())))?;
    Ok(secret)
}
