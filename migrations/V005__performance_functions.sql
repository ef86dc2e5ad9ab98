-- V005: the 14 performance and maintenance functions (plus one helper).
--
-- One simple-query batch inside the runner's transaction: no BEGIN/COMMIT, no meta-commands.
-- Every function sets search_path = pg_catalog, pg_temp and schema-qualifies everything else.
-- All functions are SECURITY INVOKER: statistics visibility comes from the caller's pg_monitor
-- membership; DDL (partitions), ANALYZE and DETACH need the caller to own the trade tables (or be a
-- member of the owning role).  Only monitoring.default_partition_rows (V004) is SECURITY DEFINER.
--
-- Read-only (EXECUTE to pgpulse_monitor and pgpulse_maintainer):
--   get_query_performance, get_table_bloat, get_missing_indexes, analyze_partition_usage,
--   run_maintenance_vacuum (only lists statements), rebuild_bloated_indexes (only lists statements),
--   database_health_check
-- Writing (EXECUTE to pgpulse_maintainer only):
--   create_future_order_partitions, create_future_trade_partitions, archive_old_partitions,
--   update_table_statistics, partition_maintenance, reset_query_stats, run_scheduled_maintenance,
--   helper create_future_partitions

-- ---------------------------------------------------------------------------------------------
-- 1. get_query_performance
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.get_query_performance(p_interval interval DEFAULT interval '1 hour')
RETURNS TABLE (
    queryid             bigint,
    username            text,
    datname             text,
    query               text,
    calls               bigint,
    total_exec_time_ms  double precision,
    mean_exec_time_ms   double precision,
    stddev_exec_time_ms double precision,
    rows                bigint,
    cache_hit_ratio     double precision,
    share_of_total_time double precision,
    stats_since         timestamptz
)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_nsp   text;
    v_since timestamptz;
BEGIN
    IF NOT monitoring.pg_stat_statements_available() THEN
        RETURN;
    END IF;
    SELECT n.nspname INTO v_nsp
      FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_stat_statements';
    IF pg_catalog.to_regclass(format('%I.pg_stat_statements_info', v_nsp)) IS NOT NULL THEN
        EXECUTE format('SELECT stats_reset FROM %I.pg_stat_statements_info', v_nsp) INTO v_since;
    END IF;
    RETURN QUERY
    SELECT s.queryid, s.username, s.datname, s.query, s.calls,
           s.total_exec_time_ms, s.mean_exec_time_ms, s.stddev_exec_time_ms, s.rows,
           CASE WHEN s.shared_blks_hit + s.shared_blks_read > 0
                THEN s.shared_blks_hit::float8 / (s.shared_blks_hit + s.shared_blks_read) END,
           CASE WHEN sum(s.total_exec_time_ms) OVER () > 0
                THEN s.total_exec_time_ms / sum(s.total_exec_time_ms) OVER () ELSE 0::float8 END,
           v_since
      FROM monitoring.statement_stats() s
     ORDER BY s.total_exec_time_ms DESC, s.queryid;
END
$$;
COMMENT ON FUNCTION monitoring.get_query_performance(interval) IS
    'Statement statistics from pg_stat_statements, ordered by total execution time. pg_stat_statements has '
    'no time dimension: the values are CUMULATIVE since the last reset (stats_since), not for p_interval; '
    'p_interval is accepted for compatibility and ignored (rates come from differences between samples). '
    'Returns: queryid bigint, username text, datname text, query text, calls bigint, total_exec_time_ms, '
    'mean_exec_time_ms, stddev_exec_time_ms double precision (ms), rows bigint, cache_hit_ratio double '
    'precision (0..1, NULL without block accesses), share_of_total_time double precision (0..1), '
    'stats_since timestamptz (pg_stat_statements_info.stats_reset). Zero rows when pg_stat_statements is '
    'unavailable.';

-- ---------------------------------------------------------------------------------------------
-- 2. get_table_bloat
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.get_table_bloat()
RETURNS TABLE (
    schemaname           text,
    relname              text,
    n_live_tup           bigint,
    n_dead_tup           bigint,
    dead_tuple_ratio     double precision,
    total_bytes          bigint,
    estimated_dead_bytes bigint,
    last_vacuum          timestamptz,
    recommendation       text
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT b.schemaname,
       b.relname,
       b.n_live_tup,
       b.n_dead_tup,
       b.dead_tuple_ratio,
       b.total_bytes,
       b.estimated_dead_bytes,
       GREATEST(b.last_vacuum, b.last_autovacuum),
       CASE WHEN b.dead_tuple_ratio > 0.3
            THEN format('CRITICAL: %s%% dead tuples. Run VACUUM (ANALYZE) %I.%I now; to return the space to the '
                        'operating system use pg_repack (online) or VACUUM FULL (takes an ACCESS EXCLUSIVE lock). '
                        'Check for long transactions holding back cleanup and consider a lower '
                        'autovacuum_vacuum_scale_factor.',
                        round((b.dead_tuple_ratio * 100)::numeric, 1), b.schemaname, b.relname)
            ELSE format('WARNING: %s%% dead tuples. Run VACUUM (ANALYZE) %I.%I; if it recurs, lower '
                        'autovacuum_vacuum_scale_factor for this table.',
                        round((b.dead_tuple_ratio * 100)::numeric, 1), b.schemaname, b.relname)
       END
  FROM monitoring.v_table_bloat b
 ORDER BY b.dead_tuple_ratio DESC, b.n_dead_tup DESC
$$;
COMMENT ON FUNCTION monitoring.get_table_bloat() IS
    'Tables with more than 10% dead tuples and what to do. Returns: schemaname text, relname text, n_live_tup '
    'bigint, n_dead_tup bigint, dead_tuple_ratio double precision (0..1), total_bytes bigint, '
    'estimated_dead_bytes bigint, last_vacuum timestamptz (latest manual or auto vacuum, NULL when never), '
    'recommendation text (VACUUM above 10%; pg_repack / VACUUM FULL above 30%).';

-- ---------------------------------------------------------------------------------------------
-- 3. get_missing_indexes
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.get_missing_indexes()
RETURNS TABLE (
    schemaname             text,
    relname                text,
    seq_scan               bigint,
    seq_tup_read           bigint,
    idx_scan               bigint,
    n_live_tup             bigint,
    table_bytes            bigint,
    avg_rows_per_seq_scan  double precision,
    seq_scan_ratio         double precision,
    suggestion             text
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT t.schemaname,
       t.relname,
       t.seq_scan,
       t.seq_tup_read,
       t.idx_scan,
       t.n_live_tup,
       t.table_bytes,
       t.seq_tup_read::float8 / t.seq_scan,
       t.seq_scan::float8 / (t.seq_scan + t.idx_scan),
       format('%I.%I: %s sequential scans (about %s rows each) against %s index scans. Find the statements '
              'that scan it (monitoring.v_top_queries_by_time, EXPLAIN) and index the columns they filter or '
              'join on, e.g. CREATE INDEX CONCURRENTLY ON %I.%I (<column>).',
              t.schemaname, t.relname, t.seq_scan, round(t.seq_tup_read::numeric / t.seq_scan),
              t.idx_scan, t.schemaname, COALESCE(t.parent_relname, t.relname))
  FROM monitoring.v_table_stats t
 WHERE t.seq_scan >= 10
   AND t.seq_scan > t.idx_scan
   AND (t.n_live_tup >= 10000 OR t.table_bytes >= 10 * 1024 * 1024)
   AND t.seq_tup_read::float8 / NULLIF(t.seq_scan, 0) >= 1000
 ORDER BY t.seq_tup_read DESC
$$;
COMMENT ON FUNCTION monitoring.get_missing_indexes() IS
    'Tables that are mostly read by sequential scans although they are large (>= 10000 live rows or >= 10 MB, '
    '>= 10 sequential scans, more sequential than index scans, >= 1000 rows per scan). Returns: schemaname '
    'text, relname text, seq_scan bigint, seq_tup_read bigint, idx_scan bigint, n_live_tup bigint, '
    'table_bytes bigint, avg_rows_per_seq_scan double precision, seq_scan_ratio double precision (0..1 share of '
    'scans that were sequential), suggestion text.';

-- ---------------------------------------------------------------------------------------------
-- 4. analyze_partition_usage
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.analyze_partition_usage()
RETURNS TABLE (
    parent_schemaname  text,
    parent_relname     text,
    partition_name     text,
    is_default         boolean,
    range_start        timestamptz,
    range_end          timestamptz,
    seq_scan           bigint,
    idx_scan           bigint,
    n_live_tup         bigint,
    n_tup_ins          bigint,
    total_bytes        bigint,
    share_of_scans     double precision,
    usage_category     text
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT u.parent_schemaname, u.parent_relname, u.partition_relname, u.is_default, u.range_start, u.range_end,
       u.seq_scan, u.idx_scan, u.n_live_tup, u.n_tup_ins, u.total_bytes,
       CASE WHEN sum(u.seq_scan + u.idx_scan) OVER w > 0
            THEN (u.seq_scan + u.idx_scan)::float8 / sum(u.seq_scan + u.idx_scan) OVER w ELSE 0::float8 END,
       CASE WHEN u.seq_scan + u.idx_scan = 0 THEN 'UNUSED'
            WHEN (u.seq_scan + u.idx_scan)::float8 < 0.01 * sum(u.seq_scan + u.idx_scan) OVER w THEN 'COLD'
            ELSE 'ACTIVE' END
  FROM (SELECT b.*,
               COALESCE(pg_catalog.pg_stat_get_numscans(b.partition_oid), 0) AS seq_scan,
               COALESCE((SELECT sum(pg_catalog.pg_stat_get_numscans(x.indexrelid))
                           FROM pg_catalog.pg_index x WHERE x.indrelid = b.partition_oid), 0)::bigint AS idx_scan,
               COALESCE(pg_catalog.pg_stat_get_live_tuples(b.partition_oid), 0) AS n_live_tup,
               COALESCE(pg_catalog.pg_stat_get_tuples_inserted(b.partition_oid), 0) AS n_tup_ins,
               COALESCE(pg_catalog.pg_total_relation_size(b.partition_oid), 0) AS total_bytes
          FROM monitoring.partition_bounds() b) u
WINDOW w AS (PARTITION BY u.parent_oid)
 ORDER BY u.parent_schemaname, u.parent_relname, u.is_default, u.range_start NULLS LAST, u.partition_relname
$$;
COMMENT ON FUNCTION monitoring.analyze_partition_usage() IS
    'Access pattern per partition (shows whether partition pruning works). Returns: parent_schemaname text, '
    'parent_relname text, partition_name text, is_default boolean, range_start timestamptz, range_end '
    'timestamptz (NULL when not time-based), seq_scan bigint, idx_scan bigint, n_live_tup bigint, n_tup_ins '
    'bigint, total_bytes bigint, share_of_scans double precision (0..1 of the parent''s scans), usage_category '
    'text (UNUSED no scans, COLD < 1% of the parent''s scans, ACTIVE).';

-- ---------------------------------------------------------------------------------------------
-- Helper for 5 and 6: continue a range partitioning scheme on a time key.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.create_future_partitions(p_parent text, p_unit text, p_ahead integer)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
-- bound literals are written as text: ISO/UTC makes them unambiguous (no zone abbreviations)
SET datestyle = 'ISO, YMD'
SET timezone = 'UTC'
AS $$
#variable_conflict use_variable
DECLARE
    v_parent     regclass;
    v_schema     text;
    v_relname    text;
    v_owner      name;
    v_strat      "char";
    v_key        name;
    v_keytype    oid;
    v_default    oid;
    v_step       interval;
    v_fmt        text;
    v_target     timestamptz;
    v_newest     timestamptz;
    v_maxvalue   boolean;
    v_start      timestamptz;
    v_end        timestamptz;
    v_reloptions text[];
    v_names      text[] := '{}';
    v_starts     timestamptz[] := '{}';
    v_ends       timestamptz[] := '{}';
    v_rows       bigint;
    v_lo         text;
    v_hi         text;
    i            integer;
BEGIN
    IF p_unit NOT IN ('month', 'day') THEN
        RAISE EXCEPTION 'pgpulse: partition unit must be month or day, not %', p_unit;
    END IF;
    IF p_ahead IS NULL OR p_ahead < 0 THEN
        RAISE EXCEPTION 'pgpulse: the number of % ahead must be >= 0, not %', p_unit || 's', p_ahead;
    END IF;

    v_parent := pg_catalog.to_regclass(p_parent);
    IF v_parent IS NULL THEN
        RAISE NOTICE 'pgpulse: table % does not exist; no partitions created', p_parent;
        RETURN;
    END IF;
    SELECT pt.partstrat, a.attname, a.atttypid, pt.partdefid, n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner)
      INTO v_strat, v_key, v_keytype, v_default, v_schema, v_relname, v_owner
      FROM pg_catalog.pg_partitioned_table pt
      JOIN pg_catalog.pg_class c ON c.oid = pt.partrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_catalog.pg_attribute a
             ON a.attrelid = pt.partrelid AND pt.partattrs[0] <> 0 AND a.attnum = pt.partattrs[0]
     WHERE pt.partrelid = v_parent;
    IF NOT FOUND THEN
        RAISE NOTICE 'pgpulse: table % is not partitioned; no partitions created', p_parent;
        RETURN;
    END IF;
    IF v_strat <> 'r' OR v_keytype IS NULL
       OR v_keytype NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
        RAISE NOTICE 'pgpulse: % is not range-partitioned on a timestamptz/timestamp/date column; no partitions created',
            p_parent;
        RETURN;
    END IF;

    -- Serialise concurrent callers without blocking reads or writes of the table.
    EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', v_parent);

    SELECT max(b.range_end), COALESCE(bool_or(b.range_end_is_maxvalue), false)
      INTO v_newest, v_maxvalue
      FROM monitoring.partition_bounds(v_parent) b
     WHERE NOT b.is_default;
    IF v_maxvalue THEN
        RAISE NOTICE 'pgpulse: a partition of % extends to MAXVALUE; no partitions created', p_parent;
        RETURN;
    END IF;

    -- New partitions get the reloptions (autovacuum tuning, fillfactor, ...) of the newest partition:
    -- PostgreSQL 15 does not accept autovacuum reloptions on the partitioned table itself.
    SELECT c.reloptions INTO v_reloptions
      FROM monitoring.partition_bounds(v_parent) b
      JOIN pg_catalog.pg_class c ON c.oid = b.partition_oid
     WHERE NOT b.is_default AND b.range_end IS NOT NULL
     ORDER BY b.range_end DESC
     LIMIT 1;

    v_step   := CASE p_unit WHEN 'month' THEN interval '1 month' ELSE interval '1 day' END;
    v_fmt    := CASE p_unit WHEN 'month' THEN 'YYYY_MM' ELSE 'YYYY_MM_DD' END;
    v_target := now() + p_ahead * v_step;
    v_start  := COALESCE(v_newest,
                         pg_catalog.date_trunc(p_unit, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');

    -- Plan: from the newest upper bound up to the partition that contains now() + ahead.
    WHILE v_start <= v_target LOOP
        v_end := (pg_catalog.date_trunc(p_unit, v_start AT TIME ZONE 'UTC') + v_step) AT TIME ZONE 'UTC';
        v_names  := v_names  || (v_relname || '_' || pg_catalog.to_char(v_start AT TIME ZONE 'UTC', v_fmt));
        v_starts := v_starts || v_start;
        v_ends   := v_ends   || v_end;
        v_start  := v_end;
    END LOOP;
    IF pg_catalog.cardinality(v_names) = 0 THEN
        RETURN;
    END IF;

    -- Check everything before creating anything.
    FOR i IN 1 .. pg_catalog.cardinality(v_names) LOOP
        IF pg_catalog.to_regclass(format('%I.%I', v_schema, v_names[i])) IS NOT NULL THEN
            RAISE EXCEPTION 'pgpulse: cannot create partition %.% of % for [%, %): a table of that name already exists',
                v_schema, v_names[i], p_parent, v_starts[i], v_ends[i]
                USING HINT = 'Attach or rename that table, then run the function again.';
        END IF;
    END LOOP;
    IF v_default <> 0 THEN
        FOR i IN 1 .. pg_catalog.cardinality(v_names) LOOP
            v_lo := CASE v_keytype
                        WHEN 'timestamptz'::regtype THEN v_starts[i]::text
                        WHEN 'timestamp'::regtype   THEN (v_starts[i] AT TIME ZONE 'UTC')::text
                        ELSE (v_starts[i] AT TIME ZONE 'UTC')::date::text END;
            v_hi := CASE v_keytype
                        WHEN 'timestamptz'::regtype THEN v_ends[i]::text
                        WHEN 'timestamp'::regtype   THEN (v_ends[i] AT TIME ZONE 'UTC')::text
                        ELSE (v_ends[i] AT TIME ZONE 'UTC')::date::text END;
            -- Read through the parent (needs SELECT on the parent only): the new range lies beyond every
            -- existing partition, so such rows can only be in the DEFAULT partition.
            EXECUTE format('SELECT count(*) FROM %s WHERE %I >= %L::%s AND %I < %L::%s',
                           v_parent, v_key, v_lo, v_keytype::regtype, v_key, v_hi, v_keytype::regtype)
               INTO v_rows;
            IF v_rows > 0 THEN
                RAISE EXCEPTION 'pgpulse: default partition % holds % row(s) with % in [%, %), the range of the new partition %.%; no partition was created and no row was moved',
                    v_default::regclass, v_rows, v_key, v_starts[i], v_ends[i], v_schema, v_names[i]
                    USING ERRCODE = 'check_violation',
                          HINT = format('Move those rows out of %s first, in one transaction: copy them to a holding '
                                        'table, delete them from %s, run this function, then insert them back through %s.',
                                        v_default::regclass, v_default::regclass, v_parent);
            END IF;
        END LOOP;
    END IF;

    FOR i IN 1 .. pg_catalog.cardinality(v_names) LOOP
        v_lo := CASE v_keytype
                    WHEN 'timestamptz'::regtype THEN v_starts[i]::text
                    WHEN 'timestamp'::regtype   THEN (v_starts[i] AT TIME ZONE 'UTC')::text
                    ELSE (v_starts[i] AT TIME ZONE 'UTC')::date::text END;
        v_hi := CASE v_keytype
                    WHEN 'timestamptz'::regtype THEN v_ends[i]::text
                    WHEN 'timestamp'::regtype   THEN (v_ends[i] AT TIME ZONE 'UTC')::text
                    ELSE (v_ends[i] AT TIME ZONE 'UTC')::date::text END;
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)%s',
                       v_schema, v_names[i], v_parent, v_lo, v_hi,
                       CASE WHEN v_reloptions IS NOT NULL AND pg_catalog.cardinality(v_reloptions) > 0
                            THEN ' WITH (' || pg_catalog.array_to_string(v_reloptions, ', ') || ')' ELSE '' END);
        IF v_owner IS DISTINCT FROM current_user THEN
            BEGIN
                EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', v_schema, v_names[i], v_owner);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'pgpulse: partition %.% is owned by % (could not give it to %, the owner of %)',
                    v_schema, v_names[i], current_user, v_owner, p_parent;
            END;
        END IF;
        partition_name := v_names[i];
        range_start    := v_starts[i];
        range_end      := v_ends[i];
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION monitoring.create_future_partitions(text, text, integer) IS
    'Helper for create_future_order_partitions / create_future_trade_partitions. Continues the range '
    'partitioning of p_parent (unit month or day, names <table>_YYYY_MM or <table>_YYYY_MM_DD, bounds at UTC '
    'period starts) from the newest partition''s upper bound (or the current UTC period when there is none) '
    'until the partition containing now() + p_ahead units exists. Returns: partition_name text, range_start '
    'timestamptz, range_end timestamptz of each partition created (zero rows when nothing was missing or the '
    'table does not exist). Raises check_violation, before creating anything, when the DEFAULT partition holds '
    'rows of a new range. New partitions copy the reloptions of the newest partition and get the parent''s owner.';

-- ---------------------------------------------------------------------------------------------
-- 5. create_future_order_partitions
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.create_future_order_partitions(months_ahead integer DEFAULT 3)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT f.partition_name, f.range_start, f.range_end
  FROM monitoring.create_future_partitions('public.orders', 'month', months_ahead) f
$$;
COMMENT ON FUNCTION monitoring.create_future_order_partitions(integer) IS
    'Creates the missing monthly partitions public.orders_YYYY_MM (bounds at UTC month starts) from the newest '
    'existing partition up to the month containing now() + months_ahead. Idempotent. Returns: partition_name '
    'text, range_start timestamptz, range_end timestamptz, one row per partition created; zero rows (with a '
    'NOTICE) when public.orders does not exist. Raises before creating anything when orders'' DEFAULT '
    'partition holds rows of a new month. Needs ownership of public.orders.';

-- ---------------------------------------------------------------------------------------------
-- 6. create_future_trade_partitions
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.create_future_trade_partitions(days_ahead integer DEFAULT 7)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT f.partition_name, f.range_start, f.range_end
  FROM monitoring.create_future_partitions('public.trades', 'day', days_ahead) f
$$;
COMMENT ON FUNCTION monitoring.create_future_trade_partitions(integer) IS
    'Creates the missing daily partitions public.trades_YYYY_MM_DD (bounds at UTC midnight) from the newest '
    'existing partition up to the day containing now() + days_ahead. Idempotent. Returns: partition_name '
    'text, range_start timestamptz, range_end timestamptz, one row per partition created; zero rows (with a '
    'NOTICE) when public.trades does not exist. Raises before creating anything when trades'' DEFAULT '
    'partition holds rows of a new day. Needs ownership of public.trades.';

-- ---------------------------------------------------------------------------------------------
-- 7. archive_old_partitions
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.archive_old_partitions(retention_months integer DEFAULT 12)
RETURNS TABLE (parent text, partition_name text, range_end timestamptz)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_cutoff timestamptz;
    v_table  text;
    v_parent regclass;
    r        record;
BEGIN
    IF retention_months IS NULL OR retention_months < 0 THEN
        RAISE EXCEPTION 'pgpulse: retention_months must be >= 0, not %', retention_months;
    END IF;
    v_cutoff := (pg_catalog.date_trunc('month', now() AT TIME ZONE 'UTC')
                 - pg_catalog.make_interval(months => retention_months)) AT TIME ZONE 'UTC';
    FOREACH v_table IN ARRAY ARRAY['orders', 'trades'] LOOP
        v_parent := pg_catalog.to_regclass('public.' || v_table);
        IF v_parent IS NULL THEN
            CONTINUE;
        END IF;
        FOR r IN
            SELECT b.partition_schemaname, b.partition_relname, b.range_end
              FROM monitoring.partition_bounds(v_parent) b
             WHERE NOT b.is_default AND b.range_end IS NOT NULL AND b.range_end <= v_cutoff
             ORDER BY b.range_end
        LOOP
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %I.%I', v_parent, r.partition_schemaname, r.partition_relname);
            parent         := v_table;
            partition_name := r.partition_relname;
            range_end      := r.range_end;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION monitoring.archive_old_partitions(integer) IS
    'DETACHes (never drops) the partitions of public.orders and public.trades whose upper bound is <= the '
    'current UTC month start minus retention_months. Detached tables keep their name and data and can be '
    'archived/dropped after review. Returns: parent text (orders/trades), partition_name text, range_end '
    'timestamptz, one row per detached partition. Needs ownership of the tables.';

-- ---------------------------------------------------------------------------------------------
-- 8. run_maintenance_vacuum
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.run_maintenance_vacuum()
RETURNS TABLE (
    schemaname       text,
    relname          text,
    dead_tuple_ratio double precision,
    n_dead_tup       bigint,
    statement        text
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT t.schemaname,
       t.relname,
       t.dead_tuple_ratio,
       t.n_dead_tup,
       format('VACUUM (ANALYZE) %I.%I', t.schemaname, t.relname)
  FROM monitoring.v_table_stats t
 WHERE t.n_dead_tup > 0 OR t.n_mod_since_analyze > 0 OR t.n_ins_since_vacuum > 0
 ORDER BY t.n_dead_tup DESC, t.dead_tuple_ratio DESC, t.schemaname, t.relname
$$;
COMMENT ON FUNCTION monitoring.run_maintenance_vacuum() IS
    'VACUUM cannot run inside a function or a transaction block, so this function does NOT vacuum: it returns '
    'the VACUUM (ANALYZE) statements the client must run, one per table (leaf partitions individually) that '
    'changed since its last vacuum/analyze (dead tuples, modifications or inserts), most dead tuples first. '
    'The pgpulse maintenance runner executes them outside a transaction. Returns: schemaname text, relname '
    'text, dead_tuple_ratio double precision (0..1), n_dead_tup bigint, statement text.';

-- ---------------------------------------------------------------------------------------------
-- 9. update_table_statistics
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.update_table_statistics()
RETURNS TABLE (schemaname text, relname text, is_partitioned boolean, duration_seconds double precision)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    r         record;
    v_begin   timestamptz;
    v_done    integer := 0;
    v_skipped text[] := '{}';
BEGIN
    FOR r IN
        SELECT n.nspname::text AS nsp, c.relname::text AS rel, c.relkind = 'p' AS part,
               pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owned
          FROM pg_catalog.unnest(ARRAY['orders', 'trades', 'order_book', 'market_data', 'candles'])
               WITH ORDINALITY AS t(name, ord)
          JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass('public.' || t.name)
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'm')
         ORDER BY t.ord
    LOOP
        IF NOT r.owned THEN
            -- ANALYZE would only print a WARNING and skip it: report it instead of claiming success.
            v_skipped := v_skipped || format('%I.%I', r.nsp, r.rel);
            CONTINUE;
        END IF;
        v_begin := pg_catalog.clock_timestamp();
        EXECUTE format('ANALYZE %I.%I', r.nsp, r.rel);
        v_done := v_done + 1;
        schemaname       := r.nsp;
        relname          := r.rel;
        is_partitioned   := r.part;
        duration_seconds := extract(epoch FROM pg_catalog.clock_timestamp() - v_begin)::float8;
        RETURN NEXT;
    END LOOP;
    IF pg_catalog.cardinality(v_skipped) > 0 THEN
        IF v_done = 0 THEN
            RAISE EXCEPTION 'pgpulse: % may not ANALYZE %: only the owner (or a member of the owning role) can',
                current_user, pg_catalog.array_to_string(v_skipped, ', ')
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Run maintenance as the owner of the trade-engine tables, e.g. GRANT <owner role> TO the maintenance login.';
        END IF;
        RAISE NOTICE 'pgpulse: not analysed (not the owner): %', pg_catalog.array_to_string(v_skipped, ', ');
    END IF;
END
$$;
COMMENT ON FUNCTION monitoring.update_table_statistics() IS
    'ANALYZEs the trade-engine tables that exist in schema public (orders, trades, order_book, market_data, '
    'candles). ANALYZE of a partitioned table also refreshes the parent''s statistics, which autovacuum never '
    'does, and recurses into its partitions. Returns: schemaname text, relname text, is_partitioned boolean, '
    'duration_seconds double precision, one row per analysed table (zero rows when none exists). Tables the '
    'caller does not own are skipped with a NOTICE; raises insufficient_privilege when it owns none of them.';

-- ---------------------------------------------------------------------------------------------
-- 10. partition_maintenance
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.partition_maintenance()
RETURNS TABLE (parent text, partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT 'orders'::text, o.partition_name, o.range_start, o.range_end
  FROM monitoring.create_future_order_partitions() o
UNION ALL
SELECT 'trades'::text, t.partition_name, t.range_start, t.range_end
  FROM monitoring.create_future_trade_partitions(14) t
$$;
COMMENT ON FUNCTION monitoring.partition_maintenance() IS
    'Runs create_future_order_partitions(3) and create_future_trade_partitions(14): two weeks of daily '
    'partitions ahead, so the daily job keeps the runway above the 7-day warning all day. Returns: parent text '
    '(orders/trades), partition_name text, range_start timestamptz, range_end timestamptz, one row per '
    'partition created.';

-- ---------------------------------------------------------------------------------------------
-- 11. rebuild_bloated_indexes
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.rebuild_bloated_indexes()
RETURNS TABLE (
    schemaname            text,
    relname               text,
    indexrelname          text,
    index_bytes           bigint,
    idx_scan              bigint,
    estimated_bloat_ratio double precision,
    reason                text,
    statement             text
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
WITH RECURSIVE idx AS (
    SELECT u.indexrelid, u.relid, u.schemaname, u.relname, u.indexrelname, u.index_bytes, u.idx_scan,
           u.is_unique, u.is_primary, u.backs_constraint,
           EXISTS (SELECT 1 FROM pg_catalog.pg_inherits ii WHERE ii.inhrelid = u.indexrelid) AS is_partition_index,
           -- current size and live rows (relpages/reltuples are only as fresh as the last VACUUM/ANALYZE)
           (u.index_bytes / pg_catalog.current_setting('block_size')::bigint) AS relpages,
           COALESCE(NULLIF(pg_catalog.pg_stat_get_live_tuples(u.relid), 0), GREATEST(tc.reltuples, 0)::bigint) AS reltuples,
           am.amname, x.indkey,
           COALESCE((SELECT substring(o FROM '^fillfactor=(\d+)$')::int
                       FROM pg_catalog.unnest(ic.reloptions) o WHERE o LIKE 'fillfactor=%'), 90) AS fillfactor
      FROM monitoring.v_index_usage u
      JOIN pg_catalog.pg_class ic ON ic.oid = u.indexrelid
      JOIN pg_catalog.pg_class tc ON tc.oid = u.relid
      JOIN pg_catalog.pg_am am    ON am.oid = ic.relam
      JOIN pg_catalog.pg_index x  ON x.indexrelid = u.indexrelid
),
est AS (
    -- btree size estimate from column widths (pg_stats, needs SELECT on the table's columns):
    -- per tuple: 8 bytes IndexTupleData + data, MAXALIGNed, + 4 bytes line pointer;
    -- per page: 8192 - 24 header - 16 btree special space, filled to fillfactor.
    SELECT i.indexrelid,
           CASE WHEN bool_and(st.avg_width IS NOT NULL) AND i.reltuples > 0 THEN
               1 + ceil(i.reltuples * (ceil((8 + sum(st.avg_width)) / 8.0) * 8 + 4)
                        / ((8192 - 24 - 16) * i.fillfactor / 100.0))
           END AS expected_pages
      FROM idx i
      CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) AS k(attnum)
      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.relid AND a.attnum = k.attnum AND k.attnum > 0
      LEFT JOIN pg_catalog.pg_stats st
             ON st.schemaname = i.schemaname AND st.tablename = i.relname AND st.attname = a.attname
            AND NOT st.inherited
     WHERE i.amname = 'btree' AND i.relpages >= 128
     GROUP BY i.indexrelid, i.reltuples, i.fillfactor
),
bloat AS (
    SELECT i.*,
           CASE WHEN e.expected_pages IS NOT NULL AND i.relpages > e.expected_pages
                THEN 1 - e.expected_pages::float8 / i.relpages ELSE 0 END::float8 AS ratio,
           e.expected_pages IS NOT NULL AS estimated
      FROM idx i LEFT JOIN est e ON e.indexrelid = i.indexrelid
),
pidx AS (
    -- top-level partitioned indexes that are not primary/unique/constraint indexes
    SELECT pc.oid, pn.nspname::text AS schemaname, tc.relname::text AS relname, pc.relname::text AS indexrelname
      FROM pg_catalog.pg_class pc
      JOIN pg_catalog.pg_index x ON x.indexrelid = pc.oid
      JOIN pg_catalog.pg_class tc ON tc.oid = x.indrelid
      JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
     WHERE pc.relkind = 'I' AND NOT pc.relispartition
       AND pn.nspname NOT IN ('pg_catalog', 'information_schema', 'monitoring')
       AND NOT x.indisunique AND NOT x.indisprimary
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = pc.oid)
),
ptree(root, relid) AS (
    -- their partition indexes, walking pg_inherits (pg_partition_tree() would lock every partition)
    SELECT pidx.oid, i.inhrelid FROM pidx JOIN pg_catalog.pg_inherits i ON i.inhparent = pidx.oid
    UNION ALL
    SELECT ptree.root, i.inhrelid FROM ptree JOIN pg_catalog.pg_inherits i ON i.inhparent = ptree.relid
),
partitioned_unused AS (
    -- partitioned indexes whose leaf indexes were never scanned
    SELECT pidx.schemaname, pidx.relname, pidx.indexrelname,
           COALESCE(sum(pg_catalog.pg_relation_size(c.oid)) FILTER (WHERE c.relkind = 'i'), 0)::bigint AS index_bytes
      FROM pidx
      LEFT JOIN ptree ON ptree.root = pidx.oid
      LEFT JOIN pg_catalog.pg_class c ON c.oid = ptree.relid
     GROUP BY pidx.oid, pidx.schemaname, pidx.relname, pidx.indexrelname
    HAVING COALESCE(sum(pg_catalog.pg_stat_get_numscans(c.oid)) FILTER (WHERE c.relkind = 'i'), 0) = 0
)
SELECT b.schemaname, b.relname, b.indexrelname, b.index_bytes, b.idx_scan,
       CASE WHEN b.estimated THEN b.ratio END,
       format('bloated: about %s%% of %s pages are free space (estimate)',
              round((b.ratio * 100)::numeric), b.relpages),
       format('REINDEX INDEX CONCURRENTLY %I.%I', b.schemaname, b.indexrelname)
  FROM bloat b
 WHERE b.estimated AND b.ratio >= 0.3
UNION ALL
SELECT b.schemaname, b.relname, b.indexrelname, b.index_bytes, b.idx_scan,
       CASE WHEN b.estimated THEN b.ratio END,
       'unused: never scanned since the statistics reset on this server; check replicas before dropping',
       format('DROP INDEX CONCURRENTLY %I.%I', b.schemaname, b.indexrelname)
  FROM bloat b
 WHERE b.idx_scan = 0 AND NOT b.is_unique AND NOT b.is_primary AND NOT b.backs_constraint
   AND NOT b.is_partition_index AND b.schemaname <> 'monitoring'
UNION ALL
SELECT p.schemaname, p.relname, p.indexrelname, p.index_bytes, 0::bigint, NULL::float8,
       'unused: partitioned index never scanned in any partition since the statistics reset; check replicas before dropping',
       format('DROP INDEX %I.%I', p.schemaname, p.indexrelname)
  FROM partitioned_unused p
 ORDER BY 7, 4 DESC
$$;
COMMENT ON FUNCTION monitoring.rebuild_bloated_indexes() IS
    'Identifies, but does not rebuild, bloated and unused indexes: REINDEX CONCURRENTLY cannot run inside a '
    'function or transaction block, so the statements are returned for a client to run after review. '
    'Bloated = btree >= 1 MB whose size exceeds the estimate from pg_stats column widths by >= 30% '
    '(statement REINDEX INDEX CONCURRENTLY; needs SELECT on the table for pg_stats, otherwise not estimated). '
    'Unused = idx_scan = 0, not primary/unique/constraint (statement DROP INDEX CONCURRENTLY, or DROP INDEX '
    'for partitioned indexes, where CONCURRENTLY is not supported). Returns: schemaname text, relname text, '
    'indexrelname text, index_bytes bigint, idx_scan bigint, estimated_bloat_ratio double precision (0..1, NULL '
    'when not estimated), reason text, statement text.';

-- ---------------------------------------------------------------------------------------------
-- 12. database_health_check
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.database_health_check()
RETURNS TABLE (check_name text, status text, value text, threshold text, recommendation text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_hit        bigint;
    v_read       bigint;
    v_ratio      double precision;
    v_total      bigint;
    v_max        integer;
    v_rel        text;
    v_count      bigint;
    v_seconds    double precision;
    v_pid        integer;
    v_ext        boolean;
    v_avail      boolean;
    v_preloaded  boolean;
    v_installable boolean;
    v_age        bigint;
BEGIN
    -- Cache Hit Ratio (current database)
    SELECT COALESCE(d.blks_hit, 0), COALESCE(d.blks_read, 0) INTO v_hit, v_read
      FROM pg_catalog.pg_stat_database d WHERE d.datname = pg_catalog.current_database();
    check_name := 'Cache Hit Ratio';
    threshold  := '< 0.95 WARNING';
    IF COALESCE(v_hit, 0) + COALESCE(v_read, 0) = 0 THEN
        status := 'N/A'; value := 'no block accesses yet';
        recommendation := 'No activity recorded since the statistics reset.';
    ELSE
        v_ratio := v_hit::float8 / (v_hit + v_read);
        value := pg_catalog.to_char(v_ratio, 'FM0.0000');
        IF v_ratio < 0.95 THEN
            status := 'WARNING';
            recommendation := format('Only %s of %s block requests were served from shared buffers. Consider a larger '
                                     'shared_buffers, check for sequential scans of large tables '
                                     '(monitoring.get_missing_indexes()).', v_hit, v_hit + v_read);
        ELSE
            status := 'OK'; recommendation := 'None.';
        END IF;
    END IF;
    RETURN NEXT;

    -- Connection Usage (cluster-wide client backends vs max_connections)
    SELECT count(*) INTO v_total FROM pg_catalog.pg_stat_activity a WHERE a.backend_type = 'client backend';
    v_max := pg_catalog.current_setting('max_connections')::integer;
    v_ratio := v_total::float8 / v_max;
    check_name := 'Connection Usage';
    value := pg_catalog.to_char(v_ratio, 'FM0.0000');
    threshold := '> 0.80 WARNING, > 0.95 CRITICAL (of max_connections)';
    IF v_ratio > 0.95 THEN
        status := 'CRITICAL';
    ELSIF v_ratio > 0.80 THEN
        status := 'WARNING';
    ELSE
        status := 'OK';
    END IF;
    recommendation := CASE WHEN status = 'OK' THEN format('%s of %s connections in use.', v_total, v_max)
                           ELSE format('%s of %s connections in use: use a connection pooler (PgBouncer), find idle '
                                       'sessions in monitoring.v_connection_stats, or raise max_connections.',
                                       v_total, v_max) END;
    RETURN NEXT;

    -- Table Bloat (tables with at least 1000 tuples)
    SELECT t.dead_tuple_ratio, format('%I.%I', t.schemaname, t.relname), count(*) OVER ()
      INTO v_ratio, v_rel, v_count
      FROM monitoring.v_table_stats t
     WHERE t.n_live_tup + t.n_dead_tup >= 1000 AND t.dead_tuple_ratio > 0.1
     ORDER BY t.dead_tuple_ratio DESC
     LIMIT 1;
    check_name := 'Table Bloat';
    threshold := '> 0.10 WARNING, > 0.30 CRITICAL dead tuple ratio (tables with >= 1000 tuples)';
    IF v_rel IS NULL THEN
        status := 'OK'; value := '0 tables'; recommendation := 'None.';
    ELSE
        value := format('%s (%s)', pg_catalog.to_char(v_ratio, 'FM0.0000'), v_rel);
        status := CASE WHEN v_ratio > 0.3 THEN 'CRITICAL' ELSE 'WARNING' END;
        recommendation := format('%s table(s) above 10%% dead tuples, worst %s. Run VACUUM (ANALYZE) (see '
                                 'monitoring.get_table_bloat()); above 30%% consider pg_repack; check long '
                                 'transactions and autovacuum settings.', v_count, v_rel);
    END IF;
    RETURN NEXT;

    -- Blocked Sessions
    SELECT count(*), COALESCE(max(b.blocked_wait_seconds), 0)
      INTO v_count, v_seconds
      FROM (SELECT DISTINCT ON (q.blocked_pid) q.blocked_pid, q.blocked_wait_seconds
              FROM monitoring.v_blocking_queries q) b;
    check_name := 'Blocked Sessions';
    value := v_count::text;
    threshold := '>= 1 WARNING, any blocked > 300 s CRITICAL';
    IF v_count = 0 THEN
        status := 'OK'; recommendation := 'None.';
    ELSE
        status := CASE WHEN v_seconds > 300 THEN 'CRITICAL' ELSE 'WARNING' END;
        recommendation := format('%s session(s) wait for locks, longest %s s. See monitoring.v_blocking_queries '
                                 'for the blocking sessions.', v_count, round(v_seconds::numeric));
    END IF;
    RETURN NEXT;

    -- Partition Runway (time-range partitioned tables)
    SELECT h.runway_seconds, format('%I.%I', h.parent_schemaname, h.parent_relname)
      INTO v_seconds, v_rel
      FROM monitoring.v_partition_health h
     WHERE h.time_partitioned AND h.runway_seconds IS NOT NULL
     ORDER BY h.runway_seconds
     LIMIT 1;
    check_name := 'Partition Runway';
    threshold := '< 7 days WARNING, < 2 days CRITICAL';
    IF v_rel IS NULL THEN
        status := 'N/A'; value := 'no time-range partitioned tables';
        recommendation := 'None.';
    ELSE
        value := format('%s days (%s)', round((v_seconds / 86400.0)::numeric, 2), v_rel);
        IF v_seconds < 2 * 86400 THEN
            status := 'CRITICAL';
        ELSIF v_seconds < 7 * 86400 THEN
            status := 'WARNING';
        ELSE
            status := 'OK';
        END IF;
        recommendation := CASE WHEN status = 'OK' THEN 'None.'
                               ELSE format('Future partitions of %s run out soon; rows beyond the last partition go '
                                           'to the DEFAULT partition (or fail). Run SELECT * FROM '
                                           'monitoring.partition_maintenance(); and check the daily_partition_creation job.',
                                           v_rel) END;
    END IF;
    RETURN NEXT;

    -- pg_stat_statements
    v_ext := EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_stat_statements');
    v_avail := monitoring.pg_stat_statements_available();
    BEGIN
        v_preloaded := EXISTS (
            SELECT 1 FROM pg_catalog.unnest(pg_catalog.string_to_array(
                              pg_catalog.current_setting('shared_preload_libraries'), ',')) AS l(lib)
             WHERE pg_catalog.btrim(l.lib, ' "') ~ '(^|/)pg_stat_statements(\.so)?$');
    EXCEPTION WHEN insufficient_privilege THEN
        v_preloaded := v_avail;
    END;
    v_installable := EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions x WHERE x.name = 'pg_stat_statements');
    check_name := 'pg_stat_statements';
    threshold := 'extension installed and preloaded';
    IF v_avail THEN
        status := 'OK'; value := 'available'; recommendation := 'None.';
    ELSE
        status := 'WARNING';
        IF NOT v_preloaded THEN
            value := CASE WHEN v_ext THEN 'installed, not preloaded' ELSE 'not installed, not preloaded' END;
            recommendation := 'Add pg_stat_statements to shared_preload_libraries in postgresql.conf '
                              '(shared_preload_libraries = ''pg_stat_statements'', keeping any libraries already '
                              'listed) and restart PostgreSQL'
                              || CASE WHEN v_ext THEN '.' ELSE ', then run CREATE EXTENSION pg_stat_statements; in this database.' END
                              || CASE WHEN v_installable THEN '' ELSE ' The extension is not available on this server: install the PostgreSQL contrib package first.' END
                              || ' Statement metrics (v_slow_queries, v_top_queries_by_time) stay empty until then.';
        ELSE
            value := 'preloaded, extension not installed';
            recommendation := 'Run CREATE EXTENSION pg_stat_statements; in this database (as a superuser).';
        END IF;
    END IF;
    RETURN NEXT;

    -- Long Running Transactions (client backends, excluding this session)
    SELECT a.pid, extract(epoch FROM statement_timestamp() - a.xact_start)::float8
      INTO v_pid, v_seconds
      FROM pg_catalog.pg_stat_activity a
     WHERE a.backend_type = 'client backend' AND a.xact_start IS NOT NULL
       AND a.pid <> pg_catalog.pg_backend_pid()
     ORDER BY a.xact_start
     LIMIT 1;
    check_name := 'Long Running Transactions';
    threshold := '> 300 s WARNING, > 3600 s CRITICAL';
    IF v_pid IS NULL THEN
        status := 'OK'; value := '0 s'; recommendation := 'None.';
    ELSE
        value := format('%s s (pid %s)', round(GREATEST(v_seconds, 0)::numeric), v_pid);
        IF v_seconds > 3600 THEN
            status := 'CRITICAL';
        ELSIF v_seconds > 300 THEN
            status := 'WARNING';
        ELSE
            status := 'OK';
        END IF;
        recommendation := CASE WHEN status = 'OK' THEN 'None.'
                               ELSE format('The oldest open transaction (pid %s) blocks VACUUM cleanup and may hold '
                                           'locks; see monitoring.v_connection_stats, end it with '
                                           'pg_terminate_backend(%s) if it is stuck, set '
                                           'idle_in_transaction_session_timeout.', v_pid, v_pid) END;
    END IF;
    RETURN NEXT;

    -- Transaction ID Age (wraparound protection)
    SELECT pg_catalog.age(d.datfrozenxid) INTO v_age
      FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database();
    check_name := 'Transaction ID Age';
    value := v_age::text;
    threshold := '> 1000000000 WARNING, > 1500000000 CRITICAL';
    status := CASE WHEN v_age > 1500000000 THEN 'CRITICAL' WHEN v_age > 1000000000 THEN 'WARNING' ELSE 'OK' END;
    recommendation := CASE WHEN status = 'OK' THEN 'None.'
                           ELSE 'Transaction ID wraparound approaches: check that autovacuum keeps up, end long '
                                'transactions and stale replication slots, and VACUUM (FREEZE) the oldest tables.' END;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION monitoring.database_health_check() IS
    'Health summary, one row per check, in this order: Cache Hit Ratio, Connection Usage, Table Bloat, Blocked '
    'Sessions, Partition Runway, pg_stat_statements, Long Running Transactions, Transaction ID Age. Returns: '
    'check_name text, status text (exactly OK, WARNING, CRITICAL or N/A), value text (measured value; ratios in '
    '0..1), threshold text, recommendation text (''None.'' when OK).';

-- ---------------------------------------------------------------------------------------------
-- 13. reset_query_stats
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.reset_query_stats()
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_nsp text;
BEGIN
    IF NOT monitoring.pg_stat_statements_available() THEN
        RETURN false;
    END IF;
    SELECT n.nspname INTO v_nsp
      FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_stat_statements';
    BEGIN
        EXECUTE format('SELECT %I.pg_stat_statements_reset()', v_nsp);
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'pgpulse: % may not reset pg_stat_statements: %', current_user, SQLERRM
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('As a superuser: GRANT EXECUTE ON FUNCTION %I.pg_stat_statements_reset(oid, oid, bigint) TO pgpulse_maintainer;', v_nsp);
    END;
    RETURN true;
END
$$;
COMMENT ON FUNCTION monitoring.reset_query_stats() IS
    'Resets pg_stat_statements (all statements of the cluster). Returns boolean: true when reset, false when '
    'pg_stat_statements is unavailable. pg_stat_statements_reset() is superuser-only unless granted; the error '
    'says which GRANT is needed.';

-- ---------------------------------------------------------------------------------------------
-- 14. run_scheduled_maintenance
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION monitoring.run_scheduled_maintenance(p_job_name text)
RETURNS TABLE (
    log_id      bigint,
    job_name    text,
    status      text,
    started_at  timestamptz,
    finished_at timestamptz,
    details     jsonb,
    error       text
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_job      record;
    v_func     text;
    v_arg      text;
    v_started  timestamptz := pg_catalog.clock_timestamp();
    v_finished timestamptz;
    v_status   text;
    v_details  jsonb;
    v_error    text;
    v_result   jsonb;
    v_rows     bigint;
    v_id       bigint;
    -- functions a job may call (no arguments or one integer argument)
    v_allowed  constant text[] := ARRAY[
        'get_query_performance', 'get_table_bloat', 'get_missing_indexes', 'analyze_partition_usage',
        'create_future_order_partitions', 'create_future_trade_partitions', 'archive_old_partitions',
        'run_maintenance_vacuum', 'update_table_statistics', 'partition_maintenance',
        'rebuild_bloated_indexes', 'database_health_check', 'reset_query_stats'];
    v_match    text[];
BEGIN
    SELECT s.job_name, s.function_call, s.enabled INTO v_job
      FROM monitoring.maintenance_schedule s
     WHERE s.job_name = p_job_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgpulse: unknown maintenance job "%"', p_job_name
            USING ERRCODE = 'no_data_found',
                  HINT = 'Known jobs: ' || COALESCE((SELECT string_agg(s.job_name, ', ' ORDER BY s.job_name)
                                                       FROM monitoring.maintenance_schedule s), 'none');
    END IF;

    BEGIN
        -- function_call is not executed as free SQL: only "[SELECT * FROM] monitoring.<allowed>([integer])".
        v_match := pg_catalog.regexp_match(v_job.function_call,
            '^\s*(?:select\s+(?:\*\s+from\s+)?)?monitoring\.([a-z_]+)\(\s*(\d*)\s*\)\s*;?\s*$', 'i');
        IF v_match IS NULL OR NOT (pg_catalog.lower(v_match[1]) = ANY (v_allowed)) THEN
            RAISE EXCEPTION 'pgpulse: maintenance job "%" has an unsupported function_call: %', p_job_name, v_job.function_call
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'function_call must be monitoring.<function>() or monitoring.<function>(<integer>) for one of: '
                             || pg_catalog.array_to_string(v_allowed, ', ');
        END IF;
        v_func := pg_catalog.lower(v_match[1]);
        v_arg  := v_match[2];

        IF v_func = 'reset_query_stats' THEN
            EXECUTE 'SELECT pg_catalog.to_jsonb(monitoring.reset_query_stats())' INTO v_result;
            v_rows := 1;
        ELSE
            EXECUTE format(
                'SELECT count(*), COALESCE(pg_catalog.jsonb_agg(j) FILTER (WHERE n <= 20), ''[]''::jsonb)
                   FROM (SELECT row_number() OVER () AS n,
                                CASE WHEN pg_catalog.to_jsonb(r) ? ''query''
                                     THEN pg_catalog.to_jsonb(r) || pg_catalog.jsonb_build_object(''query'', left(pg_catalog.to_jsonb(r)->>''query'', 200))
                                     ELSE pg_catalog.to_jsonb(r) END AS j
                           FROM monitoring.%I(%s) r) x',
                v_func, v_arg)
               INTO v_rows, v_result;
        END IF;
        v_details := pg_catalog.jsonb_build_object(
            'function_call', v_job.function_call,
            'enabled', v_job.enabled,
            'rows', v_rows,
            'result', v_result,
            'result_truncated', v_rows > 20);
        IF v_func = 'run_maintenance_vacuum' THEN
            -- VACUUM cannot run here; the client (pgpulse maintenance runner) runs these statements.
            EXECUTE 'SELECT COALESCE(pg_catalog.jsonb_agg(v.statement), ''[]''::jsonb) FROM monitoring.run_maintenance_vacuum() v'
               INTO v_result;
            v_details := v_details || pg_catalog.jsonb_build_object(
                'client_must_run', true,
                'statements', v_result,
                'note', 'VACUUM cannot run inside a function or transaction; run each statement from the client, outside a transaction block.');
        ELSIF v_func = 'get_query_performance' THEN
            v_details := v_details || pg_catalog.jsonb_build_object(
                'pg_stat_statements_available', monitoring.pg_stat_statements_available());
        END IF;
        v_status := 'success';
    EXCEPTION WHEN OTHERS THEN
        v_status  := 'failed';
        v_error   := SQLSTATE || ': ' || SQLERRM;
        v_details := pg_catalog.jsonb_build_object('function_call', v_job.function_call, 'enabled', v_job.enabled);
    END;
    v_finished := pg_catalog.clock_timestamp();

    INSERT INTO monitoring.maintenance_log AS l (job_name, started_at, finished_at, status, details, error)
    VALUES (p_job_name, v_started, v_finished, v_status, v_details, v_error)
    RETURNING l.id INTO v_id;
    UPDATE monitoring.maintenance_schedule s
       SET last_run = v_started, last_status = v_status
     WHERE s.job_name = p_job_name;

    log_id      := v_id;
    job_name    := p_job_name;
    status      := v_status;
    started_at  := v_started;
    finished_at := v_finished;
    details     := v_details;
    error       := v_error;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION monitoring.run_scheduled_maintenance(text) IS
    'Runs one job of monitoring.maintenance_schedule now (also when disabled): calls its function_call (restricted to '
    '[SELECT * FROM] monitoring.<function>([integer]) of the 13 other functions), logs a row in '
    'monitoring.maintenance_log and updates last_run/last_status. A failing job is rolled back, logged with '
    'status ''failed'' and the error, and does not raise. Unknown job name: raises no_data_found. For '
    'weekly_vacuum (run_maintenance_vacuum) nothing is vacuumed here: details->''statements'' lists the '
    'VACUUM (ANALYZE) statements the client must run (details->>''client_must_run'' = true). Returns one row: '
    'log_id bigint, job_name text, status text (success/failed), started_at timestamptz, finished_at '
    'timestamptz, details jsonb (function_call, enabled, rows, result: first 20 result rows with query texts '
    'cut to 200 characters, result_truncated), error text (NULL on success). An invalid function_call is '
    'logged as failed.';

-- ---------------------------------------------------------------------------------------------
-- Privileges (nothing for PUBLIC)
-- ---------------------------------------------------------------------------------------------
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA monitoring FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    monitoring.get_query_performance(interval),
    monitoring.get_table_bloat(),
    monitoring.get_missing_indexes(),
    monitoring.analyze_partition_usage(),
    monitoring.run_maintenance_vacuum(),
    monitoring.rebuild_bloated_indexes(),
    monitoring.database_health_check()
TO pgpulse_monitor, pgpulse_maintainer;

GRANT EXECUTE ON FUNCTION
    monitoring.create_future_partitions(text, text, integer),
    monitoring.create_future_order_partitions(integer),
    monitoring.create_future_trade_partitions(integer),
    monitoring.archive_old_partitions(integer),
    monitoring.update_table_statistics(),
    monitoring.partition_maintenance(),
    monitoring.reset_query_stats(),
    monitoring.run_scheduled_maintenance(text)
TO pgpulse_maintainer;
