//! YAML error reporting shared by the config file and `queries.yaml`: a clean one-line
//! message and the line and column of the offending key.
//!
//! serde-saphyr reports an unknown field at the start of the mapping that holds it; we move
//! the location to the key itself so the message points at the line to fix.

/// Line, column (1-based; 0 when unknown) and message of a serde-saphyr error.
pub fn describe(text: &str, e: &serde_saphyr::Error) -> (u64, u64, String) {
    let (mut line, mut column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let msg = match e {
        serde_saphyr::Error::Message { msg, .. } => msg.clone(),
        other => clean(&other.to_string()),
    };
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

/// Strips serde-saphyr's own location decorations from a message.
fn clean(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest,
        _ => first,
    };
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_owned(),
        None => first.to_owned(),
    }
}
