//! Which channels keep history, how many publications and for how long:
//! `[history]` resolved for one channel. Rooms take the first matching
//! `[[history.rooms]]` override, else the room defaults; `broadcast` takes
//! the room defaults; user channels their own. The Redis Function library
//! is generated from the same rules (`broker/redis/functions.rs`), so the
//! node and a backend's `FCALL gw_publish` agree on every channel.

use crate::config::HistoryConfig;
use crate::protocol::Channel;

/// A channel's retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Publications kept (> 0).
    pub size: usize,
    /// Seconds a publication is kept.
    pub ttl_seconds: u64,
}

/// One `[[history.rooms]]` rule, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRule {
    /// The exact room, or the prefix of a `*` pattern.
    pub name: String,
    /// Whether `name` is a prefix.
    pub prefix: bool,
    /// Publications kept (0 = no history).
    pub size: usize,
    /// Seconds kept.
    pub ttl_seconds: u64,
}

/// `[history]`, resolved once at start-up.
#[derive(Debug, Clone)]
pub struct RetentionRules {
    /// Room (and `broadcast`) defaults.
    pub room: (usize, u64),
    /// User channel defaults.
    pub user: (usize, u64),
    /// Overrides, first match wins.
    pub rooms: Vec<RoomRule>,
    /// Seconds a channel's offset and epoch outlive its last publication.
    pub meta_ttl_seconds: u64,
    /// Most events replayed to one subscription.
    pub max_recover: usize,
}

impl RetentionRules {
    /// Resolves `[history]` (already validated).
    pub fn new(h: &HistoryConfig) -> RetentionRules {
        RetentionRules {
            room: (h.size, h.ttl_seconds),
            user: (h.user_size, h.user_ttl_seconds),
            rooms: h
                .rooms
                .iter()
                .map(|r| {
                    let (name, prefix) = match r.pattern.strip_suffix('*') {
                        Some(p) => (p.to_owned(), true),
                        None => (r.pattern.clone(), false),
                    };
                    RoomRule {
                        name,
                        prefix,
                        size: r.size.unwrap_or(h.size),
                        ttl_seconds: r.ttl_seconds.unwrap_or(h.ttl_seconds),
                    }
                })
                .collect(),
            meta_ttl_seconds: h.meta_ttl_seconds,
            max_recover: h.max_recover,
        }
    }

    /// The retention of `channel`; `None` when it keeps no history.
    pub fn of(&self, channel: &Channel) -> Option<Retention> {
        let (size, ttl_seconds) = match channel {
            Channel::Broadcast => self.room,
            Channel::User(_) => self.user,
            Channel::Room(room) => {
                let room = room.as_str();
                self.rooms
                    .iter()
                    .find(|r| {
                        if r.prefix {
                            room.starts_with(&r.name)
                        } else {
                            room == r.name
                        }
                    })
                    .map_or(self.room, |r| (r.size, r.ttl_seconds))
            }
        };
        (size > 0).then_some(Retention { size, ttl_seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoomHistory;
    use crate::protocol::RoomName;

    fn room(name: &str) -> Channel {
        Channel::Room(RoomName::parse(name).unwrap())
    }

    #[test]
    fn the_first_matching_override_wins_and_defaults_fill_the_rest() {
        let rules = RetentionRules::new(&HistoryConfig {
            rooms: vec![
                RoomHistory {
                    pattern: "ticker:*".into(),
                    size: Some(0),
                    ttl_seconds: None,
                },
                RoomHistory {
                    pattern: "ticker:keep".into(),
                    size: Some(5),
                    ttl_seconds: None,
                },
                RoomHistory {
                    pattern: "vip".into(),
                    size: None,
                    ttl_seconds: Some(60),
                },
            ],
            ..HistoryConfig::default()
        });
        assert_eq!(rules.of(&room("ticker:btc")), None);
        assert_eq!(rules.of(&room("ticker:keep")), None, "first match wins");
        assert_eq!(
            rules.of(&room("vip")),
            Some(Retention {
                size: 100,
                ttl_seconds: 60
            })
        );
        assert_eq!(rules.of(&room("vipx")).unwrap().ttl_seconds, 300);
        assert_eq!(
            rules.of(&Channel::User("a".into())),
            Some(Retention {
                size: 50,
                ttl_seconds: 600
            })
        );
        assert_eq!(rules.of(&Channel::Broadcast).unwrap().size, 100);
        let off = RetentionRules::new(&HistoryConfig {
            size: 0,
            user_size: 0,
            ..HistoryConfig::default()
        });
        assert_eq!(off.of(&Channel::Broadcast), None);
        assert_eq!(off.of(&Channel::User("a".into())), None);
    }
}
