//! What a session talks through: the one seam between the session's core
//! (hub registration, joins and resume, outbox, timer, drain, expiry) and a
//! transport. A WebSocket is one [`Wire`]; an SSE stream (`sse.rs`) is the
//! other, so both transports share every rule about what is sent and when,
//! and differ only in how a frame is put on the wire.
//!
//! The methods mirror the subset of `Stream + Sink<Message>` the session
//! uses, so the WebSocket implementation is a straight delegation (the same
//! futures, no extra state per socket).

use std::future::Future;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A transport a session runs over.
pub trait Wire: Send {
    /// Whether the client sends frames of its own. A WebSocket client does
    /// (and answers pings, so its silence means it is gone); an SSE client
    /// never does: its only inbound frames are the subscribes its URL asked
    /// for, which neither count against the message rate nor prove liveness.
    const CLIENT_SPEAKS: bool;

    /// The next inbound frame; `None` once the client is gone.
    fn next_message(&mut self) -> impl Future<Output = Option<Result<Message, WsError>>> + Send;

    /// Buffers one outbound frame (written by [`flush_messages`](Self::flush_messages)).
    fn feed_message(
        &mut self,
        message: Message,
    ) -> impl Future<Output = Result<(), WsError>> + Send;

    /// Writes what was fed.
    fn flush_messages(&mut self) -> impl Future<Output = Result<(), WsError>> + Send;

    /// Tells the client the session ends, with the WebSocket close code the
    /// contract gives the reason.
    fn close_with(&mut self, frame: CloseFrame)
    -> impl Future<Output = Result<(), WsError>> + Send;
}

impl<S> Wire for WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    const CLIENT_SPEAKS: bool = true;

    fn next_message(&mut self) -> impl Future<Output = Option<Result<Message, WsError>>> + Send {
        self.next()
    }

    fn feed_message(
        &mut self,
        message: Message,
    ) -> impl Future<Output = Result<(), WsError>> + Send {
        self.feed(message)
    }

    fn flush_messages(&mut self) -> impl Future<Output = Result<(), WsError>> + Send {
        SinkExt::flush(self)
    }

    fn close_with(
        &mut self,
        frame: CloseFrame,
    ) -> impl Future<Output = Result<(), WsError>> + Send {
        self.close(Some(frame))
    }
}
