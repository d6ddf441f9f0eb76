//! The per-socket outbound queue, and the socket's only write path: events
//! from the hub, replies, pings and resumed history all pass through it, in
//! one order, so write timeouts, byte metrics and slow-consumer handling are
//! coded once. The hub pushes without ever waiting; the socket's session
//! drains it in batches.
//!
//! Bounded in frames and in bytes: an overflow does not block or drop
//! silently, it marks the socket as a slow consumer and wakes the session,
//! which closes it with 4008. Replayed history is the one exception (the
//! contract paces a replay to the socket rather than to the queue's limit),
//! so it is queued uncounted. An idle outbox allocates nothing (an empty
//! `VecDeque` and a [`Wake`]), which is what keeps an idle socket cheap.
//!
//! A *hold* parks one channel's events while the session resumes it: they
//! wait beside the queue until `release` puts the reply, the replay and then
//! the held events (minus those the replay already covered) into the queue in
//! one step, so nothing of that channel can overtake the replay. The replay
//! may also cover events fan-out has not delivered yet (the history read ran
//! ahead of the node's pump): after the release the channel keeps a *floor*,
//! and its events at or below it are dropped until a newer one passes.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::{Channel, Disconnect};

/// One queued frame.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame (shared bytes for events).
    pub message: Message,
    /// When the node received the publication, for the fan-out latency metric.
    pub received_at: Option<Instant>,
    /// Whether the frame counts against the queue's bounds (replays do not).
    counted: bool,
}

impl Outgoing {
    /// A frame that counts against the bounds.
    pub fn new(message: Message, received_at: Option<Instant>) -> Outgoing {
        Outgoing {
            message,
            received_at,
            counted: true,
        }
    }
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

/// Events of one channel parked while the session resumes it.
#[derive(Debug)]
struct Hold {
    channel: Channel,
    frames: VecDeque<(Outgoing, Option<u64>)>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outgoing>,
    /// Frames and bytes that count against the bounds (queue and holds).
    frames: u32,
    bytes: u32,
    close: Option<Disconnect>,
    /// `None` except while a channel is being resumed and shortly after:
    /// boxed, so an idle socket's outbox carries one pointer for it.
    resuming: Option<Box<Resuming>>,
}

/// Holds and floors of channels being resumed.
#[derive(Debug, Default)]
struct Resuming {
    holds: Vec<Hold>,
    /// After a resume, per channel, the offset up to which its events are
    /// covered by the replay (duplicates), until a newer one passes.
    floors: Vec<(Channel, u64)>,
}

impl State {
    fn resuming(&mut self) -> &mut Resuming {
        self.resuming.get_or_insert_with(Box::default)
    }

    /// Drops the resume state once nothing is held and no floor is kept.
    fn tidy(&mut self) {
        if self
            .resuming
            .as_ref()
            .is_some_and(|r| r.holds.is_empty() && r.floors.is_empty())
        {
            self.resuming = None;
        }
    }
}

/// The session's wake-up: a flag and the one waker of the one task that
/// waits (the socket's session). Smaller than a `Notify` in the outbox and
/// in the session's waiting future (no intrusive waiter node), and a signal
/// is an atomic swap and a wake, with no lock. A signal while nobody waits
/// is kept for the next wait, like a `Notify` permit.
#[derive(Debug, Default)]
struct Wake {
    signaled: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    fn signal(&self) {
        self.signaled.store(true, Ordering::Release);
        self.waker.wake();
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.signaled.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A signal between the check and the registration is not lost.
            if self.signaled.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A bounded queue of outbound frames for one socket.
#[derive(Debug)]
pub struct Outbox {
    // A plain mutex: held for a push or a swap, never across an await.
    state: Mutex<State>,
    wake: Wake,
    max_frames: u32,
    max_bytes: u32,
}

impl Outbox {
    /// An empty outbox with the given bounds.
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Wake::default(),
            max_frames: max_frames.min(u32::MAX as usize) as u32,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every mutation is a single push/take), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a reply, ping or other frame of the socket's own.
    pub fn push(&self, message: Message) -> Result<(), PushError> {
        self.push_to(None, Outgoing::new(message, None), None)
    }

    /// Queues an event of `channel` (with its offset, when it has one)
    /// without waiting; parked instead if the channel is held.
    pub fn push_event(
        &self,
        channel: &Channel,
        message: Message,
        offset: Option<u64>,
        received_at: Instant,
    ) -> Result<(), PushError> {
        self.push_to(
            Some(channel),
            Outgoing::new(message, Some(received_at)),
            offset,
        )
    }

    fn push_to(
        &self,
        channel: Option<&Channel>,
        out: Outgoing,
        offset: Option<u64>,
    ) -> Result<(), PushError> {
        let len = out.message.len();
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        if state.frames >= self.max_frames || state.bytes as usize + len > self.max_bytes as usize {
            state.close = Some(Disconnect::SlowConsumer);
            state.queue = VecDeque::new();
            state.resuming = None;
            state.frames = 0;
            state.bytes = 0;
            drop(state);
            self.wake.signal();
            return Err(PushError::Full);
        }
        if let Some(channel) = channel
            && let Some(resuming) = state.resuming.as_mut()
        {
            if let Some(hold) = resuming.holds.iter_mut().find(|h| h.channel == *channel) {
                hold.frames.push_back((out, offset));
                state.frames += 1;
                state.bytes += len as u32;
                return Ok(());
            }
            if let Some(o) = offset
                && let Some(i) = resuming.floors.iter().position(|(c, _)| c == channel)
            {
                // Covered by the replay already queued: a duplicate.
                if o <= resuming.floors[i].1 {
                    return Ok(());
                }
                // Newer than the replay: the floor is passed for good.
                resuming.floors.swap_remove(i);
                state.tidy();
            }
        }
        state.frames += 1;
        state.bytes += len as u32;
        let was_empty = state.queue.is_empty();
        state.queue.push_back(out);
        drop(state);
        // One wake-up per batch: the session takes everything queued at once.
        if was_empty {
            self.wake.signal();
        }
        Ok(())
    }

    /// Parks `channel`'s events from now on, until [`release`](Self::release).
    pub fn hold(&self, channel: &Channel) {
        let mut state = self.lock();
        let resuming = state.resuming();
        resuming.floors.retain(|(c, _)| c != channel);
        if !resuming.holds.iter().any(|h| h.channel == *channel) {
            resuming.holds.push(Hold {
                channel: channel.clone(),
                frames: VecDeque::new(),
            });
        }
    }

    /// Ends the hold on `channel`: queues `front` (the reply and any replayed
    /// history, uncounted), then the parked events whose offset is above
    /// `after` (all of them without an offset, or when `after` is `None`);
    /// later events at or below `after` are dropped as duplicates.
    pub fn release(&self, channel: &Channel, front: Vec<Message>, after: Option<u64>) {
        let mut state = self.lock();
        let held = state
            .resuming
            .as_mut()
            .and_then(|r| {
                let i = r.holds.iter().position(|h| h.channel == *channel)?;
                Some(r.holds.swap_remove(i).frames)
            })
            .unwrap_or_default();
        if state.close.is_some() {
            state.tidy();
            return;
        }
        state
            .queue
            .extend(front.into_iter().map(|message| Outgoing {
                message,
                received_at: None,
                counted: false,
            }));
        let mut passed = false;
        for (out, offset) in held {
            let covered = matches!((after, offset), (Some(a), Some(o)) if o <= a);
            if covered {
                state.frames -= 1;
                state.bytes -= out.message.len() as u32;
            } else {
                passed |= offset.is_some();
                state.queue.push_back(out);
            }
        }
        // Unless a held event newer than the replay already passed it.
        if let Some(after) = after
            && !passed
        {
            let floors = &mut state.resuming().floors;
            floors.push((channel.clone(), after));
            floors.shrink_to_fit();
        }
        state.tidy();
        let pending = !state.queue.is_empty();
        drop(state);
        if pending {
            self.wake.signal();
        }
    }

    /// Forgets every floor. The replay's read runs ahead of fan-out by at
    /// most the pump's lag, never by a heartbeat period, so a floor that
    /// old covers nothing still to come (and were it to, the cost would be
    /// a duplicate with its offset, never a loss). Called at each heartbeat,
    /// so an idle socket keeps none.
    pub fn forget_floors(&self) {
        let mut state = self.lock();
        if let Some(r) = state.resuming.as_mut() {
            r.floors = Vec::new();
            state.tidy();
        }
    }

    /// Asks the session to close with `reason` once what is queued is written
    /// (a slow-consumer close, set by `push`, wins over later requests).
    pub fn close(&self, reason: Disconnect) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        drop(state);
        self.wake.signal();
    }

    /// Waits until there is something to take (frames or a close request).
    pub async fn ready(&self) {
        self.wake.wait().await
    }

    /// Moves up to `max` queued frames into `batch` and reports whether to
    /// close (only once nothing is left to write, so queued frames go first).
    /// Taking everything into an empty `batch` swaps the buffers, so the
    /// queue is left with `batch`'s (none, for a fresh one): an idle socket's
    /// queue holds no buffer.
    pub fn take(&self, batch: &mut VecDeque<Outgoing>, max: usize) -> Status {
        let mut state = self.lock();
        if state.close == Some(Disconnect::SlowConsumer) {
            return Status::Close(Disconnect::SlowConsumer);
        }
        if batch.is_empty() && state.queue.len() <= max {
            std::mem::swap(batch, &mut state.queue);
        } else {
            let n = state.queue.len().min(max);
            batch.extend(state.queue.drain(..n));
        }
        for out in batch.iter().filter(|o| o.counted) {
            state.frames -= 1;
            state.bytes -= out.message.len() as u32;
        }
        match state.close {
            Some(reason) if state.queue.is_empty() => Status::Close(reason),
            _ => Status::Open,
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
            self.wake.signal();
        }
    }

    /// Buffer capacity the outbox keeps allocated, in entries (for tests:
    /// an idle socket keeps none).
    pub fn retained(&self) -> usize {
        let state = self.lock();
        state.queue.capacity() + usize::from(state.resuming.is_some())
    }

    /// Frames currently queued or held (for tests and introspection).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.queue.len()
            + state
                .resuming
                .as_ref()
                .map_or(0, |r| r.holds.iter().map(|h| h.frames.len()).sum::<usize>())
    }

    /// Whether nothing is queued or held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomName;

    const ALL: usize = usize::MAX;

    fn msg(n: usize) -> Message {
        Message::binary(vec![0u8; n])
    }

    fn room(name: &str) -> Channel {
        Channel::Room(RoomName::parse(name).unwrap())
    }

    fn event(o: &Outbox, c: &Channel, offset: u64) -> Result<(), PushError> {
        o.push_event(
            c,
            Message::text(offset.to_string()),
            Some(offset),
            Instant::now(),
        )
    }

    fn texts(batch: &VecDeque<Outgoing>) -> Vec<String> {
        batch
            .iter()
            .map(|o| o.message.to_text().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn bounded_in_frames() {
        let o = Outbox::new(2, 1000);
        assert!(o.push(msg(1)).is_ok());
        assert!(o.push(msg(1)).is_ok());
        assert_eq!(o.push(msg(1)), Err(PushError::Full));
        let mut batch = VecDeque::new();
        assert_eq!(
            o.take(&mut batch, ALL),
            Status::Close(Disconnect::SlowConsumer)
        );
        assert!(batch.is_empty(), "a slow consumer's queue is discarded");
        assert_eq!(o.push(msg(1)), Err(PushError::Closed));
    }

    #[test]
    fn bounded_in_bytes() {
        let o = Outbox::new(100, 10);
        assert!(o.push(msg(6)).is_ok());
        assert_eq!(o.push(msg(6)), Err(PushError::Full));
    }

    #[test]
    fn take_moves_everything_and_frees_the_budget() {
        let o = Outbox::new(2, 100);
        o.push(msg(1)).unwrap();
        o.push(msg(1)).unwrap();
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch, ALL), Status::Open);
        assert_eq!(batch.len(), 2);
        assert!(o.is_empty());
        o.push(msg(1)).unwrap();
        o.push(msg(1)).unwrap();
    }

    #[test]
    fn take_honours_its_maximum_and_closes_only_when_empty() {
        let o = Outbox::new(10, 100);
        for _ in 0..3 {
            o.push(msg(1)).unwrap();
        }
        o.close(Disconnect::Draining);
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch, 2), Status::Open);
        assert_eq!(batch.len(), 2);
        batch.clear();
        assert_eq!(o.take(&mut batch, 2), Status::Close(Disconnect::Draining));
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn drain_close_keeps_queued_frames() {
        let o = Outbox::new(10, 100);
        o.push(msg(1)).unwrap();
        o.close(Disconnect::Draining);
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch, ALL), Status::Close(Disconnect::Draining));
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn a_held_channel_waits_and_release_drops_what_the_replay_covered() {
        let o = Outbox::new(100, 10_000);
        let (lobby, other) = (room("lobby"), room("other"));
        o.hold(&lobby);
        event(&o, &lobby, 5).unwrap();
        event(&o, &other, 1).unwrap();
        event(&o, &lobby, 6).unwrap();
        let mut batch = VecDeque::new();
        o.take(&mut batch, ALL);
        assert_eq!(texts(&batch), ["1"], "only the other channel flows");
        batch.clear();
        // The replay covered up to 5: 5 is a duplicate, 6 follows it.
        o.release(
            &lobby,
            vec![
                Message::text("ok"),
                Message::text("r4"),
                Message::text("r5"),
            ],
            Some(5),
        );
        event(&o, &lobby, 7).unwrap();
        o.take(&mut batch, ALL);
        assert_eq!(texts(&batch), ["ok", "r4", "r5", "6", "7"]);
        assert!(o.is_empty());
    }

    #[test]
    fn events_the_replay_covered_are_dropped_even_after_the_release() {
        let o = Outbox::new(100, 10_000);
        let lobby = room("lobby");
        o.hold(&lobby);
        // The history read ran ahead of fan-out: the replay covers up to 7
        // while fan-out has only delivered up to 5.
        event(&o, &lobby, 5).unwrap();
        o.release(
            &lobby,
            vec![Message::text("r6"), Message::text("r7")],
            Some(7),
        );
        event(&o, &lobby, 6).unwrap();
        event(&o, &lobby, 7).unwrap();
        event(&o, &lobby, 8).unwrap();
        event(&o, &lobby, 9).unwrap();
        let mut batch = VecDeque::new();
        o.take(&mut batch, ALL);
        assert_eq!(texts(&batch), ["r6", "r7", "8", "9"]);
        // The floor is gone once passed: a later resume starts clean.
        o.hold(&lobby);
        o.release(&lobby, Vec::new(), None);
        event(&o, &lobby, 1).unwrap();
        batch.clear();
        o.take(&mut batch, ALL);
        assert_eq!(texts(&batch), ["1"]);
    }

    #[test]
    fn replays_are_not_counted_against_the_bounds() {
        let o = Outbox::new(2, 100);
        let lobby = room("lobby");
        o.hold(&lobby);
        o.release(&lobby, (0..50).map(|_| msg(10)).collect(), None);
        assert!(o.push(msg(1)).is_ok());
        assert!(o.push(msg(1)).is_ok());
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch, ALL), Status::Open);
        assert_eq!(batch.len(), 52);
    }

    #[test]
    fn held_frames_count_against_the_bounds() {
        let o = Outbox::new(2, 1000);
        let lobby = room("lobby");
        o.hold(&lobby);
        event(&o, &lobby, 1).unwrap();
        event(&o, &lobby, 2).unwrap();
        assert_eq!(event(&o, &lobby, 3), Err(PushError::Full));
        assert!(o.is_empty(), "a slow consumer's holds are discarded too");
    }

    #[tokio::test]
    async fn push_wakes_the_session() {
        let o = std::sync::Arc::new(Outbox::new(10, 100));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.ready().await });
        o.push(msg(1)).unwrap();
        waiter.await.unwrap();
    }
}
