//! The HTTP surface: `/metrics` (a copy of pre-rendered bytes, format and encoding negotiated),
//! `/health` (liveness), `/ready` (readiness), `/health/db` (the database's own health
//! checks, from the last sample), `/` (landing page). The router is built from
//! an [`AppState`] and can be tested without a socket (`tower::ServiceExt::oneshot`).

mod health_db;
mod landing;

pub use health_db::HEALTH_QUERY;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::timeout::TimeoutLayer;

use crate::exposition::{Exposition, OPENMETRICS, PROMETHEUS_TEXT};
use crate::sampler::{Sampler, Store};

/// What the handlers share; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The current pre-rendered exposition.
    pub exposition: Arc<ArcSwap<Exposition>>,
    /// The sampler (readiness).
    pub sampler: Arc<Sampler>,
    /// Query statuses (landing page).
    pub store: Arc<Store>,
    /// The configuration without secrets, as shown on the landing page.
    pub config_summary: Arc<String>,
}

/// Builds the router with a request timeout.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/health/db", get(health_db::health_db))
        .route("/", get(landing::page))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}

/// Whether a header lists `token` (case-insensitive) without `q=0`.
fn accepts(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|part| {
            let mut it = part.split(';');
            let item = it.next().unwrap_or("").trim();
            let zero = it.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            item.eq_ignore_ascii_case(token) && !zero
        })
    })
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let current = state.exposition.load();
    let openmetrics = accepts(&headers, header::ACCEPT, "application/openmetrics-text");
    let gzip = accepts(&headers, header::ACCEPT_ENCODING, "gzip");
    let (body, ctype) = match (openmetrics, gzip) {
        (true, true) => (current.openmetrics_gzip.clone(), OPENMETRICS),
        (true, false) => (current.openmetrics.clone(), OPENMETRICS),
        (false, true) => (current.text_gzip.clone(), PROMETHEUS_TEXT),
        (false, false) => (current.text.clone(), PROMETHEUS_TEXT),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if !state.sampler.is_up() {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
    } else if !state.store.first_round_done() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "first sampling round not finished\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found; try /metrics\n")
}
