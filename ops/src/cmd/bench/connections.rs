//! `connections`: opens `connections` idle WebSocket connections (each its
//! own user, past its `Connected` frame) and reports the stack process's
//! resident memory growth per connection. The growth is measured from a
//! baseline taken after a warm-up batch of connections, so that one-time
//! allocations (runtime, buffers, the first subscriptions) are not charged
//! to the connections.

use std::time::{Duration, Instant};

use super::stack::{Stack, Ws};
use super::{bench_limits, bounded, Figures, Size, StackOptions};

/// Handshakes in flight at once: enough to connect 20,000 in seconds,
/// few enough not to overrun the listen backlog.
const CONNECTS_INFLIGHT_MAX: usize = 128;

/// Connections opened (and kept) before the baseline is read.
const WARMUP_CONNECTIONS: usize = 100;

/// Time for the allocator and the gateway to settle before each reading.
const SETTLE: Duration = Duration::from_secs(2);

async fn open(stack: &Stack, from: usize, count: usize) -> anyhow::Result<Vec<Ws>> {
    let connects = (from..from + count)
        .map(|i| {
            let user = format!("idle{i}");
            async move { stack.connect(&user, "bench").await }
        })
        .collect();
    bounded(connects, CONNECTS_INFLIGHT_MAX)
        .await
        .into_iter()
        .collect()
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let n = super::raise_fd_limit(size.connections + WARMUP_CONNECTIONS)? - WARMUP_CONNECTIONS;
    if n < size.connections {
        eprintln!(
            "connections: the open-file limit (hard, not raisable here) leaves room for {n} of {}",
            size.connections
        );
    }
    let stack = Stack::start(StackOptions {
        limits: bench_limits(n + WARMUP_CONNECTIONS),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
    })
    .await?;
    let warm = open(&stack, 0, WARMUP_CONNECTIONS).await?;
    tokio::time::sleep(SETTLE).await;
    let before = stack.rss_bytes()?;
    let started = Instant::now();
    let idle = open(&stack, WARMUP_CONNECTIONS, n).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after = stack.rss_bytes()?;
    eprintln!(
        "connections: {n} open in {connect_secs:.1} s; stack rss {:.1} MiB -> {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    drop((warm, idle));
    stack.stop().await;
    let mut f = Figures::default();
    f.add("idle_connections", n as f64);
    f.add("connects_per_s", n as f64 / connect_secs);
    f.add(
        "bytes_per_idle_conn",
        after.saturating_sub(before) as f64 / n as f64,
    );
    Ok(f)
}
