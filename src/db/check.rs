//! One line of `verify`: a numbered check, its verdict (PASS, WARN, FAIL) and the reason,
//! shared by the checks of [`super::verify`] and [`super::definer`].

use std::fmt;

/// The verdict of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// As expected.
    Pass,
    /// Works, but something deserves attention; the reason says what to change.
    Warn,
    /// Broken.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    /// 1..=15 (0: the session could not be prepared).
    pub number: u8,
    /// What was checked.
    pub name: &'static str,
    /// The verdict.
    pub outcome: Outcome,
    /// The cause, in words an operator can act on.
    pub reason: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = match self.outcome {
            Outcome::Pass => "PASS",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
        };
        // One line per check, whatever the server's message holds.
        let reason = self.reason.split_whitespace().collect::<Vec<_>>().join(" ");
        write!(f, "{o}  {:>2}. {}: {reason}", self.number, self.name)
    }
}
