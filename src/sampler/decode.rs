//! Rows → series, one row at a time: the decoder is built from the statement's columns
//! (every declared column must be there), then fed the streamed rows. It keeps at most the
//! query's budget of series (roll-up queries: at most [`ROLLUP_ROW_LIMIT`] objects, handed
//! to the roll-up as compact [`Objects`](crate::snapshot::rollup::Objects) and budgeted
//! after it) and only counts what is past it, so memory is bounded by the budget, not by the
//! size of the result.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::cell::Cell;
use crate::catalog::QuerySpec;
use crate::db::outcome::{ErrorKind, RunError};
use crate::snapshot::histogram::StatementSample;
use crate::snapshot::{QueryResult, Series, label_digest};

/// The most rows a roll-up query may return (its series are budgeted after the roll-up).
pub(crate) const ROLLUP_ROW_LIMIT: usize = 200_000;

/// Counters of one run besides its series.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    /// Rows for the query's latency histogram, if it declares one.
    pub statements: Vec<StatementSample>,
    /// NULL values met (series omitted).
    pub nulls: u64,
    /// Series dropped over the budget or as duplicates.
    pub dropped: u64,
}

/// Column positions of what the spec reads.
#[derive(Debug)]
struct Columns {
    labels: Vec<usize>,
    values: Vec<usize>,
    histogram: Option<[usize; 3]>,
}

/// Turns streamed rows of one run into a result.
#[derive(Debug)]
pub(crate) struct Decoder {
    spec: Arc<QuerySpec>,
    columns: Columns,
    names: Vec<String>,
    result: QueryResult,
    stats: RunStats,
    /// Digests ([`label_digest`]) of the label sets kept: 8 bytes per series where a copy
    /// of the labels took about 200 (6 MB at 30,000 partition indexes of a roll-up).
    seen: HashSet<u64>,
    kept: usize,
    budget: usize,
}

fn decode_error(message: String) -> RunError {
    RunError::new(ErrorKind::Decode, message)
}

impl Decoder {
    /// A decoder for `spec` over a statement with `columns` (name, type).
    pub(crate) fn new(spec: &Arc<QuerySpec>, columns: &[(String, Type)]) -> Result<Self, RunError> {
        let find = |name: &str| {
            columns.iter().position(|(c, _)| c == name).ok_or_else(|| {
                decode_error(format!(
                    "column \"{name}\" is not in the result of query \"{}\"",
                    spec.name
                ))
            })
        };
        // A roll-up key is carried as a last, hidden label until the roll-up.
        let labels = spec
            .labels
            .iter()
            .chain(spec.rollup_key.as_ref())
            .map(|l| find(l))
            .collect::<Result<_, _>>()?;
        let values = spec
            .metrics
            .iter()
            .map(|m| find(&m.column))
            .collect::<Result<_, _>>()?;
        let histogram = match &spec.histogram {
            Some(h) => Some([
                find(&h.key_column)?,
                find(&h.calls_column)?,
                find(&h.time_ms_column)?,
            ]),
            None => None,
        };
        let budget = if spec.rollup_key.is_some() {
            ROLLUP_ROW_LIMIT
        } else {
            spec.max_series
        };
        Ok(Self {
            spec: spec.clone(),
            columns: Columns {
                labels,
                values,
                histogram,
            },
            names: columns.iter().map(|(n, _)| n.clone()).collect(),
            result: QueryResult::empty(spec),
            stats: RunStats::default(),
            seen: HashSet::new(),
            kept: 0,
            budget,
        })
    }

    /// Whether the budget is used up: later rows are only counted.
    pub(crate) fn full(&self) -> bool {
        self.kept >= self.budget
    }

    /// Counts `n` rows that were not decoded because the budget was used up.
    pub(crate) fn skip_rows(&mut self, n: u64) {
        self.stats.dropped += n * self.spec.metrics.len() as u64;
    }

    /// Decodes one row.
    pub(crate) fn push(&mut self, row: &Row) -> Result<(), RunError> {
        if self.full() && self.spec.histogram.is_none() && !self.spec.publish_rows {
            self.skip_rows(1);
            return Ok(());
        }
        let cells = (0..self.names.len())
            .map(|i| {
                row.try_get::<_, Cell>(i).map_err(|e| {
                    let col = row.columns().get(i).map(|c| c.name()).unwrap_or("?");
                    decode_error(format!("column \"{col}\": {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.push_cells(&cells)
    }

    /// Decodes one row given as cells in the order of the columns.
    pub(crate) fn push_cells(&mut self, cells: &[Cell]) -> Result<(), RunError> {
        if self.full() && self.spec.histogram.is_none() && !self.spec.publish_rows {
            self.skip_rows(1);
            return Ok(());
        }
        let cell = |i: usize| -> Result<&Cell, RunError> {
            cells
                .get(i)
                .ok_or_else(|| decode_error(format!("row has no column {i}")))
        };
        if let Some(rows) = self.result.rows.as_mut() {
            let mut out = Vec::with_capacity(self.names.len());
            for (i, name) in self.names.iter().enumerate() {
                out.push((name.clone(), cell(i)?.text()));
            }
            rows.push(out);
        }
        if let Some([k, c, t]) = self.columns.histogram {
            let num = |i| cell(i).map(|v| v.number().ok().flatten());
            if let (Some(key), Some(calls), Some(total_ms)) = (cell(k)?.text(), num(c)?, num(t)?) {
                self.stats.statements.push(StatementSample {
                    key,
                    calls,
                    total_ms,
                });
            }
        }
        if self.spec.metrics.is_empty() {
            return Ok(());
        }
        let mut labels = self
            .columns
            .labels
            .iter()
            .map(|&i| cell(i).map(|c| c.text().unwrap_or_default()))
            .collect::<Result<Vec<String>, _>>()?;
        let digest = label_digest(&labels);
        if self.seen.contains(&digest) {
            self.stats.dropped += self.spec.metrics.len() as u64;
            return Ok(());
        }
        let mut series = Vec::with_capacity(self.columns.values.len());
        for (m, &i) in self.columns.values.iter().enumerate() {
            match cell(i)?.number() {
                Ok(None) => self.stats.nulls += 1,
                Ok(Some(value)) => series.push((m, value)),
                Err(text) => return Err(self.not_a_number(m, text)),
            }
        }
        if self.kept + series.len() > self.budget {
            self.stats.dropped += series.len() as u64;
            return Ok(());
        }
        self.kept += series.len();
        self.seen.insert(digest);
        if let Some(objects) = self.result.objects.as_mut() {
            // The roll-up key is the last label: the others name the parent.
            labels.pop();
            objects.push(digest, labels, &series);
            return Ok(());
        }
        // Each series owns its labels: copies for all but the last, which takes them.
        let mut series = series.into_iter().peekable();
        while let Some((m, value)) = series.next() {
            let labels = match series.peek() {
                Some(_) => labels.clone(),
                None => std::mem::take(&mut labels),
            };
            if let Some(family) = self.result.families.get_mut(m) {
                family.push(Series { labels, value });
            }
        }
        Ok(())
    }

    fn not_a_number(&self, metric: usize, text: &str) -> RunError {
        let column = self
            .spec
            .metrics
            .get(metric)
            .map(|s| s.column.as_str())
            .unwrap_or("?");
        decode_error(format!(
            "column \"{column}\" holds \"{}\", not a number",
            text.chars().take(40).collect::<String>()
        ))
    }

    /// The result and the run's counters.
    pub(crate) fn finish(mut self) -> (QueryResult, RunStats) {
        self.result.at = std::time::SystemTime::now();
        self.result.note_found();
        (self.result, self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};

    /// A decoder of the one query of `yaml` over text columns named `columns`.
    fn decoder(yaml: &str, columns: &[&str]) -> Decoder {
        let specs = Catalog::parse(yaml, "q.yaml".as_ref(), Defaults::default())
            .unwrap()
            .queries;
        let columns: Vec<(String, Type)> = columns
            .iter()
            .map(|c| ((*c).to_owned(), Type::TEXT))
            .collect();
        Decoder::new(&specs[0], &columns).unwrap()
    }

    /// A label set met twice keeps its first series and counts the second as dropped; every
    /// metric of a row gets the row's labels.
    #[test]
    fn a_repeated_label_set_is_dropped_and_every_metric_keeps_its_labels() {
        let yaml = "queries:\n  - {name: q, sql: SELECT 1, labels: [k], max_series: 10, metrics: [\
            {column: a, name: pg_a, type: gauge, help: A.}, {column: b, name: pg_b, type: gauge, help: B.}]}\n";
        let mut d = decoder(yaml, &["k", "a", "b"]);
        let row = |k: &str, a: i64, b: i64| {
            vec![
                Cell::Text(k.into()),
                Cell::Int(a.into()),
                Cell::Int(b.into()),
            ]
        };
        for r in [row("x", 1, 2), row("y", 3, 4), row("x", 5, 6)] {
            d.push_cells(&r).unwrap();
        }
        let (result, stats) = d.finish();
        let family = |m: usize| -> Vec<(Vec<String>, f64)> {
            result.families[m]
                .iter()
                .map(|s| (s.labels.clone(), s.value))
                .collect()
        };
        assert_eq!(
            family(0),
            [(vec!["x".into()], 1.0), (vec!["y".into()], 3.0)]
        );
        assert_eq!(
            family(1),
            [(vec!["x".into()], 2.0), (vec!["y".into()], 4.0)]
        );
        assert_eq!(stats.dropped, 2, "the repeated row's two series");
    }

    /// A roll-up query's rows become objects: each parent label set once, each object by the
    /// digest of its labels (roll-up key last), a repeated object dropped.
    #[test]
    fn a_rollup_query_hands_over_objects_with_each_parent_once() {
        let yaml = "queries:\n  - {name: q, sql: SELECT 1, labels: [p], rollup_key: k, max_series: 10, metrics: [\
            {column: a, name: pg_a_total, type: counter, help: A.}]}\n";
        let mut d = decoder(yaml, &["p", "k", "a"]);
        let row = |p: &str, k: &str, a: i64| {
            vec![
                Cell::Text(p.into()),
                Cell::Text(k.into()),
                Cell::Int(a.into()),
            ]
        };
        for r in [
            row("t", "x", 1),
            row("u", "y", 2),
            row("t", "z", 3),
            row("t", "x", 9),
        ] {
            d.push_cells(&r).unwrap();
        }
        let (result, stats) = d.finish();
        assert!(result.families.iter().all(Vec::is_empty));
        let objects = result.objects.unwrap();
        assert_eq!(
            objects.parents,
            [vec!["t".to_owned()], vec!["u".to_owned()]]
        );
        let key = |p: &str, k: &str| label_digest(&[p.to_owned(), k.to_owned()]);
        let samples: Vec<(u64, u32, f64)> = objects.samples[0]
            .iter()
            .map(|s| (s.key, s.parent, s.value))
            .collect();
        assert_eq!(
            samples,
            [
                (key("t", "x"), 0, 1.0),
                (key("u", "y"), 1, 2.0),
                (key("t", "z"), 0, 3.0)
            ]
        );
        assert_eq!(stats.dropped, 1, "the repeated object");
    }
}
