//! The SSE writer (contract section 9): a [`Wire`] that turns the session's
//! frames into `text/event-stream` text, and the response body hyper streams
//! it through. The session (joins, resume, outbox, heartbeat, expiry, drain)
//! is the WebSocket's; only the writing differs.
//!
//! - Every frame is a default SSE message, `data: <the JSON frame>`; a ping
//!   is the comment `: ping`; a close is the frame `{"type":"close","code":N}`,
//!   after which the stream ends.
//! - The stream's rooms are joined by handing the session one `subscribe`
//!   per room of the URL (with the room as its `id`), so they take the path a
//!   WebSocket subscribe takes (grants, limits, resume, presence). Their
//!   replies come back with `id` replaced by `room`: `ok` (position, resume
//!   outcome) or `error` (`forbidden`, ...).
//! - Each frame that moves a channel's position (`welcome`, a room's `ok`,
//!   an event with an offset, `resync`) carries `id: <cursor>` (see
//!   `protocol/cursor.rs`), the positions of every channel so far.
//!
//! Between the writer and hyper sits a one-chunk slot: a flush waits until
//! hyper has taken the previous chunk, so a client that stops reading
//! blocks the flush (the session's write timeout and slow-consumer rules
//! apply), and an idle stream holds no buffer. The body's drop (the client
//! went away) ends the session like a closed WebSocket.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame};
use prometheus::IntGauge;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Wire;
use crate::protocol::{Channel, Cursor, Format, RoomName, ServerFrame, Since, encode_server_frame};

/// How every event frame begins (`protocol/event.rs` writes it so).
const EVENT_PREFIX: &[u8] = br#"{"type":"event","channel":"#;

#[derive(Default)]
struct Slot {
    /// A chunk hyper has not taken yet.
    chunk: Option<Bytes>,
    /// The writer is done: the body ends once `chunk` is taken.
    ended: bool,
    /// The body was dropped: the client is gone (or hyper gave up on it).
    gone: bool,
}

/// The one-chunk hand-off between the session and hyper.
#[derive(Default)]
struct Pipe {
    // A plain mutex: held for a take or a put, never across an await.
    slot: Mutex<Slot>,
    /// The body's task (hyper's connection), waiting for a chunk.
    body: AtomicWaker,
    /// The session, waiting for room in the slot or for the client to go.
    writer: AtomicWaker,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // Every mutation is a single assignment: poisoning leaves it consistent.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end(&self) {
        self.lock().ended = true;
        self.body.wake();
    }
}

/// The response body of `GET /sse`.
pub struct SseBody {
    pipe: Arc<Pipe>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let pipe = &self.pipe;
        for attempt in 0..2 {
            let mut slot = pipe.lock();
            if let Some(chunk) = slot.chunk.take() {
                drop(slot);
                pipe.writer.wake();
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if slot.ended {
                return Poll::Ready(None);
            }
            drop(slot);
            if attempt == 0 {
                // Registered, then checked again: a put in between is not lost.
                pipe.body.register(cx.waker());
            }
        }
        Poll::Pending
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.pipe.lock().gone = true;
        self.pipe.writer.wake();
    }
}

/// One SSE stream, as the session writes it.
pub struct SseWire {
    pipe: Arc<Pipe>,
    /// The URL's rooms not yet handed to the session, last first.
    subscribes: Vec<(RoomName, Option<Since>)>,
    /// Frames fed since the last flush; empty (unallocated) while idle.
    buf: Vec<u8>,
    /// Where every channel of the stream stands.
    cursor: Cursor,
    user: Channel,
    closed: bool,
    streams_open: IntGauge,
}

impl SseWire {
    /// A stream of `user`'s channel, `broadcast` and `rooms` (each resuming
    /// from its `Since`, if any), and the body that carries it.
    ///
    /// `resumed` holds the positions the stream resumes from; the cursor
    /// starts there, so that until a resumed channel's replay has been
    /// written the stream's ids still point before it (see `own_position`).
    pub fn new(
        user: Channel,
        rooms: Vec<(RoomName, Option<Since>)>,
        resumed: Cursor,
        streams_open: IntGauge,
    ) -> (SseWire, SseBody) {
        let pipe = Arc::new(Pipe::default());
        let mut subscribes = rooms;
        subscribes.reverse();
        streams_open.inc();
        let wire = SseWire {
            pipe: pipe.clone(),
            subscribes,
            buf: Vec::new(),
            cursor: resumed,
            user,
            closed: false,
            streams_open,
        };
        (wire, SseBody { pipe })
    }

    /// The `subscribe` frame the session handles for one of the URL's rooms.
    fn subscribe_frame(room: &RoomName, since: Option<Since>) -> Message {
        let mut frame = serde_json::json!({
            "type": "subscribe",
            "room": room.as_str(),
            "id": room.as_str(),
        });
        if let Some(since) = since {
            frame["since"] = serde_json::json!({ "offset": since.offset, "epoch": since.epoch });
        }
        Message::text(frame.to_string())
    }

    /// Appends one frame as an SSE message, with the cursor when the frame
    /// moved it.
    fn write_frame(&mut self, text: &str) {
        let (moved, rewritten) = if text.as_bytes().starts_with(EVENT_PREFIX) {
            (self.on_event(&text.as_bytes()[EVENT_PREFIX.len()..]), None)
        } else {
            self.on_own_frame(text)
        };
        if moved && !self.cursor.is_empty() {
            self.buf.extend_from_slice(b"id: ");
            self.buf.extend_from_slice(self.cursor.encode().as_bytes());
            self.buf.push(b'\n');
        }
        self.buf.extend_from_slice(b"data: ");
        let start = self.buf.len();
        self.buf
            .extend_from_slice(rewritten.as_deref().unwrap_or(text).as_bytes());
        // A backend's JSON may hold CR or LF as whitespace between tokens
        // (inside strings they are always escaped): as spaces they mean the
        // same JSON and cannot end the SSE line.
        for b in &mut self.buf[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        self.buf.extend_from_slice(b"\n\n");
    }

    /// An event frame (after its prefix): moves its channel's offset.
    fn on_event(&mut self, rest: &[u8]) -> bool {
        // The channel is a JSON string: find its closing quote.
        let mut end = None;
        let mut escaped = false;
        for (i, &b) in rest.iter().enumerate().skip(1) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    end = Some(i + 1);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { return false };
        let Some(channel) = serde_json::from_slice::<String>(&rest[..end])
            .ok()
            .and_then(|name| Channel::parse(&name))
        else {
            return false;
        };
        let Some(digits) = rest[end..].strip_prefix(br#","offset":"#) else {
            return false;
        };
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        let Some(offset) = std::str::from_utf8(&digits[..len])
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
        else {
            return false;
        };
        self.cursor.advance(&channel, offset)
    }

    /// A frame of the session's own (small, rare): records the positions it
    /// carries and names the room of a reply to one of the URL's subscribes.
    fn on_own_frame(&mut self, text: &str) -> (bool, Option<String>) {
        let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(text) else {
            return (false, None);
        };
        let kind = frame
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "welcome" => {
                let user = self.user.clone();
                self.own_position(&user, &frame, "position", "recovered");
                self.own_position(
                    &Channel::Broadcast,
                    &frame,
                    "broadcast_position",
                    "broadcast_recovered",
                );
                (true, None)
            }
            "resync" => {
                let channel = frame
                    .get("channel")
                    .and_then(Value::as_str)
                    .and_then(Channel::parse);
                match (channel, frame.get("offset").and_then(Value::as_u64)) {
                    (Some(channel), Some(offset)) => {
                        let epoch = frame.get("epoch").and_then(Value::as_str).unwrap_or("");
                        self.cursor.set(&channel, offset, epoch);
                        (true, None)
                    }
                    _ => (false, None),
                }
            }
            "ok" | "error" => {
                // Only the URL's subscribes have ids (an SSE client sends no frames).
                let Some(Value::String(room)) = frame.remove("id") else {
                    return (false, None);
                };
                let moved = kind == "ok";
                if moved && let Some(name) = RoomName::parse(&room) {
                    self.own_position(&Channel::Room(name), &frame, "", "recovered");
                }
                // `type` first, then `room`, then the rest as the session wrote it.
                frame.remove("type");
                let mut out = format!(
                    r#"{{"type":{},"room":{}"#,
                    Value::from(kind),
                    Value::from(room)
                );
                for (key, value) in frame {
                    out.push_str(&format!(",{}:{value}", Value::from(key)));
                }
                out.push('}');
                (moved, Some(out))
            }
            _ => (false, None),
        }
    }

    /// Records the position a `welcome` (`key` its position's field) or a
    /// room's `ok` (`key` empty: the frame itself) gives `channel`. A resume
    /// that recovered keeps the position resumed from: the replay is still
    /// to come, and each of its events moves the cursor; taking the
    /// channel's top here would let a client that drops mid-replay skip the
    /// rest of it. Otherwise (nothing replayed) the top is where it stands.
    fn own_position(
        &mut self,
        channel: &Channel,
        frame: &Map<String, Value>,
        key: &str,
        recovered: &str,
    ) {
        if frame.get(recovered).and_then(Value::as_bool) == Some(true)
            && self.cursor.get(channel).is_some()
        {
            return;
        }
        let p = if key.is_empty() {
            Some(frame)
        } else {
            frame.get(key).and_then(Value::as_object)
        };
        if let Some(p) = p
            && let (Some(offset), Some(epoch)) = (
                p.get("offset").and_then(Value::as_u64),
                p.get("epoch").and_then(Value::as_str),
            )
        {
            self.cursor.set(channel, offset, epoch);
        }
    }

    /// Waits until hyper has taken the previous chunk, then hands it `chunk`.
    async fn send(&self, chunk: Bytes) -> Result<(), WsError> {
        let mut chunk = Some(chunk);
        std::future::poll_fn(|cx| {
            for attempt in 0..2 {
                let mut slot = self.pipe.lock();
                if slot.gone {
                    return Poll::Ready(Err(WsError::ConnectionClosed));
                }
                if slot.chunk.is_none() {
                    slot.chunk = chunk.take();
                    drop(slot);
                    self.pipe.body.wake();
                    return Poll::Ready(Ok(()));
                }
                drop(slot);
                if attempt == 0 {
                    self.pipe.writer.register(cx.waker());
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Resolves once the client is gone (or the stream ended).
    async fn gone(&self) {
        std::future::poll_fn(|cx| {
            for attempt in 0..2 {
                let slot = self.pipe.lock();
                if slot.gone || slot.ended {
                    return Poll::Ready(());
                }
                drop(slot);
                if attempt == 0 {
                    self.pipe.writer.register(cx.waker());
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for SseWire {
    fn drop(&mut self) {
        self.pipe.end();
        self.streams_open.dec();
    }
}

impl Wire for SseWire {
    const CLIENT_SPEAKS: bool = false;

    async fn next_message(&mut self) -> Option<Result<Message, WsError>> {
        if !self.closed
            && let Some((room, since)) = self.subscribes.pop()
        {
            if self.subscribes.is_empty() {
                self.subscribes = Vec::new();
            }
            return Some(Ok(Self::subscribe_frame(&room, since)));
        }
        self.gone().await;
        None
    }

    async fn feed_message(&mut self, message: Message) -> Result<(), WsError> {
        if self.closed {
            return Err(WsError::AlreadyClosed);
        }
        match message {
            Message::Text(text) => self.write_frame(text.as_str()),
            Message::Ping(_) => self.buf.extend_from_slice(b": ping\n\n"),
            // JSON only: no MessagePack, pongs or raw frames on this transport.
            Message::Binary(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
        }
        Ok(())
    }

    async fn flush_messages(&mut self) -> Result<(), WsError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.send(chunk).await
    }

    async fn close_with(&mut self, frame: CloseFrame) -> Result<(), WsError> {
        if self.closed {
            return Err(WsError::AlreadyClosed);
        }
        let close = ServerFrame::Close {
            code: u16::from(frame.code),
        };
        if let Message::Text(text) = encode_server_frame(Format::Json, &close) {
            self.write_frame(text.as_str());
        }
        let flushed = self.flush_messages().await;
        self.closed = true;
        self.subscribes = Vec::new();
        self.pipe.end();
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(user: &str) -> (SseWire, SseBody) {
        let gauge = IntGauge::new("sse_test", "test").unwrap();
        SseWire::new(
            Channel::User(Arc::from(user)),
            Vec::new(),
            Cursor::default(),
            gauge,
        )
    }

    fn written(w: &mut SseWire) -> String {
        String::from_utf8(std::mem::take(&mut w.buf)).unwrap()
    }

    #[test]
    fn frames_become_one_data_line_and_move_the_cursor() {
        let (mut w, _body) = wire("a\"b");
        w.write_frame(r#"{"type":"welcome","position":{"offset":2,"epoch":"e1"}}"#);
        let first = written(&mut w);
        assert!(
            first.starts_with("id: ") && first.ends_with("\n\n"),
            "{first:?}"
        );
        // A backend's JSON with CR/LF between tokens; a user id that JSON escapes.
        w.write_frame(
            "{\"type\":\"event\",\"channel\":\"user:a\\\"b\",\"offset\":3,\"data\":{\"x\":\r\n1}}",
        );
        let event = written(&mut w);
        let lines: Vec<&str> = event.trim_end().lines().collect();
        assert_eq!(lines.len(), 2, "{event:?}");
        assert_eq!(
            lines[1],
            "data: {\"type\":\"event\",\"channel\":\"user:a\\\"b\",\"offset\":3,\"data\":{\"x\":  1}}"
        );
        let user = Channel::User(Arc::from("a\"b"));
        assert_eq!(w.cursor.get(&user).map(|s| s.offset), Some(3));
        assert_eq!(Cursor::parse(&lines[0]["id: ".len()..]).unwrap(), w.cursor);
        // An event of a channel the cursor does not hold, or without an
        // offset, moves nothing and carries no id.
        w.write_frame(r#"{"type":"event","channel":"room:x","offset":9,"data":1}"#);
        w.write_frame(r#"{"type":"event","channel":"broadcast","data":1}"#);
        assert!(!written(&mut w).contains("id:"));
    }

    #[test]
    fn room_replies_name_their_room_in_place_of_the_id() {
        let (mut w, _body) = wire("u");
        w.write_frame(r#"{"type":"ok","id":"lobby","offset":5,"epoch":"e","recovered":false}"#);
        let out = written(&mut w);
        assert!(
            out.ends_with("data: {\"type\":\"ok\",\"room\":\"lobby\",\"epoch\":\"e\",\"offset\":5,\"recovered\":false}\n\n"),
            "{out:?}"
        );
        let lobby = Channel::Room(RoomName::parse("lobby").unwrap());
        assert_eq!(w.cursor.get(&lobby).map(|s| s.offset), Some(5));
        w.write_frame(r#"{"type":"error","id":"secret","code":"forbidden","message":"no"}"#);
        assert_eq!(
            written(&mut w),
            "data: {\"type\":\"error\",\"room\":\"secret\",\"code\":\"forbidden\",\"message\":\"no\"}\n\n"
        );
        // Not JSON, or no id: passed through untouched.
        w.write_frame(r#"{"type":"error","code":"x","message":"m"}"#);
        assert_eq!(
            written(&mut w),
            "data: {\"type\":\"error\",\"code\":\"x\",\"message\":\"m\"}\n\n"
        );
    }
}
