//! `pgpulse verify`: the specification's verify-monitoring-setup.sql as a command. Thirteen
//! checks, a fourteenth for the slow-statement log reader (issue 15) and a fifteenth for the
//! `SECURITY DEFINER` functions ([`super::definer`], issue 24), one line each, PASS / WARN /
//! FAIL with the reason. Checks that call functions which write (partition creation, the
//! maintenance runner) run inside a transaction that is rolled back, so verify changes nothing.
//! The session pins `search_path` (verify runs as the schema's owner: no unqualified name of
//! its SQL may resolve to another role's function) and carries a lock and a statement timeout.
//! A check that needs a privilege the role lacks says which grant it needs (a WARN), rather
//! than failing with the server's message. Check 12 also covers the sequences: the sampling
//! role reads each one's state (SELECT) and can neither advance nor set one. The detail of a
//! check is folded into its one line (how many failed, which, the first error), and without
//! the schema verify says to migrate once instead of failing every check on "does not exist".

use std::str::FromStr;

use tokio_postgres::Client;

use super::outcome::describe;

/// The 13 views the schema provides.
pub const VIEWS: [&str; 13] = [
    "v_slow_queries",
    "v_top_queries_by_time",
    "v_table_stats",
    "v_table_bloat",
    "v_index_usage",
    "v_unused_indexes",
    "v_index_cache_hit_ratio",
    "v_connection_stats",
    "v_connection_summary",
    "v_partition_health",
    "v_partition_growth",
    "v_cache_hit_ratio",
    "v_blocking_queries",
];

/// The 14 functions the schema provides.
pub const FUNCTIONS: [&str; 14] = [
    "get_query_performance",
    "get_table_bloat",
    "get_missing_indexes",
    "analyze_partition_usage",
    "create_future_order_partitions",
    "create_future_trade_partitions",
    "archive_old_partitions",
    "run_maintenance_vacuum",
    "update_table_statistics",
    "partition_maintenance",
    "rebuild_bloated_indexes",
    "database_health_check",
    "reset_query_stats",
    "run_scheduled_maintenance",
];

pub use super::check::{Check, Outcome};

type Verdict = (Outcome, String);

async fn scalar_i64(c: &Client, sql: &str) -> Result<i64, String> {
    c.query_one(sql, &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .map_err(|e| describe(&e))
}

async fn extensions(c: &Client) -> Result<Verdict, String> {
    let rows = c
        .query(
            "SELECT n, EXISTS (SELECT 1 FROM pg_extension WHERE extname = n) \
             FROM unnest(ARRAY['pg_stat_statements','pg_trgm','btree_gist']) AS n",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let missing: Vec<String> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    Ok(if missing.is_empty() {
        (
            Outcome::Pass,
            "pg_stat_statements, pg_trgm, btree_gist installed".into(),
        )
    } else {
        (
            Outcome::Warn,
            format!(
                "not installed: {} (CREATE EXTENSION as a superuser)",
                missing.join(", ")
            ),
        )
    })
}

async fn objects(c: &Client, kind: &str) -> Result<Verdict, String> {
    let (sql, expected): (&str, &[&str]) = if kind == "views" {
        (
            "SELECT count(*) FROM pg_views WHERE schemaname = 'monitoring' AND viewname = ANY($1)",
            &VIEWS,
        )
    } else {
        (
            "SELECT count(DISTINCT p.proname) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'monitoring' AND p.proname = ANY($1)",
            &FUNCTIONS,
        )
    };
    let names: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    let n: i64 = c
        .query_one(sql, &[&names])
        .await
        .map_err(|e| describe(&e))?
        .get(0);
    Ok(if n as usize == expected.len() {
        (Outcome::Pass, format!("{n}/{} present", expected.len()))
    } else {
        (
            Outcome::Fail,
            format!("{n}/{} present; run `pgpulse migrate`", expected.len()),
        )
    })
}

async fn view_reads(c: &Client) -> Result<Verdict, String> {
    let mut failed = Vec::new();
    let mut rows = 0i64;
    for v in VIEWS {
        match scalar_i64(c, &format!("SELECT count(*) FROM monitoring.{v}")).await {
            Ok(n) => rows += n,
            Err(e) => failed.push((v.to_owned(), e)),
        }
    }
    Ok(if failed.is_empty() {
        (Outcome::Pass, format!("13 views read, {rows} rows in all"))
    } else {
        (Outcome::Fail, fold("views", VIEWS.len(), &failed))
    })
}

/// Many failures of one check as one line: how many of how many, which, and the first
/// error (the others are usually the same, e.g. 13 times "does not exist").
fn fold(what: &str, of: usize, failed: &[(String, String)]) -> String {
    match failed {
        [] => String::new(),
        [(name, error)] => format!("{name}: {error}"),
        [(name, error), ..] => {
            let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "{} of {of} {what} failed ({}); the first, {name}: {error}",
                failed.len(),
                names.join(", ")
            )
        }
    }
}

async fn read_functions(c: &Client) -> Result<Verdict, String> {
    let calls = [
        "SELECT count(*) FROM monitoring.get_query_performance(interval '1 hour')",
        "SELECT count(*) FROM monitoring.get_table_bloat()",
        "SELECT count(*) FROM monitoring.get_missing_indexes()",
        "SELECT count(*) FROM monitoring.analyze_partition_usage()",
        "SELECT count(*) FROM monitoring.run_maintenance_vacuum()",
        "SELECT count(*) FROM monitoring.rebuild_bloated_indexes()",
        "SELECT count(*) FROM monitoring.database_health_check()",
    ];
    let mut failed = Vec::new();
    for sql in calls {
        if let Err(e) = scalar_i64(c, sql).await {
            let name = sql
                .split("monitoring.")
                .nth(1)
                .and_then(|f| f.split('(').next())
                .unwrap_or(sql);
            failed.push((name.to_owned(), e));
        }
    }
    Ok(if failed.is_empty() {
        (
            Outcome::Pass,
            format!("{} analysis functions ran", calls.len()),
        )
    } else {
        (
            Outcome::Fail,
            fold("analysis functions", calls.len(), &failed),
        )
    })
}

/// Runs `sql` in a transaction that is always rolled back.
async fn rolled_back(c: &mut Client, sql: &str) -> Result<i64, String> {
    let tx = c.transaction().await.map_err(|e| describe(&e))?;
    let r = tx
        .query_one(sql, &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .map_err(|e| describe(&e));
    let _ = tx.rollback().await;
    r
}

async fn partition_functions(c: &mut Client) -> Result<Verdict, String> {
    let orders = rolled_back(
        c,
        "SELECT count(*) FROM monitoring.create_future_order_partitions(3)",
    )
    .await?;
    let trades = rolled_back(
        c,
        "SELECT count(*) FROM monitoring.create_future_trade_partitions(7)",
    )
    .await?;
    let archive = rolled_back(
        c,
        "SELECT count(*) FROM monitoring.archive_old_partitions(12)",
    )
    .await?;
    let reason = format!(
        "dry run (rolled back): would create {orders} order and {trades} trade partitions, detach {archive}"
    );
    Ok((Outcome::Pass, reason))
}

async fn health(c: &Client) -> Result<Verdict, String> {
    let rows = c
        .query(
            "SELECT check_name, status, value FROM monitoring.database_health_check() \
             WHERE status IN ('WARNING', 'CRITICAL')",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(if rows.is_empty() {
        (Outcome::Pass, "every health check OK".into())
    } else {
        let list: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({})",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, Option<String>>(2).unwrap_or_default()
                )
            })
            .collect();
        (Outcome::Warn, list.join("; "))
    })
}

async fn autovacuum(c: &Client) -> Result<Verdict, String> {
    let rows = c
        .query(
            "SELECT t, to_regclass('public.' || t) IS NOT NULL AS present, \
                    coalesce((SELECT bool_or(o LIKE 'autovacuum_vacuum_scale_factor=%') FROM pg_class k, unnest(k.reloptions) o \
                              WHERE k.oid = to_regclass('public.' || t)), false) \
                 OR coalesce((SELECT bool_or(EXISTS (SELECT 1 FROM unnest(k.reloptions) o WHERE o LIKE 'autovacuum_vacuum_scale_factor=%')) \
                              FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid \
                              WHERE i.inhparent = to_regclass('public.' || t)), false) AS tuned \
             FROM unnest(ARRAY['orders','trades','order_book','market_data']) AS t",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let present: Vec<String> = rows.iter().filter(|r| r.get(1)).map(|r| r.get(0)).collect();
    let untuned: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1) && !r.get::<_, bool>(2))
        .map(|r| r.get(0))
        .collect();
    Ok(if present.is_empty() {
        (
            Outcome::Pass,
            "no trade-engine tables here; nothing to tune".into(),
        )
    } else if untuned.is_empty() {
        (Outcome::Pass, format!("tuned: {}", present.join(", ")))
    } else {
        (
            Outcome::Warn,
            format!(
                "not tuned: {} (created after the migration? run `pgpulse uninstall` then `migrate`, or set the reloptions)",
                untuned.join(", ")
            ),
        )
    })
}

async fn schedule(c: &Client) -> Result<Verdict, String> {
    let rows = c
        .query(
            "SELECT job_name, cron_expression FROM monitoring.maintenance_schedule ORDER BY job_name",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let mut bad = Vec::new();
    for r in &rows {
        let expr: String = r.get(1);
        if croner::Cron::from_str(&expr).is_err() {
            bad.push(format!("{}: bad cron `{expr}`", r.get::<_, String>(0)));
        }
    }
    Ok(if !bad.is_empty() {
        (Outcome::Fail, bad.join("; "))
    } else if rows.len() < 4 {
        (
            Outcome::Fail,
            format!("{} jobs scheduled, expected 4", rows.len()),
        )
    } else {
        (
            Outcome::Pass,
            format!("{} jobs with valid cron expressions", rows.len()),
        )
    })
}

async fn runner(c: &mut Client) -> Result<Verdict, String> {
    rolled_back(
        c,
        "SELECT count(*) FROM (SELECT monitoring.run_scheduled_maintenance('hourly_query_stats')) AS r",
    )
    .await?;
    Ok((Outcome::Pass, "hourly_query_stats ran (rolled back)".into()))
}

async fn statements(c: &Client) -> Result<Verdict, String> {
    let row = c
        .query_one(
            "SELECT pg_has_role('pg_read_all_settings', 'USAGE'), quote_ident(current_user), \
                    monitoring.pg_stat_statements_available()",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    if !row.get::<_, bool>(0) {
        return statements_without_settings(c, row.get(1), row.get(2)).await;
    }
    let preload: String = c
        .query_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await
        .map_err(|e| describe(&e))?
        .get(0);
    if !preload
        .split(',')
        .any(|p| p.trim().trim_matches('"') == "pg_stat_statements")
    {
        return Ok((
            Outcome::Warn,
            "pg_stat_statements is not preloaded: add it to shared_preload_libraries in \
             postgresql.conf (shared_preload_libraries = 'pg_stat_statements') and restart \
             PostgreSQL; statement metrics stay absent until then"
                .into(),
        ));
    }
    let n = scalar_i64(c, "SELECT count(*) FROM monitoring.statement_stats(false)").await?;
    Ok((Outcome::Pass, format!("collecting: {n} statements tracked")))
}

/// Check 11 for a role that may not read `shared_preload_libraries` (a non-superuser owner
/// outside `pg_read_all_settings`): whether statements are collected, and the grant to ask for.
async fn statements_without_settings(
    c: &Client,
    me: String,
    available: bool,
) -> Result<Verdict, String> {
    let grant = format!("as a superuser: GRANT pg_read_all_settings TO {me};");
    if !available {
        return Ok((
            Outcome::Warn,
            format!(
                "pg_stat_statements cannot be read here (not installed in this database, or not in \
                 shared_preload_libraries), and {me} may not read shared_preload_libraries to tell \
                 which: {grant} then run verify again; statement metrics stay absent until then"
            ),
        ));
    }
    let n = scalar_i64(c, "SELECT count(*) FROM monitoring.statement_stats()").await?;
    Ok((
        Outcome::Warn,
        format!(
            "collecting: {n} statements tracked; shared_preload_libraries not checked ({me} may not \
             read it): {grant}"
        ),
    ))
}

async fn permissions(c: &Client) -> Result<Verdict, String> {
    let row = c
        .query_one(
            "SELECT \
               (SELECT count(*) FROM pg_roles WHERE rolname IN ('pgpulse_monitor','pgpulse_maintainer')), \
               CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgpulse_monitor') THEN \
                 (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = 'monitoring' AND c.relkind = 'v' \
                    AND has_table_privilege('pgpulse_monitor', c.oid, 'SELECT')) ELSE 0 END, \
               (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                  WHERE n.nspname = 'monitoring' AND EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a \
                  WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let (roles, readable, public): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    Ok(if roles < 2 {
        (
            Outcome::Fail,
            "roles pgpulse_monitor / pgpulse_maintainer missing".into(),
        )
    } else if readable < 13 {
        (
            Outcome::Fail,
            format!("pgpulse_monitor can read {readable}/13 views"),
        )
    } else if public > 0 {
        (
            Outcome::Fail,
            format!("{public} monitoring functions executable by PUBLIC"),
        )
    } else {
        return sequences(c).await;
    })
}

/// The part of check 12 about sequences: pgpulse_monitor reads every sequence's state (the
/// `sequences` query needs SELECT to see `last_value`), and may neither advance nor set one.
async fn sequences(c: &Client) -> Result<Verdict, String> {
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT has_sequence_privilege('pgpulse_monitor', k.oid, 'SELECT')), \
                    coalesce(string_agg(k.oid::regclass::text, ', ' ORDER BY k.oid::regclass::text) \
                      FILTER (WHERE NOT has_sequence_privilege('pgpulse_monitor', k.oid, 'SELECT')), ''), \
                    count(*) FILTER (WHERE has_sequence_privilege('pgpulse_monitor', k.oid, 'USAGE') \
                                        OR has_sequence_privilege('pgpulse_monitor', k.oid, 'UPDATE')), \
                    count(*) \
             FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace \
             WHERE k.relkind = 'S' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let (unread, names, writable, all): (i64, String, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(if writable > 0 {
        (
            Outcome::Fail,
            format!(
                "pgpulse_monitor may advance or set {writable} sequence(s) (USAGE or UPDATE): it needs SELECT only"
            ),
        )
    } else if unread > 0 {
        (
            Outcome::Warn,
            format!(
                "pgpulse_monitor reads all 13 views but not {unread} of {all} sequences ({names}): the sequence metrics miss them; as their owner: GRANT SELECT ON SEQUENCE ... TO pgpulse_monitor"
            ),
        )
    } else {
        (
            Outcome::Pass,
            format!(
                "pgpulse_monitor reads all 13 views and all {all} sequences (SELECT only); nothing granted to PUBLIC"
            ),
        )
    })
}

async fn baseline(c: &Client) -> Result<Verdict, String> {
    let r = c
        .query_one(
            "SELECT round(100 * blks_hit::numeric / nullif(blks_hit + blks_read, 0), 2)::text, \
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
                    current_setting('max_connections'), pg_size_pretty(pg_database_size(current_database())) \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok((
        Outcome::Pass,
        format!(
            "cache hit {}%, {} of {} connections, database size {}",
            r.get::<_, Option<String>>(0)
                .unwrap_or_else(|| "n/a".into()),
            r.get::<_, i64>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3)
        ),
    ))
}

async fn slow_log(c: &Client) -> Result<Verdict, String> {
    use super::log_access::{LogSetup, SETTINGS_LINE, SETUP_SQL};
    let row = c
        .query_one(SETUP_SQL, &[])
        .await
        .map_err(|e| describe(&e))?;
    let setup = LogSetup::from_row(&row).map_err(|e| describe(&e))?;
    if setup.raw_reader_left {
        return Ok((
            Outcome::Fail,
            "monitoring.log_read (V009's raw log reader) still exists and hands out log lines with \
             their literals; run `pgpulse migrate` as a superuser (drops it)"
                .into(),
        ));
    }
    let mut missing = setup.missing();
    if setup.helper_installed && !setup.monitor_role_executes {
        missing.push("run `pgpulse migrate` as a superuser (pgpulse_monitor lacks EXECUTE on monitoring.log_tally)");
    }
    let advice = setup.advice();
    Ok(if !missing.is_empty() {
        (
            Outcome::Warn,
            format!(
                "exact count of slow statements off; set {} (wanted: {SETTINGS_LINE})",
                missing.join("; ")
            ),
        )
    } else if !advice.is_empty() {
        (
            Outcome::Warn,
            format!("reader works; also set {}", advice.join("; ")),
        )
    } else {
        (
            Outcome::Pass,
            "jsonlog at 100 ms, monitoring.log_tally installed, pgpulse_monitor may count the log's slow executions".into(),
        )
    })
}

/// One line per trade table of the configuration: `TABLE orders "public"."orders": found,
/// partitioned by "created_at"` (or missing, or wrong shape and why). Runs in verify's session
/// (its timeouts); a catalog error is one line.
pub async fn trade_tables(c: &Client, tables: &super::trade_tables::TradeTables) -> Vec<String> {
    let refs: Vec<_> = tables.iter().map(|(_, t)| t).collect();
    match super::trade_tables::shapes(c, &refs).await {
        Ok(found) => tables
            .iter()
            .zip(&found)
            .map(|((role, t), shape)| {
                format!("TABLE {}", super::trade_tables::describe(role, t, shape))
            })
            .collect(),
        Err(e) => vec![format!(
            "TABLE cannot read the trade tables: {}",
            describe(&e)
        )],
    }
}

/// One line per login role that can alter a configured trade table: WARN when it has no
/// `lock_timeout` (its `ALTER TABLE` would wait for its lock without limit, and every write to
/// the table would queue behind it), PASS with its setting otherwise. Names come from the
/// catalog: quoted, with control characters escaped, so no name forges a line.
pub async fn lock_timeouts(c: &Client, tables: &super::trade_tables::TradeTables) -> Vec<String> {
    let found = match super::alterers::alterers(c, tables).await {
        Ok(found) => found,
        Err(e) => {
            return vec![format!(
                "LOCK_TIMEOUT FAIL cannot read the roles: {}",
                describe(&e)
            )];
        }
    };
    found
        .iter()
        .map(|a| {
            let role = printable(&super::trade_tables::quote_ident(&a.role));
            let tables = printable(&a.tables);
            match &a.lock_timeout {
                Some(v) => format!("LOCK_TIMEOUT PASS {role} can alter {tables}; lock_timeout {}", printable(v)),
                None => format!(
                    "LOCK_TIMEOUT WARN {role} can alter {tables} and has no lock_timeout: its DDL would \
                     wait for a lock without limit while every write queues behind it; \
                     ALTER ROLE {role} SET lock_timeout = '2s'"
                ),
            }
        })
        .collect()
}

/// From pg_stat_statements (NULL without it), the calls of statements whose mean time is at or
/// over `$1` ms and the seconds since its statistics began.
const LOG_VOLUME_SQL: &str = "WITH p AS (SELECT * FROM monitoring.get_query_performance('1 hour')) \
    SELECT (SELECT sum(calls) FILTER (WHERE mean_exec_time_ms >= $1::float8)::float8 FROM p), \
           (SELECT extract(epoch FROM now() - min(stats_since))::float8 FROM p)";

/// Bytes of one jsonlog duration line, about (fields, timestamp, a short statement).
const LOG_LINE_BYTES: f64 = 500.0;

/// One `SLO` line on the key queries' SLO misses (`targets`: each key query with a target):
/// PASS when `log_min_duration_statement` is at or below every target (every miss is in the
/// log), WARN naming the setting that covers them all and what logging at it costs, estimated
/// from pg_stat_statements' mean times (statements at or over it, a minute and a day).
pub async fn key_query_log(c: &Client, targets: &[(String, std::time::Duration)]) -> Vec<String> {
    let Some(smallest) = targets.iter().map(|(_, t)| t.as_millis()).min() else {
        return Vec::new();
    };
    let threshold: i64 = match scalar_i64(
        c,
        "SELECT setting::bigint FROM pg_settings WHERE name = 'log_min_duration_statement'",
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            return vec![format!(
                "SLO FAIL cannot read log_min_duration_statement: {e}"
            )];
        }
    };
    let above: Vec<String> = targets
        .iter()
        .filter(|(_, t)| threshold < 0 || t.as_millis() < threshold as u128)
        .map(|(n, t)| format!("{n} ({}ms)", t.as_millis()))
        .collect();
    if above.is_empty() {
        return vec![format!(
            "SLO PASS log_min_duration_statement = {threshold}ms is at or below every key query's target (the smallest: {smallest}ms): every miss is counted"
        )];
    }
    let now = match threshold {
        t if t < 0 => "is off: no key query's misses are counted".to_owned(),
        t => format!(
            "= {t}ms is above the targets of {}: their misses are counted from {t}ms only",
            above.join(", ")
        ),
    };
    let cost = log_volume(c, smallest as f64).await;
    vec![format!(
        "SLO WARN log_min_duration_statement {now}; set log_min_duration_statement = {smallest}ms to count every miss ({cost})"
    )]
}

/// What logging every statement of `ms` or longer would cost, estimated from
/// pg_stat_statements' mean times; says so when it cannot be estimated.
async fn log_volume(c: &Client, ms: f64) -> String {
    let read = async {
        let row = c.query_one(LOG_VOLUME_SQL, &[&ms]).await?;
        Ok::<_, tokio_postgres::Error>((
            row.try_get::<_, Option<f64>>(0)?,
            row.try_get::<_, Option<f64>>(1)?,
        ))
    };
    match read.await {
        Ok((Some(calls), Some(secs))) if secs > 0.0 => {
            let per_min = calls / secs * 60.0;
            let mb_day = per_min * 1440.0 * LOG_LINE_BYTES / 1e6;
            format!("about {per_min:.1} statements a minute, {mb_day:.1} MB of log a day, estimated from pg_stat_statements' mean times")
        }
        _ => "its log volume is estimated once pg_stat_statements and the monitoring schema are there".to_owned(),
    }
}

/// `s` with control characters escaped (`\n`), for one line of output.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The session of verify: a pinned `search_path` and timeouts, as every statement pgpulse sends.
const SESSION_SQL: &str = "SET search_path = pg_catalog, pg_temp; SET lock_timeout = '2s'; \
     SET statement_timeout = '300s'";

/// The checks' names, in order (check N is `NAMES[N - 1]`).
const NAMES: [&str; 15] = [
    "required extensions",
    "monitoring schema and views",
    "monitoring functions",
    "data retrieval from all views",
    "performance functions",
    "partition management functions",
    "database health check",
    "autovacuum configuration",
    "maintenance schedule",
    "maintenance runner",
    "pg_stat_statements collection",
    "permissions",
    "performance baseline",
    "slow-statement log reader",
    "SECURITY DEFINER functions",
];

/// What check 2 says when the schema is missing; the checks after it say they were skipped.
pub const NOT_INSTALLED: &str = "the monitoring schema is not installed: run `pgpulse migrate`";

/// Runs the 15 checks in order; a check that errors is a FAIL with the server's message.
/// Without the monitoring schema, check 2 says to migrate and the checks that need the
/// schema say they were skipped, rather than each repeating "does not exist".
pub async fn verify(c: &mut Client) -> Vec<Check> {
    if let Err(e) = c.batch_execute(SESSION_SQL).await {
        return vec![Check {
            number: 0,
            name: "verify session (search_path, timeouts)",
            outcome: Outcome::Fail,
            reason: describe(&e),
        }];
    }
    let mut results: Vec<Result<Verdict, String>> = vec![extensions(c).await];
    match installed(c).await {
        Ok(true) => {}
        Ok(false) => {
            results.push(Ok((Outcome::Fail, NOT_INSTALLED.to_owned())));
            while results.len() < NAMES.len() {
                results.push(Ok((
                    Outcome::Fail,
                    "skipped: needs the monitoring schema (check 2)".to_owned(),
                )));
            }
            return checks(results);
        }
        Err(e) => results.push(Err(e)),
    }
    if results.len() == 1 {
        results.push(objects(c, "views").await);
    }
    results.push(objects(c, "functions").await);
    results.push(view_reads(c).await);
    results.push(read_functions(c).await);
    results.push(partition_functions(c).await);
    results.push(health(c).await);
    results.push(autovacuum(c).await);
    results.push(schedule(c).await);
    results.push(runner(c).await);
    results.push(statements(c).await);
    results.push(permissions(c).await);
    results.push(baseline(c).await);
    results.push(slow_log(c).await);
    results.push(super::definer::check(c).await);
    checks(results)
}

/// Whether the monitoring schema and its migration history exist.
async fn installed(c: &Client) -> Result<bool, String> {
    c.query_one(
        "SELECT to_regclass('monitoring.schema_migrations') IS NOT NULL",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .map_err(|e| describe(&e))
}

/// Numbers and names the results, in order; an error is a FAIL with its message.
fn checks(results: Vec<Result<Verdict, String>>) -> Vec<Check> {
    results
        .into_iter()
        .zip(NAMES)
        .zip(1u8..)
        .map(|((r, name), number)| {
            let (outcome, reason) = r.unwrap_or_else(|e| (Outcome::Fail, e));
            Check {
                number,
                name,
                outcome,
                reason,
            }
        })
        .collect()
}
