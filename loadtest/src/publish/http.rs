//! HTTP publish lane: one keep-alive connection to `POST /api/publish`,
//! pipelined (write every queued request, read the responses in order).
//! Hand-rolled because a client crate keeps one request in flight, which
//! capped one room at a few hundred events/s; a lane owns its channels, so
//! their order is the order of requests on its connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::{Due, LaneResult, PublishError, Seqs};
use crate::protocol::Payload;
use crate::safety::HttpBase;

/// Most requests written in one batch.
const BATCH: usize = 64;
/// How long one response may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read (the API answers `{"ok":true}` or an error).
const MAX_BODY: usize = 64 * 1024;

type Conn = (BufReader<OwnedReadHalf>, OwnedWriteHalf);

/// A connected HTTP lane.
pub(crate) struct HttpLane {
    base: HttpBase,
    auth: String,
    conn: Option<Conn>,
}

async fn open(base: &HttpBase) -> Result<Conn, PublishError> {
    let stream = TcpStream::connect(base.addr)
        .await
        .map_err(|source| PublishError::Connect {
            addr: base.addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    Ok((BufReader::new(r), w))
}

/// Appends one `POST /api/publish` request to `buf`.
pub fn encode_request(buf: &mut Vec<u8>, authority: &str, auth: &str, body: &str) {
    buf.extend_from_slice(
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: {authority}\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    buf.extend_from_slice(body.as_bytes());
}

/// One HTTP response: status, body, and whether the server will close.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
    /// The server said `Connection: close`.
    pub close: bool,
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

async fn line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut String,
) -> std::io::Result<()> {
    buf.clear();
    if r.read_line(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body).
pub async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Response> {
    let mut l = String::new();
    line(r, &mut l).await?;
    let status = l
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let (mut length, mut chunked, mut close) = (0usize, false, false);
    loop {
        line(r, &mut l).await?;
        let h = l.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = value.parse().map_err(|_| invalid("bad content-length"))?
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line(r, &mut l).await?;
            let size_text = l.trim_end().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text.trim(), 16)
                .map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    line(r, &mut l).await?;
                    if l.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(invalid("response body too large"));
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            r.read_exact(&mut body[start..]).await?;
            body.truncate(start + size);
        }
    } else {
        if length > MAX_BODY {
            return Err(invalid("response body too large"));
        }
        body.resize(length, 0);
        r.read_exact(&mut body).await?;
    }
    Ok(Response {
        status,
        body,
        close,
    })
}

/// The `offset` of a publish reply body, if it has one.
pub fn body_offset(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Accepted {
        offset: Option<u64>,
    }
    serde_json::from_slice::<Accepted>(body).ok()?.offset
}

impl HttpLane {
    pub(crate) async fn connect(base: &HttpBase, api_key: &str) -> Result<HttpLane, PublishError> {
        let conn = open(base).await?;
        Ok(HttpLane {
            base: base.clone(),
            auth: format!("Bearer {api_key}"),
            conn: Some(conn),
        })
    }

    /// Writes `bodies` as pipelined requests and reads their responses in
    /// order. Each outcome is a status code and the `offset` of the body (a
    /// v2 gateway's 202 `{"ok":true,"offset":58}`), or a failure kind for
    /// requests whose response never came.
    async fn post_batch(
        &mut self,
        bodies: &[String],
    ) -> Vec<Result<(u16, Option<u64>), &'static str>> {
        if self.conn.is_none() {
            match open(&self.base).await {
                Ok(c) => self.conn = Some(c),
                Err(_) => return vec![Err("http_connect"); bodies.len()],
            }
        }
        let Some((r, w)) = self.conn.as_mut() else {
            return vec![Err("http_connect"); bodies.len()];
        };
        let mut buf = Vec::with_capacity(bodies.iter().map(|b| b.len() + 160).sum());
        for b in bodies {
            encode_request(&mut buf, &self.base.authority, &self.auth, b);
        }
        if w.write_all(&buf).await.is_err() {
            self.conn = None;
            return vec![Err("http_io"); bodies.len()];
        }
        let mut out = Vec::with_capacity(bodies.len());
        for _ in bodies {
            match tokio::time::timeout(RESPONSE_TIMEOUT, read_response(r)).await {
                Ok(Ok(resp)) => {
                    out.push(Ok((resp.status, body_offset(&resp.body))));
                    if resp.close {
                        self.conn = None;
                        break;
                    }
                }
                Ok(Err(_)) => {
                    self.conn = None;
                    break;
                }
                Err(_) => {
                    self.conn = None;
                    out.push(Err("http_timeout"));
                    break;
                }
            }
        }
        out.resize(bodies.len(), Err("http_io"));
        out
    }

    /// Publishes to a room nobody joins, to prove address and key work.
    pub(crate) async fn preflight(&mut self) -> Result<(), PublishError> {
        let body = r#"{"channel":"room:lt-preflight","data":{"preflight":true}}"#;
        let Some((r, w)) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        encode_request(&mut buf, &self.base.authority, &self.auth, body);
        let io_err = |source| PublishError::Connect {
            addr: self.base.addr.to_string(),
            source,
        };
        w.write_all(&buf).await.map_err(io_err)?;
        let resp = tokio::time::timeout(RESPONSE_TIMEOUT, read_response(r))
            .await
            .map_err(|_| io_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io_err)?;
        if resp.close {
            self.conn = None;
        }
        if (200..300).contains(&resp.status) {
            Ok(())
        } else {
            Err(PublishError::Refused {
                status: resp.status,
                body: String::from_utf8_lossy(&resp.body).into_owned(),
            })
        }
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
        let mut batch: Vec<(usize, u64)> = Vec::with_capacity(BATCH);
        let mut bodies: Vec<String> = Vec::with_capacity(BATCH);
        while let Some(first) = rx.recv().await {
            batch.clear();
            bodies.clear();
            let mut due = Some(first);
            while let Some(d) = due {
                let seq = seqs.next(d.channel);
                let payload = Payload {
                    ts: crate::now_micros(),
                    seq,
                    publisher: id,
                    step: d.step,
                };
                bodies.push(format!(
                    r#"{{"channel":"{}","data":{}}}"#,
                    channels[d.channel],
                    payload.to_json(pad)
                ));
                batch.push((d.channel, seq));
                due = if batch.len() < BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            for (&(c, s), outcome) in batch.iter().zip(self.post_batch(&bodies).await) {
                match outcome {
                    Ok((status, offset)) if (200..300).contains(&status) => {
                        out.sent += 1;
                        if let Some(o) = offset.filter(|&o| o > 0) {
                            seqs.offset(c, o);
                            out.offsets += 1;
                        }
                    }
                    other => {
                        seqs.failed(c, s);
                        out.failed += 1;
                        let kind = match other {
                            Ok((status, _)) => format!("http_{status}"),
                            Err(kind) => kind.to_owned(),
                        };
                        *out.errors.entry(kind).or_default() += 1;
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

    #[tokio::test]
    async fn reads_pipelined_length_and_chunked_responses() {
        let wire = b"HTTP/1.1 202 Accepted\r\ncontent-length: 11\r\ncontent-type: application/json\r\n\r\n{\"ok\":true}\
HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let mut r = BufReader::new(&wire[..]);
        let a = read_response(&mut r).await.unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), a.close),
            (202, &b"{\"ok\":true}"[..], false)
        );
        let b = read_response(&mut r).await.unwrap();
        assert_eq!((b.status, b.body.as_slice()), (401, &b"hello world"[..]));
        let c = read_response(&mut r).await.unwrap();
        assert_eq!((c.status, c.body.len(), c.close), (503, 0, true));
        assert!(read_response(&mut r).await.is_err());
    }

    #[test]
    fn replies_may_carry_the_offset() {
        assert_eq!(body_offset(br#"{"ok":true,"offset":58}"#), Some(58));
        assert_eq!(body_offset(br#"{"ok":true}"#), None);
        assert_eq!(body_offset(b"not json"), None);
    }

    #[test]
    fn requests_carry_length_host_and_key() {
        let mut buf = Vec::new();
        encode_request(&mut buf, "127.0.0.1:8080", "Bearer k", "{}");
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(
            text.contains("Authorization: Bearer k\r\n")
                && text.ends_with("Content-Length: 2\r\n\r\n{}")
        );
    }
}
