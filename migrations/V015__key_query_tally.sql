-- pgpulse V015: the log reader also counts each key query's executions over its own target
-- (issue 28, item 4).
--
-- A key query of plans.yaml has a latency target (10 ms to 100 ms). Its SLO needs the exact
-- number of its executions at or over that target, and PostgreSQL 15's jsonlog puts the
-- statement's query_id (the Query Identifier of EXPLAIN VERBOSE, pg_stat_statements' queryid)
-- on every duration line. This migration replaces V012's helper with one that takes two more
-- arrays and returns one more:
--
--   monitoring.log_tally(name, offset, length, min_ms, skip, query_ids, targets_ms)
--       as V012's log_tally, and key_executions[i]: the duration lines whose query_id is
--       query_ids[i] and whose duration is at or over targets_ms[i] (at most 100 pairs), but
--       those of the calling session's login role (pgpulse's own plan checks)
--
-- and drops the five-argument version. Every rule of V012 stands (what a line is, which lines
-- count, hostile bytes, the window, the privileges); one field is added: query_id must be a
-- number or null when present, like user and dbname must be strings, and a query_id that is
-- not an integer within bigint matches no key query (it is not cast: nothing raises). The
-- executions counted per key query are only those the server logged, that is at or over
-- log_min_duration_statement: where that is above a target, the count is of the executions
-- over the threshold (pgpulse exports which bound applies, and `pgpulse verify` says which
-- setting covers every target). What a member of pgpulse_monitor can learn in addition: which
-- duration lines carry a query_id of its choosing, and their durations by bisection, which
-- V012 already gave per (database, user).
--
-- Installing needs a superuser, as V012. Run by another role, this migration replaces
-- monitoring.install_log_reader() only and says so in a NOTICE; V012's helper stays, pgpulse
-- keeps counting slow statements with it and counts no key query until a superuser runs
-- pgpulse migrate.

CREATE OR REPLACE FUNCTION monitoring.install_log_reader()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $install$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'pgpulse: the log reader helpers must be installed by a superuser, not %', current_user
            USING HINT = 'As a superuser, run pgpulse migrate (it installs the helpers from the binary).';
    END IF;

    EXECUTE $f$
        CREATE OR REPLACE FUNCTION monitoring.log_files()
        RETURNS TABLE (name text, size bigint, modification timestamptz)
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $b$
            SELECT l.name, l.size, l.modification
              FROM pg_catalog.pg_ls_logdir() AS l
             WHERE l.name ~ '^[^/.][^/]*\.json$'
             ORDER BY l.modification, l.name
        $b$
    $f$;

    EXECUTE $f$
        CREATE OR REPLACE FUNCTION monitoring.log_current_file()
        RETURNS text
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $b$
            SELECT pg_catalog.regexp_replace(pg_catalog.pg_current_logfile('jsonlog'), '^.*/', '')
        $b$
    $f$;

    -- log_tally resolves operators in pg_catalog only (pg_temp is never searched for
    -- functions or operators) and calls no function outside pg_catalog: the whole parser is
    -- inline, since a helper function in this schema could be replaced by its owner.
    EXECUTE $f$
        CREATE OR REPLACE FUNCTION monitoring.log_tally(
            p_name text, p_offset bigint, p_length integer, p_min_ms double precision, p_skip boolean,
            p_query_ids bigint[], p_targets_ms double precision[],
            OUT bytes_read integer, OUT consumed integer, OUT skipping boolean,
            OUT unparsed bigint, OUT oversized bigint,
            OUT datnames bytea[], OUT usernames bytea[], OUT executions bigint[],
            OUT key_executions bigint[])
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $b$
        DECLARE
            c_cap    CONSTANT integer := 8388609;  -- a line of 8 MiB and its newline
            c_work   CONSTANT integer := 1048576;  -- lines starting past this (escaped) wait
            c_needle CONSTANT text := '"message":"duration: ';
            c_number CONSTANT text := '^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$';
            c_keys   CONSTANT integer := 100;      -- the most key queries per call
            v_chunk  bytea;
            v_text   text;
            v_skip   boolean := p_skip;
            v_at     integer;
            v_lines  integer;
            v_line   text;
            v_enc    text;
            v_ok     boolean;
            v_fields record;
            v_user   bytea;
            v_db     bytea;
            v_sev    text;
            v_msg    text;
            v_num    text;
            v_tail   text;
            v_ms     double precision;
            v_qid    text;
            v_uname  text;
            v_id     bigint;
            v_i      integer;
            v_keys   bigint[];
            v_dbs    bytea[] := '{}';
            v_users  bytea[] := '{}';
        BEGIN
            IF p_name IS NULL OR p_name !~ '^[^/.][^/]*\.json$' THEN
                RAISE EXCEPTION 'pgpulse: % is not a log file name', p_name
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF p_offset IS NULL OR p_offset < 0 OR p_length IS NULL OR p_length < 1
               OR p_min_ms IS NULL OR p_skip IS NULL THEN
                RAISE EXCEPTION 'pgpulse: offset >= 0, length >= 1, min_ms and skip are required';
            END IF;
            IF p_query_ids IS NULL OR p_targets_ms IS NULL
               OR pg_catalog.cardinality(p_query_ids) <> pg_catalog.cardinality(p_targets_ms)
               OR pg_catalog.cardinality(p_query_ids) > c_keys
               OR pg_catalog.array_ndims(p_query_ids) > 1 OR pg_catalog.array_ndims(p_targets_ms) > 1
               OR pg_catalog.array_position(p_query_ids, NULL) IS NOT NULL
               OR pg_catalog.array_position(p_targets_ms, NULL) IS NOT NULL THEN
                RAISE EXCEPTION 'pgpulse: query_ids and targets_ms are two arrays of the same length (at most %), without NULLs', c_keys;
            END IF;
            -- Lower bounds of 1 whatever the caller's arrays say.
            p_query_ids := ARRAY(SELECT pg_catalog.unnest(p_query_ids));
            p_targets_ms := ARRAY(SELECT pg_catalog.unnest(p_targets_ms));
            v_keys := pg_catalog.array_fill(0::bigint, ARRAY[pg_catalog.cardinality(p_query_ids)]);
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_ls_logdir() AS l WHERE l.name = p_name) THEN
                -- removed (rotated away) or never a log file: every column NULL
                RETURN;
            END IF;
            -- From the byte before the offset: a newline there (or offset 0) is a line start;
            -- elsewhere the read skips to the next line.
            v_chunk := pg_catalog.pg_read_binary_file(
                pg_catalog.current_setting('log_directory') || '/' || p_name,
                GREATEST(p_offset - 1, 0), (LEAST(p_length, c_cap) + LEAST(p_offset, 1))::bigint, true);
            IF v_chunk IS NULL THEN
                RETURN;
            END IF;
            IF p_offset > 0 THEN
                v_skip := v_skip OR (pg_catalog.octet_length(v_chunk) > 0 AND pg_catalog.get_byte(v_chunk, 0) <> 10);
                v_chunk := pg_catalog.substring(v_chunk, 2);
            END IF;
            bytes_read := pg_catalog.octet_length(v_chunk);
            consumed := 0;
            skipping := false;
            unparsed := 0;
            oversized := 0;
            datnames := '{}';
            usernames := '{}';
            executions := '{}';
            key_executions := v_keys;
            -- ASCII whatever the bytes (backslashes doubled, NUL and bytes over 0x7f as \ooo),
            -- newlines kept: split into lines here, each decoded back to its bytes.
            v_text := pg_catalog.encode(v_chunk, 'escape');
            IF v_skip THEN
                v_at := pg_catalog.strpos(v_text, E'\n');
                IF v_at = 0 THEN
                    consumed := bytes_read;
                    skipping := true;
                    RETURN;
                END IF;
                consumed := pg_catalog.octet_length(pg_catalog.decode(pg_catalog.left(v_text, v_at), 'escape'));
                v_text := pg_catalog.substr(v_text, v_at + 1);
            END IF;
            -- The complete lines that start in the first c_work characters (the first line
            -- however long): up to the first newline from there, or else the last newline.
            v_at := 0;
            IF pg_catalog.length(v_text) > c_work THEN
                v_at := pg_catalog.strpos(pg_catalog.substr(v_text, c_work), E'\n');
                IF v_at > 0 THEN
                    v_at := c_work + v_at - 1;
                END IF;
            END IF;
            IF v_at = 0 THEN
                v_text := pg_catalog.left(v_text, c_work);
                v_at := pg_catalog.strpos(pg_catalog.reverse(v_text), E'\n');
                IF v_at > 0 THEN
                    v_at := pg_catalog.length(v_text) - v_at + 1;
                END IF;
            END IF;
            IF v_at = 0 THEN
                IF consumed = 0 AND bytes_read = c_cap THEN
                    -- a line longer than the largest window: counted, skipped
                    oversized := 1;
                    consumed := bytes_read;
                    skipping := true;
                END IF;
                RETURN;
            END IF;
            v_text := pg_catalog.left(v_text, v_at);
            consumed := consumed + pg_catalog.octet_length(pg_catalog.decode(v_text, 'escape'));
            v_lines := v_at - pg_catalog.length(pg_catalog.replace(v_text, E'\n', ''));
            -- A line without the needle is no duration; it is unparsed unless it is an object.
            SELECT pg_catalog.count(*) INTO unparsed
              FROM pg_catalog.string_to_table(v_text, E'\n') WITH ORDINALITY AS t(line, n)
             WHERE t.n <= v_lines AND pg_catalog.strpos(t.line, c_needle) = 0
               AND NOT pg_catalog.starts_with(t.line, '{');
            FOR v_line IN
                SELECT t.line
                  FROM pg_catalog.string_to_table(v_text, E'\n') WITH ORDINALITY AS t(line, n)
                 WHERE t.n <= v_lines AND pg_catalog.strpos(t.line, c_needle) > 0
                 ORDER BY t.n
            LOOP
                -- A JSON object, read as UTF-8 (what PostgreSQL writes) or else one character
                -- per byte; user, dbname, error_severity and message strings or null when there.
                v_ok := false;
                FOREACH v_enc IN ARRAY ARRAY['UTF8', 'LATIN1'] LOOP
                    BEGIN
                        SELECT * INTO v_fields
                          FROM pg_catalog.json_to_record(pg_catalog.convert_from(
                                   pg_catalog.decode(v_line, 'escape'), v_enc)::pg_catalog.json)
                               AS x("user" pg_catalog.json, dbname pg_catalog.json,
                                    error_severity pg_catalog.json, message pg_catalog.json,
                                    query_id pg_catalog.json);
                        v_ok := COALESCE(pg_catalog.json_typeof(v_fields.user), 'null') IN ('string', 'null')
                            AND COALESCE(pg_catalog.json_typeof(v_fields.dbname), 'null') IN ('string', 'null')
                            AND COALESCE(pg_catalog.json_typeof(v_fields.error_severity), 'null') IN ('string', 'null')
                            AND COALESCE(pg_catalog.json_typeof(v_fields.message), 'null') IN ('string', 'null')
                            AND COALESCE(pg_catalog.json_typeof(v_fields.query_id), 'null') IN ('number', 'null');
                        v_user := pg_catalog.convert_to(v_fields.user #>> '{}', v_enc);
                        v_db := pg_catalog.convert_to(v_fields.dbname #>> '{}', v_enc);
                        v_sev := v_fields.error_severity #>> '{}';
                        v_msg := v_fields.message #>> '{}';
                        v_qid := v_fields.query_id #>> '{}';
                        v_uname := v_fields.user #>> '{}';
                        EXIT;
                    EXCEPTION WHEN OTHERS THEN
                        v_ok := false;
                    END;
                END LOOP;
                IF NOT v_ok THEN
                    unparsed := unparsed + 1;
                    CONTINUE;
                END IF;
                -- LOG, `duration: N ms`, then nothing, a statement or an execute (not a fetch).
                CONTINUE WHEN v_sev IS DISTINCT FROM 'LOG' OR v_msg IS NULL
                    OR NOT pg_catalog.starts_with(v_msg, 'duration: ');
                v_msg := pg_catalog.substr(v_msg, 11);
                v_at := pg_catalog.strpos(v_msg, ' ms');
                CONTINUE WHEN v_at = 0;
                v_num := pg_catalog.left(v_msg, v_at - 1);
                v_tail := pg_catalog.substr(v_msg, v_at + 3);
                CONTINUE WHEN v_num !~ c_number OR NOT (v_tail = ''
                    OR pg_catalog.starts_with(v_tail, '  statement: ')
                    OR (pg_catalog.starts_with(v_tail, '  execute ')
                        AND NOT pg_catalog.starts_with(v_tail, '  execute fetch from ')));
                IF pg_catalog.length(v_num) < 200 AND v_num !~ '[eE][+-]?[0-9]{3}' THEN
                    v_ms := v_num::double precision;  -- within 1e-300 .. 1e300
                ELSE
                    BEGIN
                        v_ms := v_num::double precision;
                    EXCEPTION WHEN numeric_value_out_of_range THEN
                        -- Beyond a double: +-infinity for Rust's parser (not a duration) above,
                        -- +-0 below; numeric tells which, or the exponent's sign beyond it.
                        BEGIN
                            v_ms := CASE WHEN pg_catalog.abs(v_num::numeric) < 1 THEN 0 END;
                        EXCEPTION WHEN OTHERS THEN
                            v_ms := CASE WHEN v_num ~ '[eE]-' THEN 0 END;
                        END;
                    END;
                END IF;
                CONTINUE WHEN v_ms IS NULL;
                -- A key query's execution at or over its target: its query_id, an integer
                -- within bigint (no cast that could raise), among p_query_ids; not by the
                -- caller's own login role (pgpulse's plan checks prepare the key queries).
                v_id := NULL;
                IF (CASE WHEN v_qid ~ '^-?[0-9]{1,19}$'
                         THEN v_qid::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
                         ELSE false END) THEN
                    v_id := v_qid::bigint;
                END IF;
                IF v_id IS NOT NULL AND v_id <> 0 AND v_uname IS DISTINCT FROM SESSION_USER::text THEN
                    FOREACH v_i IN ARRAY COALESCE(pg_catalog.array_positions(p_query_ids, v_id), '{}') LOOP
                        IF v_ms >= p_targets_ms[v_i] THEN
                            v_keys[v_i] := v_keys[v_i] + 1;
                        END IF;
                    END LOOP;
                END IF;
                CONTINUE WHEN v_ms < p_min_ms;
                v_dbs := v_dbs || COALESCE(v_db, ''::bytea);
                v_users := v_users || COALESCE(v_user, ''::bytea);
            END LOOP;
            key_executions := v_keys;
            SELECT COALESCE(pg_catalog.array_agg(g.d ORDER BY g.d, g.u), '{}'),
                   COALESCE(pg_catalog.array_agg(g.u ORDER BY g.d, g.u), '{}'),
                   COALESCE(pg_catalog.array_agg(g.n ORDER BY g.d, g.u), '{}')
              INTO datnames, usernames, executions
              FROM (SELECT x.d, x.u, pg_catalog.count(*) AS n
                      FROM ROWS FROM (pg_catalog.unnest(v_dbs), pg_catalog.unnest(v_users)) AS x(d, u)
                     GROUP BY x.d, x.u) AS g;
        END
        $b$
    $f$;

    IF pg_catalog.to_regprocedure('monitoring.log_read(text,bigint,integer)') IS NOT NULL THEN
        DROP FUNCTION monitoring.log_read(text, bigint, integer);
    END IF;
    IF pg_catalog.to_regprocedure('monitoring.log_tally(text,bigint,integer,double precision,boolean)') IS NOT NULL THEN
        DROP FUNCTION monitoring.log_tally(text, bigint, integer, double precision, boolean);
    END IF;

    ALTER FUNCTION monitoring.log_files() OWNER TO CURRENT_USER;
    ALTER FUNCTION monitoring.log_current_file() OWNER TO CURRENT_USER;
    ALTER FUNCTION monitoring.log_tally(text, bigint, integer, double precision, boolean, bigint[], double precision[])
        OWNER TO CURRENT_USER;
    REVOKE EXECUTE ON FUNCTION monitoring.log_files(), monitoring.log_current_file(),
        monitoring.log_tally(text, bigint, integer, double precision, boolean, bigint[], double precision[]) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION monitoring.log_files(), monitoring.log_current_file(),
        monitoring.log_tally(text, bigint, integer, double precision, boolean, bigint[], double precision[]) TO pgpulse_monitor;
    COMMENT ON FUNCTION monitoring.log_tally(text, bigint, integer, double precision, boolean, bigint[], double precision[]) IS
        'pgpulse: how far the complete lines of a window of a jsonlog file go (at most 8 MiB + 1 byte from a '
        'byte offset), the executions at or over min_ms in them per (database, user), and the executions of '
        'each query_id of query_ids at or over its targets_ms; never a line''s text. NULL when the file is '
        'gone. Only plain *.json names listed by pg_ls_logdir() are accepted.';
END
$install$;

REVOKE EXECUTE ON FUNCTION monitoring.install_log_reader() FROM PUBLIC;

DO $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        PERFORM monitoring.install_log_reader();
        RETURN;
    END IF;
    RAISE NOTICE 'pgpulse: the key-query SLO counts need the new log reader helper: % is not a superuser. '
                 'A superuser installs it by running pgpulse migrate; until then the slow-statement count '
                 'goes on with V012''s helper where it is installed, and the key queries'' executions over their targets are not counted.',
                 current_user;
END
$$;
