//! The body's read deadline, as nginx's `client_body_timeout` plus a
//! minimum rate: a body that stops arriving, or that drips in slower than
//! `PGRPC_BODY_MIN_BYTES_PER_SEC` once its grace period is over, ends the
//! read with [`BodyTimeout`], which the request answers with 408 and a
//! closed connection. Without it one byte of a body holds a connection
//! slot for as long as the client likes: the header-read timeout stops at
//! the headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a body read was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyTimeout {
    #[error("no byte of the body arrived for {0:?}")]
    Stalled(Duration),
    #[error("the body arrived slower than {0} bytes per second")]
    TooSlow(u64),
}

/// The bounds a body is read under.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The longest wait for the next bytes, and the grace period before
    /// `min_rate` applies.
    pub idle: Duration,
    /// Bytes per second, averaged from the start of the body; 0 for none.
    pub min_rate: u64,
}

/// A request body read under [`BodyLimits`].
pub struct ReadDeadline<B> {
    inner: B,
    limits: BodyLimits,
    started: Instant,
    last: Instant,
    received: u64,
    /// Made at the first wait: a body that is there at once (or a GET's
    /// empty one) never needs it.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> ReadDeadline<B> {
    pub fn new(inner: B, limits: BodyLimits) -> Self {
        let now = Instant::now();
        ReadDeadline {
            inner,
            limits,
            started: now,
            last: now,
            received: 0,
            timer: None,
        }
    }

    /// The instant the read fails unless more bytes arrive first.
    fn expiry(&self) -> (Instant, BodyTimeout) {
        let idle = (
            self.last + self.limits.idle,
            BodyTimeout::Stalled(self.limits.idle),
        );
        if self.limits.min_rate == 0 {
            return idle;
        }
        // `received` bytes meet the rate until `received / rate` seconds
        // past the grace period.
        let covered = Duration::from_secs_f64(self.received as f64 / self.limits.min_rate as f64);
        let slow = self.started + self.limits.idle + covered;
        if slow < idle.0 {
            (slow, BodyTimeout::TooSlow(self.limits.min_rate))
        } else {
            idle
        }
    }
}

impl<B> Body for ReadDeadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    this.last = Instant::now();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let (at, why) = this.expiry();
        if Instant::now() >= at {
            return Poll::Ready(Some(Err(Box::new(why))));
        }
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer.as_mut().reset(at);
        if timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chunks = StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    fn dripping(chunks: usize, every: Duration) -> Chunks {
        let s = futures_util::stream::unfold(0usize, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Frame::data(Bytes::from_static(b"x"))), i + 1))
        });
        StreamBody::new(Box::pin(s) as futures_util::stream::BoxStream<'static, _>)
    }

    fn limits(idle_ms: u64, min_rate: u64) -> BodyLimits {
        BodyLimits {
            idle: Duration::from_millis(idle_ms),
            min_rate,
        }
    }

    async fn read<B>(body: ReadDeadline<B>) -> Result<Bytes, BodyTimeout>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match body.collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) => Err(*e.downcast::<BodyTimeout>().expect("a timeout")),
        }
    }

    // A body that stops arriving is cut off once the idle time passes.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_cut_off() {
        let stalled =
            futures_util::stream::pending::<Result<Frame<Bytes>, std::convert::Infallible>>();
        let body =
            StreamBody::new(Box::pin(stalled) as futures_util::stream::BoxStream<'static, _>);
        let started = Instant::now();
        let got = read(ReadDeadline::new(body, limits(500, 0))).await;
        assert_eq!(got, Err(BodyTimeout::Stalled(Duration::from_millis(500))));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    // A drip that beats the idle time but not the rate is cut off after the grace period.
    #[tokio::test(start_paused = true)]
    async fn a_drip_slower_than_the_minimum_rate_is_cut_off() {
        let body = dripping(1000, Duration::from_millis(400));
        let got = read(ReadDeadline::new(body, limits(500, 10))).await;
        assert_eq!(got, Err(BodyTimeout::TooSlow(10)));
    }

    // A body that keeps arriving fast enough is read whole.
    #[tokio::test(start_paused = true)]
    async fn a_body_at_a_steady_rate_is_read_whole() {
        let body = dripping(50, Duration::from_millis(50));
        let got = read(ReadDeadline::new(body, limits(500, 10))).await;
        assert_eq!(got.map(|b| b.len()), Ok(50));
    }
}
