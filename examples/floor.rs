//! The floor of an HTTP front for PostgreSQL on pgrpc's stack, for
//! `scripts/bench --floor`: hyper and tokio-postgres as pgrpc uses them,
//! with none of pgrpc's work. No JWT, no role or request settings, no
//! transaction framing, no function cache, no routing, no JSON but the
//! value itself: every request runs the statements it was given, prepared
//! once per connection, on any idle one of a fixed set of connections, and
//! answers the last one's first column as text.
//!
//! Given several statements, it sends them all before one Sync (one
//! implicit transaction, as pgrpc sends a warm call) and answers the last
//! one's: with pgrpc's READ ONLY, settings and call statements, that is the
//! most any proxy keeping PostgREST's transaction can serve.
//!
//! What it serves per second on a machine, beside pgbench running the same
//! statements, is the most any such proxy can reach there; the gap between
//! it and pgrpc is what pgrpc's own work costs.
//!
//! With `FLOOR_SHARED` set, the connections are shared instead: each
//! request's statements go out on the next connection in turn, behind
//! whatever is still in flight on it (tokio-postgres pipelines them), as
//! pgrpc's reads with `PGRPC_POOL_PIPELINE` above 1, without its bound.
//!
//! With `FLOOR_SHARDS=N`, as pgrpc's `PGRPC_SHARDS`: N threads, each with a
//! single-threaded runtime, its own listener on the address (`SO_REUSEPORT`)
//! and its share of the connections.
//!
//! Usage: `[FLOOR_SHARED=1] [FLOOR_SHARDS=N] floor DATABASE_URL LISTEN_ADDRESS CONNECTIONS SQL [SQL ...]`

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Pipeline, Statement};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Conn {
    client: Client,
    statements: Vec<Statement>,
}

/// A pool at its simplest: a permit per idle connection, and the idle
/// connections in a stack, so that a request takes any free one.
struct Floor {
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    /// `FLOOR_SHARED`: every connection, used in turn by any request.
    shared: Option<Vec<Conn>>,
    next: AtomicUsize,
}

/// A connection taken from the pool, put back when dropped: also when the
/// request is given up mid-call (a client gone), since tokio-postgres drops
/// the answers nobody waits for.
struct Lease<'a> {
    floor: &'a Floor,
    conn: Option<Conn>,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.floor.idle.lock()) {
            idle.push(conn);
        }
    }
}

impl Floor {
    async fn lease(&self) -> Result<Lease<'_>, String> {
        let permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let conn = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match conn {
            Some(conn) => Ok(Lease {
                floor: self,
                conn: Some(conn),
                _permit: permit,
            }),
            None => Err("no idle connection behind a permit".into()),
        }
    }

    async fn answer(&self) -> Response<Full<Bytes>> {
        if let Some(shared) = &self.shared {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % shared.len();
            return match run(&shared[i]).await {
                Ok(text) => Response::new(Full::new(Bytes::from(text))),
                Err(e) => failed(e.to_string()),
            };
        }
        let lease = match self.lease().await {
            Ok(lease) => lease,
            Err(e) => return failed(e),
        };
        let Some(conn) = lease.conn.as_ref() else {
            return failed("a lease without its connection".into());
        };
        match run(conn).await {
            Ok(text) => Response::new(Full::new(Bytes::from(text))),
            Err(e) => failed(e.to_string()),
        }
    }
}

/// The statements before one Sync; the last one's first column.
async fn run(conn: &Conn) -> Result<String, tokio_postgres::Error> {
    let mut pipeline = Pipeline::with_capacity(256);
    for statement in &conn.statements {
        pipeline.execute(statement, std::iter::empty::<&(dyn ToSql + Sync)>())?;
    }
    let mut answers = conn.client.pipeline(pipeline)?;
    let mut last = None;
    while let Some(answer) = answers.next().await {
        last = answer?;
    }
    answers.finish().await?;
    match last {
        Some(row) => row.try_get(0),
        None => Ok(String::new()),
    }
}

fn failed(e: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(e)));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, listen, connections, sqls @ ..] = args.as_slice() else {
        return Err("usage: floor DATABASE_URL LISTEN_ADDRESS CONNECTIONS SQL [SQL ...]".into());
    };
    if sqls.is_empty() {
        return Err("no SQL given".into());
    }
    let connections: usize = connections.parse()?;
    if connections == 0 {
        return Err("CONNECTIONS must be at least 1".into());
    }
    let shards: usize = match std::env::var("FLOOR_SHARDS") {
        Ok(n) => n.parse()?,
        Err(_) => 0,
    };
    if shards == 0 {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(shard(url, listen, connections, sqls, false));
    }
    // FLOOR_SHARDS=N: N threads, each with a runtime of its own, its own
    // listener on the same address (SO_REUSEPORT) and its share of the
    // connections, so a request never leaves the thread that accepted it.
    let mut threads = Vec::new();
    for i in 0..shards {
        let (url, listen, sqls) = (url.clone(), listen.clone(), sqls.to_vec());
        let share = connections / shards + usize::from(i < connections % shards);
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(shard(&url, &listen, share.max(1), &sqls, true))
                .map_err(|e| e.to_string())
        }));
    }
    for thread in threads {
        thread.join().map_err(|_| "a shard panicked")??;
    }
    Ok(())
}

async fn shard(
    url: &str,
    listen: &str,
    connections: usize,
    sqls: &[String],
    reuseport: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        let mut statements = Vec::with_capacity(sqls.len());
        for sql in sqls {
            statements.push(client.prepare(sql).await?);
        }
        conns.push(Conn { client, statements });
    }
    let shared = std::env::var_os("FLOOR_SHARED").is_some();
    let floor = Arc::new(if shared {
        Floor {
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(0),
            shared: Some(conns),
            next: Default::default(),
        }
    } else {
        Floor {
            idle: Mutex::new(conns),
            permits: Semaphore::new(connections),
            shared: None,
            next: Default::default(),
        }
    });
    let address: std::net::SocketAddr = listen.parse()?;
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(address)?;
    let listener: TcpListener = socket.listen(1024)?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let floor = floor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_: Request<Incoming>| {
                let floor = floor.clone();
                async move { Ok::<_, Infallible>(floor.answer().await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
