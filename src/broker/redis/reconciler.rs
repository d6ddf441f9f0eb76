//! The reconciler: the task that owns the subscriber connections (one RESP3
//! connection per Redis master, one in classic mode or against a single
//! Redis; see `connection.rs`) and makes Redis's live subscriptions match
//! the table.
//!
//! Passes run one at a time. A quick pass handles the channels changed since
//! the last one (first/last local subscribers); a full pass re-reads the slot
//! map, (re)connects masters, re-plans every channel and checks each
//! connection's subscription count against `CLIENT INFO`. Full passes run on
//! a timer, on reconnects, on MOVED and when a probe goes quiet, because fred
//! drops the `sunsubscribe` Redis sends when a slot migrates or a master
//! fails over: without them those channels would stay deaf, silently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::interfaces::{ClientLike, FunctionInterface, PubsubInterface};
use fred::types::{ClusterHash, ConnectHandle, CustomCommand, Message, Value};
use futures_util::future::join_all;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::RedisSettings;
use super::connection::{self, Conn};
use super::fleet::{Fleet, NodeView};
use super::names::slot;
use super::probe;
use super::shared::{Event, Shared};
use super::table::NodeOps;
use super::topology::{Addr, Topology};
use crate::broker::BrokerEvent;

/// Full-pass interval while the broker is down: recovery is noticed sooner.
const DOWN_INTERVAL: Duration = Duration::from_millis(250);
/// Channels per classic SUBSCRIBE / UNSUBSCRIBE command.
const CLASSIC_CHUNK: usize = 1000;

/// Reconnect backoff of one master.
struct Backoff {
    next: Instant,
    delay: Duration,
}

/// What one node's commands achieved in a pass.
#[derive(Default)]
struct Outcome {
    subscribed: Vec<(Str, bool)>,
    failed: Vec<Str>,
    unsubscribed: Vec<Str>,
    probe: bool,
    moved: bool,
}

/// The reconciler task's state.
pub(super) struct Reconciler {
    shared: Arc<Shared>,
    inbound: mpsc::Sender<BrokerEvent>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    conns: BTreeMap<Addr, Conn>,
    topology: Option<Topology>,
    backoff: HashMap<Addr, Backoff>,
    connected_before: HashSet<Addr>,
    generations: u64,
    need_topology: bool,
    cancel: CancellationToken,
}

/// Starts the reconciler and the prober.
pub(super) fn spawn(
    shared: Arc<Shared>,
    inbound: mpsc::Sender<BrokerEvent>,
    cancel: CancellationToken,
) {
    let (events_tx, events) = mpsc::unbounded_channel();
    shared.tasks.spawn(probe::run(
        shared.clone(),
        events_tx.clone(),
        cancel.clone(),
    ));
    let settings = &shared.settings;
    // Without a cluster there is no slot map to read: the one node owns all.
    let topology = (!settings.cluster).then(|| Topology::single(settings.nodes[0].clone()));
    let reconciler = Reconciler {
        shared,
        inbound,
        events_tx,
        events,
        conns: BTreeMap::new(),
        topology,
        backoff: HashMap::new(),
        connected_before: HashSet::new(),
        generations: 0,
        need_topology: true,
        cancel,
    };
    let tasks = reconciler.shared.tasks.clone();
    tasks.spawn(reconciler.run());
}

impl Reconciler {
    async fn run(mut self) {
        let mut next_full = tokio::time::Instant::now();
        loop {
            let full = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(event) = self.events.recv() => {
                    self.on_event(event);
                    while let Ok(event) = self.events.try_recv() {
                        self.on_event(event);
                    }
                    true
                }
                _ = tokio::time::sleep_until(next_full) => true,
                _ = self.shared.woken() => false,
            };
            self.pass(full).await;
            if full {
                let interval = if self.shared.is_up() {
                    self.shared.settings.reconcile_interval
                } else {
                    DOWN_INTERVAL
                };
                next_full = tokio::time::Instant::now()
                    + interval.min(self.shared.settings.reconcile_interval);
            }
        }
        self.conns.clear();
    }

    fn on_event(&mut self, event: Event) {
        let (addr, generation) = match &event {
            Event::Reconnected(a, g) | Event::Lost(a, g) | Event::Quiet(a, g) => (a.clone(), *g),
        };
        let Some(conn) = self
            .conns
            .get_mut(&addr)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        conn.health.unsubscribed();
        // A master that restarted may have come back without the library.
        conn.functions = false;
        let forgotten = self.shared.table().forget_node(&addr);
        match event {
            Event::Reconnected(..) => {
                self.shared.metrics.broker_reconnects.inc();
                tracing::info!(node = %addr, channels = forgotten, "redis reconnected; re-subscribing");
            }
            Event::Lost(..) => {
                tracing::warn!(node = %addr, channels = forgotten, "redis subscriber connection lost")
            }
            Event::Quiet(..) => {
                self.conns.remove(&addr);
                self.need_topology = true;
            }
        }
        self.shared.refresh_state();
    }

    /// The master a channel belongs on.
    fn owner(&self, name: &Str) -> Option<Addr> {
        let s = &self.shared.settings;
        self.topology
            .as_ref()?
            .home(name.as_bytes(), s.cluster && s.sharded)
            .cloned()
    }

    /// Masters that need a subscriber connection.
    fn wanted_nodes(&self) -> Vec<Addr> {
        match &self.topology {
            None => Vec::new(),
            Some(t) if self.shared.settings.cluster && self.shared.settings.sharded => {
                t.masters().to_vec()
            }
            Some(t) => t.masters().first().cloned().into_iter().collect(),
        }
    }

    async fn pass(&mut self, full: bool) {
        if full || self.need_topology {
            if self.shared.settings.cluster {
                self.refresh_topology().await;
            }
            self.sync_conns().await;
        }
        self.load_functions().await;
        let mut full = full;
        let mut resubscribed = Vec::new();
        for _ in 0..2 {
            resubscribed.extend(self.execute(full).await);
            if !full || !self.verify().await {
                break;
            }
            // Redis holds fewer subscriptions than we think: plan them again.
            full = true;
        }
        self.publish_fleet();
        // Channels subscribed again after a reconnect, a failover or a
        // migration may have missed publications meanwhile: the hub checks
        // each against history and fills what was missed. Sent once the
        // fleet names their new masters, so the reads go there.
        if !resubscribed.is_empty() {
            let _ = self.inbound.send(BrokerEvent::Check(resubscribed)).await;
        }
    }

    /// Loads the Function library where it is not loaded yet (a new or
    /// reconnected master), so `gw_publish` and history reads find it.
    async fn load_functions(&mut self) {
        if !self.shared.needs_functions() {
            return;
        }
        let timeout = self.shared.settings.command_timeout;
        let loads = self
            .conns
            .iter()
            .filter(|(_, c)| !c.functions && c.usable())
            .map(|(addr, conn)| {
                let (client, code) = (conn.client.clone(), self.shared.library.clone());
                async move {
                    let loaded =
                        tokio::time::timeout(timeout, client.function_load::<Value, _>(true, code))
                            .await;
                    (addr.clone(), loaded)
                }
            });
        for (addr, loaded) in join_all(loads).await {
            match loaded {
                Ok(Ok(_)) => {
                    tracing::info!(node = %addr, "redis function library gw loaded");
                    if let Some(conn) = self.conns.get_mut(&addr) {
                        conn.functions = true;
                    }
                }
                Ok(Err(e)) if super::functions::unsupported(&e.to_string()) => {
                    self.shared.functions_unsupported();
                }
                Ok(Err(e)) => {
                    tracing::error!(node = %addr, error = %e, "cannot load the redis function library gw")
                }
                Err(_) => tracing::warn!(node = %addr, "FUNCTION LOAD timed out"),
            }
        }
    }

    /// Plans and runs one round of commands, then records the results.
    /// Returns the channels subscribed again (they were live before).
    async fn execute(&mut self, full: bool) -> Vec<crate::protocol::Channel> {
        let plan = {
            let owner = |name: &Str| self.owner(name);
            let usable = |addr: &Addr| self.conns.get(addr).is_some_and(Conn::usable);
            self.shared.table().plan(full, &owner, &usable)
        };
        let mut work: BTreeMap<Addr, (NodeOps, bool)> =
            plan.into_iter().map(|(a, ops)| (a, (ops, false))).collect();
        for (addr, conn) in &self.conns {
            if conn.probe.is_some() && !conn.health.is_subscribed() && conn.usable() {
                work.entry(addr.clone()).or_default().1 = true;
            }
        }
        if work.is_empty() {
            return Vec::new();
        }
        let settings = self.shared.settings.clone();
        let jobs = work.into_iter().filter_map(|(addr, (ops, probe))| {
            let conn = self.conns.get(&addr)?;
            let probe = probe.then(|| conn.probe.clone()).flatten();
            let (client, settings) = (conn.client.clone(), settings.clone());
            Some(async move {
                let outcome = run_ops(&client, ops, probe, &settings).await;
                (addr, outcome)
            })
        });
        let outcomes = join_all(jobs).await;
        let now = self.shared.now();
        let mut resubscribed = Vec::new();
        {
            let mut table = self.shared.table();
            for (addr, outcome) in outcomes {
                for (name, resubscribe) in outcome.subscribed {
                    if resubscribe {
                        self.shared.metrics.broker_resubscribes.inc();
                        resubscribed.extend(self.shared.names.parse(&name));
                    }
                    table.subscribed(&addr, name);
                }
                for name in &outcome.unsubscribed {
                    table.unsubscribed(&addr, name);
                }
                for name in outcome.failed {
                    table.retry(name);
                }
                if outcome.moved {
                    self.need_topology = true;
                    self.shared.wake();
                }
                if outcome.probe
                    && let Some(conn) = self.conns.get(&addr)
                {
                    conn.health.subscribed(now);
                    if let Some(probe) = &conn.probe {
                        // Probe at once rather than at the next tick: the broker
                        // becomes Up as soon as a probe has come back.
                        probe::send(
                            &self.shared,
                            conn.client.clone(),
                            probe.clone(),
                            settings.sharded,
                            now,
                            settings.command_timeout,
                        );
                    }
                }
            }
        }
        resubscribed
    }

    /// Compares each connection's subscription count in Redis with ours.
    /// Returns whether some were missing (and so were forgotten).
    async fn verify(&mut self) -> bool {
        let field = if self.shared.settings.sharded {
            "ssub="
        } else {
            "sub="
        };
        let checks = self
            .conns
            .iter()
            .filter(|(_, c)| c.usable())
            .map(|(addr, conn)| {
                let client = conn.client.clone();
                let timeout = self.shared.settings.command_timeout;
                async move {
                    let cmd = CustomCommand::new_static("CLIENT", ClusterHash::Random, false);
                    let info = tokio::time::timeout(
                        timeout,
                        client.custom::<Value, Value>(cmd, vec!["INFO".into()]),
                    )
                    .await;
                    let count = match info {
                        Ok(Ok(v)) => v.as_str().and_then(|text| subscription_count(&text, field)),
                        _ => None,
                    };
                    (addr.clone(), count)
                }
            });
        let counts = join_all(checks).await;
        let mut missing = false;
        for (addr, count) in counts {
            let Some(count) = count else { continue };
            let Some(conn) = self.conns.get(&addr) else {
                continue;
            };
            let expected =
                self.shared.table().live_on(&addr) + usize::from(conn.health.is_subscribed());
            if count < expected {
                tracing::warn!(
                    node = %addr,
                    redis = count,
                    expected,
                    "redis dropped subscriptions (slot migration or failover); re-subscribing"
                );
                conn.health.unsubscribed();
                self.shared.table().forget_node(&addr);
                missing = true;
            }
        }
        missing
    }

    /// Reads `CLUSTER SLOTS` from a connected master, else from the seeds.
    async fn refresh_topology(&mut self) {
        let settings = self.shared.settings.clone();
        let mut reply = None;
        for (addr, conn) in self.conns.iter().filter(|(_, c)| c.usable()) {
            if let Some(v) = cluster_slots(&conn.client, settings.command_timeout).await {
                reply = Some((v, addr.clone()));
                break;
            }
        }
        if reply.is_none() {
            let mut seeds = settings.nodes.clone();
            seeds.extend(
                self.topology
                    .iter()
                    .flat_map(|t| t.masters().iter().cloned()),
            );
            seeds.dedup();
            for seed in seeds {
                let Ok(client) = super::client::subscriber(&settings, &seed) else {
                    continue;
                };
                let connection = client.connect();
                let connected =
                    tokio::time::timeout(settings.connect_timeout, client.wait_for_connect()).await;
                let v = match connected {
                    Ok(Ok(())) => cluster_slots(&client, settings.command_timeout).await,
                    _ => None,
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
                connection.abort();
                if let Some(v) = v {
                    reply = Some((v, seed));
                    break;
                }
            }
        }
        let Some((reply, from)) = reply else {
            tracing::debug!("no redis node answered CLUSTER SLOTS");
            return;
        };
        match Topology::from_cluster_slots(reply, &from) {
            Ok(topology) => {
                if self.topology.as_ref() != Some(&topology) {
                    tracing::info!(masters = ?topology.masters(), "redis cluster slot map changed");
                    self.topology = Some(topology);
                }
                self.need_topology = false;
            }
            Err(e) => tracing::warn!(node = %from, error = %e, "unusable CLUSTER SLOTS reply"),
        }
    }

    /// Connects the masters that need a connection, drops the others and
    /// places each connection's probe on a slot its master owns.
    async fn sync_conns(&mut self) {
        let wanted = self.wanted_nodes();
        let stale: Vec<Addr> = self
            .conns
            .keys()
            .filter(|a| !wanted.contains(a))
            .cloned()
            .collect();
        for addr in stale {
            tracing::info!(node = %addr, "redis node no longer needed; closing its subscriber connection");
            self.conns.remove(&addr);
            self.shared.table().forget_node(&addr);
        }
        let now = Instant::now();
        let missing: Vec<Addr> = wanted
            .iter()
            .filter(|a| {
                !self.conns.contains_key(*a) && self.backoff.get(*a).is_none_or(|b| b.next <= now)
            })
            .cloned()
            .collect();
        let this = &*self;
        let attempts = missing.into_iter().map(|addr| async move {
            let result = this.connect(&addr).await;
            (addr, result)
        });
        for (addr, result) in join_all(attempts).await {
            match result {
                Ok((client, connection, messages)) => {
                    self.backoff.remove(&addr);
                    if !self.connected_before.insert(addr.clone()) {
                        self.shared.metrics.broker_reconnects.inc();
                    }
                    self.adopt(addr, client, connection, messages);
                }
                Err(e) => {
                    let s = &self.shared.settings;
                    let delay = self
                        .backoff
                        .get(&addr)
                        .map_or(s.reconnect_min, |b| (b.delay * 2).min(s.reconnect_max));
                    tracing::warn!(node = %addr, error = %e, retry_ms = delay.as_millis() as u64, "cannot connect to redis");
                    self.backoff.insert(
                        addr,
                        Backoff {
                            next: Instant::now() + delay,
                            delay,
                        },
                    );
                }
            }
        }
        let Some(topology) = self.topology.clone() else {
            return;
        };
        let cluster_sharded = self.shared.settings.cluster && self.shared.settings.sharded;
        for (addr, conn) in self.conns.iter_mut() {
            let placed = conn
                .probe
                .as_ref()
                .is_some_and(|p| !cluster_sharded || topology.owns(addr, slot(p.as_bytes())));
            if !placed {
                conn.probe = if cluster_sharded {
                    self.shared.names.probe_in(|s| topology.owns(addr, s))
                } else {
                    Some(self.shared.names.probe())
                };
                conn.health.unsubscribed();
            }
        }
    }

    async fn connect(
        &self,
        addr: &Addr,
    ) -> Result<(Client, ConnectHandle, broadcast::Receiver<Message>), String> {
        connection::connect(&self.shared.settings, addr).await
    }

    fn adopt(
        &mut self,
        addr: Addr,
        client: Client,
        connection: ConnectHandle,
        messages: broadcast::Receiver<Message>,
    ) {
        self.generations += 1;
        tracing::info!(node = %addr, "redis subscriber connected");
        let conn = Conn::open(
            &self.shared,
            connection::Opened {
                addr: addr.clone(),
                generation: self.generations,
                client,
                connection,
                messages,
            },
            self.inbound.clone(),
            self.events_tx.clone(),
        );
        self.conns.insert(addr, conn);
    }

    fn publish_fleet(&self) {
        let wanted = self.wanted_nodes();
        let whole = self.topology.as_ref().is_some_and(|t| {
            !(self.shared.settings.cluster && self.shared.settings.sharded) || t.is_complete()
        });
        let complete =
            whole && !wanted.is_empty() && wanted.iter().all(|a| self.conns.contains_key(a));
        let nodes = self
            .conns
            .iter()
            .map(|(addr, c)| NodeView {
                addr: addr.clone(),
                generation: c.generation,
                client: c.client.clone(),
                probe: c.probe.clone(),
                health: c.health.clone(),
                functions: c.functions,
            })
            .collect();
        let s = &self.shared.settings;
        self.shared.set_fleet(Fleet {
            nodes,
            complete,
            topology: self.topology.clone().map(Arc::new),
            by_slot: s.cluster && s.sharded,
        });
    }
}

/// Subscribes and unsubscribes on one master's connection. Shard channels go
/// one per SSUBSCRIBE so each reply pairs with its command (fred matches
/// replies to commands one to one); concurrent commands on one connection
/// are pipelined by fred, so a thousand channels cost about one round trip.
/// SUNSUBSCRIBE is grouped by slot: Redis refuses CROSSSLOT.
async fn run_ops(
    client: &Client,
    ops: NodeOps,
    probe: Option<Str>,
    settings: &RedisSettings,
) -> Outcome {
    let mut outcome = Outcome::default();
    let deadline = settings.command_timeout + Duration::from_millis(500);
    if settings.sharded {
        let subscribe_cmd =
            || CustomCommand::new_static("SSUBSCRIBE", ClusterHash::FirstKey, false);
        let subs = ops
            .subscribe
            .iter()
            .map(|(name, _)| client.custom::<Value, Str>(subscribe_cmd(), vec![name.clone()]));
        let mut by_slot: BTreeMap<u16, Vec<Str>> = BTreeMap::new();
        for name in &ops.unsubscribe {
            by_slot
                .entry(slot(name.as_bytes()))
                .or_default()
                .push(name.clone());
        }
        let unsubs = by_slot.into_values().map(|names| async move {
            let ok = client.sunsubscribe(names.clone()).await.is_ok();
            (names, ok)
        });
        let probe_sub = async {
            match &probe {
                Some(p) => Some(
                    client
                        .custom::<Value, Str>(subscribe_cmd(), vec![p.clone()])
                        .await,
                ),
                None => None,
            }
        };
        let work = async { tokio::join!(join_all(subs), join_all(unsubs), probe_sub) };
        let Ok((subs, unsubs, probe_result)) = tokio::time::timeout(deadline, work).await else {
            outcome.failed = ops.subscribe.into_iter().map(|(n, _)| n).collect();
            return outcome;
        };
        for ((name, resubscribe), result) in ops.subscribe.into_iter().zip(subs) {
            match result {
                Ok(_) => outcome.subscribed.push((name, resubscribe)),
                Err(e) => {
                    outcome.moved |= e.details().contains("MOVED");
                    tracing::debug!(channel = %name, error = %e, "SSUBSCRIBE failed");
                    outcome.failed.push(name);
                }
            }
        }
        for (names, ok) in unsubs {
            if ok {
                outcome.unsubscribed.extend(names);
            }
        }
        if let Some(result) = probe_result {
            outcome.moved |= result
                .as_ref()
                .is_err_and(|e| e.details().contains("MOVED"));
            outcome.probe = result.is_ok();
        }
    } else {
        // fred drops classic subscribe confirmations, so SUBSCRIBE resolves
        // when written; a PING behind it on the same connection answers only
        // once Redis has processed it.
        let mut names: Vec<Str> = ops.subscribe.iter().map(|(n, _)| n.clone()).collect();
        names.extend(probe.clone());
        let work = async {
            for chunk in ops.unsubscribe.chunks(CLASSIC_CHUNK) {
                client.unsubscribe(chunk.to_vec()).await?;
            }
            for chunk in names.chunks(CLASSIC_CHUNK) {
                client.subscribe(chunk.to_vec()).await?;
            }
            client.ping::<Value>(None).await.map(drop)
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok(())) => {
                outcome.subscribed = ops.subscribe;
                outcome.unsubscribed = ops.unsubscribe;
                outcome.probe = probe.is_some();
            }
            result => {
                if let Ok(Err(e)) = result {
                    tracing::debug!(error = %e, "classic subscribe failed");
                }
                outcome.failed = ops.subscribe.into_iter().map(|(n, _)| n).collect();
            }
        }
    }
    outcome
}

async fn cluster_slots(client: &Client, timeout: Duration) -> Option<Value> {
    let cmd = CustomCommand::new_static("CLUSTER", ClusterHash::Random, false);
    match tokio::time::timeout(
        timeout,
        client.custom::<Value, Value>(cmd, vec!["SLOTS".into()]),
    )
    .await
    {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "CLUSTER SLOTS failed");
            None
        }
        Err(_) => None,
    }
}

/// The `ssub=` / `sub=` count in a `CLIENT INFO` line.
fn subscription_count(info: &str, field: &str) -> Option<usize> {
    info.split_ascii_whitespace()
        .find_map(|kv| kv.strip_prefix(field))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info_counts_are_read_by_field() {
        let info = "id=3 addr=127.0.0.1:47570 flags=P db=0 sub=1 psub=0 ssub=2 multi=-1 resp=3";
        assert_eq!(subscription_count(info, "ssub="), Some(2));
        assert_eq!(subscription_count(info, "sub="), Some(1));
        assert_eq!(subscription_count("id=3", "ssub="), None);
    }
}
