//! The relation pass: one read of the per-relation facts per round, shared by every family
//! that declares `derive:` in the catalog (tables, indexes, partitions, cache, wraparound),
//! whose rows pgpulse then computes ([`derive`]).
//!
//! - [`facts`]: the statements' results as plain data.
//! - [`derive`]: rows of each family, with the definitions of the `monitoring.v_*` views.
//! - [`health`]: the health check's relation checks, and its report.
//!
//! Concurrency: the cached pass sits behind one async mutex. A family's tick takes it, reads
//! again only what is stale for it (facts older than half its interval, exact sizes older
//! than [`SIZES_EVERY`] of its intervals, bounds read for another set of partitions, the
//! DEFAULT partitions' rows when their writes changed), in one read-only transaction on one
//! pooled connection, and releases it; families whose ticks fall in the same round (first
//! runs are spread over 10 s) reuse that read. A family waiting for another's read holds no
//! connection.

pub mod derive;
pub mod facts;
pub mod health;
mod sizes;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::types::Type;

use super::decode::Decoder;
use super::run::Sampled;
use crate::catalog::{Derive, QuerySpec};
use crate::db::lease::Budget;
use crate::db::outcome::{ErrorKind, RunError, classify, pool_error};
use crate::db::session::{CLIENT_GRACE, begin_read_only, timeouts_sql};
use facts::{Bounds, Facts, Sizes};

/// Exact sizes stat every file of every relation: all of them are read again after this many
/// of the family's intervals (every fifteenth round, a quarter of an hour at 60 s), a safety
/// net; in between, each round reads those written, vacuumed or altered since their size was
/// read.
pub const SIZES_EVERY: u32 = 15;

/// The structure of the relations (names, partition tree, indexes: what changes only with
/// DDL) is read again when a round's statistics show a relation created, dropped or
/// altered, and after this many of the family's intervals in any case, a safety net for a
/// change that leaves the relations' catalog rows alone (a constraint adopting an index).
pub const SHAPE_EVERY: u32 = 15;

/// The last pass, shared by the derived families.
#[derive(Debug, Default)]
struct Cache {
    facts: Option<Facts>,
    sizes: Sizes,
    bounds: Bounds,
    /// The health report of the `health` family's last run.
    report: Vec<derive::Row>,
}

/// The relation pass and its cache.
#[derive(Debug, Default)]
pub struct RelationSource {
    cache: Mutex<Cache>,
}

/// What is stale for one family.
#[derive(Debug, Clone, Copy)]
struct Stale {
    facts: bool,
    shape: bool,
    all_sizes: bool,
}

impl RelationSource {
    /// Computes the rows of `spec` (a derived family) from a pass fresh enough for its
    /// interval, reading what is stale first.
    pub async fn sample(
        &self,
        budget: &Budget,
        spec: &Arc<QuerySpec>,
        family: Derive,
        lock_timeout: Duration,
    ) -> Result<Sampled, RunError> {
        let mut cache = tokio::time::timeout(spec.timeout, self.cache.lock())
            .await
            .map_err(|_| {
                RunError::new(
                    ErrorKind::Pool,
                    "waited longer than the timeout for another family's relation pass",
                )
            })?;
        let stale = Stale {
            facts: cache
                .facts
                .as_ref()
                .is_none_or(|f| f.at.elapsed() > spec.interval / 2),
            shape: cache
                .facts
                .as_ref()
                .is_none_or(|f| f.shape_at.elapsed() > spec.interval * SHAPE_EVERY),
            all_sizes: family.needs_sizes()
                && cache
                    .sizes
                    .all_at
                    .is_none_or(|at| at.elapsed() > spec.interval * SIZES_EVERY),
        };
        if stale.facts || stale.all_sizes || reads_anyway(&cache, family, spec.interval) {
            let guard = spec.timeout + CLIENT_GRACE;
            let read = read(budget, spec, lock_timeout, &mut cache, family, stale);
            tokio::time::timeout(guard, read).await.map_err(|_| {
                RunError::new(
                    ErrorKind::Timeout,
                    format!("no answer within {}s; connection dropped", guard.as_secs()),
                )
            })??;
        }
        let cache = &*cache;
        let Some(facts) = cache.facts.as_ref() else {
            return Err(RunError::new(
                ErrorKind::Decode,
                "relation pass read nothing",
            ));
        };
        let rows = derive::rows(
            family,
            derive::Inputs {
                facts,
                sizes: &cache.sizes,
                bounds: &cache.bounds,
                report: &cache.report,
            },
        );
        let columns: Vec<(String, Type)> = family
            .columns()
            .iter()
            .map(|c| ((*c).to_owned(), Type::TEXT))
            .collect();
        let mut decoder = Decoder::new(spec, &columns)?;
        for row in rows {
            decoder.push_cells(&row)?;
        }
        let (result, stats) = decoder.finish();
        Ok(Sampled { result, stats })
    }
}

/// Whether a family's run reads from the database although the facts and sizes are fresh:
/// the health family its report, each run; the partitions family its bounds when the
/// partitions changed, and the DEFAULT partitions' rows when they may have changed (see
/// [`default_rows_due`]).
fn reads_anyway(cache: &Cache, family: Derive, interval: Duration) -> bool {
    let Some(facts) = cache.facts.as_ref() else {
        return true;
    };
    family == Derive::Health
        || (family.needs_bounds() && cache.bounds.fingerprint != facts.partitions_fingerprint())
        || (family.counts_default_rows()
            && default_rows_due(facts, &cache.bounds, interval).is_some())
}

/// The DEFAULT partitions' current signature when their rows are to be counted again: when it
/// ([`facts::Facts::default_rows_signature`]) changed since they were counted, and after
/// [`SIZES_EVERY`] of the family's intervals in any case (a safety net, e.g. for a server
/// that does not count writes, `track_counts = off`). Counting calls a function per
/// DEFAULT partition; at rest, when no row lands there, nothing changes.
fn default_rows_due(facts: &Facts, bounds: &Bounds, interval: Duration) -> Option<u64> {
    let now = facts.default_rows_signature(bounds);
    let due = bounds
        .default_rows_read
        .is_none_or(|(counted, at)| counted != now || at.elapsed() > interval * SIZES_EVERY);
    due.then_some(now)
}

/// Reads what is stale in one read-only transaction on one pooled connection.
async fn read(
    budget: &Budget,
    spec: &Arc<QuerySpec>,
    lock_timeout: Duration,
    cache: &mut Cache,
    family: Derive,
    stale: Stale,
) -> Result<(), RunError> {
    let mut checkout = budget
        .lease(Some(spec.timeout), spec.timeout + CLIENT_GRACE)
        .await
        .map_err(pool_error)?;
    let Some(client) = checkout.client() else {
        return Err(RunError::new(ErrorKind::Connection, "no connection"));
    };
    let outcome = read_in_transaction(client, spec, lock_timeout, cache, family, stale).await;
    // As for a catalog query: a connection whose transaction failed cleanly is reused.
    let reusable = outcome
        .as_ref()
        .map_or_else(RunError::leaves_connection_usable, |()| true);
    if reusable && checkout.client().is_some_and(|c| !c.is_closed()) {
        checkout.release();
    }
    outcome
}

/// Facts (when stale: the statistics, and the structure when it changed), then the sizes of
/// what changed (all when due), then the bounds when the partitions changed, the DEFAULT
/// partitions' rows and the health report when the family reads them.
async fn read_in_transaction(
    client: &mut deadpool_postgres::Object,
    spec: &Arc<QuerySpec>,
    lock_timeout: Duration,
    cache: &mut Cache,
    family: Derive,
    stale: Stale,
) -> Result<(), RunError> {
    // A snapshot makes the statistics of every relation one consistent copy, built once for
    // the statistics statement; without that statement (fresh facts) it would be built for
    // nothing: the DEFAULT rows and the health report read a few entries each.
    let consistency = if stale.facts { "snapshot" } else { "cache" };
    let settings = format!(
        "{}; SET LOCAL stats_fetch_consistency = {consistency}",
        timeouts_sql(spec.timeout, lock_timeout)
    );
    let txn = begin_read_only(client, &settings).await?;
    if stale.facts {
        // The statistics are complete and consistent once read, whatever happens next.
        let previous = cache.facts.take();
        cache.facts = Some(facts::refresh_facts(&txn, previous, stale.shape).await?);
    }
    let Some(facts) = cache.facts.as_ref() else {
        return Err(RunError::new(
            ErrorKind::Decode,
            "relation pass read nothing",
        ));
    };
    if family.needs_sizes() {
        read_changed_sizes(&txn, facts, &mut cache.sizes, stale.all_sizes).await?;
    }
    // Bounds, DEFAULT rows and the report read are true whatever happens next; each is
    // kept only when its whole read succeeded.
    let fingerprint = facts.partitions_fingerprint();
    if family.needs_bounds() && cache.bounds.fingerprint != fingerprint {
        cache.bounds = facts::read_bounds(&txn, fingerprint).await?;
    }
    let due = family
        .counts_default_rows()
        .then(|| default_rows_due(facts, &cache.bounds, spec.interval))
        .flatten();
    if let Some(signature) = due {
        facts::read_default_rows(&txn, &mut cache.bounds).await?;
        cache.bounds.default_rows_read = Some((signature, std::time::Instant::now()));
    }
    if family == Derive::Health {
        cache.report = health::report(&txn, facts, &cache.bounds).await?;
    }
    txn.commit().await.map_err(|e| classify(&e))?;
    Ok(())
}

/// Reads the sizes of the relations changed since their size was read (all when `all`).
async fn read_changed_sizes(
    txn: &tokio_postgres::Transaction<'_>,
    facts: &Facts,
    cached: &mut Sizes,
    all: bool,
) -> Result<(), RunError> {
    let wanted = sizes::signatures(facts);
    let changed: Vec<u32> = match all {
        true => Vec::new(),
        false => wanted
            .iter()
            .filter(|&&(oid, sig)| cached.read_at(oid) != Some(sig))
            .map(|(oid, _)| *oid)
            .collect(),
    };
    if all || !changed.is_empty() {
        let read = facts::read_sizes(txn, cached, all, &changed).await;
        // Sizes read are true whatever happens next; they count as read only when all were.
        read?;
        cached.settle(&wanted, all, &changed);
    }
    Ok(())
}
