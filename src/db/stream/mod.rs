//! A streamed call: a SETOF result of a read-only call, read row by row
//! and written to the response as it comes (`http::body`), so that the
//! proxy's memory stays bounded whatever the result's size.
//!
//! The rows come from one execution of the streaming statement
//! (`statement::stream_sql`) through tokio-postgres's row stream, whose
//! channel to the connection holds one batch of messages: while the body
//! is not read, the connection stops reading its socket and PostgreSQL
//! stops sending. The task buffers the answer up to
//! `PGRPC_STREAM_THRESHOLD_BYTES`; a result that fits is answered whole,
//! as the buffered path answers it. Past it, the headers go out and the
//! rest follows in chunks of `CHUNK_BYTES` through a channel of
//! `CHANNEL_CHUNKS`.
//!
//! The transaction never outlives the task, which is the request's. Once
//! the streaming statement is prepared, it is one implicit transaction
//! (`steps::plan_rows`): the rows end at its Sync, which commits, or rolls
//! back after an error. Otherwise it ends with COMMIT (ROLLBACK under
//! `Prefer: tx=rollback`) sent behind the call. A stream that cannot go on
//! (the client went away or stopped reading past the write deadline,
//! `PGRPC_STREAM_MAX_MS` passed, the server is stopping) is abandoned: its
//! statement is cancelled and its connection closed, never returned to the
//! pool, since the cancel could otherwise reach the next call on it.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use deadpool::managed::Object;
use std::future::Future;
use std::pin::Pin;

use futures_util::future::{maybe_done, MaybeDone};
use futures_util::{FutureExt, Stream, StreamExt};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_postgres::{NoTls, PipelineRows, Row, RowStream};
use tracing::warn;

use super::call::{CallJob, CallResult, ExecError};
use super::exec::checkout;
use super::pool::{Conn, Pool};
use super::steps;

mod encode;

use crate::error::ApiError;
use encode::Encoder;

/// The size of the chunks a stream sends.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks waiting for the client at most, besides the one being written.
pub const CHANNEL_CHUNKS: usize = 2;
/// How long ending an abandoned or finished stream's transaction may take
/// before its connection is closed instead.
const END_WAIT: Duration = Duration::from_secs(5);

/// What a stream's task sends after the first chunk.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    /// The result is complete and its transaction ended.
    End,
    /// The stream failed after its headers were sent (the reason is
    /// logged): the response is cut short.
    Abort(&'static str),
}

/// How a streamed statement's rows become the body (`db::stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// A JSON array: `[`, the rows' JSON separated as `json_agg`
    /// separates them (`sep_newline`: `, \n ` between rows and arrays,
    /// `, ` between other values), `]`.
    Json { sep_newline: bool },
    /// Each row's JSON, then a newline.
    Ndjson,
    /// The header line from the first row, then one line per row.
    Csv,
}

/// A call to stream: the call (its statement is the streaming one), how
/// its rows become the body, and its bounds.
pub struct StreamJob {
    pub call: CallJob,
    pub format: StreamFormat,
    /// Buffered before the answer streams (`PGRPC_STREAM_THRESHOLD_BYTES`).
    pub threshold: usize,
    /// `PGRPC_STREAM_MAX_MS`, from the call's start.
    pub max_duration: Duration,
    /// True once the server stops: streams still going are cut short.
    pub stop: watch::Receiver<bool>,
}

/// What the first row said, for the headers of a streamed answer.
#[derive(Debug, Default)]
pub struct StreamHead {
    pub headers: Option<String>,
    pub status: Option<String>,
    /// `count(*) OVER ()`, when a count was asked for.
    pub total: Option<i64>,
}

pub enum Streamed {
    /// The whole result fitted in the threshold: answered as the buffered
    /// path would (the transaction has ended).
    Whole(CallResult),
    /// The answer streams: its first bytes, then the rest.
    Started {
        head: StreamHead,
        first: Bytes,
        rest: mpsc::Receiver<Piece>,
    },
}

/// Runs the streamed call in a task of its own and waits for its head:
/// an error, the whole result, or the start of a stream.
pub async fn stream(pool: &Pool, job: StreamJob) -> Result<Streamed, ExecError> {
    let pool = pool.clone();
    let (head, answer) = oneshot::channel();
    tokio::spawn(crate::trace::carry(Box::pin(async move {
        run(&pool, job, head).await;
    })));
    answer.await.unwrap_or(Err(ExecError::TaskFailed))
}

/// Where the head goes, and when the transaction started: the request's
/// transaction time is its time until the head is handed over.
struct Head {
    sender: oneshot::Sender<Result<Streamed, ExecError>>,
    since: Option<crate::trace::TransactionTimer>,
}

impl Head {
    fn send(self, head: Result<Streamed, ExecError>) -> Result<(), ()> {
        if let Some(timer) = self.since {
            timer.end();
        }
        self.sender.send(head).map_err(|_| ())
    }
}

/// Why a stream stopped before its end.
#[derive(Clone, Copy)]
enum Stopped {
    Deadline,
    Stopping,
}

async fn run(
    pool: &Pool,
    mut job: StreamJob,
    sender: oneshot::Sender<Result<Streamed, ExecError>>,
) {
    let mut head = Head {
        sender,
        since: None,
    };
    let deadline = Instant::now() + job.max_duration;
    let anon = job.call.anon;
    let fail = |e: tokio_postgres::Error| ExecError::from_pg(e, anon);
    let mut conn = match checkout(pool).await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = head.send(Err(e));
            return;
        }
    };
    // A stream may cancel its statement: it waits until no read lent this
    // connection (`db::inflight`) is in flight, so the cancel can only
    // reach its own; within the pool's wait.
    if !conn.quiet().await {
        let _ = head.send(Err(ExecError::PoolTimeout));
        return;
    }
    // Until the transaction ends: a panic on the way drops the connection
    // with it open, and the pool then closes it.
    conn.begin_use();
    head.since = Some(crate::trace::TransactionTimer::start());
    // BEGIN, the settings, the statements this connection has not
    // prepared yet, the pre-request function and the streaming statement,
    // as one list of steps (`steps`): one round trip to the first rows when
    // the statements are prepared, and then one implicit transaction
    // (`steps::plan_rows`) whose rows end at its Sync, which commits.
    let (ops, mut st) = steps::program(&conn, &mut job.call, true);
    let mut ending = None;
    let mut rows = match steps::plan_rows(&conn, &job.call, &ops, &st) {
        Some(Ok(pipeline)) => match conn.client.pipeline(pipeline) {
            Ok(answers) => Rows::Implicit(answers.into_rows()),
            Err(e) => {
                // Nothing was sent: the connection is gone.
                let _ = Object::take(conn);
                let _ = head.send(Err(fail(e)));
                return;
            }
        },
        Some(Err(e)) => {
            // Nothing was sent: the session is still idle.
            conn.settle();
            let _ = head.send(Err(fail(e)));
            return;
        }
        None => {
            let started = steps::run(&mut conn, &job.call, &ops, &mut st).await;
            let rows = match (started, st.rows.take()) {
                (Ok(()), Some(rows)) => rows,
                (started, _) => {
                    end(conn, false).await;
                    let error = started.err().map_or(ExecError::TaskFailed, |f| f.error);
                    let _ = head.send(Err(error));
                    return;
                }
            };
            // The transaction's end goes out right behind the call:
            // PostgreSQL runs it once the statement has sent its last row
            // (or failed: the COMMIT of an aborted transaction rolls it
            // back), so no round trip follows the rows. The call is READ
            // ONLY: ending it early makes nothing durable that the client
            // has not seen.
            let end_sql = if job.call.rollback {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            let mut commit = Box::pin(maybe_done(conn.client.batch_execute(end_sql)));
            let _ = futures_util::poll!(commit.as_mut());
            ending = Some(commit);
            Rows::Explicit(Box::pin(rows))
        }
    };
    let mut out = Encoder::new(job.format);
    let mut first_head: Option<StreamHead> = None;
    let mut last: Option<Row> = None;
    // Up to the threshold: answered whole if the rows end before it.
    while out.buf.len() < job.threshold {
        match next(&mut rows, deadline, &mut job.stop).await {
            Err(why) => {
                drop(ending);
                abandon(conn, rows);
                let _ = head.send(Err(ExecError::Lost(stopped_message(why).into())));
                return;
            }
            Ok(None) => {
                out.finish();
                let tail = last.as_ref().map(read_head).unwrap_or_default();
                let total = first_head.and_then(|h| h.total);
                drop(rows);
                // READ ONLY: the transaction wrote nothing, so the answer
                // need not wait for its end (which still comes before the
                // connection goes back to the pool; an implicit one has
                // ended with its rows).
                let _ = head.send(Ok(Streamed::Whole(CallResult {
                    body: Some(out.buf.freeze()),
                    rows: out.rows,
                    headers: tail.headers,
                    status: tail.status,
                    total,
                    commit_lsn: None,
                })));
                let ended = ended(ending.as_mut(), true).await;
                drop(ending);
                keep_if(conn, ended);
                return;
            }
            Ok(Some(Err(e))) => {
                drop(rows);
                let ended = ended(ending.as_mut(), e.as_db_error().is_some()).await;
                drop(ending);
                keep_if(conn, ended);
                let _ = head.send(Err(fail(e)));
                return;
            }
            Ok(Some(Ok(row))) => {
                out.push(&row);
                if first_head.is_none() {
                    first_head = Some(read_head(&row));
                }
                last = Some(row);
            }
        }
    }
    drop(last);
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let started = Streamed::Started {
        head: first_head.unwrap_or_default(),
        first: out.buf.split().freeze(),
        rest: rx,
    };
    if head.send(Ok(started)).is_err() {
        // The request is gone before its headers went out.
        drop(ending);
        abandon(conn, rows);
        return;
    }
    loop {
        match next(&mut rows, deadline, &mut job.stop).await {
            Err(why) => {
                warn!(
                    reason = stopped_message(why),
                    "a streamed answer was cut short"
                );
                let _ = tx.try_send(Piece::Abort(stopped_message(why)));
                drop(ending);
                abandon(conn, rows);
                return;
            }
            Ok(Some(Ok(row))) => {
                out.push(&row);
                if out.buf.len() >= CHUNK_BYTES {
                    let chunk = Piece::Data(out.buf.split().freeze());
                    match timeout_at(deadline, tx.send(chunk)).await {
                        Ok(Ok(())) => {}
                        // The body was dropped: the client went away, or
                        // stopped reading past the write deadline.
                        Ok(Err(_)) => {
                            drop(ending);
                            abandon(conn, rows);
                            return;
                        }
                        Err(_) => {
                            let _ = tx.try_send(Piece::Abort(stopped_message(Stopped::Deadline)));
                            drop(ending);
                            abandon(conn, rows);
                            return;
                        }
                    }
                }
            }
            Ok(Some(Err(e))) => {
                drop(rows);
                let clean = e.as_db_error().is_some();
                let error = ApiError::from(fail(e));
                warn!(code = %error.code, message = %error.message, "a streamed answer failed after its headers");
                let ended = ended(ending.as_mut(), clean).await;
                drop(ending);
                keep_if(conn, ended);
                if job.format == StreamFormat::Ndjson {
                    out.buf.put_slice(error_line(&error).as_bytes());
                }
                if !out.buf.is_empty() {
                    let chunk = Piece::Data(out.buf.split().freeze());
                    if timeout(END_WAIT, tx.send(chunk)).await.is_err() {
                        return;
                    }
                }
                let _ = timeout(
                    END_WAIT,
                    tx.send(Piece::Abort("the call failed mid-stream")),
                )
                .await;
                return;
            }
            Ok(None) => {
                drop(rows);
                out.finish();
                let ended = ended(ending.as_mut(), true).await;
                drop(ending);
                keep_if(conn, ended);
                if !out.buf.is_empty() {
                    let chunk = Piece::Data(out.buf.split().freeze());
                    if timeout_at(deadline, tx.send(chunk)).await.is_err() {
                        return;
                    }
                }
                let _ = timeout_at(deadline, tx.send(Piece::End)).await;
                return;
            }
        }
    }
}

/// The NDJSON line that ends a stream that failed: `{"$error": {...}}`,
/// the four-key error body under the one key `$error`.
pub fn error_line(error: &ApiError) -> String {
    let mut line = serde_json::json!({ "$error": error.body_json() }).to_string();
    line.push('\n');
    line
}

fn stopped_message(why: Stopped) -> &'static str {
    match why {
        Stopped::Deadline => "the stream took longer than PGRPC_STREAM_MAX_MS",
        Stopped::Stopping => "the server is stopping",
    }
}

/// A streamed call's rows: from the row stream of an explicit
/// transaction, whose COMMIT follows them, or from the pipeline of an
/// implicit one, which ends with them.
enum Rows {
    Explicit(Pin<Box<RowStream>>),
    Implicit(PipelineRows),
}

impl Stream for Rows {
    type Item = Result<Row, tokio_postgres::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Rows::Explicit(rows) => rows.as_mut().poll_next(cx),
            Rows::Implicit(rows) => Pin::new(rows).poll_next(cx),
        }
    }
}

/// The next row, unless the deadline passes or the server stops first.
async fn next(
    rows: &mut Rows,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Result<Row, tokio_postgres::Error>>, Stopped> {
    if *stop.borrow() {
        return Err(Stopped::Stopping);
    }
    // A row already received needs no timer and no watch on the stop
    // flag: the timeout below would return it as well (it polls the rows
    // first), so only a wait for rows is bounded by the deadline.
    if let Some(row) = rows.next().now_or_never() {
        return Ok(row);
    }
    tokio::select! {
        row = timeout_at(deadline, rows.next()) => row.map_err(|_| Stopped::Deadline),
        _ = stop.changed() => Err(Stopped::Stopping),
    }
}

/// The response settings and the total, from a row of the streaming
/// statement.
fn read_head(row: &Row) -> StreamHead {
    StreamHead {
        total: row.try_get(2).ok().flatten(),
        headers: row
            .try_get::<_, Option<String>>(3)
            .ok()
            .flatten()
            .filter(|s| !s.is_empty()),
        status: row
            .try_get::<_, Option<String>>(4)
            .ok()
            .flatten()
            .filter(|s| !s.is_empty()),
    }
}

/// Ends the transaction; a connection whose end fails or takes longer
/// than `END_WAIT` is closed, never returned to the pool.
async fn end(mut conn: Conn, commit: bool) {
    let sql = if commit { "COMMIT" } else { "ROLLBACK" };
    match timeout(END_WAIT, conn.client.batch_execute(sql)).await {
        Ok(Ok(())) => conn.settle(),
        _ => {
            let _ = Object::take(conn);
        }
    }
}

/// Whether the transaction ended, once the rows have: the end sent behind
/// the call of an explicit transaction succeeded within `END_WAIT`; an
/// implicit one ended with its rows, at its Sync, unless they stopped on a
/// lost connection (`clean` false).
async fn ended<F>(ending: Option<&mut Pin<Box<MaybeDone<F>>>>, clean: bool) -> bool
where
    F: Future<Output = Result<(), tokio_postgres::Error>>,
{
    let Some(ending) = ending else {
        return clean;
    };
    timeout(END_WAIT, ending.as_mut()).await.is_ok()
        && matches!(ending.as_mut().take_output(), Some(Ok(())))
}

/// Returns a connection whose transaction ended to the pool (on drop);
/// closes one whose end failed.
fn keep_if(mut conn: Conn, ended: bool) {
    if ended {
        conn.settle();
    } else {
        let _ = Object::take(conn);
    }
}

/// Gives a stream up: its statement is cancelled (so PostgreSQL stops
/// computing rows nobody reads), and its connection closed, which rolls
/// the transaction back. Run in a task of its own, so the cancel's
/// round trip holds nothing.
fn abandon(conn: Conn, rows: Rows) {
    let token = conn.client.cancel_token();
    drop(rows);
    let _ = Object::take(conn);
    tokio::spawn(async move {
        let _ = timeout(END_WAIT, token.cancel_query(NoTls)).await;
    });
}
