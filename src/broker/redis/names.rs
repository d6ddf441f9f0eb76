//! Redis channel names: the contract's `<prefix>room:<R>`, `<prefix>user:<U>`
//! and `<prefix>broadcast`, the control channel `<prefix>control` every node
//! subscribes to, the directory's keys (`<prefix>revoked`, `<prefix>nodes`),
//! plus this node's private probe channels.
//!
//! Names are fred `Str`s (shared bytes), so the table, the commands and the
//! inbound path pass the same allocation around instead of copying it.

use std::hash::BuildHasher;
use std::sync::Arc;

use fred::bytes_utils::Str;

use crate::protocol::Channel;

/// Number of Redis Cluster hash slots.
pub(super) const SLOTS: u16 = 16_384;

/// The hash slot of a channel or key (hash tags honoured).
pub(super) fn slot(name: &[u8]) -> u16 {
    fred::util::redis_keyslot(name)
}

/// Maps the node's channels to Redis channel names and back.
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: Arc<str>,
    /// Distinguishes this gateway process's probes from every other node's.
    instance: Arc<str>,
}

impl Names {
    /// Names under `prefix`, with probe channels private to this process.
    pub(super) fn new(prefix: &str) -> Names {
        let seed = std::collections::hash_map::RandomState::new()
            .hash_one((std::process::id(), std::time::SystemTime::now()));
        Names {
            prefix: prefix.into(),
            instance: format!("{seed:016x}").into(),
        }
    }

    /// The Redis channel carrying `channel`.
    pub(super) fn channel(&self, channel: &Channel) -> Str {
        Str::from(format!("{}{channel}", self.prefix))
    }

    /// The node channel a Redis channel name carries, if it is one of ours.
    pub(super) fn parse(&self, name: &str) -> Option<Channel> {
        name.strip_prefix(&*self.prefix).and_then(Channel::parse)
    }

    /// The control channel: disconnects and revocations for every node.
    pub(super) fn control(&self) -> Str {
        Str::from(format!("{}control", self.prefix))
    }

    /// The hash of revocations kept until the tokens they cover expire.
    pub(super) fn revoked(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// The hash of the node registry.
    pub(super) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The probe channel of a single Redis (or of classic mode).
    pub(super) fn probe(&self) -> Str {
        Str::from(format!("{}probe:{}", self.prefix, self.instance))
    }

    /// A probe channel whose slot satisfies `owned` (a cluster master's
    /// slots): its hash tag is searched so the probe lands on that master.
    /// `None` if none is found (a prefix with its own hash tag pins every
    /// name to one slot).
    pub(super) fn probe_in(&self, owned: impl Fn(u16) -> bool) -> Option<Str> {
        // CRC16 spreads the tags: a few tens of thousands cover every slot.
        (0u32..200_000)
            .map(|i| format!("{}probe:{{{i}}}:{}", self.prefix, self.instance))
            .find(|name| owned(slot(name.as_bytes())))
            .map(Str::from)
    }

    /// Whether `name` is one of this process's probe channels.
    pub(super) fn is_probe(&self, name: &str) -> bool {
        name.strip_prefix(&*self.prefix)
            .is_some_and(|rest| rest.starts_with("probe:") && rest.ends_with(&*self.instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomName;

    #[test]
    fn channels_round_trip_and_probes_are_not_channels() {
        let names = Names::new("gw:");
        for channel in [
            Channel::Room(RoomName::parse("lobby").unwrap()),
            Channel::User("alice".into()),
            Channel::Broadcast,
        ] {
            let name = names.channel(&channel);
            assert_eq!(names.parse(&name), Some(channel));
        }
        assert_eq!(&*names.channel(&Channel::Broadcast), "gw:broadcast");
        assert_eq!(names.parse("other:room:lobby"), None);
        assert_eq!(
            names.parse(&names.control()),
            None,
            "control is not a channel"
        );
        let probe = names.probe();
        assert!(names.is_probe(&probe) && names.parse(&probe).is_none());
        assert!(
            !Names::new("gw:").is_probe(&probe),
            "another process's probe is not ours"
        );
    }

    #[test]
    fn a_probe_lands_in_the_wanted_slot_range() {
        let names = Names::new("gw:");
        let probe = names.probe_in(|s| (5461..=10922).contains(&s)).unwrap();
        assert!((5461..=10922).contains(&slot(probe.as_bytes())));
        assert!(names.is_probe(&probe));
        let single = names.probe_in(|s| s == 42).unwrap();
        assert_eq!(slot(single.as_bytes()), 42);
        assert!(names.probe_in(|_| false).is_none());
    }

    #[test]
    fn the_room_hash_tag_shares_the_channel_slot() {
        // Keys kept beside a channel use `{<channel>}` so scripts can touch both.
        assert_eq!(slot(b"gw:room:lobby"), slot(b"{gw:room:lobby}:history"));
    }
}
