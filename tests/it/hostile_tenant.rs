//! A hostile tenant of the trade database (issue 24, items 3 and 7): a role without any grant
//! on the trade tables that owns a schema, partitioned tables whose DEFAULT partitions carry a
//! row-level-security policy, a trigger, an index and expression statistics on its own
//! functions, and functions and an operator named like what pgpulse calls. Nothing of it runs
//! as the non-superuser owner that migrated (the documented setup), whoever reads the
//! monitoring schema and whatever its search_path; the partition family reports statistics for
//! the tenant's tables; `verify` as that owner checks what it may and says what to grant.

use crate::harness::exec;
use tokio_postgres::Client;

use crate::harness::{TestDb, connect, flush_stats, pgpulse, strings, text};
use crate::service::{sample, start};
use crate::signals::shipped;

/// Roles of one test, dropped (best effort) when it ends, after its database.
struct Roles {
    names: Vec<String>,
}

impl Drop for Roles {
    fn drop(&mut self) {
        let drops = std::mem::take(&mut self.names)
            .into_iter()
            .map(|n| format!("DROP ROLE IF EXISTS {n}"))
            .collect();
        crate::harness::cleanup(&crate::harness::admin_url(), drops);
    }
}

/// A trade database owned and migrated by a non-superuser, with a tenant and a reader
/// (a `pgpulse_monitor` member). Fields drop in order: the database, then the roles.
struct Tenancy {
    db: TestDb,
    _roles: Roles,
    owner: String,
    tenant: String,
    reader: String,
}

impl Tenancy {
    async fn new() -> Self {
        let tag = rand::random::<u32>();
        let (owner, tenant, reader) = (
            format!("owner_{tag}"),
            format!("tenant_{tag}"),
            format!("reader_{tag}"),
        );
        let roles = Roles {
            names: vec![reader.clone(), tenant.clone(), owner.clone()],
        };
        let db = TestDb::new().await;
        let admin = db.client().await;
        exec(
            &admin,
            &format!(
                "{} CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
                crate::harness::owner_and_tenant(&owner, &tenant, &db.name)
            ),
        )
        .await;
        let mut o = connect(&as_user(&db.url, &owner)).await;
        pgpulse::demo::schema::install(&o).await.unwrap();
        pgpulse::db::migrate::migrate(&mut o)
            .await
            .expect("migrate as the non-superuser owner");
        exec(
            &admin,
            &format!(
                "CREATE ROLE {reader} LOGIN IN ROLE pgpulse_monitor; \
                 CREATE SCHEMA tenant AUTHORIZATION {tenant}"
            ),
        )
        .await;
        Self {
            db,
            _roles: roles,
            owner,
            tenant,
            reader,
        }
    }

    /// A connection as `user`, with `search_path` put first when given.
    async fn client(&self, user: &str, search_path: Option<&str>) -> Client {
        connect(&self.url(user, search_path)).await
    }

    fn url(&self, user: &str, search_path: Option<&str>) -> String {
        let url = as_user(&self.db.url, user);
        match search_path {
            Some(p) => format!(
                "{url}{}options=-c%20search_path%3D{}",
                if url.contains('?') { '&' } else { '?' },
                p.replace(',', "%2C")
            ),
            None => url,
        }
    }

    /// Installs the tenant's objects and empties its record of who ran its code.
    async fn install_tenant(&self) {
        let t = self.client(&self.tenant, None).await;
        t.batch_execute(&TENANT_SQL.replace("{tenant}", &self.tenant))
            .await
            .unwrap();
        flush_stats(&t).await;
        t.batch_execute("TRUNCATE tenant.seen").await.unwrap();
    }

    /// Who ran the tenant's code other than the tenant itself: current_user, session_user, what,
    /// how often.
    async fn ran_as_others(&self) -> Vec<String> {
        let c = self.db.client().await;
        strings(
            &c,
            &format!(
                "SELECT format('%s (session %s): %s x%s', who, via, what, count(*)) FROM tenant.seen \
                 WHERE who <> '{}' GROUP BY who, via, what ORDER BY 1",
                self.tenant
            ),
        )
        .await
    }

    /// How many of orders and trades the tenant may read.
    async fn trade_tables_of_tenant(&self) -> i64 {
        let c = self.db.client().await;
        crate::harness::scalar(
            &c,
            &format!(
                "SELECT count(*) FROM unnest(ARRAY['public.orders', 'public.trades']) r \
                 WHERE has_table_privilege('{}', r, 'SELECT')",
                self.tenant
            ),
        )
        .await
    }
}

fn as_user(url: &str, user: &str) -> String {
    url.replacen("postgres@", &format!("{user}@"), 1)
}

/// The search_path of a victim whose path puts a schema of the tenant first.
const HOSTILE_PATH: &str = "tenant,pg_catalog,public";

/// The tenant's objects. `tenant.record` notes who runs it and, when that is not the tenant,
/// tries to take the trade tables.
const TENANT_SQL: &str = r#"
CREATE TABLE tenant.seen (who text NOT NULL, via text NOT NULL, what text NOT NULL);
GRANT INSERT ON tenant.seen TO PUBLIC;
CREATE FUNCTION tenant.record(what text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $f$
BEGIN
    INSERT INTO tenant.seen VALUES (current_user, session_user, what);
    IF current_user <> '{tenant}' THEN
        BEGIN
            EXECUTE 'GRANT ALL ON public.orders, public.trades TO {tenant}';
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END IF;
    RETURN true;
END $f$;
CREATE FUNCTION tenant.boom() RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN RAISE EXCEPTION 'the tenant''s policy says no'; END $f$;
-- folded at plan time wherever tenant.f(<column>) is planned: an index, expression statistics
CREATE FUNCTION tenant.g(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN PERFORM tenant.record('index expression'); RETURN $1; END $f$;
CREATE FUNCTION tenant.f(int) RETURNS int LANGUAGE sql IMMUTABLE AS $f$ SELECT $1 + tenant.g(1) $f$;
CREATE FUNCTION tenant.trig() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN PERFORM tenant.record('trigger ' || TG_OP); RETURN NULL; END $f$;

CREATE TABLE tenant.book (id int NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE tenant.book_now PARTITION OF tenant.book FOR VALUES FROM ('2000-01-01') TO ('2100-01-01');
CREATE TABLE tenant.book_default PARTITION OF tenant.book DEFAULT;
INSERT INTO tenant.book SELECT g, '2200-01-01'::timestamptz + g * interval '1 day' FROM generate_series(1, 37) g;
CREATE INDEX book_default_f ON tenant.book_default (tenant.f(id));
CREATE STATISTICS tenant.book_default_f ON (tenant.f(id)) FROM tenant.book_default;
CREATE TRIGGER rows AFTER INSERT OR UPDATE OR DELETE ON tenant.book_default
    FOR EACH ROW EXECUTE FUNCTION tenant.trig();
CREATE TRIGGER truncate AFTER TRUNCATE ON tenant.book_default
    FOR EACH STATEMENT EXECUTE FUNCTION tenant.trig();
ALTER TABLE tenant.book_default ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY bait ON tenant.book_default USING (tenant.record('policy'));

CREATE TABLE tenant.alarm (at timestamptz NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE tenant.alarm_default PARTITION OF tenant.alarm DEFAULT;
INSERT INTO tenant.alarm SELECT now() FROM generate_series(1, 5);
ALTER TABLE tenant.alarm_default ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY no ON tenant.alarm_default USING (tenant.boom());

-- names pgpulse's SQL uses, for a victim whose search_path puts this schema first
CREATE FUNCTION tenant.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $f$
BEGIN PERFORM tenant.record('unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
CREATE FUNCTION tenant.quote_ident(text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM tenant.record('quote_ident'); RETURN pg_catalog.quote_ident($1); END $f$;
CREATE FUNCTION tenant.lower(text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM tenant.record('lower'); RETURN pg_catalog.lower($1); END $f$;
CREATE FUNCTION tenant.format(text, regclass, bigint) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM tenant.record('format'); RETURN pg_catalog.format($1, $2, $3); END $f$;
CREATE FUNCTION tenant.count_step(bigint) RETURNS bigint LANGUAGE plpgsql AS $f$
BEGIN PERFORM tenant.record('count'); RETURN $1 + 1; END $f$;
CREATE AGGREGATE tenant.count(*) (SFUNC = tenant.count_step, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION tenant.name_eq_text(name, text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN PERFORM tenant.record('operator ='); RETURN $1::text OPERATOR(pg_catalog.=) $2; END $f$;
CREATE OPERATOR tenant.= (LEFTARG = name, RIGHTARG = text, FUNCTION = tenant.name_eq_text);
CREATE FUNCTION tenant.jsonb_build_object(text, integer, text, integer) RETURNS jsonb LANGUAGE plpgsql AS $f$
BEGIN PERFORM tenant.record('jsonb_build_object'); RETURN pg_catalog.jsonb_build_object($1, $2, $3, $4); END $f$;

-- the bait: the monitoring owner may read everything of the tenant
GRANT USAGE ON SCHEMA tenant TO PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA tenant TO PUBLIC;
"#;

/// The V004 definition of `default_partition_rows`, installed as `former.default_partition_rows`.
fn former_definition() -> String {
    let v004 = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/V004__performance_monitoring.sql"
    ))
    .unwrap();
    let from = v004
        .find("CREATE OR REPLACE FUNCTION monitoring.default_partition_rows(")
        .unwrap();
    let to = from + v004[from..].find("COMMENT ON FUNCTION").unwrap();
    v004[from..to].replace(
        "monitoring.default_partition_rows(",
        "former.default_partition_rows(",
    )
}

/// `(parent, default_partition_rows)` of every row of `v_partition_health`, read with nothing
/// but the view's own SQL (the session's search_path may be hostile).
async fn partition_health(c: &Client) -> Vec<(String, i64)> {
    c.query("SELECT * FROM monitoring.v_partition_health", &[])
        .await
        .expect("v_partition_health answers")
        .iter()
        .map(|r| {
            (
                format!(
                    "{}.{}",
                    r.get::<_, String>("parent_schemaname"),
                    r.get::<_, String>("parent_relname")
                ),
                r.get::<_, i64>("default_partition_rows"),
            )
        })
        .collect()
}

fn rows_of(health: &[(String, i64)], parent: &str) -> i64 {
    health
        .iter()
        .find(|(p, _)| p == parent)
        .unwrap_or_else(|| panic!("{parent} missing from {health:?}"))
        .1
}

/// The health check's check names, read with nothing but the function call.
async fn health_checks(c: &Client) -> Vec<String> {
    c.query("SELECT * FROM monitoring.database_health_check()", &[])
        .await
        .expect("database_health_check answers")
        .iter()
        .map(|r| r.get::<_, String>("check_name"))
        .collect()
}

async fn live_tuples(c: &Client, rel: &str) -> i64 {
    crate::harness::scalar(
        c,
        &format!("SELECT pg_stat_get_live_tuples('{rel}'::regclass)"),
    )
    .await
}

/// What a reader of the schema sees as `user`, with `path` as its search_path: the tenant's
/// DEFAULT partitions by their statistics, the owner's `orders_default` by its `exact` count,
/// every health check.
async fn read_as(t: &Tenancy, user: &str, path: Option<&str>, exact: i64) {
    let c = t.client(user, path).await;
    let health = partition_health(&c).await;
    assert_eq!(rows_of(&health, "tenant.book"), 37, "{user} {path:?}");
    assert_eq!(
        rows_of(&health, "tenant.alarm"),
        5,
        "the raising policy never ran"
    );
    assert_eq!(
        rows_of(&health, "public.orders"),
        exact,
        "the owner's own: exact"
    );
    let checks = health_checks(&c).await;
    assert_eq!(checks.len(), 8, "{checks:?}");
    assert!(checks.iter().any(|n| n == "Partition Runway"));
    let direct: Option<i64> = c
        .query_one(
            "SELECT monitoring.default_partition_rows($1::text::regclass::oid)",
            &[&"tenant.book_default"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(direct, Some(37));
}

/// The control: V004's definition, owned by the same owner and called by the reader, runs the
/// tenant's policy and index expression as that owner.
async fn call_the_former_definition(t: &Tenancy) -> Vec<String> {
    let o = t.client(&t.owner, None).await;
    exec(
        &o,
        &format!(
            "CREATE SCHEMA former; {}; GRANT USAGE ON SCHEMA former TO {r}; \
         GRANT EXECUTE ON FUNCTION former.default_partition_rows(oid) TO {r}",
            former_definition(),
            r = t.reader
        ),
    )
    .await;
    let r = t.client(&t.reader, None).await;
    r.query_one(
        "SELECT former.default_partition_rows($1::text::regclass::oid)",
        &[&"tenant.book_default"],
    )
    .await
    .unwrap();
    t.ran_as_others().await
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_a_hostile_tenant_runs_as_the_owner_and_its_partitions_report_statistics() {
    let t = Tenancy::new().await;
    t.install_tenant().await;
    let admin = t.db.client().await;
    assert_eq!(live_tuples(&admin, "tenant.book_default").await, 37);
    assert_eq!(live_tuples(&admin, "tenant.alarm_default").await, 5);
    let exact = crate::harness::scalar(&admin, "SELECT count(*) FROM orders_default").await;
    // The reader (a pgpulse_monitor member) and the owner read the schema, each also with a
    // search_path that puts the tenant's schema first.
    for user in [&t.reader, &t.owner] {
        for path in [None, Some(HOSTILE_PATH)] {
            read_as(&t, user, path, exact).await;
        }
    }
    // The owner's commands: verify (every check, partition functions rolled back) and the
    // weekly VACUUM (ANALYZE) of every table the owner may vacuum, the tenant's included.
    let hostile = t.url(&t.owner, Some(HOSTILE_PATH));
    let out = pgpulse(&["verify", "--database-url", &hostile], &[]);
    let (stdout, stderr) = text(&out);
    assert!(!stdout.contains("FAIL"), "{stdout}{stderr}");
    let weekly = ["maintain", "--run-now", "weekly_vacuum", "--database-url"];
    let out = pgpulse(&[&weekly[..], &[hostile.as_str()]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out).1);

    assert_eq!(t.ran_as_others().await, Vec::<String>::new());
    assert_eq!(
        t.trade_tables_of_tenant().await,
        0,
        "no grant to the tenant"
    );

    let ran = call_the_former_definition(&t).await;
    for what in ["policy", "index expression"] {
        let by_owner = format!("{} (session {}): {what}", t.owner, t.reader);
        assert!(
            ran.iter().any(|l| l.starts_with(&by_owner)),
            "the former definition ran the tenant's {what} as the owner: {ran:?}"
        );
    }
    assert_eq!(
        t.trade_tables_of_tenant().await,
        2,
        "the former definition handed the trade tables to the tenant"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owners_default_partitions_are_counted_exactly_only_where_no_other_code_can_run() {
    let t = Tenancy::new().await;
    t.install_tenant().await;
    let o = t.client(&t.owner, None).await;
    exec(&o, "INSERT INTO orders (user_id, symbol, side, order_type, price, quantity, filled_quantity, status, created_at) \
           SELECT 1, 'BTC-USD', 'buy', 'limit', 1, 1, 0, 'open', now() + interval '10 years' FROM generate_series(1, 3);
         CREATE TABLE ledger (id int NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE ledger_default PARTITION OF ledger DEFAULT;
         INSERT INTO ledger SELECT g, now() FROM generate_series(1, 4) g;
         ALTER TABLE ledger_default ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
         CREATE POLICY theirs ON ledger_default USING (tenant.record('owner''s policy'));
         CREATE TABLE fees (id int NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE fees_default PARTITION OF fees DEFAULT;
         INSERT INTO fees SELECT g, now() FROM generate_series(1, 6) g;
         CREATE INDEX fees_default_f ON fees_default (tenant.f(id));").await;
    flush_stats(&o).await;
    // A DEFAULT partition that is a temporary table of a session that stays open.
    let other = t.client(&t.owner, None).await;
    exec(
        &other,
        "CREATE TEMP TABLE scratch (at timestamptz NOT NULL) PARTITION BY RANGE (at);
             CREATE TEMP TABLE scratch_default PARTITION OF scratch DEFAULT;
             INSERT INTO scratch SELECT now() FROM generate_series(1, 2);",
    )
    .await;
    let admin = t.db.client().await;
    let tenant = t.client(&t.tenant, None).await;
    exec(&tenant, "TRUNCATE tenant.seen").await;

    let r = t.client(&t.reader, None).await;
    let health = partition_health(&r).await;
    // Its own plain DEFAULT partition: the exact count, whatever the statistics say.
    let exact = crate::harness::scalar(&o, "SELECT count(*) FROM orders_default").await;
    assert!(exact >= 3);
    assert_eq!(rows_of(&health, "public.orders"), exact);
    // Forced row-level security and an index expression: the statistics, nothing run.
    assert_eq!(
        rows_of(&health, "public.ledger"),
        live_tuples(&admin, "ledger_default").await
    );
    assert_eq!(rows_of(&health, "public.ledger"), 4);
    assert_eq!(
        rows_of(&health, "public.fees"),
        live_tuples(&admin, "fees_default").await
    );
    assert_eq!(rows_of(&health, "public.fees"), 6);
    assert!(
        health.iter().any(|(p, _)| p.ends_with(".scratch")),
        "the temporary partitioned table is listed: {health:?}"
    );
    assert_eq!(t.ran_as_others().await, Vec::<String>::new());

    // Statistics reset (as after a crash): the estimate falls back to reltuples.
    exec(&o, "ANALYZE ledger_default").await;
    exec(
        &admin,
        "SELECT pg_stat_reset_single_table_counters('ledger_default'::regclass)",
    )
    .await;
    let reltuples = crate::harness::scalar(
        &admin,
        "SELECT reltuples::bigint FROM pg_class WHERE oid = 'ledger_default'::regclass",
    )
    .await;
    assert_eq!(reltuples, 4);
    assert_eq!(live_tuples(&admin, "ledger_default").await, 0);
    assert_eq!(rows_of(&partition_health(&r).await, "public.ledger"), 4);
    assert_eq!(t.ran_as_others().await, Vec::<String>::new());
    drop(other);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_partition_family_keeps_reporting_with_the_hostile_tenant_present() {
    let t = Tenancy::new().await;
    t.install_tenant().await;
    let svc = start(
        &t.url(&t.reader, None),
        &shipped(&["partitions"], "2s"),
        |_| {},
    )
    .await;
    let body = svc
        .wait_for("the tenant's partitions sampled", |b| {
            sample(b, "pg_partition_default_rows{parent=\"tenant.book\"}").is_some()
        })
        .await;
    assert_eq!(
        sample(&body, "pg_partition_default_rows{parent=\"tenant.book\"}"),
        Some(37.0)
    );
    assert_eq!(
        sample(&body, "pg_partition_default_rows{parent=\"tenant.alarm\"}"),
        Some(5.0)
    );
    assert!(
        sample(&body, "pg_partition_runway_seconds{parent=\"orders\"}").is_some_and(|s| s > 0.0)
    );
    assert!(sample(&body, "pg_partition_runway_seconds{parent=\"tenant.book\"}").is_some());
    drop(svc);
    assert_eq!(t.ran_as_others().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_as_a_non_superuser_owner_warns_with_the_grant_instead_of_a_server_error() {
    let t = Tenancy::new().await;
    let admin = t.db.client().await;
    let member: bool = admin
        .query_one(
            &format!(
                "SELECT pg_has_role('{}', 'pg_read_all_settings', 'USAGE')",
                t.owner
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!member, "the owner may not read shared_preload_libraries");
    let out = pgpulse(&["verify", "--database-url", &t.url(&t.owner, None)], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    // The checks; the trade-table lines (`TABLE ...`, `LOCK_TIMEOUT ...`) follow them.
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            !["TABLE ", "LOCK_TIMEOUT ", "SLO "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert_eq!(lines.len(), 15, "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(!stdout.contains("must be superuser"), "{stdout}");
    let statements = lines[10];
    assert!(
        statements.starts_with("WARN  11.")
            && statements.contains(&format!("GRANT pg_read_all_settings TO {};", t.owner))
            && statements.contains("collecting:"),
        "{statements}"
    );
    assert!(lines[14].starts_with("PASS  15."), "{}", lines[14]);
    // With the grant, the same check reads the preload and passes.
    exec(
        &admin,
        &format!("GRANT pg_read_all_settings TO {}", t.owner),
    )
    .await;
    let out = pgpulse(&["verify", "--database-url", &t.url(&t.owner, None)], &[]);
    let stdout = text(&out).0;
    let line = stdout.lines().nth(10).unwrap_or_default().to_owned();
    assert!(line.starts_with("PASS  11."), "{stdout}");
    exec(
        &admin,
        &format!("REVOKE pg_read_all_settings FROM {}", t.owner),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_fails_until_migrate_hardens_default_partition_rows_and_names_unpinned_definers() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let check15 = || {
        let url = db.url.clone();
        async move {
            let out = pgpulse(&["verify", "--database-url", &url], &[]);
            text(&out).0.lines().nth(14).unwrap_or_default().to_owned()
        }
    };
    assert!(check15().await.starts_with("PASS  15."));
    // A database migrated before V011: the V004 function, V011 not recorded.
    exec(
        &c,
        &format!(
            "{}; DELETE FROM monitoring.schema_migrations WHERE version = 11",
            former_definition().replace("former.", "monitoring.")
        ),
    )
    .await;
    let line = check15().await;
    assert!(
        line.starts_with("FAIL  15.")
            && line.contains("default_partition_rows")
            && line.contains("`pgpulse migrate`"),
        "{line}"
    );
    let out = pgpulse(&["migrate", "--database-url", &db.url], &[]);
    assert!(
        text(&out).0.contains("applied V011 definer_hardening"),
        "{:?}",
        text(&out)
    );
    assert!(check15().await.starts_with("PASS  15."));
    // A definer function whose search_path is not pinned, whoever created it.
    exec(&c, "CREATE FUNCTION monitoring.sneak() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'").await;
    let line = check15().await;
    assert!(
        line.starts_with("FAIL  15.") && line.contains("monitoring.sneak()"),
        "{line}"
    );
}
