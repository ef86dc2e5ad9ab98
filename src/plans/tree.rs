//! The JSON plan tree of `EXPLAIN (VERBOSE, FORMAT JSON)`, walked node by node: every scan of
//! a relation with the indexes it uses (Index Scan, Index Only Scan, the Bitmap Index Scans
//! under a Bitmap Heap Scan through BitmapAnd/BitmapOr), the partitions under Append and
//! Merge Append, the subplans removed by pruning at executor startup, subplans and init plans,
//! and the summary times. No text search over the plan.

use std::fmt;

use serde_json::Value;

/// Errors of reading a plan.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The text is not JSON.
    #[error("EXPLAIN output is not JSON: {0}")]
    Json(String),
    /// The JSON is not an EXPLAIN plan.
    #[error("EXPLAIN output has no plan: {0}")]
    Shape(&'static str),
}

/// One scan of a relation in the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// The node type: `Seq Scan`, `Index Scan`, `Index Only Scan`, `Bitmap Heap Scan`, ...
    pub node: String,
    /// The relation's schema (EXPLAIN VERBOSE reports it).
    pub schema: Option<String>,
    /// The relation scanned (a partition, for partitioned tables).
    pub relation: String,
    /// Indexes the scan reads (one, or several under BitmapAnd/BitmapOr).
    pub indexes: Vec<String>,
    /// With ANALYZE: the node never ran (pruned at run time, or not needed).
    pub never_executed: bool,
}

impl fmt::Display for Scan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rel = match &self.schema {
            Some(s) => format!("{s}.{}", self.relation),
            None => self.relation.clone(),
        };
        match (self.node.as_str(), self.indexes.as_slice()) {
            ("Bitmap Heap Scan", idx) if !idx.is_empty() => {
                write!(
                    f,
                    "Bitmap Heap Scan on {rel} (Bitmap Index Scan on {})",
                    idx.join(", ")
                )
            }
            (node, [idx]) => write!(f, "{node} using {idx} on {rel}"),
            (node, _) => write!(f, "{node} on {rel}"),
        }
    }
}

/// What a plan does, as far as the checks are concerned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanTree {
    /// Every relation scan, in plan order (subplans and init plans included).
    pub scans: Vec<Scan>,
    /// Sum of `Subplans Removed` over Append and Merge Append nodes: partitions pruned at
    /// executor startup (their number is known only there; generic plans prune here).
    pub subplans_removed: u64,
    /// The top node's `Total Cost` (planner units).
    pub total_cost: f64,
    /// `Planning Time` in milliseconds (with SUMMARY or ANALYZE).
    pub planning_ms: Option<f64>,
    /// `Execution Time` in milliseconds (ANALYZE only).
    pub execution_ms: Option<f64>,
    /// `Query Identifier` (VERBOSE, with `compute_query_id` on): the `queryid` of
    /// pg_stat_statements and the `query_id` of the jsonlog for this statement.
    pub query_id: Option<i64>,
}

/// Node types that name a relation but do not scan it.
const NOT_SCANS: &[&str] = &["ModifyTable", "LockRows"];

impl PlanTree {
    /// Reads the text of `EXPLAIN (FORMAT JSON)`: a one-element array holding `Plan`.
    pub fn parse(text: &str) -> Result<Self, TreeError> {
        let v: Value = serde_json::from_str(text).map_err(|e| TreeError::Json(e.to_string()))?;
        Self::from_value(&v)
    }

    /// Reads an already parsed EXPLAIN document.
    pub fn from_value(v: &Value) -> Result<Self, TreeError> {
        let top = v
            .as_array()
            .and_then(|a| a.first())
            .ok_or(TreeError::Shape("expected a one-element array"))?;
        let plan = top.get("Plan").ok_or(TreeError::Shape("no \"Plan\" key"))?;
        let mut tree = PlanTree {
            total_cost: plan["Total Cost"].as_f64().unwrap_or(0.0),
            planning_ms: top["Planning Time"].as_f64(),
            execution_ms: top["Execution Time"].as_f64(),
            query_id: top["Query Identifier"].as_i64().filter(|id| *id != 0),
            ..Default::default()
        };
        tree.walk(plan);
        Ok(tree)
    }

    fn walk(&mut self, node: &Value) {
        let node_type = node["Node Type"].as_str().unwrap_or_default();
        if let Some(removed) = node["Subplans Removed"].as_u64() {
            self.subplans_removed += removed;
        }
        if let Some(relation) = node["Relation Name"].as_str()
            && !NOT_SCANS.contains(&node_type)
        {
            let mut indexes = Vec::new();
            if let Some(i) = node["Index Name"].as_str() {
                indexes.push(i.to_owned());
            }
            if node_type == "Bitmap Heap Scan" {
                bitmap_indexes(node, &mut indexes);
            }
            self.scans.push(Scan {
                node: node_type.to_owned(),
                schema: node["Schema"].as_str().map(str::to_owned),
                relation: relation.to_owned(),
                indexes,
                never_executed: node["Actual Loops"].as_u64() == Some(0),
            });
            if node_type == "Bitmap Heap Scan" {
                // Its children are the bitmap index scans just collected; anything else
                // below it (there is none in PostgreSQL today) would still be walked.
                for child in children(node) {
                    if !is_bitmap(child) {
                        self.walk(child);
                    }
                }
                return;
            }
        }
        for child in children(node) {
            self.walk(child);
        }
    }

    /// Leaf relations scanned, as `(schema, relation)`, each once, in plan order.
    pub fn relations(&self) -> Vec<(Option<String>, String)> {
        let mut out: Vec<(Option<String>, String)> = Vec::new();
        for s in &self.scans {
            let key = (s.schema.clone(), s.relation.clone());
            if !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }
}

fn children(node: &Value) -> impl Iterator<Item = &Value> {
    node["Plans"].as_array().into_iter().flatten()
}

fn is_bitmap(node: &Value) -> bool {
    matches!(
        node["Node Type"].as_str(),
        Some("Bitmap Index Scan" | "BitmapAnd" | "BitmapOr")
    )
}

/// Index names of the Bitmap Index Scans under a node, through BitmapAnd/BitmapOr.
fn bitmap_indexes(node: &Value, out: &mut Vec<String>) {
    for child in children(node).filter(|c| is_bitmap(c)) {
        if let Some(i) = child["Index Name"].as_str() {
            out.push(i.to_owned());
        }
        bitmap_indexes(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan of the shape PostgreSQL 15 prints for a join of a pruned Merge Append with a
    /// nested loop into a bitmap scan, plus a subplan.
    const PLAN: &str = r#"[{"Plan": {"Node Type": "Limit", "Total Cost": 42.5, "Plans": [
        {"Node Type": "Nested Loop", "Parent Relationship": "Outer", "Plans": [
          {"Node Type": "Merge Append", "Subplans Removed": 21, "Plans": [
            {"Node Type": "Index Scan", "Schema": "public", "Relation Name": "trades_2026_11_29",
             "Index Name": "trades_2026_11_29_symbol_executed_at_idx", "Parent Relationship": "Member"},
            {"Node Type": "Index Only Scan", "Schema": "public", "Relation Name": "trades_2026_11_30",
             "Index Name": "trades_2026_11_30_symbol_executed_at_idx", "Actual Loops": 0}]},
          {"Node Type": "Bitmap Heap Scan", "Schema": "public", "Relation Name": "orders_2026_11",
           "Plans": [{"Node Type": "BitmapOr", "Plans": [
              {"Node Type": "Bitmap Index Scan", "Index Name": "a_idx"},
              {"Node Type": "Bitmap Index Scan", "Index Name": "b_idx"}]}]}]},
        {"Node Type": "Seq Scan", "Parent Relationship": "SubPlan", "Subplan Name": "SubPlan 1",
         "Schema": "public", "Relation Name": "market_data"}]},
      "Planning Time": 0.25, "Execution Time": 1.5}]"#;

    #[test]
    fn scans_under_append_bitmap_and_subplans_are_all_found() {
        let t = PlanTree::parse(PLAN).unwrap();
        let shown: Vec<String> = t.scans.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "Index Scan using trades_2026_11_29_symbol_executed_at_idx on public.trades_2026_11_29",
                "Index Only Scan using trades_2026_11_30_symbol_executed_at_idx on public.trades_2026_11_30",
                "Bitmap Heap Scan on public.orders_2026_11 (Bitmap Index Scan on a_idx, b_idx)",
                "Seq Scan on public.market_data",
            ]
        );
        assert!(t.scans[1].never_executed && !t.scans[0].never_executed);
        assert_eq!(t.subplans_removed, 21);
        assert_eq!(t.total_cost, 42.5);
        assert_eq!((t.planning_ms, t.execution_ms), (Some(0.25), Some(1.5)));
        assert_eq!(t.relations().len(), 4);
    }

    #[test]
    fn text_that_is_not_a_plan_is_an_error() {
        assert!(matches!(PlanTree::parse("[]"), Err(TreeError::Shape(_))));
        assert!(matches!(
            PlanTree::parse("QUERY PLAN"),
            Err(TreeError::Json(_))
        ));
    }
}
