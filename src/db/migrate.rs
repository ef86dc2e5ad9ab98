//! The monitoring schema's migrations: embedded in the binary, applied in order under a
//! `pg_advisory_lock`, each in its own transaction, and recorded with a SHA-256 checksum in
//! `monitoring.schema_migrations`.
//!
//! The advisory lock makes concurrent runs safe: a second `pgpulse migrate` waits for the
//! first, then finds nothing pending. An applied migration whose embedded text changed is an
//! error (migrations are append-only).
//!
//! Numbering starts at V004: the specification this schema comes from (the database team's
//! monitoring task, DESIGN.md) shipped it as `004-performance-monitoring.sql` to
//! `006-automated-maintenance.sql` in the trade engine's own migrations directory, after that
//! service's 001–003, which create the trade tables and are not pgpulse's to ship or apply.
//! pgpulse kept the numbers so the two histories read side by side; nothing below V004 is
//! missing.
//!
//! The migrations create what may already exist (`IF NOT EXISTS`, V004's schema right after
//! the history table's); the server's "already exists, skipping" notices are no news to an
//! operator and [`super::connect`] keeps them out of the output, while pgpulse's own notices
//! (`pgpulse: ...`, e.g. an extension not created) are logged.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::connect::describe;

/// The advisory lock key held while migrating or uninstalling ("pgpulse" in ASCII).
pub const LOCK_KEY: i64 = 0x0070_6770_756c_7365;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version number, the order of application.
    pub version: i32,
    /// A short name.
    pub name: &'static str,
    /// The SQL, run as one batch inside a transaction.
    pub sql: &'static str,
}

impl Migration {
    /// The SHA-256 checksum of the SQL text, hex encoded.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 4,
        name: "performance_monitoring",
        sql: include_str!("../../migrations/V004__performance_monitoring.sql"),
    },
    Migration {
        version: 5,
        name: "performance_functions",
        sql: include_str!("../../migrations/V005__performance_functions.sql"),
    },
    Migration {
        version: 6,
        name: "automated_maintenance",
        sql: include_str!("../../migrations/V006__automated_maintenance.sql"),
    },
    Migration {
        version: 7,
        name: "maintenance_locks",
        sql: include_str!("../../migrations/V007__maintenance_locks.sql"),
    },
    Migration {
        version: 8,
        name: "cheaper_relation_views",
        sql: include_str!("../../migrations/V008__cheaper_relation_views.sql"),
    },
    Migration {
        version: 9,
        name: "log_reader",
        sql: include_str!("../../migrations/V009__log_reader.sql"),
    },
    Migration {
        version: 10,
        name: "statement_numbers",
        sql: include_str!("../../migrations/V010__statement_numbers.sql"),
    },
    Migration {
        version: 11,
        name: "definer_hardening",
        sql: include_str!("../../migrations/V011__definer_hardening.sql"),
    },
    Migration {
        version: 14,
        name: "monitor_reads_sequences",
        sql: include_str!("../../migrations/V014__monitor_reads_sequences.sql"),
    },
];

/// Errors of migrating.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A migration's SQL failed; nothing of it was applied.
    #[error("migration V{version:03} {name} failed: {reason}")]
    Failed {
        /// Its version.
        version: i32,
        /// Its name.
        name: &'static str,
        /// The server's message.
        reason: String,
    },
    /// An applied migration's recorded checksum differs from the embedded text.
    #[error(
        "migration V{version:03} was applied with checksum {recorded} but this binary carries {embedded}; migrations are append-only"
    )]
    ChecksumMismatch {
        /// Its version.
        version: i32,
        /// The checksum in the history table.
        recorded: String,
        /// The checksum of the embedded SQL.
        embedded: String,
    },
    /// A statement of the runner itself failed.
    #[error("{step}: {reason}")]
    Database {
        /// What was being done.
        step: &'static str,
        /// The server's message.
        reason: String,
    },
}

fn db(step: &'static str) -> impl Fn(tokio_postgres::Error) -> MigrateError {
    move |e| MigrateError::Database {
        step,
        reason: describe(&e),
    }
}

/// The state of one migration in a database.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    /// The migration.
    pub migration: Migration,
    /// When it was applied (RFC 3339 text), or `None` when pending.
    pub applied_at: Option<String>,
}

const HISTORY_DDL: &str = "CREATE SCHEMA IF NOT EXISTS monitoring;
CREATE TABLE IF NOT EXISTS monitoring.schema_migrations (
    version     integer PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE monitoring.schema_migrations IS 'pgpulse: applied migrations and their checksums';";

/// Runs `f` while holding the migration advisory lock; the lock is released also on error.
pub async fn with_lock<T, E>(
    client: &mut Client,
    f: impl AsyncFnOnce(&mut Client) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<MigrateError>,
{
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(db("take the migration lock"))?;
    let result = f(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(db("release the migration lock"));
    match (result, unlock) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
        (Ok(v), Ok(_)) => Ok(v),
    }
}

async fn applied(client: &Client) -> Result<Vec<(i32, String, String)>, MigrateError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('monitoring.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db("read the migration history"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version, checksum, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM monitoring.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(db("read the migration history"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Applies every pending migration in order and returns the ones it applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<Migration>, MigrateError> {
    with_lock(client, async |client: &mut Client| {
        client
            .batch_execute(HISTORY_DDL)
            .await
            .map_err(db("create the migration history table"))?;
        let done = applied(client).await?;
        let mut newly = Vec::new();
        for m in MIGRATIONS {
            if let Some((_, recorded, _)) = done.iter().find(|(v, _, _)| *v == m.version) {
                if *recorded != m.checksum() {
                    return Err(MigrateError::ChecksumMismatch {
                        version: m.version,
                        recorded: recorded.clone(),
                        embedded: m.checksum(),
                    });
                }
                continue;
            }
            let failed = |e: tokio_postgres::Error| MigrateError::Failed {
                version: m.version,
                name: m.name,
                reason: describe(&e),
            };
            let tx = client.transaction().await.map_err(failed)?;
            tx.batch_execute(m.sql).await.map_err(failed)?;
            tx.execute(
                "INSERT INTO monitoring.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &m.checksum()],
            )
            .await
            .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            tracing::info!(version = m.version, name = m.name, "migration applied");
            newly.push(*m);
        }
        Ok(newly)
    })
    .await
}

/// Lists every migration with the time it was applied, or pending.
pub async fn status(client: &Client) -> Result<Vec<MigrationStatus>, MigrateError> {
    let done = applied(client).await?;
    Ok(MIGRATIONS
        .iter()
        .map(|m| MigrationStatus {
            migration: *m,
            applied_at: done
                .iter()
                .find(|(v, _, _)| *v == m.version)
                .map(|(_, _, at)| at.clone()),
        })
        .collect())
}
