//! Building fred clients from the settings: auth, TLS (rustls), timeouts,
//! reconnect policy and bounded queues, in one place.
//!
//! Two kinds exist: a subscriber connection per master (a centralized client
//! speaking RESP3, so the same connection can answer `CLIENT INFO`, `CLUSTER
//! SLOTS` and probe publishes while subscribed) and one publisher client
//! (cluster-aware for a cluster). fred never reconnects without a policy, so
//! every client gets one.

use std::time::Duration;

use fred::clients::Client;
use fred::prelude::{Builder, Config, ReconnectPolicy, ServerConfig, TcpConfig};
use fred::types::RespVersion;
use fred::types::config::{TlsConfig, TlsConnector, TlsHostMapping};

use super::RedisSettings;
use super::topology::Addr;

/// Commands a subscriber connection may queue while it reconnects.
const SUBSCRIBER_COMMAND_BUFFER: usize = 100_000;

/// Loads the rustls client configuration: the CA file when set, else the
/// system roots. Runs once at start-up so a bad file stops the node.
pub(super) fn tls_config(ca_file: &str) -> Result<TlsConfig, String> {
    use fred::rustls::pki_types::CertificateDer;
    use fred::rustls::pki_types::pem::PemObject;

    let connector = if ca_file.is_empty() {
        TlsConnector::default_rustls()
            .map_err(|e| format!("cannot load the system's root certificates: {e}"))?
    } else {
        let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read {ca_file}: {e}"))?;
        let mut roots = fred::rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{ca_file}: not a PEM certificate: {e}"))?;
            roots.add(cert).map_err(|e| format!("{ca_file}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("{ca_file}: no certificate found"));
        }
        fred::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
            .into()
    };
    Ok(TlsConfig {
        connector,
        hostnames: TlsHostMapping::None,
    })
}

fn base_config(
    settings: &RedisSettings,
    server: ServerConfig,
    version: RespVersion,
    fail_fast: bool,
) -> Config {
    Config {
        server,
        version,
        fail_fast,
        username: settings.username.clone(),
        password: settings.password.clone(),
        tls: settings.tls.clone(),
        ..Config::default()
    }
}

fn builder(
    settings: &RedisSettings,
    config: Config,
    command_timeout: Duration,
    command_buffer: usize,
) -> Builder {
    let mut builder = Builder::from_config(config);
    let (min, max) = (
        settings.reconnect_min.as_millis() as u32,
        settings.reconnect_max.as_millis() as u32,
    );
    // max_attempts 0 = retry forever, doubling from min to max.
    builder.set_policy(ReconnectPolicy::new_exponential(
        0,
        min.max(1),
        max.max(1),
        2,
    ));
    builder.with_performance_config(|perf| {
        perf.default_command_timeout = command_timeout;
        // fred's message channel defaults to 32: a reader falling that far
        // behind silently loses messages. The reader is a cheap hand-off.
        perf.broadcast_channel_capacity = settings.inbound_buffer;
    });
    builder.with_connection_config(|conn| {
        conn.connection_timeout = settings.connect_timeout;
        conn.internal_command_timeout = settings.command_timeout;
        // Unbounded by default during an outage.
        conn.max_command_buffer_len = command_buffer;
        conn.tcp = TcpConfig {
            nodelay: Some(true),
            ..TcpConfig::default()
        };
    });
    builder
}

/// A subscriber connection to one master (not yet connected).
pub(super) fn subscriber(
    settings: &RedisSettings,
    addr: &Addr,
) -> Result<Client, fred::error::Error> {
    let (host, port) = addr.host_port();
    let config = base_config(
        settings,
        ServerConfig::new_centralized(host, port),
        RespVersion::RESP3,
        true,
    );
    builder(
        settings,
        config,
        settings.command_timeout,
        SUBSCRIBER_COMMAND_BUFFER,
    )
    .build()
}

/// The publisher client: cluster-aware for a cluster, else one connection.
/// Not fail-fast, so a Redis that is down at start-up is retried in the
/// background while publishes time out.
pub(super) fn publisher(settings: &RedisSettings) -> Result<Client, fred::error::Error> {
    let server = if settings.cluster {
        ServerConfig::new_clustered(
            settings
                .nodes
                .iter()
                .map(|a| (a.host_port().0.to_owned(), a.host_port().1))
                .collect(),
        )
    } else {
        let (host, port) = settings.nodes[0].host_port();
        ServerConfig::new_centralized(host, port)
    };
    let config = base_config(settings, server, RespVersion::RESP2, false);
    builder(
        settings,
        config,
        settings.publish_timeout,
        settings.publish_queue,
    )
    .build()
}

/// `FCALL function 1 key args...` within `timeout`, errors mapped to the
/// broker's (the cause logged at debug: the caller reports the outcome).
pub(super) async fn fcall(
    client: &Client,
    function: &'static str,
    key: fred::bytes_utils::Str,
    args: Vec<fred::types::Value>,
    timeout: Duration,
) -> Result<fred::types::Value, crate::broker::BrokerError> {
    use fred::interfaces::FunctionInterface;
    timed(
        function,
        timeout,
        client.fcall::<fred::types::Value, _, _, _>(function, vec![key], args),
    )
    .await
}

/// Runs one Redis command within `timeout`, errors mapped to the broker's.
pub(super) async fn timed<T>(
    what: &'static str,
    timeout: Duration,
    command: impl std::future::Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, crate::broker::BrokerError> {
    match tokio::time::timeout(timeout, command).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::debug!(command = what, error = %e, "redis command failed");
            Err(crate::broker::BrokerError::Unavailable)
        }
        Err(_) => Err(crate::broker::BrokerError::Timeout),
    }
}
