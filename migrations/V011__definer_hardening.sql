-- pgpulse V011: no code of another role runs with the monitoring owner's rights (issue 24, item 3).
--
-- monitoring.default_partition_rows (V004) is SECURITY DEFINER and counted the rows of ANY
-- DEFAULT partition its owner could read. Reading a table runs code of that table's owner with
-- the reader's rights: its row-level-security policies (which may call the table owner's
-- functions) and, while planning, the constant parts of its index expressions, partial-index
-- predicates and expression statistics (immutable functions are folded at plan time). A tenant
-- that grants SELECT on its own partitioned table to PUBLIC and attaches such a policy had its
-- function run as the role that ran `pgpulse migrate` whenever a pgpulse_monitor member read
-- monitoring.v_partition_health; a policy that raised or slept blinded the partition family.
--
-- The function stays SECURITY DEFINER (the sampling role has no SELECT on the trade tables, and
-- the exact count of a DEFAULT partition is what the "rows in DEFAULT" alert wants), but it
-- reads rows only where none of that can happen, and otherwise answers from statistics:
--
--   exact count (capped at 100,000) only when the DEFAULT partition is a permanent plain table
--   owned by the function's owner itself (not by a role it is a member of: every member of
--   that role could have attached the policy or the index), without FORCE ROW LEVEL SECURITY,
--   and without any index expression, partial-index predicate or expression statistics;
--   `SET row_security = off` makes any policy that would still apply an error, which is
--   caught, instead of running it;
--
--   statistics estimate for everything else (another owner, a foreign or sub-partitioned
--   DEFAULT, a temporary or unlogged one, forced RLS, expressions): n_live_tup summed over the
--   leaf tables below the DEFAULT partition, or reltuples of a leaf whose statistics were reset
--   (a crash, pg_stat_reset) and recorded nothing since. The estimate is read from the catalog
--   and the statistics only: no lock is taken on a relation the owner does not own.
--
-- This migration pins its own search_path; the function pins its own as well.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION monitoring.default_partition_rows(p_partition oid)
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
-- pgpulse V011 hardened: reads rows only of plain tables its owner owns, runs no other role's code
DECLARE
    v_cap   constant bigint := 100000;
    v_est   bigint;
    v_count bigint;
BEGIN
    IF p_partition IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_partitioned_table pt WHERE pt.partdefid = p_partition) THEN
        RETURN NULL;
    END IF;

    -- The estimate: catalog and statistics only, no lock on any relation.
    WITH RECURSIVE tree(relid) AS (
        SELECT p_partition
        UNION ALL
        SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid
    )
    SELECT COALESCE(sum(CASE WHEN pg_catalog.pg_stat_get_tuples_inserted(c.oid)
                                  + pg_catalog.pg_stat_get_tuples_deleted(c.oid)
                                  + pg_catalog.pg_stat_get_vacuum_count(c.oid)
                                  + pg_catalog.pg_stat_get_autovacuum_count(c.oid)
                                  + pg_catalog.pg_stat_get_analyze_count(c.oid)
                                  + pg_catalog.pg_stat_get_autoanalyze_count(c.oid) = 0
                             THEN GREATEST(c.reltuples, 0)::bigint
                             ELSE pg_catalog.pg_stat_get_live_tuples(c.oid) END), 0)::bigint
      INTO v_est
      FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid
     WHERE c.relkind = 'r';

    -- Inside SECURITY DEFINER, current_user is the function's owner.
    IF NOT EXISTS (
        SELECT 1
          FROM pg_catalog.pg_class c
         WHERE c.oid = p_partition
           AND c.relkind = 'r'
           AND c.relpersistence = 'p'
           AND c.relowner = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
           AND NOT c.relforcerowsecurity
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                            WHERE i.indrelid = c.oid AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL))
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_statistic_ext s
                            WHERE s.stxrelid = c.oid AND s.stxexprs IS NOT NULL)) THEN
        RETURN v_est;
    END IF;

    BEGIN
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM (SELECT 1 FROM ONLY %s LIMIT %s) s',
                                  p_partition::regclass, v_cap + 1)
           INTO v_count;
    EXCEPTION WHEN insufficient_privilege OR undefined_table OR lock_not_available THEN
        -- a policy that would apply despite the checks above (row_security = off refuses it),
        -- a partition dropped meanwhile, or one locked by DDL: the estimate
        RETURN v_est;
    END;
    IF v_count > v_cap THEN
        RETURN GREATEST(v_count, v_est);
    END IF;
    RETURN v_count;
END
$$;

REVOKE EXECUTE ON FUNCTION monitoring.default_partition_rows(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION monitoring.default_partition_rows(oid) TO pgpulse_monitor, pgpulse_maintainer;

COMMENT ON FUNCTION monitoring.default_partition_rows(oid) IS
    'Helper (SECURITY DEFINER, read-only, row_security off). Returns bigint: rows in the given DEFAULT partition; '
    'NULL when the relation is not a DEFAULT partition. Exact up to 100000 (else max(capped count, n_live_tup)) '
    'only for a permanent plain table owned by this function''s owner, without forced row-level security, '
    'index expressions, partial indexes or expression statistics; otherwise the statistics estimate '
    '(n_live_tup of the leaf tables below it, reltuples where statistics were reset). It never reads rows of, '
    'nor locks, a relation of another owner, so no other role''s policy, trigger, index expression or operator '
    'runs with its owner''s rights.';

COMMENT ON VIEW monitoring.v_partition_health IS
    'One row per partitioned table. partition_count = direct partitions (including DEFAULT); total_bytes and '
    'total_rows (n_live_tup estimate) sum all leaf partitions; default_partition (NULL when none) and '
    'default_partition_rows (monitoring.default_partition_rows: exact count up to 100000 for a plain table the '
    'monitoring owner owns, else the statistics estimate; 0 when no DEFAULT); newest_upper_bound = highest TO bound '
    'of non-default range partitions on a timestamptz/timestamp/date key; runway_seconds = newest_upper_bound - '
    'now() in seconds, NULL when bounds are not time-based or a partition extends to MAXVALUE.';
