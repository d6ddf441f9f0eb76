//! Every metric the node exports, registered on a `Registry` the caller owns
//! (tests run many gateways in one process). Labels are low-cardinality
//! reasons, types and codes only: never room or user names.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::auth::AuthError;
use crate::protocol::{Disconnect, End, EndedBy, ErrorCode, Refusal};

/// Frame types of `gateway_frames_in_total`.
pub const FRAME_TYPES: [&str; 7] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "refresh",
    "ping",
    "presence",
    "invalid",
];

/// Sources of `gateway_publications_in_total`.
pub const SOURCES: [&str; 3] = ["http", "client", "broker"];

/// Kinds of `gateway_protocol_violations_total`: how a peer broke RFC 6455.
pub const VIOLATIONS: [&str; 8] = [
    "utf8",
    "reserved_bits",
    "reserved_opcode",
    "unmasked",
    "control_frame",
    "continuation",
    "close_frame",
    "other",
];

/// Reasons of `gateway_events_dropped_total`.
pub const DROP_REASONS: [&str; 3] = ["too_large", "duplicate", "held_full"];

/// Outcomes of `gateway_history_recoveries_total`.
pub const RECOVERY_OUTCOMES: [&str; 2] = ["recovered", "not_recovered"];

/// Outcomes of `gateway_history_gaps_total`.
pub const GAP_OUTCOMES: [&str; 2] = ["repaired", "resync"];

/// Kinds of `gateway_presence_calls_total`: one Redis command (FCALL) each.
/// `full` sends a node's whole state for a room, `update` its changes,
/// `refresh` only extends its entries' life.
pub const PRESENCE_CALLS: [&str; 3] = ["full", "update", "refresh"];

/// Outcomes of `gateway_presence_calls_total`'s calls that failed or were
/// refused (`gateway_presence_errors_total`).
pub const PRESENCE_ERRORS: [&str; 2] = ["unknown", "failed"];

/// Kinds of `gateway_http_errors_total`: requests hyper ended before a route.
pub const HTTP_ERRORS: [&str; 4] = ["head_too_large", "head_timeout", "malformed", "other"];

/// The node's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Open sessions, WebSocket and SSE.
    pub sockets_open: IntGauge,
    /// Of those, SSE streams.
    pub sse_streams_open: IntGauge,
    /// Sockets this node admits at most.
    pub socket_capacity: IntGauge,
    /// Upgrades accepted.
    pub upgrades_accepted: IntCounter,
    /// Upgrades refused, by reason.
    pub upgrades_refused: IntCounterVec,
    /// Token verification failures (upgrade and refresh), by reason.
    pub auth_failures: IntCounterVec,
    /// Inbound frames, by type.
    pub frames_in: IntCounterVec,
    /// Frames written to sockets.
    pub frames_out: IntCounter,
    /// WebSocket messages written: frames, or batches of them (`+batch`).
    pub messages_out: IntCounter,
    /// Bytes of frames written to sockets.
    pub bytes_out: IntCounter,
    /// Publications received, by source.
    pub publications_in: IntCounterVec,
    /// Event frames queued to sockets by fan-out.
    pub deliveries: IntCounter,
    /// Publication received by the node -> frame written to the socket.
    pub fanout_latency: Histogram,
    /// Sockets closed with 4008.
    pub slow_consumer_closes: IntCounter,
    /// Server-initiated closes, by close code.
    pub closes: IntCounterVec,
    /// `error` frames sent, by code.
    pub errors_sent: IntCounterVec,
    /// Channels with at least one local subscriber.
    pub channels: IntGauge,
    /// (socket, channel) memberships.
    pub subscriptions: IntGauge,
    /// 1 while the broker is up.
    pub broker_up: IntGauge,
    /// Broker reconnects.
    pub broker_reconnects: IntCounter,
    /// Channels re-subscribed after a broker reconnect or topology change.
    pub broker_resubscribes: IntCounter,
    /// Publishes the broker failed to carry.
    pub broker_publish_errors: IntCounter,
    /// Broker publish -> receive time, measured by a probe.
    pub broker_inbound_lag: Histogram,
    /// Inbound messages dropped because the reader fell behind the broker client's buffer.
    pub broker_inbound_lost: IntCounter,
    /// Sessions ended, by who ended them.
    pub sessions_ended: IntCounterVec,
    /// WebSocket protocol violations by peers, by kind (each closed the socket).
    pub protocol_violations: IntCounterVec,
    /// Broker events not delivered, by reason.
    pub events_dropped: IntCounterVec,
    /// HTTP connections ended by a malformed or oversized request, by kind.
    pub http_errors: IntCounterVec,
    /// Publications stored in history by this node's publishes.
    pub history_appends: IntCounter,
    /// Resumes asked for by clients (`since`, `user_offset`), by outcome.
    pub recoveries: IntCounterVec,
    /// Gaps this node found in a channel's stream, by how they ended.
    pub history_gaps: IntCounterVec,
    /// Events this node delivered from history to fill its own gaps.
    pub events_repaired: IntCounter,
    /// `resync` frames queued to sockets.
    pub resyncs_sent: IntCounter,
    /// Time of one history read from the broker.
    pub history_read_latency: Histogram,
    /// Presence calls to the broker (one Redis command each), by kind.
    pub presence_calls: IntCounterVec,
    /// Presence calls the broker refused (`unknown`: it had lost this node's
    /// entries) or that failed.
    pub presence_errors: IntCounterVec,
    /// Presence queries (frames and `GET /api/presence`).
    pub presence_queries: IntCounter,
    /// Disconnect messages applied by this node.
    pub disconnects_applied: IntCounter,
    /// Revocations applied by this node (control channel and start-up load).
    pub revocations_applied: IntCounter,
    /// Revocations this node holds in memory.
    pub revocations_held: IntGauge,
    /// Sockets this node closed because of a disconnect or a revocation.
    pub api_closes: IntCounter,
    /// Live nodes in the registry, as this node last read it.
    pub registry_nodes: IntGauge,
    /// 1 while draining.
    pub draining: IntGauge,
    /// 1 while ready for new sockets.
    pub ready: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric on `registry`, with every label set
    /// pre-initialised so dashboards and alerts see zeros, not gaps.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            for v in values {
                c.with_label_values(&[*v]);
            }
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let codes: Vec<String> = Disconnect::ALL
            .iter()
            .map(|d| d.code().to_string())
            .collect();
        let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
        let errors: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        let auth: Vec<&str> = AuthError::ALL.iter().map(|e| e.reason()).collect();
        let ended: Vec<&str> = EndedBy::ALL.iter().map(|e| e.label()).collect();

        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Metrics {
            sockets_open: gauge(
                "gateway_sockets_open",
                "Open sessions (WebSocket sockets and SSE streams)",
            )?,
            sse_streams_open: gauge(
                "gateway_sse_streams_open",
                "Open SSE streams (also counted in gateway_sockets_open)",
            )?,
            socket_capacity: gauge(
                "gateway_socket_capacity",
                "Sockets this node admits at most",
            )?,
            upgrades_accepted: counter(
                "gateway_upgrades_accepted_total",
                "WebSocket upgrades accepted",
            )?,
            upgrades_refused: counter_vec(
                "gateway_upgrades_refused_total",
                "WebSocket upgrades refused before the upgrade, by reason",
                "reason",
                &Refusal::codes(),
            )?,
            auth_failures: counter_vec(
                "gateway_auth_failures_total",
                "Token verification failures, by reason",
                "reason",
                &auth,
            )?,
            frames_in: counter_vec(
                "gateway_frames_in_total",
                "Inbound frames, by type",
                "type",
                &FRAME_TYPES,
            )?,
            frames_out: counter("gateway_frames_out_total", "Frames written to sockets")?,
            messages_out: counter(
                "gateway_messages_out_total",
                "WebSocket messages written to sockets: one per frame, or one per batch of frames on +batch sockets",
            )?,
            bytes_out: counter(
                "gateway_bytes_out_total",
                "Bytes of frames written to sockets",
            )?,
            publications_in: counter_vec(
                "gateway_publications_in_total",
                "Publications received, by source",
                "source",
                &SOURCES,
            )?,
            deliveries: counter(
                "gateway_deliveries_total",
                "Event frames queued to sockets by fan-out",
            )?,
            fanout_latency: histogram(
                "gateway_fanout_latency_seconds",
                "Publication received by the node until its frame is written to the socket (oldest frame of each written batch)",
                latency_buckets.clone(),
            )?,
            slow_consumer_closes: counter(
                "gateway_slow_consumer_closes_total",
                "Sockets closed with 4008 because their outbound queue overflowed",
            )?,
            closes: counter_vec(
                "gateway_closes_total",
                "Server-initiated closes, by close code",
                "code",
                &codes,
            )?,
            errors_sent: counter_vec(
                "gateway_errors_sent_total",
                "Error frames sent, by code",
                "code",
                &errors,
            )?,
            channels: gauge(
                "gateway_channels",
                "Channels with at least one local subscriber",
            )?,
            subscriptions: gauge(
                "gateway_subscriptions",
                "Socket-channel memberships on this node",
            )?,
            broker_up: gauge("gateway_broker_up", "1 while the broker is connected")?,
            broker_reconnects: counter("gateway_broker_reconnects_total", "Broker reconnects")?,
            broker_resubscribes: counter(
                "gateway_broker_resubscribes_total",
                "Channels re-subscribed after a broker reconnect or topology change",
            )?,
            broker_publish_errors: counter(
                "gateway_broker_publish_errors_total",
                "Publishes the broker failed to carry",
            )?,
            broker_inbound_lag: histogram(
                "gateway_broker_inbound_lag_seconds",
                "Broker publish to receive time, measured by the liveness probe",
                latency_buckets,
            )?,
            broker_inbound_lost: counter(
                "gateway_broker_inbound_lost_total",
                "Inbound broker messages dropped because the reader fell behind the client's buffer",
            )?,
            sessions_ended: counter_vec(
                "gateway_sessions_ended_total",
                "Sessions ended, by who ended them (client, network, server, policy)",
                "by",
                &ended,
            )?,
            protocol_violations: counter_vec(
                "gateway_protocol_violations_total",
                "WebSocket protocol violations by peers (each closed with 1002 or 1007), by kind",
                "kind",
                &VIOLATIONS,
            )?,
            events_dropped: counter_vec(
                "gateway_events_dropped_total",
                "Broker events not delivered, by reason",
                "reason",
                &DROP_REASONS,
            )?,
            http_errors: counter_vec(
                "gateway_http_errors_total",
                "HTTP connections ended by a malformed, slow or oversized request head, by kind",
                "kind",
                &HTTP_ERRORS,
            )?,
            history_appends: counter(
                "gateway_history_appends_total",
                "Publications stored in history through this node (HTTP API and client publishes)",
            )?,
            recoveries: counter_vec(
                "gateway_history_recoveries_total",
                "Resumes asked for by clients (subscribe since, user_offset at connect), by outcome",
                "outcome",
                &RECOVERY_OUTCOMES,
            )?,
            history_gaps: counter_vec(
                "gateway_history_gaps_total",
                "Gaps this node found in a channel's offsets (reconnects, failovers, lagging readers), by outcome: repaired from history, or resync sent",
                "outcome",
                &GAP_OUTCOMES,
            )?,
            events_repaired: counter(
                "gateway_history_repaired_total",
                "Events this node delivered from history to fill its own gaps",
            )?,
            resyncs_sent: counter(
                "gateway_resyncs_sent_total",
                "resync frames queued to sockets (continuity lost for a channel)",
            )?,
            history_read_latency: histogram(
                "gateway_history_read_seconds",
                "Time of one history read from the broker (resumes and gap repair)",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            )?,
            presence_calls: counter_vec(
                "gateway_presence_calls_total",
                "Presence calls to the broker, one Redis command each: a node's whole state for a room (full), its changes (update), or a refresh of its entries",
                "kind",
                &PRESENCE_CALLS,
            )?,
            presence_errors: counter_vec(
                "gateway_presence_errors_total",
                "Presence calls the broker answered unknown (it lost this node's entries; the whole state follows) or that failed",
                "kind",
                &PRESENCE_ERRORS,
            )?,
            presence_queries: counter(
                "gateway_presence_queries_total",
                "Presence queries (presence frames and GET /api/presence)",
            )?,
            disconnects_applied: counter(
                "gateway_disconnects_applied_total",
                "Disconnect messages (POST /api/disconnect) this node applied",
            )?,
            revocations_applied: counter(
                "gateway_revocations_applied_total",
                "Revocations this node applied (control channel and start-up load)",
            )?,
            revocations_held: gauge(
                "gateway_revocations_held",
                "Revocations this node holds in memory",
            )?,
            api_closes: counter(
                "gateway_api_closes_total",
                "Sockets this node closed because of a disconnect or a revocation",
            )?,
            registry_nodes: gauge(
                "gateway_registry_nodes",
                "Live nodes in the node registry, as this node last read it",
            )?,
            draining: gauge("gateway_draining", "1 while the node is draining")?,
            ready: gauge("gateway_ready", "1 while the node accepts new sockets")?,
        })
    }

    /// Counts the end of a session.
    pub fn session_ended(&self, end: End) {
        self.sessions_ended
            .with_label_values(&[end.by.label()])
            .inc();
    }

    /// Counts a server-initiated close.
    pub fn closed(&self, reason: Disconnect) {
        self.closes
            .with_label_values(&[&reason.code().to_string()])
            .inc();
        if reason == Disconnect::SlowConsumer {
            self.slow_consumer_closes.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn two_registries_do_not_collide_and_labels_are_preinitialised() {
        let (a, b) = (Registry::new(), Registry::new());
        Metrics::new(&a).unwrap();
        Metrics::new(&b).unwrap();
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&a.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains(r#"gateway_upgrades_refused_total{reason="draining"} 0"#));
        assert!(text.contains(r#"gateway_closes_total{code="4008"} 0"#));
    }
}
