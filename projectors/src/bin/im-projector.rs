//! `im-projector`: runs every projection, for the partitions the pool gives
//! it (the default) or for a pinned set (`--partitions`).

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
    /// The deployment's key-encryption key, where it encrypts content:
    /// deliveries and answers are opened with it (docs/privacy.md).
    #[command(flatten)]
    kek: im_streams::content::KekArgs,
    /// The store of this instance.
    #[arg(long, env = "IM_PROJECTOR_DATA_DIR", default_value = "data/projector")]
    data_dir: PathBuf,
    /// The engine a new store is made in: sled (the default) or fjall
    /// (being measured, BENCHMARKS.md); an existing one keeps its own.
    #[arg(long, env = "IM_STORE_ENGINE", default_value = "sled")]
    store_engine: im_projectors::store::Engine,
    /// Unique per store: names its consumers and query subject.
    #[arg(long, env = "IM_PROJECTOR_INSTANCE", default_value = im_projectors::DEFAULT_INSTANCE)]
    instance: String,
    /// Pin this instance to fixed partitions ("all", or e.g. "0-7" or
    /// "0,3,8-15"), outside the pool: nobody takes them over if it dies.
    /// Without it the instance joins the pool of instances that share the
    /// partitions by leases: each partition owned by one instance and
    /// followed by `--followers` others, a unit per partition under
    /// `<data dir>/p<N>`; a killed owner is replaced within the lease.
    #[arg(long, env = "IM_PROJECTOR_PARTITIONS")]
    partitions: Option<String>,
    #[arg(long, env = "IM_FANOUT_THRESHOLD", default_value_t = DEFAULT_FANOUT_THRESHOLD)]
    fanout_threshold: usize,
    /// Do not publish deliveries (a pinned replica beside another that does).
    #[arg(long, env = "IM_PROJECTOR_NO_FANOUT", requires = "partitions")]
    no_fanout: bool,
    /// Followers per partition in the pool (when enough instances run).
    #[arg(long, env = "IM_PROJECTOR_FOLLOWERS", default_value_t = im_projectors::pool::DEFAULT_FOLLOWERS, conflicts_with = "partitions")]
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
    let Some(pinned) = args.partitions.clone() else {
        return run_pool(args, client).await;
    };
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let partitions = parse_partitions(&pinned, topology.partitions).map_err(anyhow::Error::msg)?;
    let config = ProjectorConfig {
        instance: args.instance,
        partitions,
        data_dir: args.data_dir,
        fanout_threshold: args.fanout_threshold,
        fanout: !args.no_fanout,
        store_faults: None,
        store_engine: args.store_engine,
        serves: im_projectors::Serves::Clients,
        lease: None,
        projections: None,
        kek: args.kek.clone(),
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
        let view = im_projectors::metrics::single(started.clone());
        tokio::spawn(im_projectors::metrics::serve(listener, view, js));
        print_metrics_address(addr);
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
        _ = im_streams::connect::stop_signal() => {
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
        kek: args.kek.clone(),
        store_engine: args.store_engine,
    };
    let js = async_nats::jetstream::new(clients.consume.clone());
    let pool = im_projectors::pool::Pool::new(clients, config).await?;
    if let Some(at) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(at).await?;
        print_metrics_address(listener.local_addr()?);
        tokio::spawn(im_projectors::metrics::serve(listener, pool.view(), js));
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut running = tokio::spawn(pool.run(stopping));
    println!("im-projector: in the pool as {}", args.instance);
    tokio::select! {
        r = &mut running => r?.context("the pool stopped")?,
        _ = im_streams::connect::stop_signal() => {
            stop.send_replace(true);
            running.await?.context("stopping")?;
            println!("im-projector: stopped (partitions handed over)");
        }
    }
    Ok(())
}

fn print_metrics_address(addr: std::net::SocketAddr) {
    println!("im-projector: metrics http://{addr}/metrics (and /healthz, /readyz)");
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
