-- V017: monitoring.health_report() reads pg_available_extensions (every extension's control
-- file on disk, about 2 ms) only when its pg_stat_statements advice needs it: when the
-- extension is not preloaded. Same columns, rows and texts as V016's; pgpulse runs the report
-- once a minute per database.

CREATE OR REPLACE FUNCTION monitoring.health_report(
    p_bloat_schema   text,
    p_bloat_table    text,
    p_bloat_ratio    double precision,
    p_bloat_tables   bigint,
    p_runway_schema  text,
    p_runway_table   text,
    p_runway_end     timestamptz)
RETURNS TABLE (check_name text, status text, value text, threshold text, recommendation text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
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

    -- Table Bloat: the worst table, measured by the caller
    v_ratio := p_bloat_ratio;
    v_count := p_bloat_tables;
    v_rel := CASE WHEN p_bloat_table IS NOT NULL THEN format('%I.%I', p_bloat_schema, p_bloat_table) END;
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

    -- Partition Runway: the table whose newest partition ends first, found by the caller
    v_seconds := extract(epoch FROM p_runway_end - now())::float8;
    v_rel := CASE WHEN p_runway_table IS NOT NULL AND p_runway_end IS NOT NULL
                  THEN format('%I.%I', p_runway_schema, p_runway_table) END;
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
    check_name := 'pg_stat_statements';
    threshold := 'extension installed and preloaded';
    IF v_avail THEN
        status := 'OK'; value := 'available'; recommendation := 'None.';
    ELSE
        status := 'WARNING';
        IF NOT v_preloaded THEN
            -- Reads every extension's control file: only when the advice needs it.
            v_installable := EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions x
                                      WHERE x.name = 'pg_stat_statements');
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
COMMENT ON FUNCTION monitoring.health_report(text, text, double precision, bigint, text, text, timestamptz) IS
    'Helper. The rows of database_health_check() (same columns, same order, same texts) with its two checks that '
    'walk every relation given as arguments: p_bloat_schema/p_bloat_table (NULL: no table above the threshold), '
    'p_bloat_ratio (its dead tuple ratio) and p_bloat_tables (how many tables are above it); '
    'p_runway_schema/p_runway_table/p_runway_end (the time-range partitioned table whose newest non-DEFAULT '
    'partition ends first, and that end; NULL: none). pgpulse passes them from its relation pass; the other six '
    'checks are read here.';
