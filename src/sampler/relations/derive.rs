//! The derived families: rows computed from one pass's facts with the definitions of the
//! `monitoring.v_*` views (roll-up to the direct parent, top-N, ratios), in the columns of
//! [`Derive::columns`]. Ties in a top-N are broken by name, in byte order.

use std::collections::{HashMap, HashSet};

use super::facts::{Bound, Bounds, Facts, Relation, Sizes};
use crate::catalog::Derive;
use crate::sampler::cell::Cell;

/// One row: a text value (or NULL) per column of the family.
pub type Row = Vec<Cell>;

/// A family's rows, made one at a time as they are decoded: at 40,000 relations a roll-up
/// family has 30,000 rows, which held at once took 8 MB.
pub type Rows<'a> = Box<dyn Iterator<Item = Row> + 'a>;

/// What a family reads: the pass's facts, and its sizes and bounds when it needs them.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Per-relation facts.
    pub facts: &'a Facts,
    /// Exact sizes (empty when the family does not need them).
    pub sizes: &'a Sizes,
    /// Partition bounds (empty when the family does not need them).
    pub bounds: &'a Bounds,
    /// The health report's rows of the family's run (empty for the other families).
    pub report: &'a [Row],
}

/// Top tables of [`Derive::Tables`] and [`Derive::TableScans`].
const TOP_TABLES: usize = 100;
/// Top indexes of [`Derive::Indexes`].
const TOP_INDEXES: usize = 200;
/// Top tables of [`Derive::IndexCache`].
const TOP_INDEX_CACHE: usize = 100;
/// Top partitioned tables of [`Derive::Partitions`].
const TOP_PARTITIONED: usize = 100;
/// Top tables of [`Derive::TableWraparound`].
const TOP_WRAPAROUND: usize = 20;

/// The rows of `family`.
pub fn rows(family: Derive, input: Inputs<'_>) -> Rows<'_> {
    match family {
        Derive::Tables => tables(input, false),
        Derive::TableScans => tables(input, true),
        Derive::Indexes => indexes(input),
        Derive::IndexCache => index_cache(input),
        Derive::CacheHit => cache_hit(input),
        Derive::UnusedIndexes => unused_indexes(input),
        Derive::Partitions => partitions(input),
        Derive::PartitionGrowth => partition_growth(input),
        Derive::TableWraparound => table_wraparound(input),
        Derive::Health => Box::new(input.report.iter().cloned()),
    }
}

fn int(v: i64) -> Cell {
    Cell::Int(v.into())
}

fn float(v: f64) -> Cell {
    if v.is_finite() {
        Cell::Float(v)
    } else {
        Cell::Null
    }
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn opt_int(v: Option<i32>) -> Cell {
    v.map_or(Cell::Null, |v| Cell::Int(v.into()))
}

/// Not a system schema (`pg_stat_user_tables`' filter).
fn is_user_schema(s: &str) -> bool {
    s != "pg_catalog" && s != "information_schema" && !s.starts_with("pg_toast")
}

/// An ordinary table or materialized view of a user schema (`v_table_stats`' rows).
pub(super) fn is_user_table(facts: &Facts, r: &Relation) -> bool {
    matches!(r.kind, b'r' | b'm') && is_user_schema(facts.schema(r))
}

/// The name a relation is reported under: its direct parent's, or its own.
fn group_of<'a>(facts: &'a Facts, r: &'a Relation) -> (&'a str, &'a str) {
    match r.parent().and_then(|p| facts.get(p)) {
        Some(p) => facts.qualified(p),
        None => facts.qualified(r),
    }
}

/// Indexes by the oid of their table.
fn indexes_by_table(facts: &Facts) -> HashMap<u32, Vec<&Relation>> {
    let mut map: HashMap<u32, Vec<&Relation>> = HashMap::new();
    for r in &facts.relations {
        if let (b'i', Some(t)) = (r.kind, r.indrelid()) {
            map.entry(t).or_default().push(r);
        }
    }
    map
}

/// Indexes of user tables (`pg_stat_user_indexes`' rows) with their table.
pub(super) fn user_indexes(facts: &Facts) -> impl Iterator<Item = (&Relation, &Relation)> {
    facts.relations.iter().filter_map(|i| {
        let t = facts.get(i.indrelid()?)?;
        (i.kind == b'i' && matches!(t.kind, b'r' | b't' | b'm') && is_user_schema(facts.schema(t)))
            .then_some((i, t))
    })
}

fn total_bytes(sizes: &Sizes, oid: u32) -> i64 {
    sizes.bytes(oid) + sizes.indexes(oid)
}

fn blocks(r: &Relation) -> (i64, i64) {
    (r.blks_hit, r.blks_fetched - r.blks_hit)
}

#[derive(Default)]
struct TableGroup {
    live: i64,
    dead: i64,
    bytes: i64,
    seq: i64,
    idx: i64,
    vacuum_age: Option<f64>,
    analyze_age: Option<f64>,
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// `tables` (rolled up, top 100 by size) or, with `scans`, the per-relation scan rows of
/// those tables for pgpulse's roll-up (`table_scans`).
fn tables(input: Inputs<'_>, scans: bool) -> Rows<'_> {
    let facts = input.facts;
    let now = facts.server_now();
    let indexes = indexes_by_table(facts);
    let idx_scans = move |t: &Relation| -> i64 {
        indexes
            .get(&t.oid)
            .map(|v| v.iter().map(|i| i.scans).sum())
            .unwrap_or(0)
    };
    let mut groups: HashMap<(&str, &str), TableGroup> = HashMap::new();
    for t in facts.relations.iter().filter(|r| is_user_table(facts, r)) {
        let g = groups.entry(group_of(facts, t)).or_default();
        g.live += t.live();
        g.dead += t.dead();
        g.bytes += total_bytes(input.sizes, t.oid);
        g.seq += t.scans;
        g.idx += idx_scans(t);
        let age = |i: usize| t.last(i).map(|at| now - at);
        g.vacuum_age = max_opt(g.vacuum_age, min_opt(age(0), age(1)));
        g.analyze_age = max_opt(g.analyze_age, min_opt(age(2), age(3)));
    }
    let mut ranked: Vec<_> = groups.into_iter().collect();
    ranked.sort_by(|(ka, a), (kb, b)| b.bytes.cmp(&a.bytes).then(ka.cmp(kb)));
    ranked.truncate(TOP_TABLES);
    if scans {
        let top: HashSet<(&str, &str)> = ranked.iter().map(|(k, _)| *k).collect();
        let mut out: Vec<((&str, &str), &Relation)> = facts
            .relations
            .iter()
            .filter(|r| is_user_table(facts, r))
            .map(|t| (group_of(facts, t), t))
            .filter(|(key, _)| top.contains(key))
            .collect();
        // Stable: a group's tables stay in the order of the pass, as when rows were sorted.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        return Box::new(out.into_iter().map(move |(key, t)| {
            vec![
                int(i64::from(t.oid)),
                text(key.0.to_owned()),
                text(key.1.to_owned()),
                int(t.scans),
                int(idx_scans(t)),
            ]
        }));
    }
    let rows = ranked.into_iter().map(|((schema, name), g)| {
        let all = g.live + g.dead;
        let dead_ratio = if all > 0 {
            g.dead as f64 / all as f64
        } else {
            0.0
        };
        let scans = g.idx + g.seq;
        vec![
            text(schema.to_owned()),
            text(name.to_owned()),
            int(g.live),
            int(g.dead),
            float(dead_ratio),
            int(g.bytes),
            (scans > 0)
                .then(|| g.idx as f64 / scans as f64)
                .map_or(Cell::Null, float),
            g.vacuum_age.map_or(Cell::Null, float),
            g.analyze_age.map_or(Cell::Null, float),
        ]
    });
    Box::new(rows)
}

/// `indexes`: per index rows of the top 200 (table, index) groups by size, for a roll-up,
/// by size and then group. A row is kept as its size, its group's place among the top
/// groups and its index (24 bytes: at 30,000 partition indexes a list of (group, index)
/// took 1.8 MB, this one 0.7 MB), so each group is looked up once per index.
fn indexes(input: Inputs<'_>) -> Rows<'_> {
    let facts = input.facts;
    let bytes = move |i: &Relation| input.sizes.bytes(i.oid);
    let mut groups: HashMap<(&str, &str, &str), i64> = HashMap::new();
    for pair in user_indexes(facts) {
        *groups.entry(index_group(facts, pair)).or_default() += bytes(pair.0);
    }
    let mut ranked: Vec<_> = groups.into_iter().collect();
    ranked.sort_by(|(ka, a), (kb, b)| b.cmp(a).then(ka.cmp(kb)));
    ranked.truncate(TOP_INDEXES);
    let mut top: Vec<(&str, &str, &str)> = ranked.into_iter().map(|(k, _)| k).collect();
    top.sort_unstable();
    let mut out: Vec<(i64, usize, &Relation)> = user_indexes(facts)
        .filter_map(|pair| {
            let place = top.binary_search(&index_group(facts, pair)).ok()?;
            Some((bytes(pair.0), place, pair.0))
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let rows = out.into_iter().filter_map(move |(size, place, i)| {
        let (schema, table, name) = *top.get(place)?;
        Some(vec![
            int(i64::from(i.oid)),
            text(schema.to_owned()),
            text(table.to_owned()),
            text(name.to_owned()),
            int(i.scans),
            int(size),
        ])
    });
    Box::new(rows)
}

/// The group an index is reported under: its table's group and its parent index's name (or
/// its own).
fn index_group<'a>(
    facts: &'a Facts,
    (i, t): (&'a Relation, &'a Relation),
) -> (&'a str, &'a str, &'a str) {
    let (schema, table) = group_of(facts, t);
    let name = i
        .parent()
        .and_then(|p| facts.get(p))
        .map_or(facts.name(i), |p| facts.name(p));
    (schema, table, name)
}

/// `index_cache`: index block hit ratio per table, top 100 by index block accesses.
fn index_cache(input: Inputs<'_>) -> Rows<'_> {
    let facts = input.facts;
    let mut groups: HashMap<(&str, &str), (i64, i64)> = HashMap::new();
    for (i, t) in user_indexes(facts) {
        let (hit, read) = blocks(i);
        let g = groups.entry(group_of(facts, t)).or_default();
        g.0 += hit;
        g.1 += read;
    }
    let mut ranked: Vec<_> = groups.into_iter().filter(|(_, (h, r))| h + r > 0).collect();
    ranked.sort_by(|(ka, (ha, ra)), (kb, (hb, rb))| (hb + rb).cmp(&(ha + ra)).then(ka.cmp(kb)));
    ranked.truncate(TOP_INDEX_CACHE);
    Box::new(ranked.into_iter().map(|((schema, table), (hit, read))| {
        vec![
            text(schema.to_owned()),
            text(table.to_owned()),
            float(hit as f64 / (hit + read) as f64),
        ]
    }))
}

/// `cache_hit`: heap, index and TOAST blocks of user tables (`v_cache_hit_ratio`).
fn cache_hit(input: Inputs<'_>) -> Rows<'_> {
    let facts = input.facts;
    let indexes = indexes_by_table(facts);
    let mut kinds = [(0i64, 0i64); 3];
    let mut add = |k: usize, (hit, read): (i64, i64)| {
        if let Some(slot) = kinds.get_mut(k) {
            slot.0 += hit;
            slot.1 += read;
        }
    };
    for t in facts.relations.iter().filter(|r| is_user_table(facts, r)) {
        add(0, blocks(t));
        for i in indexes.get(&t.oid).into_iter().flatten() {
            add(1, blocks(i));
        }
        if let Some(toast) = t.toast().and_then(|o| facts.get(o)) {
            add(2, blocks(toast));
            for i in indexes.get(&toast.oid).into_iter().flatten() {
                add(2, blocks(i));
            }
        }
    }
    let rows = ["heap", "index", "toast"]
        .into_iter()
        .zip(kinds)
        .map(|(kind, (hit, read))| {
            let all = hit + read;
            vec![
                text(kind.to_owned()),
                int(hit),
                int(read),
                (all > 0)
                    .then(|| hit as f64 / all as f64)
                    .map_or(Cell::Null, float),
            ]
        });
    Box::new(rows)
}

/// `unused_indexes`: never-scanned indexes that are not unique, primary or constraints.
fn unused_indexes(input: Inputs<'_>) -> Rows<'_> {
    let (mut n, mut bytes) = (0i64, 0i64);
    for (i, _) in user_indexes(input.facts) {
        if i.scans == 0 && !i.constrained {
            n += 1;
            bytes += input.sizes.bytes(i.oid);
        }
    }
    Box::new(std::iter::once(vec![int(n), int(bytes)]))
}

/// How a partitioned table is named: bare in `public`, else schema-qualified.
fn parent_label(facts: &Facts, p: &Relation) -> String {
    match facts.qualified(p) {
        ("public", name) => name.to_owned(),
        (schema, name) => format!("{schema}.{name}"),
    }
}

/// The bounds of each partitioned table's direct partitions.
pub(super) fn by_parent(bounds: &Bounds) -> HashMap<u32, Vec<Bound>> {
    let mut direct: HashMap<u32, Vec<Bound>> = HashMap::new();
    for b in bounds.by_partition.values() {
        direct.entry(b.parent).or_default().push(*b);
    }
    direct
}

/// The upper bound of the newest non-DEFAULT partition of `p` (its direct partitions'
/// `bounds`), as a Unix time: the end of its runway. None when `p` is not partitioned by a
/// time range, or has a partition up to MAXVALUE (`v_partition_health`'s definition).
pub(super) fn newest_end(p: &Relation, bounds: &[Bound]) -> Option<f64> {
    if p.strategy != Some(b'r') || bounds.iter().any(|b| b.maxvalue) {
        return None;
    }
    bounds
        .iter()
        .filter(|b| !b.is_default)
        .filter_map(|b| b.range_end)
        .reduce(f64::max)
}

/// `partitions`: per partitioned table count, size, rows, DEFAULT rows and runway.
fn partitions(input: Inputs<'_>) -> Rows<'_> {
    let facts = input.facts;
    let now = facts.server_now();
    let mut children: HashMap<u32, Vec<&Relation>> = HashMap::new();
    for r in facts.relations.iter().filter(|r| r.kind != b'i') {
        if let Some(p) = r.parent() {
            children.entry(p).or_default().push(r);
        }
    }
    let direct = by_parent(input.bounds);
    let mut out: Vec<(i64, Row)> = facts
        .relations
        .iter()
        .filter(|p| {
            p.kind == b'p' && !matches!(facts.schema(p), "pg_catalog" | "information_schema")
        })
        .map(|p| {
            let (mut bytes, mut rows) = (0i64, 0i64);
            let mut stack = vec![p.oid];
            while let Some(o) = stack.pop() {
                for c in children.get(&o).into_iter().flatten() {
                    stack.push(c.oid);
                    if matches!(c.kind, b'r' | b'm') {
                        bytes += total_bytes(input.sizes, c.oid);
                        rows += c.live();
                    }
                }
            }
            let bounds = direct.get(&p.oid).map(Vec::as_slice).unwrap_or_default();
            let runway = newest_end(p, bounds).map(|end| end - now);
            let row = vec![
                text(parent_label(facts, p)),
                int(bounds.len() as i64),
                int(bytes),
                int(rows),
                int(input.bounds.default_rows.get(&p.oid).copied().unwrap_or(0)),
                runway.map_or(Cell::Null, float),
            ];
            (bytes, row)
        })
        .collect();
    out.sort_by(|(a, ra), (b, rb)| {
        b.cmp(a).then_with(|| {
            ra.first()
                .and_then(Cell::text)
                .cmp(&rb.first().and_then(Cell::text))
        })
    });
    out.truncate(TOP_PARTITIONED);
    Box::new(out.into_iter().map(|(_, r)| r))
}

/// `partition_growth`: rows inserted per direct partition, for a roll-up per parent.
fn partition_growth(input: Inputs<'_>) -> Rows<'_> {
    let facts = input.facts;
    let rows = facts
        .relations
        .iter()
        .filter(|r| r.kind != b'i')
        .filter_map(move |r| {
            let p = facts.get(r.parent()?)?;
            (p.kind == b'p').then(|| {
                vec![
                    text(parent_label(facts, p)),
                    text(format!("{}.{}", facts.schema(r), facts.name(r))),
                    int(r.inserted()),
                ]
            })
        });
    Box::new(rows)
}

/// The root of a partition tree (the relation itself when it is not a partition).
fn root<'a>(facts: &'a Facts, r: &'a Relation) -> (&'a str, &'a str) {
    let mut at = r;
    // A partition tree is finite; the bound only guards against a corrupt catalog.
    for _ in 0..64 {
        match at.parent().and_then(|p| facts.get(p)) {
            Some(p) => at = p,
            None => break,
        }
    }
    facts.qualified(at)
}

/// `table_wraparound`: the 20 oldest tables by relfrozenxid age (TOAST counted with its
/// table, partitions with their root).
fn table_wraparound(input: Inputs<'_>) -> Rows<'_> {
    let facts = input.facts;
    let greatest = |a: Option<i32>, b: Option<i32>| match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    };
    let mut groups: HashMap<_, (Option<i32>, Option<i32>)> = HashMap::new();
    for r in facts
        .relations
        .iter()
        .filter(|r| matches!(r.kind, b'r' | b'm') && !r.temp)
    {
        let toast = r.toast().and_then(|t| facts.get(t));
        let xid = greatest(r.xid_age(), toast.and_then(|t| t.xid_age()));
        let mxid = greatest(r.mxid_age(), toast.and_then(|t| t.mxid_age()));
        let g = groups.entry(root(facts, r)).or_default();
        g.0 = greatest(g.0, xid);
        g.1 = greatest(g.1, mxid);
    }
    let mut ranked: Vec<_> = groups.into_iter().collect();
    ranked.sort_by(|(ka, a), (kb, b)| b.0.cmp(&a.0).then(ka.cmp(kb)));
    ranked.truncate(TOP_WRAPAROUND);
    Box::new(ranked.into_iter().map(|((schema, name), (xid, mxid))| {
        vec![
            text(schema.to_owned()),
            text(name.to_owned()),
            opt_int(xid),
            opt_int(mxid),
        ]
    }))
}
