//! What the relation pass reads, as plain data: per-relation facts (the statistics every
//! round, the structure when the catalog changed), exact sizes (every fifteenth round) and
//! partition bounds (when a partition changed), each read by one streamed statement of
//! [`crate::catalog::derive`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::time::Instant;

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Row, Transaction};

use crate::catalog::derive::{
    BOUNDS_SQL, DEFAULT_ROWS_SQL, FACTS_SQL, NOW_SQL, SIZES_SQL, STATS_COLUMNS, STATS_SQL,
};
use crate::db::outcome::{ErrorKind, RunError, classify};

/// One relation of the pass (a table, partitioned table, TOAST table, index or foreign
/// table). Kept between rounds for every relation, so it is compact (72 bytes, and the
/// statistics of a table apart): a statistic the relation's kind does not have is 0, a time
/// it never had is none.
#[derive(Debug, Clone)]
pub struct Relation {
    /// `pg_class.oid`.
    pub oid: u32,
    /// `xmin` of its catalog row: changes when it is created, altered, attached or
    /// rewritten (not when VACUUM or ANALYZE update it in place).
    pub version: u32,
    /// The direct parent of a partition (a partitioned table, or a partitioned index).
    parent: Option<NonZeroU32>,
    /// Its TOAST table.
    toast: Option<NonZeroU32>,
    /// The table of an index.
    indrelid: Option<NonZeroU32>,
    /// `relkind` (`r`, `m`, `p`, `t`, `i`, `I`, `f`).
    pub kind: u8,
    /// A temporary relation.
    pub temp: bool,
    /// An index that is unique, primary or backs a constraint.
    pub constrained: bool,
    /// Partition strategy of a partitioned table (`r`, `l`, `h`).
    pub strategy: Option<u8>,
    /// Its schema: position in [`Facts::schemas`] ([`Facts::schema`]).
    schema: u32,
    /// Its name: `name_len` bytes from `name_at` in [`Facts::names`] ([`Facts::name`]), so
    /// 60,000 names cost one allocation instead of 60,000 (1.7 MB less at 40,000 relations).
    name_at: u32,
    name_len: u16,
    /// Sequential scans of a table, scans of an index.
    pub scans: i64,
    /// Blocks requested.
    pub blks_fetched: i64,
    /// Blocks found in shared buffers.
    pub blks_hit: i64,
    /// The statistics of a relation that is not an index.
    table: Option<Box<TableStats>>,
}

/// The statistics only a relation that is not an index has: apart, so that each index (two
/// relations in three of the trading shape) costs 8 bytes for them instead of 72 (2.2 MB
/// less at 40,000 relations).
#[derive(Debug, Clone)]
struct TableStats {
    /// Estimated live rows.
    live: i64,
    /// Estimated dead rows.
    dead: i64,
    /// Rows inserted.
    inserted: i64,
    /// Rows updated and deleted plus (auto)vacuums: with `inserted` and `version`, what
    /// changes when the relation's size may have.
    changes: i64,
    /// Unix times of the last vacuum, autovacuum, analyze, autoanalyze (NaN: never).
    last: [f64; 4],
    /// `age(relfrozenxid)` and `mxid_age(relminmxid)` ([`NO_AGE`]: none).
    ages: [i32; 2],
}

impl Default for TableStats {
    fn default() -> Self {
        Self {
            live: 0,
            dead: 0,
            inserted: 0,
            changes: 0,
            last: [f64::NAN; 4],
            ages: [NO_AGE; 2],
        }
    }
}

/// The age of a relation without one (an index): no age the server reports is this low.
const NO_AGE: i32 = i32::MIN;

impl Relation {
    /// What changes when its contents may have: its catalog row (`version`), rows inserted,
    /// and rows updated and deleted plus vacuums.
    fn writes(&self) -> (u32, i64, i64) {
        (self.version, self.inserted(), self.changes())
    }

    /// A statistic of a relation that is not an index (0 for an index).
    fn stat(&self, f: impl Fn(&TableStats) -> i64) -> i64 {
        self.table.as_deref().map_or(0, f)
    }

    /// Estimated live rows.
    pub fn live(&self) -> i64 {
        self.stat(|t| t.live)
    }

    /// Estimated dead rows.
    pub fn dead(&self) -> i64 {
        self.stat(|t| t.dead)
    }

    /// Rows inserted.
    pub fn inserted(&self) -> i64 {
        self.stat(|t| t.inserted)
    }

    /// Rows updated and deleted plus (auto)vacuums.
    pub fn changes(&self) -> i64 {
        self.stat(|t| t.changes)
    }

    /// The direct parent of a partition (a partitioned table, or a partitioned index).
    pub fn parent(&self) -> Option<u32> {
        self.parent.map(NonZeroU32::get)
    }

    /// Its TOAST table.
    pub fn toast(&self) -> Option<u32> {
        self.toast.map(NonZeroU32::get)
    }

    /// The table of an index.
    pub fn indrelid(&self) -> Option<u32> {
        self.indrelid.map(NonZeroU32::get)
    }

    /// `age(relfrozenxid)`.
    pub fn xid_age(&self) -> Option<i32> {
        self.table
            .as_deref()
            .map(|t| t.ages[0])
            .filter(|&a| a != NO_AGE)
    }

    /// `mxid_age(relminmxid)`.
    pub fn mxid_age(&self) -> Option<i32> {
        self.table
            .as_deref()
            .map(|t| t.ages[1])
            .filter(|&a| a != NO_AGE)
    }

    /// Unix time of the last vacuum (0), autovacuum (1), analyze (2) or autoanalyze (3).
    pub fn last(&self, which: usize) -> Option<f64> {
        let t = self.table.as_deref()?;
        t.last.get(which).copied().filter(|t| !t.is_nan())
    }
}

/// A transaction ID (`xid`), as the server sends it.
struct Xid(u32);

impl<'a> FromSql<'a> for Xid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 4] = raw.try_into()?;
        Ok(Xid(u32::from_be_bytes(bytes)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::XID
    }
}

/// Position of the first statistic in both statements' rows (after `oid` and `version`).
const FIRST_STAT: usize = 2;

/// Reads the statistics of a row of [`FACTS_SQL`] or [`STATS_SQL`] into `r`.
fn read_stats(row: &Row, r: &mut Relation) -> Result<(), tokio_postgres::Error> {
    let int = |i: usize| -> Result<i64, tokio_postgres::Error> {
        Ok(row.try_get::<_, Option<i64>>(FIRST_STAT + i)?.unwrap_or(0))
    };
    r.scans = int(0)?;
    r.blks_fetched = int(1)?;
    r.blks_hit = int(2)?;
    let Some(t) = r.table.as_deref_mut() else {
        return Ok(());
    };
    t.live = int(3)?;
    t.dead = int(4)?;
    t.inserted = int(5)?;
    t.changes = int(6)?;
    for (k, slot) in t.last.iter_mut().enumerate() {
        *slot = row
            .try_get::<_, Option<f64>>(FIRST_STAT + 7 + k)?
            .unwrap_or(f64::NAN);
    }
    for (k, slot) in t.ages.iter_mut().enumerate() {
        *slot = row
            .try_get::<_, Option<i32>>(FIRST_STAT + 11 + k)?
            .unwrap_or(NO_AGE);
    }
    Ok(())
}

/// Position of the first structure column of [`FACTS_SQL`].
const FIRST_SHAPE: usize = FIRST_STAT + STATS_COLUMNS.len();

/// The facts of one pass.
#[derive(Debug)]
pub struct Facts {
    /// Every relation read, by oid.
    pub relations: Vec<Relation>,
    /// Their oids, in the same order: what a lookup searches (4 bytes a relation, so a
    /// search does not touch a relation's cache line at each step).
    oids: Vec<u32>,
    /// The names of the relations, one after the other.
    names: String,
    /// The schemas of the relations, each once.
    schemas: Vec<Box<str>>,
    /// The server's `now()` at the pass, as a Unix time.
    pub now: f64,
    /// When the pass was read.
    pub at: Instant,
    /// When the structure was last read in full ([`FACTS_SQL`]).
    pub shape_at: Instant,
}

impl Facts {
    /// The schema of `r`.
    pub fn schema(&self, r: &Relation) -> &str {
        self.schemas.get(r.schema as usize).map_or("", |s| s)
    }

    /// The name of `r`.
    pub fn name(&self, r: &Relation) -> &str {
        let at = r.name_at as usize;
        self.names
            .get(at..at + usize::from(r.name_len))
            .unwrap_or("")
    }

    /// The schema and name of `r`.
    pub fn qualified(&self, r: &Relation) -> (&str, &str) {
        (self.schema(r), self.name(r))
    }

    /// The relation with `oid`, if read.
    pub fn get(&self, oid: u32) -> Option<&Relation> {
        self.position(oid).and_then(|i| self.relations.get(i))
    }

    /// The position of the relation with `oid` in `relations`.
    fn position(&self, oid: u32) -> Option<usize> {
        self.oids.binary_search(&oid).ok()
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

    /// What the rows of the DEFAULT partitions of `bounds` depend on: the catalog row and
    /// the writes (rows inserted, updated, deleted, vacuums) of each DEFAULT partition and of
    /// its own partitions. A row that lands there, a `TRUNCATE` (a new catalog row) and a
    /// statistics reset (counters back at zero) each change it.
    pub fn default_rows_signature(&self, bounds: &Bounds) -> u64 {
        let mut defaults: Vec<u32> = bounds
            .by_partition
            .iter()
            .filter(|(_, b)| b.is_default)
            .map(|(oid, _)| *oid)
            .collect();
        defaults.sort_unstable();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for oid in &defaults {
            (oid, self.get(*oid).map(Relation::writes)).hash(&mut h);
        }
        let within = |r: &&Relation| {
            r.parent()
                .is_some_and(|p| defaults.binary_search(&p).is_ok())
        };
        for r in self.relations.iter().filter(within) {
            (r.oid, r.writes()).hash(&mut h);
        }
        h.finish()
    }
}

/// The exact size of one user table or index, and the signature it was read at.
#[derive(Debug, Clone, Copy)]
struct Size {
    oid: u32,
    /// A table's `pg_table_size` (TOAST included), an index's `pg_relation_size` (main
    /// fork); 0 when unknown.
    bytes: i64,
    /// A table's `pg_indexes_size`.
    indexes: i64,
    /// The [`Facts::size_signature`] it was read at ([`NOT_SETTLED`]: not yet).
    read_at: u64,
}

/// The `read_at` of a size whose read has not completed.
const NOT_SETTLED: u64 = 0;

/// Exact sizes in bytes, by oid, and what each was read for: one sorted list of 32 bytes
/// per relation (1.3 MB at 40,000 tables and indexes, where four hash maps took 2.8 MB).
#[derive(Debug, Default)]
pub struct Sizes {
    /// By oid.
    entries: Vec<Size>,
    /// When all sizes were last read.
    pub all_at: Option<Instant>,
}

impl Sizes {
    fn entry(&self, oid: u32) -> Option<&Size> {
        let at = self.entries.binary_search_by_key(&oid, |s| s.oid).ok()?;
        self.entries.get(at)
    }

    /// A table's `pg_table_size`, an index's `pg_relation_size`; 0 when unknown.
    pub fn bytes(&self, oid: u32) -> i64 {
        self.entry(oid).map_or(0, |s| s.bytes)
    }

    /// A table's `pg_indexes_size`; 0 when unknown.
    pub fn indexes(&self, oid: u32) -> i64 {
        self.entry(oid).map_or(0, |s| s.indexes)
    }

    /// The signature the size of `oid` was read at, once its read completed.
    pub fn read_at(&self, oid: u32) -> Option<u64> {
        self.entry(oid)
            .map(|s| s.read_at)
            .filter(|&r| r != NOT_SETTLED)
    }

    /// Keeps the sizes read, `(oid, bytes, indexes)`; a relation new to the list is not
    /// settled until [`Sizes::settle`].
    fn record(&mut self, mut read: Vec<(u32, i64, i64)>) {
        read.sort_unstable_by_key(|&(oid, ..)| oid);
        let known = self.entries.len();
        for (oid, bytes, indexes) in read {
            match self.entries.binary_search_by_key(&oid, |s| s.oid) {
                Ok(at) => {
                    if let Some(s) = self.entries.get_mut(at) {
                        (s.bytes, s.indexes) = (bytes, indexes);
                    }
                }
                Err(_) => self.entries.push(Size {
                    oid,
                    bytes,
                    indexes,
                    read_at: NOT_SETTLED,
                }),
            }
        }
        if self.entries.len() > known {
            self.entries.sort_unstable_by_key(|s| s.oid);
        }
    }

    /// After a successful read of `changed` (or of everything, with `all`): records the
    /// signature (of `wanted`) each size was read at, and forgets the relations that are no
    /// longer wanted.
    pub(super) fn settle(&mut self, wanted: &[(u32, u64)], all: bool, changed: &[u32]) {
        let mut wanted = wanted.to_vec();
        wanted.sort_unstable();
        let mut changed = changed.to_vec();
        changed.sort_unstable();
        let old = std::mem::take(&mut self.entries);
        let mut old = old.into_iter().peekable();
        self.entries.reserve_exact(wanted.len());
        for (oid, sig) in wanted {
            while old.next_if(|s| s.oid < oid).is_some() {}
            let mut size = old.next_if(|s| s.oid == oid).unwrap_or(Size {
                oid,
                bytes: 0,
                indexes: 0,
                read_at: NOT_SETTLED,
            });
            if all || changed.binary_search(&oid).is_ok() {
                size.read_at = sig;
            }
            self.entries.push(size);
        }
    }
}

impl Facts {
    /// What a relation's size depends on: its catalog row and writes (an index's: its
    /// table's writes; a table's: its TOAST table's and indexes' too). Sizes are read again
    /// when it changes.
    pub fn size_signature(&self, r: &Relation, indexes: &[&Relation]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        r.writes().hash(&mut h);
        if let Some(t) = r.indrelid().and_then(|t| self.get(t)) {
            t.writes().hash(&mut h);
        }
        if let Some(t) = r.toast().and_then(|t| self.get(t)) {
            t.writes().hash(&mut h);
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
    /// [`Facts::default_rows_signature`] when `default_rows` were counted, and when.
    pub default_rows_read: Option<(u64, Instant)>,
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

/// Reads the facts in full: structure and statistics ([`FACTS_SQL`]). `hint` is the number
/// of relations expected (the last pass's), so the list is allocated once.
pub async fn read_facts(txn: &Transaction<'_>, hint: usize) -> Result<Facts, RunError> {
    let mut relations = Vec::with_capacity(hint + hint / 32);
    let mut names = String::new();
    let mut schemas: HashMap<String, u32> = HashMap::new();
    each_row(txn, FACTS_SQL, |row| {
        let at = |i: usize| FIRST_SHAPE + i;
        let schema: &str = row.try_get(at(0))?;
        let next = schemas.len() as u32;
        let schema = *schemas.entry(schema.to_owned()).or_insert(next);
        let name: &str = row.try_get(at(1))?;
        // A name is at most NAMEDATALEN - 1 bytes (63 unless PostgreSQL was built otherwise).
        let name = name.get(..usize::from(u16::MAX)).unwrap_or(name);
        let (name_at, name_len) = (names.len() as u32, name.len() as u16);
        names.push_str(name);
        let kind: &str = row.try_get(at(2))?;
        let strategy: Option<&str> = row.try_get(at(8))?;
        let mut r = Relation {
            oid: row.try_get(0)?,
            version: row.try_get::<_, Xid>(1)?.0,
            parent: row
                .try_get::<_, Option<u32>>(at(4))?
                .and_then(NonZeroU32::new),
            toast: row
                .try_get::<_, Option<u32>>(at(5))?
                .and_then(NonZeroU32::new),
            indrelid: row
                .try_get::<_, Option<u32>>(at(6))?
                .and_then(NonZeroU32::new),
            kind: kind.bytes().next().unwrap_or(b'?'),
            temp: row.try_get(at(3))?,
            constrained: row.try_get(at(7))?,
            strategy: strategy.and_then(|s| s.bytes().next()),
            schema,
            name_at,
            name_len,
            scans: 0,
            blks_fetched: 0,
            blks_hit: 0,
            table: (!matches!(kind, "i" | "I")).then(Box::default),
        };
        read_stats(row, &mut r)?;
        relations.push(r);
        Ok(())
    })
    .await?;
    // Without a hint (the first pass) the list grew by doubling: give the slack back.
    if relations.capacity() > relations.len() + relations.len() / 16 {
        relations.shrink_to_fit();
    }
    names.shrink_to_fit();
    let mut schemas: Vec<(String, u32)> = schemas.into_iter().collect();
    schemas.sort_unstable_by_key(|&(_, at)| at);
    relations.sort_unstable_by_key(|r| r.oid);
    let at = Instant::now();
    Ok(Facts {
        oids: relations.iter().map(|r| r.oid).collect(),
        relations,
        names,
        schemas: schemas
            .into_iter()
            .map(|(s, _)| s.into_boxed_str())
            .collect(),
        now: read_now(txn).await?,
        at,
        shape_at: at,
    })
}

/// Reads the statistics of the relations of `previous` into it ([`STATS_SQL`]), or
/// everything ([`read_facts`]) when there is no previous pass, when `full` is due, or
/// when a relation was created, dropped or altered since. On an error `previous` is lost
/// (it may hold part of this round's statistics): the next round reads in full.
pub async fn refresh_facts(
    txn: &Transaction<'_>,
    previous: Option<Facts>,
    full: bool,
) -> Result<Facts, RunError> {
    let mut facts = match previous {
        Some(f) if !full => f,
        other => {
            let hint = other.map_or(0, |f| f.relations.len());
            return read_facts(txn, hint).await;
        }
    };
    let (mut matched, mut changed) = (0usize, false);
    each_row(txn, STATS_SQL, |row| {
        if changed {
            return Ok(());
        }
        let oid: u32 = row.try_get(0)?;
        let version = row.try_get::<_, Xid>(1)?.0;
        let slot = facts.position(oid);
        match slot.and_then(|i| facts.relations.get_mut(i)) {
            Some(r) if r.version == version => {
                read_stats(row, r)?;
                matched += 1;
            }
            _ => changed = true,
        }
        Ok(())
    })
    .await?;
    if changed || matched != facts.relations.len() {
        let hint = facts.relations.len();
        drop(facts);
        return read_facts(txn, hint).await;
    }
    facts.now = read_now(txn).await?;
    facts.at = Instant::now();
    Ok(facts)
}

/// The server's time of the transaction, as a Unix time.
async fn read_now(txn: &Transaction<'_>) -> Result<f64, RunError> {
    let row = txn
        .query_one(NOW_SQL, &[])
        .await
        .map_err(|e| classify(&e))?;
    row.try_get(0).map_err(decode)
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
    let mut read = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(|e| classify(&e))? {
        let Some(oid) = oid(row.try_get("oid").map_err(decode)?) else {
            continue;
        };
        let column = |name: &str| -> Result<i64, RunError> {
            let v: Option<i64> = row.try_get(name).map_err(decode)?;
            Ok(v.unwrap_or(0))
        };
        let bytes = column("table_bytes")? + column("main_bytes")?;
        read.push((oid, bytes, column("indexes_bytes")?));
    }
    sizes.record(read);
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
        default_rows_read: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A relation is kept between rounds for each of up to tens of thousands: its size is
    /// what the pass costs in memory (72 bytes, and 80 more for one that is not an index:
    /// 5.9 MB at 60,000 relations, 40,000 of them indexes).
    #[test]
    fn a_relation_stays_compact() {
        assert!(std::mem::size_of::<Relation>() <= 72);
        assert!(std::mem::size_of::<TableStats>() <= 72);
    }

    /// Sizes read are kept at once, settled (read at a signature) only by `settle`, which
    /// also forgets what is no longer wanted; a size never read counts as 0.
    #[test]
    fn sizes_are_settled_after_a_read_and_forgotten_when_no_longer_wanted() {
        let mut sizes = Sizes::default();
        sizes.record(vec![(30, 300, 3), (10, 100, 1)]);
        assert_eq!(
            (sizes.bytes(10), sizes.indexes(10), sizes.bytes(30)),
            (100, 1, 300)
        );
        assert_eq!(sizes.read_at(10), None, "not settled yet");
        sizes.settle(&[(30, 7), (10, 5), (20, 6)], true, &[]);
        assert_eq!(
            [sizes.read_at(10), sizes.read_at(20), sizes.read_at(30)],
            [Some(5), Some(6), Some(7)]
        );
        assert_eq!(sizes.bytes(20), 0, "wanted, no row: 0");
        sizes.record(vec![(20, 200, 2)]);
        sizes.settle(&[(20, 8), (30, 9)], false, &[20]);
        assert_eq!((sizes.bytes(20), sizes.read_at(20)), (200, Some(8)));
        assert_eq!(
            sizes.read_at(30),
            Some(7),
            "not read this time: its old signature"
        );
        assert_eq!(
            (sizes.bytes(10), sizes.read_at(10)),
            (0, None),
            "no longer wanted"
        );
    }
}
