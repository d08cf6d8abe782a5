//! A primary and streaming replicas (pg_basebackup -R) from the test image,
//! on Docker's bridge network, and a pgbouncer in front of the shared
//! cluster: for the read-replica and pooler tests. Containers carry the
//! `pgrpc.test` labels like the shared one, so `scripts/test` removes them.

use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};
use tokio_postgres::Client;

use super::{
    connect, connect_retrying, image, prepare_template, run_label, TestDb, AUTHENTICATOR_PASSWORD,
};

/// A container of the test image, removed (on a plain thread: the
/// blocking client runs a runtime of its own) when dropped.
pub struct Node {
    pub host: String,
    pub port: u16,
    /// Its address on the bridge network, for other containers.
    pub bridge_ip: String,
    container: Option<Container<GenericImage>>,
}

impl Node {
    fn start(request: testcontainers::core::ContainerRequest<GenericImage>, port: u16) -> Node {
        std::thread::spawn(move || {
            let container = request
                .with_label("pgrpc.test", "1")
                .with_label("pgrpc.test.run", run_label())
                .with_startup_timeout(Duration::from_secs(120))
                .start()
                .unwrap_or_else(|e| panic!("cannot start a test container: {e}"));
            let host = container.get_host().expect("container host").to_string();
            let host = if host == "localhost" {
                "127.0.0.1".to_string()
            } else {
                host
            };
            Node {
                port: container
                    .get_host_port_ipv4(port.tcp())
                    .expect("container port"),
                bridge_ip: super::bridge_ip(container.id()),
                host,
                container: Some(container),
            }
        })
        .join()
        .expect("container start thread panicked")
    }

    /// Stops the container (its server shuts down; connections are cut).
    pub fn stop(&self) {
        let container = self.container.as_ref().expect("running container");
        std::thread::scope(|s| {
            // One second of grace, then SIGKILL: a smart shutdown would
            // wait for the proxy's pooled sessions.
            s.spawn(|| {
                container
                    .stop_with_timeout(Some(1))
                    .expect("stop container")
            })
            .join()
            .expect("stop thread panicked")
        });
    }

    /// The authenticator's URL of database `db` on this node.
    pub fn authenticator_url(&self, db: &str) -> String {
        format!(
            "postgresql://pgrpc_authenticator:{AUTHENTICATOR_PASSWORD}@{}:{}/{db}",
            self.host, self.port
        )
    }

    pub async fn superuser(&self, db: &str) -> Client {
        connect(&format!(
            "postgresql://postgres:postgres@{}:{}/{db}",
            self.host, self.port
        ))
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            let _ = std::thread::spawn(move || drop(container)).join();
        }
    }
}

fn pg_image() -> GenericImage {
    let (name, tag) = image();
    GenericImage::new(name, tag).with_exposed_port(5432.tcp())
}

/// A primary that accepts replication connections, with a migrated
/// template database.
fn start_primary() -> Node {
    // WAL kept for replicas whose replay a test pauses.
    start_primary_with(&["-c", "wal_keep_size=256MB"])
}

/// A server of its own, started with `args` (`-c name=value`, …), that
/// accepts replication connections, with a migrated template database.
pub fn start_primary_with(args: &[&str]) -> Node {
    let request = pg_image()
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_mount(Mount::tmpfs_mount("/var/lib/postgresql/data"))
        .with_cmd(args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    let node = Node::start(request, 5432);
    let (host, port) = (node.host.clone(), node.port);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let admin = connect_retrying(&format!(
                "postgresql://postgres:postgres@{host}:{port}/postgres"
            ))
            .await;
            admin
                .batch_execute(
                    "COPY (SELECT 'host replication all 0.0.0.0/0 scram-sha-256') \
                     TO PROGRAM 'cat >> \"$PGDATA\"/pg_hba.conf'; SELECT pg_reload_conf()",
                )
                .await
                .expect("allow replication connections");
        });
    })
    .join()
    .expect("primary setup thread panicked");
    prepare_template(&node.host, node.port);
    node
}

/// A hot standby of `primary`, from a base backup taken when it starts.
pub fn start_replica(primary: &Node) -> Node {
    let script = format!(
        r#"set -e
as_pg="setpriv --reuid=postgres --regid=postgres --init-groups --"
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
PGPASSWORD=postgres $as_pg pg_basebackup --host={ip} --port=5432 --username=postgres \
  --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf --checkpoint=fast --no-sync
exec $as_pg postgres -c "primary_conninfo=host={ip} port=5432 user=postgres password=postgres" \
  -c hot_standby=on -c wal_receiver_status_interval=1s"#,
        ip = primary.bridge_ip
    );
    let request = pg_image()
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept read-only connections",
        ))
        .with_mount(Mount::tmpfs_mount("/var/lib/postgresql/data"))
        .with_cmd(["sh", "-c", script.as_str()]);
    Node::start(request, 5432)
}

/// One primary and one replica for the whole test binary.
pub struct Pair {
    pub primary: Node,
    pub replica: Node,
}

static PAIR: OnceLock<Pair> = OnceLock::new();

pub fn pair() -> &'static Pair {
    PAIR.get_or_init(|| {
        // Setting up runs runtimes of its own: on a plain thread.
        std::thread::spawn(|| {
            let primary = start_primary();
            let replica = start_replica(&primary);
            Pair { primary, replica }
        })
        .join()
        .expect("replication setup thread panicked")
    })
}

/// The primary's WAL position now.
/// (as the proxy reads it: what a standby's replay reaches).
pub async fn primary_lsn(primary: &Client) -> String {
    let layout = pgrpc::db::lsn::WalLayout::read(primary)
        .await
        .expect("WAL layout");
    pgrpc::db::replica::position(primary, Some(layout))
        .await
        .expect("primary position")
        .0
        .to_string()
}

/// Waits until `replica` has replayed everything `primary` has written.
pub async fn wait_caught_up(primary: &Client, replica: &Client) {
    let target = primary_lsn(primary).await;
    for _ in 0..400 {
        let done: bool = replica
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&target],
            )
            .await
            .expect("replica position")
            .get(0);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the replica never replayed {target}");
}

/// A database of its own on the pair's primary, with `sql` run as the
/// superuser, once the replica has it too.
pub async fn pair_db(sql: &str) -> TestDb {
    let p = pair();
    let db = TestDb::new_on(&p.primary.host, p.primary.port).await;
    let su = db.superuser().await;
    su.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("fixtures: {e}"));
    let replica = p.replica.superuser("postgres").await;
    wait_caught_up(&su, &replica).await;
    db
}

/// pgbouncer from the test image, in transaction mode, in front of the
/// shared cluster (any database), with `pool_size` server connections per
/// database and user.
pub fn start_pgbouncer(pool_size: u32) -> Node {
    let ip = super::cluster_bridge_ip();
    let script = format!(
        r#"set -e
mkdir -p /etc/pgbouncer /run/pgbouncer
cat > /etc/pgbouncer/pgbouncer.ini <<'INI'
[databases]
* = host={ip} port=5432

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
logfile =
INI
cat > /etc/pgbouncer/userlist.txt <<'USERS'
"postgres" "postgres"
"pgrpc_authenticator" "{AUTHENTICATOR_PASSWORD}"
USERS
chown -R postgres /etc/pgbouncer /run/pgbouncer
exec setpriv --reuid=postgres --regid=postgres --init-groups -- pgbouncer /etc/pgbouncer/pgbouncer.ini"#
    );
    let (name, tag) = image();
    let request = GenericImage::new(name, tag)
        .with_exposed_port(6432.tcp())
        .with_wait_for(WaitFor::message_on_stderr("process up"))
        .with_cmd(["sh", "-c", script.as_str()]);
    Node::start(request, 6432)
}
