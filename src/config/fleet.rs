//! The fleet's settings: `targets:` (static, in the config file), `targets_file:` (the
//! Prometheus file_sd format, YAML or JSON), `auths:` (named credential sets the targets
//! reference) and `fleet:` (the global connection cap, the refresh interval, the pool size of
//! each target); validated into [`FleetConfig`] and [`TargetConfig`]s.
//!
//! A target's URL carries no password: a password lives in its auth's `password_file`, which
//! is read again for every new connection. No error quotes a URL; errors name the file, the
//! line and the target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::discover::{DiscoverSettings, Discovery};
use super::target::valid_name;
pub use super::target::{TargetConfig, TargetKind};
use super::{ConfigError, Settings};
use crate::db::DatabaseTarget;

/// One target in the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    /// The target's name: `/probe?target=NAME`, the `target` label of self-metrics.
    pub name: String,
    /// A libpq URL (`postgres://host:port/dbname`) without a password.
    pub url: String,
    /// The `auths:` entry to connect with; unset: the entry named `default`, if any.
    #[serde(default)]
    pub auth: Option<String>,
    /// Labels `/sd` hands to Prometheus with the target (e.g. `cluster`, `env`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the URL reaches: PostgreSQL (the default) or PgBouncer's admin console.
    #[serde(default)]
    pub kind: TargetKind,
    /// Makes this entry a server whose databases are discovered, each a target
    /// `NAME/DATNAME`; the URL's database is only where the list is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover_databases: Option<DiscoverSettings>,
}

/// A named credential set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The role to connect as.
    pub user: Option<String>,
    /// A file holding the password (re-read for every new connection).
    pub password_file: Option<PathBuf>,
    /// libpq-style `sslmode`.
    pub sslmode: Option<String>,
    /// CA bundle, or `system`.
    pub sslrootcert: Option<String>,
    /// Client certificate (PEM).
    pub sslcert: Option<PathBuf>,
    /// Private key of the client certificate (PEM).
    pub sslkey: Option<PathBuf>,
}

/// The fleet's process-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSettings {
    /// The most connections open at once over every target (attempts included).
    pub max_connections: usize,
    /// How often `targets_file` is read again (also on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Each target's own connection budget (below `max_connections`).
    pub pool_size: usize,
    /// How often a PgBouncer target's console is read.
    #[serde(with = "humantime_serde")]
    pub pgbouncer_interval: Duration,
    /// How long one console command may take (client-side: the console has no
    /// `statement_timeout`).
    #[serde(with = "humantime_serde")]
    pub pgbouncer_timeout: Duration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            max_connections: 20,
            refresh_interval: Duration::from_secs(30),
            pool_size: 2,
            pgbouncer_interval: Duration::from_secs(15),
            pgbouncer_timeout: Duration::from_secs(5),
        }
    }
}

/// The fleet, validated.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The targets of the config file.
    pub targets: Vec<TargetConfig>,
    /// The config file's entries whose databases are discovered.
    pub discoveries: Vec<Discovery>,
    /// The file_sd file, read at start and on every refresh.
    pub file: Option<PathBuf>,
    /// The credential sets targets reference.
    pub auths: BTreeMap<String, AuthSettings>,
    /// The global connection cap.
    pub max_connections: usize,
    /// How often the file is read again.
    pub refresh_interval: Duration,
    /// Each target's pool size.
    pub pool_size: usize,
    /// How often a PgBouncer target's console is read.
    pub pgbouncer_interval: Duration,
    /// The client-side timeout of one console command.
    pub pgbouncer_timeout: Duration,
}

/// Where a target came from, for errors: `targets[3]` or `file:line`.
#[derive(Debug, Clone)]
struct Origin(String);

fn bad(origin: &Origin, name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Target {
        origin: origin.0.clone(),
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn check_name(origin: &Origin, name: &str) -> Result<(), ConfigError> {
    if !valid_name(name) {
        return Err(bad(
            origin,
            name,
            "a target name is 1 to 100 of the characters A-Z a-z 0-9 . _ : / @ -",
        ));
    }
    Ok(())
}

/// Label names as Prometheus has them; `__`-prefixed ones and `target`/`instance`/`job` are
/// Prometheus' own. Values at most 200 characters.
fn check_labels(
    origin: &Origin,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (k, v) in labels {
        let mut chars = k.chars();
        let first = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let valid = first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        let reserved = k.starts_with("__") || ["target", "instance", "job"].contains(&k.as_str());
        if !valid || reserved {
            return Err(bad(
                origin,
                name,
                format!(
                    "label `{}` is not a label name of its own ([a-zA-Z_][a-zA-Z0-9_]*, not \
                     __-prefixed, not target/instance/job)",
                    k.escape_debug()
                ),
            ));
        }
        if v.len() > 200 {
            return Err(bad(origin, name, format!("label `{k}` is over 200 bytes")));
        }
    }
    Ok(())
}

impl FleetConfig {
    /// Resolves one target: its URL (no password allowed) with its auth's user and TLS.
    fn resolve(
        &self,
        origin: &Origin,
        entry: &TargetSettings,
        connect_timeout: Duration,
    ) -> Result<TargetConfig, ConfigError> {
        let name = entry.name.as_str();
        check_name(origin, name)?;
        check_labels(origin, name, &entry.labels)?;
        let auth_name = entry.auth.as_deref().unwrap_or("default");
        let auth = match self.auths.get(auth_name) {
            Some(a) => a.clone(),
            None if entry.auth.is_none() => AuthSettings::default(),
            None => {
                return Err(bad(
                    origin,
                    name,
                    format!("auth `{auth_name}` is not in auths:"),
                ));
            }
        };
        let mut target = DatabaseTarget::parse(&entry.url).map_err(|_| {
            bad(
                origin,
                name,
                "the url is not a libpq URL (postgres://host:port/dbname)",
            )
        })?;
        if target.config().get_password().is_some() {
            return Err(bad(
                origin,
                name,
                "the url carries a password; put it in a file named by the auth's password_file",
            ));
        }
        if target.config().get_dbname().is_none() {
            return Err(bad(
                origin,
                name,
                "the url names no database (libpq would silently use the user name); add /dbname",
            ));
        }
        if entry.kind == TargetKind::Pgbouncer && target.config().get_dbname() != Some("pgbouncer")
        {
            return Err(bad(
                origin,
                name,
                "a pgbouncer target's url names PgBouncer's admin database: .../pgbouncer",
            ));
        }
        if entry.kind == TargetKind::Pgbouncer && target.config().get_options().is_some() {
            return Err(bad(
                origin,
                name,
                "PgBouncer's console takes no `options`; remove them from the url",
            ));
        }
        if let Some(user) = &auth.user {
            target.set_user(user);
        }
        target.set_connect_timeout(connect_timeout);
        target
            .configure_tls(auth.ssl_params().map_err(|r| bad(origin, name, r))?)
            .map_err(|e| bad(origin, name, e.to_string()))?;
        let fingerprint = format!("{}|{auth:?}|{:?}|{:?}", entry.url, entry.labels, entry.kind);
        Ok(TargetConfig {
            name: entry.name.clone(),
            target,
            password_file: auth.password_file.clone(),
            labels: entry.labels.clone(),
            kind: entry.kind,
            fingerprint,
        })
    }

    /// The config file's targets and discoveries, resolved.
    pub(super) fn resolve_static(
        &mut self,
        entries: &[TargetSettings],
        connect_timeout: Duration,
    ) -> Result<(), ConfigError> {
        for (i, e) in entries.iter().enumerate() {
            let origin = Origin(format!("targets[{i}]"));
            let resolved = self.resolve(&origin, e, connect_timeout)?;
            match &e.discover_databases {
                None => self.targets.push(resolved),
                Some(_) if e.kind == TargetKind::Pgbouncer => {
                    return Err(bad(
                        &origin,
                        &e.name,
                        "discover_databases is for PostgreSQL servers, not PgBouncer",
                    ));
                }
                Some(d) => self
                    .discoveries
                    .push(Discovery::new(resolved, d, |r| bad(&origin, &e.name, r))?),
            }
        }
        Ok(())
    }

    /// Every target now: the config file's, the databases discovered so far (`found`: by
    /// discovery name, the selected databases), then the targets file's; names are unique.
    pub fn read_targets(
        &self,
        connect_timeout: Duration,
        found: &BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<TargetConfig>, ConfigError> {
        let mut all = self.targets.clone();
        for d in &self.discoveries {
            if let Some(databases) = found.get(d.name()) {
                all.extend(d.targets(databases));
            }
        }
        if let Some(file) = &self.file {
            for (origin, entry) in read_file_sd(file)? {
                all.push(self.resolve(&origin, &entry, connect_timeout)?);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &all {
            if !seen.insert(t.name.as_str()) {
                return Err(ConfigError::Target {
                    origin: "targets".to_owned(),
                    name: t.name.clone(),
                    reason: "two targets have this name".to_owned(),
                });
            }
        }
        Ok(all)
    }
}

impl Settings {
    /// The fleet, when `targets:` or `targets_file:` is set; `database.url` (or its keys) is
    /// then an error, as one configuration names its databases in one place.
    pub(super) fn fleet_config(
        &self,
        connect_timeout: Duration,
    ) -> Result<Option<FleetConfig>, ConfigError> {
        if self.targets.is_empty() && self.targets_file.is_none() {
            return Ok(None);
        }
        let db = &self.database;
        if db.url.is_some() || db.url_file.is_some() || db.host.is_some() || db.dbname.is_some() {
            return Err(ConfigError::Invalid {
                key: "targets",
                reason: "database.url (or its keys) and targets exclude each other: put that \
                         database in targets: too"
                    .to_owned(),
            });
        }
        let f = &self.fleet;
        super::at_least_one("fleet.max_connections", f.max_connections)?;
        if !(1..=20).contains(&f.pool_size) || f.pool_size > f.max_connections {
            return Err(ConfigError::Invalid {
                key: "fleet.pool_size",
                reason: format!(
                    "{} is outside 1..=20 or above fleet.max_connections",
                    f.pool_size
                ),
            });
        }
        let mut config = FleetConfig {
            targets: Vec::new(),
            discoveries: Vec::new(),
            file: self.targets_file.clone(),
            auths: self.auths.clone(),
            max_connections: f.max_connections,
            refresh_interval: super::positive("fleet.refresh_interval", f.refresh_interval)?,
            pool_size: f.pool_size,
            pgbouncer_interval: super::positive("fleet.pgbouncer_interval", f.pgbouncer_interval)?,
            pgbouncer_timeout: super::positive("fleet.pgbouncer_timeout", f.pgbouncer_timeout)?,
        };
        config.resolve_static(&self.targets, connect_timeout)?;
        // The file is read now too, so a bad one stops the start with its error.
        config.read_targets(connect_timeout, &BTreeMap::new())?;
        Ok(Some(config))
    }
}

impl AuthSettings {
    fn ssl_params(&self) -> Result<crate::db::tls::SslParams, String> {
        super::ssl_params(
            self.sslmode.as_deref(),
            &self.sslrootcert,
            &self.sslcert,
            &self.sslkey,
        )
        .map_err(|e| e.to_string())
    }
}

/// One group of a file_sd file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The meta labels a file_sd group may carry for pgpulse.
const META_NAME: &str = "__pgpulse_name";
const META_AUTH: &str = "__pgpulse_auth";
const META_KIND: &str = "__pgpulse_kind";

/// Reads a file_sd file (YAML, or JSON, which YAML reads too) into target entries. Each
/// `targets` string is a libpq URL (`postgres://` may be left out); `__pgpulse_name` names the
/// target of a one-target group (default: `host:port/dbname`), `__pgpulse_auth` its auth,
/// `__pgpulse_kind` its kind (`postgres`, `pgbouncer`); other
/// `__`-prefixed labels are dropped, as Prometheus drops them.
fn read_file_sd(file: &Path) -> Result<Vec<(Origin, TargetSettings)>, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    let groups: Vec<Group> = serde_saphyr::from_str(&text).map_err(|e| {
        let (line, column, msg) = crate::yaml::describe(&text, &e);
        ConfigError::File {
            file: file.to_owned(),
            detail: format!("{line}:{column}: {msg}"),
        }
    })?;
    let mut out = Vec::new();
    for group in groups {
        for t in &group.targets {
            let line = line_of(&text, t);
            let origin = Origin(format!("{}:{line}", file.display()));
            out.push((origin.clone(), entry(&origin, &group, t)?));
        }
    }
    Ok(out)
}

/// The target entry of `t` in `group`.
fn entry(origin: &Origin, group: &Group, t: &str) -> Result<TargetSettings, ConfigError> {
    let url = if t.contains("://") || t.contains('=') {
        t.to_owned()
    } else {
        format!("postgres://{t}")
    };
    let name = match group.labels.get(META_NAME) {
        Some(n) if group.targets.len() == 1 => n.clone(),
        Some(_) => {
            return Err(bad(
                origin,
                t,
                format!("{META_NAME} names one target; this group has several"),
            ));
        }
        None => default_name(&url).ok_or_else(|| {
            bad(
                origin,
                "?",
                "the target is not a libpq URL (postgres://host:port/dbname)",
            )
        })?,
    };
    let labels = group
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let kind = match group.labels.get(META_KIND).map(String::as_str) {
        None | Some("postgres") => TargetKind::Postgres,
        Some("pgbouncer") => TargetKind::Pgbouncer,
        Some(other) => {
            return Err(bad(
                origin,
                &name,
                format!(
                    "{META_KIND} `{}` is neither postgres nor pgbouncer",
                    other.escape_debug()
                ),
            ));
        }
    };
    Ok(TargetSettings {
        name,
        url,
        auth: group.labels.get(META_AUTH).cloned(),
        labels,
        kind,
        discover_databases: None,
    })
}

/// `host:port/dbname` of a URL (no user, no password, no parameters).
fn default_name(url: &str) -> Option<String> {
    let parsed = DatabaseTarget::parse(url).ok()?;
    let c = parsed.config();
    let host = match c.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    Some(format!("{host}:{port}/{}", c.get_dbname().unwrap_or("")))
}

/// The 1-based line on which `needle` first appears in `text` (1 when it does not).
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map_or(1, |at| text[..at].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(auths: &[(&str, AuthSettings)]) -> FleetConfig {
        FleetConfig {
            targets: vec![],
            discoveries: vec![],
            file: None,
            auths: auths
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            max_connections: 4,
            refresh_interval: Duration::from_secs(30),
            pool_size: 2,
            pgbouncer_interval: Duration::from_secs(15),
            pgbouncer_timeout: Duration::from_secs(5),
        }
    }

    fn settings(name: &str, url: &str) -> TargetSettings {
        TargetSettings {
            name: name.to_owned(),
            url: url.to_owned(),
            auth: None,
            labels: BTreeMap::new(),
            kind: TargetKind::Postgres,
            discover_databases: None,
        }
    }

    fn origin() -> Origin {
        Origin("targets[0]".to_owned())
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_quoting_it() {
        let f = fleet(&[]);
        let e = f
            .resolve(
                &origin(),
                &settings("a", "postgres://u:hunter2@h:5/db"),
                Duration::from_secs(1),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("carries a password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn hostile_names_and_labels_are_refused() {
        let f = fleet(&[]);
        let r = |t: TargetSettings| f.resolve(&origin(), &t, Duration::from_secs(1));
        for name in ["", "a b", "x\ny", "<script>", &"n".repeat(101)] {
            assert!(r(settings(name, "postgres://h/db")).is_err(), "{name:?}");
        }
        for label in ["__address__", "instance", "1x", "a-b", "target"] {
            let mut t = settings("ok", "postgres://h/db");
            t.labels.insert(label.to_owned(), "v".to_owned());
            assert!(r(t).is_err(), "{label}");
        }
        assert!(r(settings("no-db", "postgres://h:5")).is_err());
        let mut t = settings("ok", "postgres://h/db");
        t.auth = Some("missing".to_owned());
        let e = r(t).unwrap_err().to_string();
        assert!(e.contains("auth `missing`"), "{e}");
    }

    #[test]
    fn an_auth_gives_its_user_and_password_file() {
        let auth = AuthSettings {
            user: Some("pgpulse_monitor".to_owned()),
            password_file: Some("/run/pw".into()),
            ..AuthSettings::default()
        };
        let f = fleet(&[("default", auth)]);
        let t = f
            .resolve(
                &origin(),
                &settings("a", "postgres://h:5433/trading"),
                Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(t.target.config().get_user(), Some("pgpulse_monitor"));
        assert_eq!(t.password_file, Some(PathBuf::from("/run/pw")));
    }

    #[test]
    fn a_file_sd_file_gives_named_targets_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(
            &file,
            "- targets: [h1:5433/trading, 'postgres://h2:5434/risk']\n  labels: {cluster: eu}\n\
             - targets: [h3/db]\n  labels: {__pgpulse_name: primary, __meta_x: y}\n",
        )
        .unwrap();
        let mut f = fleet(&[]);
        f.file = Some(file.clone());
        let all = f
            .read_targets(Duration::from_secs(1), &BTreeMap::new())
            .unwrap();
        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["h1:5433/trading", "h2:5434/risk", "primary"]);
        assert_eq!(all[0].labels.get("cluster").map(String::as_str), Some("eu"));
        assert!(all[2].labels.is_empty(), "meta labels are dropped");
        std::fs::write(&file, "- targets: [h/db, h/db]\n").unwrap();
        let e = f
            .read_targets(Duration::from_secs(1), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("two targets have this name"), "{e}");
        std::fs::write(&file, "- targets: [h/db]\n  lables: {}\n").unwrap();
        let e = f
            .read_targets(Duration::from_secs(1), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.yaml:2"), "{e}");
    }

    #[test]
    fn a_pgbouncer_target_names_the_admin_database_and_takes_no_options() {
        let f = fleet(&[]);
        let r = |url: &str| {
            let mut t = settings("pool", url);
            t.kind = TargetKind::Pgbouncer;
            f.resolve(&origin(), &t, Duration::from_secs(1))
        };
        let t = r("postgres://stats@h:6432/pgbouncer").unwrap();
        assert_eq!(t.kind, TargetKind::Pgbouncer);
        let e = r("postgres://h:6432/trade").unwrap_err().to_string();
        assert!(e.contains("admin database"), "{e}");
        let e = r("postgres://h:6432/pgbouncer?options=-cjit%3Doff")
            .unwrap_err()
            .to_string();
        assert!(e.contains("options"), "{e}");
        let postgres = f
            .resolve(
                &origin(),
                &settings("pool", "postgres://h:6432/pgbouncer"),
                Duration::from_secs(1),
            )
            .unwrap();
        assert_ne!(
            postgres.fingerprint, t.fingerprint,
            "a change of kind rebuilds the target"
        );
    }

    #[test]
    fn a_file_sd_group_names_its_kind_and_an_unknown_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(
            &file,
            "- targets: [h:6432/pgbouncer]
  labels: {__pgpulse_kind: pgbouncer}
",
        )
        .unwrap();
        let mut f = fleet(&[]);
        f.file = Some(file.clone());
        let all = f
            .read_targets(Duration::from_secs(1), &BTreeMap::new())
            .unwrap();
        assert_eq!(all[0].kind, TargetKind::Pgbouncer);
        std::fs::write(
            &file,
            "- targets: [h/db]
  labels: {__pgpulse_kind: \"x\\ny\"}
",
        )
        .unwrap();
        let e = f
            .read_targets(Duration::from_secs(1), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("neither postgres nor pgbouncer") && !e.contains("x\ny"),
            "{e}"
        );
    }
}
