//! The HTTP surface: `/metrics` (a copy of pre-rendered bytes, format and encoding negotiated),
//! `/health` (liveness), `/ready` (readiness), `/health/db` (the database's own health
//! checks, from the last sample), `/debug/locks` (the lock forest, behind basic auth only),
//! `/` (landing page); in fleet mode `/probe?target=NAME` and `/sd` ([`targets`]); HTTPS, basic auth and headers from
//! the web configuration file ([`webconfig`], [`auth`]); the server with its connection cap
//! and deadlines ([`server`]). The router is built from
//! an [`AppState`] and can be tested without a socket (`tower::ServiceExt::oneshot`).

pub(crate) mod auth;
mod debug_locks;
mod health_db;
mod landing;
pub mod metrics;
mod negotiate;
pub(crate) mod server;
pub mod targets;
pub(crate) mod webconfig;

pub use targets::{TargetView, Targets};

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::timeout::TimeoutLayer;

use crate::exposition::{Exposition, OPENMETRICS, PROMETHEUS_TEXT};
use crate::snapshot::Snapshot;

/// What the handlers share; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The current pre-rendered exposition.
    pub exposition: Arc<ArcSwap<Exposition>>,
    /// Query statuses, readiness and the health query's rows.
    pub snapshot: Arc<Snapshot>,
    /// The catalog query whose rows `/health/db` serves, when the catalog names one.
    pub health_query: Option<Arc<str>>,
    /// The configuration without secrets, as shown on the landing page.
    pub config_summary: Arc<String>,
    /// Fleet mode: the targets (`/probe`, `/sd`); `None` when one database is sampled and
    /// `/metrics` is its body.
    pub targets: Option<Targets>,
    /// The listen address (`/sd` names it when a request has no usable `Host`).
    pub listen: std::net::SocketAddr,
}

/// Builds the router with a request timeout.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/health/db", get(health_db::health_db))
        .route("/debug/locks", get(debug_locks::debug_locks))
        .route("/probe", get(targets::probe))
        .route("/sd", get(targets::sd))
        .route("/", get(landing::page))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve_body(&state.exposition.load(), &headers)
}

/// A pre-rendered body in the format and encoding `headers` ask for.
fn serve_body(current: &Exposition, headers: &HeaderMap) -> Response {
    let openmetrics = negotiate::wants_openmetrics(headers);
    let gzip = negotiate::wants_gzip(headers);
    let body = current.body(openmetrics, gzip);
    let ctype = if openmetrics {
        OPENMETRICS
    } else {
        PROMETHEUS_TEXT
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

/// 200 once every enabled query has succeeded at least once and the database answers; 503
/// otherwise, naming the queries still waiting for their first success. In fleet mode: every
/// target, or the one `?target=` names.
async fn ready(
    State(state): State<AppState>,
    Query(param): Query<targets::TargetParam>,
) -> Response {
    match (&state.targets, state.target(&param)) {
        (Some(all), Err(_)) if param.is_empty() => {
            targets::fleet_ready(&all.load()).into_response()
        }
        (_, Err(r)) => *r,
        (_, Ok(t)) => ready_one(&t.exposition.load()).into_response(),
    }
}

/// Readiness of one target.
fn ready_one(current: &Exposition) -> (StatusCode, String) {
    if !current.up {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unreachable\n".to_owned(),
        )
    } else if !current.ready {
        let mut body = format!(
            "waiting for the first successful run of {} queries:\n",
            current.pending.len()
        );
        for name in &current.pending {
            body.push_str(name);
            body.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        (StatusCode::OK, "ready\n".to_owned())
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found; try /metrics\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state() -> AppState {
        let snapshot = Arc::new(Snapshot::default());
        let renderer = crate::exposition::Renderer::new(
            prometheus_client::registry::Registry::default(),
            snapshot.clone(),
        );
        renderer.render();
        AppState {
            exposition: renderer.handle(),
            snapshot,
            health_query: Some("database_health".into()),
            config_summary: Arc::new(String::new()),
            targets: None,
            listen: "127.0.0.1:0".parse().unwrap(),
        }
    }

    async fn call(method: &str, uri: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        router(state(), Duration::from_secs(5))
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn metrics_negotiate_the_format_and_the_encoding() {
        let r = call("GET", "/metrics", &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROMETHEUS_TEXT);
        assert_eq!(r.headers()[header::VARY], "Accept, Accept-Encoding");
        let r = call(
            "GET",
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )],
        )
        .await;
        assert_eq!(r.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let r = call("GET", "/metrics", &[("accept-encoding", "br, gzip;q=0.8")]).await;
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let r = call("GET", "/metrics", &[("accept-encoding", "gzip;q=0")]).await;
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[tokio::test]
    async fn bad_requests_get_clear_statuses() {
        assert_eq!(
            call("POST", "/metrics", &[]).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call("GET", "/nope", &[]).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(call("GET", "/health", &[]).await.status(), StatusCode::OK);
        assert_eq!(
            call("GET", "/ready", &[]).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            call("GET", "/health/db", &[]).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
