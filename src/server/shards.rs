//! `PGRPC_SHARDS`: the address served by several threads, each with a
//! single-threaded runtime of its own, its own listener on the address and
//! its share of the primary's pool.
//!
//! The listeners share the address through `SO_REUSEPORT`: the kernel
//! hands each new client connection to one of them (by a hash of its
//! addresses and ports), so a connection, its requests, the pooled
//! database connections they run on and those connections' drivers all
//! stay on the thread that accepted it. One runtime of several workers
//! instead wakes a task on one thread from another at almost every step of
//! a request (`docs/benchmarks.md` measures the difference).
//!
//! The price: a thread does not take work from another. A long step of
//! one request (shaping a large buffered answer) delays the others of its
//! shard, a shard whose share of the pool is busy makes its requests wait
//! while another's has idle connections, and the kernel's hash may give
//! one shard more clients than another (`pgrpc_shard_connections_total`
//! shows the spread).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::error;

use super::{accept_loop, ServeError};
use crate::app::AppState;

/// Where `serve` accepts clients.
pub enum Listeners {
    /// One listener, served on the current runtime.
    One(TcpListener),
    /// One listener per shard, bound by [`bind_shards`] to one address.
    Shards(Vec<std::net::TcpListener>),
}

impl From<TcpListener> for Listeners {
    fn from(listener: TcpListener) -> Self {
        Listeners::One(listener)
    }
}

impl Listeners {
    /// How many threads accept: 1, or the shards.
    pub fn len(&self) -> usize {
        match self {
            Listeners::One(_) => 1,
            Listeners::Shards(listeners) => listeners.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address served (every shard's is the same).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listeners::One(listener) => listener.local_addr().ok(),
            Listeners::Shards(listeners) => listeners.first()?.local_addr().ok(),
        }
    }
}

/// The backlog of each shard's listener (tokio's `TcpListener::bind`'s).
const BACKLOG: u32 = 1024;

/// Binds `shards` listeners to `addr` with `SO_REUSEPORT` (and
/// `SO_REUSEADDR`, as `TcpListener::bind`). With port 0, the first is
/// given a free port and the others bind to that one. Only a process of
/// the same user may join the group (Linux), so no other user's process
/// can take a share of the clients.
pub async fn bind_shards(addr: &str, shards: usize) -> std::io::Result<Listeners> {
    let mut at = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    })?;
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(at)?;
        let listener = socket.listen(BACKLOG)?;
        at = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(Listeners::Shards(listeners))
}

/// `total` (the pool's connections, or the client connections served at
/// once) shared out over `shards`: the first `total % shards` shards have
/// one more. `None` when a shard would have none (or there is no shard).
pub fn share_out(total: usize, shards: usize) -> Option<Vec<usize>> {
    if shards == 0 || total < shards {
        return None;
    }
    Some(
        (0..shards)
            .map(|i| total / shards + usize::from(i < total % shards))
            .collect(),
    )
}

/// Starts a thread and runtime per listener, each serving its listener
/// with `state` on its own pool (`state.pools`, in order) and its share of
/// `PGRPC_MAX_CONNECTIONS` (a shard waiting to accept holds a slot, so
/// slots shared by every shard could leave a client in one shard's backlog
/// while another holds the last free slot), until
/// `shutdown`; returns once every shard has stopped accepting and drained
/// (each within the grace period). The threads then wait for the server's
/// stop (`state.stopping`), so that what is cut short then (streams still
/// going) can end on its runtime; [`join`] waits for them.
pub(super) async fn run<F>(
    listeners: Vec<std::net::TcpListener>,
    state: &AppState,
    shutdown: F,
) -> Result<Vec<JoinHandle<()>>, ServeError>
where
    F: Future<Output = ()>,
{
    let slots = share_out(state.config.max_connections, listeners.len()).ok_or_else(|| {
        ServeError::Config(format!(
            "{} shards cannot share {} client connections (PGRPC_MAX_CONNECTIONS)",
            listeners.len(),
            state.config.max_connections
        ))
    })?;
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut drained = Vec::with_capacity(listeners.len());
    let mut threads = Vec::with_capacity(listeners.len());
    let shards = listeners.into_iter().zip(state.pools.iter()).zip(slots);
    for (shard, ((listener, pool), slots)) in shards.enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Shard)?;
        let state = Arc::new(state.for_shard(shard, pool.clone()));
        let slots = Arc::new(Semaphore::new(slots));
        let mut drain = drain_rx.clone();
        let mut stopping = state.stopping.clone();
        let (done, drained_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("pgrpc-shard-{shard}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let drain = async move {
                                let _ = drain.wait_for(|d| *d).await;
                            };
                            accept_loop(listener, state, slots, Some(shard), drain).await;
                        }
                        Err(e) => error!(shard, cause = %e, "a shard cannot serve its listener"),
                    }
                    let _ = done.send(());
                    let _ = stopping.wait_for(|s| *s).await;
                });
            })
            .map_err(ServeError::Shard)?;
        threads.push(thread);
        drained.push(drained_rx);
    }
    shutdown.await;
    let _ = drain_tx.send(true);
    for shard in drained {
        let _ = shard.await;
    }
    Ok(threads)
}

/// Waits for the shards' threads to end (after the server's stop).
pub(super) async fn join(threads: Vec<JoinHandle<()>>) {
    if threads.is_empty() {
        return;
    }
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            if thread.join().is_err() {
                error!("a shard's thread panicked");
            }
        }
    });
    let _ = joined.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    // The pool is shared out whole, the first shards taking the rest, and
    // no shard is left without a connection.
    #[test]
    fn the_pool_is_shared_out_whole() {
        assert_eq!(share_out(16, 1), Some(vec![16]));
        assert_eq!(share_out(8, 2), Some(vec![4, 4]));
        assert_eq!(share_out(10, 4), Some(vec![3, 3, 2, 2]));
        assert_eq!(share_out(3, 3), Some(vec![1, 1, 1]));
        assert_eq!(share_out(2, 3), None);
        assert_eq!(share_out(4, 0), None);
        for size in 1..40 {
            for shards in 1..=size {
                let shares = share_out(size, shards).expect("enough connections");
                assert_eq!(shares.iter().sum::<usize>(), size);
                assert!(shares.iter().all(|&n| n >= 1));
            }
        }
    }

    // Every shard's listener is bound to the same address, port 0
    // included, and each accepts connections.
    #[tokio::test]
    async fn shards_share_one_address() {
        let Listeners::Shards(listeners) = bind_shards("127.0.0.1:0", 3).await.expect("bind")
        else {
            panic!("shards expected");
        };
        let addrs: Vec<_> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr"))
            .collect();
        assert_eq!(addrs.len(), 3);
        assert_ne!(addrs[0].port(), 0);
        assert!(addrs.iter().all(|a| *a == addrs[0]), "{addrs:?}");
        let listeners: Vec<TcpListener> = listeners
            .into_iter()
            .map(|l| TcpListener::from_std(l).expect("listener"))
            .collect();
        // The kernel spreads connections by a hash: enough of them reach
        // every listener.
        let mut clients = Vec::new();
        for _ in 0..64 {
            clients.push(
                tokio::net::TcpStream::connect(addrs[0])
                    .await
                    .expect("connect"),
            );
        }
        let mut accepted = [0usize; 3];
        for (i, listener) in listeners.iter().enumerate() {
            while let Ok(Ok(_)) =
                tokio::time::timeout(std::time::Duration::from_millis(50), listener.accept()).await
            {
                accepted[i] += 1;
            }
        }
        assert_eq!(accepted.iter().sum::<usize>(), 64, "{accepted:?}");
        assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    }
}
