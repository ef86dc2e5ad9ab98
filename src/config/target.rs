//! One target of a fleet, validated ([`TargetConfig`]): what the config file's entries, the
//! targets file's groups and discovered databases all become; and the rules of its name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::db::DatabaseTarget;

/// What a target's URL reaches.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A PostgreSQL database, sampled with the catalog.
    #[default]
    Postgres,
    /// PgBouncer's admin console (the `pgbouncer` database), sampled with `SHOW` commands.
    Pgbouncer,
}

/// One target, validated: where it is, how to authenticate, its labels.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Its name (unique in the fleet).
    pub name: String,
    /// The connection without a password (user and TLS from its auth).
    pub target: DatabaseTarget,
    /// The file its password is read from for every new connection.
    pub password_file: Option<PathBuf>,
    /// Labels for `/sd`.
    pub labels: BTreeMap<String, String>,
    /// PostgreSQL or PgBouncer.
    pub kind: TargetKind,
    /// What the target was made of (URL, auth, labels): a reload keeps a target whose
    /// fingerprint did not change.
    pub fingerprint: String,
}

/// Whether `name` is a target name: letters, digits and `._:/@-`, 1..=100 characters (names
/// travel in URLs and labels).
pub(super) fn valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._:/@-".contains(c);
    !name.is_empty() && name.len() <= 100 && name.chars().all(ok)
}
