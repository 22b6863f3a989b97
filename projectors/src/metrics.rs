//! The projector's metrics and probes, on a listener of its own
//! (`--metrics-listen`): `/metrics` (OpenMetrics text: per projection its
//! checkpoint, lag — stream last seq − checkpoint, an upper bound for an
//! instance owning some partitions —, events applied, dead letters and
//! rebuild progress; the pipeline's batch sizes and commit times; the
//! partitions it owns and follows, lease changes and failover times), and
//! `/healthz` and `/readyz` for an orchestrator. A pool instance reports
//! every unit it runs (labelled by the unit's instance name).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use im_streams::definitions::{CONV_STREAM, RCPT_STREAM};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
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

/// Seconds from an event's storing in JetStream (the server's clock) to
/// the pipeline reaching a stage with the batch that holds it, for the
/// oldest event of each batch: `taken` (the batch is cut from what the
/// consumers pulled), `published` (its deliveries are out), `committed`
/// (its read models are). Where a delivery's time goes.
pub static EVENT_AGE_SECONDS: LazyLock<Ages> = LazyLock::new(|| {
    let family: Ages = Family::new_with_constructor(age_buckets);
    for stage in ["taken", "published", "committed"] {
        let _ = family.get_or_create(&Stage { stage });
    }
    family
});

/// Histograms by stage, each with `age_buckets`.
pub type Ages = Family<Stage, Histogram, fn() -> Histogram>;

fn age_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    pub stage: &'static str,
}

/// Records the age of an event stored at `stored` at `stage`.
pub fn observe_age(stage: &'static str, stored: Option<time::OffsetDateTime>) {
    if let Some(stored) = stored {
        let age = (time::OffsetDateTime::now_utc() - stored).as_seconds_f64();
        EVENT_AGE_SECONDS
            .get_or_create(&Stage { stage })
            .observe(age.max(0.0));
    }
}

/// Changes of partition leases this process made, by kind: `created` (a
/// free partition), `taken` (a stale lease, its owner gone), `adopted` (a
/// lease handed to it, or its own after a restart), `handed_over`, `lost`
/// (found taken by another).
pub static LEASE_CHANGES: LazyLock<Family<LeaseChange, Counter>> = LazyLock::new(|| {
    let family = Family::default();
    for kind in LEASE_CHANGE_KINDS {
        let _ = family.get_or_create(&LeaseChange { kind });
    }
    family
});
pub const LEASE_CHANGE_KINDS: [&str; 5] = ["created", "taken", "adopted", "handed_over", "lost"];
/// Seconds from the last sign of life of a partition's previous owner (its
/// lease's last write, by this instance's clock) to this instance serving
/// the partition as owner.
pub static FAILOVER_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.5, 1.5, 12)));

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseChange {
    pub kind: &'static str,
}

/// The instance running now: it changes when a supervised instance starts
/// again after a storage error (`None` meanwhile).
type Current = tokio::sync::watch::Receiver<Option<Arc<QueryContext>>>;

/// What the listener reports: every store running in the process (one for
/// a pinned instance, a unit per partition in the pool) and whether the
/// process serves what it should.
#[derive(Clone, Default)]
pub struct View {
    pub contexts: Vec<Arc<QueryContext>>,
    /// Why it is not ready; `None`: ready.
    pub not_ready: Option<String>,
}

pub type Viewed = tokio::sync::watch::Receiver<View>;

/// The view of one supervised instance: ready while it runs (not between a
/// storage error and its restart).
pub fn single(mut current: Current) -> Viewed {
    let view = |c: &Option<Arc<QueryContext>>| View {
        contexts: c.iter().cloned().collect(),
        not_ready: c
            .is_none()
            .then(|| "the projector is restarting after a storage error".to_string()),
    };
    let (tx, rx) = tokio::sync::watch::channel(view(&current.borrow()));
    tokio::spawn(async move {
        while current.changed().await.is_ok() {
            if tx.send(view(&current.borrow_and_update())).is_err() {
                return;
            }
        }
    });
    rx
}

#[derive(Clone)]
struct Served {
    view: Viewed,
    js: async_nats::jetstream::Context,
}

/// Serves the metrics and probes until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    view: Viewed,
    js: async_nats::jetstream::Context,
) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(Served { view, js });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics listener failed");
    }
}

/// Ready while it serves what it should.
async fn readyz(State(s): State<Served>) -> Response {
    let not_ready = s.view.borrow().not_ready.clone();
    match not_ready {
        None => Json(serde_json::json!({"status": "ready"})).into_response(),
        Some(why) => {
            let body = serde_json::json!({"code": "ERROR_CODE_UNAVAILABLE", "message": why});
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
    let contexts = s.view.borrow().contexts.clone();
    let last = match contexts.is_empty() {
        false => (
            last_seq(&s.js, CONV_STREAM).await,
            last_seq(&s.js, RCPT_STREAM).await,
        ),
        true => (None, None),
    };
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        render(contexts, last),
    )
        .into_response()
}

/// The OpenMetrics text of the running stores (none: the process's own
/// metrics only).
pub fn render(contexts: Vec<Arc<QueryContext>>, last: (Option<u64>, Option<u64>)) -> String {
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
    registry.register(
        "im_projector_event_age_seconds",
        "From an event's storing to its batch taken, published and committed",
        EVENT_AGE_SECONDS.clone(),
    );
    registry.register(
        "im_pool_lease_changes",
        "Partition lease changes made by this process, by kind",
        LEASE_CHANGES.clone(),
    );
    registry.register(
        "im_pool_failover_seconds",
        "From a partition owner's last lease write to its successor serving",
        FAILOVER_SECONDS.clone(),
    );
    registry.register_collector(Box::new(Projections { contexts, last }));
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Role {
    role: &'static str,
}

struct Projections {
    contexts: Vec<Arc<QueryContext>>,
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
        let (mut owned, mut followed) = (0, 0);
        for ctx in &self.contexts {
            match ctx.serves {
                crate::Serves::Clients => owned += ctx.partitions.len() as i64,
                crate::Serves::OwnerOnly => followed += ctx.partitions.len() as i64,
            }
        }
        family(
            &mut e,
            (
                "im_projector_partitions",
                "Partitions this process serves as owner, or follows",
            ),
            vec![
                (Role { role: "owner" }, ConstGauge::new(owned)),
                (Role { role: "follower" }, ConstGauge::new(followed)),
            ],
        )?;
        let mut f = Families::default();
        for ctx in &self.contexts {
            f.add(ctx, self.last);
        }
        f.encode(&mut e)
    }
}

/// Each projection family's values over every running store.
#[derive(Default)]
struct Families {
    checkpoints: Vec<(Checkpoint, ConstGauge)>,
    lags: Vec<(Checkpoint, ConstGauge)>,
    applied: Vec<(Named, ConstCounter)>,
    dead: Vec<(Named, ConstCounter)>,
    folded: Vec<(Named, ConstGauge)>,
    remaining: Vec<(Named, ConstGauge)>,
    index_lags: Vec<(Named, ConstGauge)>,
}

impl Families {
    fn add(&mut self, ctx: &QueryContext, last: (Option<u64>, Option<u64>)) {
        for p in &ctx.projections {
            let projection = p.projection.name().to_string();
            let mut sources = vec![(Source::Conv, CONV_STREAM, last.0)];
            if p.projection.reads_receipts() {
                sources.push((Source::Rcpt, RCPT_STREAM, last.1));
            }
            for (source, stream, last) in sources {
                let cp = checkpoint(p.ks().as_ref(), source).unwrap_or(0);
                let labels = Checkpoint {
                    projection: projection.clone(),
                    stream,
                    instance: ctx.instance.clone(),
                };
                self.checkpoints
                    .push((labels.clone(), ConstGauge::new(cp as i64)));
                if let Some(last) = last {
                    let lag = ConstGauge::new(last.saturating_sub(cp) as i64);
                    self.lags.push((labels, lag));
                }
            }
            let labels = Named {
                projection,
                instance: ctx.instance.clone(),
            };
            if let Some(index) = ctx.search.open_for(p) {
                let cp = checkpoint(p.ks().as_ref(), Source::Conv).unwrap_or(0);
                let lag = cp.saturating_sub(*index.indexed.borrow());
                self.index_lags
                    .push((labels.clone(), ConstGauge::new(lag as i64)));
            }
            let applied = ConstCounter::new(p.events_applied.load(Relaxed));
            self.applied.push((labels.clone(), applied));
            let dead = ConstCounter::new(p.dead_letters.load(Relaxed));
            self.dead.push((labels, dead));
        }
        for r in ctx.rebuilds.progress() {
            let labels = Named {
                projection: r.projection,
                instance: ctx.instance.clone(),
            };
            self.folded
                .push((labels.clone(), ConstGauge::new(r.folded as i64)));
            self.remaining
                .push((labels, ConstGauge::new(r.remaining as i64)));
        }
    }

    fn encode(self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let checkpoint = ("im_projection_checkpoint", "Last stream sequence applied");
        family(e, checkpoint, self.checkpoints)?;
        let lag = (
            "im_projection_lag",
            "Stream last sequence minus the checkpoint",
        );
        family(e, lag, self.lags)?;
        family(
            e,
            ("im_projection_events_applied", "Events applied"),
            self.applied,
        )?;
        let dead = (
            "im_projection_dead_letters",
            "Events set aside as undecodable",
        );
        family(e, dead, self.dead)?;
        let folded = (
            "im_projection_rebuild_folded",
            "Events folded into the keyspace being rebuilt",
        );
        family(e, folded, self.folded)?;
        let remaining = (
            "im_projection_rebuild_remaining",
            "Events a rebuild has still to read",
        );
        family(e, remaining, self.remaining)?;
        let index_lag = (
            "im_search_index_lag",
            "Stream sequences the search index trails its rows' checkpoint by",
        );
        family(e, index_lag, self.index_lags)
    }
}
