//! Several prepared statements before one Sync (added for pgrpc; not in
//! upstream tokio-postgres 0.7.18).
//!
//! Every other request of this crate ends each statement with its own
//! Sync. Statements sent before a single Sync run in one implicit
//! transaction, which commits at the Sync (unless one of them opens a
//! transaction block), and the server skips every message after an
//! error up to that Sync.

use crate::client::{InnerClient, Responses};
use crate::codec::FrontendMessage;
use crate::connection::RequestMessages;
use crate::query::encode_bind;
use crate::types::{BorrowToSql, Type};
use crate::{Error, Row, Statement};
use bytes::{BufMut, BytesMut};
use futures_util::{ready, Stream};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Statements to send before one Sync, each bound to the unnamed portal
/// and executed to completion.
#[derive(Default)]
pub struct Pipeline {
    buf: BytesMut,
    statements: Vec<Statement>,
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    /// An empty pipeline whose buffer holds `capacity` bytes before it
    /// grows.
    pub fn with_capacity(capacity: usize) -> Pipeline {
        Pipeline {
            buf: BytesMut::with_capacity(capacity),
            statements: Vec::with_capacity(4),
        }
    }

    /// Appends a Bind of `statement` with `params` and an Execute of it.
    /// On an error nothing is appended: the pipeline is as it was.
    pub fn execute<P, I>(&mut self, statement: &Statement, params: I) -> Result<(), Error>
    where
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let mark = self.buf.len();
        let encoded = encode_bind(statement, params, "", &mut self.buf)
            .and_then(|()| frontend::execute("", 0, &mut self.buf).map_err(Error::encode));
        if let Err(e) = encoded {
            // A value that failed half-way leaves part of a Bind behind.
            self.buf.truncate(mark);
            return Err(e);
        }
        self.statements.push(statement.clone());
        Ok(())
    }

    /// Appends a Bind of `statement` with text `params` and an Execute of
    /// it. When every parameter of the statement is of a string type
    /// (`text`, `varchar`, `bpchar`, `name`, `unknown`), each value is
    /// written as its UTF-8 bytes, which is what `ToSql` writes for a
    /// `&str` of those types, without a `ToSql` call per value; otherwise
    /// this is [`Pipeline::execute`]. On an error nothing is appended.
    pub fn execute_text(&mut self, statement: &Statement, params: &[&str]) -> Result<(), Error> {
        let types = statement.params();
        if params.len() != types.len() {
            return Err(Error::parameters(params.len(), types.len()));
        }
        let all_text = types.iter().all(|t| {
            matches!(
                *t,
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
            )
        });
        if !all_text {
            return self.execute(statement, params.iter());
        }
        // One format code (binary) for every parameter, or none for none.
        let formats = (!params.is_empty()).then_some(1);
        let mark = self.buf.len();
        let r = frontend::bind(
            "",
            statement.name(),
            formats,
            params.iter(),
            |value, buf| {
                buf.put_slice(value.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            Some(1),
            &mut self.buf,
        );
        let encoded = match r {
            Ok(()) => frontend::execute("", 0, &mut self.buf).map_err(Error::encode),
            Err(frontend::BindError::Conversion(e)) => Err(Error::to_sql(e, 0)),
            Err(frontend::BindError::Serialization(e)) => Err(Error::encode(e)),
        };
        if let Err(e) = encoded {
            self.buf.truncate(mark);
            return Err(e);
        }
        self.statements.push(statement.clone());
        Ok(())
    }

    /// How many statements the pipeline holds.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether the pipeline holds no statement.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    pub(crate) fn send(mut self, client: &InnerClient) -> Result<PipelineResponses, Error> {
        frontend::sync(&mut self.buf);
        let responses = client.send(RequestMessages::Single(FrontendMessage::Raw(
            self.buf.freeze(),
        )))?;
        Ok(PipelineResponses {
            responses,
            statements: self.statements.into_iter(),
            done: false,
        })
    }
}

/// The answers to a [`Pipeline`], statement by statement.
pub struct PipelineResponses {
    responses: Responses,
    statements: std::vec::IntoIter<Statement>,
    done: bool,
}

impl PipelineResponses {
    /// The next statement's answer: its only row, if it returned one.
    ///
    /// `None` once every statement has answered. An error is the one at
    /// which the server stopped: the statements behind it were skipped,
    /// and the transaction was rolled back. A statement that returns more
    /// than one row is an error too, and so is a lost connection.
    pub async fn next(&mut self) -> Option<Result<Option<Row>, Error>> {
        self.step(true).await
    }

    /// The next statement's answer, as [`PipelineResponses::next`], with
    /// its row (if any) dropped unread: for a statement run for its
    /// effect, such as a `SELECT set_config(…)`.
    pub async fn skip(&mut self) -> Option<Result<(), Error>> {
        Some(self.step(false).await?.map(|_| ()))
    }

    /// The next statement's answer, its row read only when `keep`.
    async fn step(&mut self, keep: bool) -> Option<Result<Option<Row>, Error>> {
        if self.done {
            return None;
        }
        let statement = self.statements.next()?;
        let answer = self.answer(statement, keep).await;
        if answer.is_err() {
            self.done = true;
        }
        Some(answer)
    }

    /// A statement's answer; its row is read only when `keep`.
    async fn answer(&mut self, statement: Statement, keep: bool) -> Result<Option<Row>, Error> {
        match self.responses.next().await? {
            Message::BindComplete => {}
            _ => return Err(Error::unexpected_message()),
        }
        let mut row = None;
        let mut seen = false;
        loop {
            match self.responses.next().await? {
                Message::DataRow(body) if !seen => {
                    seen = true;
                    if keep {
                        row = Some(Row::new(statement.clone(), body)?);
                    }
                }
                Message::DataRow(_) => return Err(Error::row_count()),
                Message::CommandComplete(_) | Message::EmptyQueryResponse => return Ok(row),
                _ => return Err(Error::unexpected_message()),
            }
        }
    }

    /// The rows of the last statement, one by one as they arrive, once the
    /// statements before it have answered (their rows are dropped). See
    /// [`PipelineRows`].
    pub fn into_rows(self) -> PipelineRows {
        let before = self.statements.len().saturating_sub(1);
        let mut statements = self.statements;
        let last = statements.next_back();
        PipelineRows {
            responses: self.responses,
            before,
            last,
            binds: 0,
            error: None,
            done: self.done,
        }
    }

    /// Waits for the Sync's ReadyForQuery, after every statement has
    /// answered (or one failed), whatever came before it. An error here
    /// came at the implicit transaction's COMMIT (a deferred constraint, a
    /// serialization failure): nothing was committed.
    pub async fn finish(mut self) -> Result<(), Error> {
        // Statements not read yet are read (and their rows dropped) first.
        while let Some(answer) = self.next().await {
            if answer.is_err() {
                break;
            }
        }
        // Then everything up to the ReadyForQuery: the COMMIT's error, or
        // what is left of a statement whose answer could not be read.
        let mut error = None;
        loop {
            match self.responses.next().await {
                Ok(Message::ReadyForQuery(_)) => return error.map_or(Ok(()), Err),
                Ok(_) => {}
                Err(e) if e.as_db_error().is_some() => {
                    error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The rows of a pipeline's last statement as a stream (added for pgrpc).
///
/// The stream ends at the Sync's ReadyForQuery: when it ends without an
/// error, the implicit transaction has committed and the connection is
/// idle. A statement's error (or the COMMIT's) is yielded once the server
/// has reached that ReadyForQuery too, so the connection is idle then as
/// well; any other error (a lost connection, an unexpected message) leaves
/// it in doubt. Rows are read as they come: while the stream is not
/// polled, the connection stops reading its socket.
pub struct PipelineRows {
    responses: Responses,
    /// Statements before the last one.
    before: usize,
    last: Option<Statement>,
    /// BindCompletes seen: the last statement's rows follow the
    /// `before + 1`-th.
    binds: usize,
    /// A statement's error, yielded at the ReadyForQuery.
    error: Option<Error>,
    done: bool,
}

impl Stream for PipelineRows {
    type Item = Result<Row, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(this.responses.poll_next(cx)) {
                Ok(Message::ReadyForQuery(_)) => {
                    this.done = true;
                    return Poll::Ready(this.error.take().map(Err));
                }
                Ok(_) if this.error.is_some() => {}
                Ok(Message::BindComplete) => this.binds += 1,
                Ok(Message::DataRow(body)) if this.binds > this.before => {
                    let Some(last) = &this.last else {
                        this.done = true;
                        return Poll::Ready(Some(Err(Error::unexpected_message())));
                    };
                    return Poll::Ready(Some(Row::new(last.clone(), body)));
                }
                Ok(
                    Message::DataRow(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse,
                ) => {}
                Ok(_) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::unexpected_message())));
                }
                Err(e) if e.as_db_error().is_some() => {
                    this.error.get_or_insert(e);
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}
