//! The node's side of the cluster's control plane, in one task: it applies
//! control messages (disconnect a user, revoke tokens) to this node's
//! sockets, loads the stored revocations whenever the broker comes up (a
//! node started later, or one that was cut off while a revocation went out,
//! refuses those tokens too), forgets revocations whose tokens have expired,
//! and keeps this node's entry in the node registry fresh.
//!
//! Messages reach it from the hub's pump (the broker's inbound queue), so
//! they travel the same bridge and reconciler as every publication.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::broker::BrokerState;
use crate::cluster::{Control, NodeInfo, Revocation};
use crate::hub::Owner;
use crate::lifecycle::Phase;
use crate::node::Node;
use crate::protocol::Disconnect;

/// Control messages queued between the pump and this task.
pub const QUEUE: usize = 1024;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Whether `owner`'s token is one `revocation` covers.
pub fn covers(revocation: &Revocation, owner: &Owner) -> bool {
    match revocation {
        Revocation::Jti { jti, .. } => owner.jti.as_deref() == Some(jti.as_str()),
        Revocation::User {
            user,
            issued_before,
            ..
        } => &*owner.user == user && owner.issued_at.is_none_or(|iat| iat < *issued_before),
    }
}

/// Applies one control message to this node.
pub fn apply(node: &Node, message: &Control) {
    match message {
        Control::Disconnect { user, reconnect } => {
            node.metrics.disconnects_applied.inc();
            let reason = if *reconnect {
                Disconnect::Reconnect
            } else {
                Disconnect::Kicked
            };
            let closed = node.hub.close_where(|o| &*o.user == user, reason);
            node.metrics.api_closes.inc_by(closed as u64);
            tracing::info!(closed, reconnect, "disconnect applied");
        }
        Control::Revoke { revocation } => revoke(node, revocation),
    }
}

fn revoke(node: &Node, revocation: &Revocation) {
    node.metrics.revocations_applied.inc();
    node.revocations.apply(revocation);
    node.metrics
        .revocations_held
        .set(node.revocations.len() as i64);
    let closed = node
        .hub
        .close_where(|o| covers(revocation, o), Disconnect::TokenRevoked);
    node.metrics.api_closes.inc_by(closed as u64);
    if closed > 0 {
        tracing::info!(closed, "revocation closed sockets");
    }
}

/// This node as the registry lists it.
pub fn info(node: &Node) -> NodeInfo {
    let sizes = node.hub.sizes();
    NodeInfo {
        id: node.id.to_string(),
        sockets: sizes.conns as u64,
        channels: sizes.channels as u64,
        draining: node.lifecycle.phase() != Phase::Running,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: node.started.elapsed().as_secs(),
    }
}

/// Runs until the pump closes the queue (the broker stopped).
pub async fn run(node: Arc<Node>, mut messages: mpsc::Receiver<Control>) {
    let ttl = node.config.server.registry_ttl_seconds;
    let mut tick = tokio::time::interval(Duration::from_secs(ttl).div_f64(3.0));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut broker = node.broker_state.clone();
    let mut phase = node.lifecycle.watch();
    // Seen as "changed" at once, so the first Up loads the revocations.
    broker.mark_changed();
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(message) => apply(&node, &message),
                None => break,
            },
            changed = broker.changed() => {
                if changed.is_err() {
                    break;
                }
                let up = *broker.borrow_and_update() == BrokerState::Up;
                if up {
                    load_revocations(&node).await;
                    register(&node).await;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                // A draining node says so at once, not at its next refresh.
                register(&node).await;
            }
            _ = tick.tick() => {
                node.revocations.sweep(unix_now());
                node.metrics.revocations_held.set(node.revocations.len() as i64);
                register(&node).await;
            }
        }
    }
}

async fn load_revocations(node: &Node) {
    match node.broker().revocations().await {
        Ok(all) => {
            let now = unix_now();
            for r in all.iter().filter(|r| r.expires() > now) {
                revoke(node, r);
            }
            tracing::debug!(count = all.len(), "revocations loaded");
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not load revocations; retried when the broker is back")
        }
    }
}

async fn register(node: &Node) {
    let ttl = node.config.server.registry_ttl_seconds;
    if let Err(e) = node.broker().register_node(info(node), ttl).await {
        tracing::debug!(error = %e, "registry refresh failed");
        return;
    }
    if let Ok(nodes) = node.broker().nodes().await {
        node.metrics.registry_nodes.set(nodes.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(user: &str, jti: Option<&str>, iat: Option<u64>) -> Owner {
        Owner {
            user: user.into(),
            jti: jti.map(Into::into),
            issued_at: iat,
        }
    }

    #[test]
    fn revocations_cover_their_tokens_only() {
        let by_jti = Revocation::Jti {
            jti: "t1".into(),
            expires: 9,
        };
        assert!(covers(&by_jti, &owner("a", Some("t1"), None)));
        assert!(!covers(&by_jti, &owner("a", Some("t2"), None)));
        assert!(!covers(&by_jti, &owner("a", None, None)));
        let by_user = Revocation::User {
            user: "a".into(),
            issued_before: 100,
            expires: 9,
        };
        assert!(covers(&by_user, &owner("a", None, Some(99))));
        assert!(covers(&by_user, &owner("a", None, None)));
        assert!(!covers(&by_user, &owner("a", None, Some(100))));
        assert!(!covers(&by_user, &owner("b", None, Some(1))));
    }
}
