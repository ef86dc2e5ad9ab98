//! Fleet mode against real servers: several databases and clusters sampled by one pgpulse,
//! each served at `/probe?target=NAME` and listed at `/sd`; names not in the list answer 404
//! and open nothing; one hung server slows no other target; the global connection cap holds
//! through target churn; a rotated password needs no restart; the target list reloads as a
//! diff by name.

mod budget;
mod config;
mod discover;
mod isolation;
mod lifecycle;
mod probe;
mod rotation;
mod servers;

use std::collections::BTreeMap;

use pgpulse::config::fleet::{TargetKind, TargetSettings};

/// One query per target, every second: the database it ran in, as a label, so a body shows
/// whose it is.
pub(crate) const WHOAMI: &str = r#"
queries:
  - name: whoami
    help: the database sampled
    interval: 1s
    timeout: 900ms
    sql: SELECT current_database() AS db, 1 AS one
    labels: [db]
    metrics:
      - {column: one, name: pg_test_database, type: gauge, help: The database sampled.}
"#;

/// A config-file target.
pub(crate) fn target(name: &str, url: &str, labels: &[(&str, &str)]) -> TargetSettings {
    TargetSettings {
        name: name.to_owned(),
        url: url.to_owned(),
        auth: None,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        kind: TargetKind::Postgres,
        discover_databases: None,
    }
}

/// Writes a file_sd file with one group per `(name, url)`.
pub(crate) fn write_targets(file: &std::path::Path, targets: &[(&str, &str)]) {
    let mut text = String::new();
    for (name, url) in targets {
        text.push_str(&format!(
            "- targets: ['{url}']\n  labels: {{__pgpulse_name: '{name}', env: test}}\n"
        ));
    }
    // Written whole, then renamed: a refresh never reads half a file.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// The series line of `pg_test_database` for `db`.
pub(crate) fn whoami(db: &str) -> String {
    format!("pg_test_database{{db=\"{db}\"}}")
}
