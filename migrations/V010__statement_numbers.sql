-- pgpulse V010: statement statistics without the statement text.
--
-- monitoring.statement_stats() (V004) reads pg_stat_statements with its query text. Nothing
-- pgpulse exports uses the text, and reading it is both a cost and a hazard:
--   * PostgreSQL loads the whole query-text file on every call that shows text;
--   * a statement whose text is not valid in this database's encoding (any role can log one
--     from a SQL_ASCII database of the same cluster, e.g. SELECT 1 /* \xff */) makes every
--     later read of the text fail here, until someone calls pg_stat_statements_reset().
-- monitoring.statement_stats(p_showtext) reads pg_stat_statements(p_showtext): with false the
-- query column is NULL and neither the file nor the encoding is touched. pgpulse's sampling
-- queries call statement_stats(false); the operator views (v_slow_queries,
-- v_top_queries_by_time, get_query_performance) keep the text through statement_stats().

CREATE OR REPLACE FUNCTION monitoring.statement_stats(p_showtext boolean)
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
        '  FROM %2$I.pg_stat_statements($1) s'
        '  LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.userid'
        '  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid',
        v_prefix, v_nsp)
    USING COALESCE(p_showtext, false);
END
$$;
COMMENT ON FUNCTION monitoring.statement_stats(boolean) IS
    'Helper. Rows of pg_stat_statements (all databases of the cluster, cumulative since the last reset), '
    'read dynamically from whatever schema the extension lives in; zero rows when '
    'monitoring.pg_stat_statements_available() is false. p_showtext false (what pgpulse samples with): the '
    'query column is NULL and the query-text file is not read, so a statement text that is not valid in '
    'this database''s encoding cannot make it fail. Columns as monitoring.statement_stats().';

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
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM monitoring.statement_stats(true) $$;
COMMENT ON FUNCTION monitoring.statement_stats() IS
    'Helper. monitoring.statement_stats(true): pg_stat_statements with the query text, for the operator '
    'views (v_slow_queries, v_top_queries_by_time, get_query_performance). Query texts of other users need '
    'pg_read_all_stats (pg_monitor). pgpulse samples monitoring.statement_stats(false).';

REVOKE EXECUTE ON FUNCTION monitoring.statement_stats(boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION monitoring.statement_stats(boolean) TO pgpulse_monitor, pgpulse_maintainer;
