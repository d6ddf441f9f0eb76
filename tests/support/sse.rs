//! A raw SSE client for black-box tests: HTTP/1.1 over a TCP socket,
//! chunked decoding, the `text/event-stream` line format. Nothing hides a
//! byte the server sent.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::test_gateway::TestGateway;

/// One SSE message, or a comment.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A message: its `id:` (if it had one) and its `data:` as JSON.
    Message { id: Option<String>, data: Value },
    /// A comment line (`: ping`).
    Comment(String),
}

/// One open stream.
pub struct Sse {
    stream: TcpStream,
    /// Bytes read, not yet de-chunked.
    raw: Vec<u8>,
    /// The body, de-chunked, not yet parsed.
    text: Vec<u8>,
    ended: bool,
    pub headers: HashMap<String, String>,
    deadline: Duration,
}

/// Opens `path` (with `headers`): the stream, or the refusal's status and body.
pub async fn open(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Sse, (u16, Value)> {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(gw.deadline, stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response head");
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let raw = raw[end + 4..].to_vec();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if status != 200 {
        let len: usize = headers["content-length"].parse().unwrap();
        let mut body = raw;
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(headers["content-type"], "application/json");
        return Err((status, serde_json::from_slice(&body[..len]).unwrap()));
    }
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["transfer-encoding"], "chunked");
    Ok(Sse {
        stream,
        raw,
        text: Vec::new(),
        ended: false,
        headers,
        deadline: gw.deadline,
    })
}

/// `/sse?token=..&rooms=..` (and more query), which must be accepted.
pub async fn stream(gw: &TestGateway, query: &str, headers: &[(&str, &str)]) -> Sse {
    match open(gw, &format!("/sse?{query}"), headers).await {
        Ok(s) => s,
        Err(refusal) => panic!("stream refused: {refusal:?}"),
    }
}

impl Sse {
    /// The next item; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.parse_item() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            if !self.dechunk() {
                let mut chunk = [0u8; 8192];
                let n = tokio::time::timeout(self.deadline, self.stream.read(&mut chunk))
                    .await
                    .expect("stream item in time")
                    .unwrap_or(0);
                if n == 0 {
                    self.ended = true;
                }
                self.raw.extend_from_slice(&chunk[..n]);
            }
        }
    }

    /// Moves one whole chunk from `raw` to `text`; `false` if none is whole.
    fn dechunk(&mut self) -> bool {
        let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&self.raw[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            self.ended = true;
            self.raw.clear();
            return true;
        }
        let start = line + 2;
        if self.raw.len() < start + size + 2 {
            return false;
        }
        self.text.extend_from_slice(&self.raw[start..start + size]);
        assert_eq!(&self.raw[start + size..start + size + 2], b"\r\n");
        self.raw.drain(..start + size + 2);
        true
    }

    fn parse_item(&mut self) -> Option<Item> {
        let end = self.text.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8(self.text[..end].to_vec()).unwrap();
        self.text.drain(..end + 2);
        let (mut id, mut data, mut comment) = (None, Vec::new(), None);
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                comment = Some(c.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_owned());
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
        if data.is_empty() {
            return Some(Item::Comment(comment.expect("a comment or a message")));
        }
        assert!(comment.is_none(), "no comment inside a message: {block:?}");
        let data = serde_json::from_str(&data.join("\n")).expect("data is JSON");
        Some(Item::Message { id, data })
    }

    /// The next message (comments skipped): (id, frame).
    pub async fn message(&mut self) -> (Option<String>, Value) {
        loop {
            match self.next().await.expect("stream open") {
                Item::Message { id, data } => return (id, data),
                Item::Comment(_) => {}
            }
        }
    }

    /// The next frame.
    pub async fn frame(&mut self) -> Value {
        self.message().await.1
    }

    /// Reads the welcome and each room's reply (in the URL's order).
    pub async fn start(&mut self, rooms: &[&str]) -> (Value, Vec<Value>, Option<String>) {
        let (mut last_id, welcome) = self.message().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let mut replies = Vec::new();
        for room in rooms {
            let (id, reply) = self.message().await;
            assert_eq!(reply["room"], *room, "{reply}");
            last_id = id.or(last_id);
            replies.push(reply);
        }
        (welcome, replies, last_id)
    }
}
