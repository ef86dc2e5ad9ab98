//! The slow-log reader's metrics: the exact counter of slow executions by database and user,
//! the threshold it counts against, the role pgpulse logs in as, and the reader's health.
//! Handles are registered once in the exporter's registry when the service is built and live
//! as long as the service: a reload (SIGHUP) never touches them, so the counter never goes
//! back.
//!
//! Cardinality: at most `max_series` (database, user) pairs; executions of pairs past the
//! budget are counted in the pair `("", "")`, so sums stay exact.
//!
//! Prometheus takes a new series' first sample as its baseline, so an increment in the very
//! first sample would be invisible to `increase()`. Every pair pgpulse knows of therefore
//! starts at 0: the pairs of the sessions open at each poll are exposed at 0
//! ([`SlowLogMetrics::expose`]), before their first slow execution; a pair first seen in the
//! log (a session that came and went between two polls) is exposed at 0 and its executions
//! are added one poll later.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the slow-execution counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlowLabels {
    /// The database (`dbname` of the log line).
    pub datname: String,
    /// The role (`user` of the log line).
    pub user: String,
}

/// Labels naming a role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabel {
    /// The role name.
    pub user: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every handle of the reader.
#[derive(Debug, Default)]
pub struct SlowLogMetrics {
    over: Family<SlowLabels, Counter>,
    threshold: FloatGauge,
    user: Family<UserLabel, Gauge>,
    up: Gauge,
    lag: Gauge,
    gap: Counter,
    read: Counter,
    polls: Counter,
    statements: Counter,
    unparsed: Counter,
    errors: Counter,
    state: Mutex<Pairs>,
}

/// The pairs exposed so far and the counts held back for new ones.
#[derive(Debug, Default)]
struct Pairs {
    known: HashSet<SlowLabels>,
    held: HashMap<SlowLabels, u64>,
}

/// Counts of one poll, added to the counter when the poll ends.
#[derive(Debug, Default)]
pub struct Tally {
    counts: HashMap<SlowLabels, u64>,
}

impl Tally {
    /// `n` executions at or over the threshold.
    pub fn add(&mut self, datname: String, user: String, n: u64) {
        *self.counts.entry(SlowLabels { datname, user }).or_insert(0) += n;
    }

    /// Every pair with its executions (the tally tests compare them with the log files).
    pub fn iter(&self) -> impl Iterator<Item = (&SlowLabels, u64)> {
        self.counts.iter().map(|(l, n)| (l, *n))
    }
}

impl SlowLogMetrics {
    /// Creates the handles and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry;
        r.register(
            "pg_statement_executions_over_threshold",
            "Statement executions that took the threshold (pg_statement_executions_threshold_seconds) or longer, counted exactly from the server's jsonlog (pgpulse's own role excluded)",
            m.over.clone(),
        );
        r.register(
            "pg_statement_executions_threshold_seconds",
            "The threshold of pg_statement_executions_over_threshold_total: log_min_duration_statement in seconds, at least 0.1",
            m.threshold.clone(),
        );
        r.register(
            "pgpulse_database_user_info",
            "The role pgpulse logs in as (its statements are not counted); always 1",
            m.user.clone(),
        );
        r.register(
            "pgpulse_slow_log_up",
            "Whether the last poll of the slow-statement log succeeded (1) or the reader is off or failing (0)",
            m.up.clone(),
        );
        r.register(
            "pgpulse_slow_log_lag_bytes",
            "Bytes of the listed log files not read yet",
            m.lag.clone(),
        );
        r.register(
            "pgpulse_slow_log_gap_bytes",
            "Bytes of log files listed but removed or truncated before the reader could read them (a lower bound: growth after the last listing is unknown)",
            m.gap.clone(),
        );
        r.register(
            "pgpulse_slow_log_read_bytes",
            "Bytes of log files read",
            m.read.clone(),
        );
        r.register(
            "pgpulse_slow_log_polls",
            "Polls of the slow-statement log that read it to the end of its listed files",
            m.polls.clone(),
        );
        r.register(
            "pgpulse_slow_log_statements",
            "Statements the slow-statement log reader sent (the setup check, the listing, one per chunk read)",
            m.statements.clone(),
        );
        r.register(
            "pgpulse_slow_log_unparsed_lines",
            "Log lines that were not jsonlog objects or were too long to keep",
            m.unparsed.clone(),
        );
        r.register(
            "pgpulse_slow_log_poll_errors",
            "Polls of the slow-statement log that failed (connection, timeout, SQL)",
            m.errors.clone(),
        );
        m
    }

    /// Adds one poll's executions: pairs already exposed grow now, new pairs (within
    /// `max_series`) appear at 0 and grow by the held-back counts at the next poll.
    pub fn count(&self, tally: Tally, max_series: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (labels, n) in std::mem::take(&mut st.held) {
            self.over.get_or_create(&labels).inc_by(n);
        }
        for (labels, n) in tally.counts {
            let labels = if st.known.contains(&labels) || st.known.len() < max_series {
                labels
            } else {
                SlowLabels {
                    datname: String::new(),
                    user: String::new(),
                }
            };
            if st.known.contains(&labels) {
                self.over.get_or_create(&labels).inc_by(n);
            } else {
                let _ = self.over.get_or_create(&labels);
                st.known.insert(labels.clone());
                *st.held.entry(labels).or_insert(0) += n;
            }
        }
    }

    /// Exposes at 0 the pairs not exposed yet (within `max_series`), so that their first slow
    /// execution shows in `increase()`. Called after [`SlowLogMetrics::count`] of the same
    /// poll: a pair that first appears in that poll's tally is held back there.
    pub fn expose(&self, pairs: impl IntoIterator<Item = SlowLabels>, max_series: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for labels in pairs {
            if st.known.len() >= max_series {
                break;
            }
            if !st.known.contains(&labels) {
                let _ = self.over.get_or_create(&labels);
                st.known.insert(labels);
            }
        }
    }

    /// Records a successful poll: the threshold, pgpulse's role, the lag, the gap, the bytes
    /// read and the statements sent.
    pub fn record_poll(
        &self,
        threshold_s: f64,
        user: &str,
        lag: u64,
        gap: u64,
        read: u64,
        statements: u64,
    ) {
        self.polls.inc();
        self.statements.inc_by(statements);
        self.up.set(1);
        self.threshold.set(threshold_s);
        self.user
            .get_or_create(&UserLabel {
                user: user.to_owned(),
            })
            .set(1);
        self.lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
        self.gap.inc_by(gap);
        self.read.inc_by(read);
    }

    /// Records lines that could not be parsed or kept.
    pub fn record_unparsed(&self, n: u64) {
        self.unparsed.inc_by(n);
    }

    /// The reader is off (prerequisites missing): down, no lag; `user` is pgpulse's role.
    pub fn record_off(&self, user: &str) {
        self.user
            .get_or_create(&UserLabel {
                user: user.to_owned(),
            })
            .set(1);
        self.up.set(0);
        self.lag.set(0);
    }

    /// A poll failed.
    pub fn record_error(&self) {
        self.up.set(0);
        self.errors.inc();
    }

    /// The sum of the counter over every pair, held-back counts included.
    #[cfg(test)]
    fn total(&self) -> u64 {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.known
            .iter()
            .map(|l| self.over.get_or_create(l).get())
            .sum::<u64>()
            + st.held.values().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(d: &str, u: &str) -> SlowLabels {
        SlowLabels {
            datname: d.into(),
            user: u.into(),
        }
    }

    fn tally(pairs: &[(&str, &str, u64)]) -> Tally {
        let mut t = Tally::default();
        for (d, u, n) in pairs {
            t.add((*d).into(), (*u).into(), *n);
        }
        t
    }

    #[test]
    fn a_new_pair_appears_at_zero_and_grows_one_poll_later() {
        let m = SlowLogMetrics::register(&mut Registry::default());
        m.count(tally(&[("trade", "app", 3)]), 10);
        assert_eq!(m.over.get_or_create(&pair("trade", "app")).get(), 0);
        assert_eq!(m.total(), 3, "held back, not lost");
        m.count(tally(&[("trade", "app", 2)]), 10);
        assert_eq!(m.over.get_or_create(&pair("trade", "app")).get(), 5);
        assert_eq!(m.total(), 5);
    }

    #[test]
    fn pairs_past_the_budget_count_in_the_empty_pair_and_sums_stay_exact() {
        let m = SlowLogMetrics::register(&mut Registry::default());
        m.count(tally(&[("a", "u", 1), ("b", "u", 1)]), 2);
        m.count(tally(&[("c", "u", 4), ("a", "u", 1)]), 2);
        m.count(Tally::default(), 2);
        assert_eq!(m.over.get_or_create(&pair("a", "u")).get(), 2);
        assert_eq!(m.over.get_or_create(&pair("", "")).get(), 4);
        assert_eq!(m.total(), 7);
        let st = m.state.lock().unwrap();
        assert_eq!(st.known.len(), 3, "two pairs and the overflow pair");
    }

    #[test]
    fn a_pair_of_an_open_session_starts_at_zero_and_its_first_execution_counts_at_once() {
        let m = SlowLogMetrics::register(&mut Registry::default());
        m.count(Tally::default(), 3);
        m.expose([pair("trade", "app"), pair("trade", "risk")], 3);
        assert_eq!(m.over.get_or_create(&pair("trade", "app")).get(), 0);
        m.count(tally(&[("trade", "app", 1)]), 3);
        assert_eq!(m.over.get_or_create(&pair("trade", "app")).get(), 1);
        // A pair new in the tally is held back even when its session is listed in the same poll.
        m.count(tally(&[("trade", "late", 2)]), 3);
        m.expose([pair("trade", "late")], 3);
        assert_eq!(m.over.get_or_create(&pair("trade", "late")).get(), 0);
        m.count(Tally::default(), 3);
        assert_eq!(m.over.get_or_create(&pair("trade", "late")).get(), 2);
        // The budget holds: a fourth pair is not exposed.
        m.expose([pair("other", "x")], 3);
        assert!(!m.state.lock().unwrap().known.contains(&pair("other", "x")));
    }
}
