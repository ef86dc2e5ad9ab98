//! Discovery of a server's databases (`discover_databases`): the databases an entry's globs
//! select become targets `ENTRY/DATNAME` with the entry's labels; a database whose name is no
//! valid target name (any role with CREATEDB chooses it) is skipped and counted, never
//! echoed; a new database is sampled within the interval, a dropped one answers 404; a read
//! that fails keeps the last list; the discovery's connection closes after each read.

use std::time::Duration;

use pgpulse::config::discover::DiscoverSettings;

use super::{WHOAMI, target, whoami};
use crate::harness::{PATIENCE, connect, eventually, exec, own_cluster, scalar};
use crate::service::{Running, sample, start_settings};

const DISCOVERED: &str = "pgpulse_fleet_discovered_databases{discovery=\"main\"}";
const SKIPPED: &str = "pgpulse_fleet_discovery_skipped_databases{discovery=\"main\"}";
const LAST_OK: &str = "pgpulse_fleet_last_discovery_successful{discovery=\"main\"}";

/// The `__param_target`s `/sd` lists, with each one's `cluster` label.
async fn listed(svc: &Running) -> Vec<(String, String)> {
    let (status, sd) = svc.get("/sd").await;
    assert_eq!(status, 200);
    assert!(!sd.contains("DROP"), "a hostile name is never echoed: {sd}");
    let sd: serde_json::Value = serde_json::from_str(&sd).unwrap();
    let mut out: Vec<(String, String)> = sd
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let l = &g["labels"];
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (s("__param_target"), s("cluster"))
        })
        .collect();
    out.sort();
    out
}

/// A 404 for `name`, within patience (a removal is applied at the next read).
async fn gone(svc: &Running, name: &str) {
    eventually(PATIENCE, || async {
        (svc.probe(name).await.0 == 404).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{name} still answers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_databases_are_discovered_selected_and_followed() {
    let cluster = own_cluster(Default::default());
    let admin = connect(&cluster.url("postgres")).await;
    for db in [
        "listing",
        "trade_a",
        "trade_b",
        "risk",
        "\"trade x\"\"; DROP\"",
    ] {
        exec(&admin, &format!("CREATE DATABASE {db}")).await;
    }
    exec(
        &admin,
        "CREATE DATABASE trade_closed ALLOW_CONNECTIONS false",
    )
    .await;
    let svc = start_settings(WHOAMI, |s, _| {
        let mut t = target("main", &cluster.url("listing"), &[("cluster", "eu1")]);
        t.discover_databases = Some(DiscoverSettings {
            include: vec!["trade*".to_owned()],
            exclude: vec!["trade_b".to_owned()],
            interval: Duration::from_secs(1),
            max_databases: 10,
        });
        s.targets = vec![t];
    })
    .await;
    svc.wait_probe("main/trade_a", "its database", |b| {
        sample(b, &whoami("trade_a")) == Some(1.0)
    })
    .await;
    let m = svc
        .wait_for("the discovery's figures", |m| {
            sample(m, DISCOVERED) == Some(1.0) && sample(m, LAST_OK) == Some(1.0)
        })
        .await;
    assert_eq!(sample(&m, SKIPPED), Some(1.0), "the hostile name:\n{m}");
    assert!(!m.contains("DROP"), "{m}");
    let eu1 = |n: &str| (n.to_owned(), "eu1".to_owned());
    assert_eq!(listed(&svc).await, [eu1("main/trade_a")]);
    for name in [
        "main",
        "main/listing",
        "main/trade_b",
        "main/risk",
        "main/trade_closed",
    ] {
        assert_eq!(svc.probe(name).await.0, 404, "{name}");
    }
    // Each read's connection closes after it: none stays on the list's database.
    let lingering = "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = 'pgpulse' AND datname = 'listing'";
    eventually(PATIENCE, || async {
        (scalar(&admin, lingering).await == 0).then_some(())
    })
    .await
    .expect("the discovery's connection closes");

    exec(&admin, "CREATE DATABASE trade_c").await;
    svc.wait_probe("main/trade_c", "its database", |b| {
        sample(b, &whoami("trade_c")) == Some(1.0)
    })
    .await;
    exec(&admin, "DROP DATABASE trade_a WITH (FORCE)").await;
    gone(&svc, "main/trade_a").await;
    assert_eq!(listed(&svc).await, [eu1("main/trade_c")]);

    // A read that fails keeps the last list.
    exec(&admin, "ALTER DATABASE listing ALLOW_CONNECTIONS false").await;
    svc.wait_for("the failed read", |m| sample(m, LAST_OK) == Some(0.0))
        .await;
    exec(&admin, "CREATE DATABASE trade_d").await;
    svc.wait_probe("main/trade_c", "still sampled", |b| {
        sample(b, &whoami("trade_c")) == Some(1.0)
    })
    .await;
    assert_eq!(listed(&svc).await, [eu1("main/trade_c")]);
    exec(&admin, "ALTER DATABASE listing ALLOW_CONNECTIONS true").await;
    svc.wait_probe("main/trade_d", "discovered again", |b| {
        sample(b, &whoami("trade_d")) == Some(1.0)
    })
    .await;
    svc.stop().await;
}
