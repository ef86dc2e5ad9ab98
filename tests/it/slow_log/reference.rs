//! The reference model of what counts in the slow-statement log: pgpulse's own jsonlog line
//! parser from before the log was parsed on the server (src/slowlog/parse.rs until V012,
//! moved here unchanged but for one thing: a line's bytes are decoded leniently, invalid
//! UTF-8 as U+FFFD, as pgpulse now decodes the names the helper returns), and a whole file as
//! the reader takes it: complete lines only, a line longer than 8 MiB skipped and counted.
//! [`super::tally`] checks `monitoring.log_tally` against it.
//!
//! PostgreSQL writes a `duration: N ms` message (severity `LOG`) for every statement at or
//! over `log_min_duration_statement`:
//!
//! - `duration: N ms  statement: …` — simple protocol;
//! - `duration: N ms  execute <name>: …` — extended protocol, the Execute message;
//! - `duration: N ms` alone — the statement text was already logged by `log_statement`;
//! - `duration: N ms  parse <name>: …`, `… bind <name>: …` — the Parse and Bind phases of the
//!   extended protocol, timed on their own: not executions, skipped;
//! - `duration: N ms  execute fetch from …` — a further Execute of a portal already counted
//!   at its first Execute: skipped;
//! - `duration: N ms  plan: …` — auto_explain's plan of a statement also logged above:
//!   skipped.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

/// The longest line counted (without its newline).
pub(super) const MAX_LINE: usize = 8 * 1024 * 1024;

/// What a line says.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Line {
    /// One execution of a statement took `ms` milliseconds.
    Execution {
        /// The database (`dbname`), empty when the line has none.
        datname: String,
        /// The role (`user`), empty when the line has none.
        user: String,
        /// The logged duration in milliseconds.
        ms: f64,
    },
    /// A `duration:` line that is not an execution (parse, bind, fetch, auto_explain plan).
    NotExecution,
    /// Any other log line.
    Other,
    /// Not a JSON object with the fields of a jsonlog line.
    Unparsed,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dbname: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error_severity: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// The bytes every duration message starts with, as they appear in a jsonlog line.
const NEEDLE: &[u8] = b"\"message\":\"duration: ";

/// Reads one line (without its newline).
pub(super) fn parse(line: &[u8]) -> Line {
    // Most lines of a busy log are not durations: skip them without a JSON parse.
    if !line.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return if line.first() == Some(&b'{') {
            Line::Other
        } else {
            Line::Unparsed
        };
    }
    let text = String::from_utf8_lossy(line);
    let Ok(raw) = serde_json::from_str::<Raw<'_>>(&text) else {
        return Line::Unparsed;
    };
    if raw.error_severity.as_deref() != Some("LOG") {
        return Line::Other;
    }
    let Some(message) = raw.message.as_deref() else {
        return Line::Other;
    };
    match duration(message) {
        Some((ms, true)) => Line::Execution {
            datname: raw.dbname.map(|s| s.into_owned()).unwrap_or_default(),
            user: raw.user.map(|s| s.into_owned()).unwrap_or_default(),
            ms,
        },
        Some((_, false)) => Line::NotExecution,
        None => Line::Other,
    }
}

/// `duration: N ms<rest>` → (N, whether it is an execution).
fn duration(message: &str) -> Option<(f64, bool)> {
    let rest = message.strip_prefix("duration: ")?;
    let (number, rest) = rest.split_once(" ms")?;
    let ms: f64 = number.parse().ok()?;
    if !ms.is_finite() {
        return None;
    }
    let execution = rest.is_empty()
        || rest.starts_with("  statement: ")
        || (rest.starts_with("  execute ") && !rest.starts_with("  execute fetch from "));
    Some((ms, execution))
}

/// What the reader should find in a file: executions at or over the threshold by
/// (database, user), pgpulse's role excepted, and the lines not understood.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Model {
    /// Executions by (database, user).
    pub tally: BTreeMap<(String, String), u64>,
    /// Unparsed and oversized lines.
    pub unparsed: u64,
}

/// Reads a whole file: its complete lines (what follows the last newline is a line still
/// being written, not counted yet).
pub(super) fn model(file: &[u8], threshold_ms: f64, me: &str) -> Model {
    let mut out = Model::default();
    let Some(end) = file.iter().rposition(|b| *b == b'\n') else {
        return out;
    };
    for line in file[..end].split(|b| *b == b'\n') {
        if line.len() > MAX_LINE {
            out.unparsed += 1;
            continue;
        }
        match parse(line) {
            Line::Execution { datname, user, ms } if ms >= threshold_ms && user != me => {
                *out.tally.entry((datname, user)).or_insert(0) += 1;
            }
            Line::Unparsed => out.unparsed += 1,
            _ => {}
        }
    }
    out
}

fn line(user: &str, db: &str, severity: &str, message: &str) -> Vec<u8> {
    serde_json::json!({
        "timestamp": "2026-11-30 16:00:00.000 UTC",
        "user": user, "dbname": db, "pid": 42, "error_severity": severity,
        "message": message, "backend_type": "client backend", "query_id": 0
    })
    .to_string()
    .into_bytes()
}

fn exec(user: &str, db: &str, ms: f64) -> Line {
    Line::Execution {
        datname: db.into(),
        user: user.into(),
        ms,
    }
}

#[test]
fn simple_extended_and_bare_durations_are_executions() {
    let cases = [
        (
            "duration: 201.517 ms  statement: SELECT pg_sleep(0.2)",
            201.517,
        ),
        ("duration: 100.000 ms  execute <unnamed>: SELECT $1", 100.0),
        ("duration: 99.874 ms  execute S_1: SELECT 'é€日本'", 99.874),
        ("duration: 1500.003 ms", 1500.003),
    ];
    for (msg, ms) in cases {
        assert_eq!(
            parse(&line("app", "trade", "LOG", msg)),
            exec("app", "trade", ms)
        );
    }
}

#[test]
fn parse_bind_fetch_and_plan_lines_are_not_executions() {
    for msg in [
        "duration: 150.000 ms  parse <unnamed>: SELECT 1",
        "duration: 150.000 ms  bind <unnamed>: SELECT 1",
        "duration: 150.000 ms  execute fetch from S_2/C_3: SELECT 1",
        "duration: 201.100 ms  plan:\nQuery Text: SELECT pg_sleep(0.2)\nResult",
    ] {
        assert_eq!(
            parse(&line("app", "trade", "LOG", msg)),
            Line::NotExecution,
            "{msg}"
        );
    }
}

#[test]
fn other_messages_severities_and_garbage_are_told_apart() {
    assert_eq!(
        parse(&line("app", "t", "LOG", "statement: SELECT 1")),
        Line::Other
    );
    assert_eq!(
        parse(&line("app", "t", "ERROR", "duration: 5 ms")),
        Line::Other
    );
    assert_eq!(
        parse(&line("app", "t", "LOG", "duration: soon ms")),
        Line::Other
    );
    assert_eq!(parse(b"not json"), Line::Unparsed);
    assert_eq!(
        parse(b"{\"message\":\"duration: 5 ms\", truncated"),
        Line::Unparsed
    );
}

#[test]
fn names_that_are_not_utf8_are_read_leniently() {
    let l = b"{\"user\":\"x\xff\",\"dbname\":\"d\",\"error_severity\":\"LOG\",\"message\":\"duration: 120.5 ms  statement: SELECT 1 /* \xff */\"}";
    assert_eq!(parse(l), exec("x\u{fffd}", "d", 120.5));
}

#[test]
fn a_file_counts_complete_lines_only() {
    let mut file = line("app", "trade", "LOG", "duration: 150 ms");
    file.extend_from_slice(b"\nnot json\n");
    file.extend(line("app", "trade", "LOG", "duration: 150 ms"));
    let m = model(&file, 100.0, "pgpulse");
    assert_eq!(m.unparsed, 1);
    assert_eq!(m.tally.get(&("trade".into(), "app".into())), Some(&1));
}
