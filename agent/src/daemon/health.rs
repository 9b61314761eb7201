//! The agent's HTTP surfaces: `/healthz`, `/readyz` and `/metrics` on TCP, and
//! `GET /v1/status` on the local API socket.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;

/// The content type of the text exposition prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/healthz`, `/readyz`, `/metrics`.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// `GET /v1/status`, merged into the local API.
pub fn status_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let readiness = shared.readiness();
    if readiness.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = readiness.failing().join(", ");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let readiness = shared.readiness();
    shared.refresh_peer_metrics().await;
    shared.refresh_policy_metrics().await;
    shared.metrics.ready.set(i64::from(readiness.ready()));
    shared
        .metrics
        .datastore_up
        .set(i64::from(readiness.datastore));
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    shared.refresh_sessions().await;
    axum::Json(shared.status()).into_response()
}
