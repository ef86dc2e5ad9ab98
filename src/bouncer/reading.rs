//! What one round of `SHOW` commands says, as metric families: pools (`SHOW POOLS`),
//! databases (`SHOW DATABASES`), the cumulative totals (`SHOW STATS`), client and server
//! connections (`SHOW LISTS`) and `max_client_conn` (`SHOW CONFIG`).
//!
//! Columns are read by name: a column a later PgBouncer adds is ignored, one an earlier
//! version lacks skips the series made of it (the caller logs it once). Values that are not
//! numbers are skipped the same way. Rows past [`super::console::MAX_ROWS`] of one command
//! are not kept by the console and counted here.

use std::collections::BTreeSet;

use super::console::Table;

/// Gauge or counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Goes up and down.
    Gauge,
    /// PgBouncer's cumulative total (resets when PgBouncer restarts).
    Counter,
}

/// One metric family and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Its name (a counter's with `_total`).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: Kind,
    /// Label names.
    pub labels: Vec<&'static str>,
    /// Label values (as `labels`) and value.
    pub series: Vec<(Vec<String>, f64)>,
}

/// A family: per row, one series per part (the `state` label names the part when there are
/// several), each the sum of its columns present, scaled (µs to seconds).
struct Spec {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    parts: &'static [Part],
}

/// A state (empty: the family has no `state` label) and its columns with their scale.
type Part = (&'static str, &'static [(&'static str, f64)]);

/// A family of one column.
macro_rules! one {
    ($name:literal, $column:literal, $scale:expr, $kind:expr, $help:literal) => {
        Spec {
            name: $name,
            help: $help,
            kind: $kind,
            parts: &[("", &[($column, $scale)])],
        }
    };
}

const US: f64 = 1e-6;

/// `SHOW POOLS`, by (database, user).
const POOLS: &[Spec] = &[
    Spec {
        name: "pgbouncer_pool_clients",
        help: "Client connections of the pool by state: active (linked to a server), waiting (for a server), cancel_req (cancel requests)",
        kind: Kind::Gauge,
        parts: &[
            ("active", &[("cl_active", 1.0)]),
            ("waiting", &[("cl_waiting", 1.0)]),
            (
                "cancel_req",
                &[
                    ("cl_active_cancel_req", 1.0),
                    ("cl_waiting_cancel_req", 1.0),
                ],
            ),
        ],
    },
    Spec {
        name: "pgbouncer_pool_servers",
        help: "Server connections of the pool by state: active, idle, used, tested, login, cancel",
        kind: Kind::Gauge,
        parts: &[
            ("active", &[("sv_active", 1.0)]),
            ("idle", &[("sv_idle", 1.0)]),
            ("used", &[("sv_used", 1.0)]),
            ("tested", &[("sv_tested", 1.0)]),
            ("login", &[("sv_login", 1.0)]),
            (
                "cancel",
                &[("sv_active_cancel", 1.0), ("sv_being_canceled", 1.0)],
            ),
        ],
    },
    Spec {
        name: "pgbouncer_pool_max_wait_seconds",
        help: "How long the oldest waiting client of the pool has waited for a server",
        kind: Kind::Gauge,
        parts: &[("", &[("maxwait", 1.0), ("maxwait_us", US)])],
    },
];

/// `SHOW DATABASES`, by database.
const DATABASES: &[Spec] = &[
    one!(
        "pgbouncer_database_pool_size",
        "pool_size",
        1.0,
        Kind::Gauge,
        "Server connections a pool of the database may open (pool_size)"
    ),
    one!(
        "pgbouncer_database_reserve_pool_size",
        "reserve_pool",
        1.0,
        Kind::Gauge,
        "Extra server connections a pool may open when clients wait (reserve_pool)"
    ),
    one!(
        "pgbouncer_database_connections",
        "current_connections",
        1.0,
        Kind::Gauge,
        "Server connections of the database open now"
    ),
    one!(
        "pgbouncer_database_max_connections",
        "max_connections",
        1.0,
        Kind::Gauge,
        "Most server connections of the database (max_db_connections; 0: no limit)"
    ),
    one!(
        "pgbouncer_database_paused",
        "paused",
        1.0,
        Kind::Gauge,
        "1 while the database is paused (PAUSE)"
    ),
    one!(
        "pgbouncer_database_disabled",
        "disabled",
        1.0,
        Kind::Gauge,
        "1 while the database is disabled (DISABLE)"
    ),
];

/// `SHOW STATS`, by database: totals since PgBouncer started.
const STATS: &[Spec] = &[
    one!(
        "pgbouncer_transactions_total",
        "total_xact_count",
        1.0,
        Kind::Counter,
        "Transactions pooled (SHOW STATS total_xact_count)"
    ),
    one!(
        "pgbouncer_queries_total",
        "total_query_count",
        1.0,
        Kind::Counter,
        "Queries pooled (total_query_count)"
    ),
    one!(
        "pgbouncer_received_bytes_total",
        "total_received",
        1.0,
        Kind::Counter,
        "Bytes received from clients (total_received)"
    ),
    one!(
        "pgbouncer_sent_bytes_total",
        "total_sent",
        1.0,
        Kind::Counter,
        "Bytes sent to clients (total_sent)"
    ),
    one!(
        "pgbouncer_transaction_seconds_total",
        "total_xact_time",
        US,
        Kind::Counter,
        "Time spent in transactions linked to a server (total_xact_time)"
    ),
    one!(
        "pgbouncer_query_seconds_total",
        "total_query_time",
        US,
        Kind::Counter,
        "Time spent in queries on a server (total_query_time)"
    ),
    one!(
        "pgbouncer_client_wait_seconds_total",
        "total_wait_time",
        US,
        Kind::Counter,
        "Time clients spent waiting for a server (total_wait_time)"
    ),
];

/// A command whose rows are keyed by label columns.
pub struct Source {
    /// The command.
    pub command: &'static str,
    /// (label name, column) of the row's key.
    keys: &'static [(&'static str, &'static str)],
    specs: &'static [Spec],
}

/// The commands read by rows.
pub const SOURCES: &[Source] = &[
    Source {
        command: "SHOW POOLS",
        keys: &[("database", "database"), ("user", "user")],
        specs: POOLS,
    },
    Source {
        command: "SHOW DATABASES",
        keys: &[("database", "name")],
        specs: DATABASES,
    },
    Source {
        command: "SHOW STATS",
        keys: &[("database", "database")],
        specs: STATS,
    },
];

/// What reading a round noticed besides its families.
#[derive(Debug, Default)]
pub struct Notes {
    /// `command: column` of every column (or key) the answer lacked or gave a non-number in.
    pub missing: BTreeSet<String>,
    /// Rows dropped over [`super::console::MAX_ROWS`].
    pub dropped: u64,
}

impl Source {
    /// The families of `table`, this source's answer.
    pub fn read(&self, table: &Table, notes: &mut Notes) -> Vec<Family> {
        let keys: Option<Vec<usize>> = self.keys.iter().map(|(_, c)| table.column(c)).collect();
        let Some(keys) = keys else {
            notes
                .missing
                .insert(format!("{}: key columns", self.command));
            return Vec::new();
        };
        let rows = table.rows();
        notes.dropped += table.over();
        self.specs
            .iter()
            .map(|spec| {
                let stated = spec.parts.iter().any(|(state, _)| !state.is_empty());
                let mut labels: Vec<&'static str> = self.keys.iter().map(|(l, _)| *l).collect();
                if stated {
                    labels.push("state");
                }
                let mut series = Vec::new();
                for row in rows {
                    let key: Vec<String> = keys
                        .iter()
                        .map(|&i| row.get(i).cloned().flatten().unwrap_or_default())
                        .collect();
                    for (state, columns) in spec.parts {
                        let Some(v) = sum(self.command, table, row, columns, notes) else {
                            continue;
                        };
                        let mut l = key.clone();
                        if stated {
                            l.push((*state).to_owned());
                        }
                        series.push((l, v));
                    }
                }
                Family {
                    name: spec.name,
                    help: spec.help,
                    kind: spec.kind,
                    labels,
                    series,
                }
            })
            .collect()
    }
}

/// The sum of `columns` (scaled) in `row`; `None` when none of them is there as a number.
fn sum(
    command: &str,
    table: &Table,
    row: &[Option<String>],
    columns: &[(&str, f64)],
    notes: &mut Notes,
) -> Option<f64> {
    let mut total = None;
    for (column, scale) in columns {
        let value = table
            .column(column)
            .and_then(|i| row.get(i).cloned().flatten())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite());
        match value {
            Some(v) => *total.get_or_insert(0.0) += v * scale,
            None => {
                notes.missing.insert(format!("{command}: {column}"));
            }
        }
    }
    total
}

/// A gauge read from a key/value answer (`SHOW LISTS`, `SHOW CONFIG`).
pub struct Scalar {
    /// The family.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// The command (one of [`KEYED`]).
    pub command: &'static str,
    /// The key of its row.
    pub key: &'static str,
}

/// The key/value commands: (command, key column, value column, read every so many rounds).
/// The configuration changes only on PgBouncer's RELOAD: read on a new connection and every
/// 10th round (2.5 minutes at the default interval), it costs a round a tenth of a command.
pub const KEYED: &[(&str, &str, &str, u32)] = &[
    ("SHOW LISTS", "list", "items", 1),
    ("SHOW CONFIG", "key", "value", 10),
];

/// The gauges of the key/value commands.
pub const SCALARS: &[Scalar] = &[
    Scalar {
        name: "pgbouncer_client_connections",
        help: "Client connections (SHOW LISTS used_clients)",
        command: "SHOW LISTS",
        key: "used_clients",
    },
    Scalar {
        name: "pgbouncer_server_connections",
        help: "Server connections (SHOW LISTS used_servers)",
        command: "SHOW LISTS",
        key: "used_servers",
    },
    Scalar {
        name: "pgbouncer_max_client_connections",
        help: "Most client connections PgBouncer accepts (max_client_conn)",
        command: "SHOW CONFIG",
        key: "max_client_conn",
    },
];

impl Scalar {
    /// Its family from the answers of [`KEYED`] (same order), or a note when it is missing.
    pub fn read(&self, answers: &[Table], notes: &mut Notes) -> Option<Family> {
        let found = KEYED
            .iter()
            .zip(answers)
            .find(|((command, ..), _)| *command == self.command)
            .and_then(|((_, k, v, _), table)| keyed(table, k, v, self.key));
        let Some(value) = found else {
            notes
                .missing
                .insert(format!("{}: {}", self.command, self.key));
            return None;
        };
        Some(Family {
            name: self.name,
            help: self.help,
            kind: Kind::Gauge,
            labels: Vec::new(),
            series: vec![(Vec::new(), value)],
        })
    }
}

/// Every family a round can give: (name, type, labels, help), for the metrics reference.
pub fn documented() -> Vec<(&'static str, Kind, Vec<&'static str>, &'static str)> {
    let mut out = Vec::new();
    for source in SOURCES {
        for spec in source.specs {
            let mut labels: Vec<&'static str> = source.keys.iter().map(|(l, _)| *l).collect();
            if spec.parts.iter().any(|(state, _)| !state.is_empty()) {
                labels.push("state");
            }
            out.push((spec.name, spec.kind, labels, spec.help));
        }
    }
    for s in SCALARS {
        out.push((s.name, Kind::Gauge, Vec::new(), s.help));
    }
    out
}

/// The value of `key` in a two-column answer (`SHOW LISTS`: list, items; `SHOW CONFIG`: key,
/// value), as a number.
pub fn keyed(table: &Table, key_column: &str, value_column: &str, key: &str) -> Option<f64> {
    let (k, v) = (table.column(key_column)?, table.column(value_column)?);
    table
        .rows()
        .iter()
        .find(|r| r.get(k).cloned().flatten().as_deref() == Some(key))
        .and_then(|r| r.get(v).cloned().flatten())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// The version in `SHOW VERSION`'s answer (`PgBouncer 1.18.0` → `1.18.0`), at most 40 bytes of
/// `[0-9A-Za-z._-]`.
pub fn version(table: &Table) -> Option<String> {
    let text = table.rows().first()?.first()?.clone()?;
    let v = text.trim().trim_start_matches("PgBouncer").trim();
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    (!v.is_empty() && v.len() <= 40 && v.chars().all(ok)).then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::console::MAX_ROWS;
    use super::*;

    fn row(values: &[&str]) -> Vec<Option<String>> {
        values.iter().map(|v| Some((*v).to_owned())).collect()
    }

    fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
        families.iter().find(|f| f.name == name).unwrap()
    }

    /// A later version's extra column is ignored, an earlier one's missing column skips only
    /// the series made of it (and is noted once), a non-number is skipped as missing.
    #[test]
    fn columns_are_read_by_name_and_a_missing_one_skips_only_its_series() {
        let t = Table::new(
            &[
                "user",
                "database",
                "cl_waiting",
                "cl_active",
                "sv_active",
                "maxwait",
                "new_col",
            ],
            vec![
                row(&["app", "trade", "3", "2", "2", "1", "x"]),
                row(&["app", "risk", "oops", "1", "0", "0", "y"]),
            ],
        );
        let mut notes = Notes::default();
        let f = SOURCES[0].read(&t, &mut notes);
        let clients = family(&f, "pgbouncer_pool_clients");
        assert_eq!(clients.labels, ["database", "user", "state"]);
        assert_eq!(
            clients.series,
            vec![
                (vec!["trade".into(), "app".into(), "active".into()], 2.0),
                (vec!["trade".into(), "app".into(), "waiting".into()], 3.0),
                (vec!["risk".into(), "app".into(), "active".into()], 1.0),
            ],
            "no cancel_req series (no such columns); risk's waiting is not a number"
        );
        let wait = family(&f, "pgbouncer_pool_max_wait_seconds");
        assert_eq!(wait.series[0], (vec!["trade".into(), "app".into()], 1.0));
        assert!(notes.missing.contains("SHOW POOLS: maxwait_us"));
        assert!(notes.missing.contains("SHOW POOLS: cl_waiting"));
        assert!(notes.missing.contains("SHOW POOLS: sv_idle"));
    }

    #[test]
    fn microsecond_totals_are_seconds_and_rows_over_the_cap_are_dropped_and_counted() {
        let rows = (0..MAX_ROWS + 7)
            .map(|i| row(&[&format!("db\"{i}\n"), "1000", "2500000"]))
            .collect();
        let t = Table::new(&["database", "total_xact_count", "total_xact_time"], rows);
        let mut notes = Notes::default();
        let f = SOURCES[2].read(&t, &mut notes);
        let time = family(&f, "pgbouncer_transaction_seconds_total");
        assert_eq!(time.series.len(), MAX_ROWS);
        assert_eq!(time.series[0], (vec!["db\"0\n".into()], 2.5));
        assert_eq!(notes.dropped, 7);
    }

    #[test]
    fn answers_without_their_key_columns_give_nothing() {
        let t = Table::new(&["name"], vec![row(&["x"])]);
        let mut notes = Notes::default();
        assert!(SOURCES[0].read(&t, &mut notes).is_empty());
        assert!(notes.missing.contains("SHOW POOLS: key columns"));
    }

    #[test]
    fn the_version_is_a_short_token_or_nothing() {
        let v = |s: &str| version(&Table::new(&["version"], vec![row(&[s])]));
        assert_eq!(v("PgBouncer 1.18.0").as_deref(), Some("1.18.0"));
        assert_eq!(v("PgBouncer 1.18.0\"}\nfake 1"), None);
        assert_eq!(v(&"9".repeat(41)), None);
        let lists = Table::new(&["list", "items"], vec![row(&["used_clients", "7"])]);
        assert_eq!(keyed(&lists, "list", "items", "used_clients"), Some(7.0));
        assert_eq!(keyed(&lists, "list", "items", "free_clients"), None);
    }
}
