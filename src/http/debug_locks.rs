//! `/debug/locks`: the lock forest of the last `lock_forest` sample as JSON (never queried per
//! request): every session that waits for a lock or holds one another waits for, with the
//! sessions it waits for, its lock request, its ages and its statement as pg_stat_statements
//! normalized it (parameters as `$1`; the literal text of `pg_stat_activity.query` is never
//! read into it, and a text pg_stat_statements left with a constant in it is not served), and
//! the roots, most blocked sessions first. It names sessions and
//! statements, so it is served only behind basic authentication or on a loopback listen
//! address ([`super::auth`] answers 404 elsewhere).

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use crate::snapshot::Row;

/// The catalog query whose rows this endpoint serves.
pub(crate) const QUERY: &str = "lock_forest";

/// Columns that are numbers of seconds in the JSON.
const SECONDS: [&str; 3] = [
    "transaction_age_seconds",
    "state_age_seconds",
    "lock_wait_seconds",
];

pub(super) async fn debug_locks(
    State(state): State<AppState>,
    Query(param): Query<super::targets::TargetParam>,
) -> Response {
    match state.target(&param) {
        Ok(t) => answer(&t.snapshot).into_response(),
        Err(r) => *r,
    }
}

/// The lock forest of `snapshot`'s last sample.
fn answer(snapshot: &crate::snapshot::Snapshot) -> (StatusCode, Json<Value>) {
    let Some(result) = snapshot.result(QUERY) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": "no lock_forest sample yet: the catalog has no lock_forest query, it needs \
                          pg_stat_statements, or it is failing (see / for its status)"
            })),
        );
    };
    let rows = result.rows.as_deref().unwrap_or_default();
    let sessions: Vec<Value> = rows.iter().map(session).collect();
    let sampled_at = crate::clock::unix_seconds(result.at) as u64;
    (
        StatusCode::OK,
        Json(json!({"sampled_at": sampled_at, "roots": roots(rows), "sessions": sessions})),
    )
}

/// One session as JSON: numbers as numbers, `blocked_by` as a list of pids, `root` a boolean.
fn session(row: &Row) -> Value {
    let mut m = Map::new();
    for (k, v) in row {
        let value = match (k.as_str(), v) {
            (_, None) => Value::Null,
            ("blocked_by", Some(v)) => Value::Array(pids(v).into_iter().map(Value::from).collect()),
            ("root", Some(v)) => Value::Bool(v == "t"),
            ("pid", Some(v)) => v.parse::<i64>().map_or(Value::Null, Value::from),
            ("statement", Some(v)) if !normalized(v) => Value::Null,
            (k, Some(v)) if SECONDS.contains(&k) => v
                .parse::<f64>()
                .ok()
                .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number))
                .unwrap_or(Value::Null),
            (_, Some(v)) => Value::String(v.clone()),
        };
        m.insert(k.clone(), value);
    }
    Value::Object(m)
}

/// Whether a pg_stat_statements text is normalized: no string constant (no quote, no dollar
/// quote) and no number standing alone (a digit that is not inside an identifier or a `$n`
/// parameter). pg_stat_statements keeps a statement's text as it came when the statement's
/// entry was evicted or reset between its parsing and its end; such a text is not served.
/// A comment or a quoted identifier with a digit makes a normalized text look unnormalized:
/// it is not served either.
fn normalized(text: &str) -> bool {
    let mut prev = ' ';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let dollar_quote = c == '$' && {
            let tag: String = chars
                .clone()
                .take_while(|t| t.is_alphanumeric() || *t == '_')
                .collect();
            let after = chars.clone().nth(tag.chars().count());
            after == Some('$') && !tag.starts_with(|t: char| t.is_ascii_digit())
        };
        let loose_digit =
            c.is_ascii_digit() && !(prev.is_alphanumeric() || prev == '_' || prev == '$');
        if c == '\'' || dollar_quote || loose_digit {
            return false;
        }
        prev = c;
    }
    true
}

fn pids(list: &str) -> Vec<i64> {
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn column<'a>(row: &'a Row, name: &str) -> Option<&'a str> {
    row.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

/// The roots (sessions that block others and wait for none) with the sessions waiting behind
/// each, directly or through others, each counted once; most blocked first, then by pid.
fn roots(rows: &[Row]) -> Vec<Value> {
    let mut behind: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut waiting = HashSet::new();
    for row in rows {
        let Some(pid) = column(row, "pid").and_then(|p| p.parse::<i64>().ok()) else {
            continue;
        };
        for b in pids(column(row, "blocked_by").unwrap_or_default()) {
            behind.entry(b).or_default().push(pid);
            waiting.insert(pid);
        }
    }
    let mut out: Vec<(i64, usize)> = behind
        .keys()
        .filter(|p| !waiting.contains(p))
        .map(|&p| (p, reachable(p, &behind)))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.into_iter()
        .map(|(pid, blocked)| json!({"pid": pid, "blocked_sessions": blocked}))
        .collect()
}

fn reachable(root: i64, behind: &HashMap<i64, Vec<i64>>) -> usize {
    let mut seen = HashSet::from([root]);
    let mut frontier = vec![root];
    while let Some(at) = frontier.pop() {
        for w in behind.get(&at).into_iter().flatten() {
            if seen.insert(*w) {
                frontier.push(*w);
            }
        }
    }
    seen.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: i64, blocked_by: &str) -> Row {
        vec![
            ("pid".into(), Some(pid.to_string())),
            ("blocked_by".into(), Some(blocked_by.into())),
        ]
    }

    #[test]
    fn roots_count_every_session_behind_them_once_and_cycles_are_no_roots() {
        // 1 <- 2 <- 3, 1 <- 4 <- 3 (3 waits for two), 5 <- 6; 7 <-> 8 wait for each other.
        let rows = vec![
            row(1, ""),
            row(2, "1"),
            row(4, "1"),
            row(3, "2,4"),
            row(5, ""),
            row(6, "5"),
            row(7, "8"),
            row(8, "7"),
        ];
        assert_eq!(
            roots(&rows),
            vec![
                json!({"pid": 1, "blocked_sessions": 3}),
                json!({"pid": 5, "blocked_sessions": 1})
            ]
        );
    }

    #[test]
    fn a_statement_with_a_constant_left_in_it_is_not_served() {
        for text in [
            "SELECT count(*) FROM book WHERE symbol = $1",
            "UPDATE t1 SET qty = qty + $1 WHERE id = $2 AND v2 IS NULL",
            "SELECT a::int4, \"col_9\" FROM s.t LIMIT $12",
        ] {
            assert!(normalized(text), "{text}");
        }
        for text in [
            "SELECT count(*) FROM book WHERE symbol = 'BTC-USD'",
            "SELECT * FROM accounts WHERE id = 4711",
            "SELECT $1 + .5",
            "INSERT INTO t VALUES (-1)",
            "SELECT $$secret$$",
            "SELECT $tag$secret$tag$",
            "SELECT E'\\x41'",
            "SELECT $1 /* user 'bob' */",
            "SELECT \"x 1\" FROM t",
        ] {
            assert!(!normalized(text), "{text}");
        }
        let mut r = row(9, "");
        r.push((
            "statement".into(),
            Some("DELETE FROM book WHERE qty < 3".into()),
        ));
        assert_eq!(session(&r)["statement"], Value::Null);
    }

    #[test]
    fn a_session_is_typed_json_and_a_hostile_value_stays_a_string() {
        let mut r = row(9, "1,2");
        r.push(("root".into(), Some("f".into())));
        r.push(("application_name".into(), Some("\"},{\"pid\":1".into())));
        r.push(("lock_wait_seconds".into(), Some("1.5".into())));
        r.push(("statement".into(), None));
        let v = session(&r);
        assert_eq!(v["pid"], json!(9));
        assert_eq!(v["blocked_by"], json!([1, 2]));
        assert_eq!(v["root"], json!(false));
        assert_eq!(v["application_name"], json!("\"},{\"pid\":1"));
        assert_eq!(v["lock_wait_seconds"], json!(1.5));
        assert_eq!(v["statement"], Value::Null);
    }
}
