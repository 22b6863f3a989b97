//! Probes and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use im_schema::v1;

use super::ApiError;
use crate::AppState;

/// Alive: the process answers (`{"status": "ok"}`).
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when NATS is connected (the gateway's client and its delivery
/// dispatcher's connection) and every partition has a projector whose
/// heartbeat is recent and reports nothing wrong (cheap state only: a
/// probe asks no one). The streams were there at start, or the gateway
/// would not be.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let partitions = state.appender.topology().partitions;
    let mut problems = state.readiness.problems(&state.client, partitions);
    if state.is_shutting_down() {
        problems.push("shutting down".to_string());
    }
    if !state.dispatcher.is_connected() {
        problems.push("the delivery connection to NATS is down".to_string());
    }
    if problems.is_empty() {
        return Json(serde_json::json!({"status": "ready"})).into_response();
    }
    ApiError(v1::ErrorCode::Unavailable, problems.join("; ")).into_response()
}

/// The gateway's metrics (`crate::metrics`), in the OpenMetrics text
/// format Prometheus scrapes.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let headers = [(axum::http::header::CONTENT_TYPE, content_type)];
    (StatusCode::OK, headers, state.metrics.render()).into_response()
}
