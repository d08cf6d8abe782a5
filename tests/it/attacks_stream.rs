//! Hostile clients of a streamed answer (issue 23, item 2): a reader that
//! never reads a 1,000,000-row stream, one that disconnects mid-stream,
//! a stream past `PGRPC_STREAM_MAX_MS`, and a stream the server's stop
//! ends. Each time the proxy holds a bounded number of bytes, the
//! transaction ends, no connection of the authenticator is left idle in
//! transaction, and the next calls are served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::streaming::FIXTURES;
use crate::support::{service_token, TestServer};

/// Waits (up to 15 s) until no connection of the authenticator to this
/// database is idle in a transaction or still running a streamed call.
pub async fn assert_no_open_transaction(server: &TestServer) {
    let su = server.db.superuser().await;
    let mut last = 0;
    for _ in 0..150 {
        last = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND usename = 'pgrpc_authenticator' \
                 AND (state LIKE 'idle in transaction%' \
                      OR (state = 'active' AND query LIKE '%stream_%'))",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0);
        if last == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{last} connections of the authenticator still in a transaction");
}

/// The proxy's process's resident set, in KiB (the tests run in-process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens a stream of 1,000,000 rows (about 80 MB of JSON) with a small
/// receive buffer, reads its head and first bytes, and returns the socket.
async fn open_stream(server: &TestServer, target: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = server
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut sock = socket.connect(addr).await.expect("connect");
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        service_token()
    );
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut first = [0u8; 512];
    sock.read_exact(&mut first)
        .await
        .expect("the answer starts");
    let first = String::from_utf8_lossy(&first);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{first}"
    );
    sock
}

/// Reads what is left until the connection ends; panics if it stays open.
async fn drain(sock: &mut tokio::net::TcpStream, within: Duration) -> usize {
    let mut drained = 0usize;
    let mut chunk = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(within, sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return drained,
            Ok(Ok(n)) => drained += n,
            Err(_) => panic!("the stalled connection is still open"),
        }
    }
}

const MILLION: &str = "/rpc/stream_rows?n=1000000";

// A reader that never reads: the proxy buffers a few chunks, not the
// result (its memory grows by far less than the 80 MB body); the write
// deadline closes the connection, the transaction ends, and the pool's
// connection is not left in a transaction.
#[tokio::test]
async fn a_reader_that_never_reads_a_million_rows_holds_bounded_memory() {
    let server = TestServer::start_with_sql(FIXTURES, |c| {
        c.response_write_timeout = Duration::from_millis(1500);
    })
    .await;
    let before = rss_kib();
    let mut stalled = open_stream(&server, MILLION).await;
    let mut peak = before;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 48,
        "the proxy grew by {grown_mib} MiB for a stalled stream"
    );
    let drained = drain(&mut stalled, Duration::from_secs(10)).await;
    assert!(
        drained < 16 * 1024 * 1024,
        "{drained} bytes after the stall"
    );
    assert_no_open_transaction(&server).await;
    let next = server.service_rpc_get("stream_rows", &[("n", "2")]).await;
    assert_eq!(next.status, 200, "{}", next.text);
}

// A client that disconnects mid-stream: the statement is cancelled, its
// connection closed; nothing is left in a transaction, and the pool
// serves the next calls (many, so that every pooled connection is used).
#[tokio::test]
async fn a_client_that_disconnects_mid_stream_leaves_no_transaction() {
    let server = TestServer::start_with_sql(FIXTURES, |c| c.pool_size = 2).await;
    for _ in 0..3 {
        let sock = open_stream(&server, MILLION).await;
        drop(sock);
    }
    assert_no_open_transaction(&server).await;
    for _ in 0..6 {
        let next = server.service_rpc_get("stream_rows", &[("n", "2")]).await;
        assert_eq!(next.status, 200, "{}", next.text);
    }
}

// PGRPC_STREAM_MAX_MS cuts a stream whose client reads too slowly to end
// within it (no final chunk), and ends its transaction.
#[tokio::test]
async fn a_stream_past_its_longest_duration_is_cut_short() {
    let server = TestServer::start_with_sql(FIXTURES, |c| {
        c.stream_max_duration = Duration::from_millis(1000);
        c.response_write_timeout = Duration::from_secs(60);
    })
    .await;
    let started = Instant::now();
    let mut slow = open_stream(&server, MILLION).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let drained = drain(&mut slow, Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(12));
    assert!(drained < 16 * 1024 * 1024, "{drained} bytes");
    assert_no_open_transaction(&server).await;
}

// The server's stop ends a stream still going once its grace period is
// over, and the transaction with it.
#[tokio::test]
async fn stopping_the_server_ends_its_streams() {
    let server = TestServer::start_with_sql(FIXTURES, |c| {
        c.shutdown_grace = Duration::from_millis(500);
        c.response_write_timeout = Duration::from_secs(60);
    })
    .await;
    let stalled = open_stream(&server, MILLION).await;
    let su = server.db.superuser().await;
    let db = server.db.name.clone();
    let started = Instant::now();
    // Stop without giving up the database (`stop` consumes the server).
    let stopped = tokio::spawn(server.stop());
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the server stops within its grace period and then some")
        .expect("stop");
    assert!(started.elapsed() < Duration::from_secs(10));
    // (The stalled client's socket itself closes when the process exits,
    // or at its write deadline: hyper is blocked writing to it.)
    drop(stalled);
    let mut open = 1;
    for _ in 0..100 {
        open = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND usename = 'pgrpc_authenticator' AND state <> 'idle'",
                &[&db],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "a connection of the stopped server is still busy");
}
