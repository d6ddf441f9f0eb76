//! The configuration tree: one typed struct per `gateway.toml` section.
//!
//! Every key has a default here, and `gateway.toml` at the repository root
//! documents the same values (a test proves the two agree). Loading layers
//! file < `GATEWAY_*` environment < CLI flags, then validates the whole tree
//! and reports every bad key at once (see `config/load.rs`).

use serde::{Deserialize, Serialize};

mod env;
mod load;

pub use load::{ConfigError, DEV_HS_SECRET, Deep, LoadOptions, Loaded, Problem, load, load_tree};

/// The whole configuration of one gateway node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listener, identity, capacity, drain.
    pub server: ServerConfig,
    /// `[auth]`: JWT verification.
    pub auth: AuthConfig,
    /// `[websocket]`: per-socket protocol limits and heartbeats.
    pub websocket: WebSocketConfig,
    /// `[limits]`: admission and abuse limits.
    pub limits: LimitsConfig,
    /// `[broker]`: where publications travel between nodes.
    pub broker: BrokerConfig,
    /// `[history]`: per-channel history, offsets and resume (contract section 6).
    pub history: HistoryConfig,
    /// `[presence]`: who is in a room (contract section 7).
    pub presence: PresenceConfig,
    /// `[api]`: the HTTP server API.
    pub api: ApiConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
}

/// Keys that cannot come from a `GATEWAY_*` variable (tables in a list).
pub(crate) const FILE_ONLY: [&str; 1] = ["history.rooms"];

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the single HTTP/WebSocket port binds to.
    pub listen: String,
    /// Node id reported in `welcome`; empty = derived from host name and pid.
    pub node_id: String,
    /// Drain window: sockets are closed with 1012 spread over this many seconds.
    pub drain_seconds: u64,
    /// Maximum open sockets; 0 = derived from the open-files limit minus `fd_reserve`.
    pub max_connections: u64,
    /// File descriptors kept free for HTTP requests, Redis and logs.
    pub fd_reserve: u64,
    /// Origins allowed to open a socket (exact `scheme://host[:port]`); empty = any.
    pub allowed_origins: Vec<String>,
    /// Time allowed for a client to send its HTTP request head.
    pub handshake_timeout_ms: u64,
    /// Largest HTTP request head (request line and headers) accepted; a
    /// larger one is answered 431 before anything else is read.
    pub max_header_bytes: usize,
    /// A node that stops refreshing its entry in the node registry
    /// (`GET /api/nodes`) is gone from it within this many seconds (it
    /// refreshes a third as often).
    pub registry_ttl_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            node_id: String::new(),
            drain_seconds: 10,
            max_connections: 0,
            fd_reserve: 256,
            allowed_origins: Vec::new(),
            handshake_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            registry_ttl_seconds: 30,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted JWT algorithms (HS256/384/512, RS256/384/512, PS256, ES256/384, EdDSA).
    pub algorithms: Vec<String>,
    /// HMAC secret for HS* tokens (also what `gateway token` signs with).
    pub hs_secret: String,
    /// File holding the HMAC secret (alternative to `hs_secret`).
    pub hs_secret_file: String,
    /// PEM public key for RS*/PS*/ES*/EdDSA tokens.
    pub public_key_file: String,
    /// JWKS file; tokens select a key by `kid`.
    pub jwks_file: String,
    /// Required `iss`; empty = not checked.
    pub issuer: String,
    /// Required `aud`; empty = not checked.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_seconds: u64,
    /// Accept the token in the `?token=` query parameter (browsers cannot set headers).
    pub allow_query_token: bool,
    /// Tokens whose `exp` lies further ahead than this are refused; 0 = unlimited.
    pub max_token_lifetime_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithms: vec!["HS256".into()],
            hs_secret: String::new(),
            hs_secret_file: String::new(),
            public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_seconds: 5,
            allow_query_token: true,
            max_token_lifetime_seconds: 30 * 86_400,
        }
    }
}

/// `[websocket]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Largest inbound message (and frame); larger closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Socket read buffer; small keeps idle sockets cheap.
    pub read_buffer_bytes: usize,
    /// Server ping interval, also announced in `welcome`.
    pub heartbeat_seconds: u64,
    /// Under load, writes to one socket are at least this many ms apart, so
    /// a burst goes out in fewer, larger writes (fewer system calls per
    /// event); the first frame after a quiet spell is written at once.
    /// 0 = write as soon as anything is queued.
    pub write_coalesce_ms: u64,
    /// A peer silent for this long is closed and removed.
    pub heartbeat_timeout_seconds: u64,
    /// Outbound queue bound in frames; overflow closes with 4008.
    pub outbox_max_frames: usize,
    /// Outbound queue bound in bytes; overflow closes with 4008.
    pub outbox_max_bytes: usize,
    /// A socket write (one flushed batch) that takes longer closes the socket.
    pub write_timeout_ms: u64,
    /// Bad frames (malformed, unknown type) tolerated before closing with 1008.
    pub max_bad_frames: u32,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65_536,
            read_buffer_bytes: 256,
            heartbeat_seconds: 25,
            write_coalesce_ms: 5,
            heartbeat_timeout_seconds: 60,
            outbox_max_frames: 1024,
            outbox_max_bytes: 1 << 20,
            write_timeout_ms: 10_000,
            max_bad_frames: 10,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Rooms one socket may be subscribed to at once.
    pub max_rooms_per_socket: usize,
    /// Sockets one user (`sub`) may hold on this node; 0 = unlimited.
    pub max_sockets_per_user: u32,
    /// Sockets one client IP may hold on this node; 0 = unlimited.
    pub max_sockets_per_ip: u32,
    /// New sockets per second accepted by this node (token bucket); 0 = unlimited.
    pub connect_rate: u32,
    /// Burst size of the connection-rate bucket.
    pub connect_burst: u32,
    /// Inbound frames per second per socket (token bucket); 0 = unlimited.
    pub messages_per_second: u32,
    /// Burst size of the per-socket message bucket.
    pub message_burst: u32,
    /// Frames refused for rate before the socket is closed with 4029.
    pub rate_limit_strikes: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rooms_per_socket: 100,
            max_sockets_per_user: 0,
            max_sockets_per_ip: 0,
            connect_rate: 10_000,
            connect_burst: 10_000,
            messages_per_second: 50,
            message_burst: 100,
            rate_limit_strikes: 20,
        }
    }
}

/// `broker.kind`: where publications travel between nodes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// The embedded in-process broker: one node, nothing else to run.
    Memory,
    /// Redis or Redis Cluster (`[broker.redis]`).
    Redis,
}

/// `broker.redis.pubsub`: which pub/sub commands the bridge uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PubSub {
    /// SSUBSCRIBE / SPUBLISH (Redis 7; a channel lives on its slot's master).
    Sharded,
    /// SUBSCRIBE / PUBLISH (a single Redis, or Redis < 7).
    Classic,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[broker]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `memory` (embedded, single node) or `redis`.
    pub kind: BrokerKind,
    /// Inbound publications buffered between the broker and the hub.
    pub queue_capacity: usize,
    /// `[broker.redis]`
    pub redis: RedisConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            queue_capacity: 65_536,
            redis: RedisConfig::default(),
        }
    }
}

/// `[broker.redis]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Seed nodes `host:port`.
    pub nodes: Vec<String>,
    /// Redis Cluster (true) or a single Redis (false).
    pub cluster: bool,
    /// `sharded` (SSUBSCRIBE/SPUBLISH) or `classic` (SUBSCRIBE/PUBLISH).
    pub pubsub: PubSub,
    /// Prefix of every channel name.
    pub prefix: String,
    /// ACL user name; empty = none.
    pub username: String,
    /// Password; empty = none.
    pub password: String,
    /// TLS to Redis.
    pub tls: bool,
    /// PEM file of the CA(s) that sign the Redis servers' certificates; empty
    /// = the system's roots. Used when `tls` is true.
    pub tls_ca_file: String,
    /// Time allowed to open a connection (TCP, TLS and AUTH).
    pub connect_timeout_ms: u64,
    /// Time allowed for a subscribe, topology or probe command.
    pub command_timeout_ms: u64,
    /// How long a first local subscriber waits for the Redis subscription
    /// before the client gets an error and the subscription is rolled back.
    pub subscribe_timeout_ms: u64,
    /// Time allowed for one batch of publishes; a batch that takes longer
    /// counts as failed in `gateway_broker_publish_errors_total`.
    pub publish_timeout_ms: u64,
    /// Publications queued for Redis; beyond it a publish is refused (overloaded).
    pub publish_queue: usize,
    /// Messages buffered per Redis connection between the socket reader and
    /// the hand-off to the hub; overflowing it loses messages.
    pub inbound_buffer: usize,
    /// Interval of the liveness probe on each subscriber connection.
    pub probe_interval_ms: u64,
    /// A connection whose probe stays silent this long is rebuilt, and the
    /// broker reports Down (so `/readyz` is 503) until a probe comes back.
    pub probe_timeout_ms: u64,
    /// Interval of the full reconcile pass: slot map re-read, every
    /// subscription checked against Redis and re-established where missing.
    pub reconcile_interval_ms: u64,
    /// First reconnect delay; doubled after each failure.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_max_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:7000".into()],
            cluster: true,
            pubsub: PubSub::Sharded,
            prefix: "gw:".into(),
            username: String::new(),
            password: String::new(),
            tls: false,
            tls_ca_file: String::new(),
            connect_timeout_ms: 2_000,
            command_timeout_ms: 2_000,
            subscribe_timeout_ms: 5_000,
            publish_timeout_ms: 2_000,
            publish_queue: 65_536,
            inbound_buffer: 16_384,
            probe_interval_ms: 1_000,
            probe_timeout_ms: 3_000,
            reconcile_interval_ms: 1_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
        }
    }
}

/// `[history]`: what each channel keeps so that clients can resume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Publications kept per room channel and for `broadcast`; 0 = no history.
    pub size: usize,
    /// How long a room's publications are kept, in seconds.
    pub ttl_seconds: u64,
    /// Most events replayed to one resuming subscription; more missed is `recovered: false`.
    pub max_recover: usize,
    /// Publications kept per user channel (a per-user mailbox); 0 = none.
    pub user_size: usize,
    /// How long a user channel's publications are kept, in seconds.
    pub user_ttl_seconds: u64,
    /// How long a channel's offset and epoch outlive its last publication, in
    /// seconds: a client that missed nothing still resumes after the
    /// publications themselves expired. Past it the epoch changes.
    pub meta_ttl_seconds: u64,
    /// Per-room overrides, first match wins: `[[history.rooms]]`.
    pub rooms: Vec<RoomHistory>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl_seconds: 300,
            max_recover: 1000,
            user_size: 50,
            user_ttl_seconds: 600,
            meta_ttl_seconds: 86_400,
            rooms: Vec::new(),
        }
    }
}

/// `[[history.rooms]]`: retention for rooms matching `pattern`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoomHistory {
    /// An exact room name, or a prefix ending in `*` (the syntax of the `rooms` claim).
    pub pattern: String,
    /// Publications kept; absent = `history.size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// Seconds kept; absent = `history.ttl_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// `[presence]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// A node that dies without closing its sockets has them removed within
    /// this many seconds (each node refreshes its entries a third as often).
    pub ttl_seconds: u64,
    /// Most user ids a presence reply lists (`truncated: true` beyond).
    pub max_members: usize,
    /// Rooms that deliver `join` / `leave` frames: exact names or prefixes ending in `*`.
    pub events: Vec<String>,
    /// No `join` / `leave` while a room has more users than this.
    pub events_max_members: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ttl_seconds: 30,
            max_members: 1000,
            events: Vec::new(),
            events_max_members: 1000,
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer keys accepted by the server API (`/api/*`); empty = the API is disabled (401).
    pub keys: Vec<String>,
    /// How long a revocation is kept (set it to at least the longest token lifetime you issue).
    pub revocation_ttl_seconds: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            revocation_ttl_seconds: 86_400,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `gateway=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
