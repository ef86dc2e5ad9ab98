//! A fleet's configuration through `pgpulse check-config`: a good one is summed up; a
//! password in a target URL, `database.url` beside `targets:`, a targets file with an unknown
//! key or a duplicate name, a bad `discover_databases` are exit 2 naming the file, the line
//! and the target, never the password.

use crate::harness::{pgpulse, text};

fn check(dir: &std::path::Path, config: &str) -> (Option<i32>, String) {
    let file = dir.join("pgpulse.yaml");
    std::fs::write(&file, config).unwrap();
    let out = pgpulse(&["check-config", "--config", file.to_str().unwrap()], &[]);
    let (o, e) = text(&out);
    (out.status.code(), format!("{o}{e}"))
}

#[test]
fn a_fleet_configuration_is_checked_and_its_errors_name_file_line_and_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let targets = d.join("targets.yaml");
    std::fs::write(
        &targets,
        "- targets: ['db1:5432/trading', 'db2:5432/trading']\n  labels: {cluster: eu}\n",
    )
    .unwrap();
    let good = format!(
        "targets:\n  - {{name: primary, url: 'postgres://db0:5432/trading', auth: monitor, labels: {{cluster: eu}}}}\n\
         targets_file: {}\nauths:\n  monitor: {{user: pgpulse_monitor, password_file: /run/secrets/pw}}\n\
         fleet: {{max_connections: 12}}\n",
        targets.display()
    );
    let (code, msg) = check(d, &good);
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("a fleet of 3 targets"), "{msg}");

    let discovering = "targets:\n  - name: eu1\n    url: 'postgres://db0:5432/postgres'\n    \
                       discover_databases: {include: ['trad*'], exclude: [trading_old], interval: 2m}\n";
    let (code, msg) = check(d, discovering);
    assert_eq!(code, Some(0), "{msg}");
    assert!(
        msg.contains("0 targets") && msg.contains("1 servers whose databases are discovered"),
        "{msg}"
    );
    let (code, msg) = check(
        d,
        "targets:\n  - name: eu1\n    url: 'postgres://db0/postgres'\n    \
         discover_databases: {include: []}\n",
    );
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains("targets[0]: target `eu1`") && msg.contains("include is empty"),
        "{msg}"
    );
    let (code, msg) = check(
        d,
        "targets:\n  - name: eu1\n    url: 'postgres://db0/postgres'\n    \
         discover_databases: {incude: ['*']}\n",
    );
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("incude"), "{msg}");

    let (code, msg) = check(
        d,
        "targets:\n  - {name: p, url: 'postgres://u:Hunter2-Secret@db0/trading'}\n",
    );
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains("targets[0]: target `p`") && msg.contains("password_file"),
        "{msg}"
    );
    assert!(!msg.contains("Hunter2-Secret"), "{msg}");

    let (code, msg) = check(
        d,
        "database: {url: 'postgres://db0/x'}\ntargets:\n  - {name: p, url: 'postgres://db0/trading'}\n",
    );
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("exclude each other"), "{msg}");

    std::fs::write(
        &targets,
        "- targets: ['db1/trading']\n- targets: ['db1/trading']\n",
    )
    .unwrap();
    let (code, msg) = check(d, &format!("targets_file: {}\n", targets.display()));
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains("db1:5432/trading") && msg.contains("two targets"),
        "{msg}"
    );

    std::fs::write(&targets, "- targets: ['db1/trading']\n  lables: {x: y}\n").unwrap();
    let (code, msg) = check(d, &format!("targets_file: {}\n", targets.display()));
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("targets.yaml:2"), "{msg}");
}
