//! Judging a plan, given what the catalog said about its relations and the expected indexes:
//! the expected-index verdict (with the node that changed) and the partition count. Pure
//! functions, so the rules are unit-tested here and [`super::check`] only gathers the facts.

use super::tree::Scan;

/// Relations with fewer pages than this (64 kB at the default 8 kB block size) are not held
/// to the expected index: reading a few pages sequentially is the right plan for them (an
/// empty future partition, today's partition just after midnight).
pub(crate) const SMALL_RELATION_PAGES: i64 = 8;

/// A scanned relation as the catalog knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Relation {
    /// Its partitioned root (`pg_partition_root`), or itself.
    pub root: String,
    /// Whether the root is a partitioned table.
    pub partitioned: bool,
    /// Leaf partitions of the root (0 when not partitioned).
    pub leaves: i64,
    /// Its size in pages.
    pub pages: i64,
}

/// An expected index as the catalog knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResolvedIndex {
    /// Whether the name is an index (and not, say, a table).
    pub is_index: bool,
    /// The partitioned root of its table, or its table.
    pub table: String,
    /// It and every index of its partition tree, as `schema.name`.
    pub members: Vec<String>,
}

/// The expected-index verdict of one index.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IndexVerdict {
    /// The index as written in the plans file.
    pub index: String,
    /// Every sizeable scan of its table uses it (or its partition's index), and one does.
    pub used: bool,
    /// When not used: the plan node that reads the table some other way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<String>,
    /// When not used and no node is to blame: why (the index does not exist, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Partitions of the partitioned tables the plan reads.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Partitions {
    /// Leaf partitions the plan scans (after pruning at plan time and executor startup).
    pub scanned: u64,
    /// Leaf partitions of those partitioned tables (`pg_partition_tree`).
    pub total: u64,
    /// Partitions removed at executor startup (`Subplans Removed`).
    pub removed_at_startup: u64,
    /// The partitioned tables.
    pub tables: Vec<String>,
}

/// Judges one expected index against the plan's scans. `resolved` is `None` when the name
/// does not exist; `relation_of` gives what the catalog knows about a scan's relation.
pub(crate) fn index_verdict(
    index: &str,
    resolved: Option<&ResolvedIndex>,
    scans: &[Scan],
    relation_of: impl Fn(&Scan) -> Option<Relation>,
) -> IndexVerdict {
    let verdict = |used: bool, changed: Option<String>, reason: Option<&str>| IndexVerdict {
        index: index.to_owned(),
        used,
        changed,
        reason: reason.map(str::to_owned),
    };
    let Some(resolved) = resolved else {
        return verdict(false, None, Some("it does not exist"));
    };
    if !resolved.is_index {
        return verdict(false, None, Some("it is not an index"));
    }
    let root_of = |s: &Scan| relation_of(s).map_or_else(|| s.relation.clone(), |r| r.root);
    let relevant: Vec<&Scan> = scans
        .iter()
        .filter(|s| root_of(s) == resolved.table)
        .collect();
    let uses = |s: &Scan| {
        s.indexes.iter().any(|i| match &s.schema {
            Some(nsp) => resolved.members.contains(&format!("{nsp}.{i}")),
            None => resolved
                .members
                .iter()
                .any(|m| m.ends_with(&format!(".{i}"))),
        })
    };
    let small = |s: &Scan| relation_of(s).is_some_and(|r| r.pages < SMALL_RELATION_PAGES);
    let offending = relevant.iter().find(|s| !uses(s) && !small(s));
    match (relevant.iter().any(|s| uses(s)), offending) {
        (_, Some(s)) => {
            let pages = relation_of(s).map_or(0, |r| r.pages);
            verdict(false, Some(format!("{s} ({pages} pages)")), None)
        }
        (true, None) => verdict(true, None, None),
        // Only small relations are read: not held to the index.
        (false, None) if !relevant.is_empty() => verdict(true, None, None),
        (false, None) => verdict(
            false,
            None,
            Some("the plan reads no partition of its table"),
        ),
    }
}

/// Distinct scanned leaves of partitioned tables against those tables' leaf counts; `None`
/// when the plan reads no partitioned table. `relations` holds each scanned relation once.
pub(crate) fn partitions<'a>(
    relations: impl IntoIterator<Item = &'a Relation>,
    removed_at_startup: u64,
) -> Option<Partitions> {
    let mut partitions: Option<Partitions> = None;
    for r in relations.into_iter().filter(|r| r.partitioned) {
        let p = partitions.get_or_insert_with(|| Partitions {
            scanned: 0,
            total: 0,
            removed_at_startup,
            tables: Vec::new(),
        });
        p.scanned += 1;
        if !p.tables.contains(&r.root) {
            p.tables.push(r.root.clone());
            p.total += r.leaves.max(0) as u64;
        }
    }
    partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(node: &str, relation: &str, index: Option<&str>) -> Scan {
        Scan {
            node: node.into(),
            schema: Some("public".into()),
            relation: relation.into(),
            indexes: index.into_iter().map(String::from).collect(),
            never_executed: false,
        }
    }

    fn rel(root: &str, pages: i64) -> Relation {
        Relation {
            root: root.into(),
            partitioned: root != "market_data",
            leaves: 3,
            pages,
        }
    }

    fn trades_index() -> ResolvedIndex {
        ResolvedIndex {
            is_index: true,
            table: "trades".into(),
            members: vec![
                "public.idx_trades_symbol_time".into(),
                "public.trades_d1_symbol_idx".into(),
                "public.trades_d2_symbol_idx".into(),
                "public.trades_d3_symbol_idx".into(),
            ],
        }
    }

    /// Catalog facts: d1 and d2 are large, d3 (today, just after midnight) is small.
    fn facts(s: &Scan) -> Option<Relation> {
        match s.relation.as_str() {
            "trades_d1" => Some(rel("trades", 500)),
            "trades_d2" => Some(rel("trades", 400)),
            "trades_d3" => Some(rel("trades", 2)),
            "market_data" => Some(rel("market_data", 900)),
            _ => None,
        }
    }

    #[test]
    fn partition_indexes_count_and_a_small_partition_may_be_read_sequentially() {
        let scans = [
            scan("Index Scan", "trades_d1", Some("trades_d1_symbol_idx")),
            scan(
                "Bitmap Heap Scan",
                "trades_d2",
                Some("trades_d2_symbol_idx"),
            ),
            scan("Seq Scan", "trades_d3", None),
            scan("Seq Scan", "market_data", None),
        ];
        let v = index_verdict(
            "idx_trades_symbol_time",
            Some(&trades_index()),
            &scans,
            facts,
        );
        assert!(v.used, "{v:?}");
        assert_eq!((v.changed, v.reason), (None, None));
    }

    #[test]
    fn a_large_partition_read_another_way_is_the_node_that_changed() {
        let scans = [
            scan("Index Scan", "trades_d1", Some("trades_d1_symbol_idx")),
            scan("Index Scan", "trades_d2", Some("trades_d2_other_idx")),
        ];
        let v = index_verdict(
            "idx_trades_symbol_time",
            Some(&trades_index()),
            &scans,
            facts,
        );
        assert!(!v.used);
        assert_eq!(
            v.changed.as_deref(),
            Some("Index Scan using trades_d2_other_idx on public.trades_d2 (400 pages)")
        );
    }

    #[test]
    fn a_missing_index_or_a_table_without_scans_fails_with_the_reason() {
        let scans = [scan("Seq Scan", "market_data", None)];
        let v = index_verdict("idx_gone", None, &scans, facts);
        assert_eq!(
            (v.used, v.reason.as_deref()),
            (false, Some("it does not exist"))
        );
        let v = index_verdict(
            "idx_trades_symbol_time",
            Some(&trades_index()),
            &scans,
            facts,
        );
        assert_eq!(
            (v.used, v.reason.as_deref()),
            (false, Some("the plan reads no partition of its table"))
        );
    }

    #[test]
    fn partitions_are_counted_per_partitioned_table_and_summed() {
        let d1 = rel("trades", 500);
        let d2 = rel("trades", 400);
        let o1 = Relation {
            root: "orders".into(),
            partitioned: true,
            leaves: 8,
            pages: 10,
        };
        let plain = rel("market_data", 900);
        let p = partitions([&d1, &d2, &o1, &plain], 21).unwrap();
        assert_eq!((p.scanned, p.total, p.removed_at_startup), (3, 11, 21));
        assert_eq!(p.tables, ["trades", "orders"]);
        assert_eq!(partitions([&plain], 0), None);
    }
}
