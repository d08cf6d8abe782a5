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
use crate::types::BorrowToSql;
use crate::{Error, Row, Statement};
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

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
    pub fn execute<P, I>(&mut self, statement: &Statement, params: I) -> Result<(), Error>
    where
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        encode_bind(statement, params, "", &mut self.buf)?;
        frontend::execute("", 0, &mut self.buf).map_err(Error::encode)?;
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
        if self.done {
            return None;
        }
        let statement = self.statements.next()?;
        let answer = self.answer(statement).await;
        if answer.is_err() {
            self.done = true;
        }
        Some(answer)
    }

    async fn answer(&mut self, statement: Statement) -> Result<Option<Row>, Error> {
        match self.responses.next().await? {
            Message::BindComplete => {}
            _ => return Err(Error::unexpected_message()),
        }
        let mut row = None;
        loop {
            match self.responses.next().await? {
                Message::DataRow(body) if row.is_none() => {
                    row = Some(Row::new(statement.clone(), body)?);
                }
                Message::DataRow(_) => return Err(Error::row_count()),
                Message::CommandComplete(_) | Message::EmptyQueryResponse => return Ok(row),
                _ => return Err(Error::unexpected_message()),
            }
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
