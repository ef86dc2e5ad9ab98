//! What the relation pass reads, as plain data: per-relation facts (every round), exact
//! sizes (every fifteenth round) and partition bounds (when a partition changed), each read by
//! one streamed statement of [`crate::catalog::derive`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use crate::catalog::derive::{BOUNDS_SQL, DEFAULT_ROWS_SQL, FACTS_SQL, SIZES_SQL};
use crate::sampler::run::{ErrorKind, RunError, classify};

/// One relation of the pass (a table, partitioned table, TOAST table, index or foreign table).
#[derive(Debug, Clone, Default)]
pub struct Relation {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Its schema (shared between relations of one schema).
    pub schema: Arc<str>,
    /// Its name.
    pub name: String,
    /// `relkind` (`r`, `m`, `p`, `t`, `i`, `I`, `f`).
    pub kind: u8,
    /// A temporary relation.
    pub temp: bool,
    /// The direct parent of a partition (a partitioned table, or a partitioned index).
    pub parent: Option<u32>,
    /// `xmin` of its catalog row: changes when it is altered, attached or rewritten.
    pub version: Option<i64>,
    /// Its TOAST table.
    pub toast: Option<u32>,
    /// The table of an index.
    pub indrelid: Option<u32>,
    /// An index that is unique, primary or backs a constraint.
    pub constrained: bool,
    /// Sequential scans of a table, scans of an index.
    pub scans: Option<i64>,
    /// Blocks requested.
    pub blks_fetched: Option<i64>,
    /// Blocks found in shared buffers.
    pub blks_hit: Option<i64>,
    /// Estimated live rows.
    pub live: Option<i64>,
    /// Estimated dead rows.
    pub dead: Option<i64>,
    /// Rows inserted.
    pub inserted: Option<i64>,
    /// Rows updated and deleted plus (auto)vacuums: with `inserted` and `version`, what
    /// changes when the relation's size may have.
    pub changes: Option<i64>,
    /// Unix times of the last vacuum, autovacuum, analyze, autoanalyze.
    pub last: [Option<f64>; 4],
    /// `age(relfrozenxid)`.
    pub xid_age: Option<i64>,
    /// `mxid_age(relminmxid)`.
    pub mxid_age: Option<i64>,
    /// Partition strategy of a partitioned table (`r`, `l`, `h`).
    pub strategy: Option<String>,
    /// A partitioned table by range of a timestamptz, timestamp or date column.
    pub time_key: Option<bool>,
}

/// The facts of one pass.
#[derive(Debug)]
pub struct Facts {
    /// Every relation read.
    pub relations: Vec<Relation>,
    /// Index into `relations` by oid.
    pub by_oid: HashMap<u32, usize>,
    /// The server's `now()` at the pass, as a Unix time.
    pub now: f64,
    /// When the pass was read.
    pub at: Instant,
}

impl Facts {
    /// The relation with `oid`, if read.
    pub fn get(&self, oid: u32) -> Option<&Relation> {
        self.by_oid.get(&oid).and_then(|&i| self.relations.get(i))
    }

    /// The server's time now, as a Unix time (its `now()` at the pass plus the time since).
    pub fn server_now(&self) -> f64 {
        self.now + self.at.elapsed().as_secs_f64()
    }

    /// A digest of the partitions and their catalog rows: it changes when a partition is
    /// created, attached, detached, dropped or altered, which is when bounds are read again.
    pub fn partitions_fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for r in self.relations.iter().filter(|r| r.parent.is_some()) {
            (r.oid, r.version, r.parent).hash(&mut h);
        }
        h.finish()
    }
}

/// Exact sizes in bytes, by oid, and what each was read for.
#[derive(Debug, Default)]
pub struct Sizes {
    /// `pg_table_size` of tables (TOAST included).
    pub table: HashMap<u32, i64>,
    /// `pg_indexes_size` of tables.
    pub indexes: HashMap<u32, i64>,
    /// `pg_relation_size` (main fork) of indexes.
    pub main: HashMap<u32, i64>,
    /// The [`Facts::size_signature`] each relation's size was read at.
    pub read_at: HashMap<u32, u64>,
    /// When all sizes were last read.
    pub all_at: Option<Instant>,
}

impl Facts {
    /// What a relation's size depends on: its catalog row and writes (an index's: its
    /// table's writes; a table's: its TOAST table's and indexes' too). Sizes are read again
    /// when it changes.
    pub fn size_signature(&self, r: &Relation, indexes: &[&Relation]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let writes = |r: &Relation| (r.version, r.inserted, r.changes);
        writes(r).hash(&mut h);
        if let Some(t) = r.indrelid.and_then(|t| self.get(t)) {
            writes(t).hash(&mut h);
        }
        if let Some(t) = r.toast.and_then(|t| self.get(t)) {
            writes(t).hash(&mut h);
        }
        for i in indexes {
            i.version.hash(&mut h);
        }
        h.finish()
    }
}

/// The bound of one direct partition.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Its partitioned table.
    pub parent: u32,
    /// The DEFAULT partition.
    pub is_default: bool,
    /// Upper bound of a time-range partition, as a Unix time.
    pub range_end: Option<f64>,
    /// A range partition up to MAXVALUE.
    pub maxvalue: bool,
}

/// Partition bounds and the fingerprint of the partitions they were read for, and the rows
/// of DEFAULT partitions by partitioned table (read at every run of `partitions`).
#[derive(Debug, Default)]
pub struct Bounds {
    /// Rows in the DEFAULT partition, by partitioned table.
    pub default_rows: HashMap<u32, i64>,
    /// By partition oid.
    pub by_partition: HashMap<u32, Bound>,
    /// [`Facts::partitions_fingerprint`] when read.
    pub fingerprint: u64,
}

fn decode(e: impl std::fmt::Display) -> RunError {
    RunError::new(ErrorKind::Decode, format!("relation pass: {e}"))
}

fn oid(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// Runs `sql` and hands each row to `f`, streaming.
async fn each_row(
    txn: &Transaction<'_>,
    sql: &str,
    mut f: impl FnMut(&Row) -> Result<(), tokio_postgres::Error>,
) -> Result<(), RunError> {
    let rows = txn
        .query_raw(sql, std::iter::empty::<i32>())
        .await
        .map_err(|e| classify(&e))?;
    pin_mut!(rows);
    while let Some(row) = rows.try_next().await.map_err(|e| classify(&e))? {
        f(&row).map_err(decode)?;
    }
    Ok(())
}

/// Reads the facts.
pub async fn read_facts(txn: &Transaction<'_>) -> Result<Facts, RunError> {
    let mut relations = Vec::new();
    let mut schemas: HashMap<String, Arc<str>> = HashMap::new();
    let mut now = None;
    each_row(txn, FACTS_SQL, |row| {
        let schema: String = row.try_get("schemaname")?;
        let schema = schemas
            .entry(schema)
            .or_insert_with_key(|k| Arc::from(k.as_str()))
            .clone();
        let kind: String = row.try_get("relkind")?;
        now = row.try_get::<_, Option<f64>>("now")?;
        relations.push(Relation {
            oid: oid(row.try_get("oid")?).unwrap_or_default(),
            schema,
            name: row.try_get("relname")?,
            kind: kind.bytes().next().unwrap_or(b'?'),
            temp: row.try_get("temp")?,
            parent: oid(row.try_get("parent")?),
            version: row.try_get("version")?,
            toast: oid(row.try_get("toast")?),
            indrelid: oid(row.try_get("indrelid")?),
            constrained: row.try_get("constrained")?,
            scans: row.try_get("scans")?,
            blks_fetched: row.try_get("blks_fetched")?,
            blks_hit: row.try_get("blks_hit")?,
            live: row.try_get("live")?,
            dead: row.try_get("dead")?,
            inserted: row.try_get("inserted")?,
            changes: row.try_get("changes")?,
            last: [
                row.try_get("last_vacuum")?,
                row.try_get("last_autovacuum")?,
                row.try_get("last_analyze")?,
                row.try_get("last_autoanalyze")?,
            ],
            xid_age: row.try_get("xid_age")?,
            mxid_age: row.try_get("mxid_age")?,
            strategy: row.try_get("strategy")?,
            time_key: row.try_get("time_key")?,
        });
        Ok(())
    })
    .await?;
    let by_oid = relations
        .iter()
        .enumerate()
        .map(|(i, r)| (r.oid, i))
        .collect();
    // No relation at all: the server's time is not needed by any family.
    let now = now.unwrap_or_default();
    Ok(Facts {
        relations,
        by_oid,
        now,
        at: Instant::now(),
    })
}

/// Reads the exact sizes of `oids` (of every user table and index with `all`) into `sizes`.
pub async fn read_sizes(
    txn: &Transaction<'_>,
    sizes: &mut Sizes,
    all: bool,
    oids: &[u32],
) -> Result<(), RunError> {
    let rows = txn
        .query_raw(SIZES_SQL, [&all as &(dyn ToSql + Sync), &oids])
        .await
        .map_err(|e| classify(&e))?;
    pin_mut!(rows);
    while let Some(row) = rows.try_next().await.map_err(|e| classify(&e))? {
        let Some(oid) = oid(row.try_get("oid").map_err(decode)?) else {
            continue;
        };
        for (column, map) in [
            ("table_bytes", &mut sizes.table),
            ("indexes_bytes", &mut sizes.indexes),
            ("main_bytes", &mut sizes.main),
        ] {
            match row.try_get::<_, Option<i64>>(column).map_err(decode)? {
                Some(v) => map.insert(oid, v),
                None => map.remove(&oid),
            };
        }
    }
    if all {
        sizes.all_at = Some(Instant::now());
    }
    Ok(())
}

/// Reads the partition bounds for the partitions of `fingerprint`.
pub async fn read_bounds(txn: &Transaction<'_>, fingerprint: u64) -> Result<Bounds, RunError> {
    let mut bounds = Bounds {
        by_partition: HashMap::new(),
        fingerprint,
        default_rows: HashMap::new(),
    };
    each_row(txn, BOUNDS_SQL, |row| {
        if let (Some(p), Some(parent)) = (oid(row.try_get("oid")?), oid(row.try_get("parent")?)) {
            bounds.by_partition.insert(
                p,
                Bound {
                    parent,
                    is_default: row.try_get("is_default")?,
                    range_end: row.try_get("range_end")?,
                    maxvalue: row.try_get::<_, Option<bool>>("maxvalue")?.unwrap_or(false),
                },
            );
        }
        Ok(())
    })
    .await?;
    Ok(bounds)
}

/// Reads the rows of every DEFAULT partition into `bounds`.
pub async fn read_default_rows(txn: &Transaction<'_>, bounds: &mut Bounds) -> Result<(), RunError> {
    let mut rows = HashMap::new();
    each_row(txn, DEFAULT_ROWS_SQL, |row| {
        if let (Some(p), Some(n)) = (
            oid(row.try_get("oid")?),
            row.try_get::<_, Option<i64>>("default_rows")?,
        ) {
            rows.insert(p, n);
        }
        Ok(())
    })
    .await?;
    bounds.default_rows = rows;
    Ok(())
}
