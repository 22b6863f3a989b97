//! `im-projector`: runs every projection for a set of partitions.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use im_projectors::{projector::parse_partitions, ProjectorConfig, DEFAULT_FANOUT_THRESHOLD};

/// Every setting is a flag and an environment variable.
#[derive(Parser)]
#[command(name = "im-projector", version)]
struct Args {
    #[command(flatten)]
    nats: im_streams::connect::NatsArgs,
    /// The sled store of this instance.
    #[arg(long, env = "IM_PROJECTOR_DATA_DIR", default_value = "data/projector")]
    data_dir: PathBuf,
    /// Unique per store: names its consumers and query subject.
    #[arg(long, env = "IM_PROJECTOR_INSTANCE", default_value = im_projectors::DEFAULT_INSTANCE)]
    instance: String,
    /// "all", or e.g. "0-7" or "0,3,8-15".
    #[arg(long, env = "IM_PROJECTOR_PARTITIONS", default_value = "all")]
    partitions: String,
    #[arg(long, env = "IM_FANOUT_THRESHOLD", default_value_t = DEFAULT_FANOUT_THRESHOLD)]
    fanout_threshold: usize,
    /// Do not publish deliveries (a replica beside another that does).
    #[arg(long, env = "IM_PROJECTOR_NO_FANOUT")]
    no_fanout: bool,
    /// Join the pool of instances that share the partitions by leases
    /// instead of serving fixed ones: each partition owned by one instance
    /// and followed by `--followers` others, a unit per partition under
    /// `<data dir>/p<N>`; a killed owner is replaced within the lease.
    #[arg(long, env = "IM_PROJECTOR_POOL", conflicts_with_all = ["partitions", "no_fanout", "metrics_listen"])]
    pool: bool,
    /// Followers per partition in the pool (when enough instances run).
    #[arg(long, env = "IM_PROJECTOR_FOLLOWERS", default_value_t = im_projectors::pool::DEFAULT_FOLLOWERS)]
    followers: usize,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (e.g.
    /// 0.0.0.0:9101 for a scraper on another host); none: not served.
    #[arg(long, env = "IM_PROJECTOR_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

// See the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Err(e) = im_streams::logging::init("info") {
        eprintln!("im-projector: {e}");
        std::process::exit(2);
    }
    let args = Args::parse();
    let client = args.nats.connect("im-projector-consume").await?;
    if args.pool {
        return run_pool(args, client).await;
    }
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let partitions =
        parse_partitions(&args.partitions, topology.partitions).map_err(anyhow::Error::msg)?;
    let config = ProjectorConfig {
        instance: args.instance,
        partitions,
        data_dir: args.data_dir,
        fanout_threshold: args.fanout_threshold,
        fanout: !args.no_fanout,
        store_faults: None,
        serves: im_projectors::Serves::Clients,
        lease: None,
    };
    // Consumers and publishing (deliveries, answers) on separate
    // connections: neither queues behind the other.
    let clients = im_projectors::Clients {
        consume: client,
        publish: args.nats.connect("im-projector-publish").await?,
    };
    // Supervised: a storage error stops the instance, is reported, and it
    // starts again (waiting for the disk, or rebuilding a quarantined store).
    let (current, mut started) = tokio::sync::watch::channel(None);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut supervised = tokio::spawn(im_projectors::supervisor::run(
        clients, config, current, stopping,
    ));
    if let Some(at) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(at).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(im_projectors::metrics::serve(listener, started.clone(), js));
        println!("im-projector: metrics http://{addr}/metrics (and /healthz, /readyz)");
    }
    let context = started
        .wait_for(Option::is_some)
        .await
        .context("the projector stopped before it started")?
        .clone()
        .expect("waited for it");
    println!(
        "im-projector: ready instance={} partitions={:?}",
        context.instance, context.partitions
    );
    tokio::select! {
        r = &mut supervised => r?.context("the projector stopped")?,
        _ = stop_signal() => {
            // The batch in hand is committed and acknowledged whole, or
            // abandoned past its bound: nothing acknowledged uncommitted.
            stop.send_replace(true);
            // Bounded: a start still waiting (for JetStream, or a disk that
            // refuses writes) is not waited for past this.
            let bound = im_projectors::projector::STOP_MAX + std::time::Duration::from_secs(5);
            match tokio::time::timeout(bound, supervised).await {
                Ok(r) => r?.context("stopping")?,
                Err(_) => anyhow::bail!("not stopped within {bound:?}: exiting"),
            }
            println!("im-projector: stopped");
        }
    }
    Ok(())
}

/// In the pool until SIGTERM or SIGINT, then every owned partition is
/// handed over before the process ends.
async fn run_pool(args: Args, client: async_nats::Client) -> anyhow::Result<()> {
    let clients = im_projectors::Clients {
        consume: client,
        publish: args.nats.connect("im-projector-publish").await?,
    };
    let config = im_projectors::pool::PoolConfig {
        instance: args.instance.clone(),
        data_dir: args.data_dir,
        fanout_threshold: args.fanout_threshold,
        followers: args.followers,
    };
    let pool = im_projectors::pool::Pool::new(clients, config).await?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut running = tokio::spawn(pool.run(stopping));
    println!("im-projector: in the pool as {}", args.instance);
    tokio::select! {
        r = &mut running => r?.context("the pool stopped")?,
        _ = stop_signal() => {
            stop.send_replace(true);
            running.await?.context("stopping")?;
            println!("im-projector: stopped (partitions handed over)");
        }
    }
    Ok(())
}

/// SIGTERM (an orchestrator) or SIGINT (Ctrl-C).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    /// Every flag and environment variable is one argument: a name used
    /// twice (a command's own and the shared NATS flags) fails here.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
