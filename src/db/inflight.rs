//! Plain reads lent a connection: with `PGRPC_POOL_PIPELINE` above 1, a
//! read sent as one implicit transaction (`steps::implicit`) hands its
//! connection back to the pool as soon as its statements are queued, and
//! the next request's go out behind them on the same connection. Each
//! still ends at its own Sync, so none rides on another's COMMIT; the
//! server answers them in order, and PostgreSQL is woken once for several.
//!
//! A connection counts the reads whose answers are still to come. At most
//! `PGRPC_POOL_PIPELINE` are in flight on one connection: the read that
//! fills the last place keeps the connection until its answer is in, so
//! no more can queue behind a slow one. Every other use of a connection
//! (an explicit transaction, a stream, which may cancel its statement)
//! first waits until none is in flight (`quiet`), and so finds its
//! session as it would with the connection to itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The reads in flight on one connection.
#[derive(Default)]
pub struct Inflight {
    count: AtomicUsize,
    idle: Notify,
    /// An answer of a lent read could not be read: the connection's
    /// answers may be out of step, so it serves nobody else.
    doubt: AtomicBool,
}

/// One read in flight; dropped when its answers are in (or given up:
/// the read runs to its end in a task of its own, `exec::Detached`).
pub struct Ticket(Arc<Inflight>);

impl Inflight {
    /// A read enters: its ticket, and how many are in flight with it.
    pub fn enter(self: &Arc<Self>) -> (Ticket, usize) {
        let n = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        (Ticket(self.clone()), n)
    }

    /// Whether a read is in flight.
    pub fn busy(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Whether a lent read left the connection in doubt.
    pub fn in_doubt(&self) -> bool {
        self.doubt.load(Ordering::Acquire)
    }

    /// Waits until no read is in flight on the connection.
    pub async fn quiet(&self) {
        loop {
            // Made before the count is read: `notify_waiters` reaches a
            // `Notified` from its creation on, so no wake-up is lost.
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Ticket {
    /// The read's answers could not be read: the connection is closed at
    /// its next checkout.
    pub fn doubt(&self) {
        self.0.doubt.store(true, Ordering::Release);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quiet_waits_for_the_last_ticket() {
        let inflight = Arc::new(Inflight::default());
        inflight.quiet().await;
        let (first, n1) = inflight.enter();
        let (second, n2) = inflight.enter();
        assert_eq!((n1, n2), (1, 2));
        let waiter = tokio::spawn({
            let inflight = inflight.clone();
            async move { inflight.quiet().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "quiet returned with a read in flight"
        );
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("quiet did not return once no read was in flight")
            .expect("the waiter failed");
        let (_third, n3) = inflight.enter();
        assert_eq!(n3, 1);
    }
}
