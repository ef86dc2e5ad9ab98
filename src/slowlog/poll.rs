//! One poll of the slow-statement log, on one pooled connection, in one read-only
//! transaction with `SET LOCAL statement_timeout` and `lock_timeout`: inspect the setup, list
//! the log directory through `monitoring.log_files()`, read every file's new bytes in chunks
//! through `monitoring.log_read(name, offset, length)`, and count the complete lines.
//!
//! Each statement also has a client-side guard (the statement timeout plus
//! [`CLIENT_GRACE`]); a connection whose poll failed is dropped, not returned to the pool.

use std::future::Future;
use std::time::Duration;

use super::ReaderSettings;
use super::files::{Listed, Tracker};
use super::metrics::Tally;
use super::parse::{Line, parse};
use crate::db::lease::Budget;
use crate::db::log_access::{LogSetup, SETUP_SQL};
use crate::sampler::run::{CLIENT_GRACE, RunError, classify, pool_error, timeouts_sql};

/// The most bytes one poll reads; the rest waits for the next poll (and shows as lag).
pub const MAX_BYTES_PER_POLL: u64 = 64 * 1024 * 1024;

/// What one poll found.
#[derive(Debug)]
pub enum Polled {
    /// The prerequisites are missing; nothing was read.
    Off(LogSetup),
    /// The log was read.
    Read(Outcome),
}

/// What a successful read did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Executions at or over the threshold, by (database, user).
    pub tally: Tally,
    /// The threshold in seconds.
    pub threshold_s: f64,
    /// pgpulse's login role.
    pub user: String,
    /// Bytes read.
    pub read: u64,
    /// Bytes lost to removed or truncated files.
    pub gap: u64,
    /// Lines that were not jsonlog objects or too long.
    pub unparsed: u64,
    /// Bytes listed and not read yet.
    pub lag: u64,
    /// Statements sent.
    pub statements: u64,
}

async fn guarded<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, RunError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| classify(&e)),
        Err(_) => Err(RunError::new(
            crate::sampler::run::ErrorKind::Timeout,
            "no answer from the database; connection dropped",
        )),
    }
}

/// Runs one poll; `tracker` keeps the offsets between polls.
pub async fn poll_once(
    budget: &Budget,
    settings: &ReaderSettings,
    tracker: &mut Tracker,
) -> Result<Polled, RunError> {
    let mut checkout = budget
        .lease(Some(settings.timeout), settings.timeout + CLIENT_GRACE)
        .await
        .map_err(pool_error)?;
    let Some(client) = checkout.client() else {
        return Err(RunError::new(
            crate::sampler::run::ErrorKind::Connection,
            "no connection",
        ));
    };
    let polled = poll_on(client, settings, tracker).await?;
    checkout.release();
    Ok(polled)
}

async fn poll_on(
    client: &mut deadpool_postgres::Object,
    settings: &ReaderSettings,
    tracker: &mut Tracker,
) -> Result<Polled, RunError> {
    let limit = settings.timeout + CLIENT_GRACE;
    let client: &mut tokio_postgres::Client = client;
    let txn = guarded(limit, client.build_transaction().read_only(true).start()).await?;
    guarded(
        limit,
        txn.batch_execute(&timeouts_sql(settings.timeout, settings.lock_timeout)),
    )
    .await?;
    let row = guarded(limit, txn.query_one(SETUP_SQL, &[])).await?;
    let setup = LogSetup::from_row(&row).map_err(|e| classify(&e))?;
    let Some(threshold_s) = setup.threshold_seconds().filter(|_| setup.ready()) else {
        guarded(limit, txn.commit()).await?;
        return Ok(Polled::Off(setup));
    };
    let rows = guarded(
        limit,
        txn.query("SELECT name, size FROM monitoring.log_files()", &[]),
    )
    .await?;
    let mut listing = Vec::with_capacity(rows.len());
    for r in &rows {
        let size: i64 = r.try_get(1).map_err(|e| classify(&e))?;
        listing.push(Listed {
            name: r.try_get(0).map_err(|e| classify(&e))?,
            size: u64::try_from(size).unwrap_or(0),
        });
    }
    let mut out = Outcome {
        threshold_s,
        user: setup.session_user.clone(),
        gap: tracker.reconcile(&listing),
        statements: 4,
        ..Outcome::default()
    };
    let threshold_ms = setup.min_duration_ms as f64;
    let read = guarded(limit, txn.prepare("SELECT monitoring.log_read($1, $2, $3)")).await?;
    let chunk = i64::from(settings.chunk_bytes);
    for file in &listing {
        while let Some((offset, left)) = tracker.next_read(&file.name) {
            if out.read >= MAX_BYTES_PER_POLL {
                break;
            }
            let want =
                i32::try_from(chunk.min(i64::try_from(left).unwrap_or(chunk))).unwrap_or(i32::MAX);
            let off = i64::try_from(offset).unwrap_or(i64::MAX);
            let row = guarded(limit, txn.query_one(&read, &[&file.name, &off, &want])).await?;
            out.statements += 1;
            let bytes: Option<Vec<u8>> = row.try_get(0).map_err(|e| classify(&e))?;
            let Some(bytes) = bytes else {
                out.gap += tracker.vanished(&file.name);
                break;
            };
            if bytes.is_empty() {
                tracker.ended(&file.name);
                break;
            }
            out.read += bytes.len() as u64;
            let me = &setup.session_user;
            let (tally, unparsed) = (&mut out.tally, &mut out.unparsed);
            let fed = tracker.feed(&file.name, &bytes, |line| match parse(line) {
                Line::Execution { datname, user, ms } => {
                    if ms >= threshold_ms && &user != me {
                        tally.add(datname, user);
                    }
                }
                Line::Unparsed => *unparsed += 1,
                Line::NotExecution | Line::Other => {}
            });
            out.unparsed += fed.oversized;
        }
    }
    guarded(limit, txn.commit()).await?;
    out.lag = tracker.lag();
    Ok(Polled::Read(out))
}
