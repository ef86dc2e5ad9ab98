-- pgpulse V014: pgpulse_monitor reads the state of sequences (issue 27, item 5).
--
-- The shipped catalog's `sequences` query (pg_sequence_used_ratio, the Sequences panel and
-- PgSequenceNearLimit) reads pg_sequences, whose last_value is NULL unless the reading role
-- has SELECT or USAGE on the sequence. pg_monitor grants neither, so the query saw nothing,
-- even in the demo. SELECT is the least that works: it reads the sequence's counters (numbers,
-- never table data) and allows neither nextval (USAGE) nor setval (UPDATE).
--
-- Granted on every sequence outside the system schemas whose owner the migrating role is (or
-- is a member of); the others are named in a NOTICE for their owner to grant. Default
-- privileges cover the sequences the migrating role creates later (in any schema); sequences
-- other roles create later need their own GRANT (`pgpulse verify` names them).
-- `pgpulse uninstall` removes these grants with the role (DROP OWNED BY in this database).

DO $$
DECLARE
    r         record;
    v_skipped text[] := '{}';
BEGIN
    FOR r IN
        SELECT c.oid::pg_catalog.regclass AS seq,
               pg_catalog.pg_has_role(c.relowner, 'USAGE') AS mine
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'S'
           AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
           AND NOT pg_catalog.has_table_privilege('pgpulse_monitor', c.oid, 'SELECT')
         ORDER BY 1
    LOOP
        IF r.mine THEN
            EXECUTE pg_catalog.format('GRANT SELECT ON SEQUENCE %s TO pgpulse_monitor', r.seq);
        ELSE
            v_skipped := v_skipped || r.seq::text;
        END IF;
    END LOOP;
    IF pg_catalog.cardinality(v_skipped) > 0 THEN
        RAISE NOTICE 'pgpulse: pgpulse_monitor may not read % sequence(s) of other owners: % (as their owner: GRANT SELECT ON SEQUENCE ... TO pgpulse_monitor)',
            pg_catalog.cardinality(v_skipped), pg_catalog.array_to_string(v_skipped, ', ');
    END IF;
END
$$;

ALTER DEFAULT PRIVILEGES GRANT SELECT ON SEQUENCES TO pgpulse_monitor;
