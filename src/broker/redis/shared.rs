//! The bridge's shared state: settings, naming, the subscription table, the
//! connections' fleet view, the Up/Down state and the tracker that owns every
//! task of the bridge. The broker handle, the reconciler, the connection
//! tasks and the prober all hold it; only the reconciler changes the fleet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use fred::bytes_utils::Str;
use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use super::RedisSettings;
use super::fleet::Fleet;
use super::names::Names;
use super::table::Table;
use super::topology::Addr;
use crate::broker::BrokerState;
use crate::config::PresenceConfig;
use crate::continuity::RetentionRules;
use crate::metrics::Metrics;
use crate::protocol::Channel;

/// State shared by the broker handle, the reconciler, the readers and the prober.
pub(super) struct Shared {
    /// Validated settings.
    pub(super) settings: Arc<RedisSettings>,
    /// Channel naming.
    pub(super) names: Names,
    /// Node metrics (reconnects, resubscribes, inbound lag).
    pub(super) metrics: Metrics,
    /// The broadcast channel's name: always wanted, and live whenever Up.
    pub(super) broadcast: Str,
    /// The control channel's name: likewise.
    pub(super) control: Str,
    /// Desired and live subscriptions. A std mutex: held for map operations
    /// only, never across an await.
    table: Mutex<Table>,
    /// Pokes the reconciler when the table changed.
    wake: Notify,
    fleet: Mutex<Fleet>,
    state: watch::Sender<BrokerState>,
    clock: Instant,
    /// Every task of the bridge, so that closing the broker can wait for them.
    pub(super) tasks: TaskTracker,
    /// `[history]`, resolved.
    pub(super) rules: RetentionRules,
    /// The Function library's source for these rules.
    pub(super) library: String,
    /// Redis answered that it has no functions (< 7): history is off.
    functions_unsupported: AtomicBool,
}

impl Shared {
    /// Shared state; the broker starts Down, wanting `broadcast` always.
    pub(super) fn new(
        settings: Arc<RedisSettings>,
        names: Names,
        metrics: Metrics,
        broadcast: Str,
        rules: RetentionRules,
        presence: &PresenceConfig,
    ) -> Shared {
        let control = names.control();
        let mut table = Table::default();
        table.want_quietly(broadcast.clone());
        table.want_quietly(control.clone());
        let library =
            super::functions::library(&rules, presence, &settings.prefix, settings.sharded);
        Shared {
            rules,
            library,
            functions_unsupported: AtomicBool::new(false),
            settings,
            names,
            metrics,
            broadcast,
            control,
            table: Mutex::new(table),
            wake: Notify::new(),
            fleet: Mutex::new(Fleet::default()),
            state: watch::channel(BrokerState::Down).0,
            clock: Instant::now(),
            tasks: TaskTracker::new(),
        }
    }

    /// Whether `channel` keeps history here (configured, and Redis can).
    pub(super) fn keeps_history(&self, channel: &Channel) -> bool {
        self.rules.of(channel).is_some() && !self.functions_unsupported.load(Ordering::Relaxed)
    }

    /// Whether the Function library must be loaded before the broker is Up
    /// (presence needs it whatever `[history]` says).
    pub(super) fn needs_functions(&self) -> bool {
        !self.functions_unsupported.load(Ordering::Relaxed)
    }

    /// Redis has no functions: history is off from now on.
    pub(super) fn functions_unsupported(&self) {
        if !self.functions_unsupported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "redis has no FUNCTION command (Redis < 7): history, offsets, resume and presence \
                 are OFF; clients get `recovered: false`, events carry no offset and presence \
                 queries fail with `unavailable`"
            );
        }
    }

    /// The subscription table.
    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a quick pass.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when a quick pass was asked for.
    pub(super) async fn woken(&self) {
        self.wake.notified().await
    }

    /// Watches the broker state.
    pub(super) fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.subscribe()
    }

    /// Nanoseconds on the broker's clock, never 0.
    pub(super) fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64 + 1
    }

    /// The subscriber connection to the master `name` lives on, if up.
    pub(super) fn client_for(&self, name: &[u8]) -> Option<fred::clients::Client> {
        self.fleet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .client_for(name)
    }

    /// A snapshot of the connections.
    pub(super) fn fleet(&self) -> Fleet {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_fleet(&self, fleet: Fleet) {
        *self.fleet.lock().unwrap_or_else(|e| e.into_inner()) = fleet;
        self.refresh_state();
    }

    /// Recomputes Up/Down from the connections' probes.
    pub(super) fn refresh_state(&self) {
        let timeout = self.settings.probe_timeout.as_nanos() as u64;
        let up = self.fleet.lock().unwrap_or_else(|e| e.into_inner()).is_up(
            self.now(),
            timeout,
            self.needs_functions(),
        ) && {
            let table = self.table();
            table.is_live(&self.broadcast) && table.is_live(&self.control)
        };
        let next = if up {
            BrokerState::Up
        } else {
            BrokerState::Down
        };
        self.state.send_if_modified(|state| {
            if *state == next {
                return false;
            }
            if next == BrokerState::Up {
                tracing::info!("redis broker up");
            } else {
                tracing::warn!("redis broker down: new sockets are refused until it is back");
            }
            *state = next;
            true
        });
    }

    pub(super) fn is_up(&self) -> bool {
        *self.state.borrow() == BrokerState::Up
    }
}

/// What connection watchers and the prober report.
#[derive(Debug)]
pub(super) enum Event {
    /// fred re-established the connection: Redis forgot its subscriptions.
    Reconnected(Addr, u64),
    /// The connection failed.
    Lost(Addr, u64),
    /// The probe went quiet: rebuild the connection.
    Quiet(Addr, u64),
}
