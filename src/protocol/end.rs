//! How a connection ended, and who ended it: the one record every session's
//! exit path produces, counted in `gateway_sessions_ended_total{by}` so that
//! an operator can tell a deploy (server) from abuse (policy) from flaky
//! networks (network) from clients that simply leave (client). It sits with
//! the close codes it classifies.

use super::Disconnect;

/// Who ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The client sent a close frame.
    Client,
    /// The connection failed: reset, EOF without a close frame, a write that
    /// timed out, a peer that stopped answering heartbeats.
    Network,
    /// The node ended it: drain, the server API, an internal error.
    Server,
    /// A rule ended it: expired or revoked token, rate or size limits,
    /// protocol violations, a slow consumer.
    Policy,
}

impl EndedBy {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            EndedBy::Client => "client",
            EndedBy::Network => "network",
            EndedBy::Server => "server",
            EndedBy::Policy => "policy",
        }
    }

    /// Every value, for pre-registering the metric's label sets.
    pub const ALL: [EndedBy; 4] = [
        EndedBy::Client,
        EndedBy::Network,
        EndedBy::Server,
        EndedBy::Policy,
    ];
}

/// The end of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Who ended it.
    pub by: EndedBy,
    /// The close code the server sent, if it sent one.
    pub sent: Option<Disconnect>,
}

impl End {
    /// The server closed the socket with `reason`.
    pub fn closed(reason: Disconnect) -> End {
        let by = match reason {
            Disconnect::HeartbeatTimeout => EndedBy::Network,
            Disconnect::Normal
            | Disconnect::Draining
            | Disconnect::Reconnect
            | Disconnect::Kicked
            | Disconnect::Internal => EndedBy::Server,
            Disconnect::ProtocolError
            | Disconnect::InvalidPayload
            | Disconnect::PolicyViolation
            | Disconnect::TooBig
            | Disconnect::TokenExpired
            | Disconnect::TokenRevoked
            | Disconnect::SlowConsumer
            | Disconnect::RateLimited => EndedBy::Policy,
        };
        End {
            by,
            sent: Some(reason),
        }
    }

    /// The peer closed, or the connection failed, without a close of ours.
    pub fn by(by: EndedBy) -> End {
        End { by, sent: None }
    }
}
