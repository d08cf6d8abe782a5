//! Embedded mode end to end (SPEC §2.1): the real `pgrpc serve` binary with
//! no database URL runs its own PostgreSQL from the installed binaries.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn temp_data_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // Under /tmp so that the unprivileged postgres account can reach it when
    // the tests run as root.
    let dir = PathBuf::from(format!(
        "/tmp/pgrpc-embedded-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create data dir");
    dir
}

/// The log of one server run: a file, so a chatty server never blocks on a full pipe.
fn log_path(data_dir: &Path, port: u16) -> PathBuf {
    PathBuf::from(format!("{}-serve-{port}.log", data_dir.display()))
}

fn spawn_serve(data_dir: &Path, port: u16, extra: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(log_path(data_dir, port)).expect("log file");
    let log2 = log.try_clone().expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgrpc"));
    cmd.arg("serve")
        .env_remove("PGRPC_DATABASE_URL")
        .env_remove("PGRPC_JWT_SECRET")
        .env("PGRPC_DATA_DIR", data_dir)
        .env("PGRPC_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn pgrpc serve")
}

async fn wait_ready(data_dir: &Path, port: u16, child: &mut Child) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = std::fs::read_to_string(log_path(data_dir, port)).unwrap_or_default();
            panic!("pgrpc serve exited early ({status}): {out}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("embedded pgrpc never became ready");
}

/// Sends SIGTERM and waits for a clean exit; returns everything it logged.
fn terminate(mut child: Child, log: &Path) -> String {
    // SAFETY: signalling a child process we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let out = std::fs::read_to_string(log).unwrap_or_default();
            assert!(status.success(), "pgrpc serve exited with {status}: {out}");
            return out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "pgrpc serve ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// First start initializes the data directory and serves; SIGTERM stops PostgreSQL too; a restart reuses the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_initializes_serves_restarts_and_stops_cleanly() {
    let dir = temp_data_dir();
    let port = free_port();
    let mut first = spawn_serve(&dir, port, &[]);
    wait_ready(&dir, port, &mut first).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://127.0.0.1:{port}/rpc/version"))
        .send()
        .await
        .expect("call version");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json"),
        json!("0.1.0")
    );

    // The generated secret signs tokens the server accepts.
    let secret = std::fs::read_to_string(dir.join("jwt_secret")).expect("jwt secret file");
    let secret = secret.trim().to_string();
    assert!(secret.len() >= 32);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"role": "pgrpc_service", "sub": "embedded-test", "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign");
    let r = http
        .post(format!("http://127.0.0.1:{port}/rpc/create_organization"))
        .bearer_auth(&token)
        .json(&json!({"name": "Embedded Inc", "plan": "paid"}))
        .send()
        .await
        .expect("create organization");
    assert_eq!(r.status(), 200);
    let org: serde_json::Value = r.json().await.expect("json");
    assert_eq!(org["name"], "Embedded Inc");

    let log = terminate(first, &log_path(&dir, port));
    assert!(
        log.contains("initializing a new PostgreSQL cluster"),
        "{log}"
    );
    assert!(log.contains("embedded PostgreSQL stopped"), "{log}");
    assert!(
        !dir.join("pgdata/postmaster.pid").exists(),
        "PostgreSQL must be stopped with the proxy"
    );

    // Second start: same data directory, no initdb, data still there.
    let port2 = free_port();
    let mut second = spawn_serve(&dir, port2, &[]);
    wait_ready(&dir, port2, &mut second).await;
    let secret2 = std::fs::read_to_string(dir.join("jwt_secret")).expect("jwt secret file");
    assert_eq!(secret, secret2.trim(), "the secret survives restarts");
    let su = crate::support::connect(&format!(
        "host={} port=5432 user=postgres dbname=pgrpc",
        dir.join("run").display()
    ))
    .await;
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM private.organizations WHERE name = 'Embedded Inc'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "data survives restarts");
    drop(su);
    let log2 = terminate(second, &log_path(&dir, port2));
    assert!(
        !log2.contains("initializing a new PostgreSQL cluster"),
        "{log2}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(log_path(&dir, port));
    let _ = std::fs::remove_file(log_path(&dir, port2));
}

/// Without PostgreSQL binaries, the error says what to install or to set PGRPC_DATABASE_URL.
#[tokio::test]
async fn embedded_mode_without_binaries_says_what_to_install() {
    let dir = temp_data_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_pgrpc"))
        .arg("serve")
        .env_remove("PGRPC_DATABASE_URL")
        .env("PGRPC_DATA_DIR", &dir)
        .env("PGRPC_PG_BIN_DIR", "/nonexistent/pg/bin")
        .env("PGRPC_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .expect("run pgrpc serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install postgresql"), "{err}");
    assert!(err.contains("PGRPC_DATABASE_URL"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
