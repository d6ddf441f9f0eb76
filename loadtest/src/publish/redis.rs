//! Redis publish lanes over RESP2: `CLUSTER SLOTS`, then `SPUBLISH` (CRC16
//! slot-routed), `PUBLISH`, or `FCALL gw_publish 1 <channel> <payload>`
//! (contract section 6: the reply is the event's offset), in pipelined
//! batches. Hand-rolled rather than a Redis crate for exact per-event failure
//! accounting and our own batching.
//!
//! Channels are split into lanes by the master that owned them at start (one
//! lane per master), and a lane follows its channels wherever they go: a
//! `MOVED` updates its slot map and re-sends, an `ASK` re-sends to the
//! importing node behind `ASKING`, and `CLUSTERDOWN` / `TRYAGAIN` /
//! `LOADING` / `READONLY` / a refused connection (a master failing over) wait
//! 100 ms, re-read `CLUSTER SLOTS` and re-send, for at most [`RETRY_FOR`].
//! Only replies that say the command did not run are retried; a connection
//! lost with commands in flight fails them (`redis_io`: they may or may not
//! have been published, so their sequence numbers are not counted as lost).
//! While a channel has a publish being retried, its later events wait behind
//! it, so each channel keeps its order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Due, LaneResult, PublishError, Seqs};
use crate::protocol::Payload;
use crate::safety;
use crate::scenario::RedisCommand;

/// Most events written in one batch.
const BATCH: usize = 512;
/// How long one batch's replies may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish that Redis refused for now (failover, migration) is
/// retried before it counts as failed.
pub const RETRY_FOR: Duration = Duration::from_secs(8);
/// Pause before a retry round.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Connect timeout for a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// CRC16-CCITT (XMODEM), as Redis Cluster uses for key slots.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of `key`, honouring `{hash tags}`.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

/// A RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$n` (None for `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` (None for `*-1`).
    Array(Option<Vec<Resp>>),
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

/// Reads one RESP value.
pub fn read_resp<'a, R: tokio::io::AsyncBufRead + Unpin + Send>(
    r: &'a mut R,
) -> Pin<Box<dyn Future<Output = std::io::Result<Resp>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line
            .split_at_checked(1)
            .ok_or_else(|| bad("empty RESP line"))?;
        match kind {
            "+" => Ok(Resp::Simple(rest.to_owned())),
            "-" => Ok(Resp::Error(rest.to_owned())),
            ":" => rest.parse().map(Resp::Int).map_err(|_| bad("bad integer")),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad("bad bulk length"))?;
                if n < 0 {
                    return Ok(Resp::Bulk(None));
                }
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf).await?;
                buf.truncate(n as usize);
                Ok(Resp::Bulk(Some(buf)))
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad("bad array length"))?;
                if n < 0 {
                    return Ok(Resp::Array(None));
                }
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(read_resp(r).await?);
                }
                Ok(Resp::Array(Some(items)))
            }
            _ => Err(bad("unknown RESP type")),
        }
    })
}

/// Appends a RESP command to `buf`.
pub fn encode_command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

type Conn = (BufReader<OwnedReadHalf>, OwnedWriteHalf);

async fn connect(addr: SocketAddr) -> Result<Conn, PublishError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| PublishError::Connect {
            addr: addr.to_string(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| PublishError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    Ok((BufReader::new(r), w))
}

/// Parses a `CLUSTER SLOTS` reply into `(start, end, master address)`.
/// An empty host means "the node you asked".
pub fn parse_cluster_slots(
    reply: &Resp,
    asked: SocketAddr,
    allow_remote: bool,
) -> Result<Vec<(u16, u16, SocketAddr)>, PublishError> {
    let Resp::Array(Some(ranges)) = reply else {
        return Err(PublishError::Redis(format!(
            "unexpected CLUSTER SLOTS reply: {reply:?}"
        )));
    };
    let mut out = Vec::new();
    for r in ranges {
        let Resp::Array(Some(parts)) = r else {
            continue;
        };
        let (Some(Resp::Int(a)), Some(Resp::Int(b)), Some(Resp::Array(Some(master)))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let host = match master.first() {
            Some(Resp::Bulk(Some(h))) => String::from_utf8_lossy(h).into_owned(),
            _ => String::new(),
        };
        let Some(Resp::Int(port)) = master.get(1) else {
            continue;
        };
        let addr = if host.is_empty() || host == "?" {
            SocketAddr::new(asked.ip(), *port as u16)
        } else {
            safety::resolve(&host, *port as u16, allow_remote, &format!("{host}:{port}"))
                .map_err(PublishError::Address)?
        };
        out.push((*a as u16, *b as u16, addr));
    }
    if out.is_empty() {
        return Err(PublishError::Redis("CLUSTER SLOTS listed no slots".into()));
    }
    Ok(out)
}

/// Where the slots live.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    /// Slot -> master; empty when the node is not a cluster (all to `single`).
    slots: Vec<Option<SocketAddr>>,
    /// The one node of a non-cluster Redis (or classic mode).
    single: Option<SocketAddr>,
    /// Every node seen (seeds and masters), asked again on a refresh.
    known: Vec<SocketAddr>,
}

impl Topology {
    /// Everything to one node (classic `PUBLISH`, or a Redis without cluster).
    pub(crate) fn single(addr: SocketAddr) -> Topology {
        Topology {
            slots: Vec::new(),
            single: Some(addr),
            known: vec![addr],
        }
    }

    fn node_of(&self, key: &[u8]) -> Option<SocketAddr> {
        if self.slots.is_empty() {
            return self.single;
        }
        self.slots[key_slot(key) as usize]
    }

    /// Distinct masters, in slot order.
    pub(crate) fn masters(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in self.slots.iter().flatten().chain(self.single.iter()) {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }

    fn learn(&mut self, addr: SocketAddr) {
        if !self.known.contains(&addr) {
            self.known.push(addr);
        }
    }
}

async fn ask_slots(seed: SocketAddr, allow_remote: bool) -> Result<Topology, PublishError> {
    let (mut r, mut w) = connect(seed).await?;
    let mut buf = Vec::new();
    encode_command(&mut buf, &[b"CLUSTER", b"SLOTS"]);
    w.write_all(&buf)
        .await
        .map_err(|source| PublishError::Connect {
            addr: seed.to_string(),
            source,
        })?;
    let reply = tokio::time::timeout(REPLY_TIMEOUT, read_resp(&mut r))
        .await
        .map_err(|_| PublishError::Redis(format!("{seed}: CLUSTER SLOTS timed out")))?
        .map_err(|source| PublishError::Connect {
            addr: seed.to_string(),
            source,
        })?;
    if let Resp::Error(e) = &reply {
        if e.contains("cluster support disabled") {
            return Ok(Topology::single(seed));
        }
        return Err(PublishError::Redis(format!("{seed}: {e}")));
    }
    let ranges = parse_cluster_slots(&reply, seed, allow_remote)?;
    let mut t = Topology {
        slots: vec![None; 16384],
        single: None,
        known: vec![seed],
    };
    for (a, b, addr) in ranges {
        for s in a..=b.min(16383) {
            t.slots[s as usize] = Some(addr);
        }
        t.learn(addr);
    }
    Ok(t)
}

/// Reads the slot map from the first seed that answers.
pub(crate) async fn fetch_topology(
    seeds: &[SocketAddr],
    allow_remote: bool,
) -> Result<Topology, PublishError> {
    let mut last_err = None;
    for &seed in seeds {
        match ask_slots(seed, allow_remote).await {
            Ok(mut t) => {
                for &s in seeds {
                    t.learn(s);
                }
                return Ok(t);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| PublishError::Redis("no Redis address".into())))
}

/// Finds each channel's master. Returns the topology, the distinct masters
/// and, per channel, the index of its master (its lane).
pub(crate) async fn route_channels(
    seeds: &[SocketAddr],
    prefix: &str,
    channels: &[String],
    allow_remote: bool,
) -> Result<(Topology, Vec<SocketAddr>, Vec<usize>), PublishError> {
    let topo = fetch_topology(seeds, allow_remote).await?;
    let masters = topo.masters();
    let mut route = Vec::with_capacity(channels.len());
    for ch in channels {
        let key = format!("{prefix}{ch}");
        let Some(node) = topo.node_of(key.as_bytes()) else {
            return Err(PublishError::Redis(format!(
                "slot {} (channel {key}) has no master",
                key_slot(key.as_bytes())
            )));
        };
        route.push(masters.iter().position(|m| *m == node).unwrap_or(0));
    }
    Ok((topo, masters, route))
}

/// Checks that the Function library `gw` (contract section 6) is loaded on
/// `addr`.
pub(crate) async fn check_function(addr: SocketAddr) -> Result<(), PublishError> {
    let (mut r, mut w) = connect(addr).await?;
    let mut buf = Vec::new();
    encode_command(&mut buf, &[b"FUNCTION", b"LIST", b"LIBRARYNAME", b"gw"]);
    let io = |source| PublishError::Connect {
        addr: addr.to_string(),
        source,
    };
    w.write_all(&buf).await.map_err(io)?;
    let reply = tokio::time::timeout(REPLY_TIMEOUT, read_resp(&mut r))
        .await
        .map_err(|_| PublishError::Redis(format!("{addr}: FUNCTION LIST timed out")))?
        .map_err(io)?;
    match reply {
        Resp::Array(Some(libs)) if !libs.is_empty() => Ok(()),
        Resp::Error(e) => Err(PublishError::Redis(format!(
            "{addr}: FUNCTION LIST failed ({e}); FCALL needs Redis 7"
        ))),
        _ => Err(PublishError::Redis(format!(
            "{addr}: the Function library `gw` is not loaded (FUNCTION LIST LIBRARYNAME gw is \
             empty). A gateway implementing contract v2 section 6 loads it into every master \
             at start-up; against an older gateway publish with --publish-via spublish"
        ))),
    }
}

/// What a Redis error reply means for a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `MOVED <slot> <addr>`: the slot lives elsewhere now; not executed.
    Moved(u16, String),
    /// `ASK <slot> <addr>`: this key is being imported there; not executed.
    Ask(u16, String),
    /// Not executed, try again shortly (`CLUSTERDOWN`, `TRYAGAIN`,
    /// `LOADING`, `READONLY`, `MASTERDOWN`): the failure kind.
    Later(String),
    /// A final error: the failure kind (`redis_no_function`, `redis_err`, ...).
    Failed(String),
}

/// Classifies an error reply.
pub fn classify_error(e: &str) -> Refusal {
    let mut words = e.split_whitespace();
    let first = words.next().unwrap_or("ERR");
    match first {
        "MOVED" | "ASK" => {
            let slot = words.next().and_then(|s| s.parse().ok());
            let addr = words.next().map(str::to_owned);
            match (slot, addr) {
                (Some(slot), Some(addr)) if first == "MOVED" => Refusal::Moved(slot, addr),
                (Some(slot), Some(addr)) => Refusal::Ask(slot, addr),
                _ => Refusal::Failed("redis_bad_redirect".into()),
            }
        }
        "CLUSTERDOWN" | "TRYAGAIN" | "LOADING" | "READONLY" | "MASTERDOWN" => {
            Refusal::Later(format!("redis_{}", first.to_ascii_lowercase()))
        }
        _ if e.contains("Function not found") => Refusal::Failed("redis_no_function".into()),
        _ => Refusal::Failed(format!("redis_{}", first.to_ascii_lowercase())),
    }
}

/// Resolves a redirect's `host:port` (an empty host means the node that said it).
fn redirect_addr(text: &str, from: SocketAddr, allow_remote: bool) -> Option<SocketAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() {
        return Some(SocketAddr::new(from.ip(), port));
    }
    safety::resolve(host, port, allow_remote, text).ok()
}

/// One event on its way.
struct Item {
    channel: usize,
    seq: u64,
    payload: String,
    first_try: Instant,
    /// Re-send to this node behind `ASKING`.
    ask: Option<SocketAddr>,
    /// It was refused before (kind of the last refusal).
    retry: Option<String>,
}

/// What became of an item in a round.
enum Fate {
    Done,
    Retry(String),
    Deferred,
    Failed(String),
}

/// The publish lane of one master's channels (at start); it follows them
/// wherever the cluster moves them.
pub(crate) struct RedisLane {
    command: RedisCommand,
    prefix: String,
    allow_remote: bool,
    topo: Topology,
    conns: HashMap<SocketAddr, Conn>,
}

impl RedisLane {
    /// Connects to the lane's first master (so a dead address fails the run
    /// before any load starts).
    pub(crate) async fn connect(
        home: SocketAddr,
        topo: Topology,
        command: RedisCommand,
        prefix: &str,
        allow_remote: bool,
    ) -> Result<RedisLane, PublishError> {
        let conn = connect(home).await?;
        let mut conns = HashMap::new();
        conns.insert(home, conn);
        Ok(RedisLane {
            command,
            prefix: prefix.to_owned(),
            allow_remote,
            topo,
            conns,
        })
    }

    fn verb(&self) -> &'static [&'static [u8]] {
        match self.command {
            RedisCommand::Spublish => &[b"SPUBLISH"],
            RedisCommand::Publish => &[b"PUBLISH"],
            RedisCommand::Fcall => &[b"FCALL", b"gw_publish", b"1"],
        }
    }

    async fn refresh(&mut self) {
        let mut order = self.topo.masters();
        for k in &self.topo.known {
            if !order.contains(k) {
                order.push(*k);
            }
        }
        if self.topo.slots.is_empty() {
            return;
        }
        if let Ok(mut t) = fetch_topology(&order, self.allow_remote).await {
            for k in &self.topo.known {
                t.learn(*k);
            }
            self.topo = t;
        }
    }

    /// Sends one node's share of a round; returns each item's fate, in order.
    async fn send_group(
        &mut self,
        addr: SocketAddr,
        items: &[&Item],
        keys: &[Vec<u8>],
        out: &mut LaneResult,
        seqs: &mut Seqs,
    ) -> (Vec<Fate>, bool) {
        let mut stale = false;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.conns.entry(addr) {
            match connect(addr).await {
                Ok(c) => {
                    slot.insert(c);
                }
                Err(_) => {
                    // Nothing was written: safe to send again.
                    let fates = items
                        .iter()
                        .map(|_| Fate::Retry("redis_connect".into()))
                        .collect();
                    return (fates, true);
                }
            }
        }
        let mut buf = Vec::with_capacity(items.len() * 160);
        let verb = self.verb();
        for it in items.iter() {
            if it.ask.is_some() {
                encode_command(&mut buf, &[b"ASKING"]);
            }
            let mut args: Vec<&[u8]> = verb.to_vec();
            args.push(&keys[it.channel]);
            args.push(it.payload.as_bytes());
            encode_command(&mut buf, &args);
        }
        let Some((r, w)) = self.conns.get_mut(&addr) else {
            return (
                items
                    .iter()
                    .map(|_| Fate::Failed("redis_io".into()))
                    .collect(),
                true,
            );
        };
        if w.write_all(&buf).await.is_err() {
            self.conns.remove(&addr);
            return (
                items
                    .iter()
                    .map(|_| Fate::Failed("redis_io".into()))
                    .collect(),
                true,
            );
        }
        let mut fates = Vec::with_capacity(items.len());
        let mut broken = false;
        for it in items.iter() {
            if broken {
                fates.push(Fate::Failed("redis_io".into()));
                continue;
            }
            if it.ask.is_some()
                && !matches!(
                    tokio::time::timeout(REPLY_TIMEOUT, read_resp(r)).await,
                    Ok(Ok(_))
                )
            {
                broken = true;
                fates.push(Fate::Failed("redis_io".into()));
                continue;
            }
            let fate = match tokio::time::timeout(REPLY_TIMEOUT, read_resp(r)).await {
                Ok(Ok(Resp::Int(n))) => {
                    out.sent += 1;
                    if self.command == RedisCommand::Fcall {
                        if n > 0 {
                            seqs.offset(it.channel, n as u64);
                            out.offsets += 1;
                        } else {
                            out.no_history += 1;
                        }
                    }
                    Fate::Done
                }
                Ok(Ok(Resp::Error(e))) => match classify_error(&e) {
                    Refusal::Moved(slot, to) => match redirect_addr(&to, addr, self.allow_remote) {
                        Some(to) => {
                            if let Some(s) = self.topo.slots.get_mut(slot as usize) {
                                *s = Some(to);
                            }
                            self.topo.learn(to);
                            Fate::Retry("redis_moved".into())
                        }
                        None => Fate::Failed("redis_redirect_refused".into()),
                    },
                    Refusal::Ask(_, to) => match redirect_addr(&to, addr, self.allow_remote) {
                        Some(to) => {
                            self.topo.learn(to);
                            Fate::Retry(format!("ask:{to}"))
                        }
                        None => Fate::Failed("redis_redirect_refused".into()),
                    },
                    Refusal::Later(kind) => {
                        stale = true;
                        Fate::Retry(kind)
                    }
                    Refusal::Failed(kind) => Fate::Failed(kind),
                },
                Ok(Ok(_)) => Fate::Failed("redis_unexpected_reply".into()),
                Ok(Err(_)) | Err(_) => {
                    broken = true;
                    Fate::Failed("redis_io".into())
                }
            };
            fates.push(fate);
        }
        if broken {
            self.conns.remove(&addr);
            stale = true;
        }
        (fates, stale)
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Due>,
        channels: Arc<Vec<String>>,
        pad: usize,
        id: u32,
    ) -> LaneResult {
        let mut seqs = Seqs::default();
        let mut out = LaneResult {
            errors: BTreeMap::new(),
            ..LaneResult::default()
        };
        let keys: Vec<Vec<u8>> = channels
            .iter()
            .map(|c| format!("{}{c}", self.prefix).into_bytes())
            .collect();
        let mut pending: Vec<Item> = Vec::new();
        let mut open = true;
        let mut stale = false;
        let stamp = |seqs: &mut Seqs, d: Due| {
            let seq = seqs.next(d.channel);
            Item {
                channel: d.channel,
                seq,
                payload: Payload {
                    ts: crate::now_micros(),
                    seq,
                    publisher: id,
                    step: d.step,
                }
                .to_json(pad),
                first_try: Instant::now(),
                ask: None,
                retry: None,
            }
        };
        while open || !pending.is_empty() {
            let mut round = std::mem::take(&mut pending);
            if round.is_empty() {
                match rx.recv().await {
                    Some(d) => round.push(stamp(&mut seqs, d)),
                    None => break,
                }
            }
            while open && round.len() < BATCH {
                match rx.try_recv() {
                    Ok(d) => round.push(stamp(&mut seqs, d)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if stale {
                self.refresh().await;
                stale = false;
            }
            // A channel with a publish being retried sends only that one;
            // its later events wait, so the channel keeps its order.
            let mut held: HashSet<usize> = HashSet::new();
            let mut fates: Vec<Option<Fate>> = (0..round.len()).map(|_| None).collect();
            let mut groups: Vec<(SocketAddr, Vec<usize>)> = Vec::new();
            for (i, it) in round.iter().enumerate() {
                if held.contains(&it.channel) {
                    fates[i] = Some(Fate::Deferred);
                    continue;
                }
                if it.retry.is_some() {
                    held.insert(it.channel);
                }
                let node = it.ask.or_else(|| self.topo.node_of(&keys[it.channel]));
                let Some(node) = node else {
                    fates[i] = Some(Fate::Retry("redis_no_master".into()));
                    held.insert(it.channel);
                    stale = true;
                    continue;
                };
                match groups.iter_mut().find(|(a, _)| *a == node) {
                    Some((_, v)) => v.push(i),
                    None => groups.push((node, vec![i])),
                }
            }
            for (addr, idx) in groups {
                let items: Vec<&Item> = idx.iter().map(|&i| &round[i]).collect();
                let (fs, st) = self
                    .send_group(addr, &items, &keys, &mut out, &mut seqs)
                    .await;
                stale |= st;
                for (&i, f) in idx.iter().zip(fs) {
                    fates[i] = Some(f);
                }
            }
            let mut retried = false;
            for (mut it, fate) in round.into_iter().zip(fates) {
                match fate.unwrap_or(Fate::Failed("redis_io".into())) {
                    Fate::Done => {}
                    Fate::Deferred => pending.push(it),
                    Fate::Retry(kind) => {
                        if it.first_try.elapsed() >= RETRY_FOR {
                            let kind = if kind.starts_with("ask:") {
                                "redis_ask".to_owned()
                            } else {
                                kind
                            };
                            seqs.failed(it.channel, it.seq);
                            out.failed += 1;
                            *out.errors.entry(kind).or_default() += 1;
                            continue;
                        }
                        it.ask = kind.strip_prefix("ask:").and_then(|a| a.parse().ok());
                        if it.ask.is_none() && kind != "redis_moved" {
                            retried = true;
                        }
                        it.retry = Some(kind);
                        out.retried += 1;
                        pending.push(it);
                    }
                    Fate::Failed(kind) => {
                        seqs.failed(it.channel, it.seq);
                        out.failed += 1;
                        *out.errors.entry(kind).or_default() += 1;
                    }
                }
            }
            if retried {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        out.finals = seqs.into_finals();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    }

    #[tokio::test]
    async fn reads_nested_replies() {
        let text =
            b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n-ERR x\r\n";
        let mut r = BufReader::new(&text[..]);
        let v = read_resp(&mut r).await.unwrap();
        let asked: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let slots = parse_cluster_slots(&v, asked, false).unwrap();
        assert_eq!(slots, vec![(0, 16383, "127.0.0.1:7000".parse().unwrap())]);
        assert_eq!(
            read_resp(&mut r).await.unwrap(),
            Resp::Error("ERR x".into())
        );
    }

    #[test]
    fn cluster_nodes_off_loopback_are_refused() {
        let reply = Resp::Array(Some(vec![Resp::Array(Some(vec![
            Resp::Int(0),
            Resp::Int(16383),
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"10.0.0.9".to_vec())),
                Resp::Int(7000),
            ])),
        ]))]));
        let asked: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert!(matches!(
            parse_cluster_slots(&reply, asked, false),
            Err(PublishError::Address(_))
        ));
    }

    #[test]
    fn error_replies_say_whether_to_follow_retry_or_fail() {
        assert_eq!(
            classify_error("MOVED 3999 127.0.0.1:6381"),
            Refusal::Moved(3999, "127.0.0.1:6381".into())
        );
        assert_eq!(
            classify_error("ASK 3999 127.0.0.1:6381"),
            Refusal::Ask(3999, "127.0.0.1:6381".into())
        );
        assert_eq!(
            classify_error("CLUSTERDOWN The cluster is down"),
            Refusal::Later("redis_clusterdown".into())
        );
        assert_eq!(
            classify_error("READONLY You can't write against a read only replica."),
            Refusal::Later("redis_readonly".into())
        );
        assert_eq!(
            classify_error("ERR Function not found"),
            Refusal::Failed("redis_no_function".into())
        );
        assert_eq!(
            classify_error("WRONGTYPE Operation against a key"),
            Refusal::Failed("redis_wrongtype".into())
        );
        assert_eq!(
            classify_error("MOVED x"),
            Refusal::Failed("redis_bad_redirect".into())
        );
        let from: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(
            redirect_addr(":7002", from, false),
            Some("127.0.0.1:7002".parse().unwrap())
        );
        assert_eq!(redirect_addr("10.1.1.1:7002", from, false), None);
    }

    #[test]
    fn commands_are_resp_arrays() {
        let mut buf = Vec::new();
        encode_command(&mut buf, &[b"SPUBLISH", b"gw:room:a", b"{}"]);
        assert_eq!(
            buf,
            b"*3\r\n$8\r\nSPUBLISH\r\n$9\r\ngw:room:a\r\n$2\r\n{}\r\n"
        );
    }
}
