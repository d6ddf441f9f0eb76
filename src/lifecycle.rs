//! The node's lifecycle: an observable phase (read by `/readyz`, admission and
//! tests), the shutdown trigger, the tracker of every upgraded socket (hyper's
//! graceful shutdown does not cover them), the drain plan, and the owner of
//! the node's background tasks (fan-out pump, gauges): they are started
//! through [`Lifecycle::spawn_background`] and cancelled and awaited by
//! [`Lifecycle::stop_background`], never left to the process's exit.
//!
//! Drain: the phase turns `Draining` at once, the listener stops, and sockets
//! are asked to close with 1012 at evenly spread instants over the drain
//! window (each flushes what it has queued first), so clients do not all
//! reconnect at once. The node then waits for them, bounded by a deadline.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::protocol::Disconnect;

/// Where the node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// Refusing new sockets and closing the open ones.
    Draining,
    /// Every socket is gone (or the deadline passed).
    Stopped,
}

/// Shared lifecycle state.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    sessions: TaskTracker,
    background: TaskTracker,
    cancel: CancellationToken,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A running node.
    pub fn new() -> Lifecycle {
        Lifecycle {
            phase: watch::channel(Phase::Running).0,
            sessions: TaskTracker::new(),
            background: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Watches the phase.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Tracks upgraded sockets' tasks, so drain can wait for them.
    pub fn sessions(&self) -> &TaskTracker {
        &self.sessions
    }

    /// Runs a background task of the node until it ends or the node stops.
    pub fn spawn_background<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.background.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Cancels the background tasks and waits for them, at most `deadline`.
    /// Returns whether they all ended.
    pub async fn stop_background(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.background.close();
        tokio::time::timeout(deadline, self.background.wait())
            .await
            .is_ok()
    }

    /// Starts draining (idempotent).
    pub fn begin_drain(&self) {
        self.phase.send_if_modified(|p| {
            let changed = *p == Phase::Running;
            if changed {
                *p = Phase::Draining;
            }
            changed
        });
    }

    /// Closes every socket with 1012, spread evenly over `window`, then waits
    /// for all session tasks, at most `window + grace`. Returns whether every
    /// session finished in time.
    pub async fn drain(&self, hub: &Arc<Hub>, window: Duration, grace: Duration) -> bool {
        self.begin_drain();
        let start = Instant::now();
        let deadline = start + window + grace;
        let outboxes = hub.outboxes();
        let n = outboxes.len().max(1) as u32;
        for (i, outbox) in outboxes.iter().enumerate() {
            tokio::time::sleep_until(start + window.mul_f64(i as f64 / n as f64)).await;
            outbox.close(Disconnect::Draining);
        }
        // Sockets admitted while the snapshot was taken.
        for outbox in hub.outboxes() {
            outbox.close(Disconnect::Draining);
        }
        self.sessions.close();
        let finished = tokio::time::timeout_at(deadline, self.sessions.wait())
            .await
            .is_ok();
        self.phase.send_replace(Phase::Stopped);
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use crate::hub::Subscriber;
    use crate::metrics::Metrics;
    use crate::outbox::{Outbox, Status};
    use crate::protocol::Format;
    use std::collections::VecDeque;

    #[tokio::test(start_paused = true)]
    async fn drain_spreads_closes_over_the_window() {
        let (broker, _rx) = MemoryBroker::new(4);
        let hub = Arc::new(Hub::new(
            broker,
            Metrics::new(&prometheus::Registry::new()).unwrap(),
            1 << 20,
        ));
        let outboxes: Vec<Arc<Outbox>> = (0..4).map(|_| Arc::new(Outbox::new(4, 1024))).collect();
        for o in &outboxes {
            hub.register(Subscriber {
                outbox: o.clone(),
                format: Format::Json,
            });
        }
        let life = Lifecycle::new();
        let drain = {
            let (life, hub) = (life.clone(), hub.clone());
            tokio::spawn(async move {
                life.drain(&hub, Duration::from_secs(4), Duration::from_secs(1))
                    .await
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(life.phase(), Phase::Draining);
        let closed = |o: &Outbox| {
            o.take(&mut VecDeque::new(), usize::MAX) == Status::Close(Disconnect::Draining)
        };
        let count = || outboxes.iter().filter(|o| closed(o)).count();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(count(), 1, "one close at the start of the window");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count(), 2, "the next a quarter of the window later");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(count(), 4);
        assert!(
            drain.await.unwrap(),
            "no tracked sessions: finishes at once"
        );
        assert_eq!(life.phase(), Phase::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn background_tasks_are_cancelled_and_awaited() {
        let life = Lifecycle::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        life.spawn_background(async move {
            // Holds `tx` until cancelled: the receiver sees it dropped then.
            let _tx = tx;
            std::future::pending::<()>().await
        });
        assert!(life.stop_background(Duration::from_secs(1)).await);
        assert!(rx.await.is_err(), "the task was dropped, not leaked");
    }
}
