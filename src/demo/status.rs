//! The demo's alert status line: the state of each alert from the demo's Prometheus
//! (`/api/v1/rules`: inactive, pending with the time left, firing) and Alertmanager
//! (`/api/v2/alerts`: delivered, with the receiver it routes to), and whether the demo's
//! webhook receiver was notified. Also the small HTTP/1.0 GET both of them answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one status request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` from a loopback server as HTTP/1.0 (no chunking, the body ends at close);
/// returns the status code and body.
pub(super) async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let head = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not HTTP"))?;
    Ok((code, body.to_owned()))
}

/// The value at a JSON pointer (`/data/groups`), or null.
pub(super) fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    v.pointer(pointer).unwrap_or(&NULL)
}

/// The (receiver, alertname) pairs the demo's webhook receiver was notified of.
pub(super) type Notified = Arc<Mutex<BTreeSet<(String, String)>>>;

/// One alert's state, most advanced first in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AlertState {
    /// Its condition is false.
    Inactive,
    /// Its condition is true, not yet for its `for:`; fires in about this long.
    Pending(Duration),
    /// Prometheus fires it; Alertmanager does not have it (yet).
    Firing,
    /// Alertmanager has it, routed to these receivers (or inhibited, when suppressed).
    Delivered {
        /// Receiver names.
        receivers: Vec<String>,
        /// Inhibited or silenced in Alertmanager.
        suppressed: bool,
        /// The demo's webhook receiver got a notification of it.
        notified: bool,
    },
}

impl std::fmt::Display for AlertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inactive => f.write_str("inactive"),
            Self::Pending(left) => write!(f, "pending (fires in {}s)", left.as_secs()),
            Self::Firing => f.write_str("firing"),
            Self::Delivered {
                receivers,
                suppressed,
                notified,
            } => {
                write!(f, "delivered to Alertmanager → {}", receivers.join(","))?;
                if *suppressed {
                    f.write_str(" (inhibited)")?;
                }
                if *notified {
                    f.write_str(", notified")?;
                }
                Ok(())
            }
        }
    }
}

/// Each alerting rule's state in Prometheus, from `/api/v1/rules?type=alert`, at `now`.
pub(super) fn prometheus_states(
    rules: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<String, AlertState> {
    let mut out = BTreeMap::new();
    let groups = at(rules, "/data/groups").as_array().into_iter().flatten();
    for rule in groups.flat_map(|g| at(g, "/rules").as_array().into_iter().flatten()) {
        let name = at(rule, "/name").as_str().unwrap_or_default().to_owned();
        let state = match at(rule, "/state").as_str() {
            Some("firing") => AlertState::Firing,
            Some("pending") => {
                let hold =
                    Duration::try_from_secs_f64(at(rule, "/duration").as_f64().unwrap_or(0.0))
                        .unwrap_or_default();
                let first = at(rule, "/alerts")
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| at(a, "/activeAt").as_str())
                    .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .min();
                let since = first
                    .and_then(|t| (now - t.to_utc()).to_std().ok())
                    .unwrap_or_default();
                AlertState::Pending(hold.saturating_sub(since))
            }
            _ => AlertState::Inactive,
        };
        out.insert(name, state);
    }
    out
}

/// Marks the alerts Alertmanager has (`/api/v2/alerts`) as delivered.
pub(super) fn add_alertmanager(
    states: &mut BTreeMap<String, AlertState>,
    alerts: &Value,
    notified: &Notified,
) {
    let seen = notified.lock().map(|s| s.clone()).unwrap_or_default();
    for a in alerts.as_array().into_iter().flatten() {
        let name = at(a, "/labels/alertname").as_str().unwrap_or_default();
        let receivers: Vec<String> = at(a, "/receivers")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| at(r, "/name").as_str().map(str::to_owned))
            .collect();
        let notified = receivers
            .iter()
            .any(|r| seen.contains(&(r.clone(), name.to_owned())));
        states.insert(
            name.to_owned(),
            AlertState::Delivered {
                receivers,
                suppressed: at(a, "/status/state").as_str() == Some("suppressed"),
                notified,
            },
        );
    }
}

/// The status line: the scenario's alerts (`focus`) always, every other alert that is not
/// inactive, and how many are.
pub(super) fn line(states: &BTreeMap<String, AlertState>, focus: &[&str]) -> String {
    let mut parts: Vec<String> = focus
        .iter()
        .map(|a| {
            let s = states.get(*a).cloned().unwrap_or(AlertState::Inactive);
            format!("{a} {s}")
        })
        .collect();
    let others = states.iter().filter(|(n, _)| !focus.contains(&n.as_str()));
    let (inactive, active): (Vec<_>, Vec<_>) =
        others.partition(|(_, s)| **s == AlertState::Inactive);
    parts.extend(active.into_iter().map(|(n, s)| format!("{n} {s}")));
    parts.push(format!("{} other alerts inactive", inactive.len()));
    format!("alerts: {}", parts.join(" | "))
}

/// Queries both servers and renders [`line`]; says which one did not answer.
pub(super) async fn poll(
    prometheus: SocketAddr,
    alertmanager: SocketAddr,
    notified: &Notified,
    focus: &[&str],
) -> String {
    let json = |r: std::io::Result<(u16, String)>| match r {
        Ok((200, body)) => serde_json::from_str::<Value>(&body).map_err(|e| e.to_string()),
        Ok((code, _)) => Err(format!("HTTP {code}")),
        Err(e) => Err(e.to_string()),
    };
    let rules = match json(get(prometheus, "/api/v1/rules?type=alert").await) {
        Ok(v) => v,
        Err(e) => return format!("alerts: Prometheus does not answer ({e})"),
    };
    let mut states = prometheus_states(&rules, chrono::Utc::now());
    match json(get(alertmanager, "/api/v2/alerts").await) {
        Ok(alerts) => add_alertmanager(&mut states, &alerts, notified),
        Err(e) => return format!("alerts: Alertmanager does not answer ({e})"),
    }
    line(&states, focus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_alert_shows_the_time_left_and_alertmanager_wins() {
        let rules = serde_json::json!({"data": {"groups": [{"rules": [
            {"name": "A", "state": "pending", "duration": 60,
             "alerts": [{"activeAt": "2024-01-01T00:00:20.5Z"}, {"activeAt": "2024-01-01T00:00:10Z"}]},
            {"name": "B", "state": "firing", "duration": 0, "alerts": []},
            {"name": "C", "state": "inactive", "duration": 0, "alerts": []},
            {"name": "D", "state": "inactive", "duration": 0, "alerts": []}
        ]}]}});
        let now = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:40Z")
            .unwrap()
            .to_utc();
        let mut states = prometheus_states(&rules, now);
        assert_eq!(states["A"], AlertState::Pending(Duration::from_secs(30)));
        let am = serde_json::json!([{"labels": {"alertname": "B"}, "receivers": [{"name": "pager"}],
                                     "status": {"state": "active"}}]);
        let notified: Notified = Arc::default();
        notified
            .lock()
            .unwrap()
            .insert(("pager".into(), "B".into()));
        add_alertmanager(&mut states, &am, &notified);
        assert_eq!(
            line(&states, &["C"]),
            "alerts: C inactive | A pending (fires in 30s) | B delivered to Alertmanager → pager, \
             notified | 1 other alerts inactive"
        );
    }
}
