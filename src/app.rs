//! The composition root: `build` binds the port and wires the parts (broker,
//! hub, auth, limits, metrics) into a [`Node`]; `run` serves until the node
//! starts draining, then drains under a deadline. `serve` is the `gateway
//! serve` command: logging, open-files limit, runtime, signals, exit code.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::{Revocations, Verifier};
use crate::broker::{BrokerState, MemoryBroker, RedisBroker, RedisSettings, SharedBroker};
use crate::config::{
    BrokerKind, Config, ConfigError, Deep, LoadOptions, Loaded, LogFormat, Problem,
};
use crate::continuity::RetentionRules;
use crate::hub::{EVENT_ENVELOPE, Hub};
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::presence::Presence;

/// Time allowed after the drain window for the last sockets to flush and close.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Time allowed for the broker and the background tasks to stop after the drain.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why the node could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid (only from [`build`], which checks it).
    Config(ConfigError),
    /// `server.listen` could not be bound.
    Bind(String, std::io::Error),
    /// Metrics registration failed (a name registered twice).
    Metrics(prometheus::Error),
    /// The configured broker cannot be built.
    Broker(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "invalid configuration: {e}"),
            StartError::Bind(addr, e) => write!(f, "server.listen: cannot bind {addr}: {e}"),
            StartError::Metrics(e) => write!(f, "metrics: {e}"),
            StartError::Broker(e) => write!(f, "broker: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// What the configuration check builds: key material and broker settings.
#[derive(Debug)]
pub struct Parts {
    /// Token verification, keys loaded.
    pub verifier: Verifier,
    /// Which broker to start, validated.
    pub broker: BrokerPlan,
}

/// The broker a node starts.
#[derive(Debug)]
pub enum BrokerPlan {
    /// The embedded broker.
    Memory,
    /// The Redis bridge with these settings.
    Redis(Box<RedisSettings>),
}

/// The one validation path: loads the configuration (file, environment,
/// flags) and checks all of it, key files and Redis settings included,
/// reporting every problem at once. `gateway check-config`, `gateway serve`
/// and `gateway token` all come here.
pub fn check(opts: &LoadOptions) -> Result<Loaded<Parts>, ConfigError> {
    crate::config::load(opts, prepare)
}

/// The checks of [`check`] that need the components' own knowledge.
pub(crate) fn prepare(config: &Config) -> Deep<Parts> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let verifier = match Verifier::from_config(&config.auth) {
        Ok(v) => {
            warnings.extend(v.warnings().iter().cloned());
            Some(v)
        }
        Err(errors) => {
            problems.extend(errors.iter().map(|e| Problem::new(e.key(), e.detail())));
            None
        }
    };
    let broker = match config.broker.kind {
        BrokerKind::Memory => Some(BrokerPlan::Memory),
        BrokerKind::Redis => match RedisSettings::from_config(&config.broker.redis) {
            Ok(settings) => Some(BrokerPlan::Redis(Box::new(settings))),
            Err(p) => {
                problems.extend(p);
                None
            }
        },
    };
    match (verifier, broker) {
        (Some(verifier), Some(broker)) if problems.is_empty() => {
            Ok((Parts { verifier, broker }, warnings))
        }
        _ => Err(problems),
    }
}

/// A built node with its bound listener, ready to run.
pub struct Gateway {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Shared node state (tests read its tables and metrics).
    pub node: Arc<Node>,
    listener: TcpListener,
}

/// Checks `config` like [`check`] does, then binds and wires a node.
/// `socket_capacity` is the most sockets it admits.
pub async fn build(
    config: Config,
    registry: prometheus::Registry,
    socket_capacity: usize,
) -> Result<Gateway, StartError> {
    let (parts, _) =
        prepare(&config).map_err(|problems| StartError::Config(ConfigError { problems }))?;
    build_with(config, parts, registry, socket_capacity).await
}

/// Binds and wires a node from a checked configuration.
pub async fn build_with(
    config: Config,
    parts: Parts,
    registry: prometheus::Registry,
    socket_capacity: usize,
) -> Result<Gateway, StartError> {
    let listener = bind(&config.server.listen)
        .map_err(|e| StartError::Bind(config.server.listen.clone(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.server.listen.clone(), e))?;
    let node = wire(config, parts, registry, socket_capacity)?;
    Ok(Gateway {
        addr,
        node,
        listener,
    })
}

/// Wires the parts of a node (broker, hub, limits, metrics, lifecycle)
/// without a listener, and starts its background tasks.
pub fn wire(
    config: Config,
    parts: Parts,
    registry: prometheus::Registry,
    socket_capacity: usize,
) -> Result<Arc<Node>, StartError> {
    let metrics = Metrics::new(&registry).map_err(StartError::Metrics)?;
    let rules = RetentionRules::new(&config.history);
    let capacity = config.broker.queue_capacity;
    let (broker, inbound): (SharedBroker, _) = match parts.broker {
        BrokerPlan::Memory => {
            let (broker, inbound) = MemoryBroker::with_history(capacity, rules);
            (broker, inbound)
        }
        BrokerPlan::Redis(settings) => {
            let (broker, inbound) = RedisBroker::start(
                *settings,
                rules,
                &config.presence,
                capacity,
                metrics.clone(),
            )
            .map_err(|e| StartError::Broker(e.to_string()))?;
            (broker, inbound)
        }
    };
    Ok(assemble(
        config,
        parts.verifier,
        broker,
        inbound,
        metrics,
        registry,
        socket_capacity,
    ))
}

/// Puts a node together around a built broker and starts its background
/// tasks (the seam unit tests use to bring a broker of their own).
pub(crate) fn assemble(
    config: Config,
    verifier: Verifier,
    broker: SharedBroker,
    inbound: crate::broker::Inbound,
    metrics: Metrics,
    registry: prometheus::Registry,
    socket_capacity: usize,
) -> Arc<Node> {
    let broker_state = broker.state();
    let event_limit = config
        .websocket
        .outbox_max_bytes
        .saturating_sub(EVENT_ENVELOPE);
    let rules = RetentionRules::new(&config.history);
    let hub = Arc::new(Hub::with_history(
        broker.clone(),
        metrics.clone(),
        event_limit,
        rules,
    ));
    let lifecycle = Lifecycle::new();
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(crate::control::QUEUE);
    lifecycle.spawn_background(hub.clone().pump(inbound, control_tx));
    lifecycle.spawn_background(broker_gauge(broker_state.clone(), metrics.clone()));
    metrics.socket_capacity.set(socket_capacity as i64);
    let id: Arc<str> = if config.server.node_id.is_empty() {
        default_node_id().into()
    } else {
        config.server.node_id.as_str().into()
    };
    let limits = Arc::new(Limits::new(&config.limits, socket_capacity));
    let presence = Arc::new(Presence::new(
        id.clone(),
        broker,
        &config.presence,
        metrics.clone(),
    ));
    lifecycle.spawn_background(presence.clone().run());
    let node = Arc::new(Node {
        id,
        config,
        hub,
        verifier,
        limits,
        metrics,
        registry,
        lifecycle,
        broker_state,
        presence,
        revocations: Revocations::default(),
        started: std::time::Instant::now(),
    });
    node.lifecycle
        .spawn_background(crate::control::run(node.clone(), control_rx));
    node
}

impl Gateway {
    /// Serves until the node starts draining (a signal, or
    /// `node.lifecycle.begin_drain()`), then closes every socket with 1012 over
    /// `server.drain_seconds`. Returns whether every socket finished in time.
    pub async fn run(self) -> bool {
        let Gateway { node, listener, .. } = self;
        let accept = tokio::spawn(crate::http::serve(listener, node.clone()));
        let mut phase = node.lifecycle.watch();
        let _ = phase
            .wait_for(|p| *p != crate::lifecycle::Phase::Running)
            .await;
        node.metrics.draining.set(1);
        node.metrics.ready.set(0);
        let _ = accept.await;
        let window = Duration::from_secs(node.config.server.drain_seconds);
        tracing::info!(
            sockets = node.hub.sizes().conns,
            window_s = window.as_secs(),
            "draining"
        );
        let finished = node.lifecycle.drain(&node.hub, window, DRAIN_GRACE).await;
        tracing::info!(finished, "drained");
        // The leaves of the sockets just closed, before the broker goes.
        if tokio::time::timeout(STOP_GRACE, node.presence.flush())
            .await
            .is_err()
        {
            tracing::warn!("last presence changes not sent in time");
        }
        // The broker's tasks first (its readers feed the pump), then ours.
        if tokio::time::timeout(STOP_GRACE, node.broker().close())
            .await
            .is_err()
        {
            tracing::warn!("broker tasks did not stop in time");
        }
        if !node.lifecycle.stop_background(STOP_GRACE).await {
            tracing::warn!("background tasks did not stop in time");
        }
        finished
    }
}

/// Listen backlog asked for; the kernel caps it at `net.core.somaxconn`.
/// tokio's default (1024) drops SYNs in a connection storm, and each dropped
/// SYN costs the client a 1 s retransmit.
const LISTEN_BACKLOG: u32 = 65_535;

fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn broker_gauge(mut state: tokio::sync::watch::Receiver<BrokerState>, metrics: Metrics) {
    loop {
        let up = *state.borrow_and_update() == BrokerState::Up;
        metrics.broker_up.set(i64::from(up));
        if state.changed().await.is_err() {
            break;
        }
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", std::process::id())
}

/// Raises the soft open-files limit to the hard limit and derives how many
/// sockets the node may hold, keeping `fd_reserve` descriptors free.
pub fn socket_capacity(cfg: &Config) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let available = limit.saturating_sub(cfg.server.fd_reserve).max(1);
    let capacity = match cfg.server.max_connections {
        0 => available,
        n if n > available => {
            tracing::warn!(
                configured = n,
                available,
                "server.max_connections exceeds the open-files limit; capped"
            );
            available
        }
        n => n,
    };
    tracing::info!(
        open_files_limit = limit,
        socket_capacity = capacity,
        "socket capacity"
    );
    capacity as usize
}

/// `gateway serve`: runs the node until SIGTERM/SIGINT, then drains and exits 0.
pub fn serve(loaded: Loaded<Parts>) -> ExitCode {
    let Loaded {
        config,
        source,
        warnings,
        parts,
    } = loaded;
    init_tracing(&config);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let capacity = socket_capacity(&config);
        let gateway =
            match build_with(config, parts, prometheus::Registry::new(), capacity).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("gateway: {e}");
                    return ExitCode::from(2);
                }
            };
        tracing::info!(addr = %gateway.addr, node = %gateway.node.id, config = %source, "listening");
        let lifecycle = gateway.node.lifecycle.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            lifecycle.begin_drain();
        });
        gateway.run().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Crates whose TRACE output prints frame or command contents (a `refresh`
/// frame's token, a published payload): capped at DEBUG whatever `RUST_LOG`
/// or `log.level` say, because the contract keeps tokens out of the log.
const CONTENT_TRACERS: [&str; 5] = [
    "tungstenite",
    "tokio_tungstenite",
    "fred",
    "hyper",
    "rustls",
];

/// The log filter: `RUST_LOG` (else `log.level`), with [`CONTENT_TRACERS`]
/// capped at DEBUG on top of it.
pub fn log_filter(
    config: &Config,
) -> impl tracing_subscriber::layer::Filter<tracing_subscriber::Registry> + use<> {
    use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
    let env =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let capped = CONTENT_TRACERS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, LevelFilter::DEBUG),
    );
    env.and(capped)
}

fn init_tracing(config: &Config) {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match config.log.format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter(config)))
        .try_init();
}
