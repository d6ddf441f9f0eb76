//! Joining a channel, and resuming it (contract section 6). The caller holds
//! the channel in the socket's outbox from before [`Hub::join`] until it
//! releases the outcome: the reply first, then the replay, then the live
//! events the replay did not cover, so nothing overtakes the replay and
//! nothing is delivered twice at the seam between history and live.
//!
//! A client that is caught up with what this node delivered last (the common
//! reconnect) is answered without a read; otherwise the broker's history
//! decides.

use std::time::Instant;

use super::{ConnId, Hub, Joined, Subscriber};
use crate::broker::BrokerError;
use crate::continuity::{HistoryPage, Resume, resume};
use crate::protocol::{Channel, Resumed, Since};

impl Hub {
    /// Subscribes `id` to `channel` (live first), then decides what it
    /// resumes from `since`.
    pub async fn join(
        &self,
        channel: &Channel,
        id: ConnId,
        subscriber: Subscriber,
        since: Option<&Since>,
    ) -> Result<(Joined, Resume), BrokerError> {
        let joined = self.subscribe(channel, id, subscriber).await?;
        Ok((joined, self.resume(channel, since).await))
    }

    /// What a client at `since` on `channel` resumes: its position, whether
    /// every missed event follows, and those events.
    pub async fn resume(&self, channel: &Channel, since: Option<&Since>) -> Resume {
        let max = self.rules.max_recover;
        let outcome = self.decide(channel, since, max).await;
        if let Some(recovered) = outcome.resumed.recovered {
            let label = if recovered {
                "recovered"
            } else {
                "not_recovered"
            };
            self.metrics.recoveries.with_label_values(&[label]).inc();
        }
        outcome
    }

    async fn decide(&self, channel: &Channel, since: Option<&Since>, max: usize) -> Resume {
        if self.rules.of(channel).is_none() {
            return resume(since, None, max);
        }
        if let Some(position) = self.position(channel) {
            let caught_up = since
                .is_none_or(|s| s.epoch == position.epoch.as_str() && s.offset == position.offset);
            if caught_up {
                let page = HistoryPage {
                    position,
                    events: Vec::new(),
                };
                return resume(since, Some(page), max);
            }
        }
        let limit = if since.is_some() { max } else { 0 };
        let started = Instant::now();
        match self
            .broker
            .history(channel, since.map(|s| s.offset), limit)
            .await
        {
            Ok(Some(page)) => {
                self.with_track(channel, |t| t.set_if_unknown(page.position.clone()));
                resume(since, Some(page), max)
            }
            Ok(None) => resume(since, None, max),
            Err(e) => {
                // The subscription stands; only its position is unknown. A
                // client that asked to resume is told it did not.
                tracing::warn!(channel = %channel, error = %e, waited_ms = started.elapsed().as_millis() as u64, "history read failed");
                Resume {
                    resumed: Resumed {
                        position: None,
                        recovered: since.map(|_| false),
                    },
                    replay: Vec::new(),
                    after: None,
                }
            }
        }
    }
}
