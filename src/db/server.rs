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
//! Concurrency: one `std::sync::Mutex` around a small map (one entry per target), held for a
//! map operation only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The seats of a process: by target name, the seat sitting there and its server's identity.
#[derive(Debug, Clone, Default)]
pub struct Servers(Arc<Mutex<BTreeMap<String, (u64, u64)>>>, Arc<AtomicU64>);

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
}
