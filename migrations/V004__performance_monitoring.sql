-- V004: performance monitoring — extensions, roles, helper functions and the 13 monitoring views.
--
-- Executed by the pgpulse migration runner as ONE simple-query batch inside a transaction
-- (the runner issues BEGIN/COMMIT and holds pg_advisory_lock).  Therefore: no BEGIN/COMMIT,
-- no psql meta-commands, no CONCURRENTLY, no VACUUM.
--
-- Applies to any PostgreSQL 15 database: with or without the trade-engine tables, with or
-- without pg_stat_statements installed or preloaded.  Nothing here references
-- pg_stat_statements statically; monitoring.statement_stats() reads it dynamically.
--
-- Roles are cluster-wide.  Several databases of one cluster may be migrated concurrently, so
-- role creation and membership grants tolerate both duplicate_object and unique_violation.
-- Roles created by pgpulse carry the comment 'created by pgpulse' (pg_shdescription, shared), so
-- every database that installs pgpulse knows whether uninstall may drop them.

CREATE SCHEMA IF NOT EXISTS monitoring;
COMMENT ON SCHEMA monitoring IS
    'pgpulse monitoring schema: 13 views, 14 functions, maintenance schedule (see migrations V004..V006).';

-- ---------------------------------------------------------------------------------------------
-- Extensions: best effort.  Failure (not installed, no privilege) is a NOTICE, never an error.
-- They are created in the default creation schema; pgpulse looks the schema up at run time.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    v_ext text;
BEGIN
    FOREACH v_ext IN ARRAY ARRAY['pg_stat_statements', 'pg_trgm', 'btree_gist'] LOOP
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = v_ext) THEN
                EXECUTE format('CREATE EXTENSION IF NOT EXISTS %I', v_ext);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pgpulse: extension % not created (%: %); continuing without it',
                v_ext, SQLSTATE, SQLERRM;
        END;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Roles
--   pgpulse_monitor     NOLOGIN, read-only sampling role: member of pg_monitor, USAGE on
--                       monitoring, SELECT on the views, EXECUTE on read-only functions.
--   pgpulse_maintainer  NOLOGIN, maintenance role: everything the monitor has plus EXECUTE on the
--                       write functions and write access to the maintenance tables (V006).
-- Grant them to login roles, e.g. GRANT pgpulse_monitor TO pgpulse_exporter_login.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS monitoring.installed_roles (
    role_name          text PRIMARY KEY,
    created_by_pgpulse boolean NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE monitoring.installed_roles IS
    'Roles pgpulse uses; created_by_pgpulse = true when pgpulse created the role (in this or another '
    'database of the cluster), so uninstall.sql may drop it. Pre-existing roles are never dropped.';

DO $$
DECLARE
    v_role    text;
    v_created boolean;
    v_marker  constant text := 'created by pgpulse';
BEGIN
    FOREACH v_role IN ARRAY ARRAY['pgpulse_monitor', 'pgpulse_maintainer'] LOOP
        v_created := false;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
                EXECUTE format('COMMENT ON ROLE %I IS %L', v_role,
                    v_marker || ' (monitoring schema roles; dropped by pgpulse uninstall when unused)');
                v_created := true;
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    -- created concurrently by a migration of another database of this cluster
                    RAISE NOTICE 'pgpulse: role % was created concurrently; reusing it', v_role;
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'pgpulse: cannot create role %: %', v_role, SQLERRM
                        USING HINT = 'Run the migration as a superuser or a role with CREATEROLE, '
                                  || 'or create the roles pgpulse_monitor and pgpulse_maintainer '
                                  || '(NOLOGIN) beforehand.';
            END;
        END IF;
        IF NOT v_created THEN
            SELECT COALESCE(pg_catalog.shobj_description(r.oid, 'pg_authid') LIKE v_marker || '%', false)
              INTO v_created
              FROM pg_catalog.pg_roles r
             WHERE r.rolname = v_role;
        END IF;
        INSERT INTO monitoring.installed_roles AS ir (role_name, created_by_pgpulse)
        VALUES (v_role, COALESCE(v_created, false))
        ON CONFLICT (role_name) DO UPDATE
            SET created_by_pgpulse = ir.created_by_pgpulse OR EXCLUDED.created_by_pgpulse;
    END LOOP;

    -- pg_monitor membership (pg_read_all_stats, pg_read_all_settings, pg_stat_scan_tables).
    FOREACH v_role IN ARRAY ARRAY['pgpulse_monitor', 'pgpulse_maintainer'] LOOP
        IF NOT pg_catalog.pg_has_role(v_role, 'pg_monitor', 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT pg_monitor TO %I', v_role);
            EXCEPTION
                WHEN unique_violation OR duplicate_object THEN
                    NULL;  -- granted concurrently by another database's migration
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'pgpulse: could not GRANT pg_monitor TO % (%); ask a superuser to run it, '
                                 'otherwise query texts and settings of other users stay hidden', v_role, SQLERRM;
            END;
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA monitoring TO pgpulse_monitor, pgpulse_maintainer;

-- ---------------------------------------------------------------------------------------------
-- Helper functions used by the views (read-only; EXECUTE granted to both roles below).
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION monitoring.pg_stat_statements_available()
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_nsp     text;
    v_preload text;
BEGIN
    SELECT n.nspname INTO v_nsp
      FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_stat_statements';
    IF v_nsp IS NULL THEN
        RETURN false;
    END IF;
    BEGIN
        v_preload := pg_catalog.current_setting('shared_preload_libraries');
    EXCEPTION WHEN insufficient_privilege THEN
        -- Caller lacks pg_read_all_settings: probe the view instead.
        BEGIN
            EXECUTE format('SELECT 1 FROM %I.pg_stat_statements(false) LIMIT 1', v_nsp);
            RETURN true;
        EXCEPTION WHEN OTHERS THEN
            RETURN false;
        END;
    END;
    RETURN EXISTS (
        SELECT 1
          FROM pg_catalog.unnest(pg_catalog.string_to_array(COALESCE(v_preload, ''), ',')) AS l(lib)
         WHERE pg_catalog.btrim(l.lib, ' "') ~ '(^|/)pg_stat_statements(\.so)?$');
END
$$;
COMMENT ON FUNCTION monitoring.pg_stat_statements_available() IS
    'Helper. Returns boolean: true when the pg_stat_statements extension is installed in this database '
    'AND pg_stat_statements is in shared_preload_libraries (so its view can be read). Never errors.';

CREATE OR REPLACE FUNCTION monitoring.statement_stats()
RETURNS TABLE (
    queryid             bigint,
    userid              oid,
    dbid                oid,
    username            text,
    datname             text,
    query               text,
    calls               bigint,
    total_exec_time_ms  double precision,
    mean_exec_time_ms   double precision,
    stddev_exec_time_ms double precision,
    rows                bigint,
    shared_blks_hit     bigint,
    shared_blks_read    bigint
)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_nsp    text;
    v_prefix text := 'exec_';
BEGIN
    IF NOT monitoring.pg_stat_statements_available() THEN
        RETURN;
    END IF;
    SELECT n.nspname INTO v_nsp
      FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_stat_statements';
    -- extension versions before 1.8 call the columns total_time/mean_time/stddev_time
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = format('%I.pg_stat_statements', v_nsp)::regclass
           AND a.attname = 'total_exec_time' AND NOT a.attisdropped) THEN
        v_prefix := '';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT s.queryid, s.userid, s.dbid, r.rolname::text, d.datname::text, s.query, s.calls,'
        '       s.total_%1$stime::float8, s.mean_%1$stime::float8, s.stddev_%1$stime::float8,'
        '       s.rows, s.shared_blks_hit, s.shared_blks_read'
        '  FROM %2$I.pg_stat_statements s'
        '  LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.userid'
        '  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid',
        v_prefix, v_nsp);
END
$$;
COMMENT ON FUNCTION monitoring.statement_stats() IS
    'Helper. Rows of pg_stat_statements (all databases of the cluster, cumulative since the last reset), '
    'read dynamically from whatever schema the extension lives in; zero rows when '
    'monitoring.pg_stat_statements_available() is false. Columns: queryid bigint, userid oid, dbid oid, '
    'username text, datname text, query text, calls bigint, total_exec_time_ms, mean_exec_time_ms, '
    'stddev_exec_time_ms double precision (milliseconds), rows bigint, shared_blks_hit bigint, '
    'shared_blks_read bigint. Query texts of other users need pg_read_all_stats (pg_monitor).';

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
  CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) b0
  CROSS JOIN LATERAL (
      SELECT b0.bound,
             replace(substring(b0.bound FROM $re$FROM \('((?:[^']|'')*)'$re$), '''''', '''') AS lo,
             replace(substring(b0.bound FROM $re$ TO \('((?:[^']|'')*)'$re$), '''''', '''') AS hi
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
    'Catalog-only (pg_get_expr), no per-partition locks: fine for 10,000 partitions.';

-- SECURITY DEFINER (unavoidable): counting the rows of a DEFAULT partition needs SELECT on it, which the
-- read-only monitor role does not have.  The function only accepts relations that are the DEFAULT partition
-- of a partitioned table and returns only a number.  Exact up to 100,000 rows; above that the count is
-- capped and the statistics estimate (n_live_tup) is returned when larger.
CREATE OR REPLACE FUNCTION monitoring.default_partition_rows(p_partition oid)
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cap   constant bigint := 100000;
    v_count bigint;
    v_est   bigint;
BEGIN
    IF p_partition IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_partitioned_table pt WHERE pt.partdefid = p_partition) THEN
        RETURN NULL;
    END IF;
    v_est := COALESCE(pg_catalog.pg_stat_get_live_tuples(p_partition), 0);
    BEGIN
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s LIMIT %s) s',
                       p_partition::regclass, v_cap + 1)
           INTO v_count;
    EXCEPTION WHEN insufficient_privilege OR undefined_table THEN
        RETURN v_est;
    END;
    IF v_count > v_cap THEN
        RETURN GREATEST(v_count, v_est);
    END IF;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION monitoring.default_partition_rows(oid) IS
    'Helper (SECURITY DEFINER, read-only). Returns bigint: number of rows in the given DEFAULT partition '
    '(exact up to 100000, else max(capped count, n_live_tup)); NULL when the relation is not a DEFAULT partition.';

-- ---------------------------------------------------------------------------------------------
-- Views
-- Units: bytes, seconds (except *_ms columns, milliseconds as in pg_stat_statements), ratios in 0..1.
-- Partitions carry parent_schemaname/parent_relname so that consumers can roll them up.
-- ---------------------------------------------------------------------------------------------

-- 1. v_slow_queries
CREATE OR REPLACE VIEW monitoring.v_slow_queries AS
SELECT s.queryid,
       s.userid,
       s.dbid,
       s.username,
       s.datname,
       s.query,
       s.calls,
       s.total_exec_time_ms,
       s.mean_exec_time_ms,
       s.stddev_exec_time_ms,
       s.total_exec_time_ms / 1000.0 AS total_exec_time_seconds,
       s.mean_exec_time_ms / 1000.0  AS mean_exec_time_seconds,
       s.rows,
       s.shared_blks_hit,
       s.shared_blks_read,
       CASE WHEN s.shared_blks_hit + s.shared_blks_read > 0
            THEN s.shared_blks_hit::float8 / (s.shared_blks_hit + s.shared_blks_read) END AS cache_hit_ratio
  FROM monitoring.statement_stats() s
 WHERE s.mean_exec_time_ms > 100
 ORDER BY s.mean_exec_time_ms DESC;
COMMENT ON VIEW monitoring.v_slow_queries IS
    'Statements with mean execution time > 100 ms (pg_stat_statements, cumulative since last reset; '
    'empty when pg_stat_statements is unavailable).';

-- 2. v_top_queries_by_time
CREATE OR REPLACE VIEW monitoring.v_top_queries_by_time AS
SELECT t.rank,
       t.queryid, t.userid, t.dbid, t.username, t.datname, t.query, t.calls,
       t.total_exec_time_ms, t.mean_exec_time_ms, t.stddev_exec_time_ms,
       t.total_exec_time_ms / 1000.0 AS total_exec_time_seconds,
       t.mean_exec_time_ms / 1000.0  AS mean_exec_time_seconds,
       t.share_of_total_time,
       t.rows, t.shared_blks_hit, t.shared_blks_read
  FROM (SELECT row_number() OVER (ORDER BY s.total_exec_time_ms DESC, s.queryid) AS rank,
               s.*,
               CASE WHEN sum(s.total_exec_time_ms) OVER () > 0
                    THEN s.total_exec_time_ms / sum(s.total_exec_time_ms) OVER () ELSE 0 END
                   AS share_of_total_time
          FROM monitoring.statement_stats() s) t
 WHERE t.rank <= 50
 ORDER BY t.rank;
COMMENT ON VIEW monitoring.v_top_queries_by_time IS
    'Top 50 statements by total execution time (pg_stat_statements, cumulative since last reset); '
    'share_of_total_time in 0..1; empty when pg_stat_statements is unavailable.';

-- 3. v_table_stats
CREATE OR REPLACE VIEW monitoring.v_table_stats AS
SELECT s.relid,
       s.schemaname::text AS schemaname,
       s.relname::text    AS relname,
       pn.nspname::text   AS parent_schemaname,
       pc.relname::text   AS parent_relname,
       s.n_live_tup,
       s.n_dead_tup,
       CASE WHEN s.n_live_tup + s.n_dead_tup > 0
            THEN s.n_dead_tup::float8 / (s.n_live_tup + s.n_dead_tup) ELSE 0::float8 END AS dead_tuple_ratio,
       s.seq_scan,
       s.seq_tup_read,
       COALESCE(s.idx_scan, 0)      AS idx_scan,
       COALESCE(s.idx_tup_fetch, 0) AS idx_tup_fetch,
       s.n_tup_ins,
       s.n_tup_upd,
       s.n_tup_del,
       s.n_tup_hot_upd,
       s.n_mod_since_analyze,
       s.n_ins_since_vacuum,
       COALESCE(z.table_bytes, 0) + COALESCE(z.index_bytes, 0) AS total_bytes,
       COALESCE(z.table_bytes, 0) AS table_bytes,
       COALESCE(z.index_bytes, 0) AS index_bytes,
       s.last_vacuum,
       s.last_autovacuum,
       s.last_analyze,
       s.last_autoanalyze,
       extract(epoch FROM now() - s.last_vacuum)::float8      AS seconds_since_last_vacuum,
       extract(epoch FROM now() - s.last_autovacuum)::float8  AS seconds_since_last_autovacuum,
       extract(epoch FROM now() - s.last_analyze)::float8     AS seconds_since_last_analyze,
       extract(epoch FROM now() - s.last_autoanalyze)::float8 AS seconds_since_last_autoanalyze,
       s.vacuum_count,
       s.autovacuum_count,
       s.analyze_count,
       s.autoanalyze_count
  FROM pg_catalog.pg_stat_user_tables s
  JOIN pg_catalog.pg_class c ON c.oid = s.relid
  LEFT JOIN pg_catalog.pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
  LEFT JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
  LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
  CROSS JOIN LATERAL (SELECT pg_catalog.pg_table_size(s.relid)   AS table_bytes,
                             pg_catalog.pg_indexes_size(s.relid) AS index_bytes) z
 WHERE c.relkind IN ('r', 'm');
COMMENT ON VIEW monitoring.v_table_stats IS
    'One row per user table (ordinary tables, partitions and materialized views; partitioned parents are '
    'in v_partition_health). dead_tuple_ratio = n_dead_tup/(n_live_tup+n_dead_tup) in 0..1 (0 when empty); '
    'table_bytes includes TOAST, total_bytes = table_bytes + index_bytes; seconds_since_* are NULL when never.';

-- 4. v_table_bloat
CREATE OR REPLACE VIEW monitoring.v_table_bloat AS
SELECT t.relid,
       t.schemaname,
       t.relname,
       t.parent_schemaname,
       t.parent_relname,
       t.n_live_tup,
       t.n_dead_tup,
       t.dead_tuple_ratio,
       t.total_bytes,
       t.table_bytes,
       (t.table_bytes * t.dead_tuple_ratio)::bigint AS estimated_dead_bytes,
       t.last_vacuum,
       t.last_autovacuum,
       LEAST(t.seconds_since_last_vacuum, t.seconds_since_last_autovacuum) AS seconds_since_last_any_vacuum
  FROM monitoring.v_table_stats t
 WHERE t.dead_tuple_ratio > 0.1
 ORDER BY t.dead_tuple_ratio DESC, t.n_dead_tup DESC;
COMMENT ON VIEW monitoring.v_table_bloat IS
    'Tables with more than 10% dead tuples (dead_tuple_ratio > 0.1, ratio in 0..1). estimated_dead_bytes = '
    'table_bytes * dead_tuple_ratio. seconds_since_last_any_vacuum is NULL when never vacuumed.';

-- 5. v_index_usage
CREATE OR REPLACE VIEW monitoring.v_index_usage AS
SELECT s.indexrelid,
       s.relid,
       s.schemaname::text   AS schemaname,
       s.relname::text      AS relname,
       s.indexrelname::text AS indexrelname,
       pn.nspname::text     AS parent_schemaname,
       pc.relname::text     AS parent_relname,
       s.idx_scan,
       s.idx_tup_read,
       s.idx_tup_fetch,
       COALESCE(pg_catalog.pg_relation_size(s.indexrelid), 0) AS index_bytes,
       x.indisunique  AS is_unique,
       x.indisprimary AS is_primary,
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = s.indexrelid) AS backs_constraint,
       x.indisvalid   AS is_valid,
       CASE WHEN s.idx_scan = 0    THEN 'UNUSED'
            WHEN s.idx_scan < 100  THEN 'LOW'
            WHEN s.idx_scan < 1000 THEN 'MEDIUM'
            ELSE 'HIGH' END AS usage_category
  FROM pg_catalog.pg_stat_user_indexes s
  JOIN pg_catalog.pg_index x ON x.indexrelid = s.indexrelid
  JOIN pg_catalog.pg_class c ON c.oid = s.relid
  LEFT JOIN pg_catalog.pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
  LEFT JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
  LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace;
COMMENT ON VIEW monitoring.v_index_usage IS
    'One row per index of a user table. usage_category: UNUSED (idx_scan = 0), LOW (< 100), MEDIUM (< 1000), '
    'HIGH (>= 1000), counted since the last statistics reset on this server only (replicas count separately).';

-- 6. v_unused_indexes
CREATE OR REPLACE VIEW monitoring.v_unused_indexes AS
SELECT u.indexrelid,
       u.relid,
       u.schemaname,
       u.relname,
       u.indexrelname,
       u.parent_schemaname,
       u.parent_relname,
       u.index_bytes,
       u.idx_scan,
       EXISTS (SELECT 1 FROM pg_catalog.pg_inherits ii WHERE ii.inhrelid = u.indexrelid) AS is_partition_index
  FROM monitoring.v_index_usage u
 WHERE u.idx_scan = 0
   AND NOT u.is_unique
   AND NOT u.is_primary
   AND NOT u.backs_constraint
 ORDER BY u.index_bytes DESC, u.schemaname, u.indexrelname;
COMMENT ON VIEW monitoring.v_unused_indexes IS
    'Indexes never scanned since the last statistics reset (idx_scan = 0), excluding primary keys, unique '
    'indexes and indexes backing constraints. is_partition_index: the index belongs to a partitioned index '
    'and can only be dropped through its parent. Check replicas before dropping anything.';

-- 7. v_index_cache_hit_ratio
CREATE OR REPLACE VIEW monitoring.v_index_cache_hit_ratio AS
SELECT s.indexrelid,
       s.relid,
       s.schemaname::text   AS schemaname,
       s.relname::text      AS relname,
       s.indexrelname::text AS indexrelname,
       pn.nspname::text     AS parent_schemaname,
       pc.relname::text     AS parent_relname,
       s.idx_blks_hit,
       s.idx_blks_read,
       CASE WHEN s.idx_blks_hit + s.idx_blks_read > 0
            THEN s.idx_blks_hit::float8 / (s.idx_blks_hit + s.idx_blks_read) END AS cache_hit_ratio
  FROM pg_catalog.pg_statio_user_indexes s
  JOIN pg_catalog.pg_class c ON c.oid = s.relid
  LEFT JOIN pg_catalog.pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
  LEFT JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
  LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace;
COMMENT ON VIEW monitoring.v_index_cache_hit_ratio IS
    'Per index buffer cache hits and reads (shared buffers only). cache_hit_ratio in 0..1, NULL when the '
    'index had no block accesses at all.';

-- 8. v_connection_stats
CREATE OR REPLACE VIEW monitoring.v_connection_stats AS
SELECT a.pid,
       a.usename::text AS usename,
       a.datname::text AS datname,
       a.application_name,
       host(a.client_addr) AS client_addr,
       a.state,
       a.wait_event_type,
       a.wait_event,
       a.backend_start,
       a.xact_start,
       a.query_start,
       a.state_change,
       GREATEST(0, extract(epoch FROM statement_timestamp() - a.state_change))::float8  AS seconds_in_state,
       GREATEST(0, extract(epoch FROM statement_timestamp() - a.xact_start))::float8    AS xact_age_seconds,
       GREATEST(0, extract(epoch FROM statement_timestamp() - a.query_start))::float8   AS query_age_seconds,
       GREATEST(0, extract(epoch FROM statement_timestamp() - a.backend_start))::float8 AS backend_age_seconds,
       a.pid = pg_catalog.pg_backend_pid() AS is_self,
       a.query
  FROM pg_catalog.pg_stat_activity a
 WHERE a.backend_type = 'client backend';
COMMENT ON VIEW monitoring.v_connection_stats IS
    'One row per client backend of the cluster (pg_stat_activity). *_seconds are ages at statement start, '
    'NULL when the underlying timestamp is NULL (e.g. no open transaction). state/query of other users need '
    'pg_read_all_stats (pg_monitor).';

-- 9. v_connection_summary
CREATE OR REPLACE VIEW monitoring.v_connection_summary AS
WITH a AS (
    SELECT COALESCE(s.state, 'unknown')         AS state,
           COALESCE(s.wait_event_type, 'none')  AS wait_event_type,
           GREATEST(0, extract(epoch FROM statement_timestamp() - s.state_change))::float8 AS seconds_in_state
      FROM pg_catalog.pg_stat_activity s
     WHERE s.backend_type = 'client backend'
),
g AS (
    SELECT a.state, a.wait_event_type, count(*) AS connection_count,
           COALESCE(max(a.seconds_in_state), 0)::float8 AS max_seconds_in_state
      FROM a GROUP BY a.state, a.wait_event_type
),
k(state) AS (
    VALUES ('active'), ('idle'), ('idle in transaction'), ('idle in transaction (aborted)'),
           ('fastpath function call'), ('disabled')
),
rows_ AS (
    SELECT g.state, g.wait_event_type, g.connection_count, g.max_seconds_in_state FROM g
    UNION ALL
    SELECT k.state, 'none', 0::bigint, 0::float8 FROM k
     WHERE NOT EXISTS (SELECT 1 FROM g WHERE g.state = k.state)
),
tot AS (
    SELECT (SELECT count(*) FROM a) AS total_connections,
           pg_catalog.current_setting('max_connections')::integer AS max_connections,
           pg_catalog.current_setting('superuser_reserved_connections')::integer AS reserved_connections
)
SELECT r.state,
       r.wait_event_type,
       r.connection_count,
       r.max_seconds_in_state,
       tot.total_connections,
       tot.max_connections,
       tot.reserved_connections,
       tot.total_connections::float8 / tot.max_connections AS connection_usage_ratio
  FROM rows_ r CROSS JOIN tot
 ORDER BY r.state, r.wait_event_type;
COMMENT ON VIEW monitoring.v_connection_summary IS
    'Client backends of the cluster counted by state and wait_event_type (''none'' when not waiting; every '
    'known state appears, with 0 when absent). Totals repeated on each row: total_connections, '
    'max_connections, reserved_connections (superuser_reserved_connections), connection_usage_ratio = '
    'total_connections / max_connections in 0..1.';

-- 10. v_partition_health
CREATE OR REPLACE VIEW monitoring.v_partition_health AS
WITH b AS (
    SELECT * FROM monitoring.partition_bounds()
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
  LEFT JOIN LATERAL (
      -- all leaf partitions, walking pg_inherits (pg_partition_tree() would lock every partition)
      WITH RECURSIVE tree(relid) AS (
          SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = p.oid
          UNION ALL
          SELECT i.inhrelid FROM tree JOIN pg_catalog.pg_inherits i ON i.inhparent = tree.relid
      )
      SELECT sum(pg_catalog.pg_total_relation_size(c.oid)) AS total_bytes,
             sum(pg_catalog.pg_stat_get_live_tuples(c.oid)) AS total_rows
        FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid
       WHERE c.relkind IN ('r', 'm')
  ) z ON true
 WHERE pn.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY pn.nspname, p.relname;
COMMENT ON VIEW monitoring.v_partition_health IS
    'One row per partitioned table. partition_count = direct partitions (including DEFAULT); total_bytes and '
    'total_rows (n_live_tup estimate) sum all leaf partitions; default_partition (NULL when none) and '
    'default_partition_rows (exact count up to 100000; 0 when no DEFAULT); newest_upper_bound = highest TO bound '
    'of non-default range partitions on a timestamptz/timestamp/date key; runway_seconds = newest_upper_bound - '
    'now() in seconds, NULL when bounds are not time-based or a partition extends to MAXVALUE.';

-- 11. v_partition_growth
CREATE OR REPLACE VIEW monitoring.v_partition_growth AS
SELECT g.parent_schemaname,
       g.parent_relname,
       g.partition_schemaname,
       g.partition_relname,
       g.is_default,
       g.partition_bound,
       g.range_start,
       g.range_end,
       g.total_bytes,
       g.n_live_tup,
       g.n_tup_ins,
       sum(g.total_bytes) OVER w::bigint AS parent_total_bytes,
       sum(g.n_live_tup) OVER w::bigint  AS parent_total_rows
  FROM (SELECT b.*,
               COALESCE(pg_catalog.pg_total_relation_size(b.partition_oid), 0) AS total_bytes,
               COALESCE(pg_catalog.pg_stat_get_live_tuples(b.partition_oid), 0) AS n_live_tup,
               COALESCE(pg_catalog.pg_stat_get_tuples_inserted(b.partition_oid), 0) AS n_tup_ins
          FROM monitoring.partition_bounds() b) g
WINDOW w AS (PARTITION BY g.parent_oid)
 ORDER BY g.parent_schemaname, g.parent_relname, g.is_default, g.range_start NULLS LAST, g.partition_relname;
COMMENT ON VIEW monitoring.v_partition_growth IS
    'One row per direct partition, ordered by parent and lower bound (DEFAULT last): bounds, total_bytes, '
    'n_live_tup (estimate), n_tup_ins (counter), and the parent totals parent_total_bytes/parent_total_rows.';

-- 12. v_cache_hit_ratio
CREATE OR REPLACE VIEW monitoring.v_cache_hit_ratio AS
WITH t AS (
    SELECT COALESCE(sum(s.heap_blks_hit), 0)::bigint  AS heap_hit,
           COALESCE(sum(s.heap_blks_read), 0)::bigint AS heap_read,
           COALESCE(sum(s.idx_blks_hit), 0)::bigint   AS idx_hit,
           COALESCE(sum(s.idx_blks_read), 0)::bigint  AS idx_read,
           (COALESCE(sum(s.toast_blks_hit), 0) + COALESCE(sum(s.tidx_blks_hit), 0))::bigint   AS toast_hit,
           (COALESCE(sum(s.toast_blks_read), 0) + COALESCE(sum(s.tidx_blks_read), 0))::bigint AS toast_read
      FROM pg_catalog.pg_statio_user_tables s
),
d AS (
    SELECT COALESCE(sd.blks_hit, 0) AS db_hit, COALESCE(sd.blks_read, 0) AS db_read
      FROM pg_catalog.pg_stat_database sd
     WHERE sd.datname = pg_catalog.current_database()
),
m(ord, metric, blks_hit, blks_read) AS (
    SELECT 1, 'heap', t.heap_hit, t.heap_read FROM t
    UNION ALL SELECT 2, 'index', t.idx_hit, t.idx_read FROM t
    UNION ALL SELECT 3, 'toast', t.toast_hit, t.toast_read FROM t
    UNION ALL SELECT 4, 'database', d.db_hit, d.db_read FROM d
)
SELECT m.metric,
       m.blks_hit,
       m.blks_read,
       CASE WHEN m.blks_hit + m.blks_read > 0
            THEN m.blks_hit::float8 / (m.blks_hit + m.blks_read) END AS hit_ratio
  FROM m
 ORDER BY m.ord;
COMMENT ON VIEW monitoring.v_cache_hit_ratio IS
    'Buffer cache hit ratios (0..1, NULL when no block accesses): heap, index and toast of user tables '
    '(pg_statio_user_tables) and database (pg_stat_database, whole current database incl. catalogs).';

-- 13. v_blocking_queries
CREATE OR REPLACE VIEW monitoring.v_blocking_queries AS
SELECT w.pid                 AS blocked_pid,
       w.usename::text       AS blocked_user,
       w.datname::text       AS blocked_datname,
       w.application_name    AS blocked_application,
       w.query               AS blocked_query,
       w.wait_event          AS blocked_wait_event,
       lw.locktype           AS blocked_locktype,
       lw.mode               AS blocked_lock_mode,
       lw.relation           AS blocked_relation,
       GREATEST(0, extract(epoch FROM statement_timestamp()
                                    - COALESCE(lw.waitstart, w.state_change, w.query_start)))::float8
                             AS blocked_wait_seconds,
       bp.pid                AS blocking_pid,
       h.usename::text       AS blocking_user,
       h.datname::text       AS blocking_datname,
       h.application_name    AS blocking_application,
       h.query               AS blocking_query,
       h.state               AS blocking_state,
       GREATEST(0, extract(epoch FROM statement_timestamp() - h.xact_start))::float8 AS blocking_xact_age_seconds
  FROM pg_catalog.pg_stat_activity w
  CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS bp(pid)
  LEFT JOIN LATERAL (
      SELECT l.locktype, l.mode, l.waitstart,
             CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text END AS relation
        FROM pg_catalog.pg_locks l
       WHERE l.pid = w.pid AND NOT l.granted
       LIMIT 1
  ) lw ON true
  LEFT JOIN pg_catalog.pg_stat_activity h ON h.pid = bp.pid
 WHERE w.wait_event_type = 'Lock'
 ORDER BY blocked_wait_seconds DESC, w.pid, bp.pid;
COMMENT ON VIEW monitoring.v_blocking_queries IS
    'One row per (blocked backend, blocking backend) pair from pg_blocking_pids() for backends waiting on a '
    'heavyweight lock. blocked_wait_seconds from pg_locks.waitstart. blocking_pid 0 = a prepared transaction.';

-- ---------------------------------------------------------------------------------------------
-- Privileges (nothing for PUBLIC)
-- ---------------------------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA monitoring FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA monitoring FROM PUBLIC;

GRANT SELECT ON
    monitoring.v_slow_queries, monitoring.v_top_queries_by_time, monitoring.v_table_stats,
    monitoring.v_table_bloat, monitoring.v_index_usage, monitoring.v_unused_indexes,
    monitoring.v_index_cache_hit_ratio, monitoring.v_connection_stats, monitoring.v_connection_summary,
    monitoring.v_partition_health, monitoring.v_partition_growth, monitoring.v_cache_hit_ratio,
    monitoring.v_blocking_queries
TO pgpulse_monitor, pgpulse_maintainer;

-- Functions called inside views are checked against the querying user, so the view helpers need EXECUTE.
GRANT EXECUTE ON FUNCTION
    monitoring.pg_stat_statements_available(),
    monitoring.statement_stats(),
    monitoring.partition_bounds(oid),
    monitoring.default_partition_rows(oid)
TO pgpulse_monitor, pgpulse_maintainer;
