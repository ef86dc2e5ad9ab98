//! `/health/db`: the rows of the catalog's `health_query` (the shipped catalog names
//! `database_health`, the rows of `monitoring.database_health_check()`) as JSON, from its last
//! sample (never queried per request). 200 when no check is CRITICAL, 503 when one is or when
//! there is no sample, 404 when the catalog names no health query.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;

pub(super) async fn health_db(
    State(state): State<AppState>,
    Query(param): Query<super::targets::TargetParam>,
) -> Response {
    match state.target(&param) {
        Ok(t) => answer(&t.snapshot, state.health_query.as_deref()).into_response(),
        Err(r) => *r,
    }
}

/// The health query's rows of `snapshot`'s last sample.
fn answer(
    snapshot: &crate::snapshot::Snapshot,
    health_query: Option<&str>,
) -> (StatusCode, Json<Value>) {
    let Some(query) = health_query else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "the catalog names no health_query"})),
        );
    };
    let Some(result) = snapshot.result(query) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"error": "no health sample yet (or the health query is failing)", "query": query}),
            ),
        );
    };
    let rows = result.rows.as_deref().unwrap_or_default();
    let mut critical = false;
    let checks: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut m = Map::new();
            for (k, v) in row {
                let key = match k.as_str() {
                    "check" | "check_name" => "check",
                    "status_code" => continue,
                    other => other,
                };
                if key == "status" && v.as_deref() == Some("CRITICAL") {
                    critical = true;
                }
                m.insert(
                    key.to_owned(),
                    v.clone().map(Value::String).unwrap_or(Value::Null),
                );
            }
            Value::Object(m)
        })
        .collect();
    let sampled_at = crate::clock::unix_seconds(result.at) as u64;
    let status = if critical {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(
            json!({"status": if critical { "critical" } else { "ok" }, "sampled_at": sampled_at, "checks": checks}),
        ),
    )
}
