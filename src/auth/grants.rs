//! Room grants: the `rooms` / `publish` claim patterns of a token, parsed once
//! at verification so that every later subscribe or publish check is a lookup.
//!
//! A pattern is an exact room name, or a prefix ending in `*` (`"team-42:*"`);
//! `"*"` alone grants every room. An absent claim is an empty grant: nothing.

use std::sync::Arc;

/// The rooms one claim (`rooms` or `publish`) allows, parsed from its patterns.
///
/// Cheap to clone (shared slices), so an [`Identity`](super::Identity) can be
/// copied into a session without re-parsing.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// `"*"` was among the patterns.
    all: bool,
    /// Exact room names, sorted and deduplicated for binary search.
    exact: Arc<[Box<str>]>,
    /// Prefixes of `*`-patterns, with the `*` removed.
    prefixes: Arc<[Box<str>]>,
}

impl Grants {
    /// Parses claim patterns. Empty patterns are ignored; a `*` anywhere but at
    /// the end is taken literally, so such a pattern matches no valid room name
    /// (`*` is not a room-name character).
    pub fn parse(patterns: &[String]) -> Grants {
        let mut all = false;
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some("") => all = true,
                Some(prefix) => prefixes.push(Box::from(prefix)),
                None if pattern.is_empty() => {}
                None => exact.push(Box::from(pattern.as_str())),
            }
        }
        if all {
            // `*` subsumes everything else; keep nothing to scan.
            exact.clear();
            prefixes.clear();
        }
        exact.sort_unstable();
        exact.dedup();
        prefixes.sort_unstable();
        prefixes.dedup();
        Grants {
            all,
            exact: exact.into(),
            prefixes: prefixes.into(),
        }
    }

    /// Whether `room` matches one of the patterns. A prefix pattern matches the
    /// prefix itself too (`"team-42:*"` allows `"team-42:"`), like a shell glob.
    pub fn allows(&self, room: &str) -> bool {
        self.all
            || self
                .exact
                .binary_search_by(|name| (**name).cmp(room))
                .is_ok()
            || self
                .prefixes
                .iter()
                .any(|prefix| room.starts_with(&**prefix))
    }

    /// True when nothing is allowed (the claim was absent or held no pattern).
    pub fn is_empty(&self) -> bool {
        !self.all && self.exact.is_empty() && self.prefixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(patterns: &[&str]) -> Grants {
        Grants::parse(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn absent_claim_allows_nothing() {
        let g = Grants::default();
        assert!(g.is_empty());
        assert!(!g.allows("lobby"));
        assert!(!g.allows(""));
        assert!(grants(&[]).is_empty());
        assert!(grants(&[""]).is_empty(), "an empty pattern grants nothing");
    }

    #[test]
    fn exact_names_match_only_themselves() {
        let g = grants(&["lobby", "news", "lobby"]);
        assert!(!g.is_empty());
        assert!(g.allows("lobby"));
        assert!(g.allows("news"));
        assert!(!g.allows("lobby2"));
        assert!(!g.allows("lob"));
        assert!(!g.allows("Lobby"), "room names are case-sensitive");
    }

    #[test]
    fn prefix_patterns_match_by_prefix() {
        let g = grants(&["team-42:*"]);
        assert!(g.allows("team-42:x"));
        assert!(g.allows("team-42:general.chat"));
        assert!(g.allows("team-42:"));
        assert!(!g.allows("team-4"));
        assert!(!g.allows("team-43:x"));
        assert!(!g.allows("team-42"));
    }

    #[test]
    fn star_alone_allows_everything() {
        let g = grants(&["lobby", "*"]);
        assert!(!g.is_empty());
        assert!(g.allows("anything"));
        assert!(g.allows("team-1:x"));
    }

    #[test]
    fn inner_star_is_literal() {
        let g = grants(&["a*b"]);
        assert!(!g.allows("axb"));
        assert!(!g.allows("ab"));
        assert!(g.allows("a*b"));
    }

    #[test]
    fn mixed_patterns() {
        let g = grants(&["lobby", "team-1:*", "user-room@x"]);
        assert!(g.allows("lobby"));
        assert!(g.allows("team-1:a"));
        assert!(g.allows("user-room@x"));
        assert!(!g.allows("team-2:a"));
        assert!(!g.allows("user-room"));
    }
}
