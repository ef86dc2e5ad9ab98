-- pgpulse V009: read the server's slow-statement log (jsonlog) over SQL, and nothing else.
--
-- The exact count of executions at or over log_min_duration_statement comes from the server
-- log. pgpulse reads it through three SECURITY DEFINER helpers owned by a superuser:
--
--   monitoring.log_files()                     the jsonlog files of the log directory (name, size)
--   monitoring.log_current_file()              the name of the jsonlog file being written
--   monitoring.log_read(name, offset, length)  bytes of one of those files (binary: a chunk may
--                                              end inside a multibyte character)
--
-- log_read accepts only a plain file name (no '/', no leading '.') ending in '.json' that
-- pg_ls_logdir() lists right now, and reads at most 1 MiB per call. EXECUTE is granted to
-- pgpulse_monitor only; the sampling role gets no pg_read_server_files and no grant on
-- pg_read_binary_file, so it can read the log and nothing else of the server's files.
--
-- Creating SECURITY DEFINER functions that read server files needs a superuser. When this
-- migration runs as one, it installs the helpers; otherwise it installs only
-- monitoring.install_log_reader() and says so in a NOTICE: a superuser installs the helpers
-- later with `SELECT monitoring.install_log_reader();` (pgpulse verify says the same).

CREATE OR REPLACE FUNCTION monitoring.install_log_reader()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $install$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'pgpulse: the log reader helpers must be installed by a superuser, not %', current_user
            USING HINT = 'Connect as a superuser and run SELECT monitoring.install_log_reader();';
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

    EXECUTE $f$
        CREATE OR REPLACE FUNCTION monitoring.log_read(p_name text, p_offset bigint, p_length integer)
        RETURNS bytea
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $b$
        BEGIN
            IF p_name IS NULL OR p_name !~ '^[^/.][^/]*\.json$' THEN
                RAISE EXCEPTION 'pgpulse: % is not a log file name', p_name
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_ls_logdir() AS l WHERE l.name = p_name) THEN
                -- removed (rotated away) or never a log file: nothing to read
                RETURN NULL;
            END IF;
            IF p_offset IS NULL OR p_offset < 0 OR p_length IS NULL OR p_length < 0 THEN
                RAISE EXCEPTION 'pgpulse: offset and length must be >= 0';
            END IF;
            RETURN pg_catalog.pg_read_binary_file(
                pg_catalog.current_setting('log_directory') || '/' || p_name,
                p_offset, LEAST(p_length, 1048576)::bigint, true);
        END
        $b$
    $f$;

    REVOKE EXECUTE ON FUNCTION monitoring.log_files(), monitoring.log_current_file(),
        monitoring.log_read(text, bigint, integer) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION monitoring.log_files(), monitoring.log_current_file(),
        monitoring.log_read(text, bigint, integer) TO pgpulse_monitor;
    COMMENT ON FUNCTION monitoring.log_read(text, bigint, integer) IS
        'pgpulse: up to 1 MiB of a jsonlog file of the log directory, from a byte offset; NULL when the '
        'file is gone. Only plain *.json names listed by pg_ls_logdir() are accepted.';
END
$install$;

REVOKE EXECUTE ON FUNCTION monitoring.install_log_reader() FROM PUBLIC;

DO $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        PERFORM monitoring.install_log_reader();
    ELSE
        RAISE NOTICE 'pgpulse: the slow-statement log reader helpers were not installed: % is not a superuser. '
                     'A superuser installs them with: SELECT monitoring.install_log_reader();', current_user;
    END IF;
END
$$;
