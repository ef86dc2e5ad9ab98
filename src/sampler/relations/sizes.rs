//! Which exact sizes a round reads: every relation whose size signature changed since its
//! size was read (all of them when a full read is due), and the bookkeeping after a read.

use std::collections::{HashMap, HashSet};

use super::derive::{is_user_table, user_indexes};
use super::facts::{Facts, Relation, Sizes};

/// The size signature of every user table and index the families report.
pub(super) fn signatures(facts: &Facts) -> Vec<(u32, u64)> {
    let mut indexes: HashMap<u32, Vec<&Relation>> = HashMap::new();
    for (i, t) in user_indexes(facts) {
        indexes.entry(t.oid).or_default().push(i);
    }
    let tables = facts
        .relations
        .iter()
        .filter(|r| is_user_table(facts, r))
        .map(|t| {
            let own = indexes.get(&t.oid).map(Vec::as_slice).unwrap_or_default();
            (t.oid, facts.size_signature(t, own))
        });
    let idx = user_indexes(facts).map(|(i, _)| (i.oid, facts.size_signature(i, &[])));
    tables.chain(idx).collect()
}

/// After a successful read of `changed` (or of everything, with `all`): records what each
/// size was read at and forgets relations that no longer exist.
pub(super) fn settle(sizes: &mut Sizes, wanted: &[(u32, u64)], all: bool, changed: &[u32]) {
    let changed: HashSet<u32> = changed.iter().copied().collect();
    for (oid, sig) in wanted {
        if all || changed.contains(oid) {
            sizes.read_at.insert(*oid, *sig);
        }
    }
    let live: HashSet<u32> = wanted.iter().map(|(o, _)| *o).collect();
    sizes.read_at.retain(|o, _| live.contains(o));
    sizes.table.retain(|o, _| live.contains(o));
    sizes.indexes.retain(|o, _| live.contains(o));
    sizes.main.retain(|o, _| live.contains(o));
}
