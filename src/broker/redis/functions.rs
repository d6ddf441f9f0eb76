//! The Redis Function library `gw` (`gw.lua`): `gw_publish` (number, store,
//! trim, expire and publish in one atomic step), `gw_history`, `gw_epoch`,
//! and presence's `gw_presence` and `gw_presence_get`. Its retention rules
//! are generated from `[history]` here, the same rules the node applies
//! (`continuity::RetentionRules`), so a backend's `FCALL gw_publish` and the
//! node agree on every channel; likewise the rooms with join / leave events
//! from `[presence]`.
//!
//! The library is loaded with `FUNCTION LOAD REPLACE` on every master's
//! subscriber connection when it is (re)established: at start-up, after a
//! reconnect, a failover or a topology change. A Redis without functions
//! (< 7) answers "unknown command": history is then off, and the log says so.

use std::fmt::Write as _;

use crate::config::PresenceConfig;
use crate::continuity::RetentionRules;

const TEMPLATE: &str = include_str!("gw.lua");
const CONFIG_START: &str = "-- CONFIG\n";
const CONFIG_END: &str = "-- CONFIG END\n";

/// A Lua string literal holding `s` exactly (any byte).
fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for b in s.bytes() {
        match b {
            b'\\' | b'\'' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('\'');
    out
}

/// The library's source for these rules, channel prefix and pub/sub mode.
pub(super) fn library(
    rules: &RetentionRules,
    presence: &PresenceConfig,
    prefix: &str,
    sharded: bool,
) -> String {
    let mut config = String::new();
    let _ = writeln!(config, "local PREFIX = {}", lua_str(prefix));
    let _ = writeln!(
        config,
        "local PUBLISH = '{}'",
        if sharded { "SPUBLISH" } else { "PUBLISH" }
    );
    let _ = writeln!(config, "local META_TTL = {}", rules.meta_ttl_seconds);
    let _ = writeln!(
        config,
        "local ROOM = {{{}, {}}}",
        rules.room.0, rules.room.1
    );
    let _ = writeln!(
        config,
        "local USER = {{{}, {}}}",
        rules.user.0, rules.user.1
    );
    config.push_str("local RULES = {\n");
    for r in &rules.rooms {
        let _ = writeln!(
            config,
            "  {{{}, {}, {}, {}}},",
            lua_str(&r.name),
            r.prefix,
            r.size,
            r.ttl_seconds
        );
    }
    config.push_str("}\n");
    let _ = writeln!(config, "local EVENTS_MAX = {}", presence.events_max_members);
    config.push_str("local EVENTS = {\n");
    for pattern in &presence.events {
        // The syntax of the `rooms` claim: exact, or a prefix ending in `*`.
        let (name, prefix) = match pattern.strip_suffix('*') {
            Some(name) => (name, true),
            None => (pattern.as_str(), false),
        };
        let _ = writeln!(config, "  {{{}, {prefix}}},", lua_str(name));
    }
    config.push_str("}\n");
    let start = TEMPLATE.find(CONFIG_START).map(|i| i + CONFIG_START.len());
    let end = TEMPLATE.find(CONFIG_END);
    match (start, end) {
        (Some(start), Some(end)) => {
            format!("{}{config}{}", &TEMPLATE[..start], &TEMPLATE[end..])
        }
        _ => unreachable!("gw.lua carries its CONFIG markers"),
    }
}

/// Whether a `FUNCTION LOAD` error means this Redis has no functions.
pub(super) fn unsupported(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("unknown command") || e.contains("unknown subcommand")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HistoryConfig, RoomHistory};

    #[test]
    fn the_library_carries_the_rules_and_keeps_its_header() {
        let rules = RetentionRules::new(&HistoryConfig {
            rooms: vec![RoomHistory {
                pattern: "ticker:*".into(),
                size: Some(0),
                ttl_seconds: None,
            }],
            ..HistoryConfig::default()
        });
        let presence = PresenceConfig {
            events: vec!["chat:*".into(), "lobby".into()],
            ..PresenceConfig::default()
        };
        let lua = library(&rules, &presence, "gw:", true);
        assert!(
            lua.starts_with("#!lua name=gw\n"),
            "FUNCTION LOAD needs the shebang first"
        );
        for line in [
            "local PREFIX = 'gw:'",
            "local PUBLISH = 'SPUBLISH'",
            "local META_TTL = 86400",
            "local ROOM = {100, 300}",
            "local USER = {50, 600}",
            "  {'ticker:', true, 0, 300},",
            "local EVENTS_MAX = 1000",
            "  {'chat:', true},",
            "  {'lobby', false},",
        ] {
            assert!(lua.contains(line), "{line}\n{lua}");
        }
        assert!(library(&rules, &presence, "gw:", false).contains("local PUBLISH = 'PUBLISH'"));
    }

    #[test]
    fn lua_literals_hold_any_byte() {
        assert_eq!(lua_str("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(lua_str("x\ny"), "'x\\010y'");
    }
}
