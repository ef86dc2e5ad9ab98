//! PgBouncer as a fleet target, against a real PgBouncer in front of a real PostgreSQL: pool
//! exhaustion shows as SHOW POOLS shows it, totals move exactly as SHOW STATS's, a restart
//! is a new life of the counters, and a refusing, misconfigured or hung PgBouncer gives a
//! clear error while the other targets keep their interval and the budget holds.

mod failures;
mod pools;
mod totals;

use std::collections::BTreeMap;

use pgpulse::config::Settings;
use pgpulse::config::fleet::{AuthSettings, TargetKind, TargetSettings};
use pgpulse::demo::{BouncerOptions, TempBouncer, TempCluster};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::own_cluster;

/// The password of the console role in the test PgBouncer's user list.
pub(crate) const STATS_PASSWORD: &str = "stats-secret";

/// A cluster and a PgBouncer in front of its `postgres` database, named `trade`, pool size 2.
pub(crate) fn bouncer_over_cluster(
    tweak: impl FnOnce(&mut BouncerOptions),
) -> (TempCluster, TempBouncer) {
    let cluster = own_cluster(Default::default());
    let mut opts = BouncerOptions {
        backend_port: cluster.port(),
        databases: vec![("trade".into(), "postgres".into())],
        ..Default::default()
    };
    tweak(&mut opts);
    let bouncer = TempBouncer::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    (cluster, bouncer)
}

/// Adds the PgBouncer target `name` (auth `stats`, its password in `dir/stats.pw`) with a
/// short interval to `s`.
pub(crate) fn add_bouncer(
    s: &mut Settings,
    dir: &std::path::Path,
    name: &str,
    bouncer: &TempBouncer,
    user: &str,
    password: &str,
) {
    let file = dir.join(format!("{name}.pw"));
    std::fs::write(&file, password).unwrap();
    s.auths.insert(
        name.to_owned(),
        AuthSettings {
            user: Some(user.to_owned()),
            password_file: Some(file),
            ..Default::default()
        },
    );
    s.targets.push(TargetSettings {
        name: name.to_owned(),
        url: format!(
            "postgres://127.0.0.1:{}/pgbouncer?connect_timeout=10",
            bouncer.port()
        ),
        auth: Some(name.to_owned()),
        labels: BTreeMap::from([("cluster".to_owned(), "test".to_owned())]),
        kind: TargetKind::Pgbouncer,
        discover_databases: None,
    });
    s.fleet.pgbouncer_interval = std::time::Duration::from_millis(200);
}

/// Connects to PgBouncer's console as the stats role.
pub(crate) async fn console(bouncer: &TempBouncer) -> Client {
    let url = format!(
        "postgres://pgpulse_stats:{STATS_PASSWORD}@127.0.0.1:{}/pgbouncer",
        bouncer.port()
    );
    crate::harness::connect(&url).await
}

/// Connects through PgBouncer to `trade` as `postgres`.
pub(crate) async fn client(bouncer: &TempBouncer) -> Client {
    let url = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/trade",
        bouncer.port()
    );
    crate::harness::connect(&url).await
}

/// The value of `column` in the row of `command` whose `key_column` is `key`: the truth.
pub(crate) async fn show(
    c: &Client,
    command: &str,
    key_column: &str,
    key: &str,
    column: &str,
) -> Option<f64> {
    let messages = c.simple_query(command).await.unwrap();
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get(key_column) == Some(key) => {
            r.get(column).and_then(|v| v.parse().ok())
        }
        _ => None,
    })
}
