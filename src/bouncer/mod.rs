//! PgBouncer as a target: the queue in front of PostgreSQL. A round of `SHOW` commands on
//! PgBouncer's admin console every `fleet.pgbouncer_interval`, in the background as every
//! other sampling, its families kept for the renders; a scrape never reaches the console.
//!
//! - [`console`]: the console connection and its client-side deadlines.
//! - [`reading`]: the commands' answers as metric families, columns read by name.
//! - [`state`]: the last round, the life of the counters, their encoding.
//!
//! One connection per PgBouncer, opened through the target's slot and the fleet's cap like
//! every socket of pgpulse; a round that fails drops it and the next round connects again.

pub mod console;
pub mod reading;
pub mod state;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as Labelled;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::DatabaseTarget;
use crate::db::slots::{Cap, SlotConnect};
use console::{Console, ConsoleError, Table};
use reading::{Family, Notes};
pub use state::State;

/// Where a PgBouncer is and how it is read.
#[derive(Debug, Clone)]
pub struct BouncerSettings {
    /// The console (`.../pgbouncer`), user and TLS included.
    pub target: DatabaseTarget,
    /// The file the password is read from for every new connection.
    pub password_file: Option<PathBuf>,
    /// The fleet's cap the console connection takes a permit of.
    pub cap: Option<Cap>,
    /// How often a round runs.
    pub interval: Duration,
    /// The deadline of one command.
    pub timeout: Duration,
}

/// The PgBouncer section of the metrics reference (docs/metrics.md).
pub fn markdown() -> String {
    let mut s = String::from(
        "## PgBouncer targets (`kind: pgbouncer`, every `fleet.pgbouncer_interval`)\n\n\
         A round of SHOW commands on PgBouncer's admin console (docs/operations.md, \
         \"PgBouncer targets\"). Pools over 500 rows of one answer are dropped and counted.\n\n\
         | metric | type | labels | help |\n| --- | --- | --- | --- |\n",
    );
    let mut row = |name: &str, kind: &str, labels: &[&str], help: &str| {
        let labels: Vec<String> = labels.iter().map(|l| format!("`{l}`")).collect();
        s.push_str(&format!(
            "| `{name}` | {kind} | {} | {help}. |\n",
            labels.join(", ")
        ));
    };
    row(state::UP.0, "gauge", &[], state::UP.1);
    row(state::START.0, "gauge", &[], state::START.1);
    row(state::VERSION.0, "gauge", &["version"], state::VERSION.1);
    for (name, kind, labels, help) in reading::documented() {
        let kind = match kind {
            reading::Kind::Gauge => "gauge",
            reading::Kind::Counter => "counter",
        };
        row(name, kind, &labels, help);
    }
    s
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabel {
    command: &'static str,
}

/// pgpulse's own metrics of a PgBouncer target.
#[derive(Debug)]
struct BouncerMetrics {
    commands: Labelled<CommandLabel, Counter>,
    errors: Counter,
    dropped: Counter,
}

impl BouncerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            commands: Labelled::default(),
            errors: Counter::default(),
            dropped: Counter::default(),
        };
        registry.register(
            "pgpulse_pgbouncer_commands",
            "Console commands pgpulse sent to PgBouncer",
            m.commands.clone(),
        );
        registry.register(
            "pgpulse_pgbouncer_errors",
            "Rounds of console commands that failed (no connection, an error, a deadline missed)",
            m.errors.clone(),
        );
        registry.register(
            "pgpulse_pgbouncer_series_dropped",
            "Rows of one command over the cap of 500 (pools, databases), not exposed",
            m.dropped.clone(),
        );
        m
    }
}

/// The console connection and what it read that changes rarely.
#[derive(Debug)]
struct Session {
    console: Console,
    /// Per key/value command ([`reading::KEYED`]), its last answer and the rounds since.
    kept: Vec<Option<(Table, u32)>>,
}

impl Session {
    /// The answer of key/value command `i` (`command`, read every `every` rounds): read
    /// again on a new connection and every `every` rounds, kept otherwise.
    async fn keyed(
        &mut self,
        b: &Bouncer,
        (i, command, every): (usize, &'static str, u32),
        fresh: bool,
    ) -> Result<Table, ConsoleError> {
        if let Some(Some((table, since))) = self.kept.get_mut(i)
            && !fresh
            && *since + 1 < every
        {
            *since += 1;
            return Ok(table.clone());
        }
        let table = b.show(&mut self.console, command).await?;
        if let Some(slot) = self.kept.get_mut(i) {
            *slot = Some((table.clone(), 0));
        }
        Ok(table)
    }
}

/// The sampler of one PgBouncer.
#[derive(Debug)]
pub struct Bouncer {
    state: State,
    metrics: BouncerMetrics,
    session: tokio::sync::Mutex<Session>,
    interval: Duration,
    /// Missing columns already logged, and the last error logged.
    logged: Mutex<(BTreeSet<String>, Option<String>)>,
}

impl Bouncer {
    /// A sampler of `settings`; its metrics join `registry`. Nothing connects before
    /// [`Bouncer::start`].
    pub fn new(settings: BouncerSettings, registry: &mut Registry) -> Arc<Self> {
        let state = State::default();
        registry.register_collector(state.collector());
        let connect = SlotConnect::new(settings.target.tls().connector(), 1)
            .within(settings.cap)
            .with_password_file(settings.password_file);
        let console = Console::new(connect, settings.target.config().clone(), settings.timeout);
        Arc::new(Self {
            state,
            metrics: BouncerMetrics::register(registry),
            session: tokio::sync::Mutex::new(Session {
                console,
                kept: vec![None; reading::KEYED.len()],
            }),
            interval: settings.interval,
            logged: Mutex::default(),
        })
    }

    /// What it exposes.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The last round's error, `None` when it succeeded.
    pub fn last_error(&self) -> Option<String> {
        self.logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Runs a round now and every interval until `stop`; `changed` is told after each.
    pub fn start(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stop: CancellationToken,
        changed: Arc<Notify>,
    ) {
        let me = self.clone();
        tracker.spawn(async move {
            crate::clock::every(me.interval, &stop, || async {
                me.run_round().await;
                changed.notify_one();
            })
            .await;
            me.session.lock().await.console.close();
        });
    }

    /// One round: read, record, log what changed.
    pub async fn run_round(&self) {
        let mut session = self.session.lock().await;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match self.round(&mut session).await {
            Ok((families, version, notes)) => {
                drop(session);
                self.metrics.dropped.inc_by(notes.dropped);
                self.note(notes, None);
                if self.state.record(families, version, now) {
                    tracing::info!(
                        "PgBouncer's totals begin a new life (first round or a restart)"
                    );
                }
            }
            Err(e) => {
                session.console.close();
                drop(session);
                self.metrics.errors.inc();
                self.note(Notes::default(), Some(e.to_string()));
                self.state.fail();
            }
        }
    }

    /// Logs each missing column once, and an error when it differs from the last one.
    fn note(&self, notes: Notes, error: Option<String>) {
        let mut g = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        for m in notes.missing {
            if g.0.insert(m.clone()) {
                tracing::warn!(missing = %m, "PgBouncer's answer lacks a column; its series are skipped");
            }
        }
        if error != g.1 {
            match &error {
                Some(e) => tracing::warn!(error = %e, "PgBouncer not read"),
                None => tracing::info!("PgBouncer read again"),
            }
            g.1 = error;
        }
    }

    async fn show(
        &self,
        console: &mut Console,
        command: &'static str,
    ) -> Result<Table, ConsoleError> {
        self.metrics
            .commands
            .get_or_create(&CommandLabel { command })
            .inc();
        console.show(command).await
    }

    /// The commands of one round: `SHOW VERSION` on a new connection, then the pools,
    /// databases, totals and lists, and the configuration on a new connection and every few
    /// rounds.
    async fn round(
        &self,
        session: &mut Session,
    ) -> Result<(Vec<Family>, Option<String>, Notes), ConsoleError> {
        let fresh = !session.console.is_connected();
        let version = if fresh {
            reading::version(&self.show(&mut session.console, "SHOW VERSION").await?)
        } else {
            None
        };
        let mut notes = Notes::default();
        let mut families = Vec::new();
        for source in reading::SOURCES {
            let table = self.show(&mut session.console, source.command).await?;
            families.extend(source.read(&table, &mut notes));
        }
        let mut answers = Vec::new();
        for (i, (command, _, _, every)) in reading::KEYED.iter().enumerate() {
            answers.push(session.keyed(self, (i, command, *every), fresh).await?);
        }
        families.extend(
            reading::SCALARS
                .iter()
                .filter_map(|s| s.read(&answers, &mut notes)),
        );
        Ok((families, version, notes))
    }
}
