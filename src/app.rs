//! The composition root: `build` binds the port and wires the parts (broker,
//! hub, auth, limits, metrics) into a [`Node`]; `run` serves until the node
//! starts draining, then drains under a deadline. `serve` is the `gateway
//! serve` command: logging, open-files limit, runtime, signals, exit code.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::{AuthSetupError, Verifier};
use crate::broker::{BrokerState, MemoryBroker, SharedBroker};
use crate::config::{Config, Loaded};
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::node::Node;

/// Time allowed after the drain window for the last sockets to flush and close.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Why the node could not start.
#[derive(Debug)]
pub enum StartError {
    /// `server.listen` could not be bound.
    Bind(String, std::io::Error),
    /// Key material did not load.
    Auth(AuthSetupError),
    /// Metrics registration failed (a name registered twice).
    Metrics(prometheus::Error),
    /// The configured broker cannot be built.
    Broker(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "server.listen: cannot bind {addr}: {e}"),
            StartError::Auth(e) => write!(f, "{e}"),
            StartError::Metrics(e) => write!(f, "metrics: {e}"),
            StartError::Broker(e) => write!(f, "broker: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A built node with its bound listener, ready to run.
pub struct Gateway {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Shared node state (tests read its tables and metrics).
    pub node: Arc<Node>,
    listener: TcpListener,
}

/// Binds and wires a node. `socket_capacity` is the most sockets it admits.
pub async fn build(
    config: Config,
    registry: prometheus::Registry,
    socket_capacity: usize,
) -> Result<Gateway, StartError> {
    let listener = bind(&config.server.listen)
        .map_err(|e| StartError::Bind(config.server.listen.clone(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.server.listen.clone(), e))?;
    let metrics = Metrics::new(&registry).map_err(StartError::Metrics)?;
    let verifier = Verifier::from_config(&config.auth).map_err(StartError::Auth)?;
    let (broker, inbound): (SharedBroker, _) = match config.broker.kind.as_str() {
        "memory" => {
            let (broker, inbound) = MemoryBroker::new(config.broker.queue_capacity);
            (broker, inbound)
        }
        "redis" => {
            let (broker, inbound) =
                crate::broker::RedisBroker::start(&config.broker, metrics.clone())
                    .map_err(|e| StartError::Broker(e.to_string()))?;
            (broker, inbound)
        }
        other => {
            return Err(StartError::Broker(format!(
                "broker.kind = {other:?} is not available in this build"
            )));
        }
    };
    let broker_state = broker.state();
    let hub = Arc::new(Hub::new(broker, metrics.clone()));
    tokio::spawn(hub.clone().pump(inbound));
    spawn_broker_gauge(broker_state.clone(), metrics.clone());
    metrics.socket_capacity.set(socket_capacity as i64);
    let id: Arc<str> = if config.server.node_id.is_empty() {
        default_node_id().into()
    } else {
        config.server.node_id.as_str().into()
    };
    let limits = Arc::new(Limits::new(&config.limits, socket_capacity));
    let node = Arc::new(Node {
        id,
        config,
        hub,
        verifier,
        limits,
        metrics,
        registry,
        lifecycle: Lifecycle::new(),
        broker_state,
    });
    Ok(Gateway {
        addr,
        node,
        listener,
    })
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

fn spawn_broker_gauge(mut state: tokio::sync::watch::Receiver<BrokerState>, metrics: Metrics) {
    tokio::spawn(async move {
        loop {
            let up = *state.borrow_and_update() == BrokerState::Up;
            metrics.broker_up.set(i64::from(up));
            if state.changed().await.is_err() {
                break;
            }
        }
    });
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
pub fn serve(loaded: Loaded) -> ExitCode {
    let Loaded {
        config,
        source,
        warnings,
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
        let gateway = match build(config, prometheus::Registry::new(), capacity).await {
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

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
