//! `connections`: opens `connections` idle WebSocket connections (each its
//! own user, past its `Connected` frame) and reports the resident memory
//! growth per connection of the stack process (gateway and projector), then
//! the same again for an `im-gateway` process of its own (the gateway
//! alone, as deployed). The growth is measured from a baseline taken after
//! a warm-up batch of connections, so that one-time allocations (runtime,
//! buffers, the first subscriptions) are not charged to the connections.

use std::time::{Duration, Instant};

use std::net::SocketAddr;

use super::stack::{Stack, Ws};
use super::{bench_limits, bounded, Figures, Size, StackOptions};

/// Handshakes in flight at once: enough to connect 20,000 in seconds,
/// few enough not to overrun the listen backlog.
const CONNECTS_INFLIGHT_MAX: usize = 128;

/// Connections opened (and kept) before the baseline is read.
const WARMUP_CONNECTIONS: usize = 100;

/// Time for the allocator and the gateway to settle before each reading.
const SETTLE: Duration = Duration::from_secs(2);

async fn open(
    stack: &Stack,
    gateway: SocketAddr,
    from: usize,
    count: usize,
) -> anyhow::Result<Vec<Ws>> {
    let connects = (from..from + count)
        .map(|i| {
            let user = format!("idle{i}");
            async move { stack.connect_at(gateway, &user, "bench").await }
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
        encrypt: false,
    })
    .await?;
    let rss = || stack.rss_bytes();
    let (per_conn, connect_secs) = measure(&stack, stack.gateway, n, rss).await?;
    eprintln!("connections: {n} open in {connect_secs:.1} s; stack {per_conn:.0} bytes each");
    let gateway = stack
        .spawn_gateway(&bench_limits(n + WARMUP_CONNECTIONS))
        .await?;
    let (alone, _) = measure(&stack, gateway.addr, n, || gateway.rss_bytes()).await?;
    eprintln!("connections: the gateway alone {alone:.0} bytes each");
    drop(gateway);
    stack.stop().await;
    let mut f = Figures::default();
    f.add("idle_connections", n as f64);
    f.add("connects_per_s", n as f64 / connect_secs);
    f.add("bytes_per_idle_conn", per_conn);
    f.add("gateway_bytes_per_idle_conn", alone);
    Ok(f)
}

/// Opens `n` idle connections to `gateway` past a warm-up batch: resident
/// bytes per connection (`rss` read before and after) and the seconds
/// connecting took. Closes them all.
async fn measure(
    stack: &Stack,
    gateway: SocketAddr,
    n: usize,
    rss: impl Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<(f64, f64)> {
    let warm = open(stack, gateway, 0, WARMUP_CONNECTIONS).await?;
    tokio::time::sleep(SETTLE).await;
    let before = rss()?;
    let started = Instant::now();
    let idle = open(stack, gateway, WARMUP_CONNECTIONS, n).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after = rss()?;
    drop((warm, idle));
    Ok((after.saturating_sub(before) as f64 / n as f64, connect_secs))
}
