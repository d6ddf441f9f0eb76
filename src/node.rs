//! The node's shared state, built once by `app` and handed to every HTTP
//! connection and socket session behind an `Arc`. It owns nothing mutable
//! itself: each table lives in the module that owns it (hub, limits).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::auth::{Revocations, Verifier};
use crate::broker::{BrokerState, SharedBroker};
use crate::config::Config;
use crate::hub::Hub;
use crate::lifecycle::{Lifecycle, Phase};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::presence::Presence;

/// Everything a connection needs, shared.
pub struct Node {
    /// Node id, reported in `welcome`.
    pub id: Arc<str>,
    /// The validated configuration.
    pub config: Config,
    /// Session tables and fan-out.
    pub hub: Arc<Hub>,
    /// Token verification.
    pub verifier: Verifier,
    /// Admission limits.
    pub limits: Arc<Limits>,
    /// Metrics.
    pub metrics: Metrics,
    /// The registry `metrics` lives on, rendered by `/metrics`.
    pub registry: prometheus::Registry,
    /// Phase, drain, session tracking.
    pub lifecycle: Lifecycle,
    /// The broker's state.
    pub broker_state: watch::Receiver<BrokerState>,
    /// This node's presence (sockets per user and room, sent in batches).
    pub presence: Arc<Presence>,
    /// Revoked tokens, held in memory (fed by `control`).
    pub revocations: Revocations,
    /// When the node started (uptime in the registry).
    pub started: Instant,
}

/// Why the node is not ready for new sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Draining or stopped.
    Draining,
    /// The broker is down.
    BrokerDown,
    /// At socket capacity.
    Full,
}

impl NotReady {
    /// Text for `/readyz` and refusals.
    pub fn message(self) -> &'static str {
        match self {
            NotReady::Draining => "node is draining",
            NotReady::BrokerDown => "broker unavailable",
            NotReady::Full => "node at connection capacity",
        }
    }
}

impl Node {
    /// The broker in use.
    pub fn broker(&self) -> &SharedBroker {
        self.hub.broker()
    }

    /// Ready for new sockets: not draining, broker up, below capacity.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.lifecycle.phase() != Phase::Running {
            return Err(NotReady::Draining);
        }
        if *self.broker_state.borrow() != BrokerState::Up {
            return Err(NotReady::BrokerDown);
        }
        if self.limits.is_full() {
            return Err(NotReady::Full);
        }
        Ok(())
    }
}
