//! The v1 wire contract (CONTRACT.md section 2): validated names, channels,
//! client and server frames, error and close codes.
//!
//! This module depends on nothing else in the crate. Encoding to bytes lives in
//! `protocol/codec.rs`; a publication's encode-once cache lives in
//! `protocol/event.rs`.

use std::fmt;
use std::sync::Arc;

mod codec;
mod cursor;
mod end;
mod event;
pub mod payload;
mod position;
mod refusal;

pub use codec::{DecodeError, Format, Subprotocol, decode_client_frame, encode_server_frame, pack};
pub use cursor::{Cursor, CursorError, MAX_CURSOR_CHANNELS, MAX_CURSOR_LEN};
pub use end::{End, EndedBy};
pub use event::{Event, Publication};
pub use payload::{PayloadError, inspect};
pub use position::{Epoch, MAX_EPOCH_LEN, Position, Since};
pub use refusal::Refusal;

/// Longest room name the contract allows.
pub const MAX_ROOM_LEN: usize = 128;

/// A room name that passed the contract's validation: 1..=128 characters of
/// `A-Z a-z 0-9 _ - : . @`. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name`; `None` means the client gets `bad_room`.
    pub fn parse(name: &str) -> Option<RoomName> {
        let ok = !name.is_empty()
            && name.len() <= MAX_ROOM_LEN
            && name.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'@')
            });
        ok.then(|| RoomName(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Longest user id (`sub`) a user channel, presence or the server API takes.
pub const MAX_USER_LEN: usize = 256;

/// Where a publication goes: a room, every socket of one user, or everyone.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Channel {
    /// `room:<R>`
    Room(RoomName),
    /// `user:<U>`: every socket of that user.
    User(Arc<str>),
    /// `broadcast`: every socket.
    Broadcast,
}

impl Channel {
    /// Parses the contract's channel names: `room:<R>`, `user:<U>`, `broadcast`.
    pub fn parse(name: &str) -> Option<Channel> {
        if name == "broadcast" {
            Some(Channel::Broadcast)
        } else if let Some(room) = name.strip_prefix("room:") {
            RoomName::parse(room).map(Channel::Room)
        } else if let Some(user) = name.strip_prefix("user:") {
            (!user.is_empty() && user.len() <= MAX_USER_LEN).then(|| Channel::User(Arc::from(user)))
        } else {
            None
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Room(r) => write!(f, "room:{}", r.as_str()),
            Channel::User(u) => write!(f, "user:{u}"),
            Channel::Broadcast => f.write_str("broadcast"),
        }
    }
}

/// A request id chosen by the client and echoed in the reply: any JSON scalar.
pub type RequestId = serde_json::Value;

/// A decoded, shape-checked client frame (names not yet validated).
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    /// Join a room, resuming from `since` when given.
    Subscribe {
        /// Requested room, validated by the session.
        room: String,
        /// Echoed in the reply.
        id: Option<RequestId>,
        /// The last position the client saw of this room.
        since: Option<Since>,
    },
    /// Leave a room.
    Unsubscribe {
        /// Room to leave.
        room: String,
        /// Echoed in the reply.
        id: Option<RequestId>,
    },
    /// Publish `data` (JSON bytes) to a room.
    Publish {
        /// Target room.
        room: String,
        /// The payload as JSON text, ready to hand to the broker.
        data: bytes::Bytes,
        /// Echoed in the reply.
        id: Option<RequestId>,
    },
    /// Replace the connection's token (same `sub`).
    Refresh {
        /// The new JWT.
        token: String,
        /// Echoed in the reply.
        id: Option<RequestId>,
    },
    /// Application-level ping; answered with `pong`.
    Ping {
        /// Echoed in the reply.
        id: Option<RequestId>,
    },
    /// Who is in a room (contract section 7).
    Presence {
        /// The room.
        room: String,
        /// Echoed in the reply.
        id: Option<RequestId>,
    },
}

/// Error codes of `error` frames. `code()` is the wire string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed JSON/MessagePack, unknown `type`, missing field.
    BadFrame,
    /// Room name outside the contract's alphabet or length.
    BadRoom,
    /// The token's grants do not allow this room.
    Forbidden,
    /// The socket is already in `limits.max_rooms_per_socket` rooms.
    TooManyRooms,
    /// Inbound message rate exceeded; the frame was dropped.
    RateLimited,
    /// A `refresh` token failed verification.
    BadToken,
    /// A `refresh` token names another user.
    SubMismatch,
    /// The broker could not take the subscription or publication.
    BrokerUnavailable,
    /// The node is overloaded; retry later.
    Overloaded,
    /// A published payload is too large in one of the wire encodings.
    TooLarge,
}

impl ErrorCode {
    /// The wire string, also the metric label.
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::SubMismatch => "sub_mismatch",
            ErrorCode::BrokerUnavailable => "broker_unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::TooLarge => "too_large",
        }
    }

    /// Every code, for pre-registering metric label sets.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadFrame,
        ErrorCode::BadRoom,
        ErrorCode::Forbidden,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::BadToken,
        ErrorCode::SubMismatch,
        ErrorCode::BrokerUnavailable,
        ErrorCode::Overloaded,
        ErrorCode::TooLarge,
    ];
}

/// A channel's position as a reply reports it, with whether a resume
/// succeeded (`None`: no resume was asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// The channel's position; `None` for a channel without history.
    pub position: Option<Position>,
    /// Whether every missed event follows (only when the client asked).
    pub recovered: Option<bool>,
}

/// Who is in a room, across every node (contract section 7); serialized,
/// the `presence` object of the reply and of `GET /api/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct PresenceInfo {
    /// Distinct users.
    pub users: u64,
    /// Sockets.
    pub clients: u64,
    /// At most `presence.max_members` user ids.
    pub members: Vec<String>,
    /// More users than `members` lists.
    pub truncated: bool,
}

/// Server -> client frames other than events (those are encoded once, see [`Event`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// First frame on every socket.
    Welcome {
        /// Connection id.
        conn: String,
        /// The token's `sub`.
        user: Arc<str>,
        /// Node id.
        node: Arc<str>,
        /// Server ping interval in seconds.
        heartbeat: u64,
        /// The user channel's position (and resume outcome).
        user_channel: Resumed,
        /// `broadcast`'s position (and resume outcome).
        broadcast: Resumed,
    },
    /// Success reply.
    Ok {
        /// The request's id.
        id: Option<RequestId>,
    },
    /// A subscribe's reply: the room's position and the resume outcome.
    Subscribed {
        /// The request's id.
        id: Option<RequestId>,
        /// Position and outcome.
        resumed: Resumed,
    },
    /// A publish's reply: the offset history gave it.
    Published {
        /// The request's id.
        id: Option<RequestId>,
        /// `None` for a room without history.
        offset: Option<u64>,
    },
    /// A presence query's reply.
    Presence {
        /// The request's id.
        id: Option<RequestId>,
        /// Who is there.
        presence: PresenceInfo,
    },
    /// Failure reply (`id` absent: about the connection).
    Error {
        /// The request's id.
        id: Option<RequestId>,
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Reply to `ping`.
    Pong {
        /// The request's id.
        id: Option<RequestId>,
    },
    /// Continuity of `channel` was lost up to `offset`; what follows is in order.
    Resync {
        /// The channel.
        channel: Channel,
        /// Events up to here are lost for this socket.
        offset: u64,
        /// The epoch `offset` belongs to.
        epoch: Epoch,
    },
    /// A user's first socket joined a room (cluster-wide).
    Join {
        /// `room:<R>`.
        channel: Channel,
        /// The user.
        user: Arc<str>,
    },
    /// A user's last socket left a room (cluster-wide).
    Leave {
        /// `room:<R>`.
        channel: Channel,
        /// The user.
        user: Arc<str>,
    },
    /// Over SSE only: the stream is about to end (drain).
    Close {
        /// The close code a WebSocket would have carried.
        code: u16,
    },
}

/// Why a socket is being closed: the contract's close-code table in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// 1000
    Normal,
    /// 1001: the peer stopped answering heartbeats.
    HeartbeatTimeout,
    /// 1002: the peer broke the WebSocket framing rules (reserved opcode or
    /// bits, unmasked frame, oversized or fragmented control frame, stray
    /// continuation).
    ProtocolError,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    /// 1012: node draining; reconnect elsewhere with jitter.
    Draining,
    /// 1012: disconnected by the server API with `reconnect: true`.
    Reconnect,
    /// 1008: repeated bad frames.
    PolicyViolation,
    /// 1009: a frame above `websocket.max_frame_bytes`.
    TooBig,
    /// 1011: internal error.
    Internal,
    /// 4001: token expired without refresh.
    TokenExpired,
    /// 4001: the token was revoked (server API).
    TokenRevoked,
    /// 4003: disconnected by the server API; do not reconnect with the same credentials.
    Kicked,
    /// 4008: outbound queue overflowed.
    SlowConsumer,
    /// 4029: inbound rate exceeded repeatedly.
    RateLimited,
}

impl Disconnect {
    /// WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Disconnect::Normal => 1000,
            Disconnect::HeartbeatTimeout => 1001,
            Disconnect::ProtocolError => 1002,
            Disconnect::InvalidPayload => 1007,
            Disconnect::Draining | Disconnect::Reconnect => 1012,
            Disconnect::PolicyViolation => 1008,
            Disconnect::TooBig => 1009,
            Disconnect::Internal => 1011,
            Disconnect::TokenExpired | Disconnect::TokenRevoked => 4001,
            Disconnect::Kicked => 4003,
            Disconnect::SlowConsumer => 4008,
            Disconnect::RateLimited => 4029,
        }
    }

    /// Close reason text sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            Disconnect::Normal => "bye",
            Disconnect::HeartbeatTimeout => "heartbeat timeout",
            Disconnect::ProtocolError => "protocol error",
            Disconnect::InvalidPayload => "invalid UTF-8 in a text frame",
            Disconnect::Draining => "node draining, reconnect",
            Disconnect::Reconnect => "disconnected by the server, reconnect",
            Disconnect::PolicyViolation => "policy violation",
            Disconnect::TooBig => "frame too large",
            Disconnect::Internal => "internal error",
            Disconnect::TokenExpired => "token expired",
            Disconnect::TokenRevoked => "token revoked",
            Disconnect::Kicked => "disconnected by the server",
            Disconnect::SlowConsumer => "slow consumer",
            Disconnect::RateLimited => "rate limited",
        }
    }

    /// Every variant, for pre-registering metric label sets.
    pub const ALL: [Disconnect; 14] = [
        Disconnect::Normal,
        Disconnect::HeartbeatTimeout,
        Disconnect::ProtocolError,
        Disconnect::InvalidPayload,
        Disconnect::Draining,
        Disconnect::Reconnect,
        Disconnect::PolicyViolation,
        Disconnect::TooBig,
        Disconnect::Internal,
        Disconnect::TokenExpired,
        Disconnect::TokenRevoked,
        Disconnect::Kicked,
        Disconnect::SlowConsumer,
        Disconnect::RateLimited,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_contract_alphabet() {
        for ok in ["lobby", "team-42:x", "a.b@c_d", &"r".repeat(128)] {
            assert!(RoomName::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "has space", "é", "a/b", "a*", &"r".repeat(129)] {
            assert!(RoomName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn channels_round_trip_through_their_names() {
        for name in ["room:lobby", "user:alice", "broadcast"] {
            assert_eq!(Channel::parse(name).unwrap().to_string(), name);
        }
        for bad in ["room:", "room:a b", "user:", "other:x", "broadcast2"] {
            assert!(Channel::parse(bad).is_none(), "{bad}");
        }
    }
}
