//! What the bridge knows of its subscriber connections' health: per
//! connection the probe's clock ([`Health`], shared with the connection's
//! reader), the view the prober and the state computation take of each
//! connection ([`NodeView`]), and the whole set ([`Fleet`]), whose
//! completeness and freshness decide Up or Down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::interfaces::ClientLike;

use super::topology::{Addr, Topology};

/// Probe state of one subscriber connection, shared with its reader.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// When the probe channel was confirmed (ns on the broker's clock; 0 = not subscribed).
    subscribed_at: AtomicU64,
    /// When a probe last came back (ns; 0 = never).
    last_seen: AtomicU64,
}

impl Health {
    /// The probe channel is live as of `now`.
    pub(super) fn subscribed(&self, now: u64) {
        self.subscribed_at.store(now, Ordering::Release);
    }

    /// The probe subscription is gone (connection lost or rebuilt).
    pub(super) fn unsubscribed(&self) {
        self.subscribed_at.store(0, Ordering::Release);
    }

    /// Whether the probe channel is subscribed.
    pub(super) fn is_subscribed(&self) -> bool {
        self.subscribed_at.load(Ordering::Acquire) != 0
    }

    /// A probe came back at `now`.
    pub(super) fn seen(&self, now: u64) {
        self.last_seen.store(now, Ordering::Release);
    }

    /// A probe came back since the subscription and within `timeout`.
    fn fresh(&self, now: u64, timeout: u64) -> bool {
        let (since, seen) = (
            self.subscribed_at.load(Ordering::Acquire),
            self.last_seen.load(Ordering::Acquire),
        );
        since != 0 && seen >= since && now.saturating_sub(seen) <= timeout
    }

    /// Subscribed, yet nothing came back for longer than `timeout`.
    pub(super) fn quiet(&self, now: u64, timeout: u64) -> bool {
        let (since, seen) = (
            self.subscribed_at.load(Ordering::Acquire),
            self.last_seen.load(Ordering::Acquire),
        );
        since != 0 && now.saturating_sub(since.max(seen)) > timeout
    }
}

/// What the prober and the state computation see of one connection.
#[derive(Clone)]
pub(super) struct NodeView {
    /// The master.
    pub(super) addr: Addr,
    /// Which connection to that master (a rebuilt one gets a new number).
    pub(super) generation: u64,
    /// Its client.
    pub(super) client: Client,
    /// Its probe channel; `None` when no probe name hashes to its slots.
    pub(super) probe: Option<Str>,
    /// Its probe state.
    pub(super) health: Arc<Health>,
    /// The Function library is loaded on its master.
    pub(super) functions: bool,
}

impl NodeView {
    fn healthy(&self, now: u64, timeout: u64) -> bool {
        match self.probe {
            Some(_) => self.health.fresh(now, timeout),
            None => self.client.is_connected(),
        }
    }
}

/// Every connection the broker needs, and whether it has all of them.
#[derive(Default, Clone)]
pub(super) struct Fleet {
    /// Subscriber connections.
    pub(super) nodes: Vec<NodeView>,
    /// Every master the broker needs has a connection (and the slot map is whole).
    pub(super) complete: bool,
    /// The slot map the connections follow (shared: snapshots are cheap).
    pub(super) topology: Option<std::sync::Arc<Topology>>,
    /// Channels live on their slot's master (sharded pub/sub in a cluster).
    pub(super) by_slot: bool,
}

impl Fleet {
    /// The connection to the master a channel named `name` lives on: the
    /// one its subscription was just re-established on after a failover,
    /// hence the one to read its history from.
    pub(super) fn client_for(&self, name: &[u8]) -> Option<Client> {
        let home = self.topology.as_ref()?.home(name, self.by_slot)?;
        self.nodes
            .iter()
            .find(|n| &n.addr == home && n.client.is_connected())
            .map(|n| n.client.clone())
    }

    /// Up: complete, non-empty, every probe fresh and, where history needs
    /// it, the Function library loaded on every master.
    pub(super) fn is_up(&self, now: u64, timeout: u64, functions: bool) -> bool {
        self.complete
            && !self.nodes.is_empty()
            && self
                .nodes
                .iter()
                .all(|n| n.healthy(now, timeout) && (n.functions || !functions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_and_quiet_follow_the_probe_clock() {
        let h = Health::default();
        assert!(
            !h.fresh(10, 5) && !h.quiet(10, 5),
            "unsubscribed is neither"
        );
        h.subscribed(10);
        assert!(!h.fresh(11, 5), "no probe back yet");
        assert!(!h.quiet(15, 5));
        assert!(h.quiet(16, 5));
        h.seen(16);
        assert!(h.fresh(16, 5) && !h.quiet(16, 5));
        assert!(!h.fresh(22, 5) && h.quiet(22, 5));
        h.unsubscribed();
        assert!(!h.fresh(16, 5) && !h.quiet(100, 5));
    }
}
