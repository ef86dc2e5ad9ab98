//! The error of `migrate` and of the autovacuum tuning it applies: which migration or step
//! failed, what the server said, and the next step when a lock held elsewhere was the cause.

/// Errors of migrating.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A migration's SQL failed; nothing of it was applied.
    #[error("migration V{version:03} {name} failed: {reason}")]
    Failed {
        /// The migration's version (the V-number).
        version: i32,
        /// The migration's name.
        name: &'static str,
        /// The server's message.
        reason: String,
    },
    /// An applied migration's recorded checksum differs from the embedded text.
    #[error(
        "migration V{version:03} was applied with checksum {recorded} but this binary carries {embedded}; migrations are append-only"
    )]
    ChecksumMismatch {
        /// The migration's version (the V-number).
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

/// The error of a runner statement: the server's message, and the next step when a lock held by
/// another session made it give up.
pub(super) fn db(step: &'static str) -> impl Fn(tokio_postgres::Error) -> MigrateError {
    move |e| {
        let mut reason = super::outcome::describe(&e);
        if super::outcome::lock_not_available(&e) {
            reason.push_str(
                " (another session holds a lock this step needs; nothing of it was applied; \
                 run `pgpulse migrate` again when it is free)",
            );
        }
        MigrateError::Database { step, reason }
    }
}
