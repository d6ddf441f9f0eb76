//! Which Redis master owns which hash slot, parsed from `CLUSTER SLOTS`.
//!
//! The subscriber side routes every shard channel itself (one connection per
//! master), so it keeps its own slot map instead of fred's: comparing two maps
//! is how a failover or a slot migration is noticed, even when Redis's
//! `sunsubscribe` notice was dropped on the way.

use std::fmt;
use std::sync::Arc;

use fred::types::Value;

use super::names::SLOTS;

/// A Redis node address, `host:port`; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Addr(Arc<str>);

impl Addr {
    /// Wraps `host:port`.
    pub(super) fn new(host: &str, port: u16) -> Addr {
        // IPv6 hosts are bracketed so the port split stays unambiguous.
        if host.contains(':') && !host.starts_with('[') {
            Addr(format!("[{host}]:{port}").into())
        } else {
            Addr(format!("{host}:{port}").into())
        }
    }

    /// Parses a configured `host:port` (non-empty host, port 1-65535).
    pub(super) fn parse(node: &str) -> Option<Addr> {
        let (host, port) = node.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        (!host.is_empty()).then(|| Addr::new(host, port))
    }

    /// Host (without brackets) and port.
    pub(super) fn host_port(&self) -> (&str, u16) {
        let (host, port) = self.0.rsplit_once(':').unwrap_or((&self.0, "0"));
        (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().unwrap_or(0),
        )
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const UNASSIGNED: u16 = u16::MAX;

/// Slot -> master map.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Topology {
    /// Masters owning at least one slot, sorted (so the map compares stably).
    masters: Vec<Addr>,
    /// Per slot, an index into `masters`, or `UNASSIGNED`.
    slots: Box<[u16]>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topology{:?}", self.masters)
    }
}

impl Topology {
    /// One Redis owning every slot (a single Redis, or classic mode's one node).
    pub(super) fn single(addr: Addr) -> Topology {
        Topology {
            masters: vec![addr],
            slots: vec![0; SLOTS as usize].into(),
        }
    }

    /// Parses a `CLUSTER SLOTS` reply. `queried` stands in for a master that
    /// reports an empty host (a node that does not know its own address).
    pub(super) fn from_cluster_slots(reply: Value, queried: &Addr) -> Result<Topology, String> {
        let mut ranges = Vec::new();
        for entry in reply.into_array() {
            let fields = entry.into_array();
            let (Some(start), Some(end), Some(master)) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err("CLUSTER SLOTS entry without start, end and master".into());
            };
            let (start, end) = match (start.as_u64(), end.as_u64()) {
                (Some(s), Some(e)) if s <= e && e < u64::from(SLOTS) => (s as u16, e as u16),
                _ => {
                    return Err(format!(
                        "CLUSTER SLOTS range out of bounds: {start:?}..{end:?}"
                    ));
                }
            };
            let master = master.clone().into_array();
            let host = master
                .first()
                .and_then(Value::as_string)
                .unwrap_or_default();
            let port = master
                .get(1)
                .and_then(Value::as_u64)
                .filter(|p| *p > 0 && *p <= u64::from(u16::MAX));
            let Some(port) = port else {
                return Err("CLUSTER SLOTS master without a port".into());
            };
            let addr = if host.is_empty() || host == "?" {
                Addr::new(queried.host_port().0, port as u16)
            } else {
                Addr::new(&host, port as u16)
            };
            ranges.push((start, end, addr));
        }
        if ranges.is_empty() {
            return Err("CLUSTER SLOTS is empty: no slot is assigned".into());
        }
        let mut masters: Vec<Addr> = ranges.iter().map(|(_, _, a)| a.clone()).collect();
        masters.sort();
        masters.dedup();
        let mut slots = vec![UNASSIGNED; SLOTS as usize].into_boxed_slice();
        for (start, end, addr) in ranges {
            let index = masters.binary_search(&addr).unwrap_or(0) as u16;
            slots[start as usize..=end as usize].fill(index);
        }
        Ok(Topology { masters, slots })
    }

    /// Masters owning at least one slot, sorted.
    pub(super) fn masters(&self) -> &[Addr] {
        &self.masters
    }

    /// The master owning `slot`, if the slot is assigned.
    pub(super) fn owner(&self, slot: u16) -> Option<&Addr> {
        self.slots
            .get(slot as usize)
            .and_then(|&i| self.masters.get(i as usize))
    }

    /// Whether `addr` owns `slot`.
    pub(super) fn owns(&self, addr: &Addr, slot: u16) -> bool {
        self.owner(slot) == Some(addr)
    }

    /// Whether every slot has an owner.
    pub(super) fn is_complete(&self) -> bool {
        !self.slots.contains(&UNASSIGNED)
    }

    /// The master a channel's subscription (and its history keys) belongs
    /// on: its slot's owner with sharded pub/sub in a cluster, else the one
    /// connection's master.
    pub(super) fn home(&self, name: &[u8], by_slot: bool) -> Option<&Addr> {
        if by_slot {
            self.owner(super::names::slot(name))
        } else {
            self.masters.first()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::String(host.into()),
            Value::Integer(port),
            Value::String("id".into()),
        ])
    }

    fn range(start: i64, end: i64, master: Value) -> Value {
        Value::Array(vec![
            Value::Integer(start),
            Value::Integer(end),
            master,
            node("127.0.0.1", 9999),
        ])
    }

    #[test]
    fn parses_cluster_slots_and_compares_maps() {
        let queried = Addr::new("10.0.0.9", 7000);
        let reply = Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7000)),
            range(5461, 10922, node("127.0.0.1", 7001)),
            range(10923, 16383, node("", 7002)),
        ]);
        let t = Topology::from_cluster_slots(reply.clone(), &queried).unwrap();
        assert_eq!(t.masters().len(), 3);
        assert_eq!(t.owner(0), Some(&Addr::new("127.0.0.1", 7000)));
        assert_eq!(t.owner(5461), Some(&Addr::new("127.0.0.1", 7001)));
        assert_eq!(
            t.owner(16383),
            Some(&Addr::new("10.0.0.9", 7002)),
            "an empty host is the queried node's"
        );
        assert!(t.is_complete());
        assert_eq!(t, Topology::from_cluster_slots(reply, &queried).unwrap());

        let migrated = Value::Array(vec![
            range(0, 5459, node("127.0.0.1", 7000)),
            range(5460, 5460, node("127.0.0.1", 7001)),
            range(5461, 10922, node("127.0.0.1", 7001)),
        ]);
        let m = Topology::from_cluster_slots(migrated, &queried).unwrap();
        assert_ne!(t, m);
        assert!(m.owns(&Addr::new("127.0.0.1", 7001), 5460));
        assert!(!m.is_complete());
        assert_eq!(m.owner(16000), None);
    }

    #[test]
    fn rejects_malformed_replies() {
        let queried = Addr::new("h", 1);
        assert!(Topology::from_cluster_slots(Value::Array(vec![]), &queried).is_err());
        let bad = Value::Array(vec![range(0, 20000, node("h", 1))]);
        assert!(Topology::from_cluster_slots(bad, &queried).is_err());
    }

    #[test]
    fn addresses_parse_and_print() {
        assert_eq!(
            Addr::parse("127.0.0.1:7000").unwrap().host_port(),
            ("127.0.0.1", 7000)
        );
        assert_eq!(Addr::parse("[::1]:7000").unwrap().to_string(), "[::1]:7000");
        assert_eq!(
            Addr::parse("[::1]:7000").unwrap().host_port(),
            ("::1", 7000)
        );
        assert!(Addr::parse("nohost").is_none());
        assert!(Addr::parse(":7000").is_none());
        assert!(Addr::parse("host:0").is_none());
        assert!(Addr::parse("host:http").is_none());
    }
}
