-- V006: autovacuum tuning of the trade-engine tables and the maintenance schedule.
--
-- One simple-query batch inside the runner's transaction: no BEGIN/COMMIT, no meta-commands.

-- ---------------------------------------------------------------------------------------------
-- Autovacuum tuning, only for tables that exist in schema public.
--   orders       vacuum 0.1  analyze 0.05
--   trades       vacuum 0.05 analyze 0.02  (high write frequency)
--   order_book   vacuum 0.02 analyze 0.01  (very high update frequency)
--   market_data  vacuum 0.2  analyze 0.1   (read-heavy)
-- PostgreSQL 15 rejects autovacuum reloptions on a partitioned table, so for orders and trades they
-- are set on the partitions that can still receive writes: the DEFAULT partition, partitions without
-- time bounds, and partitions whose upper bound lies after the current UTC month start - 3 months
-- (older ones are left alone: tuning them is useless and ALTERing thousands of partitions in one
-- transaction would exhaust the shared lock table).  monitoring.create_future_order_partitions /
-- create_future_trade_partitions copy the reloptions of the newest partition to each partition they
-- create.  uninstall.sql resets them.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    r         record;
    v_rel     regclass;
    v_leaf    regclass;
    v_opts    text;
    v_skipped integer;
    v_error   text;
    v_cutoff  timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '3 months') AT TIME ZONE 'UTC';
BEGIN
    FOR r IN
        SELECT * FROM (VALUES ('orders', 0.1, 0.05),
                              ('trades', 0.05, 0.02),
                              ('order_book', 0.02, 0.01),
                              ('market_data', 0.2, 0.1)) AS t(name, vacuum_sf, analyze_sf)
    LOOP
        v_rel := pg_catalog.to_regclass('public.' || quote_ident(r.name));
        IF v_rel IS NULL THEN
            RAISE NOTICE 'pgpulse: table public.% does not exist; autovacuum tuning skipped', r.name;
            CONTINUE;
        END IF;
        v_opts := format('autovacuum_vacuum_scale_factor = %s, autovacuum_analyze_scale_factor = %s',
                         r.vacuum_sf, r.analyze_sf);
        v_skipped := 0;
        FOR v_leaf IN
            -- a plain table
            SELECT c.oid::regclass
              FROM pg_catalog.pg_class c
             WHERE c.oid = v_rel AND c.relkind IN ('r', 'm')
            UNION ALL
            -- the leaf partitions under every direct partition that can still be written: DEFAULT,
            -- non-time bounds, or upper bound after (current UTC month start - 3 months)
            SELECT c.oid::regclass
              FROM monitoring.partition_bounds(v_rel) b
              CROSS JOIN LATERAL (
                  WITH RECURSIVE tree(relid) AS (
                      SELECT b.partition_oid
                      UNION ALL
                      SELECT i.inhrelid FROM tree JOIN pg_catalog.pg_inherits i ON i.inhparent = tree.relid
                  )
                  SELECT tree.relid FROM tree
              ) t
              JOIN pg_catalog.pg_class c ON c.oid = t.relid
             WHERE c.relkind = 'r'
               AND (b.is_default OR b.range_end IS NULL OR b.range_end > v_cutoff)
        LOOP
            BEGIN
                EXECUTE format('ALTER TABLE %s SET (%s)', v_leaf, v_opts);
            EXCEPTION WHEN insufficient_privilege THEN
                v_skipped := v_skipped + 1;
                v_error := SQLERRM;
            END;
        END LOOP;
        IF v_skipped > 0 THEN
            RAISE NOTICE 'pgpulse: autovacuum tuning of public.% skipped on % table(s): % (run the migration as the table owner)',
                r.name, v_skipped, v_error;
        END IF;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Maintenance schedule and log
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS monitoring.maintenance_schedule (
    job_name        text PRIMARY KEY,
    description     text,
    cron_expression text        NOT NULL,
    function_call   text        NOT NULL,
    enabled         boolean     NOT NULL DEFAULT true,
    last_run        timestamptz,
    last_status     text CHECK (last_status IN ('success', 'failed')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE monitoring.maintenance_schedule IS
    'Maintenance jobs run by the pgpulse maintenance runner (cron_expression in UTC, standard 5 fields) through '
    'monitoring.run_scheduled_maintenance(job_name). function_call must be monitoring.<function>() or '
    'monitoring.<function>(<integer>); it is validated, never executed as free SQL.';

CREATE TABLE IF NOT EXISTS monitoring.maintenance_log (
    id          bigserial PRIMARY KEY,
    job_name    text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text        NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    details     jsonb,
    error       text
);
CREATE INDEX IF NOT EXISTS maintenance_log_job_started_idx
    ON monitoring.maintenance_log (job_name, started_at DESC);
COMMENT ON TABLE monitoring.maintenance_log IS
    'One row per maintenance job run (monitoring.run_scheduled_maintenance): status success/failed, details '
    'jsonb (function_call, rows, result, and for weekly_vacuum the statements the client ran), error text.';

INSERT INTO monitoring.maintenance_schedule (job_name, description, cron_expression, function_call, enabled)
VALUES
    ('daily_partition_creation',
     'Create the missing future partitions: orders 3 months ahead, trades 7 days ahead.',
     '0 1 * * *', 'monitoring.partition_maintenance()', true),
    ('daily_statistics_update',
     'ANALYZE the trade-engine tables, including the partitioned parents that autovacuum never analyzes.',
     '0 2 * * *', 'monitoring.update_table_statistics()', true),
    ('weekly_vacuum',
     'VACUUM (ANALYZE) every table that changed. VACUUM cannot run in a function: the job returns the '
     'statements (details->''statements'') and the pgpulse maintenance runner executes them.',
     '0 3 * * 0', 'monitoring.run_maintenance_vacuum()', true),
    ('hourly_query_stats',
     'Snapshot of pg_stat_statements (cumulative since reset, top statements by total time) into the log; '
     'records only the availability when pg_stat_statements is not available.',
     '0 * * * *', 'monitoring.get_query_performance()', true)
ON CONFLICT (job_name) DO NOTHING;

-- ---------------------------------------------------------------------------------------------
-- Privileges (nothing for PUBLIC)
-- ---------------------------------------------------------------------------------------------
REVOKE ALL ON monitoring.maintenance_schedule, monitoring.maintenance_log FROM PUBLIC;
REVOKE ALL ON SEQUENCE monitoring.maintenance_log_id_seq FROM PUBLIC;

GRANT SELECT ON monitoring.maintenance_schedule, monitoring.maintenance_log TO pgpulse_monitor;
GRANT SELECT, INSERT, UPDATE ON monitoring.maintenance_schedule, monitoring.maintenance_log TO pgpulse_maintainer;
GRANT USAGE, SELECT ON SEQUENCE monitoring.maintenance_log_id_seq TO pgpulse_maintainer;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA monitoring FROM PUBLIC;
