//! Test harness: one PostgreSQL container per test binary, a migrated
//! template database, a fresh clone per test, and the proxy in-process.
//!
//! The container image is built locally by `scripts/build-pg-image` (no
//! registry is reachable); its name comes from `PGRPC_TEST_IMAGE`. Containers
//! carry the label `pgrpc.test=1`, and `scripts/test` removes them by label
//! when the run ends, since a static container is never dropped.
#![allow(dead_code)]

pub mod api;
pub mod db;
pub mod replication;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use pgrpc::config::ServeConfig;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

pub const JWT_SECRET: &str = "pgrpc-integration-test-secret-0123456789abcdef";
pub const AUTHENTICATOR_PASSWORD: &str = "authenticator-test-password";
pub const TEMPLATE_DB: &str = "pgrpc_template";

struct Cluster {
    host: String,
    port: u16,
    _container: Container<GenericImage>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn image() -> (String, String) {
    let full = std::env::var("PGRPC_TEST_IMAGE").unwrap_or_else(|_| "pgrpc-postgres:15".into());
    match full.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (full, "latest".to_string()),
    }
}

/// `host:pid:nanos`, the run label `scripts/test` uses to tell live runs'
/// containers from leftovers; set here when tests run without the script.
pub fn run_label() -> String {
    std::env::var("PGRPC_TEST_RUN").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("{}:{}:{nanos}", host.trim(), std::process::id())
    })
}

fn superuser_url(host: &str, port: u16, db: &str) -> String {
    format!("postgresql://postgres:postgres@{host}:{port}/{db}")
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        // testcontainers' blocking runner and the migration each need a
        // runtime of their own, so set up on a plain thread.
        std::thread::spawn(start_cluster)
            .join()
            .expect("cluster setup thread panicked")
    })
}

fn start_cluster() -> Cluster {
    let (name, tag) = image();
    let container = GenericImage::new(name.clone(), tag.clone())
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_label("pgrpc.test", "1")
        .with_label("pgrpc.test.run", run_label())
        // A throwaway cluster: keep it in memory, which makes cloning a
        // database per test and removing the container fast.
        .with_mount(Mount::tmpfs_mount("/var/lib/postgresql/data"))
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .unwrap_or_else(|e| {
            panic!("cannot start {name}:{tag} (run scripts/build-pg-image first): {e}")
        });
    let host = container.get_host().expect("container host").to_string();
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    let port = container
        .get_host_port_ipv4(5432.tcp())
        .expect("container port");

    prepare_template(&host, port);
    Cluster {
        host,
        port,
        _container: container,
    }
}

/// Creates the migrated template database on a fresh cluster and sets the
/// authenticator's password (on a plain thread: it runs a runtime).
pub fn prepare_template(host: &str, port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin = connect_retrying(&superuser_url(host, port, "postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {TEMPLATE_DB}"))
            .await
            .expect("create template database");
        let report = pgrpc::migrate::run(&superuser_url(host, port, TEMPLATE_DB))
            .await
            .expect("migrate template database");
        assert!(!report.applied.is_empty(), "template got no migrations");
        admin
            .batch_execute(&format!(
                "ALTER ROLE pgrpc_authenticator PASSWORD '{AUTHENTICATOR_PASSWORD}'"
            ))
            .await
            .expect("set authenticator password");
    });
    drop(rt);
}

pub async fn connect_retrying(url: &str) -> Client {
    let mut last = None;
    for _ in 0..50 {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("cannot connect to {url}: {last:?}");
}

/// Connects to `url` and drives the connection on the current runtime.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// A database of its own for one test: a clone of the migrated template.
pub struct TestDb {
    pub name: String,
    host: String,
    port: u16,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let c = cluster();
        Self::new_on(&c.host, c.port).await
    }

    /// A clone of the migrated template on the cluster at `host:port`
    /// (one that `prepare_template` set up).
    pub async fn new_on(host: &str, port: u16) -> TestDb {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t_{}_{}", std::process::id(), n);
        let admin = connect(&superuser_url(host, port, "postgres")).await;
        // The template may still show a closing backend from its migration.
        let mut attempt = 0;
        loop {
            match admin
                .batch_execute(&format!(
                    "CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB} STRATEGY FILE_COPY"
                ))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("clone template into {name}: {e}"),
            }
        }
        TestDb {
            name,
            host: host.to_string(),
            port,
        }
    }

    /// The server's `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Superuser URL of this database.
    pub fn url(&self) -> String {
        superuser_url(&self.host, self.port, &self.name)
    }

    /// URL of this database for any login role.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "postgresql://{user}:{password}@{}:{}/{}",
            self.host, self.port, self.name
        )
    }

    /// URL for the proxy's connection role.
    pub fn authenticator_url(&self) -> String {
        format!(
            "postgresql://pgrpc_authenticator:{AUTHENTICATOR_PASSWORD}@{}:{}/{}",
            self.host, self.port, self.name
        )
    }

    /// A superuser connection.
    pub async fn superuser(&self) -> Client {
        connect(&self.url()).await
    }

    /// A superuser connection that has done `SET ROLE role` for the session,
    /// as a psql operator who is a member of that role would.
    pub async fn as_role(&self, role: &str) -> Client {
        let client = self.superuser().await;
        client
            .batch_execute(&format!("SET ROLE {role}"))
            .await
            .unwrap_or_else(|e| panic!("set role {role}: {e}"));
        client
    }

    /// A connection that runs as the service with the claims of a service
    /// token for `sub`, as the proxy would set them for one request.
    pub async fn as_service(&self, sub: &str) -> Client {
        self.as_request(
            "pgrpc_service",
            &json!({"role": "pgrpc_service", "sub": sub}),
        )
        .await
    }

    /// A connection that runs as `role` with the given JWT claims set for the
    /// session, as the proxy would set them for one request.
    pub async fn as_request(&self, role: &str, claims: &Value) -> Client {
        let client = self.superuser().await;
        client
            .execute(
                "SELECT set_config('request.jwt.claims', $1, false)",
                &[&claims.to_string()],
            )
            .await
            .expect("set claims");
        client
            .batch_execute(&format!("SET ROLE {role}"))
            .await
            .unwrap_or_else(|e| panic!("set role {role}: {e}"));
        client
    }
}

/// The proxy, started in-process on 127.0.0.1:0 against a fresh database.
pub struct TestServer {
    pub db: TestDb,
    pub base_url: String,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server whose configuration `tune` may change first.
    pub async fn start_with(tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let db = TestDb::new().await;
        Self::start_on(db, tune).await
    }

    /// Starts a server on a fresh database that first runs `sql` (test
    /// fixtures) as the superuser.
    pub async fn start_with_sql(sql: &str, tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let db = TestDb::new().await;
        db.superuser()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("fixtures: {e}"));
        Self::start_on(db, tune).await
    }

    /// Starts a server on an existing database.
    pub async fn start_on(db: TestDb, tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let url = db.authenticator_url();
        Self::start_on_url(db, url, tune).await
    }

    /// Starts a server for `db` that connects through `url` (a gate, say).
    pub async fn start_on_url(
        db: TestDb,
        url: String,
        tune: impl FnOnce(&mut ServeConfig),
    ) -> TestServer {
        let server = Self::spawn(db, url, tune).await;
        server.wait_ready().await;
        server
    }

    /// Starts a server on a URL that may not answer, without waiting for `/ready`.
    pub async fn start_on_unready(url: &str) -> TestServer {
        let db = TestDb::new().await;
        Self::spawn(db, url.to_string(), |c| {
            c.pool_timeout = Duration::from_secs(2)
        })
        .await
    }

    async fn spawn(db: TestDb, url: String, tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let mut config = ServeConfig::new(url);
        config.jwt_secret = Some(JWT_SECRET.to_string());
        tune(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = pgrpc::server::serve(listener, config, async {
                let _ = rx.await;
            })
            .await
            {
                panic!("server failed: {e}");
            }
        });
        let server = TestServer {
            db,
            base_url: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            shutdown: Some(tx),
            task: Some(task),
        };
        server
    }

    /// Waits until `/ready` answers 200 (database reachable, cache loaded).
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("proxy at {} never became ready", self.base_url);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// `POST /rpc/<function>` with a JSON body, optionally with a bearer token.
    pub async fn rpc(&self, function: &str, token: Option<&str>, body: Value) -> Resp {
        let mut req = self
            .http
            .post(self.url(&format!("/rpc/{function}")))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        send(req).await
    }

    /// `GET /rpc/<function>?<query>`, optionally with a bearer token.
    pub async fn rpc_get(
        &self,
        function: &str,
        token: Option<&str>,
        query: &[(&str, &str)],
    ) -> Resp {
        let mut req = self
            .http
            .get(self.url(&format!("/rpc/{function}")))
            .query(query);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        send(req).await
    }

    /// `POST /rpc/<function>` with a JSON body, as the service.
    pub async fn service_rpc(&self, function: &str, body: Value) -> Resp {
        self.rpc(function, Some(&service_token()), body).await
    }

    /// `GET /rpc/<function>?<query>`, as the service.
    pub async fn service_rpc_get(&self, function: &str, query: &[(&str, &str)]) -> Resp {
        self.rpc_get(function, Some(&service_token()), query).await
    }

    /// Makes the proxy reload its function cache and waits until `function`
    /// resolves (no longer answers 404 PGRST202).
    pub async fn reload_and_wait(&self, function: &str) {
        let su = self.db.superuser().await;
        su.batch_execute("NOTIFY pgrst, 'reload schema'")
            .await
            .expect("notify");
        for _ in 0..200 {
            let r = send(self.http.request(
                reqwest::Method::OPTIONS,
                self.url(&format!("/rpc/{function}")),
            ))
            .await;
            if r.status != 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("function {function} never appeared in the proxy's cache");
    }

    /// Stops the server gracefully and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body parsed as JSON, or Value::Null when empty or not JSON.
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the PostgREST error shape (all four keys) and returns `code`.
    pub fn error_code(&self) -> String {
        let obj = self
            .body
            .as_object()
            .unwrap_or_else(|| panic!("not an error object: {} {}", self.status, self.text));
        for key in ["code", "message", "details", "hint"] {
            assert!(
                obj.contains_key(key),
                "error body lacks {key}: {}",
                self.text
            );
        }
        obj["code"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "the error body's code is not a string: {} {}",
                    self.status, self.text
                )
            })
            .to_string()
    }

    /// The `message` of an error body (pgrpc's stable error key for domain errors).
    pub fn error_key(&self) -> String {
        self.error_code();
        self.body["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Asserts an HTTP error's status and stable key (the `message`, or the
/// `code` for errors raised in the PGRST form, where both are the key).
pub fn assert_error(r: &Resp, status: u16, key: &str) {
    assert_eq!(r.status, status, "expected {status} {key}, got {}", r.text);
    assert_eq!(r.error_key(), key, "{}", r.text);
}

/// Splits concurrent responses into the successes (200) and the refusals,
/// asserting that every refusal is `status` with the error key `key`.
pub fn split_refusals<'a>(
    responses: &'a [Resp],
    status: u16,
    key: &str,
) -> (Vec<&'a Resp>, Vec<&'a Resp>) {
    let (ok, refused): (Vec<&Resp>, Vec<&Resp>) = responses.iter().partition(|r| r.status == 200);
    for r in &refused {
        assert_error(r, status, key);
    }
    (ok, refused)
}

/// Waits for every spawned task and returns their outputs in order; fails
/// if any task panicked.
pub async fn join_tasks<T>(tasks: impl IntoIterator<Item = JoinHandle<T>>) -> Vec<T> {
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("task failed: {e}")))
        .collect()
}

/// Sends a request and reads the whole response.
pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("http request: {}", e.without_url()));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("http body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        body,
    }
}

/// Signs `claims` with the test secret (HS256); adds `exp` one hour ahead
/// unless present.
pub fn token(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        let exp = chrono::Utc::now().timestamp() + 3600;
        claims["exp"] = json!(exp);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign token")
}

/// A trusted backend service's token.
pub fn service_token() -> String {
    token(json!({"role": "pgrpc_service", "sub": "service-test"}))
}

/// An end user's token, scoped to one organization and mailbox.
pub fn user_token(org_id: &str, email: &str) -> String {
    token(
        json!({"role": "pgrpc_user", "sub": format!("user:{email}"), "org_id": org_id, "email": email}),
    )
}

/// A TCP forwarder in front of the database that a test can close (cutting
/// every connection and refusing new ones) and open again, to simulate an
/// outage without stopping the shared container.
pub struct Gate {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<tokio::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Gate {
    pub async fn start(db: &TestDb) -> Gate {
        let target = format!("{}:{}", db.host, db.port);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let port = listener.local_addr().expect("gate addr").port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<tokio::sync::Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().await.push(h);
            }
        });
        Gate {
            port,
            open,
            conns,
            accept,
        }
    }

    /// The authenticator URL of `db`, through the gate.
    pub fn authenticator_url(&self, db: &TestDb) -> String {
        format!(
            "postgresql://pgrpc_authenticator:{AUTHENTICATOR_PASSWORD}@127.0.0.1:{}/{}",
            self.port, db.name
        )
    }

    pub async fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for h in self.conns.lock().await.drain(..) {
            h.abort();
        }
    }

    pub async fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The shared cluster's IP address on Docker's bridge network (port
/// 5432), for another container (a pooler) to reach it.
pub fn cluster_bridge_ip() -> String {
    bridge_ip(cluster()._container.id())
}

/// A container's IP address on its Docker network, from `docker inspect`
/// (testcontainers' own lookup fails on the network named "default").
pub fn bridge_ip(container_id: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            container_id,
        ])
        .output()
        .expect("docker inspect");
    assert!(out.status.success(), "docker inspect {container_id} failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("container {container_id} has no IP address"))
        .to_string()
}

/// Runs `pg_dump` inside the test container on `db`, so that its version
/// is the server's, and returns its output.
pub fn pg_dump(db: &TestDb, args: &[&str]) -> String {
    let mut cmd = vec![
        "env".to_string(),
        "PGPASSWORD=postgres".to_string(),
        "pg_dump".to_string(),
        "--host=127.0.0.1".to_string(),
        "--username=postgres".to_string(),
        format!("--dbname={}", db.name),
    ];
    cmd.extend(args.iter().map(|a| a.to_string()));
    // The blocking exec runs a runtime of its own: not on a test's runtime.
    std::thread::spawn(move || {
        let mut result = cluster()
            ._container
            .exec(testcontainers::core::ExecCommand::new(cmd))
            .expect("exec pg_dump in the test container");
        let stdout = result.stdout_to_vec().expect("pg_dump output");
        let stderr = result.stderr_to_vec().unwrap_or_default();
        let code = result.exit_code().ok().flatten();
        assert!(
            code == Some(0),
            "pg_dump exited with {code:?}: {}",
            String::from_utf8_lossy(&stderr)
        );
        String::from_utf8(stdout).expect("pg_dump output is UTF-8")
    })
    .join()
    .expect("pg_dump thread panicked")
}
