//! Redis publish lanes over RESP2: `CLUSTER SLOTS` once, then `SPUBLISH`
//! (CRC16 slot-routed, one lane per master) or `PUBLISH`, in pipelined
//! batches. Hand-rolled rather than a Redis crate for exact per-event failure
//! accounting and our own batching with three commands; a `MOVED` (slots
//! migrating mid-run) counts as a failed publish, not followed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::{Due, LaneResult, PublishError, Seqs};
use crate::protocol::Payload;
use crate::safety;
use crate::scenario::RedisMode;

/// Most events written in one batch.
const BATCH: usize = 512;
/// How long one batch's replies may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

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

async fn connect(
    addr: SocketAddr,
) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), PublishError> {
    let stream = TcpStream::connect(addr)
        .await
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

/// Finds each channel's master. Returns the distinct masters and, per
/// channel, the index of its master. A Redis without cluster support gets
/// everything sent to the first seed.
pub(crate) async fn route_channels(
    seeds: &[SocketAddr],
    prefix: &str,
    channels: &[String],
    allow_remote: bool,
) -> Result<(Vec<SocketAddr>, Vec<usize>), PublishError> {
    let mut last_err = None;
    for &seed in seeds {
        let (mut r, mut w) = match connect(seed).await {
            Ok(c) => c,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
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
                return Ok((vec![seed], vec![0; channels.len()]));
            }
            return Err(PublishError::Redis(format!("{seed}: {e}")));
        }
        let ranges = parse_cluster_slots(&reply, seed, allow_remote)?;
        let mut nodes: Vec<SocketAddr> = Vec::new();
        let mut slot_node = vec![usize::MAX; 16384];
        for (a, b, addr) in ranges {
            let i = nodes.iter().position(|n| *n == addr).unwrap_or_else(|| {
                nodes.push(addr);
                nodes.len() - 1
            });
            for s in a..=b.min(16383) {
                slot_node[s as usize] = i;
            }
        }
        let mut route = Vec::with_capacity(channels.len());
        for ch in channels {
            let slot = key_slot(format!("{prefix}{ch}").as_bytes());
            let node = slot_node[slot as usize];
            if node == usize::MAX {
                return Err(PublishError::Redis(format!(
                    "slot {slot} (channel {prefix}{ch}) has no master"
                )));
            }
            route.push(node);
        }
        return Ok((nodes, route));
    }
    Err(last_err.unwrap_or_else(|| PublishError::Redis("no Redis address".into())))
}

/// One connection to one Redis node.
pub(crate) struct RedisLane {
    addr: SocketAddr,
    command: &'static [u8],
    prefix: String,
    conn: Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>,
}

impl RedisLane {
    pub(crate) async fn connect(
        addr: SocketAddr,
        mode: RedisMode,
        prefix: &str,
    ) -> Result<RedisLane, PublishError> {
        let conn = connect(addr).await?;
        let command: &'static [u8] = match mode {
            RedisMode::Sharded => b"SPUBLISH",
            RedisMode::Classic => b"PUBLISH",
        };
        Ok(RedisLane {
            addr,
            command,
            prefix: prefix.to_owned(),
            conn: Some(conn),
        })
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
        let mut batch: Vec<(usize, u64)> = Vec::with_capacity(BATCH);
        let mut buf = Vec::with_capacity(BATCH * 128);
        while let Some(first) = rx.recv().await {
            batch.clear();
            buf.clear();
            let mut due = Some(first);
            while let Some(d) = due {
                let seq = seqs.next(d.channel);
                let payload = Payload {
                    ts: crate::now_micros(),
                    seq,
                    publisher: id,
                    step: d.step,
                }
                .to_json(pad);
                encode_command(
                    &mut buf,
                    &[self.command, &keys[d.channel], payload.as_bytes()],
                );
                batch.push((d.channel, seq));
                due = if batch.len() < BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            let fail_all =
                |seqs: &mut Seqs, out: &mut LaneResult, batch: &[(usize, u64)], kind: &str| {
                    for &(c, s) in batch {
                        seqs.failed(c, s);
                    }
                    out.failed += batch.len() as u64;
                    *out.errors.entry(kind.to_owned()).or_default() += batch.len() as u64;
                };
            if self.conn.is_none() {
                self.conn = connect(self.addr).await.ok();
            }
            let Some((r, w)) = self.conn.as_mut() else {
                fail_all(&mut seqs, &mut out, &batch, "redis_connect");
                continue;
            };
            if w.write_all(&buf).await.is_err() {
                self.conn = None;
                fail_all(&mut seqs, &mut out, &batch, "redis_io");
                continue;
            }
            for (i, &(c, s)) in batch.iter().enumerate() {
                match tokio::time::timeout(REPLY_TIMEOUT, read_resp(r)).await {
                    Ok(Ok(Resp::Int(_))) => out.sent += 1,
                    Ok(Ok(Resp::Error(e))) => {
                        seqs.failed(c, s);
                        out.failed += 1;
                        let kind = e
                            .split_whitespace()
                            .next()
                            .unwrap_or("ERR")
                            .to_ascii_lowercase();
                        *out.errors.entry(format!("redis_{kind}")).or_default() += 1;
                    }
                    Ok(Ok(_)) => {
                        seqs.failed(c, s);
                        out.failed += 1;
                        *out.errors
                            .entry("redis_unexpected_reply".into())
                            .or_default() += 1;
                    }
                    Ok(Err(_)) | Err(_) => {
                        self.conn = None;
                        fail_all(&mut seqs, &mut out, &batch[i..], "redis_io");
                        break;
                    }
                }
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
    fn commands_are_resp_arrays() {
        let mut buf = Vec::new();
        encode_command(&mut buf, &[b"SPUBLISH", b"gw:room:a", b"{}"]);
        assert_eq!(
            buf,
            b"*3\r\n$8\r\nSPUBLISH\r\n$9\r\ngw:room:a\r\n$2\r\n{}\r\n"
        );
    }
}
