//! A WebSocket test client that speaks the contract in either wire format:
//! JSON in text frames, or MessagePack in binary frames when the server chose
//! `v1.msgpack`. Frames go in and come out as `serde_json::Value`, so a test
//! reads the same whatever the format. Generic over the stream, so the nginx
//! test drives it over its own TLS connection. Every read is bounded by the
//! client's deadline, and a deadline passing fails the test.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::wait::DEADLINE;

/// The subprotocol that switches a socket to MessagePack.
pub const MSGPACK: &str = "v1.msgpack";

/// One test socket.
pub struct Client<S = MaybeTlsStream<TcpStream>> {
    /// The socket itself, for what the helpers do not cover (raw closes, ...).
    pub ws: WebSocketStream<S>,
    /// Whether frames are MessagePack (binary) rather than JSON (text).
    pub binary: bool,
    /// The subprotocol the server echoed, if any.
    pub protocol: Option<String>,
    /// Longest wait for a frame or a close before the test fails.
    pub deadline: Duration,
}

/// How a socket ended, seen from the client.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// A close frame with this code (1005 when it carried none).
    Closed(u16),
    /// The connection went away without a close frame.
    Dropped,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Wraps an upgraded socket; `protocol` is the subprotocol the server
    /// echoed (MessagePack when it is `v1.msgpack` or `v1.msgpack+batch`).
    pub fn new(ws: WebSocketStream<S>, protocol: Option<String>) -> Self {
        Client {
            ws,
            binary: protocol.as_deref().is_some_and(|p| p.starts_with(MSGPACK)),
            protocol,
            deadline: DEADLINE,
        }
    }

    /// The same client with another deadline per awaited frame.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sends `frame` in the socket's format.
    pub async fn send(&mut self, frame: Value) {
        let msg = if self.binary {
            Message::binary(rmp_serde::to_vec_named(&frame).unwrap())
        } else {
            Message::text(frame.to_string())
        };
        self.ws.send(msg).await.unwrap();
    }

    /// Sends a WebSocket message as is (malformed frames, wrong formats).
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next data frame; fails the test after the deadline.
    pub async fn recv(&mut self) -> Value {
        let limit = self.deadline;
        self.recv_within(limit).await.expect("frame in time")
    }

    /// The next data frame, or `None` once `limit` has passed. A text frame
    /// on a MessagePack socket (or the reverse) or a close fails the test.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?
                .expect("socket open")
                .expect("no socket error");
            match msg {
                Message::Text(t) => {
                    assert!(!self.binary, "text frame on a MessagePack socket");
                    return Some(serde_json::from_str(&t).unwrap());
                }
                Message::Binary(b) => {
                    assert!(self.binary, "binary frame on a JSON socket");
                    return Some(rmp_serde::from_slice(&b).unwrap());
                }
                Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Reads (and drops) frames until the server closes; how it ended.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(self.deadline, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => return Ended::Closed(frame.code.into()),
                Some(Ok(Message::Close(None))) => return Ended::Closed(1005),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    /// Reads data frames until the server closes; those frames and how it ended.
    pub async fn until_closed(&mut self) -> (Vec<Value>, Ended) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(self.deadline, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Binary(b))) => frames.push(rmp_serde::from_slice(&b).unwrap()),
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frames, Ended::Closed(frame.code.into()));
                }
                Some(Ok(Message::Close(None))) => return (frames, Ended::Closed(1005)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (frames, Ended::Dropped),
            }
        }
    }

    /// Asserts that the server closes the socket with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        assert_eq!(self.ended().await, Ended::Closed(code));
    }

    /// Subscribes to `room` and asserts the `ok`.
    pub async fn subscribe(&mut self, room: &str) {
        self.send(json!({"type": "subscribe", "room": room, "id": room}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply, json!({"type": "ok", "id": room}));
    }

    /// Unsubscribes from `room` and asserts the `ok`.
    pub async fn unsubscribe(&mut self, room: &str) {
        self.send(json!({"type": "unsubscribe", "room": room, "id": room}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply, json!({"type": "ok", "id": room}));
    }
}

/// An event frame as the contract shapes it.
pub fn event(channel: &str, data: Value) -> Value {
    json!({"type": "event", "channel": channel, "data": data})
}
