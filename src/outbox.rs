//! The per-socket outbound queue: bounded in frames and in bytes. The hub
//! pushes without ever waiting; the socket's session drains it in batches.
//!
//! An overflow does not block or drop silently: it marks the socket as a slow
//! consumer and wakes the session, which closes it with 4008. An idle outbox
//! allocates nothing (an empty `VecDeque` and a `Notify`), which is what keeps
//! an idle socket cheap; a tokio mpsc would allocate its first block eagerly.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::Disconnect;

/// One queued frame.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame (shared bytes for events).
    pub message: Message,
    /// When the node received the publication, for the fan-out latency metric.
    pub received_at: Option<Instant>,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full: the socket is now marked as a slow consumer.
    Full,
    /// The socket is closing; the frame was not queued.
    Closed,
}

/// What the session should do after taking a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keep going.
    Open,
    /// Write what was taken, then close with this code.
    Close(Disconnect),
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    close: Option<Disconnect>,
}

/// A bounded queue of outbound frames for one socket.
#[derive(Debug)]
pub struct Outbox {
    // A plain mutex: held for a push or a swap, never across an await.
    state: Mutex<State>,
    wake: Notify,
    max_frames: u32,
    max_bytes: u32,
}

impl Outbox {
    /// An empty outbox with the given bounds.
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            max_frames: max_frames.min(u32::MAX as usize) as u32,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every mutation is a single push/take), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without waiting. On overflow the queue is discarded and
    /// the socket is marked for a 4008 close.
    pub fn push(&self, message: Message, received_at: Option<Instant>) -> Result<(), PushError> {
        let len = message.len();
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        if state.queue.len() >= self.max_frames as usize
            || state.bytes + len > self.max_bytes as usize
        {
            state.close = Some(Disconnect::SlowConsumer);
            state.queue = VecDeque::new();
            state.bytes = 0;
            drop(state);
            self.wake.notify_one();
            return Err(PushError::Full);
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(Outgoing {
            message,
            received_at,
        });
        state.bytes += len;
        drop(state);
        // One wake-up per batch: the session takes everything queued at once.
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Asks the session to close with `reason` once what is queued is written
    /// (a slow-consumer close, set by `push`, wins over later requests).
    pub fn close(&self, reason: Disconnect) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Waits until there is something to take (frames or a close request).
    pub async fn ready(&self) {
        self.wake.notified().await
    }

    /// Moves every queued frame into `batch` and reports whether to close.
    pub fn take(&self, batch: &mut VecDeque<Outgoing>) -> Status {
        let mut state = self.lock();
        if batch.is_empty() {
            std::mem::swap(batch, &mut state.queue);
        } else {
            batch.append(&mut state.queue);
        }
        state.bytes = 0;
        match state.close {
            Some(reason) => Status::Close(reason),
            None => Status::Open,
        }
    }

    /// The close already requested, if any.
    pub fn closing(&self) -> Option<Disconnect> {
        self.lock().close
    }

    /// Wakes the session again if anything arrived while it was not waiting
    /// (`push` only wakes on the empty -> non-empty edge).
    pub fn rearm(&self) {
        let state = self.lock();
        let pending = !state.queue.is_empty() || state.close.is_some();
        drop(state);
        if pending {
            self.wake.notify_one();
        }
    }

    /// Frames currently queued (for tests and introspection).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Message {
        Message::binary(vec![0u8; n])
    }

    #[test]
    fn bounded_in_frames() {
        let o = Outbox::new(2, 1000);
        assert!(o.push(msg(1), None).is_ok());
        assert!(o.push(msg(1), None).is_ok());
        assert_eq!(o.push(msg(1), None), Err(PushError::Full));
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch), Status::Close(Disconnect::SlowConsumer));
        assert!(batch.is_empty(), "a slow consumer's queue is discarded");
        assert_eq!(o.push(msg(1), None), Err(PushError::Closed));
    }

    #[test]
    fn bounded_in_bytes() {
        let o = Outbox::new(100, 10);
        assert!(o.push(msg(6), None).is_ok());
        assert_eq!(o.push(msg(6), None), Err(PushError::Full));
    }

    #[test]
    fn take_moves_everything_and_frees_the_budget() {
        let o = Outbox::new(2, 100);
        o.push(msg(1), None).unwrap();
        o.push(msg(1), None).unwrap();
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch), Status::Open);
        assert_eq!(batch.len(), 2);
        assert!(o.is_empty());
        o.push(msg(1), None).unwrap();
        o.push(msg(1), None).unwrap();
    }

    #[test]
    fn drain_close_keeps_queued_frames() {
        let o = Outbox::new(10, 100);
        o.push(msg(1), None).unwrap();
        o.close(Disconnect::Draining);
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch), Status::Close(Disconnect::Draining));
        assert_eq!(batch.len(), 1);
    }

    #[tokio::test]
    async fn push_wakes_the_session() {
        let o = std::sync::Arc::new(Outbox::new(10, 100));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.ready().await });
        o.push(msg(1), None).unwrap();
        waiter.await.unwrap();
    }
}
