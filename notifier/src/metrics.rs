//! `/metrics` (OpenMetrics: the notifier's own families, then those of
//! its embedded projector), `/healthz` and `/readyz` on `--metrics-listen`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use im_projectors::query::QueryContext;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::stats::{now_ms, Stats, SKIPS};

#[derive(Clone)]
struct Served {
    stats: Arc<Stats>,
    contexts: watch::Receiver<Option<Arc<QueryContext>>>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    stats: Arc<Stats>,
    contexts: watch::Receiver<Option<Arc<QueryContext>>>,
) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(Served { stats, contexts });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics listener failed");
    }
}

/// Ready while its store runs (a restarting one is not).
async fn readyz(State(s): State<Served>) -> Response {
    match s.contexts.borrow().is_some() {
        true => Json(serde_json::json!({"status": "ready"})).into_response(),
        false => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(serde_json::json!({"code": "ERROR_CODE_UNAVAILABLE", "message": "the store is starting"})),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<Served>) -> Response {
    let contexts: Vec<_> = s.contexts.borrow().clone().into_iter().collect();
    let projector = im_projectors::metrics::render(contexts, (None, None));
    let mut text = render(&s.stats);
    text.push_str(&projector);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

fn counter(v: &AtomicU64) -> Counter {
    let c = Counter::default();
    c.inc_by(v.load(Ordering::Relaxed));
    c
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

/// The notifier's own families, without the closing `# EOF`.
pub fn render(s: &Stats) -> String {
    let mut r = Registry::default();
    r.register(
        "im_notify_sent",
        "Notifications the push gateway took",
        counter(&s.sent),
    );
    r.register(
        "im_notify_retries",
        "Attempts tried again after a failure",
        counter(&s.retries),
    );
    r.register(
        "im_notify_dead_letters",
        "Notifications given up (dead letters made)",
        counter(&s.dead),
    );
    r.register(
        "im_notify_unregistered",
        "Push registrations ended because the gateway refused their token",
        counter(&s.unregistered),
    );
    r.register(
        "im_notify_late",
        "Windows decided, or notifications about to be sent, too late to wake anyone",
        counter(&s.late),
    );
    r.register(
        "im_notify_read_meanwhile",
        "Notifications dropped before sending: read while they waited",
        counter(&s.read_meanwhile),
    );
    let skipped = Family::<Vec<(String, String)>, Counter>::default();
    for (i, skip) in SKIPS.iter().enumerate() {
        skipped
            .get_or_create(&vec![("reason".into(), skip.label().into())])
            .inc_by(s.skipped[i].load(Ordering::Relaxed));
    }
    r.register(
        "im_notify_skipped",
        "Members a window did not wake, by reason",
        skipped,
    );
    r.register(
        "im_notify_pending_messages",
        "Queued messages held in undecided windows",
        gauge(s.pending_messages.load(Ordering::Relaxed) as i64),
    );
    r.register(
        "im_notify_outbox",
        "Notifications decided and not yet taken by the push gateway (in the store)",
        gauge(s.outbox.load(Ordering::Relaxed) as i64),
    );
    r.register(
        "im_notify_dead_letters_stored",
        "Dead letters waiting for an operator",
        gauge(s.dead_stored.load(Ordering::Relaxed) as i64),
    );
    let lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    lag.set(s.lag_seconds(now_ms()));
    r.register(
        "im_notify_lag_seconds",
        "How far behind the notifier is: since its oldest due window or undelivered notification",
        lag,
    );
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a string");
    out.trim_end_matches("# EOF\n").to_string()
}
