//! The pump: the one task that delivers what the broker hands the node, in
//! order, and the one writer of every channel's continuity [`Track`]. A
//! publication in order is delivered; a duplicate is dropped; a gap holds
//! newer publications while the missing ones are read from history (a
//! repair runs as a task of the pump's own, so other channels keep
//! flowing) and delivered first. Where history cannot fill a gap, the
//! channel's subscribers get one `resync`. A [`BrokerEvent::Check`] (a
//! pub/sub connection rebuilt, a reader that lagged) compares each named
//! channel with its history top, so what was missed is filled even if
//! nothing new is published.
//!
//! [`Track`]: crate::continuity::Track

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinSet;

use tokio::sync::mpsc;

use super::Hub;
use crate::broker::{BrokerEvent, Inbound};
use crate::cluster::Control;
use crate::continuity::{Check, HistoryPage, Verdict};
use crate::protocol::{Channel, Event, Position, Publication, ServerFrame};

/// Most publications one repair reads; a longer gap takes several repairs.
const REPAIR_LIMIT: usize = 10_000;
/// A failed read is tried this often, this far apart, before the gap is
/// given up (about 5 s: a Redis failover's own time).
const ATTEMPTS: u32 = 20;
const RETRY: Duration = Duration::from_millis(250);

/// What a repair task brings back.
enum Fetched {
    /// A history page (`None`: every attempt to read failed).
    Page(Option<HistoryPage>),
    /// The position after a new epoch was started.
    Epoch(Option<Position>),
}

type Repairs = JoinSet<(Channel, Fetched)>;

impl Hub {
    /// Feeds the broker's events into fan-out, in order, until the broker
    /// closes its queue. Repairs in flight end with it. Control messages go
    /// to `control`, whose owner applies them to the node.
    pub async fn pump(self: Arc<Self>, mut inbound: Inbound, control: mpsc::Sender<Control>) {
        let mut repairs = Repairs::new();
        loop {
            tokio::select! {
                event = inbound.recv() => match event {
                    None => break,
                    Some(BrokerEvent::Publication(p)) => {
                        self.metrics.publications_in.with_label_values(&["broker"]).inc();
                        self.admit(p, &mut repairs);
                    }
                    Some(BrokerEvent::Check(channels)) => {
                        for channel in channels {
                            self.check(channel, &mut repairs);
                        }
                    }
                    Some(BrokerEvent::Presence { room, user, joined }) => {
                        let channel = Channel::Room(room);
                        let frame = if joined {
                            ServerFrame::Join { channel: channel.clone(), user }
                        } else {
                            ServerFrame::Leave { channel: channel.clone(), user }
                        };
                        self.deliver_frame(&channel, &frame);
                    }
                    Some(BrokerEvent::Control(message)) => {
                        if control.try_send(message).is_err() {
                            tracing::warn!("control message dropped: its queue is full");
                        }
                    }
                },
                Some(done) = repairs.join_next(), if !repairs.is_empty() => {
                    if let Ok((channel, fetched)) = done {
                        self.settle(channel, fetched, &mut repairs);
                    }
                }
            }
        }
    }

    /// One publication from the broker, through its channel's track.
    fn admit(&self, p: Publication, repairs: &mut Repairs) {
        let Some(offset) = p.offset else {
            self.deliver_publication(p);
            return;
        };
        let channel = p.channel.clone();
        let epoch = p.epoch.clone();
        let mut p = Some(p);
        let verdict = self.with_track(&channel, |track| {
            let verdict = track.admit(offset, &epoch);
            if matches!(verdict, Verdict::Hold | Verdict::Repair { .. })
                && let Some(p) = p.take()
                && !track.hold(p)
            {
                self.metrics
                    .events_dropped
                    .with_label_values(&["held_full"])
                    .inc();
            }
            verdict
        });
        match verdict {
            // No local subscriber any more (or held): nothing to deliver now.
            None | Some(Verdict::Hold) => {}
            Some(Verdict::Deliver) => {
                if let Some(p) = p {
                    self.deliver_publication(p);
                }
            }
            Some(Verdict::Duplicate) => {
                self.metrics
                    .events_dropped
                    .with_label_values(&["duplicate"])
                    .inc();
            }
            Some(Verdict::Repair { after }) => self.fetch(channel, Some(after), repairs),
            Some(Verdict::NewEpoch { resync }) => {
                self.metrics
                    .history_gaps
                    .with_label_values(&["resync"])
                    .inc();
                self.resync(&channel, resync);
                if let Some(p) = p {
                    self.deliver_publication(p);
                }
            }
        }
    }

    /// Compares `channel` with its history top (after a reconnect or a lag).
    fn check(&self, channel: Channel, repairs: &mut Repairs) {
        if let Some(Some(after)) = self.with_track(&channel, |t| t.start_check()) {
            self.fetch(channel, after, repairs);
        }
    }

    /// Reads history after `after` (only the position without it) in a
    /// task, trying again while the broker fails (it is likely recovering,
    /// e.g. mid-failover) before the gap is given up.
    fn fetch(&self, channel: Channel, after: Option<u64>, repairs: &mut Repairs) {
        let limit = if after.is_some() { REPAIR_LIMIT } else { 0 };
        let broker = self.broker.clone();
        repairs.spawn(async move {
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(RETRY).await;
                }
                match broker.history(&channel, after, limit).await {
                    Ok(page) => return (channel, Fetched::Page(page)),
                    Err(e) => tracing::debug!(channel = %channel, error = %e, attempt, "history read failed"),
                }
            }
            (channel, Fetched::Page(None))
        });
    }

    /// A repair's result: resync if needed, the missed events, then what was held.
    fn settle(&self, channel: Channel, fetched: Fetched, repairs: &mut Repairs) {
        let check: Option<Check> = self.with_track(&channel, |t| match fetched {
            Fetched::Page(page) => t.apply(page),
            Fetched::Epoch(position) => t.new_epoch(position),
        });
        let Some(check) = check else { return };
        if let Some(stale) = check.backwards {
            tracing::warn!(channel = %channel, offset = stale.offset, "history top went backwards (lost Redis writes): starting a new epoch");
            let broker = self.broker.clone();
            repairs.spawn(async move {
                for attempt in 0..ATTEMPTS {
                    if attempt > 0 {
                        tokio::time::sleep(RETRY).await;
                    }
                    if let Ok(position) = broker.new_epoch(&channel, &stale).await {
                        return (channel, Fetched::Epoch(position));
                    }
                }
                (channel, Fetched::Epoch(None))
            });
            return;
        }
        if check.resync.is_some() || !check.deliver.is_empty() {
            let outcome = if check.resync.is_some() {
                "resync"
            } else {
                "repaired"
            };
            self.metrics
                .history_gaps
                .with_label_values(&[outcome])
                .inc();
        }
        if let Some(resync) = check.resync {
            self.resync(&channel, resync);
        }
        let epoch = self.position(&channel).map_or(Bytes::new(), |p| {
            Bytes::copy_from_slice(p.epoch.as_str().as_bytes())
        });
        self.metrics
            .events_repaired
            .inc_by(check.deliver.len() as u64);
        for stored in check.deliver {
            self.deliver_publication(Publication {
                channel: channel.clone(),
                payload: stored.data,
                received_at: Instant::now(),
                offset: Some(stored.offset),
                epoch: epoch.clone(),
            });
        }
        for p in check.released {
            self.admit(p, repairs);
        }
        if check.check_again {
            self.check(channel, repairs);
        }
    }

    /// Sends `resync` to every local subscriber of `channel`, once.
    fn resync(&self, channel: &Channel, at: Position) {
        let sent = self.deliver_frame(
            channel,
            &ServerFrame::Resync {
                channel: channel.clone(),
                offset: at.offset,
                epoch: at.epoch,
            },
        );
        self.metrics.resyncs_sent.inc_by(sent as u64);
    }

    /// Encodes and delivers one publication (dropped, and counted, when too
    /// large for a socket's queue).
    fn deliver_publication(&self, p: Publication) {
        match Event::new(p, self.event_limit) {
            Ok(event) => {
                self.deliver(&event);
            }
            Err(e) => {
                self.metrics
                    .events_dropped
                    .with_label_values(&["too_large"])
                    .inc();
                tracing::warn!(error = %e, "event dropped: too large for a socket's queue");
            }
        }
    }
}
