//! `pipeline_raw`: the least NATS work our ingest path can do, beside it in
//! the same run on the same server. Writers publish with CAS into a
//! scratch stream (as the raw baseline does); ONE durable consumer reads
//! them with one ack per batch; for each event it publishes once per
//! recipient (the sender and its peer) on core NATS to a subscriber that
//! counts them. Its rate is what the engine allows for our path's shape.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use futures::{FutureExt, StreamExt};

use super::cas::{cas_writers, scratch_stream};
use super::stack::Stack;
use super::Size;

const STREAM: &str = "BENCH_PIPE";

/// Events the consumer folds into one ack, as the projector batches.
const BATCH_MAX: usize = 512;

/// Recipients per event: a two-member conversation's sender and peer.
const RECIPIENTS: usize = 2;

/// Reads the stream with one durable consumer, publishes each event to its
/// recipients, acks once per batch; counts the events.
async fn consume(
    js: async_nats::jetstream::Context,
    publisher: async_nats::Client,
    done: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let stream = js.get_stream(STREAM).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench_pipe".into()),
            ack_policy: AckPolicy::All,
            max_ack_pending: 4 * BATCH_MAX as i64,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    // Each batch: what has arrived, up to BATCH_MAX, as the projector takes it.
    while let Some(first) = messages.next().await {
        let mut batch = vec![first?];
        while batch.len() < BATCH_MAX {
            match messages.next().now_or_never() {
                Some(Some(msg)) => batch.push(msg?),
                _ => break,
            }
        }
        for msg in &batch {
            for r in 0..RECIPIENTS {
                publisher
                    .publish(format!("bench.deliver.{r}"), msg.payload.clone())
                    .await?;
            }
        }
        if let Some(last) = batch.last() {
            last.ack().await.map_err(anyhow::Error::msg)?;
        }
        done.fetch_add(batch.len() as u64, Relaxed);
    }
    Ok(())
}

/// Events per second the pipeline carried through in the window.
pub async fn measure(stack: &Stack, size: &Size, writers: usize) -> anyhow::Result<f64> {
    let client = stack.nats().await?;
    let js = async_nats::jetstream::new(client.clone());
    scratch_stream(&js, STREAM, "bench.pipe.>").await?;
    let subscriber = stack.nats().await?;
    let mut deliveries = subscriber.subscribe("bench.deliver.>").await?;
    subscriber.flush().await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let counting = delivered.clone();
    let counter = tokio::spawn(async move {
        while deliveries.next().await.is_some() {
            counting.fetch_add(1, Relaxed);
        }
    });
    let folded = Arc::new(AtomicU64::new(0));
    let consumer = tokio::spawn(consume(js.clone(), stack.nats().await?, folded.clone()));
    let start = Instant::now();
    let (measure_from, until) = (start + size.warmup, start + size.warmup + size.measure);
    let at_start = async {
        tokio::time::sleep_until(measure_from.into()).await;
        folded.load(Relaxed)
    };
    let (sent, from) = tokio::join!(
        cas_writers(&js, "bench.pipe", writers, measure_from, until),
        at_start
    );
    sent?;
    let carried = folded.load(Relaxed).saturating_sub(from);
    consumer.abort();
    counter.abort();
    js.delete_stream(STREAM).await?;
    eprintln!(
        "ingest: pipeline baseline {} events, {} deliveries in all",
        folded.load(Relaxed),
        delivered.load(Relaxed)
    );
    Ok(carried as f64 / size.measure.as_secs_f64())
}
