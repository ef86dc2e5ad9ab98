//! YAML error reporting shared by the config file and `queries.yaml`: a clean one-line
//! message and the line and column of the offending key.
//!
//! serde-saphyr reports an unknown field at the start of the mapping that holds it; we move
//! the location to the key itself so the message points at the line to fix. An error raised
//! by one of our own deserializers (a bad duration) has no location of its own in
//! serde-saphyr: its message starts with `line L column C: `, which we lift into the location
//! so every error reads `file:line:col: message`.

/// Line, column (1-based; 0 only when neither the parser nor the message knows) and message
/// of a serde-saphyr error.
pub fn describe(text: &str, e: &serde_saphyr::Error) -> (u64, u64, String) {
    let (mut line, mut column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let mut msg = match e {
        serde_saphyr::Error::Message { msg, .. } => msg.clone(),
        other => other.to_string(),
    };
    msg = msg.lines().next().unwrap_or_default().to_owned();
    msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_owned();
    // serde-saphyr's snippet puts the location before and after the message: strip both.
    for strip in [leading_location, trailing_location] {
        if let Some((l, c, rest)) = strip(&msg) {
            if line == 0 {
                (line, column) = (l, c.unwrap_or_else(|| indent(text, l)));
            }
            msg = rest.to_owned();
        }
    }
    if let Some(field) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        let from = line.saturating_sub(1) as usize;
        for (i, l) in text.lines().enumerate().skip(from) {
            let trimmed = l.trim_start().trim_start_matches("- ");
            if trimmed.starts_with(&format!("{field}:")) || trimmed == field {
                line = i as u64 + 1;
                column = (l.len() - l.trim_start().len()) as u64 + 1;
                break;
            }
        }
    }
    (line, column, msg)
}

/// `line L column C: rest` or `line L: rest` → (L, C, rest).
fn leading_location(msg: &str) -> Option<(u64, Option<u64>, &str)> {
    let (head, rest) = msg.strip_prefix("line ")?.split_once(": ")?;
    let (l, c) = match head.split_once(" column ") {
        Some((l, c)) => (l, Some(c.parse().ok()?)),
        None => (head, None),
    };
    Some((l.parse().ok()?, c, rest))
}

/// `rest at line L, column C` (serde-saphyr's own decoration) → (L, C, rest).
fn trailing_location(msg: &str) -> Option<(u64, Option<u64>, &str)> {
    let i = msg.rfind(" at line ")?;
    let (l, c) = msg.get(i + 9..)?.split_once(", column ")?;
    Some((l.parse().ok()?, Some(c.parse().ok()?), msg.get(..i)?))
}

/// The 1-based column of the first non-blank character of 1-based `line` (1 when absent).
fn indent(text: &str, line: u64) -> u64 {
    let l = text
        .lines()
        .nth(line.saturating_sub(1) as usize)
        .unwrap_or("");
    (l.len() - l.trim_start().len()) as u64 + 1
}
