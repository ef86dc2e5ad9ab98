-- pgpulse uninstall: removes everything V004..V014 created in this database.
--
-- Run by `pgpulse uninstall` as ONE simple-query batch inside a transaction (no BEGIN/COMMIT here).
--   * resets the autovacuum reloptions V006 set (on the trade-engine tables and partitions that exist);
--   * revokes V014's SELECT on the sequences and its default privilege from pgpulse_monitor;
--   * drops schema monitoring (views, functions, maintenance tables, migration history, and the V009
--     log reader helpers monitoring.log_files/log_current_file/log_read/install_log_reader);
--   * drops the roles pgpulse_monitor / pgpulse_maintainer only if pgpulse created them, after
--     DROP OWNED BY in this database; a role still used by another database of the cluster (or owning
--     objects here) is kept, with a NOTICE.
-- Extensions (pg_stat_statements, pg_trgm, btree_gist) are left installed: other things may use them.
-- Trade data is never touched.

DO $$
DECLARE
    v_roles  text[] := '{}';
    v_role   text;
    v_table  text;
    v_rel    regclass;
    v_leaf   regclass;
    v_roleid oid;
    v_skipped integer;
    v_error  text;
BEGIN
    -- 1. Read what must be known before the schema goes.
    IF pg_catalog.to_regclass('monitoring.installed_roles') IS NOT NULL THEN
        EXECUTE 'SELECT COALESCE(array_agg(role_name ORDER BY role_name), ''{}'')
                   FROM monitoring.installed_roles WHERE created_by_pgpulse'
           INTO v_roles;
    END IF;

    -- 2. Reset the autovacuum reloptions set by V006 (only on tables that exist and carry them; partitions
    --    created later by create_future_*_partitions copied them, so they are reset too).
    FOREACH v_table IN ARRAY ARRAY['orders', 'trades', 'order_book', 'market_data'] LOOP
        v_rel := pg_catalog.to_regclass('public.' || quote_ident(v_table));
        CONTINUE WHEN v_rel IS NULL;
        v_skipped := 0;
        FOR v_leaf IN
            SELECT l.oid::regclass
              FROM (WITH RECURSIVE tree(relid) AS (
                        -- the table and all its partitions (pg_partition_tree() would lock every one)
                        SELECT v_rel::oid
                        UNION ALL
                        SELECT i.inhrelid FROM tree JOIN pg_catalog.pg_inherits i ON i.inhparent = tree.relid
                    )
                    SELECT c.oid, c.reloptions
                      FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid
                     WHERE c.relkind IN ('r', 'm')) l
             WHERE EXISTS (SELECT 1 FROM pg_catalog.unnest(l.reloptions) o
                            WHERE o LIKE 'autovacuum_vacuum_scale_factor=%'
                               OR o LIKE 'autovacuum_analyze_scale_factor=%')
        LOOP
            BEGIN
                EXECUTE format('ALTER TABLE %s RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor)',
                               v_leaf);
            EXCEPTION WHEN insufficient_privilege THEN
                v_skipped := v_skipped + 1;
                v_error := SQLERRM;
            END;
        END LOOP;
        IF v_skipped > 0 THEN
            RAISE NOTICE 'pgpulse: autovacuum settings of public.% left on % table(s): % (run uninstall as the table owner)',
                v_table, v_skipped, v_error;
        END IF;
    END LOOP;

    -- 2b. V014's SELECT on sequences and its default privilege for pgpulse_monitor (DROP OWNED BY
    --     below revokes them only for a role pgpulse created; this covers a role that existed before).
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'pgpulse_monitor') THEN
        FOR v_leaf IN
            SELECT c.oid::pg_catalog.regclass
              FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'S' AND n.nspname !~ '^pg_'
               AND n.nspname NOT IN ('information_schema', 'monitoring')
               AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
        LOOP
            EXECUTE pg_catalog.format('REVOKE SELECT ON SEQUENCE %s FROM pgpulse_monitor', v_leaf);
        END LOOP;
        ALTER DEFAULT PRIVILEGES REVOKE SELECT ON SEQUENCES FROM pgpulse_monitor;
    END IF;

    -- 3. The schema and everything in it (grants on its objects go with it).
    DROP SCHEMA IF EXISTS monitoring CASCADE;

    -- 4. Roles created by pgpulse.
    FOREACH v_role IN ARRAY v_roles LOOP
        SELECT r.oid INTO v_roleid FROM pg_catalog.pg_roles r WHERE r.rolname = v_role;
        CONTINUE WHEN v_roleid IS NULL;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend d
                    WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass AND d.refobjid = v_roleid
                      AND d.deptype = 'o'
                      AND d.dbid = (SELECT db.oid FROM pg_catalog.pg_database db
                                     WHERE db.datname = pg_catalog.current_database())) THEN
            RAISE NOTICE 'pgpulse: role % owns objects in this database; it is kept with its privileges', v_role;
            CONTINUE;
        END IF;
        BEGIN
            -- Owns nothing here (checked above), so this only revokes its privileges in this database.
            EXECUTE format('DROP OWNED BY %I', v_role);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pgpulse: DROP OWNED BY % failed (%: %)', v_role, SQLSTATE, SQLERRM;
        END;
        BEGIN
            EXECUTE format('DROP ROLE %I', v_role);
            RAISE NOTICE 'pgpulse: role % dropped', v_role;
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege OR object_in_use THEN
            RAISE NOTICE 'pgpulse: role % kept: % (probably still used by pgpulse in another database of this cluster)',
                v_role, SQLERRM;
        END;
    END LOOP;
END
$$;
