//! The projector's metrics and probes, on a listener of its own
//! (`--metrics-listen`): `/metrics` (OpenMetrics text: per projection its
//! checkpoint, lag — stream last seq − checkpoint, an upper bound for an
//! instance owning some partitions —, events applied, dead letters and
//! rebuild progress; the pipeline's batch sizes and commit times), and
//! `/healthz` and `/readyz` for an orchestrator.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use im_streams::definitions::{CONV_STREAM, RCPT_STREAM};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;

use crate::query::QueryContext;
use crate::runner::{checkpoint, Source};

/// Events per batch the pipeline folded and committed (1 to `BATCH_MAX`).
pub static BATCH_EVENTS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(1.0, 2.0, 12)));
/// Seconds to fold and commit one batch (all projections, one flush).
pub static COMMIT_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.000_25, 2.0, 16)));

/// The instance running now: it changes when a supervised instance starts
/// again after a storage error (`None` meanwhile).
type Current = tokio::sync::watch::Receiver<Option<Arc<QueryContext>>>;

#[derive(Clone)]
struct Served {
    current: Current,
    js: async_nats::jetstream::Context,
}

/// Serves the metrics and probes until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    current: Current,
    js: async_nats::jetstream::Context,
) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(Served { current, js });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics listener failed");
    }
}

/// Ready while an instance runs (not between a storage error and its
/// restart).
async fn readyz(State(s): State<Served>) -> Response {
    match s.current.borrow().as_ref() {
        Some(_) => Json(serde_json::json!({"status": "ready"})).into_response(),
        None => {
            let body = serde_json::json!({"code": "ERROR_CODE_UNAVAILABLE", "message": "the projector is restarting after a storage error"});
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(body),
            )
                .into_response()
        }
    }
}

async fn metrics(State(s): State<Served>) -> Response {
    let ctx = s.current.borrow().clone();
    let last = match &ctx {
        Some(_) => (
            last_seq(&s.js, CONV_STREAM).await,
            last_seq(&s.js, RCPT_STREAM).await,
        ),
        None => (None, None),
    };
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], render(ctx, last)).into_response()
}

/// The OpenMetrics text of the running instance (`None`: the process's
/// own metrics only).
pub fn render(ctx: Option<Arc<QueryContext>>, last: (Option<u64>, Option<u64>)) -> String {
    let mut registry = Registry::default();
    registry.register(
        "im_projector_batch_events",
        "Events per batch folded and committed",
        BATCH_EVENTS.clone(),
    );
    registry.register(
        "im_projector_commit_seconds",
        "Folding and committing one batch",
        COMMIT_SECONDS.clone(),
    );
    registry.register_collector(Box::new(Projections { ctx, last }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

/// The stream's last sequence; `None` when NATS does not say (then no lag
/// is reported rather than a lag of 0).
async fn last_seq(js: &async_nats::jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    s.info().await.ok().map(|i| i.state.last_sequence)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Checkpoint {
    projection: String,
    stream: &'static str,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Named {
    projection: String,
    instance: String,
}

struct Projections {
    ctx: Option<Arc<QueryContext>>,
    last: (Option<u64>, Option<u64>),
}

impl std::fmt::Debug for Projections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Projections")
    }
}

/// One family of values: its descriptor once, then each labelled value.
fn family<S: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    e: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    values: Vec<(S, M)>,
) -> std::fmt::Result {
    let Some(kind) = values.first().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    let mut d = e.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in &values {
        metric.encode(d.encode_family(labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Projections {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let errors = ConstCounter::new(crate::projector::STORAGE_ERRORS.load(Relaxed));
        errors.encode(e.encode_descriptor(
            "im_projector_storage_errors",
            "Storage errors that stopped an instance",
            None,
            errors.metric_type(),
        )?)?;
        let Some(ctx) = &self.ctx else { return Ok(()) };
        let (mut checkpoints, mut lags, mut applied, mut dead) = (vec![], vec![], vec![], vec![]);
        for p in &ctx.projections {
            let projection = p.projection.name().to_string();
            let mut sources = vec![(Source::Conv, CONV_STREAM, self.last.0)];
            if p.projection.reads_receipts() {
                sources.push((Source::Rcpt, RCPT_STREAM, self.last.1));
            }
            for (source, stream, last) in sources {
                let cp = checkpoint(p.ks().as_ref(), source).unwrap_or(0);
                let labels = Checkpoint {
                    projection: projection.clone(),
                    stream,
                    instance: ctx.instance.clone(),
                };
                checkpoints.push((labels.clone(), ConstGauge::new(cp as i64)));
                if let Some(last) = last {
                    lags.push((labels, ConstGauge::new(last.saturating_sub(cp) as i64)));
                }
            }
            let labels = Named {
                projection,
                instance: ctx.instance.clone(),
            };
            applied.push((
                labels.clone(),
                ConstCounter::new(p.events_applied.load(Relaxed)),
            ));
            dead.push((labels, ConstCounter::new(p.dead_letters.load(Relaxed))));
        }
        family(
            &mut e,
            ("im_projection_checkpoint", "Last stream sequence applied"),
            checkpoints,
        )?;
        family(
            &mut e,
            (
                "im_projection_lag",
                "Stream last sequence minus the checkpoint",
            ),
            lags,
        )?;
        family(
            &mut e,
            ("im_projection_events_applied", "Events applied"),
            applied,
        )?;
        family(
            &mut e,
            (
                "im_projection_dead_letters",
                "Events set aside as undecodable",
            ),
            dead,
        )?;
        let (mut folded, mut remaining) = (vec![], vec![]);
        for r in ctx.rebuilds.progress() {
            let labels = Named {
                projection: r.projection,
                instance: ctx.instance.clone(),
            };
            folded.push((labels.clone(), ConstGauge::new(r.folded as i64)));
            remaining.push((labels, ConstGauge::new(r.remaining as i64)));
        }
        family(
            &mut e,
            (
                "im_projection_rebuild_folded",
                "Events folded into the keyspace being rebuilt",
            ),
            folded,
        )?;
        family(
            &mut e,
            (
                "im_projection_rebuild_remaining",
                "Events a rebuild has still to read",
            ),
            remaining,
        )
    }
}
