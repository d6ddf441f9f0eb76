//! Real Redis for the bridge's tests, on the shared kit (`crate::kit`, whose
//! names this module re-exports): a throwaway 6-node Redis Cluster (3
//! masters, 3 replicas, `cluster-node-timeout 2000`) or a single Redis on free
//! loopback ports in temporary directories, killed by PID when dropped; a
//! minimal RESP client (plain or TLS) for the backend side (publishing,
//! `CLUSTER` and `ACL` commands); and gateway nodes bridged to them.
//!
//! Without `redis-server` a test prints why and passes, unless `CI` is set:
//! then it fails, so CI never goes green by running nothing.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

pub use crate::kit::*;

/// How long any single awaited thing may take before the test fails: more
/// than the kit's default, for failovers and cluster start-up on a busy machine.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Whether Redis can be run here. Without it: fail under CI, else skip loudly.
pub fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: redis-server is not installed (apt-get install -y redis-server)"
        );
        eprintln!(
            "SKIPPED {test}: redis-server is not installed (apt-get install -y redis-server)"
        );
    }
    found
}

/// Returns from the test when Redis is missing (and not under CI).
#[macro_export]
macro_rules! require_redis {
    () => {
        if !$crate::harness::redis_available(module_path!()) {
            return;
        }
    };
}

// ---------------------------------------------------------------- processes

/// Free loopback ports whose cluster-bus twin (port + 10000) is free too.
pub fn free_ports(n: usize) -> Vec<u16> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize
        + std::process::id() as usize * 7919;
    let mut ports = Vec::new();
    let mut candidate = 20_000 + seed % 9_000;
    while ports.len() < n {
        candidate = if candidate >= 29_999 {
            20_000
        } else {
            candidate + 1
        };
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(candidate as u16) && free(candidate as u16 + 10_000) {
            ports.push(candidate as u16);
        }
    }
    ports
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    cluster: bool,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn spawn(port: u16, cluster: bool, extra: &[&str]) -> RedisServer {
        let dir = TempDir::new(&format!("gw-redis-{port}"));
        let mut s = RedisServer {
            port,
            child: None,
            dir,
            cluster,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.start();
        s
    }

    /// (Re)starts the process on the same port and directory.
    pub fn start(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(&self.dir.0)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--protected-mode",
                "no",
                "--logfile",
                "redis.log",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        cmd.args(&self.extra);
        self.child = Some(cmd.spawn().expect("redis-server starts"));
    }

    /// Kills the process (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until it answers PING (plain TCP).
    pub async fn wait_ready(&self) {
        let what = format!("redis on {} to start", self.port);
        eventually_async(&what, DEADLINE, || async {
            match Resp::connect(self.port).await {
                Ok(mut c) => c.cmd(&["PING"]).await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }
}

impl Drop for RedisServer {
    /// Kills the process; its directory (with `redis.log`) goes with the
    /// `TempDir`, which keeps it when the test failed.
    fn drop(&mut self) {
        self.kill();
    }
}

/// A single Redis.
pub struct SingleRedis {
    pub server: RedisServer,
}

impl SingleRedis {
    pub async fn start() -> SingleRedis {
        let server = RedisServer::spawn(free_ports(1)[0], false, &[]);
        server.wait_ready().await;
        SingleRedis { server }
    }
}

/// A 6-node Redis Cluster: 3 masters with one replica each.
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let servers: Vec<RedisServer> = free_ports(6)
            .into_iter()
            .map(|p| RedisServer::spawn(p, true, &[]))
            .collect();
        for s in &servers {
            s.wait_ready().await;
        }
        let addrs: Vec<String> = servers.iter().map(RedisServer::addr).collect();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .output()
                .expect("redis-cli runs")
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { servers };
        cluster.wait_healthy().await;
        cluster
    }

    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    pub fn seeds(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::addr).collect()
    }

    pub fn server(&mut self, port: u16) -> &mut RedisServer {
        self.servers.iter_mut().find(|s| s.port == port).unwrap()
    }

    /// Every live node reports `cluster_state:ok` and the same 3 masters, each with a replica.
    pub async fn wait_healthy(&self) {
        let start = Instant::now();
        loop {
            let mut views = Vec::new();
            for s in self.servers.iter().filter(|s| s.child.is_some()) {
                let Ok(mut c) = Resp::connect(s.port).await else {
                    break;
                };
                let info = c
                    .cmd(&["CLUSTER", "INFO"])
                    .await
                    .map(|r| r.text())
                    .unwrap_or_default();
                let slots = c
                    .cmd(&["CLUSTER", "SLOTS"])
                    .await
                    .ok()
                    .map(|r| slot_map(&r))
                    .unwrap_or_default();
                views.push((info.contains("cluster_state:ok"), slots));
            }
            let live = self.servers.iter().filter(|s| s.child.is_some()).count();
            if views.len() == live
                && views.iter().all(|(ok, slots)| {
                    *ok && slots.len() == 3
                        && slots.iter().all(|(_, _, _, replicas)| *replicas >= 1)
                })
                && views.windows(2).all(|w| w[0].1 == w[1].1)
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "cluster did not become healthy: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The slot map as seen by any live node: (start, end, master port, replica count).
    pub async fn slots(&self) -> Vec<(u16, u16, u16, usize)> {
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            if let Ok(mut c) = Resp::connect(s.port).await
                && let Ok(r) = c.cmd(&["CLUSTER", "SLOTS"]).await
            {
                return slot_map(&r);
            }
        }
        panic!("no live cluster node");
    }

    /// The master port owning `slot`.
    pub async fn owner(&self, slot: u16) -> u16 {
        self.slots()
            .await
            .into_iter()
            .find(|(s, e, _, _)| (*s..=*e).contains(&slot))
            .map(|(_, _, p, _)| p)
            .unwrap()
    }

    /// `CLUSTER MYID` of the node on `port`.
    pub async fn id(&self, port: u16) -> String {
        Resp::connect(port)
            .await
            .unwrap()
            .cmd(&["CLUSTER", "MYID"])
            .await
            .unwrap()
            .text()
    }

    /// The port of a replica of the master on `master`.
    /// Moves `slot` to another master the way `redis-cli --cluster
    /// reshard` does (IMPORTING / MIGRATING, MIGRATE of every key in it,
    /// SETSLOT NODE everywhere); returns the keys that moved.
    pub async fn migrate_slot(&self, slot: u16) -> Vec<String> {
        let src = self.owner(slot).await;
        let masters: Vec<u16> = self.slots().await.iter().map(|(_, _, p, _)| *p).collect();
        let dst = *masters.iter().find(|p| **p != src).unwrap();
        let (src_id, dst_id) = (self.id(src).await, self.id(dst).await);
        let slot = slot.to_string();
        let run = async |port: u16, args: &[&str]| {
            let reply = Resp::connect(port).await.unwrap().cmd(args).await.unwrap();
            assert_eq!(reply, Reply::Simple("OK".into()), "{args:?} on {port}");
        };
        run(dst, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]).await;
        run(src, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]).await;
        let mut c = Resp::connect(src).await.unwrap();
        let keys = c
            .cmd(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"])
            .await
            .unwrap();
        let keys: Vec<String> = keys.items().iter().map(Reply::text).collect();
        if !keys.is_empty() {
            let dst_port = dst.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &dst_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let reply = c.cmd(&args).await.unwrap();
            assert!(
                matches!(reply, Reply::Simple(ref s) if s == "OK" || s == "NOKEY"),
                "{reply:?}"
            );
        }
        run(dst, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]).await;
        run(src, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]).await;
        for other in masters.iter().filter(|p| **p != src && **p != dst) {
            run(*other, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]).await;
        }
        keys
    }

    pub async fn replica_of(&self, master: u16) -> u16 {
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            let role = Resp::connect(s.port)
                .await
                .unwrap()
                .cmd(&["ROLE"])
                .await
                .unwrap();
            if let Reply::Array(items) = role
                && items.first().map(Reply::text).as_deref() == Some("slave")
                && items.get(2).map(Reply::int) == Some(i64::from(master))
            {
                return s.port;
            }
        }
        panic!("no replica of {master}");
    }

    /// Subscribers of a shard channel on the master that owns it.
    pub async fn shardnumsub(&self, channel: &str) -> i64 {
        let owner = self
            .owner(fred::util::redis_keyslot(channel.as_bytes()))
            .await;
        let reply = Resp::connect(owner)
            .await
            .unwrap()
            .cmd(&["PUBSUB", "SHARDNUMSUB", channel])
            .await
            .unwrap();
        match reply {
            Reply::Array(items) => items.get(1).map(Reply::int).unwrap_or(0),
            other => panic!("unexpected SHARDNUMSUB reply {other:?}"),
        }
    }
}

fn slot_map(reply: &Reply) -> Vec<(u16, u16, u16, usize)> {
    let Reply::Array(entries) = reply else {
        return Vec::new();
    };
    let mut map: Vec<_> = entries
        .iter()
        .filter_map(|e| match e {
            Reply::Array(f) if f.len() >= 3 => {
                let port = match &f[2] {
                    Reply::Array(m) => m.get(1).map(Reply::int).unwrap_or(0) as u16,
                    _ => 0,
                };
                Some((f[0].int() as u16, f[1].int() as u16, port, f.len() - 3))
            }
            _ => None,
        })
        .collect();
    map.sort();
    map
}

// ---------------------------------------------------------------- RESP client

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) | Reply::Error(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Int(i) => i.to_string(),
            _ => String::new(),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            other => other.text().parse().unwrap_or(0),
        }
    }

    /// An array's items (none for anything else).
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(items) => items,
            _ => &[],
        }
    }
}

/// A byte stream a [`Resp`] can run over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A backend's connection to one Redis node: enough RESP to publish and to
/// drive `CLUSTER` and `ACL` commands.
pub struct Resp {
    stream: BufReader<Box<dyn Io>>,
}

impl Resp {
    /// A plain TCP connection to the Redis on `port`.
    pub async fn connect(port: u16) -> std::io::Result<Resp> {
        let stream = Self::tcp(port).await?;
        Ok(Resp {
            stream: BufReader::new(Box::new(stream)),
        })
    }

    /// A TLS connection to the Redis on `port` (its certificate for
    /// 127.0.0.1 signed by the CA in `ca_file`).
    pub async fn connect_tls(port: u16, ca_file: &Path) -> std::io::Result<Resp> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca_file).map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
        let config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
        let tcp = Self::tcp(port).await?;
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
        Ok(Resp {
            stream: BufReader::new(Box::new(stream)),
        })
    }

    async fn tcp(port: u16) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// How often Redis refused to authenticate `user`, from `ACL LOG` (whose
    /// entries count repeats of the same failure).
    pub async fn auth_failures(&mut self, user: &str) -> i64 {
        let Reply::Array(entries) = self.cmd(&["ACL", "LOG"]).await.unwrap() else {
            panic!("ACL LOG is not an array");
        };
        entries
            .iter()
            .filter_map(|entry| match entry {
                Reply::Array(fields) => {
                    let field = |name: &str| {
                        fields
                            .chunks(2)
                            .find(|kv| kv[0].text() == name)
                            .map(|kv| kv[1].clone())
                    };
                    let is =
                        |name: &str, value: &str| field(name).is_some_and(|v| v.text() == value);
                    (is("reason", "auth") && is("username", user))
                        .then(|| field("count").map_or(0, |c| c.int()))
                }
                _ => None,
            })
            .sum()
    }

    pub async fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&buf).await
    }

    pub async fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        self.send(args).await?;
        tokio::time::timeout(Duration::from_secs(5), self.read())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reply"))?
    }

    pub async fn read(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1);
        Ok(match kind {
            "+" => Reply::Simple(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().unwrap_or(0)),
            "$" => {
                let n: i64 = rest.parse().unwrap_or(-1);
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0; n as usize + 2];
                    self.stream.read_exact(&mut data).await?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            }
            "*" => {
                let n: i64 = rest.parse().unwrap_or(-1);
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(Box::pin(self.read()).await?);
                }
                Reply::Array(items)
            }
            other => return Err(std::io::Error::other(format!("bad RESP type {other:?}"))),
        })
    }
}

/// A backend service publishing with SPUBLISH to whichever master owns the
/// channel, following MOVED and dead masters like a cluster client would.
pub struct Backend {
    ports: Vec<u16>,
    conns: HashMap<u16, Resp>,
    owners: HashMap<u16, u16>,
}

impl Backend {
    pub fn new(ports: Vec<u16>) -> Backend {
        Backend {
            ports,
            conns: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    async fn conn(&mut self, port: u16) -> std::io::Result<&mut Resp> {
        match self.conns.entry(port) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                Ok(e.insert(Resp::connect(port).await?))
            }
        }
    }

    async fn lookup_owner(&mut self, slot: u16) -> Option<u16> {
        for port in self.ports.clone() {
            let Ok(c) = self.conn(port).await else {
                continue;
            };
            match c.cmd(&["CLUSTER", "SLOTS"]).await {
                Ok(r) => {
                    let owner = slot_map(&r)
                        .into_iter()
                        .find(|(s, e, _, _)| (*s..=*e).contains(&slot))
                        .map(|(_, _, p, _)| p);
                    if owner.is_some() {
                        return owner;
                    }
                }
                Err(_) => {
                    self.conns.remove(&port);
                }
            }
        }
        None
    }

    /// SPUBLISH once; `Err` when the cluster could not take it right now.
    pub async fn spublish(&mut self, channel: &str, payload: &str) -> Result<i64, String> {
        let slot = fred::util::redis_keyslot(channel.as_bytes());
        let owner = match self.owners.get(&slot) {
            Some(p) => *p,
            None => self.lookup_owner(slot).await.ok_or("no owner")?,
        };
        self.owners.insert(slot, owner);
        let reply = match self.conn(owner).await {
            Ok(c) => c.cmd(&["SPUBLISH", channel, payload]).await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(Reply::Int(n)) => Ok(n),
            Ok(Reply::Error(e)) => {
                if let Some(moved) = e.strip_prefix("MOVED ") {
                    let port = moved.rsplit(':').next().and_then(|p| p.parse().ok());
                    if let Some(port) = port {
                        self.owners.insert(slot, port);
                    }
                } else {
                    self.owners.remove(&slot);
                }
                Err(e)
            }
            other => {
                self.conns.remove(&owner);
                self.owners.remove(&slot);
                Err(format!("{other:?}"))
            }
        }
    }
}

// ---------------------------------------------------------------- gateways

/// A test gateway (the kit's configuration, no connection rate limit)
/// bridged to Redis at `nodes`, with this suite's deadline.
pub fn redis_gateway(nodes: Vec<String>, cluster: bool, pubsub: &str) -> Builder {
    TestGateway::builder()
        .config(|c| {
            c.limits.connect_rate = 0;
            c.broker.kind = gateway::config::BrokerKind::Redis;
            c.broker.redis.nodes = nodes;
            c.broker.redis.cluster = cluster;
            c.broker.redis.pubsub = match pubsub {
                "classic" => gateway::config::PubSub::Classic,
                _ => gateway::config::PubSub::Sharded,
            };
        })
        .deadline(DEADLINE)
}
