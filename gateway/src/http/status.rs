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

/// Prometheus text: connections and the writer's counters.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let w = state.appender.stats();
    let cache = state.appender.cache_usage();
    let body = format!(
        "# TYPE im_gateway_connections gauge\nim_gateway_connections {}\n\
         # TYPE im_gateway_events_stored_total counter\nim_gateway_events_stored_total {}\n\
         # TYPE im_gateway_append_conflicts_total counter\nim_gateway_append_conflicts_total {}\n\
         # TYPE im_gateway_forwarded_out_total counter\nim_gateway_forwarded_out_total {}\n\
         # TYPE im_gateway_forwarded_in_total counter\nim_gateway_forwarded_in_total {}\n\
         # TYPE im_gateway_index_lookups_total counter\nim_gateway_index_lookups_total {}\n\
         # TYPE im_gateway_index_scans_total counter\nim_gateway_index_scans_total {}\n\
         # TYPE im_gateway_stepped_over_total counter\nim_gateway_stepped_over_total {}\n\
         # TYPE im_gateway_writer_cache_conversations gauge\nim_gateway_writer_cache_conversations {}\n\
         # TYPE im_gateway_writer_cache_bytes gauge\nim_gateway_writer_cache_bytes {}\n",
        state.connections.load(std::sync::atomic::Ordering::Relaxed),
        w.stored,
        w.conflicts,
        w.forwarded_out,
        w.forwarded_in,
        w.index_lookups,
        w.index_scans,
        w.stepped_over,
        cache.0,
        cache.1,
    );
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}
