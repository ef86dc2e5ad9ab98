#!/bin/sh
# Runs once, when the data volume is empty (/docker-entrypoint-initdb.d of the postgres image),
# before the trade-engine schema. Creates the login role `pgpulse` the exporter samples with.
# pgpulse_monitor is created here (NOLOGIN) so that the login can be its member; `pgpulse
# migrate` then grants it pg_monitor and read access to the monitoring schema. The migration
# records the role as pre-existing, so `pgpulse uninstall` leaves it alone.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v pw="${PGPULSE_MONITOR_PASSWORD:-pgpulse-monitor}" <<'SQL'
CREATE ROLE pgpulse_monitor NOLOGIN;
CREATE ROLE pgpulse LOGIN PASSWORD :'pw' IN ROLE pgpulse_monitor;
-- The key-query plan check (docs/plans.md) EXPLAINs queries on the trade tables, and EXPLAIN
-- needs SELECT on them even though nothing is executed: grant it on the tables created next.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO pgpulse;
SQL
