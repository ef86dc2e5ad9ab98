-- pgpulse V007: maintenance that waits for the trading engine, and job outcomes as data.
--
-- 1. create_future_partitions creates each partition as a standalone table and ATTACHes it
--    (SHARE UPDATE EXCLUSIVE on the parent) instead of CREATE TABLE ... PARTITION OF (ACCESS
--    EXCLUSIVE), so a partition job never queues in front of trade INSERTs. The maintenance
--    runner sets lock_timeout and statement_timeout on its session: a job that cannot get its
--    lock in time fails (logged), leaves nothing half-made and is retried with backoff.
-- 2. cron_period_seconds(expr): the period of a cron expression of the schedule, for the
--    "job has not succeeded within twice its period" alert.

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
        -- CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE on the parent and queue every
        -- INSERT behind it. Instead: a standalone table with the parent's columns and a CHECK
        -- constraint equal to the partition bounds (so ATTACH needs no validation scan), then
        -- ATTACH PARTITION, which takes SHARE UPDATE EXCLUSIVE on the parent (already held) and
        -- never blocks reads or writes of the other partitions. All in this one transaction: a
        -- lock_timeout anywhere leaves no half-made partition.
        EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS INCLUDING GENERATED)%s',
                       v_schema, v_names[i], v_parent,
                       CASE WHEN v_reloptions IS NOT NULL AND pg_catalog.cardinality(v_reloptions) > 0
                            THEN ' WITH (' || pg_catalog.array_to_string(v_reloptions, ', ') || ')' ELSE '' END);
        EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I CHECK (%I IS NOT NULL AND %I >= %L::%s AND %I < %L::%s)',
                       v_schema, v_names[i], v_names[i] || '_bounds',
                       v_key, v_key, v_lo, v_keytype::regtype, v_key, v_hi, v_keytype::regtype);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                       v_parent, v_schema, v_names[i], v_lo, v_hi);
        EXECUTE format('ALTER TABLE %I.%I DROP CONSTRAINT %I',
                       v_schema, v_names[i], v_names[i] || '_bounds');
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
    'until the partition containing now() + p_ahead units exists. Each partition is created as a table with a '
    'CHECK constraint on its bounds and then ATTACHed (SHARE UPDATE EXCLUSIVE on the parent, never ACCESS '
    'EXCLUSIVE). Returns: partition_name text, range_start timestamptz, range_end timestamptz of each partition '
    'created (zero rows when nothing was missing or the table does not exist). Raises check_violation, before '
    'creating anything, when the DEFAULT partition holds rows of a new range. New partitions copy the '
    'reloptions of the newest partition and get the parent''s owner.';

CREATE OR REPLACE FUNCTION monitoring.cron_period_seconds(p_expr text)
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN lower(trim(p_expr)) = '@hourly' THEN 3600
        WHEN lower(trim(p_expr)) IN ('@daily', '@midnight') THEN 86400
        WHEN lower(trim(p_expr)) = '@weekly' THEN 604800
        WHEN lower(trim(p_expr)) = '@monthly' THEN 2678400
        WHEN f IS NULL OR cardinality(f) <> 5 THEN NULL
        WHEN f[1] ~ '^\d+$' AND f[2] = '*' AND f[3] = '*' AND f[4] = '*' AND f[5] = '*' THEN 3600
        WHEN f[1] ~ '^\d+$' AND f[2] ~ '^\d+$' AND f[3] = '*' AND f[4] = '*' AND f[5] = '*' THEN 86400
        WHEN f[1] ~ '^\d+$' AND f[2] ~ '^\d+$' AND f[3] = '*' AND f[4] = '*' AND f[5] ~ '^\d+$' THEN 604800
        WHEN f[1] ~ '^\d+$' AND f[2] ~ '^\d+$' AND f[3] ~ '^\d+$' AND f[4] = '*' AND f[5] = '*' THEN 2678400
        ELSE NULL
    END::double precision
    FROM (SELECT regexp_split_to_array(trim(p_expr), '\s+') AS f) s
$$;
COMMENT ON FUNCTION monitoring.cron_period_seconds(text) IS
    'The period in seconds of a cron expression of monitoring.maintenance_schedule: hourly (M * * * *), daily '
    '(M H * * *), weekly (M H * * D), monthly (M H D * *, taken as 31 days) and the @hourly/@daily/@weekly/'
    '@monthly shorthands; NULL for any other expression (no overdue alert for that job).';

REVOKE EXECUTE ON FUNCTION monitoring.cron_period_seconds(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION monitoring.cron_period_seconds(text) TO pgpulse_monitor, pgpulse_maintainer;
