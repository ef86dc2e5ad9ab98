//! Discovery of a server's databases (`discover_databases:` on a config-file target): which
//! databases a discovery selects (include and exclude globs, the rules of a target name, a
//! cap on how many) and the targets it makes of them, named `ENTRY/DATNAME`.
//!
//! The names come from the server's catalog, which any role with CREATEDB writes: a name that
//! is not a valid target name is skipped (and counted by the fleet), never escaped into a URL,
//! a label or a log line, and at most `max_databases` are taken, so a tenant creating
//! databases cannot make the fleet grow without bound.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::target::{TargetConfig, valid_name};

/// `discover_databases:` of a config-file target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverSettings {
    /// Globs (`*`, `?`) a database name must match one of.
    pub include: Vec<String>,
    /// Globs a database name must match none of.
    pub exclude: Vec<String>,
    /// How often the list of databases is read again.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The most databases taken (the first by name); the rest are counted as skipped.
    pub max_databases: usize,
}

impl Default for DiscoverSettings {
    fn default() -> Self {
        Self {
            include: vec!["*".to_owned()],
            exclude: Vec::new(),
            interval: Duration::from_secs(60),
            max_databases: 50,
        }
    }
}

/// One discovery, validated: where it connects (the entry's URL, whose database is only
/// where the list is read) and what it selects.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The entry: its name prefixes every discovered target's; its connection, auth and
    /// labels are theirs.
    pub base: TargetConfig,
    include: Vec<String>,
    exclude: Vec<String>,
    /// How often the list is read.
    pub interval: Duration,
    max: usize,
}

/// What a discovery selected from a server's list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    /// Database names, sorted, each a target.
    pub databases: Vec<String>,
    /// Matching databases not taken: a name that is no valid target name, or past the cap.
    pub skipped: usize,
}

impl Discovery {
    /// Validates `settings` for the entry `base` (`origin` names it in errors).
    pub(super) fn new(
        base: TargetConfig,
        settings: &DiscoverSettings,
        error: impl Fn(String) -> ConfigError,
    ) -> Result<Self, ConfigError> {
        let patterns = settings.include.iter().chain(&settings.exclude);
        if let Some(p) = patterns.clone().find(|p| p.is_empty() || p.len() > 100) {
            return Err(error(format!(
                "discover_databases pattern `{}` is empty or over 100 bytes",
                p.escape_debug()
            )));
        }
        if settings.include.is_empty() {
            return Err(error(
                "discover_databases.include is empty: nothing would be discovered (use `*`)"
                    .to_owned(),
            ));
        }
        if !(1..=1000).contains(&settings.max_databases) {
            return Err(error(
                "discover_databases.max_databases is outside 1..=1000".to_owned(),
            ));
        }
        if settings.interval.is_zero() {
            return Err(error(
                "discover_databases.interval must be positive".to_owned(),
            ));
        }
        Ok(Self {
            base,
            include: settings.include.clone(),
            exclude: settings.exclude.clone(),
            interval: settings.interval,
            max: settings.max_databases,
        })
    }

    /// The entry's name (the `discovery` label of the fleet's metrics).
    pub fn name(&self) -> &str {
        &self.base.name
    }

    /// Selects from the server's database names: matched by an include glob and no exclude
    /// glob, making a valid target name, the first `max_databases` by name.
    pub fn select(&self, names: impl IntoIterator<Item = String>) -> Selected {
        let mut matching: Vec<String> = names
            .into_iter()
            .filter(|n| self.include.iter().any(|p| glob(p, n)))
            .filter(|n| !self.exclude.iter().any(|p| glob(p, n)))
            .collect();
        matching.sort();
        matching.dedup();
        let total = matching.len();
        let mut databases: Vec<String> = matching
            .into_iter()
            .filter(|n| valid_name(&self.target_name(n)))
            .collect();
        databases.truncate(self.max);
        Selected {
            skipped: total - databases.len(),
            databases,
        }
    }

    fn target_name(&self, datname: &str) -> String {
        format!("{}/{datname}", self.base.name)
    }

    /// The targets of `databases`: the entry's connection with each database, named
    /// `ENTRY/DATNAME`, with the entry's auth and labels.
    pub fn targets(&self, databases: &[String]) -> Vec<TargetConfig> {
        databases
            .iter()
            .map(|db| {
                let mut t = self.base.clone();
                t.name = self.target_name(db);
                t.target.set_dbname(db);
                t.fingerprint = format!("{}|{db}", self.base.fingerprint);
                t
            })
            .collect()
    }
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` any one.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in the name it began to match: greedy with one
    // backtrack point, at most pattern × name steps, never exponential.
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = n.get(ni) {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&q) if q == '?' || q == c => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    pi = sp + 1;
                    ni = sn + 1;
                }
                None => return false,
            },
        }
    }
    p.iter().skip(pi).all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::target::TargetKind;
    use crate::db::DatabaseTarget;

    fn discovery(settings: DiscoverSettings) -> Discovery {
        let base = TargetConfig {
            name: "eu1".to_owned(),
            target: DatabaseTarget::parse("postgres://h:5433/postgres").unwrap(),
            password_file: None,
            labels: [("cluster".to_owned(), "eu1".to_owned())].into(),
            kind: TargetKind::Postgres,
            fingerprint: "fp".to_owned(),
        };
        Discovery::new(base, &settings, |r| ConfigError::Invalid {
            key: "discover_databases",
            reason: r,
        })
        .unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_selection_takes_matching_valid_names_up_to_the_cap_and_counts_the_rest() {
        let d = discovery(DiscoverSettings {
            include: names(&["trad*", "risk"]),
            exclude: names(&["*_old"]),
            max_databases: 2,
            ..DiscoverSettings::default()
        });
        let got = d.select(names(&[
            "trading_b",
            "risk",
            "trading_a",
            "trading_old",
            "postgres",
            "trade x\"; DROP",
            "trading\nline",
            &format!("trading{}", "z".repeat(100)),
        ]));
        assert_eq!(got.databases, ["risk", "trading_a"]);
        // trading_b past the cap; three names that make no target name.
        assert_eq!(got.skipped, 4);
        let targets = d.targets(&got.databases);
        assert_eq!(targets[1].name, "eu1/trading_a");
        assert_eq!(targets[1].target.config().get_dbname(), Some("trading_a"));
        assert_eq!(targets[1].labels, d.base.labels);
        assert_ne!(targets[0].fingerprint, targets[1].fingerprint);
    }

    #[test]
    fn bad_discovery_settings_are_refused() {
        let base = discovery(DiscoverSettings::default()).base;
        let refuse = |s: DiscoverSettings| {
            Discovery::new(base.clone(), &s, |r| ConfigError::Invalid {
                key: "discover_databases",
                reason: r,
            })
            .unwrap_err()
            .to_string()
        };
        let e = refuse(DiscoverSettings {
            include: vec![],
            ..DiscoverSettings::default()
        });
        assert!(e.contains("include is empty"), "{e}");
        let e = refuse(DiscoverSettings {
            exclude: vec![String::new()],
            ..DiscoverSettings::default()
        });
        assert!(e.contains("pattern"), "{e}");
        let e = refuse(DiscoverSettings {
            max_databases: 0,
            ..DiscoverSettings::default()
        });
        assert!(e.contains("max_databases"), "{e}");
    }

    #[test]
    fn globs_match_whole_names() {
        let cases = [
            ("*", "trading", true),
            ("trad*", "trading", true),
            ("trad*", "xtrading", false),
            ("*ing", "trading", true),
            ("t?ading", "trading", true),
            ("t?ading", "tading", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("risk", "risk", true),
            ("risk", "risk2", false),
            ("**", "", true),
            ("?", "", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob(p, n), want, "{p} ~ {n}");
        }
        // No exponential backtracking on a hostile pattern and name.
        assert!(!glob(&format!("{}b", "*a".repeat(50)), &"a".repeat(10_000)));
    }
}
