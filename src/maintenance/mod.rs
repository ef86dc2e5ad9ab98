//! The maintenance runner: executes the jobs of `monitoring.maintenance_schedule` at their
//! cron times (UTC), as the only leader among concurrent runners (a session-level
//! `pg_try_advisory_lock` held on a dedicated connection), and logs every run in
//! `monitoring.maintenance_log` (the SQL function does the logging).
//!
//! `VACUUM` cannot run inside a function (DESIGN §8): for the weekly vacuum job the function
//! returns the statements, and this runner issues them one by one from the client, outside
//! any transaction, then records how many ran in the job's log row.
//!
//! The trading database comes first: the runner's session has a `lock_timeout` and a
//! `statement_timeout` (VACUUM runs without the statement timeout, still under the lock
//! timeout), so a job that cannot get its lock in time fails, is logged, leaves nothing
//! half-made (each job is one transaction) and is retried with capped backoff. The runner is a
//! service: a lost connection is re-established with capped backoff, never an exit.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::db::outcome::describe;

/// Advisory lock key of the runner's leadership ("pgpmain" in ASCII).
pub const LEADER_KEY: i64 = 0x0070_6770_6d61_696e;

/// First pause before retrying a failed job or reconnecting; doubles per failure.
pub const RETRY_BASE: Duration = Duration::from_secs(15);

/// How long a runner that is not the leader waits before trying to lead again.
pub const LEAD_RETRY: Duration = Duration::from_secs(30);

/// How the runner treats the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceSettings {
    /// `lock_timeout` of every statement (DDL, ANALYZE, VACUUM).
    pub lock_timeout: Duration,
    /// `statement_timeout` of every statement but VACUUM.
    pub statement_timeout: Duration,
    /// Longest pause between retries of a failed job, and between reconnects.
    pub max_backoff: Duration,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(1800),
            max_backoff: Duration::from_secs(900),
        }
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// Sets the runner's session timeouts on `client`, and pins its `search_path`: the runner
/// works with the trade tables' owner's rights, so no unqualified name of its SQL may resolve
/// to a function or operator another role put in a schema of the login's path.
pub async fn prepare_session(
    client: &Client,
    settings: &MaintenanceSettings,
) -> Result<(), MaintenanceError> {
    client
        .batch_execute(&format!(
            "SET search_path = pg_catalog, pg_temp; SET lock_timeout = {}; SET statement_timeout = {}; \
             SET application_name = 'pgpulse maintain'",
            millis(settings.lock_timeout),
            millis(settings.statement_timeout)
        ))
        .await
        .map_err(db("set the session timeouts"))
}

/// Errors of the maintenance runner.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// A statement failed.
    #[error("{step}: {reason}")]
    Database {
        /// What was being done.
        step: String,
        /// The server's message.
        reason: String,
    },
    /// A job's cron expression does not parse.
    #[error("job \"{job}\": bad cron expression `{expr}`: {reason}")]
    Cron {
        /// The maintenance job's name.
        job: String,
        /// The expression.
        expr: String,
        /// The cause, in words an operator can act on.
        reason: String,
    },
}

fn db(step: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> MaintenanceError {
    let step = step.into();
    move |e| MaintenanceError::Database {
        step,
        reason: describe(&e),
    }
}

/// One scheduled job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its name (`job_name`).
    pub name: String,
    /// When it runs (UTC).
    pub cron: croner::Cron,
}

/// What one run of a job did.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    /// The `maintenance_log` row.
    pub log_id: i64,
    /// `success` or `failed`.
    pub status: String,
    /// Client-side statements (VACUUM) that ran.
    pub client_statements: usize,
    /// Client-side statements that failed.
    pub client_failures: usize,
    /// The function's error, when it failed.
    pub error: Option<String>,
}

/// Reads the enabled jobs of the schedule.
pub async fn schedule(client: &Client) -> Result<Vec<Job>, MaintenanceError> {
    let rows = client
        .query(
            "SELECT job_name, cron_expression FROM monitoring.maintenance_schedule WHERE enabled ORDER BY job_name",
            &[],
        )
        .await
        .map_err(db("read the maintenance schedule"))?;
    rows.iter()
        .map(|r| {
            let (name, expr): (String, String) = (r.get(0), r.get(1));
            let cron = croner::Cron::from_str(&expr).map_err(|e| MaintenanceError::Cron {
                job: name.clone(),
                expr: expr.clone(),
                reason: e.to_string(),
            })?;
            Ok(Job { name, cron })
        })
        .collect()
}

/// The names of every job of the schedule, enabled or not, in name order.
pub async fn job_names(client: &Client) -> Result<Vec<String>, MaintenanceError> {
    let rows = client
        .query(
            "SELECT job_name FROM monitoring.maintenance_schedule ORDER BY job_name",
            &[],
        )
        .await
        .map_err(db("read the maintenance schedule"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Runs one job now: the SQL function, then any statements it leaves to the client.
pub async fn run_job(client: &Client, job: &str) -> Result<JobOutcome, MaintenanceError> {
    let row = client
        .query_one(
            "SELECT log_id, status, coalesce(details, '{}'::jsonb)::text, error \
             FROM monitoring.run_scheduled_maintenance($1)",
            &[&job],
        )
        .await
        .map_err(db(format!("run job \"{job}\"")))?;
    let mut outcome = JobOutcome {
        log_id: row.get(0),
        status: row.get(1),
        client_statements: 0,
        client_failures: 0,
        error: row.get(3),
    };
    let details: serde_json::Value =
        serde_json::from_str(&row.get::<_, String>(2)).unwrap_or_default();
    let must_run = details.get("client_must_run");
    if must_run == Some(&serde_json::json!("true")) || must_run == Some(&serde_json::json!(true)) {
        let statements: Vec<String> = details
            .get("statements")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        // VACUUM may run long; it keeps the lock timeout and drops the statement timeout.
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(db("lift the statement timeout for VACUUM"))?;
        for sql in &statements {
            // Only the maintenance statements the function produced are run, one at a time.
            if !sql.trim_start().to_ascii_uppercase().starts_with("VACUUM") {
                outcome.client_failures += 1;
                tracing::warn!(job, statement = %sql, "refusing a client statement that is not VACUUM");
                continue;
            }
            match client.batch_execute(sql).await {
                Ok(()) => outcome.client_statements += 1,
                Err(e) => {
                    outcome.client_failures += 1;
                    tracing::warn!(job, statement = %sql, error = %describe(&e), "maintenance statement failed");
                }
            }
        }
        client
            .batch_execute("RESET statement_timeout")
            .await
            .map_err(db("restore the statement timeout"))?;
        client
            .execute(
                "UPDATE monitoring.maintenance_log SET details = coalesce(details, '{}'::jsonb) \
                 || jsonb_build_object('client_ran', $2::int, 'client_failed', $3::int) WHERE id = $1",
                &[
                    &outcome.log_id,
                    &(outcome.client_statements as i32),
                    &(outcome.client_failures as i32),
                ],
            )
            .await
            .map_err(db("record the client statements in the log"))?;
    }
    tracing::info!(job, status = %outcome.status, log_id = outcome.log_id, vacuumed = outcome.client_statements, "maintenance job finished");
    Ok(outcome)
}

/// Tries to become the leader on this connection (held until it closes).
pub async fn try_lead(client: &Client) -> Result<bool, MaintenanceError> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_KEY])
        .await
        .map_err(db("take the leader lock"))?
        .get(0))
}

/// The job due next and when, after `now`.
pub fn next_due(
    jobs: &[Job],
    now: chrono::DateTime<Utc>,
) -> Option<(chrono::DateTime<Utc>, Vec<String>)> {
    let mut best: Option<(chrono::DateTime<Utc>, Vec<String>)> = None;
    for j in jobs {
        let Ok(at) = j.cron.find_next_occurrence(&now, false) else {
            continue;
        };
        match &mut best {
            Some((t, names)) if at == *t => names.push(j.name.clone()),
            Some((t, _)) if at > *t => {}
            _ => best = Some((at, vec![j.name.clone()])),
        }
    }
    best
}

/// Whether a job run succeeded as a whole (the function and every client statement).
fn succeeded(o: &JobOutcome) -> bool {
    o.status == "success" && o.client_failures == 0
}

/// Runs the schedule on one connection until `stop` or a database error: waits for
/// leadership, then runs each job when due; a failed job is retried with capped backoff
/// (never past its next scheduled run, which takes over).
pub async fn run(
    client: &Client,
    settings: &MaintenanceSettings,
    stop: CancellationToken,
) -> Result<(), MaintenanceError> {
    prepare_session(client, settings).await?;
    while !try_lead(client).await? {
        tracing::info!(retry_in = ?LEAD_RETRY, "another maintenance runner leads");
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(LEAD_RETRY) => {}
        }
    }
    tracing::info!("maintenance runner is the leader");
    // Failed jobs: consecutive failures and when to retry.
    let mut retries: HashMap<String, (u32, chrono::DateTime<Utc>)> = HashMap::new();
    loop {
        // Re-read the schedule each time: operators may enable, disable or reschedule jobs.
        let jobs = schedule(client).await?;
        let now = Utc::now();
        let scheduled = next_due(&jobs, now);
        let retry = retries
            .iter()
            .min_by_key(|(_, (_, at))| *at)
            .map(|(name, (_, at))| (*at, vec![name.clone()]));
        let due = match (scheduled, retry) {
            (Some(s), Some(r)) if r.0 < s.0 => Some(r),
            (Some(s), _) => Some(s),
            (None, r) => r,
        };
        let Some((at, names)) = due else {
            tracing::warn!("no enabled maintenance job; checking again in 5 minutes");
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(300)) => continue,
            }
        };
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(jobs = ?names, at = %at, "next maintenance");
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        for name in names {
            let outcome = run_job(client, &name).await;
            if client.is_closed() {
                return outcome.map(|_| ());
            }
            match outcome {
                Ok(o) if succeeded(&o) => {
                    retries.remove(&name);
                }
                other => {
                    let failures = retries.get(&name).map_or(0, |(n, _)| *n) + 1;
                    let pause = crate::clock::backoff(RETRY_BASE, failures, settings.max_backoff);
                    let retry_at = Utc::now()
                        + chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::zero());
                    let next = jobs
                        .iter()
                        .find(|j| j.name == name)
                        .and_then(|j| j.cron.find_next_occurrence(&Utc::now(), false).ok());
                    let error = match &other {
                        Ok(o) => o
                            .error
                            .clone()
                            .unwrap_or_else(|| "client statements failed".into()),
                        Err(e) => e.to_string(),
                    };
                    if next.is_some_and(|n| n <= retry_at) {
                        retries.remove(&name);
                        tracing::warn!(job = %name, error = %error, failures, "maintenance job failed; its next scheduled run retries it");
                    } else {
                        retries.insert(name.clone(), (failures, retry_at));
                        tracing::warn!(job = %name, error = %error, failures, retry_in = ?pause, "maintenance job failed; retrying with backoff");
                    }
                }
            }
        }
    }
}

/// The runner as a service: connects, runs the schedule, and on a lost connection or a
/// database error reconnects with capped backoff, until `stop`.
pub async fn serve(
    target: &crate::db::DatabaseTarget,
    settings: &MaintenanceSettings,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let outcome = match crate::db::connect(target).await {
            Ok(client) => {
                failures = 0;
                run(&client, settings, stop.clone())
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                let pause = crate::clock::backoff(RETRY_BASE, failures, settings.max_backoff);
                tracing::error!(error = %error, retry_in = ?pause, "maintenance runner lost the database; reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job(name: &str, expr: &str) -> Job {
        Job {
            name: name.into(),
            cron: croner::Cron::from_str(expr).unwrap(),
        }
    }

    #[test]
    fn the_next_due_job_follows_the_seed_schedule() {
        let jobs = [
            job("daily_partition_creation", "0 1 * * *"),
            job("daily_statistics_update", "0 2 * * *"),
            job("weekly_vacuum", "0 3 * * 0"),
            job("hourly_query_stats", "0 * * * *"),
        ];
        // Saturday 2026-11-28 00:30 UTC: the hourly job at 01:00 coincides with partitions.
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 0, 30, 0).unwrap();
        let (at, names) = next_due(&jobs, now).unwrap();
        assert_eq!(at, Utc.with_ymd_and_hms(2026, 11, 28, 1, 0, 0).unwrap());
        assert_eq!(
            names,
            vec!["daily_partition_creation", "hourly_query_stats"]
        );
        // Sunday 02:30: the weekly vacuum (and the hourly job) at 03:00.
        let now = Utc.with_ymd_and_hms(2026, 11, 29, 2, 30, 0).unwrap();
        let (_, names) = next_due(&jobs, now).unwrap();
        assert_eq!(names, vec!["weekly_vacuum", "hourly_query_stats"]);
    }
}
