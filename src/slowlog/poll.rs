//! One poll of the slow-statement log, on one pooled connection, in one read-only
//! transaction with `SET LOCAL statement_timeout` and `lock_timeout`: inspect the setup, list
//! the log directory through `monitoring.log_files()`, have the server tally every file's new
//! complete lines through `monitoring.log_tally(...)` window by window, and list the
//! (database, user) pairs of the sessions open now.
//!
//! The server parses the lines (V012): what comes back is how far the complete lines of a
//! window go and the executions at or over the threshold in them per (database, user), never
//! a line's text. A window starts at `slow_log.chunk_bytes`; when it holds no complete line it
//! is read again twice as large, up to [`MAX_WINDOW`] (a line of 8 MiB and its newline), so a
//! long line is counted whole; a longer one is skipped and counted as unparsed.
//!
//! Each statement also has a client-side guard (the statement timeout plus
//! [`CLIENT_GRACE`]); a connection whose poll failed is dropped, not returned to the pool.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::{GenericClient, Statement};

use super::ReaderSettings;
use super::files::{Listed, Tracker};
use super::metrics::{SlowLabels, Tally};
use crate::db::lease::Budget;
use crate::db::log_access::{LogSetup, SETUP_SQL};
use crate::db::outcome::{ErrorKind, RunError, classify, pool_error};
use crate::db::session::{CLIENT_GRACE, timeouts_sql};
use crate::plans::slo::KeyQuery;

/// The most bytes one poll reads; the rest waits for the next poll (and shows as lag).
pub const MAX_BYTES_PER_POLL: u64 = 64 * 1024 * 1024;

/// The largest window `monitoring.log_tally` reads: a line of 8 MiB and its newline.
pub const MAX_WINDOW: u32 = 8 * 1024 * 1024 + 1;

/// One window of one file, tallied on the server, with the key queries' executions at or over
/// their targets (V015's helper).
pub const TALLY_SQL: &str = "SELECT bytes_read, consumed, skipping, unparsed, oversized, \
     datnames, usernames, executions, key_executions \
     FROM monitoring.log_tally($1::text, $2::bigint, $3::integer, $4::float8, $5::boolean, \
     $6::int8[], $7::float8[])";

/// One window of one file, tallied by V012's helper (no key queries; a non-superuser ran
/// V015 and no superuser has run `pgpulse migrate` since).
pub const TALLY_V012_SQL: &str = "SELECT bytes_read, consumed, skipping, unparsed, oversized, \
     datnames, usernames, executions \
     FROM monitoring.log_tally($1::text, $2::bigint, $3::integer, $4::float8, $5::boolean)";

/// The (database, user) pairs of the client sessions open now, pgpulse's own role excepted,
/// as bytes (a name need not be valid UTF-8).
const SESSIONS_SQL: &str = "SELECT DISTINCT textsend(datname::text), textsend(usename::text) \
     FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND datname IS NOT NULL AND usename IS NOT NULL \
       AND usename <> session_user \
     ORDER BY 1, 2 LIMIT $1";

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
    /// The (database, user) pairs of the sessions open during the poll.
    pub sessions: Vec<SlowLabels>,
    /// The threshold in seconds.
    pub threshold_s: f64,
    /// pgpulse's login role.
    pub user: String,
    /// Bytes the server read for the poll.
    pub read: u64,
    /// Bytes lost to removed or truncated files.
    pub gap: u64,
    /// Lines that were not jsonlog objects or too long.
    pub unparsed: u64,
    /// Bytes listed and not read yet.
    pub lag: u64,
    /// Statements sent.
    pub statements: u64,
    /// Executions at or over its target of each key query of the poll, in its order; `None`
    /// when the helper counts no key query (V012's).
    pub key_misses: Option<Vec<u64>>,
}

/// What reading one file needs besides the connection.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// [`TALLY_SQL`] (or [`TALLY_V012_SQL`] when `keys` is `None`), prepared.
    pub statement: &'a Statement,
    /// The key queries' identifiers and targets in milliseconds, for [`TALLY_SQL`].
    pub keys: Option<(&'a [i64], &'a [f64])>,
    /// Executions at or over this many milliseconds count.
    pub threshold_ms: f64,
    /// pgpulse's own role, whose executions are not counted.
    pub me: &'a str,
    /// The first window (`slow_log.chunk_bytes`).
    pub chunk: u32,
    /// The client-side guard of each statement.
    pub limit: Duration,
}

async fn guarded<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, RunError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| classify(&e)),
        Err(_) => Err(RunError::new(
            ErrorKind::Timeout,
            "no answer from the database; connection dropped",
        )),
    }
}

/// Runs one poll; `tracker` keeps the offsets between polls; `keys` are the key queries whose
/// executions over their targets are counted.
pub async fn poll_once(
    budget: &Budget,
    settings: &ReaderSettings,
    tracker: &mut Tracker,
    keys: &[KeyQuery],
) -> Result<Polled, RunError> {
    let mut checkout = budget
        .lease(Some(settings.timeout), settings.timeout + CLIENT_GRACE)
        .await
        .map_err(pool_error)?;
    let Some(client) = checkout.client() else {
        return Err(RunError::new(ErrorKind::Connection, "no connection"));
    };
    let polled = poll_on(client, settings, tracker, keys).await?;
    checkout.release();
    Ok(polled)
}

async fn poll_on(
    client: &mut deadpool_postgres::Object,
    settings: &ReaderSettings,
    tracker: &mut Tracker,
    keys: &[KeyQuery],
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
    let listing = list(&txn, limit).await?;
    let mut out = Outcome {
        threshold_s,
        user: setup.session_user.clone(),
        gap: tracker.reconcile(&listing),
        sessions: sessions(&txn, limit, settings.max_series).await?,
        statements: 5,
        key_misses: setup.counts_key_queries.then(|| vec![0; keys.len()]),
        ..Outcome::default()
    };
    let sql = match setup.counts_key_queries {
        true => TALLY_SQL,
        false => TALLY_V012_SQL,
    };
    let statement = guarded(limit, txn.prepare(sql)).await?;
    let ids: Vec<i64> = keys.iter().map(|k| k.query_id).collect();
    let targets: Vec<f64> = keys
        .iter()
        .map(|k| k.target.as_secs_f64() * 1000.0)
        .collect();
    let reading = Reading {
        statement: &statement,
        keys: setup.counts_key_queries.then_some((&ids[..], &targets[..])),
        threshold_ms: threshold_s * 1000.0,
        me: &setup.session_user,
        chunk: settings.chunk_bytes,
        limit,
    };
    for file in &listing {
        tally_file(&txn, &reading, &file.name, tracker, &mut out).await?;
    }
    guarded(limit, txn.commit()).await?;
    out.lag = tracker.lag();
    Ok(Polled::Read(out))
}

async fn list(client: &impl GenericClient, limit: Duration) -> Result<Vec<Listed>, RunError> {
    let rows = guarded(
        limit,
        client.query("SELECT name, size FROM monitoring.log_files()", &[]),
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
    Ok(listing)
}

async fn sessions(
    client: &impl GenericClient,
    limit: Duration,
    max_series: usize,
) -> Result<Vec<SlowLabels>, RunError> {
    let most = i64::try_from(max_series).unwrap_or(i64::MAX);
    let rows = guarded(limit, client.query(SESSIONS_SQL, &[&most])).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let datname: Vec<u8> = r.try_get(0).map_err(|e| classify(&e))?;
        let user: Vec<u8> = r.try_get(1).map_err(|e| classify(&e))?;
        out.push(SlowLabels {
            datname: String::from_utf8_lossy(&datname).into_owned(),
            user: String::from_utf8_lossy(&user).into_owned(),
        });
    }
    Ok(out)
}

/// One window as the server tallied it.
#[derive(Debug)]
struct Window {
    bytes_read: u64,
    consumed: u64,
    skipping: bool,
    unparsed: u64,
}

/// Tallies the new complete lines of `name`, from the tracker's offset to the file's listed
/// end (or until the poll's [`MAX_BYTES_PER_POLL`]), into `out`; a line still being written
/// waits for the next poll.
pub async fn tally_file(
    client: &impl GenericClient,
    reading: &Reading<'_>,
    name: &str,
    tracker: &mut Tracker,
    out: &mut Outcome,
) -> Result<(), RunError> {
    let mut window = reading.chunk.clamp(1, MAX_WINDOW);
    while let Some(at) = tracker.next_read(name) {
        if out.read >= MAX_BYTES_PER_POLL {
            break;
        }
        let offset = i64::try_from(at.offset).unwrap_or(i64::MAX);
        let length = i32::try_from(window).unwrap_or(i32::MAX);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&name, &offset, &length, &reading.threshold_ms, &at.skipping];
        if let Some((ids, targets)) = &reading.keys {
            params.extend([ids as &(dyn tokio_postgres::types::ToSql + Sync), targets]);
        }
        let row = guarded(reading.limit, client.query_one(reading.statement, &params)).await?;
        out.statements += 1;
        let Some(w) = window_of(&row, reading.me, &mut out.tally)? else {
            out.gap += tracker.vanished(name);
            break;
        };
        if w.bytes_read == 0 {
            tracker.ended(name);
            break;
        }
        out.read += w.bytes_read;
        out.unparsed += w.unparsed;
        if let Some(misses) = out.key_misses.as_mut() {
            add_key_misses(&row, misses)?;
        }
        tracker.advance(name, w.consumed, w.skipping);
        if w.consumed > 0 || w.skipping {
            window = reading.chunk.clamp(1, MAX_WINDOW);
        } else if w.bytes_read < u64::from(window) || window == MAX_WINDOW {
            // A line still being written (the window came back short): the next poll.
            break;
        } else {
            window = window.saturating_mul(2).min(MAX_WINDOW);
        }
    }
    Ok(())
}

/// Adds the `key_executions` of a row of [`TALLY_SQL`] to `misses` (same order, same length).
fn add_key_misses(row: &tokio_postgres::Row, misses: &mut [u64]) -> Result<(), RunError> {
    let counts: Vec<i64> = row.try_get(8).map_err(|e| classify(&e))?;
    for (m, n) in misses.iter_mut().zip(counts) {
        *m += u64::try_from(n).unwrap_or(0);
    }
    Ok(())
}

/// Reads a row of [`TALLY_SQL`] (`None`: the file is gone) and adds its executions, but
/// pgpulse's own, to `tally`.
fn window_of(
    row: &tokio_postgres::Row,
    me: &str,
    tally: &mut Tally,
) -> Result<Option<Window>, RunError> {
    let get = |e: tokio_postgres::Error| classify(&e);
    let Some(bytes_read) = row.try_get::<_, Option<i32>>(0).map_err(get)? else {
        return Ok(None);
    };
    let consumed: i32 = row.try_get(1).map_err(get)?;
    let unparsed: i64 = row.try_get(3).map_err(get)?;
    let oversized: i64 = row.try_get(4).map_err(get)?;
    let datnames: Vec<Vec<u8>> = row.try_get(5).map_err(get)?;
    let users: Vec<Vec<u8>> = row.try_get(6).map_err(get)?;
    let executions: Vec<i64> = row.try_get(7).map_err(get)?;
    for ((datname, user), n) in datnames.iter().zip(&users).zip(&executions) {
        let user = String::from_utf8_lossy(user);
        if user != me {
            let datname = String::from_utf8_lossy(datname).into_owned();
            tally.add(datname, user.into_owned(), u64::try_from(*n).unwrap_or(0));
        }
    }
    Ok(Some(Window {
        bytes_read: u64::try_from(bytes_read).unwrap_or(0),
        consumed: u64::try_from(consumed).unwrap_or(0),
        skipping: row.try_get(2).map_err(get)?,
        unparsed: u64::try_from(unparsed.saturating_add(oversized)).unwrap_or(0),
    }))
}
