//! A small PromQL scanner: the metric selectors of an expression with their matchers, their
//! range and the functions around them. Enough for lint; promtool does the real parsing. Also
//! the metric names the rules and dashboards use.

use std::collections::BTreeSet;

use super::all_exprs;

#[derive(Debug)]
pub(super) struct Selector {
    pub(super) name: String,
    /// Matchers with spaces removed, e.g. `job="$job"`.
    pub(super) matchers: Vec<String>,
    /// The text between `[` and `]` right after the selector, if any.
    pub(super) range: Option<String>,
    /// Enclosing functions and aggregations, outermost first.
    pub(super) functions: Vec<String>,
}

const AGGREGATIONS: &str =
    "sum avg min max count group stddev stdvar topk bottomk quantile count_values";
const KEYWORDS: &str = "and or unless bool inf nan offset";
const LABEL_LISTS: &str = "by without on ignoring group_left group_right";
const LABELS: &str = "#labels";

fn is_one_of(word: &str, list: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

pub(super) fn selectors(expr: &str) -> Vec<Selector> {
    let c: Vec<char> = expr.chars().collect();
    let (mut i, mut out) = (0, Vec::new());
    let mut stack: Vec<String> = Vec::new(); // what each open `(` belongs to
    let mut pending: Vec<String> = Vec::new(); // what the next `(`s will belong to
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // The index of the `shut` ending the bracket opened at `j` (`{}` and `[]` do not nest).
    let close = |j: usize, shut: char| {
        let (mut k, mut quote) = (j + 1, None);
        while k < c.len() {
            match (quote, c[k]) {
                (Some(_), '\\') => k += 1,
                (Some(q), ch) if ch == q => quote = None,
                // Before opening a quote: the end of a string is its own quote character.
                (None, ch) if ch == shut => return k,
                (None, '"' | '\'' | '`') => quote = Some(c[k]),
                _ => {}
            }
            k += 1;
        }
        panic!("unbalanced {shut} in {expr}")
    };
    let word_char = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    while i < c.len() {
        let ch = c[i];
        if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if matches!(ch, '"' | '\'' | '`') {
            i = close(i, ch) + 1;
        } else if ch == '[' || ch == '{' {
            i = close(i, if ch == '[' { ']' } else { '}' }) + 1;
        } else if ch == '(' {
            stack.push(if pending.is_empty() {
                String::new()
            } else {
                pending.remove(0)
            });
            i += 1;
        } else if ch == ')' {
            stack.pop();
            i += 1;
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if word_char(ch) {
            let start = i;
            while i < c.len() && word_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            if stack.last().is_some_and(|s| s == LABELS) || is_one_of(&word, KEYWORDS) {
                continue;
            }
            if is_one_of(&word, LABEL_LISTS) {
                if c.get(next) == Some(&'(') {
                    pending.insert(0, LABELS.into());
                }
                continue;
            }
            if is_one_of(&word, AGGREGATIONS) || c.get(next) == Some(&'(') {
                pending = vec![word];
                continue;
            }
            let mut sel = Selector {
                name: word,
                matchers: vec![],
                range: None,
                functions: vec![],
            };
            if c.get(next) == Some(&'{') {
                let end = close(next, '}');
                let body: String = c[next + 1..end]
                    .iter()
                    .filter(|ch| !ch.is_whitespace())
                    .collect();
                sel.matchers = body
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect();
                i = end + 1;
            }
            let after = skip_ws(i);
            if c.get(after) == Some(&'[') {
                let end = close(after, ']');
                sel.range = Some(
                    c[after + 1..end]
                        .iter()
                        .collect::<String>()
                        .trim()
                        .to_owned(),
                );
                i = end + 1;
            }
            let named = stack.iter().filter(|s| !s.is_empty() && *s != LABELS);
            sel.functions = named.cloned().collect();
            out.push(sel);
        } else {
            i += 1;
        }
    }
    out
}

/// The scanner itself: names, matchers, ranges, enclosing functions; label lists, strings,
/// comments, keywords and durations are not metrics.
#[test]
fn the_promql_scanner_finds_selectors_matchers_ranges_and_enclosing_functions() {
    let s = selectors(
        r#"histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job="x", le!="1"}[5m]))) > 0.1
           and on (job) b{instance=~"$instance"} # a comment mentioning c
           / ignoring (kind) sum(c) by (d) offset 5m
           or label_replace(e, "k", "", "", "")"#,
    );
    let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b", "c", "e"]);
    assert_eq!(s[0].matchers, [r#"job="x""#, r#"le!="1""#]);
    assert_eq!(s[0].range.as_deref(), Some("5m"));
    assert_eq!(s[0].functions, ["histogram_quantile", "sum", "rate"]);
    assert_eq!(s[1].matchers, [r#"instance=~"$instance""#]);
    assert!(s[1].functions.is_empty() && s[2].functions == ["sum"]);
}

/// Metric names used by the rules and the dashboards.
pub(super) fn used_metrics() -> BTreeSet<String> {
    all_exprs()
        .iter()
        .flat_map(|(_, e)| selectors(e))
        .map(|s| s.name)
        .collect()
}
