//! Which exact sizes a round reads: every relation whose size signature changed since its
//! size was read (all of them when a full read is due); [`super::facts::Sizes::settle`]
//! keeps the books after a read.

use std::collections::HashMap;

use super::derive::{is_user_table, user_indexes};
use super::facts::{Facts, Relation};

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
