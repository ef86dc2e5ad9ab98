-- pgpulse V008: the same views and functions, cheaper at 10,000 partitions (issue 14).
--
-- Columns, rows and values are unchanged; tests compare each with its former definition.
-- 1. partition_bounds() deparses bounds with pg_get_expr(relpartbound, 0): a bound holds only
--    constants, so the text is identical, and no partition is opened (and locked) to name it;
--    it parses only the bounds of time-range partitions, by position instead of a regex.
-- 2. v_partition_health sums the leaves of every partitioned table in one recursive walk of
--    pg_inherits instead of one walk per parent.
-- 3. database_health_check() reads the bloat check from pg_class and the statistics functions
--    (no table sizes) and the runway check from the bounds of time-range partitioned tables
--    only (no sizes, no counting of DEFAULT partitions): the two checks that made it walk every partition's files.

CREATE OR REPLACE FUNCTION monitoring.partition_bounds(p_parent oid DEFAULT NULL)
RETURNS TABLE (
    parent_oid            oid,
    parent_schemaname     text,
    parent_relname        text,
    partition_oid         oid,
    partition_schemaname  text,
    partition_relname     text,
    partition_strategy    text,
    key_type              regtype,
    is_default            boolean,
    partition_bound       text,
    range_start           timestamptz,
    range_end             timestamptz,
    range_end_is_maxvalue boolean
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- pg_get_expr prints bound literals with the session's DateStyle/TimeZone, and abbreviations such as
-- IST are ambiguous when read back: print and parse them in ISO/UTC.
SET datestyle = 'ISO, YMD'
SET timezone = 'UTC'
AS $$
SELECT p.oid,
       pn.nspname::text,
       p.relname::text,
       c.oid,
       cn.nspname::text,
       c.relname::text,
       CASE pt.partstrat WHEN 'r' THEN 'range' WHEN 'l' THEN 'list' WHEN 'h' THEN 'hash' END,
       ka.atttypid::regtype,
       c.oid = pt.partdefid,
       x.bound,
       CASE WHEN pt.partstrat = 'r' THEN
           CASE ka.atttypid
               WHEN 'timestamptz'::regtype::oid THEN x.lo::timestamptz
               WHEN 'timestamp'::regtype::oid   THEN x.lo::timestamp AT TIME ZONE 'UTC'
               WHEN 'date'::regtype::oid        THEN x.lo::date::timestamp AT TIME ZONE 'UTC'
           END
       END,
       CASE WHEN pt.partstrat = 'r' THEN
           CASE ka.atttypid
               WHEN 'timestamptz'::regtype::oid THEN x.hi::timestamptz
               WHEN 'timestamp'::regtype::oid   THEN x.hi::timestamp AT TIME ZONE 'UTC'
               WHEN 'date'::regtype::oid        THEN x.hi::date::timestamp AT TIME ZONE 'UTC'
           END
       END,
       pt.partstrat = 'r' AND x.bound ~ ' TO \(MAXVALUE'
  FROM pg_catalog.pg_partitioned_table pt
  JOIN pg_catalog.pg_class p      ON p.oid = pt.partrelid
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
  JOIN pg_catalog.pg_inherits i   ON i.inhparent = p.oid
  JOIN pg_catalog.pg_class c      ON c.oid = i.inhrelid
  JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attribute ka
         ON ka.attrelid = p.oid AND pt.partattrs[0] <> 0 AND ka.attnum = pt.partattrs[0]
  CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, 0) AS bound) b0
  -- Only bounds of time-range partitions are parsed (their literals hold no quote, so the
  -- text up to the next quote is the literal), without a regular expression.
  CROSS JOIN LATERAL (
      SELECT b0.bound,
             CASE WHEN pt.partstrat = 'r'
                   AND ka.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
                   AND pg_catalog.strpos(b0.bound, 'FROM (''') > 0
                  THEN pg_catalog.split_part(pg_catalog.substr(b0.bound, pg_catalog.strpos(b0.bound, 'FROM (''') + 7), '''', 1)
             END AS lo,
             CASE WHEN pt.partstrat = 'r'
                   AND ka.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
                   AND pg_catalog.strpos(b0.bound, ' TO (''') > 0
                  THEN pg_catalog.split_part(pg_catalog.substr(b0.bound, pg_catalog.strpos(b0.bound, ' TO (''') + 6), '''', 1)
             END AS hi
  ) x
 WHERE p_parent IS NULL OR pt.partrelid = p_parent
$$;
COMMENT ON FUNCTION monitoring.partition_bounds(oid) IS
    'Helper. One row per direct partition of every partitioned table (or of p_parent only): parent_oid oid, '
    'parent_schemaname text, parent_relname text, partition_oid oid, partition_schemaname text, '
    'partition_relname text, partition_strategy text (range/list/hash), key_type regtype (first key column; '
    'NULL for expression keys), is_default boolean, partition_bound text (pg_get_expr of relpartbound), '
    'range_start timestamptz, range_end timestamptz (parsed from FROM/TO of range partitions whose first '
    'key column is timestamptz, timestamp or date; timestamp and date bounds are read as UTC; NULL for '
    'MINVALUE/MAXVALUE, DEFAULT and non-time keys), range_end_is_maxvalue boolean. '
    'Catalog-only (pg_get_expr without opening the partition), no per-partition locks: fine for 10,000 partitions.';

CREATE OR REPLACE VIEW monitoring.v_partition_health AS
WITH RECURSIVE b AS (
    SELECT * FROM monitoring.partition_bounds()
),
-- every partition with each of its ancestors, built once for all parents (not once per parent)
tree(ancestor, relid) AS (
    SELECT i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_partitioned_table t ON t.partrelid = i.inhparent
    UNION ALL
    SELECT tree.ancestor, i.inhrelid FROM tree JOIN pg_catalog.pg_inherits i ON i.inhparent = tree.relid
),
leaves AS (
    SELECT tree.ancestor,
           sum(pg_catalog.pg_total_relation_size(c.oid)) AS total_bytes,
           sum(pg_catalog.pg_stat_get_live_tuples(c.oid)) AS total_rows
      FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid
     WHERE c.relkind IN ('r', 'm')
     GROUP BY tree.ancestor
),
agg AS (
    SELECT b.parent_oid,
           count(*) AS partition_count,
           max(b.range_end)   FILTER (WHERE NOT b.is_default) AS newest_upper_bound,
           min(b.range_start) FILTER (WHERE NOT b.is_default) AS oldest_lower_bound,
           bool_or(b.range_end_is_maxvalue) AS has_maxvalue_partition
      FROM b GROUP BY b.parent_oid
)
SELECT p.oid              AS parent_oid,
       pn.nspname::text   AS parent_schemaname,
       p.relname::text    AS parent_relname,
       CASE pt.partstrat WHEN 'r' THEN 'range' WHEN 'l' THEN 'list' WHEN 'h' THEN 'hash' END AS partition_strategy,
       pg_catalog.pg_get_partkeydef(p.oid) AS partition_key,
       COALESCE(pt.partstrat = 'r' AND ka.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype),
                false) AS time_partitioned,
       COALESCE(agg.partition_count, 0) AS partition_count,
       COALESCE(z.total_bytes, 0)::bigint AS total_bytes,
       COALESCE(z.total_rows, 0)::bigint  AS total_rows,
       d.relname::text AS default_partition,
       CASE WHEN pt.partdefid <> 0 THEN COALESCE(monitoring.default_partition_rows(pt.partdefid), 0) ELSE 0 END
           AS default_partition_rows,
       agg.oldest_lower_bound,
       agg.newest_upper_bound,
       CASE WHEN pt.partstrat = 'r' AND NOT COALESCE(agg.has_maxvalue_partition, false)
            THEN extract(epoch FROM agg.newest_upper_bound - now())::float8 END AS runway_seconds
  FROM pg_catalog.pg_partitioned_table pt
  JOIN pg_catalog.pg_class p      ON p.oid = pt.partrelid
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
  LEFT JOIN pg_catalog.pg_attribute ka
         ON ka.attrelid = p.oid AND pt.partattrs[0] <> 0 AND ka.attnum = pt.partattrs[0]
  LEFT JOIN pg_catalog.pg_class d ON d.oid = pt.partdefid
  LEFT JOIN agg ON agg.parent_oid = p.oid
  LEFT JOIN leaves z ON z.ancestor = p.oid
 WHERE pn.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY pn.nspname, p.relname;
COMMENT ON VIEW monitoring.v_partition_health IS
    'One row per partitioned table. partition_count = direct partitions (including DEFAULT); total_bytes and '
    'total_rows (n_live_tup estimate) sum all leaf partitions; default_partition (NULL when none) and '
    'default_partition_rows (exact count up to 100000; 0 when no DEFAULT); newest_upper_bound = highest TO bound '
    'of non-default range partitions on a timestamptz/timestamp/date key; runway_seconds = newest_upper_bound - '
    'now() in seconds, NULL when bounds are not time-based or a partition extends to MAXVALUE.';

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
      FROM (SELECT n.nspname AS schemaname, c.relname,
                   pg_catalog.pg_stat_get_live_tuples(c.oid) AS n_live_tup,
                   pg_catalog.pg_stat_get_dead_tuples(c.oid) AS n_dead_tup,
                   CASE WHEN pg_catalog.pg_stat_get_live_tuples(c.oid) + pg_catalog.pg_stat_get_dead_tuples(c.oid) > 0
                        THEN pg_catalog.pg_stat_get_dead_tuples(c.oid)::float8
                             / (pg_catalog.pg_stat_get_live_tuples(c.oid) + pg_catalog.pg_stat_get_dead_tuples(c.oid))
                        ELSE 0::float8 END AS dead_tuple_ratio
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'm')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast') t
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
      FROM (SELECT pn.nspname AS parent_schemaname, p.relname AS parent_relname,
                   extract(epoch FROM max(b.range_end) FILTER (WHERE NOT b.is_default) - now())::float8 AS runway_seconds
              FROM pg_catalog.pg_partitioned_table pt
              JOIN pg_catalog.pg_class p ON p.oid = pt.partrelid
              JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
              JOIN pg_catalog.pg_attribute ka
                ON ka.attrelid = p.oid AND pt.partattrs[0] <> 0 AND ka.attnum = pt.partattrs[0]
              -- bounds of time-range partitioned tables only, one parent at a time
              CROSS JOIN LATERAL monitoring.partition_bounds(p.oid) b
             WHERE pt.partstrat = 'r'
               AND ka.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
               AND pn.nspname NOT IN ('pg_catalog', 'information_schema')
             GROUP BY pn.nspname, p.relname
            HAVING NOT bool_or(b.range_end_is_maxvalue)) h
     WHERE h.runway_seconds IS NOT NULL
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
