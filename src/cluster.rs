//! What the nodes of one cluster tell each other, whatever the broker
//! carries it: control messages (disconnect a user, revoke tokens) on the
//! control channel every node subscribes to, the revocations kept until the
//! tokens they cover expire, and the node registry's entries. Plain data
//! with a JSON form; applying it is `control.rs`'s job.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Tokens refused from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Revocation {
    /// One token, by its `jti`.
    Jti {
        /// The token's `jti`.
        jti: String,
        /// Unix seconds after which the revocation is dropped.
        expires: u64,
    },
    /// Every token of `user` issued before `issued_before` (unix seconds;
    /// a token without `iat` counts as issued before).
    User {
        /// The `sub`.
        user: String,
        /// Tokens with `iat` below this are refused.
        issued_before: u64,
        /// Unix seconds after which the revocation is dropped.
        expires: u64,
    },
}

impl Revocation {
    /// When the revocation may be forgotten.
    pub fn expires(&self) -> u64 {
        match self {
            Revocation::Jti { expires, .. } | Revocation::User { expires, .. } => *expires,
        }
    }

    /// The key a broker stores it under: one per jti, one per user and
    /// cut-off (so two revocations of one user never overwrite each other;
    /// the node enforces the latest cut-off).
    pub fn key(&self) -> String {
        match self {
            Revocation::Jti { jti, .. } => format!("jti:{jti}"),
            Revocation::User {
                user,
                issued_before,
                ..
            } => format!("user:{issued_before}:{user}"),
        }
    }
}

/// A message to every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Control {
    /// Close every socket of `user`: 4003, or 1012 with `reconnect`.
    Disconnect {
        /// The `sub`.
        user: String,
        /// 1012 (come back) rather than 4003 (do not).
        reconnect: bool,
    },
    /// Refuse these tokens and close the sockets using them with 4001.
    Revoke {
        /// What is revoked.
        revocation: Revocation,
    },
}

impl Control {
    /// The message as the control channel carries it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a control channel message; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Control> {
        serde_json::from_slice(bytes).ok()
    }
}

/// One node as the registry lists it (`GET /api/nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `server.node_id` (or the derived one).
    pub id: String,
    /// Sockets open on it.
    pub sockets: u64,
    /// Channels with a local subscriber.
    pub channels: u64,
    /// Whether it is draining.
    pub draining: bool,
    /// The gateway's version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_seconds: u64,
}

/// A user id as presence counts it.
pub type User = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        for msg in [
            Control::Disconnect {
                user: "a{b}".into(),
                reconnect: true,
            },
            Control::Revoke {
                revocation: Revocation::Jti {
                    jti: "t1".into(),
                    expires: 10,
                },
            },
            Control::Revoke {
                revocation: Revocation::User {
                    user: "alice".into(),
                    issued_before: 5,
                    expires: 10,
                },
            },
        ] {
            assert_eq!(Control::decode(msg.encode().as_bytes()), Some(msg));
        }
        assert_eq!(Control::decode(b"{\"kind\":\"dance\"}"), None);
        assert_eq!(Control::decode(b"not json"), None);
    }
}
