//! What reading the slow-statement log over SQL needs from the server, and whether it has it:
//! the log settings (`logging_collector`, `log_destination` with `jsonlog`,
//! `log_min_duration_statement`) and the log reader's helpers (`monitoring.log_tally` and
//! friends: V015's, or V012's, which counts no key query) installed and executable; and
//! whether V009's raw reader `monitoring.log_read` is still there (it gives log lines,
//! literals included, to whoever may execute it). One query answers
//! all of it; the slow-log reader asks before every poll and `pgpulse verify` prints the
//! verdict.
//!
//! `log_parameter_max_length` is no longer checked: the log is parsed on the server and only
//! counts reach pgpulse, so bind parameters in the log never reach it either. Whether they
//! belong in the log files is the operator's choice (docs/statement-latency.md still
//! recommends 0), not a prerequisite of the reader.

use tokio_postgres::Row;

/// The query that inspects the setup; one row, read by [`LogSetup::from_row`]. It reads only
/// settings and catalogs every role may read.
pub(crate) const SETUP_SQL: &str = "WITH h AS (SELECT coalesce(\
        to_regprocedure('monitoring.log_tally(text,bigint,integer,double precision,boolean,bigint[],double precision[])'), \
        to_regprocedure('monitoring.log_tally(text,bigint,integer,double precision,boolean)')) AS f, \
      to_regprocedure('monitoring.log_tally(text,bigint,integer,double precision,boolean,bigint[],double precision[])') \
        IS NOT NULL AS keys) \
    SELECT current_setting('logging_collector') = 'on', \
    'jsonlog' = ANY (string_to_array(replace(lower(current_setting('log_destination')), ' ', ''), ',')), \
    (SELECT setting::bigint FROM pg_settings WHERE name = 'log_min_duration_statement'), \
    h.f IS NOT NULL, \
    coalesce(has_function_privilege(h.f, 'EXECUTE'), false), \
    CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgpulse_monitor') \
         THEN coalesce(has_function_privilege('pgpulse_monitor', h.f, 'EXECUTE'), false) \
         ELSE false END, \
    to_regprocedure('monitoring.log_read(text,bigint,integer)') IS NOT NULL, \
    session_user::text, \
    h.keys \
    FROM h";

/// The threshold the specification sets: statements at or over 100 ms are slow.
pub(crate) const SPEC_THRESHOLD_MS: i64 = 100;

/// The server's log setup as far as the slow-statement log reader cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSetup {
    /// `logging_collector = on`.
    pub logging_collector: bool,
    /// `log_destination` includes `jsonlog`.
    pub jsonlog: bool,
    /// `log_min_duration_statement` in milliseconds (-1: off).
    pub min_duration_ms: i64,
    /// `monitoring.log_tally` exists (V012 ran as a superuser, or `install_log_reader()` ran).
    pub helper_installed: bool,
    /// The connected role may execute `monitoring.log_tally`.
    pub helper_executable: bool,
    /// `pgpulse_monitor` may execute `monitoring.log_tally`.
    pub monitor_role_executes: bool,
    /// V009's raw reader `monitoring.log_read` still exists (a superuser's
    /// `install_log_reader()` drops it).
    pub raw_reader_left: bool,
    /// The session's login role (the reader skips its statements).
    pub session_user: String,
    /// The helper is V015's, which also counts the key queries' executions over their
    /// targets (V012's does not: then only the slow statements are counted).
    pub counts_key_queries: bool,
}

impl LogSetup {
    /// Reads the row of [`SETUP_SQL`].
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            logging_collector: row.try_get(0)?,
            jsonlog: row.try_get(1)?,
            min_duration_ms: row.try_get(2)?,
            helper_installed: row.try_get(3)?,
            helper_executable: row.try_get(4)?,
            monitor_role_executes: row.try_get(5)?,
            raw_reader_left: row.try_get(6)?,
            session_user: row.try_get(7)?,
            counts_key_queries: row.try_get(8)?,
        })
    }

    /// What the server lacks for the connected role to read the log, each as the exact
    /// setting or statement to apply; empty when the reader can run.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.logging_collector {
            out.push("logging_collector = on (restart)");
        }
        if !self.jsonlog {
            out.push("log_destination = 'jsonlog' (may include others, e.g. 'stderr,jsonlog')");
        }
        if self.min_duration_ms < 0 {
            out.push("log_min_duration_statement = 100ms");
        }
        if !self.helper_installed {
            out.push("run `pgpulse migrate` as a superuser (it installs the log reader helpers)");
        } else if !self.helper_executable {
            out.push("GRANT pgpulse_monitor TO <pgpulse's login role>;");
        }
        out
    }

    /// Settings that work but are not what the specification, the alert and the key queries'
    /// SLOs expect.
    pub fn advice(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.min_duration_ms > SPEC_THRESHOLD_MS {
            out.push("log_min_duration_statement at most 100ms (the alert's threshold)");
        }
        if self.helper_installed && !self.counts_key_queries {
            out.push("run `pgpulse migrate` as a superuser (it installs V015's log reader helper, which also counts the key queries' SLO misses)");
        }
        out
    }

    /// Whether the reader can run.
    pub fn ready(&self) -> bool {
        self.missing().is_empty()
    }

    /// The threshold the slow-statement counter counts from, in seconds, when statements are
    /// logged by duration: `log_min_duration_statement`, but at least the specification's
    /// 100 ms (a lower log threshold, set for the key queries' SLOs, does not make faster
    /// statements slow).
    pub fn threshold_seconds(&self) -> Option<f64> {
        (self.min_duration_ms >= 0)
            .then(|| self.min_duration_ms.max(SPEC_THRESHOLD_MS) as f64 / 1000.0)
    }
}

/// Every setting the reader and the alert expect, as one line for logs and `verify`.
pub(crate) const SETTINGS_LINE: &str = "logging_collector = on, log_destination = 'jsonlog' (may include others), \
     log_min_duration_statement = 100ms";

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> LogSetup {
        LogSetup {
            logging_collector: true,
            jsonlog: true,
            min_duration_ms: 100,
            helper_installed: true,
            helper_executable: true,
            monitor_role_executes: true,
            raw_reader_left: false,
            session_user: "pgpulse".into(),
            counts_key_queries: true,
        }
    }

    #[test]
    fn a_complete_setup_is_ready_without_advice() {
        assert!(ok().ready());
        assert!(ok().advice().is_empty());
        assert_eq!(ok().threshold_seconds(), Some(0.1));
    }

    #[test]
    fn each_missing_prerequisite_names_its_setting() {
        let s = LogSetup {
            logging_collector: false,
            jsonlog: false,
            min_duration_ms: -1,
            helper_installed: false,
            ..ok()
        };
        let m = s.missing().join("; ");
        for want in [
            "logging_collector = on",
            "log_destination = 'jsonlog'",
            "log_min_duration_statement = 100ms",
            "run `pgpulse migrate` as a superuser",
        ] {
            assert!(m.contains(want), "{m}");
        }
        assert_eq!(s.threshold_seconds(), None);
        let s = LogSetup {
            helper_executable: false,
            min_duration_ms: 250,
            ..ok()
        };
        assert!(s.missing().join("").contains("GRANT pgpulse_monitor"));
        assert_eq!(s.advice().len(), 1);
        assert_eq!(s.threshold_seconds(), Some(0.25));
    }

    #[test]
    fn a_log_threshold_below_100ms_still_counts_from_100ms_without_advice() {
        let s = LogSetup {
            min_duration_ms: 10,
            ..ok()
        };
        assert_eq!(s.threshold_seconds(), Some(0.1));
        assert!(s.advice().is_empty());
        let s = LogSetup {
            counts_key_queries: false,
            ..ok()
        };
        assert!(s.advice()[0].contains("V015"), "{:?}", s.advice());
    }
}
