//! The autovacuum tuning `migrate` gives the trade tables of the configuration
//! ([`super::trade_tables`]): the specification's scale factors, set only on the configured
//! tables that exist with their configured shape (on a partitioned one, on the partitions that
//! can still be written, as V006 does), never on another table that shares a reference name.
//!
//! V006 (append-only, so it cannot change) tunes `public.orders` .. `public.market_data` by
//! name. So `migrate` notes the reloptions of those tables before V006 runs and, after the
//! migrations, restores them on every one that is not a configured trade table of the right
//! shape: the unrelated table ends as it was. Where V006 ran in an earlier `migrate`, it resets
//! the two settings on such a table only where both still hold exactly V006's values.
//!
//! Every statement runs in its own short transaction with `SET LOCAL lock_timeout` and
//! `statement_timeout`; a table that cannot be altered (not its owner, a lock not granted in
//! time) is skipped and said so. Names in ALTER statements are the server's own quoting of the
//! relation (`oid::regclass`), never configuration text.

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::Client;

use super::migrate_error::{MigrateError, db};
use super::outcome::describe;
use super::trade_tables::{Role, Shape, TradeTables, describe as describe_table, shapes};

const VACUUM: &str = "autovacuum_vacuum_scale_factor";
const ANALYZE: &str = "autovacuum_analyze_scale_factor";

/// Per statement: wait at most this long for a lock, then skip the table.
const TIMEOUTS: &str = "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '60s'";

/// Reloptions of relations by oid, as read before V006 ran.
#[derive(Debug, Clone, Default)]
pub(crate) struct Before(Vec<(u32, Option<Vec<String>>)>);

/// Every relation of the reference-named tables' trees (the table and its partitions): oid,
/// quoted name, reloptions, and which reference table it belongs to.
const REFERENCE_TREES_SQL: &str = "\
SELECT c.oid, c.oid::regclass::text, c.reloptions, p.relname::text \
FROM unnest(ARRAY['orders', 'trades', 'order_book', 'market_data']) AS n(name) \
JOIN pg_catalog.pg_class p ON p.relname = n.name \
 AND p.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'public') \
CROSS JOIN LATERAL (SELECT p.oid AS relid UNION SELECT relid FROM pg_catalog.pg_partition_tree(p.oid)) t \
JOIN pg_catalog.pg_class c ON c.oid = t.relid";

/// Every relation of the trees of the given tables (schema, name): the table and its partitions.
const TREES_SQL: &str = "\
SELECT t.relid FROM unnest($1::text[], $2::text[]) AS m(nsp, rel) \
JOIN pg_catalog.pg_namespace n ON n.nspname = m.nsp \
JOIN pg_catalog.pg_class p ON p.relnamespace = n.oid AND p.relname = m.rel \
CROSS JOIN LATERAL (SELECT p.oid AS relid UNION SELECT relid FROM pg_catalog.pg_partition_tree(p.oid)) t";

/// The relations to tune of one table: itself when plain, else its leaf partitions that can
/// still be written (DEFAULT, no time bound, or an upper bound after the UTC month start - 3
/// months), as V006 chooses them; with their reloptions.
const TARGETS_SQL: &str = "\
WITH p AS (SELECT c.oid, c.relkind FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           WHERE n.nspname = $1 AND c.relname = $2), \
cutoff AS (SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '3 months') \
                  AT TIME ZONE 'UTC' AS at) \
SELECT c.oid::regclass::text, c.reloptions FROM p JOIN pg_catalog.pg_class c ON c.oid = p.oid \
WHERE p.relkind = 'r' \
UNION ALL \
SELECT c.oid::regclass::text, c.reloptions FROM p, cutoff, monitoring.partition_bounds(p.oid) b \
CROSS JOIN LATERAL pg_catalog.pg_partition_tree(b.partition_oid) t \
JOIN pg_catalog.pg_class c ON c.oid = t.relid \
WHERE p.relkind = 'p' AND c.relkind = 'r' \
  AND (b.is_default OR b.range_end IS NULL OR b.range_end > cutoff.at)";

fn option<'a>(opts: &'a Option<Vec<String>>, key: &str) -> Option<&'a str> {
    opts.iter()
        .flatten()
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

/// Reads the reloptions of the reference-named tables (call before V006 runs).
pub(crate) async fn before(client: &mut Client) -> Result<Before, MigrateError> {
    let tx = client.transaction().await.map_err(db("read reloptions"))?;
    tx.batch_execute(TIMEOUTS)
        .await
        .map_err(db("read reloptions"))?;
    let rows = tx
        .query(REFERENCE_TREES_SQL, &[])
        .await
        .map_err(db("read reloptions"))?;
    tx.commit().await.map_err(db("read reloptions"))?;
    Ok(Before(rows.iter().map(|r| (r.get(0), r.get(2))).collect()))
}

/// Runs one ALTER TABLE in its own transaction with the timeouts.
async fn alter(client: &mut Client, sql: &str) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| describe(&e))?;
    tx.batch_execute(TIMEOUTS).await.map_err(|e| describe(&e))?;
    tx.batch_execute(sql).await.map_err(|e| describe(&e))?;
    tx.commit().await.map_err(|e| describe(&e))
}

/// Tunes the configured tables that exist with their shape and leaves every other
/// reference-named table as `before` found it (or resets V006's exact values on it when
/// `before` is `None`). Returns one line per table: what was tuned, skipped or restored.
pub(crate) async fn tune(
    client: &mut Client,
    tables: &TradeTables,
    before: Option<&Before>,
) -> Result<Vec<String>, MigrateError> {
    // The reads below run outside the per-ALTER transactions: bound them too.
    client
        .batch_execute("SET lock_timeout = '2s'; SET statement_timeout = '60s'")
        .await
        .map_err(db("set the session timeouts"))?;
    let refs: Vec<_> = tables.iter().map(|(_, t)| t).collect();
    let found = shapes(client, &refs)
        .await
        .map_err(db("read the trade tables"))?;
    let mut lines = Vec::new();
    for ((role, t), shape) in tables.iter().zip(&found) {
        let Some((vacuum, analyze)) = role.autovacuum() else {
            continue;
        };
        if *shape != Shape::Found {
            lines.push(format!("skipped {}", describe_table(role, t, shape)));
            continue;
        }
        let rows = client
            .query(TARGETS_SQL, &[&t.schema, &t.name])
            .await
            .map_err(db("read the partitions to tune"))?;
        let (mut done, mut set, mut failed) = (0, 0, Vec::new());
        for r in &rows {
            let (rel, opts): (String, Option<Vec<String>>) = (r.get(0), r.get(1));
            if option(&opts, VACUUM) == Some(vacuum) && option(&opts, ANALYZE) == Some(analyze) {
                done += 1;
                continue;
            }
            let sql = format!("ALTER TABLE {rel} SET ({VACUUM} = {vacuum}, {ANALYZE} = {analyze})");
            match alter(client, &sql).await {
                Ok(()) => set += 1,
                Err(e) => failed.push(format!("{rel}: {e}")),
            }
        }
        lines.push(format!(
            "tuned   {} {t}: {VACUUM} = {vacuum}, {ANALYZE} = {analyze} on {} table(s) ({set} changed, {done} already set)",
            role.key(),
            set + done
        ));
        if !failed.is_empty() {
            lines.push(format!(
                "skipped {} {t} on {} table(s) (run migrate as the owner, or again when it is not locked): {}",
                role.key(),
                failed.len(),
                failed.join("; ")
            ));
        }
    }
    let keep = configured_trees(client, tables, &found).await?;
    lines.extend(leave_alone(client, &keep, before).await?);
    client
        .batch_execute("RESET lock_timeout; RESET statement_timeout")
        .await
        .map_err(db("reset the session timeouts"))?;
    Ok(lines)
}

/// The relations of the configured tables that exist with their shape (tuning them is right).
async fn configured_trees(
    client: &Client,
    tables: &TradeTables,
    found: &[Shape],
) -> Result<HashSet<u32>, MigrateError> {
    let (nsps, rels): (Vec<&str>, Vec<&str>) = tables
        .iter()
        .zip(found)
        .filter(|(_, s)| s.is_found())
        .map(|((_, t), _)| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let rows = client
        .query(TREES_SQL, &[&nsps, &rels])
        .await
        .map_err(db("read the trade tables' partitions"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The statement that makes `now`'s two settings what `want` says (`None`: reset), or `None`
/// when nothing differs. Values are written only when they read as numbers.
fn restore_sql(rel: &str, now: &Option<Vec<String>>, want: &Option<Vec<String>>) -> Option<String> {
    let (mut set, mut reset) = (Vec::new(), Vec::new());
    for key in [VACUUM, ANALYZE] {
        let (n, w) = (option(now, key), option(want, key));
        match w {
            _ if n == w => {}
            Some(v) if v.parse::<f64>().is_ok() => set.push(format!("{key} = {v}")),
            Some(_) => {}
            None => reset.push(key),
        }
    }
    let mut parts = Vec::new();
    if !set.is_empty() {
        parts.push(format!("ALTER TABLE {rel} SET ({})", set.join(", ")));
    }
    if !reset.is_empty() {
        parts.push(format!("ALTER TABLE {rel} RESET ({})", reset.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Restores (or resets V006's exact values on) the reference-named tables that are not a
/// configured trade table of the right shape; one line per such table.
async fn leave_alone(
    client: &mut Client,
    keep: &HashSet<u32>,
    before: Option<&Before>,
) -> Result<Vec<String>, MigrateError> {
    let rows = client
        .query(REFERENCE_TREES_SQL, &[])
        .await
        .map_err(db("read reloptions"))?;
    // Reference table → (relations restored, failures).
    let mut per_table: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for r in rows.iter().filter(|r| !keep.contains(&r.get::<_, u32>(0))) {
        let (oid, rel, now, table): (u32, String, Option<Vec<String>>, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let want = match before {
            Some(b) => b.0.iter().find(|(o, _)| *o == oid).map(|(_, o)| o.clone()),
            None => v006_reset(&table, &now),
        };
        let entry = per_table.entry(table).or_default();
        if let Some(sql) = want.and_then(|w| restore_sql(&rel, &now, &w)) {
            match alter(client, &sql).await {
                Ok(()) => entry.0 += 1,
                Err(e) => entry.1.push(format!("{rel}: {e}")),
            }
        }
    }
    Ok(per_table
        .into_iter()
        .map(|(table, (restored, failed))| {
            let mut l = format!(
                "skipped \"public\".\"{table}\": not a configured trade table of the expected \
                 shape; its autovacuum settings left as they were ({restored} table(s) restored)"
            );
            if !failed.is_empty() {
                l.push_str(&format!("; could not restore: {}", failed.join("; ")));
            }
            l
        })
        .collect())
}

/// Without a reading from before V006: the settings to restore on a relation of reference
/// table `table` that holds exactly V006's two values (both reset), else `None`.
fn v006_reset(table: &str, now: &Option<Vec<String>>) -> Option<Option<Vec<String>>> {
    let (vacuum, analyze) = Role::from_key(table)?.autovacuum()?;
    let exact = option(now, VACUUM) == Some(vacuum) && option(now, ANALYZE) == Some(analyze);
    exact.then(|| {
        now.as_ref().map(|o| {
            o.iter()
                .filter(|x| !x.starts_with(VACUUM) && !x.starts_with(ANALYZE))
                .cloned()
                .collect()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn restoring_sets_what_was_there_and_resets_what_was_not() {
        let now = opts(&[
            "autovacuum_vacuum_scale_factor=0.1",
            "autovacuum_analyze_scale_factor=0.05",
        ]);
        let was = opts(&["autovacuum_vacuum_scale_factor=0.3", "fillfactor=90"]);
        assert_eq!(
            restore_sql("t", &now, &was).unwrap(),
            "ALTER TABLE t SET (autovacuum_vacuum_scale_factor = 0.3); \
             ALTER TABLE t RESET (autovacuum_analyze_scale_factor)"
        );
        assert_eq!(restore_sql("t", &was, &was), None);
        let hostile = opts(&["autovacuum_vacuum_scale_factor=0); DROP TABLE x; --"]);
        assert_eq!(restore_sql("t", &None, &hostile), None);
    }

    #[test]
    fn only_v006s_exact_values_are_reset_without_a_reading_from_before() {
        let v6 = opts(&[
            "autovacuum_vacuum_scale_factor=0.1",
            "autovacuum_analyze_scale_factor=0.05",
            "fillfactor=90",
        ]);
        assert_eq!(v006_reset("orders", &v6), Some(opts(&["fillfactor=90"])));
        let own = opts(&[
            "autovacuum_vacuum_scale_factor=0.1",
            "autovacuum_analyze_scale_factor=0.2",
        ]);
        assert_eq!(v006_reset("orders", &own), None);
        assert_eq!(v006_reset("trades", &v6), None);
    }
}
