//! The `health` family: `database_health_check()`'s rows without its walk of every
//! relation. The two checks that walk them (Table Bloat, Partition Runway) are measured here
//! from the pass's statistics and bounds, with the function's definitions; the report (the
//! other six checks, thresholds, statuses and wording) is `monitoring.health_report()`'s,
//! read in the pass's transaction ([`HEALTH_SQL`]).

use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::derive::{Row, by_parent, is_user_table, newest_end};
use super::facts::{Bounds, Facts};
use crate::catalog::derive::HEALTH_SQL;
use crate::db::outcome::{ErrorKind, RunError, classify};
use crate::sampler::cell::Cell;

/// Tables with fewer tuples (live and dead) are not judged.
const BLOAT_MIN_TUPLES: i64 = 1000;
/// A table with a larger share of dead tuples counts as bloated.
const BLOAT_RATIO: f64 = 0.1;

/// The worst bloated table: schema, name, dead tuple ratio, and how many tables are bloated.
#[derive(Debug, Clone, PartialEq)]
pub struct Bloat<'a> {
    /// Schema of the worst table.
    pub schema: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its dead tuple ratio.
    pub ratio: f64,
    /// The tables above the threshold.
    pub tables: i64,
}

/// Of the tables with at least 1000 tuples, those above 10 % dead ones, and the worst (ties
/// by schema and name).
pub fn bloat(facts: &Facts) -> Option<Bloat<'_>> {
    let mut worst: Option<Bloat<'_>> = None;
    let mut tables = 0;
    for r in facts.relations.iter().filter(|r| is_user_table(facts, r)) {
        let total = r.live() + r.dead();
        if total < BLOAT_MIN_TUPLES {
            continue;
        }
        let ratio = r.dead() as f64 / total as f64;
        if ratio <= BLOAT_RATIO {
            continue;
        }
        tables += 1;
        let this = facts.qualified(r);
        let better = worst
            .as_ref()
            .is_none_or(|w| ratio > w.ratio || (ratio == w.ratio && this < (w.schema, w.name)));
        if better {
            worst = Some(Bloat {
                schema: this.0,
                name: this.1,
                ratio,
                tables: 0,
            });
        }
    }
    worst.map(|w| Bloat { tables, ..w })
}

/// Of the time-range partitioned tables without a MAXVALUE partition, the one whose newest
/// partition ends first: schema, name and that end as a Unix time (ties by schema and name).
pub fn runway<'a>(facts: &'a Facts, bounds: &Bounds) -> Option<(&'a str, &'a str, f64)> {
    let direct = by_parent(bounds);
    facts
        .relations
        .iter()
        .filter(|p| {
            p.kind == b'p' && !matches!(facts.schema(p), "pg_catalog" | "information_schema")
        })
        .filter_map(|p| {
            let bounds = direct.get(&p.oid).map(Vec::as_slice).unwrap_or_default();
            let (schema, name) = facts.qualified(p);
            Some((schema, name, newest_end(p, bounds)?))
        })
        .min_by(|a, b| {
            a.2.total_cmp(&b.2)
                .then_with(|| (a.0, a.1).cmp(&(b.0, b.1)))
        })
}

/// The report's rows for what `facts` and `bounds` measure, in the function's order.
pub async fn report(
    txn: &Transaction<'_>,
    facts: &Facts,
    bounds: &Bounds,
) -> Result<Vec<Row>, RunError> {
    let b = bloat(facts);
    let r = runway(facts, bounds);
    let params: [&(dyn ToSql + Sync); 7] = [
        &b.as_ref().map(|b| b.schema),
        &b.as_ref().map(|b| b.name),
        &b.as_ref().map(|b| b.ratio),
        &b.as_ref().map(|b| b.tables),
        &r.map(|r| r.0),
        &r.map(|r| r.1),
        &r.map(|r| r.2),
    ];
    let rows = txn
        .query(HEALTH_SQL, &params)
        .await
        .map_err(|e| classify(&e))?;
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.try_get::<_, Cell>(i))
                .collect::<Result<Row, _>>()
                .map_err(|e| RunError::new(ErrorKind::Decode, format!("health report: {e}")))
        })
        .collect()
}
