-- pgpulse V012: the log reader gives away durations, not data (issue 24, item 4).
--
-- V009 gave the sampling role monitoring.log_read(name, offset, length): raw bytes of the jsonlog,
-- that is every logged statement with its literals, from every role and database. pgpulse needs
-- only how many executions took the threshold or longer, per database and user. This migration
-- replaces the raw reader with a helper that parses the log on the server and returns counts:
--
--   monitoring.log_files()          the jsonlog files of the log directory (name, size), as V009
--   monitoring.log_current_file()   the name of the jsonlog file being written, as V009
--   monitoring.log_tally(name, offset, length, min_ms, skip)
--                                   one row: how far the complete lines of a window of that file go,
--                                   and the executions at or over min_ms in them, per (database, user)
--
-- and DROPS monitoring.log_read. Statement text, literals, parameters and every other field of a
-- line stay on the server. What a member of pgpulse_monitor can still learn by calling log_tally
-- with windows of its choosing: where lines start and end (their byte lengths), which lines are
-- execution durations, their database, user and duration (by bisecting min_ms), and how many lines
-- are not jsonlog. A read from an offset that is not the start of a line (the byte before it is not
-- a newline) skips to the next line first, so no part of a line is ever parsed as a line of its own.
--
-- Rules (the same as pgpulse's jsonlog parser before this migration, see docs/statement-latency.md):
-- a line counts when it is a JSON object whose error_severity is "LOG" and whose message is
-- `duration: N ms` alone, `duration: N ms  statement: ...` or `duration: N ms  execute ...` but not
-- `... execute fetch from ...` (parse, bind and auto_explain plan lines are phases, not executions),
-- with N a decimal number (Rust's f64 syntax, finite as a double) at or over min_ms. The fields
-- user, dbname, error_severity and message must each be a string or null when present, and not
-- repeated. A line that is not JSON, or whose fields are of another type, is "unparsed" when it
-- carries `"message":"duration: `, and so is any line that does not start with `{`.
--
-- Hostile bytes. A statement run in a SQL_ASCII database can put bytes into the log that are not
-- valid UTF-8, a crafted file can hold NUL bytes, truncated JSON, numbers like 1e309. Nothing of it
-- raises: the window is split into lines in encode(.., 'escape') form (ASCII whatever the bytes and
-- the database encoding, newlines kept, so byte offsets stay exact); a line that mentions a duration
-- is decoded as UTF-8, or else byte for byte as LATIN1, and parsed as json inside an EXCEPTION block
-- (PostgreSQL 15 has no IS JSON nor pg_input_is_valid); user and dbname go back to pgpulse as their
-- bytes (bytea), which it decodes leniently. Each such block is a subtransaction; log_tally runs in
-- pgpulse's read-only transaction, where a subtransaction takes no transaction id.
--
-- Window. The helper reads at most 8 MiB and one byte per call: a line of up to 8 MiB and its newline
-- fits whole. When the window holds no complete line, consumed is 0 and the caller asks again with a
-- larger window (or waits, when the window came back short: a line being written). A line longer than
-- 8 MiB is counted in `oversized` and skipped: the row says `skipping`, the caller passes it back as
-- p_skip, and the next call drops bytes through the next newline first.
--
-- Privileges. All three helpers are SECURITY DEFINER functions owned by the superuser that installs
-- them, with SET search_path = pg_catalog, pg_temp, calling nothing but pg_catalog (log_tally calls no
-- function of this schema, which a non-superuser may own). EXECUTE is revoked from PUBLIC and granted
-- to pgpulse_monitor only.
--
-- Installing them needs a superuser. When this migration runs as one, it installs them and drops
-- log_read. Otherwise it replaces monitoring.install_log_reader() only, says so in a NOTICE, and drops
-- log_read itself: log_read was created by a superuser, but DROP FUNCTION is also allowed to the owner
-- of the schema, and the role that runs the migrations is (it created the schema monitoring). Were it
-- not (the schema created by another role), the DROP fails: a REVOKE could not help then, since only the
-- role that granted EXECUTE (the function's owner) or a superuser can revoke it, and a role that could
-- revoke it could drop it. The migration then leaves a WARNING, `pgpulse verify` fails check 14 while
-- log_read exists, and `pgpulse migrate` run by a superuser removes it. A superuser is never asked to
-- call install_log_reader() as it stands in the database: its owner (the role that ran this migration)
-- could have replaced its body; `pgpulse migrate` sends this file again from the binary instead.

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
            OUT bytes_read integer, OUT consumed integer, OUT skipping boolean,
            OUT unparsed bigint, OUT oversized bigint,
            OUT datnames bytea[], OUT usernames bytea[], OUT executions bigint[])
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $b$
        DECLARE
            c_cap    CONSTANT integer := 8388609;  -- a line of 8 MiB and its newline
            c_work   CONSTANT integer := 1048576;  -- lines starting past this (escaped) wait
            c_needle CONSTANT text := '"message":"duration: ';
            c_number CONSTANT text := '^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$';
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
                                    error_severity pg_catalog.json, message pg_catalog.json);
                        v_ok := COALESCE(pg_catalog.json_typeof(v_fields.user), 'null') IN ('string', 'null')
                            AND COALESCE(pg_catalog.json_typeof(v_fields.dbname), 'null') IN ('string', 'null')
                            AND COALESCE(pg_catalog.json_typeof(v_fields.error_severity), 'null') IN ('string', 'null')
                            AND COALESCE(pg_catalog.json_typeof(v_fields.message), 'null') IN ('string', 'null');
                        v_user := pg_catalog.convert_to(v_fields.user #>> '{}', v_enc);
                        v_db := pg_catalog.convert_to(v_fields.dbname #>> '{}', v_enc);
                        v_sev := v_fields.error_severity #>> '{}';
                        v_msg := v_fields.message #>> '{}';
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
                CONTINUE WHEN v_ms IS NULL OR v_ms < p_min_ms;
                v_dbs := v_dbs || COALESCE(v_db, ''::bytea);
                v_users := v_users || COALESCE(v_user, ''::bytea);
            END LOOP;
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

    DROP FUNCTION IF EXISTS monitoring.log_read(text, bigint, integer);

    ALTER FUNCTION monitoring.log_files() OWNER TO CURRENT_USER;
    ALTER FUNCTION monitoring.log_current_file() OWNER TO CURRENT_USER;
    ALTER FUNCTION monitoring.log_tally(text, bigint, integer, double precision, boolean) OWNER TO CURRENT_USER;
    REVOKE EXECUTE ON FUNCTION monitoring.log_files(), monitoring.log_current_file(),
        monitoring.log_tally(text, bigint, integer, double precision, boolean) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION monitoring.log_files(), monitoring.log_current_file(),
        monitoring.log_tally(text, bigint, integer, double precision, boolean) TO pgpulse_monitor;
    COMMENT ON FUNCTION monitoring.log_tally(text, bigint, integer, double precision, boolean) IS
        'pgpulse: how far the complete lines of a window of a jsonlog file go (at most 8 MiB + 1 byte from a '
        'byte offset), and the executions at or over min_ms in them per (database, user); never a line''s '
        'text. NULL when the file is gone. Only plain *.json names listed by pg_ls_logdir() are accepted.';
END
$install$;

REVOKE EXECUTE ON FUNCTION monitoring.install_log_reader() FROM PUBLIC;

DO $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        PERFORM monitoring.install_log_reader();
        RETURN;
    END IF;
    IF pg_catalog.to_regprocedure('monitoring.log_read(text,bigint,integer)') IS NOT NULL THEN
        BEGIN
            DROP FUNCTION monitoring.log_read(text, bigint, integer);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'pgpulse: monitoring.log_read still gives pgpulse_monitor raw log lines: % may not drop it. '
                          'A superuser removes it by running pgpulse migrate.', current_user;
        END;
    END IF;
    RAISE NOTICE 'pgpulse: the slow-statement log reader helpers were not installed: % is not a superuser. '
                 'A superuser installs them by running pgpulse migrate.', current_user;
END
$$;
