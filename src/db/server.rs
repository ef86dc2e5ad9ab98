//! Which targets reach the same PostgreSQL server: every target of a fleet holds a [`Seat`]
//! and tells it the identity of the server its probe last reached (the postmaster's start
//! time and port, digested); of the targets sitting at one server, the first by name samples
//! its server-wide queries (connections, WAL, checkpoints, replication, locks, the
//! slow-statement log) and the others skip them, so three databases of one server cost its
//! server-wide statements once. Two names reaching one server (an address and a host name,
//! say) are one server, and a replica, started on its own, is another.
//!
//! A target whose probe fails leaves its seat empty: while its server (or its database, or
//! its role) does not answer it, the next target by name samples the server.
//!
//! The server-wide query that `signals:` something (whether a session waits for a lock)
//! tells its server's [`Watch`] after each run; the queries of every database at that server
//! ask it whether they may idle (see [`crate::sampler::idle`]).
//!
//! Concurrency: one `std::sync::Mutex` around each small map (one entry per target, one per
//! server and signal), held for a map operation only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A signal, by its name in the catalog (`lock_waits`).
pub type Signal = &'static str;

/// What a server's signalling query last told: when its last run started, how long that
/// stays news, and when the last run that saw the signal started.
#[derive(Debug, Clone, Copy)]
struct Watch {
    at: Instant,
    fresh_for: Duration,
    seen: Option<Instant>,
}

/// A signal stays news for this many of its query's intervals: a signalling query that
/// missed two runs (failing, overrun, or its target gone) no longer lets anybody idle.
const FRESH_INTERVALS: u32 = 3;

/// The seats of a process: by target name, the seat sitting there and its server's identity;
/// the seat counter; by server identity and signal, what the server's signalling query saw.
#[derive(Debug, Clone, Default)]
pub struct Servers(
    Arc<Mutex<BTreeMap<String, (u64, u64)>>>,
    Arc<AtomicU64>,
    Arc<Mutex<HashMap<(u64, Signal), Watch>>>,
);

impl Servers {
    /// A seat for target `name` (a target rebuilt under the same name gets a new one, which
    /// the old one's leaving does not empty).
    pub fn seat(&self, name: &str) -> Seat {
        Seat {
            servers: self.clone(),
            name: name.to_owned(),
            id: self.1.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (u64, u64)>> {
        // Poisoning only means a panic elsewhere while holding a plain map.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watches(&self) -> MutexGuard<'_, HashMap<(u64, Signal), Watch>> {
        self.2.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One target's place at its server.
#[derive(Debug, Clone)]
pub struct Seat {
    servers: Servers,
    name: String,
    id: u64,
}

impl Seat {
    /// A seat of its own (a service that samples one database: it always leads).
    pub fn alone() -> Self {
        Servers::default().seat("default")
    }

    /// Records the server the probe reached (`None`: the probe did not reach it).
    pub fn sit(&self, identity: Option<u64>) {
        let mut map = self.servers.lock();
        match identity {
            Some(server) => {
                map.insert(self.name.clone(), (self.id, server));
            }
            None if map.get(&self.name).is_some_and(|(id, _)| *id == self.id) => {
                map.remove(&self.name);
            }
            None => {}
        }
    }

    /// Leaves the server (the target stops).
    pub fn leave(&self) {
        self.sit(None);
    }

    /// The target that samples this target's server-wide queries: the first by name of those
    /// at the same server; `None` while this target's server is unknown.
    pub fn leader(&self) -> Option<String> {
        let map = self.servers.lock();
        let (_, mine) = map.get(&self.name)?;
        map.iter()
            .find(|(_, (_, server))| server == mine)
            .map(|(name, _)| name.clone())
    }

    /// Whether this target samples its server's server-wide queries (also while its server
    /// is unknown: then nobody is known to do it for it).
    pub fn leads(&self) -> bool {
        self.leader().is_none_or(|l| l == self.name)
    }

    /// The identity of the server this target last reached.
    fn server(&self) -> Option<u64> {
        self.servers
            .lock()
            .get(&self.name)
            .map(|(_, server)| *server)
    }

    /// Tells this target's server what a run of its `signal`ling query (on an `interval`)
    /// that started at `started` saw.
    pub fn signal(&self, signal: Signal, started: Instant, seen: bool, interval: Duration) {
        let Some(server) = self.server() else { return };
        let mut watches = self.servers.watches();
        let w = watches.entry((server, signal)).or_insert(Watch {
            at: started,
            fresh_for: interval,
            seen: None,
        });
        w.at = w.at.max(started);
        w.fresh_for = interval * FRESH_INTERVALS;
        if seen {
            w.seen = Some(w.seen.map_or(started, |s| s.max(started)));
        }
    }

    /// Whether this target's server has, as far as its signalling query can tell, been
    /// without `signal` since `since`: that query has run lately, and none of its runs that
    /// started at or after `since` saw the signal.
    pub fn quiet_since(&self, signal: Signal, since: Instant) -> bool {
        let Some(server) = self.server() else {
            return false;
        };
        self.servers
            .watches()
            .get(&(server, signal))
            .is_some_and(|w| w.at.elapsed() <= w.fresh_for && w.seen.is_none_or(|s| s < since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_target_by_name_at_a_server_leads_and_a_failed_probe_hands_over() {
        let servers = Servers::default();
        let (a, b, c) = (servers.seat("a"), servers.seat("b"), servers.seat("c"));
        assert!(a.leads() && b.leads(), "unknown servers: each leads itself");
        b.sit(Some(1));
        c.sit(Some(1));
        a.sit(Some(2));
        assert!(a.leads() && b.leads() && !c.leads());
        assert_eq!(c.leader().as_deref(), Some("b"));
        b.sit(None);
        assert!(c.leads(), "b's probe failed: c samples the server");
        a.sit(Some(1));
        assert!(!c.leads() && a.leads());
        a.leave();
        assert!(c.leads());
        let b2 = servers.seat("b");
        b2.sit(Some(1));
        b.leave();
        assert_eq!(
            c.leader().as_deref(),
            Some("b"),
            "the old b's leaving keeps the new b"
        );
    }

    #[test]
    fn a_watch_lets_a_database_idle_only_on_fresh_news_of_its_own_server_without_the_signal() {
        const LOCK_WAITS: Signal = "lock_waits";
        // Intervals of 10 s: a stalled test thread cannot make fresh news stale.
        let second = Duration::from_secs(10);
        let servers = Servers::default();
        let (lead, other, elsewhere) = (servers.seat("a"), servers.seat("b"), servers.seat("c"));
        let now = Instant::now();
        let before = now - 4 * second;
        assert!(!other.quiet_since(LOCK_WAITS, before), "its server unknown");
        lead.sit(Some(1));
        other.sit(Some(1));
        elsewhere.sit(Some(2));
        assert!(!other.quiet_since(LOCK_WAITS, before), "no signal yet");
        lead.signal(LOCK_WAITS, now, false, second);
        assert!(other.quiet_since(LOCK_WAITS, before) && lead.quiet_since(LOCK_WAITS, now));
        assert!(!elsewhere.quiet_since(LOCK_WAITS, before), "another server");
        // A wait seen by a run that started after the database's last run: no idling.
        lead.signal(LOCK_WAITS, now, true, second);
        assert!(!other.quiet_since(LOCK_WAITS, before) && !other.quiet_since(LOCK_WAITS, now));
        let later = now + second / 2;
        assert!(
            other.quiet_since(LOCK_WAITS, later),
            "a later run of its own found none"
        );
        // An older report arriving late moves nothing back.
        lead.signal(LOCK_WAITS, before, false, second);
        assert!(!other.quiet_since(LOCK_WAITS, now));
        // News older than three intervals is no news.
        let second = Duration::from_secs(1);
        let stale = Servers::default();
        let (l, o) = (stale.seat("a"), stale.seat("b"));
        l.sit(Some(1));
        o.sit(Some(1));
        l.signal(LOCK_WAITS, now - 4 * second, false, second);
        assert!(!o.quiet_since(LOCK_WAITS, now - 10 * second));
        l.signal(LOCK_WAITS, now, false, 10 * second);
        assert!(o.quiet_since(LOCK_WAITS, now - 10 * second));
    }
}
