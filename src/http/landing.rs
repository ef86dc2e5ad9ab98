//! The landing page: version, links, every query's last success and the kind and time of
//! its last error, and the configuration without secrets. It shows no database data: no
//! server messages, no column values (those go to the log at debug level). `web.landing_page:
//! false` turns it off.

use std::fmt::Write;
use std::time::SystemTime;

use axum::extract::State;
use axum::response::Html;

use super::AppState;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ago(t: SystemTime) -> String {
    match SystemTime::now().duration_since(t) {
        Ok(d) => format!("{}s ago", d.as_secs()),
        Err(_) => "just now".to_owned(),
    }
}

fn unix(t: SystemTime) -> u64 {
    crate::clock::unix_seconds(t) as u64
}

/// The fleet's targets with their states and links, or nothing for one database.
fn targets(state: &AppState) -> String {
    let Some(targets) = &state.targets else {
        return String::new();
    };
    let mut rows = String::new();
    for (name, t) in targets.load().iter() {
        let e = t.exposition.load();
        let st = if !e.up {
            "down"
        } else if !e.ready {
            "waiting for first runs"
        } else {
            "ready"
        };
        let _ = write!(
            rows,
            "<tr><td><a href=\"/probe?target={n}\">{n}</a></td><td>{st}</td></tr>",
            n = escape(name)
        );
    }
    format!(
        "<h2>Targets</h2><p>Prometheus discovers them at <a href=\"/sd\">/sd</a>.</p>\
         <table border=\"1\"><tr><th>target</th><th>state</th></tr>{rows}</table>"
    )
}

/// One database's state and every query's last success and error.
fn queries(snapshot: &crate::snapshot::Snapshot) -> String {
    let mut rows = String::new();
    for (name, st) in snapshot.statuses() {
        let success = st
            .last_success
            .map(|t| format!("{} (unix {})", ago(t), unix(t)))
            .unwrap_or_else(|| "never".to_owned());
        let error = st
            .last_error
            .map(|(t, kind)| format!("{} (unix {}): {}", ago(t), unix(t), escape(&kind)))
            .unwrap_or_default();
        let enabled = if st.enabled {
            "yes".to_owned()
        } else {
            format!(
                "no: {}",
                escape(st.disabled_reason.as_deref().unwrap_or("not run yet"))
            )
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{enabled}</td><td>{success}</td><td>{error}</td></tr>",
            escape(&name)
        );
    }
    let up = if snapshot.is_up() { 1 } else { 0 };
    format!(
        "<p>pg_up = {up}.</p><h2>Queries</h2><table border=\"1\"><tr><th>query</th><th>enabled</th>\
         <th>last success</th><th>last error (kind; details in the log at debug level)</th></tr>\
         {rows}</table>"
    )
}

pub(super) async fn page(State(state): State<AppState>) -> Html<String> {
    let body = match &state.targets {
        Some(_) => targets(&state),
        None => queries(&state.snapshot),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>pgpulse</title></head><body>\
         <h1>pgpulse {version}</h1>\
         <p>PostgreSQL exporter for the trade engine.</p>\
         <ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/health\">/health</a></li>\
         <li><a href=\"/ready\">/ready</a></li><li><a href=\"/health/db\">/health/db</a></li>\
         <li><a href=\"/debug/locks\">/debug/locks</a> (who blocks whom, with the statements; \
         served behind basic authentication or on a loopback address)</li></ul>\
         {body}<h2>Configuration</h2><pre>{config}</pre></body></html>",
        version = env!("CARGO_PKG_VERSION"),
        config = escape(&state.config_summary),
    ))
}
