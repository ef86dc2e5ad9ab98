//! `monitoring.log_tally` on hostile log files written into the test cluster's log directory
//! (the test owns the cluster): bytes that are not UTF-8, NUL bytes, truncated JSON, a line of
//! 2 MiB and one of 9 MiB, numbers like `1e309` and `NaN`, fetches, phases and wrong
//! severities. The helper never fails, counts exactly what the reference model (pgpulse's
//! parser before V012, [`super::reference`]) counts, and returns no text of a line.
//!
//! Each file is read the way `pgpulse serve` reads it: [`tally_file`] from a fresh
//! [`Tracker`], window by window from a small first window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgpulse::slowlog::files::{Listed, Tracker};
use pgpulse::slowlog::poll::{MAX_WINDOW, Outcome, Reading, TALLY_SQL, tally_file};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio_postgres::Client;

use super::reference::{MAX_LINE, Model, model};
use super::{as_user, log_cluster, setup};
use crate::harness::connect;

const ME: &str = "pgpulse_login";
const SECRET: &str = "BTC-USD-secret-4711";

/// Writes `bytes` as `name` into the log directory (readable by the server's user).
fn write_log(logdir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = logdir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Tallies the whole of `name` as the reader does, starting with windows of `chunk` bytes;
/// returns what it found and the bytes left unconsumed (a line still being written).
async fn read_as_pgpulse(c: &Client, name: &str, size: usize, chunk: u32) -> (Model, u64) {
    let statement = c.prepare(TALLY_SQL).await.unwrap();
    let reading = Reading {
        statement: &statement,
        keys: Some((&[], &[])),
        threshold_ms: 100.0,
        me: ME,
        chunk,
        limit: Duration::from_secs(60),
    };
    let mut tracker = Tracker::default();
    tracker.reconcile(&[]);
    tracker.reconcile(&[Listed {
        name: name.to_owned(),
        size: size as u64,
    }]);
    let mut out = Outcome::default();
    tally_file(c, &reading, name, &mut tracker, &mut out)
        .await
        .unwrap_or_else(|e| panic!("tally {name}: {}", e.message));
    let tally: BTreeMap<(String, String), u64> = out
        .tally
        .iter()
        .map(|(l, n)| ((l.datname.clone(), l.user.clone()), n))
        .collect();
    let model = Model {
        tally,
        unparsed: out.unparsed,
    };
    (model, tracker.lag())
}

/// A jsonlog line as PostgreSQL writes it (fields in its order, no spaces).
fn pg_line(user: &str, db: &str, severity: &str, message: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "timestamp": "2026-11-30 16:00:00.000 UTC", "user": user, "dbname": db, "pid": 42,
        "error_severity": severity, "message": message, "backend_type": "client backend",
        "query_id": 0
    });
    v.to_string().into_bytes()
}

/// The crafted file and what it holds, counted by hand.
fn hostile_file() -> (Vec<u8>, BTreeMap<(String, String), u64>, u64) {
    let stmt = format!("SELECT pg_sleep(0.2) /* '{SECRET}' */");
    let mut lines: Vec<Vec<u8>> = vec![
        pg_line("trader_a", "trade", "LOG", &format!("duration: 201.517 ms  statement: {stmt}")),
        // Not UTF-8 (a SQL_ASCII database): names and text.
        b"{\"user\":\"x\xff\",\"dbname\":\"asc\xffii\",\"error_severity\":\"LOG\",\"message\":\"duration: 300.000 ms  statement: SELECT 1 /* \xff */\"}".to_vec(),
        b"{\"user\":\"trader_b\",\"dbname\":\"trade\",\"error_severity\":\"LOG\",\"message\":\"duration: 150.000 ms  execute <unnamed>: SELECT '\xc3'\"}".to_vec(),
        // Truncated JSON, garbage, an empty line, NUL bytes, an array, a wrong type.
        b"{\"user\":\"trader_a\",\"dbname\":\"trade\",\"error_severity\":\"LOG\",\"message\":\"duration: 500.000 ms  statement: SELECT".to_vec(),
        b"garbage \x00\x01 not json".to_vec(),
        Vec::new(),
        b"{\"user\":\"trader_a\x00\",\"error_severity\":\"LOG\",\"message\":\"duration: 500 ms\"}".to_vec(),
        b"{\"other\":\"\x00\"}".to_vec(),
        b"[{\"error_severity\":\"LOG\",\"message\":\"duration: 500 ms\"}]".to_vec(),
        b"{\"user\":5,\"error_severity\":\"LOG\",\"message\":\"duration: 500 ms\"}".to_vec(),
        b"{\"error_severity\":5,\"message\":\"duration: 500 ms\"}".to_vec(),
        b"{\"error_severity\":\"LOG\",\"message\":\"duration: 500 ms \\ud800\"}".to_vec(),
        b"{\"pid\":NaN,\"error_severity\":\"LOG\",\"message\":\"duration: 500 ms\"}".to_vec(),
        // Numbers: not finite, below the threshold, at it in other spellings.
        b"{\"pid\":1e309,\"user\":\"trader_c\",\"dbname\":\"trade\",\"error_severity\":\"LOG\",\"message\":\"duration: 120 ms\"}".to_vec(),
        b"  {\"user\":\"trader_c\",\"dbname\":\"trade\",\"error_severity\":\"LOG\",\"message\":\"duration: 100 ms\"}\r".to_vec(),
    ];
    for n in [
        "1e309", "NaN", "inf", "-1", "1e-400", "99.9999", "1_0", " 100", "", "0x10",
    ] {
        lines.push(pg_line(
            "trader_c",
            "trade",
            "LOG",
            &format!("duration: {n} ms"),
        ));
    }
    for n in ["1e2", "+100", "100.", "1E3", "9".repeat(400).as_str()] {
        // 9…9 (400 digits) is finite for neither parser: not counted.
        lines.push(pg_line(
            "trader_c",
            "trade",
            "LOG",
            &format!("duration: {n} ms"),
        ));
    }
    // Phases and fetches, wrong severities, pgpulse's own role.
    for tail in [
        "  execute fetch from S_1/C_2: SELECT 1",
        "  parse <unnamed>: SELECT 1",
        "  bind S_1: SELECT 1",
        "  plan:\nQuery Text: SELECT 1",
        "x",
    ] {
        lines.push(pg_line(
            "trader_a",
            "trade",
            "LOG",
            &format!("duration: 400 ms{tail}"),
        ));
    }
    for sev in ["ERROR", "log", "WARNING", "LOG "] {
        lines.push(pg_line("trader_a", "trade", sev, "duration: 400 ms"));
    }
    lines.push(pg_line(ME, "trade", "LOG", "duration: 400 ms"));
    // A statement of 2 MiB (counted whole) and a line of 9 MiB (skipped, counted as unparsed).
    let long = "x".repeat(2 * 1024 * 1024);
    lines.push(pg_line(
        "trader_b",
        "trade",
        "LOG",
        &format!("duration: 250 ms  statement: SELECT '{long}'"),
    ));
    let huge = "y".repeat(MAX_LINE + 1024);
    lines.push(pg_line(
        "trader_b",
        "trade",
        "LOG",
        &format!("duration: 250 ms  statement: SELECT '{huge}'"),
    ));
    lines.push(pg_line(
        "trader_b",
        "trade",
        "LOG",
        "duration: 260 ms  execute S_9: SELECT 2",
    ));
    let mut file = lines.join(&b'\n');
    file.push(b'\n');
    // A line being written: not counted yet.
    file.extend(
        pg_line("trader_a", "trade", "LOG", "duration: 900 ms")
            .iter()
            .take(60),
    );
    let pairs = [
        (("trade", "trader_a"), 1),
        (("asc\u{fffd}ii", "x\u{fffd}"), 1),
        (("trade", "trader_b"), 3),
        (("trade", "trader_c"), 6),
    ];
    let expected = pairs
        .iter()
        .map(|((d, u), n)| (((*d).to_owned(), (*u).to_owned()), *n))
        .collect();
    // Truncated, garbage, empty, NUL, array, two wrong types, a lone surrogate, NaN, 9 MiB.
    (file, expected, 10)
}

#[tokio::test(flavor = "multi_thread")]
async fn log_tally_counts_hostile_lines_exactly_and_returns_no_text() {
    let cluster = log_cluster(&[]);
    let (one, _two) = setup(&cluster).await;
    let logdir = cluster.dir().join("data/log");
    let me = connect(&as_user(&one.url, ME)).await;
    let (file, expected, unparsed) = hostile_file();
    let partial = file.len() - file.iter().rposition(|b| *b == b'\n').unwrap() - 1;
    write_log(&logdir, "pgpulse-hostile.json", &file);

    let reference = model(&file, 100.0, ME);
    assert_eq!(
        reference.tally, expected,
        "the reference model agrees with the hand count"
    );
    assert_eq!(reference.unparsed, unparsed);
    for chunk in [4096, 1024 * 1024] {
        let (got, left) = read_as_pgpulse(&me, "pgpulse-hostile.json", file.len(), chunk).await;
        assert_eq!(got, reference, "windows of {chunk} bytes");
        assert_eq!(left, partial as u64, "only the line being written is left");
    }

    // What the helper itself returns: numbers and names, no text of any line.
    let rows = me
        .query(
            "SELECT t::text FROM monitoring.log_tally($1, 0, $2, 0, false, '{}', '{}') AS t",
            &[&"pgpulse-hostile.json", &(MAX_WINDOW as i32)],
        )
        .await
        .unwrap();
    let text: String = rows[0].get(0);
    assert!(!text.contains(SECRET) && !text.contains("pg_sleep") && !text.contains("SELECT"));
    assert!(
        !text.contains(&hex(SECRET)) && !text.contains(&hex("SELECT")),
        "{text}"
    );
    let window = |offset: i64, length: i32, skip: bool| {
        let me = &me;
        async move {
            let r = me
                .query_one(
                    "SELECT bytes_read, consumed, skipping, oversized FROM monitoring.log_tally($1, $2, $3, 0, $4, '{}', '{}')",
                    &[&"pgpulse-hostile.json", &offset, &length, &skip],
                )
                .await
                .unwrap();
            (
                r.get::<_, Option<i32>>(0),
                r.get::<_, Option<i32>>(1),
                r.get::<_, Option<bool>>(2),
                r.get::<_, Option<i64>>(3),
            )
        }
    };
    // The 9 MiB line: the largest window holds none of its end; skipped to its newline.
    let at = find(&file, b"yyyy").unwrap();
    let start = file[..at].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let (read, consumed, skipping, oversized) =
        window(start as i64, MAX_WINDOW as i32, false).await;
    assert_eq!(
        (read, consumed, skipping, oversized),
        (
            Some(MAX_WINDOW as i32),
            Some(MAX_WINDOW as i32),
            Some(true),
            Some(1)
        )
    );
    // From inside a line (not after a newline): the rest of that line is skipped, never read
    // as a line of its own.
    let inside = find(&file, SECRET.as_bytes()).unwrap();
    let end = inside + file[inside..].iter().position(|b| *b == b'\n').unwrap() + 1;
    let (_, consumed, skipping, _) = window(inside as i64, (end - inside) as i32, false).await;
    assert_eq!(
        (consumed, skipping),
        (Some((end - inside) as i32), Some(false))
    );
    // A file that is not there: every column NULL; a name that is no log file: refused.
    let gone = me
        .query_one("SELECT bytes_read IS NULL AND datnames IS NULL FROM monitoring.log_tally('nope.json', 0, 10, 0, false, '{}', '{}')", &[])
        .await
        .unwrap();
    assert!(gone.get::<_, bool>(0));
    for name in [
        "../postgresql.auto.conf",
        "global/1260",
        ".hidden.json",
        "pgpulse-hostile.log",
    ] {
        let r = me
            .query_one(
                "SELECT bytes_read FROM monitoring.log_tally($1, 0, 10, 0, false, '{}', '{}')",
                &[&name],
            )
            .await;
        assert!(
            r.is_err() || r.unwrap().get::<_, Option<i32>>(0).is_none(),
            "{name}"
        );
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

// ---- the differential test ----

/// A string field: a value, JSON null, absent, or of a wrong type.
#[derive(Debug, Clone)]
enum Field {
    Str(Vec<u8>),
    Null,
    Absent,
    Number,
}

/// Bytes of a name or a statement: ASCII, quotes and backslashes, control characters,
/// multibyte UTF-8, bytes that are not UTF-8, the secret literal (never NUL: PostgreSQL's
/// text cannot hold it).
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z_ ]{0,12}".prop_map(String::into_bytes),
        Just(b"'\"\\".to_vec()),
        Just(b"\t\x01\x1f\x7f\r".to_vec()),
        Just("é€日本".as_bytes().to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"\xc3".to_vec()),
        Just(b"\xe2\x82".to_vec()),
        Just(b"\xed\xa0\x80".to_vec()),
        Just(SECRET.as_bytes().to_vec()),
        (1u8..=255)
            .prop_filter("no newline", |b| *b != b'\n')
            .prop_map(|b| vec![b]),
    ]
}

fn text(most: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(piece(), 0..most).prop_map(|v| v.concat())
}

fn field(value: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Field> {
    prop_oneof![
        12 => value.prop_map(Field::Str),
        1 => Just(Field::Null),
        1 => Just(Field::Absent),
        1 => Just(Field::Number),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u32..250_000).prop_map(|x| format!("{}.{:03}", x / 1000, x % 1000)),
        4 => (99_000u32..101_000).prop_map(|x| format!("{}.{:03}", x / 1000, x % 1000)),
        3 => prop::sample::select(vec![
            "100", "100.000", "99.9995", "1e2", "1E3", "+100", ".5", "100.", "-0", "-1", "0",
            "1e309", "-1e309", "1e-400", "NaN", "inf", "infinity", "", "1_0", " 100", "100 ",
            "0x10", "1e", "e5", ".", "١٠٠",
        ])
        .prop_map(str::to_owned),
        1 => (1usize..400).prop_map(|n| "9".repeat(n)),
    ]
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    let tail = prop::sample::select(vec![
        "",
        "  statement: ",
        "  execute <unnamed>: ",
        "  execute S_1: ",
        "  execute fetch from S_1/C_2: ",
        "  parse <unnamed>: ",
        "  bind S_1: ",
        "  plan:\nQuery Text: ",
        "x",
        "  statement:",
    ]);
    // One duration line in three carries 40 kB of text (windows grow); shrinks to none.
    let long = (0usize..3).prop_map(|k| {
        if k == 2 {
            "z".repeat(40_000)
        } else {
            String::new()
        }
    });
    prop_oneof![
        8 => (number(), tail, text(6), long).prop_map(|(n, t, s, l)| {
            let mut m = format!("duration: {n} ms{t}").into_bytes();
            m.extend(s);
            m.extend(l.into_bytes());
            m
        }),
        1 => text(6).prop_map(|s| [b"statement: ".to_vec(), s].concat()),
        1 => Just(b"connection authorized: user=x".to_vec()),
        1 => number().prop_map(|n| format!("duration {n} ms").into_bytes()),
    ]
}

/// A JSON string as PostgreSQL's jsonlog writes it: quotes, backslashes and control
/// characters escaped, every other byte as it is.
fn json_str(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in bytes {
        match b {
            b'"' => out.extend(b"\\\""),
            b'\\' => out.extend(b"\\\\"),
            b'\n' => out.extend(b"\\n"),
            b'\r' => out.extend(b"\\r"),
            b'\t' => out.extend(b"\\t"),
            0x08 => out.extend(b"\\b"),
            0x0c => out.extend(b"\\f"),
            b if b < 0x20 => out.extend(format!("\\u{b:04x}").into_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'"');
    out
}

#[derive(Debug, Clone)]
struct Fields {
    user: Field,
    dbname: Field,
    severity: Field,
    message: Field,
    pid: &'static str,
}

fn render(f: &Fields) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = vec![b"\"timestamp\":\"2026-11-30 16:00:00.000 UTC\"".to_vec()];
    for (key, value) in [("user", &f.user), ("dbname", &f.dbname)] {
        push_field(&mut parts, key, value);
    }
    parts.push(format!("\"pid\":{}", f.pid).into_bytes());
    push_field(&mut parts, "error_severity", &f.severity);
    push_field(&mut parts, "message", &f.message);
    parts.push(b"\"backend_type\":\"client backend\",\"query_id\":0".to_vec());
    [b"{".to_vec(), parts.join(&b','), b"}".to_vec()].concat()
}

fn push_field(parts: &mut Vec<Vec<u8>>, key: &str, value: &Field) {
    let v = match value {
        Field::Str(s) => json_str(s),
        Field::Null => b"null".to_vec(),
        Field::Number => b"5".to_vec(),
        Field::Absent => return,
    };
    parts.push([format!("\"{key}\":").into_bytes(), v].concat());
}

/// How a rendered line is damaged, if at all.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(prop::sample::Index),
    Nul(prop::sample::Index),
    CarriageReturn,
    Indent,
    Array,
    Replace(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        12 => Just(Damage::None),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => any::<prop::sample::Index>().prop_map(Damage::Nul),
        1 => Just(Damage::CarriageReturn),
        1 => Just(Damage::Indent),
        1 => Just(Damage::Array),
        1 => text(4).prop_map(Damage::Replace),
    ]
}

fn apply(mut line: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::None => line,
        Damage::Truncate(i) => {
            line.truncate(i.index(line.len()));
            line
        }
        Damage::Nul(i) => {
            line.insert(i.index(line.len()), 0);
            line
        }
        Damage::CarriageReturn => [line, b"\r".to_vec()].concat(),
        Damage::Indent => [b"  ".to_vec(), line].concat(),
        Damage::Array => [b"[".to_vec(), line, b"]".to_vec()].concat(),
        Damage::Replace(bytes) => bytes.clone(),
    }
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        4 => prop::sample::select(vec!["trader_a", "trader_b", "é€日本", "q\"uo\\te", "", ME])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => text(3),
    ]
    .boxed();
    let severity = prop_oneof![
        8 => Just(b"LOG".to_vec()),
        1 => prop::sample::select(vec!["ERROR", "log", "WARNING", "LOG ", "FATAL"])
            .prop_map(|s| s.as_bytes().to_vec()),
    ]
    .boxed();
    let pid = prop::sample::select(vec!["42", "1e309", "-0", "12345678901234567890", "4.2e-7"]);
    (
        field(name.clone()),
        field(name),
        field(severity),
        field(message().boxed()),
        pid,
        damage(),
    )
        .prop_map(|(user, dbname, severity, message, pid, d)| {
            let f = Fields {
                user,
                dbname,
                severity,
                message,
                pid,
            };
            apply(render(&f), &d)
        })
}

/// A generated file: complete lines, a line still being written, the first window.
#[derive(Clone)]
struct Case {
    lines: Vec<Vec<u8>>,
    partial: Vec<u8>,
    chunk: u32,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.lines.join(&b'\n');
        if !self.lines.is_empty() {
            bytes.push(b'\n');
        }
        bytes.extend(&self.partial);
        bytes
    }
}

/// Lines as escaped text, long ones cut, so that a failure reads.
impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |l: &[u8]| {
            let t = l.escape_ascii().to_string();
            match t.char_indices().nth(400) {
                Some((at, _)) => format!("{}… ({} bytes)", &t[..at], l.len()),
                None => t,
            }
        };
        writeln!(f, "windows of {} bytes; lines:", self.chunk)?;
        for l in &self.lines {
            writeln!(f, "  {}", show(l))?;
        }
        write!(f, "being written: {}", show(&self.partial))
    }
}

#[test]
fn log_tally_counts_what_the_reference_model_counts_on_random_hostile_logs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = log_cluster(&[]);
    let logdir = cluster.dir().join("data/log");
    let (_one, _two, me) = rt.block_on(async {
        let (one, two) = setup(&cluster).await;
        let me = connect(&as_user(&one.url, ME)).await;
        (one, two, me)
    });
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let cases = (
        prop::collection::vec(line(), 0..40),
        text(3),
        prop::sample::select(vec![64u32, 700, 4096, 1024 * 1024]),
    )
        .prop_map(|(lines, partial, chunk)| Case {
            lines,
            partial,
            chunk,
        });
    let n = std::cell::Cell::new(0);
    runner
        .run(&cases, |case| {
            n.set(n.get() + 1);
            let bytes = case.bytes();
            let name = format!("pgpulse-diff-{}.json", n.get());
            write_log(&logdir, &name, &bytes);
            let (got, left) = rt.block_on(read_as_pgpulse(&me, &name, bytes.len(), case.chunk));
            let expected = model(&bytes, 100.0, ME);
            prop_assert_eq!(&got, &expected, "{}", name);
            let tail = bytes.len() - bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            prop_assert_eq!(left, tail as u64);
            Ok(())
        })
        .unwrap();
}
