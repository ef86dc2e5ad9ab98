//! The monitoring schema's migrations: embedded in the binary, applied in order under a
//! `pg_advisory_lock`, each in its own transaction, and recorded with a SHA-256 checksum in
//! `monitoring.schema_migrations`.
//!
//! After the migrations, `migrate` tunes autovacuum on the configured trade tables only
//! ([`super::tuning`]).
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

use super::outcome::describe;
use super::trade_tables::TradeTables;

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
        version: 12,
        name: "log_tally",
        sql: include_str!("../../migrations/V012__log_tally.sql"),
    },
    Migration {
        version: 14,
        name: "monitor_reads_sequences",
        sql: include_str!("../../migrations/V014__monitor_reads_sequences.sql"),
    },
    Migration {
        version: 15,
        name: "key_query_tally",
        sql: include_str!("../../migrations/V015__key_query_tally.sql"),
    },
    Migration {
        version: 16,
        name: "cheaper_health_check",
        sql: include_str!("../../migrations/V016__cheaper_health_check.sql"),
    },
    Migration {
        version: 17,
        name: "health_report_reads_control_files_on_demand",
        sql: include_str!("../../migrations/V017__health_report_reads_control_files_on_demand.sql"),
    },
];

pub use super::migrate_error::MigrateError;
use super::migrate_error::db;

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

/// The server-side bounds of every migration transaction: a lock held by another session (a
/// trade statement) makes the migration give up and roll back whole within seconds, instead of
/// queueing in front of the trading engine's statements.
pub const MIGRATION_BOUNDS: &str =
    "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '5min'";

/// How often a migration is tried when a lock is not available (1 s, 2 s, ... between tries).
const LOCK_ATTEMPTS: u32 = 5;

/// Applies one migration and records it, in one transaction bounded by [`MIGRATION_BOUNDS`].
async fn apply_one(client: &mut Client, m: &Migration) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(MIGRATION_BOUNDS).await?;
    tx.batch_execute(m.sql).await?;
    tx.execute(
        "INSERT INTO monitoring.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        &[&m.version, &m.name, &m.checksum()],
    )
    .await?;
    tx.commit().await
}

/// Applies `m`, trying again when a lock it needs is held by another session.
async fn apply_with_retries(client: &mut Client, m: &Migration) -> Result<(), MigrateError> {
    let mut attempt = 1;
    loop {
        let e = match apply_one(client, m).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let locked = super::outcome::lock_not_available(&e);
        if !locked || attempt >= LOCK_ATTEMPTS {
            let mut reason = describe(&e);
            if locked {
                reason.push_str(&format!(
                    " ({attempt} attempts: another session holds a lock this migration needs; \
                     nothing of it was applied; run `pgpulse migrate` again when it is free)"
                ));
            }
            return Err(MigrateError::Failed {
                version: m.version,
                name: m.name,
                reason,
            });
        }
        tracing::warn!(
            version = m.version,
            attempt,
            "migration waits for a lock; trying again"
        );
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
        attempt += 1;
    }
}

/// The migration that installs the slow-statement log reader's helpers when a superuser runs it.
const LOG_READER_VERSION: i32 = 15;

/// Whether the session is a superuser and the log reader's helpers are missing (or the raw
/// reader V009 made is left over).
const LOG_READER_NEEDED_SQL: &str = "SELECT current_setting('is_superuser') = 'on' AND \
    (to_regprocedure('monitoring.log_tally(text,bigint,integer,double precision,boolean,bigint[],double precision[])') IS NULL \
     OR to_regprocedure('monitoring.log_read(text,bigint,integer)') IS NOT NULL)";

/// Run by a superuser, installs the log reader's helpers that a migration run by a
/// non-superuser could not: it sends the migration's SQL from the binary again (it is
/// idempotent), which first replaces `monitoring.install_log_reader()` and then calls it, in one
/// transaction. A superuser is never asked to call that function as it stands in the database:
/// its owner, the non-superuser that migrated, could have replaced its body.
async fn install_log_reader(client: &mut Client) -> Result<bool, MigrateError> {
    let needed: bool = client
        .query_one(LOG_READER_NEEDED_SQL, &[])
        .await
        .map_err(db("inspect the log reader helpers"))?
        .get(0);
    let Some(m) = MIGRATIONS.iter().find(|m| m.version == LOG_READER_VERSION) else {
        return Ok(false);
    };
    if !needed {
        return Ok(false);
    }
    let run = async {
        let tx = client.transaction().await?;
        tx.batch_execute(MIGRATION_BOUNDS).await?;
        tx.batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")
            .await?;
        tx.batch_execute(m.sql).await?;
        tx.commit().await
    };
    run.await.map_err(db("install the log reader helpers"))?;
    tracing::info!("slow-statement log reader helpers installed");
    Ok(true)
}

/// Applies every pending migration in order and returns the ones it applied; the autovacuum
/// tuning then follows the reference schema (see [`migrate_with`]).
pub async fn migrate(client: &mut Client) -> Result<Vec<Migration>, MigrateError> {
    Ok(migrate_with(client, &TradeTables::default()).await?.0)
}

/// Applies every pending migration in order, then tunes autovacuum on the trade tables of
/// `tables` that exist with their shape and leaves every other table as it was
/// ([`super::tuning`]). Returns the migrations applied and one line per tuned or skipped table.
/// Run by a superuser, it also installs the log reader's helpers when they are missing.
pub async fn migrate_with(
    client: &mut Client,
    tables: &TradeTables,
) -> Result<(Vec<Migration>, Vec<String>), MigrateError> {
    with_lock(client, async |client: &mut Client| {
        client
            .batch_execute(HISTORY_DDL)
            .await
            .map_err(db("create the migration history table"))?;
        let done = applied(client).await?;
        // V006 tunes the reference names; what it finds there now is what they get back.
        let before = match done.iter().any(|(v, _, _)| *v == V006) {
            true => None,
            false => Some(super::tuning::before(client).await?),
        };
        let newly = apply_pending(client, &done).await?;
        install_log_reader(client).await?;
        let lines = super::tuning::tune(client, tables, before.as_ref()).await?;
        Ok((newly, lines))
    })
    .await
}

/// The migration that tunes autovacuum on the reference names.
const V006: i32 = 6;

async fn apply_pending(
    client: &mut Client,
    done: &[(i32, String, String)],
) -> Result<Vec<Migration>, MigrateError> {
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
        apply_with_retries(client, m).await?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        newly.push(*m);
    }
    Ok(newly)
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
