//! The fleet's HTTP surface: `/probe?target=NAME` (one target's pre-rendered body, negotiated
//! as `/metrics` is), `/sd` (the target list in Prometheus' http_sd format) and the lookup of
//! a target for `/ready`, `/health/db` and `/debug/locks`. A name not in the list is 404 and
//! opens nothing: nothing here connects anywhere, it only reads the map the fleet publishes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use crate::exposition::Exposition;
use crate::snapshot::Snapshot;

/// What the HTTP layer sees of one target.
#[derive(Debug, Clone)]
pub struct TargetView {
    /// Its pre-rendered body.
    pub exposition: Arc<ArcSwap<Exposition>>,
    /// Its snapshot (statuses, the health query's rows, the lock forest).
    pub snapshot: Arc<Snapshot>,
    /// Its labels, for `/sd`.
    pub labels: Arc<BTreeMap<String, String>>,
}

/// The fleet's targets by name, as the fleet last published them.
pub type Targets = Arc<ArcSwap<BTreeMap<String, TargetView>>>;

/// The `target` parameter.
#[derive(Debug, Deserialize)]
pub(super) struct TargetParam {
    target: Option<String>,
}

impl TargetParam {
    /// No target named.
    pub(super) fn is_empty(&self) -> bool {
        self.target.is_none()
    }
}

/// Why a target could not be looked up.
fn missing(what: &str) -> Box<Response> {
    Box::new((StatusCode::NOT_FOUND, format!("{what}; see /sd\n")).into_response())
}

impl AppState {
    /// The target `?target=` names (in fleet mode), or the one database (otherwise).
    pub(super) fn target(&self, param: &TargetParam) -> Result<TargetView, Box<Response>> {
        match (&self.targets, param.target.as_deref()) {
            (None, None) => Ok(TargetView {
                exposition: self.exposition.clone(),
                snapshot: self.snapshot.clone(),
                labels: Arc::default(),
            }),
            (None, Some(_)) => Err(missing(
                "not in fleet mode: this pgpulse samples one database",
            )),
            (Some(_), None) => Err(missing("name a target: ?target=NAME")),
            (Some(t), Some(name)) => t
                .load()
                .get(name)
                .cloned()
                .ok_or_else(|| missing("no such target")),
        }
    }
}

/// `GET /probe?target=NAME`.
pub(super) async fn probe(
    State(state): State<AppState>,
    Query(param): Query<TargetParam>,
    headers: HeaderMap,
) -> Response {
    if state.targets.is_none() {
        return *missing("not in fleet mode: scrape /metrics");
    }
    match state.target(&param) {
        Ok(t) => super::serve_body(&t.exposition.load(), &headers),
        Err(r) => *r,
    }
}

/// `GET /sd`: one entry per target with its labels, `__metrics_path__`, `__param_target` and
/// `instance` (the target's name, so each target's series are its own); the address is the one the request came to (its `Host`), so Prometheus
/// scrapes pgpulse as it reached it.
pub(super) async fn sd(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(targets) = &state.targets else {
        return *missing("not in fleet mode");
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| valid_authority(h))
        .map_or_else(|| state.listen.to_string(), str::to_owned);
    let list: Vec<serde_json::Value> = targets
        .load()
        .iter()
        .map(|(name, t)| {
            let mut labels: serde_json::Map<String, serde_json::Value> = t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            labels.insert("__metrics_path__".into(), "/probe".into());
            labels.insert("__param_target".into(), name.clone().into());
            // Every target's series would otherwise carry pgpulse's own address as instance.
            labels.insert("instance".into(), name.clone().into());
            serde_json::json!({"targets": [host], "labels": labels})
        })
        .collect();
    Json(list).into_response()
}

/// A `host:port` a client may have used: letters, digits and `.-:[]_` only.
fn valid_authority(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
}

/// `/ready` of a fleet: 200 when every target is ready (or the one `?target=` names), else
/// 503 with a line per target that is not.
pub(super) fn fleet_ready(targets: &BTreeMap<String, TargetView>) -> (StatusCode, String) {
    let mut body = String::new();
    let mut all = true;
    for (name, t) in targets {
        let e = t.exposition.load();
        let state = if !e.up {
            "down"
        } else if !e.ready {
            "waiting for first runs"
        } else {
            "ready"
        };
        all &= e.ready;
        body.push_str(&format!("{name}: {state}\n"));
    }
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_host_header_is_not_reflected() {
        assert!(valid_authority("pgpulse.example:9864"));
        assert!(valid_authority("[::1]:9864"));
        for h in ["", "a b", "x\"y", "<script>", "h/../x", &"h".repeat(300)] {
            assert!(!valid_authority(h), "{h:?}");
        }
    }
}
