//! `/health/db`: the rows of `monitoring.database_health_check()` as JSON, from the last
//! sample of the `database_health` query (never queried per request). 200 when no check is
//! CRITICAL, 503 when one is or when there is no sample.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::AppState;

/// The catalog query whose rows this endpoint serves.
pub const HEALTH_QUERY: &str = "database_health";

pub(super) async fn health_db(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let Some(result) = state.store.result(HEALTH_QUERY) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"error": "no health sample yet (or the database_health query is failing or not in the catalog)"}),
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
    let sampled_at = result
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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
