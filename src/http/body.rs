//! The response body: whole bytes (every answer but a stream), or the
//! chunks of a streamed result (`db::stream`) as its task sends them
//! through a bounded channel, so that a client that reads slowly holds
//! the task back instead of growing a buffer.
//!
//! A stream ends cleanly only on the task's explicit end. An abort, or a
//! channel closed without one (the task failed), is an error of the
//! body: hyper then closes the connection without the final zero-length
//! chunk, which any HTTP client reads as a truncated response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;

pub use crate::db::stream::Piece;

pub enum Body {
    Full(Full<Bytes>),
    Stream {
        first: Option<Bytes>,
        rest: mpsc::Receiver<Piece>,
        done: bool,
        /// An abort waits `ABORT_FLUSH` first, so that hyper writes out
        /// the bytes before it (an NDJSON error line) before it cuts the
        /// connection: an error of the body drops what is not written yet.
        aborting: Option<(Pin<Box<tokio::time::Sleep>>, &'static str)>,
    },
}

/// How long an abort waits for the bytes before it to be written.
const ABORT_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

impl Body {
    /// A streamed body: `first`, then the pieces of `rest`.
    pub fn stream(first: Bytes, rest: mpsc::Receiver<Piece>) -> Body {
        Body::Stream {
            first: (!first.is_empty()).then_some(first),
            rest,
            done: false,
            aborting: None,
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::Full(Full::default())
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full(Full::new(b))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::from(Bytes::from(s))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Stream {
                first,
                rest,
                done,
                aborting,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                if let Some((wait, why)) = aborting {
                    if wait.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *done = true;
                    return Poll::Ready(Some(Err(std::io::Error::other(*why))));
                }
                if let Some(bytes) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                match rest.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Piece::Data(bytes))) => {
                        Poll::Ready(Some(Ok(Frame::data(bytes))))
                    }
                    Poll::Ready(Some(Piece::End)) => {
                        *done = true;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Piece::Abort(why))) => {
                        let mut wait = Box::pin(tokio::time::sleep(ABORT_FLUSH));
                        if wait.as_mut().poll(cx).is_ready() {
                            *done = true;
                            return Poll::Ready(Some(Err(std::io::Error::other(why))));
                        }
                        *aborting = Some((wait, why));
                        Poll::Pending
                    }
                    Poll::Ready(None) => {
                        *done = true;
                        Poll::Ready(Some(Err(std::io::Error::other(
                            "the stream's task ended without finishing the result",
                        ))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Stream { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Stream { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_stream_ends_cleanly_only_on_its_end() {
        let (tx, rx) = mpsc::channel(2);
        let mut body = Body::stream(Bytes::from_static(b"[1"), rx);
        tx.send(Piece::Data(Bytes::from_static(b",2]")))
            .await
            .expect("send");
        tx.send(Piece::End).await.expect("send");
        let whole = body.collect().await.expect("a complete body").to_bytes();
        assert_eq!(&whole[..], b"[1,2]");

        let (tx, rx) = mpsc::channel(2);
        body = Body::stream(Bytes::from_static(b"[1"), rx);
        drop(tx);
        assert!(body.collect().await.is_err(), "a closed channel is no end");

        let (tx, rx) = mpsc::channel(2);
        body = Body::stream(Bytes::new(), rx);
        tx.send(Piece::Abort("failed")).await.expect("send");
        assert!(body.collect().await.is_err(), "an abort is an error");
    }
}
