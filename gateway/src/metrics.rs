//! What the gateway measures, in a Prometheus registry of its own (one per
//! gateway, so that gateways in one process, as in tests, do not mix):
//! latency histograms of appends, queries, deliveries and HTTP routes,
//! refusals by code, connections and queue drops, and the writer's
//! counters read at scrape time. Served on the metrics listener only.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Latency buckets: 0.25 ms doubling to about 8 s, past every bound a
/// command or query has (10 s ends in the +Inf bucket).
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Via {
    /// `ws`, `http` or `receipt`.
    pub via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryKind {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub method: String,
    /// The route's pattern (`/v1/conversations/{id}/members`), never the
    /// path itself: bounded by the route table.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    /// An `ErrorCode` name or a rule's refusal name: both fixed sets.
    pub code: String,
}

pub struct Metrics {
    registry: Registry,
    pub append: Latencies<Via>,
    pub query: Latencies<QueryKind>,
    /// From a delivery reaching the gateway to its connection's writer
    /// taking it, for the oldest delivery of each batch a writer takes.
    pub delivery: Histogram,
    pub http: Latencies<Route>,
    pub rejections: Family<Code, Counter>,
    /// Connections closed because their outbound queue overflowed.
    pub queue_drops: Counter,
    pub presence_pushes: Counter,
}

impl Metrics {
    pub fn new(appender: Arc<im_streams::Appender>, connections: Arc<AtomicUsize>) -> Self {
        let mut m = Metrics {
            append: Family::new_with_constructor(latency),
            query: Family::new_with_constructor(latency),
            delivery: latency(),
            http: Family::new_with_constructor(latency),
            rejections: Family::default(),
            queue_drops: Counter::default(),
            presence_pushes: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut m.registry;
        r.register(
            "im_gateway_append_seconds",
            "Appending a command's events, by way in",
            m.append.clone(),
        );
        r.register(
            "im_gateway_query_seconds",
            "Queries to the projectors, by kind",
            m.query.clone(),
        );
        r.register(
            "im_gateway_delivery_queue_seconds",
            "A delivery's wait in the gateway before its writer takes it",
            m.delivery.clone(),
        );
        r.register(
            "im_gateway_http_request_seconds",
            "HTTP requests by route and status",
            m.http.clone(),
        );
        r.register(
            "im_gateway_rejections",
            "Commands and requests refused, by code",
            m.rejections.clone(),
        );
        r.register(
            "im_gateway_queue_drops",
            "Connections closed for an overflowing outbound queue",
            m.queue_drops.clone(),
        );
        r.register(
            "im_gateway_presence_pushes",
            "Presence changes pushed to watching users",
            m.presence_pushes.clone(),
        );
        r.register_collector(Box::new(Scraped {
            appender,
            connections,
        }));
        m
    }

    /// The OpenMetrics text of everything registered.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    /// An append that began at `started`, by way in (`ws`, `http`, `receipt`).
    pub fn append_took(&self, via: &'static str, started: std::time::Instant) {
        let h = self.append.get_or_create(&Via { via });
        h.observe(started.elapsed().as_secs_f64());
    }

    /// A query of `kind` that began at `started`.
    pub fn query_took(&self, kind: &'static str, started: std::time::Instant) {
        let h = self.query.get_or_create(&QueryKind { kind });
        h.observe(started.elapsed().as_secs_f64());
    }

    pub fn rejected(&self, code: &str) {
        self.rejections
            .get_or_create(&Code {
                code: code.to_string(),
            })
            .inc();
    }
}

/// Values owned elsewhere, read when scraped.
struct Scraped {
    appender: Arc<im_streams::Appender>,
    connections: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scraped")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: usize) -> std::fmt::Result {
    let g = ConstGauge::new(v as i64);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl prometheus_client::collector::Collector for Scraped {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let w = self.appender.stats();
        let (conversations, bytes) = self.appender.cache_usage();
        gauge(
            &mut e,
            "im_gateway_connections",
            "WebSocket connections open",
            self.connections.load(Relaxed),
        )?;
        counter(
            &mut e,
            "im_gateway_events_stored",
            "Events this gateway stored",
            w.stored,
        )?;
        counter(
            &mut e,
            "im_gateway_append_conflicts",
            "Appends that lost a race and decided again",
            w.conflicts,
        )?;
        counter(
            &mut e,
            "im_gateway_forwarded_out",
            "Commands forwarded to the conversation's writer",
            w.forwarded_out,
        )?;
        counter(
            &mut e,
            "im_gateway_forwarded_in",
            "Commands written for another gateway",
            w.forwarded_in,
        )?;
        counter(
            &mut e,
            "im_gateway_index_lookups",
            "Dedupe index lookups",
            w.index_lookups,
        )?;
        counter(
            &mut e,
            "im_gateway_index_scans",
            "Dedupe scans of the log",
            w.index_scans,
        )?;
        counter(
            &mut e,
            "im_gateway_stepped_over",
            "Events stepped over in the writer cache",
            w.stepped_over,
        )?;
        gauge(
            &mut e,
            "im_gateway_writer_cache_conversations",
            "Conversations in the writer cache",
            conversations,
        )?;
        gauge(
            &mut e,
            "im_gateway_writer_cache_bytes",
            "Bytes of the writer cache",
            bytes,
        )?;
        Ok(())
    }
}
