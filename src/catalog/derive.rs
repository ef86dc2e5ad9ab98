//! Metric families that pgpulse derives from one pass over the relations instead of
//! running SQL of their own (`derive:` in queries.yaml), and the statements of that pass.
//!
//! At 10,000 partitions every per-table view walks the whole catalog again and stats every
//! file; the pass reads, per round, the statistics of every relation (one
//! `stats_fetch_consistency = snapshot` of the cumulative statistics, [`STATS_SQL`]), the
//! structure (names, partition tree, indexes: [`FACTS_SQL`]) only when a relation was
//! created, dropped or altered, the exact sizes of the relations written, vacuumed or
//! altered since they were read (all of them every fifteenth round), and the partition
//! bounds only when a partition was created, attached or detached. The roll-ups to parents,
//! top-N and ratios are computed by pgpulse (`sampler::relations`) with the same
//! definitions as the `monitoring.v_*` views.

use serde::Deserialize;

/// A family derived from the relation pass; each names the view whose definition it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Derive {
    /// Per table statistics rolled up to the parent, top 100 by size (`v_table_stats`).
    Tables,
    /// Scans per relation of the top 100 tables by size, for a roll-up (`v_table_stats`).
    TableScans,
    /// Scans and size per index of the top 200 by size, for a roll-up (`v_index_usage`).
    Indexes,
    /// Index cache hit ratio per table, top 100 by block accesses (`v_index_cache_hit_ratio`).
    IndexCache,
    /// Cache hits and reads of user tables by kind: heap, index, toast (`v_cache_hit_ratio`).
    CacheHit,
    /// Count and size of never-scanned, unconstrained indexes (`v_unused_indexes`).
    UnusedIndexes,
    /// Per partitioned table health and runway, top 100 by size (`v_partition_health`).
    Partitions,
    /// Rows inserted per direct partition, for a roll-up per parent (`v_partition_growth`).
    PartitionGrowth,
    /// The 20 tables (rolled up to their partition root) with the oldest relfrozenxid.
    TableWraparound,
    /// The rows of `database_health_check()`: its two relation checks (Table Bloat,
    /// Partition Runway) measured from the pass, the report read with [`HEALTH_SQL`].
    Health,
}

impl Derive {
    /// The name as written in queries.yaml.
    pub fn name(self) -> &'static str {
        match self {
            Derive::Tables => "tables",
            Derive::TableScans => "table_scans",
            Derive::Indexes => "indexes",
            Derive::IndexCache => "index_cache",
            Derive::CacheHit => "cache_hit",
            Derive::UnusedIndexes => "unused_indexes",
            Derive::Partitions => "partitions",
            Derive::PartitionGrowth => "partition_growth",
            Derive::TableWraparound => "table_wraparound",
            Derive::Health => "health",
        }
    }

    /// The columns the family's rows carry (labels, values and roll-up keys come from these).
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Derive::Tables => &[
                "schemaname",
                "relname",
                "live",
                "dead",
                "dead_ratio",
                "bytes",
                "index_usage",
                "vacuum_age",
                "analyze_age",
            ],
            Derive::TableScans => &["relid", "schemaname", "relname", "seq_scans", "idx_scans"],
            Derive::Indexes => &[
                "indexrelid",
                "schemaname",
                "relname",
                "indexrelname",
                "scans",
                "bytes",
            ],
            Derive::IndexCache => &["schemaname", "relname", "ratio"],
            Derive::CacheHit => &["kind", "blks_hit", "blks_read", "hit_ratio"],
            Derive::UnusedIndexes => &["n", "bytes"],
            Derive::Partitions => &[
                "parent",
                "partition_count",
                "total_bytes",
                "total_rows",
                "default_partition_rows",
                "runway_seconds",
            ],
            Derive::PartitionGrowth => &["parent", "partition", "inserted"],
            Derive::TableWraparound => &["schemaname", "relname", "xid_age", "mxid_age"],
            Derive::Health => &[
                "check",
                "status_code",
                "status",
                "value",
                "threshold",
                "recommendation",
            ],
        }
    }

    /// Whether the family needs the exact sizes of the pass.
    pub fn needs_sizes(self) -> bool {
        matches!(
            self,
            Derive::Tables
                | Derive::TableScans
                | Derive::Indexes
                | Derive::UnusedIndexes
                | Derive::Partitions
        )
    }

    /// Whether the family needs the partition bounds.
    pub fn needs_bounds(self) -> bool {
        matches!(self, Derive::Partitions | Derive::Health)
    }

    /// Whether the family counts the rows of DEFAULT partitions (when they may have changed).
    pub fn counts_default_rows(self) -> bool {
        matches!(self, Derive::Partitions)
    }
}

/// The relations the pass reads: every table, partitioned table, TOAST table, index and
/// foreign table outside the system schemas, and the catalog tables (for their wraparound
/// ages). Shared by [`FACTS_SQL`] and [`STATS_SQL`], so both read the same rows.
macro_rules! relations_of_the_pass {
    () => {
        "
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    };
}

/// The filter of [`relations_of_the_pass`].
macro_rules! where_of_the_pass {
    () => {
        "
 WHERE c.relkind IN ('r', 'm', 'p', 't', 'i', 'I', 'f')
   AND (n.nspname NOT IN ('pg_catalog', 'information_schema') OR c.relkind IN ('r', 'm'))"
    };
}

/// The cumulative statistics and ages of a relation, in the columns [`STATS_COLUMNS`]
/// names (positions 2 onwards of both statements). Each function is called only for the
/// kinds of relation it has statistics for.
macro_rules! statistics_of_the_pass {
    () => {
        "
       CASE WHEN c.relkind IN ('r', 'm', 't', 'i') THEN pg_catalog.pg_stat_get_numscans(c.oid) END AS scans,
       CASE WHEN c.relkind IN ('r', 'm', 't', 'i') THEN pg_catalog.pg_stat_get_blocks_fetched(c.oid) END AS blks_fetched,
       CASE WHEN c.relkind IN ('r', 'm', 't', 'i') THEN pg_catalog.pg_stat_get_blocks_hit(c.oid) END AS blks_hit,
       CASE WHEN c.relkind IN ('r', 'm', 't', 'p', 'f') THEN pg_catalog.pg_stat_get_live_tuples(c.oid) END AS live,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.pg_stat_get_dead_tuples(c.oid) END AS dead,
       CASE WHEN c.relkind IN ('r', 'm', 't', 'p', 'f') THEN pg_catalog.pg_stat_get_tuples_inserted(c.oid) END AS inserted,
       CASE WHEN c.relkind IN ('r', 'm', 't') THEN pg_catalog.pg_stat_get_tuples_updated(c.oid)
            + pg_catalog.pg_stat_get_tuples_deleted(c.oid) + pg_catalog.pg_stat_get_vacuum_count(c.oid)
            + pg_catalog.pg_stat_get_autovacuum_count(c.oid) END AS changes,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.date_part('epoch', pg_catalog.pg_stat_get_last_vacuum_time(c.oid)) END AS last_vacuum,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.date_part('epoch', pg_catalog.pg_stat_get_last_autovacuum_time(c.oid)) END AS last_autovacuum,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.date_part('epoch', pg_catalog.pg_stat_get_last_analyze_time(c.oid)) END AS last_analyze,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.date_part('epoch', pg_catalog.pg_stat_get_last_autoanalyze_time(c.oid)) END AS last_autoanalyze,
       CASE WHEN c.relkind IN ('r', 'm', 't') THEN pg_catalog.age(c.relfrozenxid) END AS xid_age,
       CASE WHEN c.relkind IN ('r', 'm', 't') THEN pg_catalog.mxid_age(c.relminmxid) END AS mxid_age"
    };
}

/// The columns of [`statistics_of_the_pass`], in order, after `oid` and `version`.
pub(crate) const STATS_COLUMNS: [&str; 13] = [
    "scans",
    "blks_fetched",
    "blks_hit",
    "live",
    "dead",
    "inserted",
    "changes",
    "last_vacuum",
    "last_autovacuum",
    "last_analyze",
    "last_autoanalyze",
    "xid_age",
    "mxid_age",
];

/// The per-relation facts in full: what changes only with DDL (names, kinds, the partition
/// tree, TOAST tables, what an index belongs to and whether it backs a constraint) and the
/// statistics. Read at start, when [`STATS_SQL`] shows that a relation was created, dropped
/// or altered (its catalog row's `xmin`, `version`, changed), and every
/// [`SHAPE_EVERY`](crate::sampler::relations::SHAPE_EVERY)th round as a safety net. Run
/// with `stats_fetch_consistency = snapshot`, so every `pg_stat_get_*` call reads one
/// consistent copy of the statistics, built once, instead of a shared-memory lookup per call.
pub(crate) const FACTS_SQL: &str = concat!(
    "SELECT c.oid, c.xmin AS version,",
    statistics_of_the_pass!(),
    ",
       n.nspname::text AS schemaname, c.relname::text AS relname,
       c.relkind::text AS relkind, c.relpersistence = 't' AS temp,
       i.inhparent AS parent,
       nullif(c.reltoastrelid, 0) AS toast,
       x.indrelid,
       coalesce(x.indisunique OR x.indisprimary OR k.conindid IS NOT NULL, false) AS constrained,
       pt.partstrat::text AS strategy",
    relations_of_the_pass!(),
    "
  LEFT JOIN pg_catalog.pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
  LEFT JOIN pg_catalog.pg_index x ON x.indexrelid = c.oid
  LEFT JOIN (SELECT DISTINCT conindid FROM pg_catalog.pg_constraint WHERE conindid <> 0) k ON k.conindid = c.oid
  LEFT JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = c.oid",
    where_of_the_pass!()
);

/// The statistics of every relation of [`FACTS_SQL`], with its catalog row's `xmin`: the
/// statement of an ordinary round, about a third of the full one's cost at 10,000
/// relations. When a relation is missing, new, or its `version` changed, the round reads
/// [`FACTS_SQL`] instead.
pub(crate) const STATS_SQL: &str = concat!(
    "SELECT c.oid, c.xmin AS version,",
    statistics_of_the_pass!(),
    relations_of_the_pass!(),
    where_of_the_pass!()
);

/// The server's time of the pass (its transaction's `now()`), as a Unix time.
pub(crate) const NOW_SQL: &str = "SELECT pg_catalog.date_part('epoch', pg_catalog.now())";

/// The exact sizes: what `v_table_stats` (`pg_table_size`, `pg_indexes_size`) and
/// `v_index_usage` (`pg_relation_size`) report. Each call stats the relation's files, so a
/// round reads only the relations written, vacuumed or altered since their size was read
/// (`$2`), and every fifteenth round all of them (`$1`).
pub(crate) const SIZES_SQL: &str = "\
SELECT c.oid::int8 AS oid,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.pg_table_size(c.oid) END AS table_bytes,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.pg_indexes_size(c.oid) END AS indexes_bytes,
       CASE WHEN c.relkind = 'i' THEN pg_catalog.pg_relation_size(c.oid) END AS main_bytes
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'm', 'i')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
   AND ($1::bool OR c.oid = ANY ($2::oid[]))";

/// The rows of each DEFAULT partition (`monitoring.default_partition_rows`, which counts
/// them: a sequential scan of that partition), read only for the `partitions` family's runs,
/// not every round, so pgpulse's own counting does not inflate the scans it reports.
pub(crate) const DEFAULT_ROWS_SQL: &str = "\
SELECT pt.partrelid::int8 AS oid, coalesce(monitoring.default_partition_rows(pt.partdefid), 0) AS default_rows
  FROM pg_catalog.pg_partitioned_table pt
 WHERE pt.partdefid <> 0";

/// The partition bounds (`monitoring.partition_bounds()`, as `v_partition_health` reads
/// them), read again only when the set of partitions or one of their catalog rows changed.
pub(crate) const BOUNDS_SQL: &str = "\
SELECT partition_oid::int8 AS oid, parent_oid::int8 AS parent, is_default,
       extract(epoch FROM range_end)::float8 AS range_end, range_end_is_maxvalue AS maxvalue
  FROM monitoring.partition_bounds()";

/// The health report (`monitoring.health_report()`, V016) for the two relation checks that
/// pgpulse measured: the worst table above 10 % dead tuples (`$1` schema, `$2` name, `$3`
/// ratio, `$4` how many are above) and the time-range partitioned table whose newest
/// partition ends first (`$5` schema, `$6` name, `$7` that end as a Unix time); NULLs for
/// none. The other six checks are read by the function.
pub(crate) const HEALTH_SQL: &str = "\
SELECT check_name AS \"check\",
       CASE status WHEN 'OK' THEN 0 WHEN 'WARNING' THEN 1 WHEN 'CRITICAL' THEN 2 END AS status_code,
       status, value, threshold, recommendation
  FROM monitoring.health_report($1::text, $2::text, $3::float8, $4::int8, $5::text, $6::text,
                                pg_catalog.to_timestamp($7::float8))";

#[cfg(test)]
mod tests {
    use super::*;

    /// Both statements name the statistics in [`STATS_COLUMNS`]' order, right after `oid`
    /// and `version`, where `sampler::relations::facts` reads them by position.
    #[test]
    fn both_statements_carry_the_statistics_in_the_documented_order() {
        for sql in [FACTS_SQL, STATS_SQL] {
            let mut at = sql.find("AS version").expect("version column");
            for column in STATS_COLUMNS {
                let found = sql[at..]
                    .find(&format!(" AS {column},"))
                    .or_else(|| sql[at..].find(&format!(" AS {column}\n")))
                    .unwrap_or_else(|| panic!("{column} after position {at}"));
                at += found + 1;
            }
        }
    }
}
