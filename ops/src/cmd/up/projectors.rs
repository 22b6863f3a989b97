//! The stack's projectors: one in this process serving every partition
//! (the default, as simple as a stack gets), or with `--projectors N`
//! (N ≥ 2) N `im-projector` processes in the pool, each its own process so
//! that `kill -9` of one shows a failover (ARCHITECTURE.md, "The pool").

use std::time::Duration;

use anyhow::Context;
use im_streams::connect::NatsArgs;
use im_streams::content::KekArgs;
use tokio::process::{Child, Command};

use super::UpArgs;

type Supervised = tokio::task::JoinHandle<Result<(), im_projectors::ProjectorError>>;

/// How long a pool member may take to hand its partitions over and exit
/// after SIGTERM before it is killed: a hand-over stops one unit at a time,
/// each within the projector's stop bound.
const MEMBER_STOP_MAX: Duration = Duration::from_secs(30);

/// Pool members `imctl up` runs at most: each runs a unit per partition it
/// owns or follows, and this is one machine.
pub const PROJECTORS_MAX: usize = 8;

pub enum Projectors {
    InProcess {
        task: Supervised,
        stop: tokio::sync::watch::Sender<bool>,
    },
    Pool(Vec<(String, Child)>),
}

impl Projectors {
    pub async fn start(nats: &NatsArgs, args: &UpArgs, kek: &KekArgs) -> anyhow::Result<Self> {
        match args.projectors {
            0 | 1 => in_process(nats, args, kek).await,
            n => pool(nats, args, n, kek),
        }
    }

    /// Resolves when the in-process projector ends (the stack stops); a
    /// pool member that exits is reported and left to the pool.
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        match self {
            Projectors::InProcess { task, .. } => {
                task.await?.context("the projector stopped")?;
                anyhow::bail!("the projector stopped")
            }
            Projectors::Pool(members) => {
                let exits = members.iter_mut().map(|(name, child)| {
                    Box::pin(async move { (name.clone(), child.wait().await) })
                });
                let ((name, status), _, _) = futures::future::select_all(exits).await;
                println!("imctl: projector {name} exited ({status:?}); the pool takes over its partitions");
                members.retain(|(n, _)| *n != name);
                if members.is_empty() {
                    anyhow::bail!("every projector of the pool has exited");
                }
                Ok(())
            }
        }
    }

    /// Stops them: the in-process one after the batch in hand; each pool
    /// member by SIGTERM (it hands its partitions over), bounded.
    pub async fn stop(self) {
        match self {
            Projectors::InProcess { task, stop } => {
                stop.send_replace(true);
                let _ = task.await;
            }
            Projectors::Pool(members) => {
                for (name, mut child) in members {
                    if let Some(pid) = child.id() {
                        let _ = std::process::Command::new("kill")
                            .args(["-s", "TERM", &pid.to_string()])
                            .status();
                    }
                    if tokio::time::timeout(MEMBER_STOP_MAX, child.wait())
                        .await
                        .is_err()
                    {
                        println!(
                            "imctl: projector {name} did not stop in {MEMBER_STOP_MAX:?}: killed"
                        );
                        let _ = child.kill().await;
                    }
                }
            }
        }
    }
}

/// The projector, supervised (a storage error stops it, is reported, and it
/// starts again), once it has started.
async fn in_process(nats: &NatsArgs, args: &UpArgs, kek: &KekArgs) -> anyhow::Result<Projectors> {
    let config = im_projectors::ProjectorConfig {
        kek: kek.clone(),
        instance: im_projectors::DEFAULT_INSTANCE.into(),
        partitions: None,
        data_dir: args.data_dir.join("projector"),
        fanout_threshold: args.fanout_threshold,
        fanout: true,
        store_faults: None,
        store_engine: args.store_engine,
        serves: im_projectors::Serves::Clients,
        lease: None,
        projections: None,
    };
    // Its consumers and its publishing (deliveries, answers) on connections
    // of their own, as in production.
    let clients = im_projectors::Clients {
        consume: nats.connect("imctl-up-projector-consume").await?,
        publish: nats.connect("imctl-up-projector-publish").await?,
    };
    let js = async_nats::jetstream::new(clients.consume.clone());
    let (current, mut started) = tokio::sync::watch::channel(None);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut task = tokio::spawn(im_projectors::supervisor::run(
        clients, config, current, stopping,
    ));
    tokio::select! {
        r = started.wait_for(Option::is_some) => { r.context("the projector stopped before it started")?; }
        r = &mut task => r?.context("starting the projector")?,
    }
    let listener = tokio::net::TcpListener::bind(args.projector_metrics_listen)
        .await
        .context("the projector's metrics listener")?;
    let addr = listener.local_addr()?;
    let view = im_projectors::metrics::single(started);
    tokio::spawn(im_projectors::metrics::serve(listener, view, js));
    println!("imctl: projector metrics http://{addr}/metrics (and /healthz, /readyz)");
    println!(
        "imctl: projector instance={} queries on im.q.<partition> (store {})",
        im_projectors::DEFAULT_INSTANCE,
        args.data_dir.join("projector").display()
    );
    Ok(Projectors::InProcess { task, stop })
}

/// `n` `im-projector` processes (the binary beside this `imctl`) in the
/// pool, instances `up-1`..`up-n`, stores `<data dir>/projector-<i>`; the
/// first serves its metrics on `--projector-metrics-listen`.
fn pool(nats: &NatsArgs, args: &UpArgs, n: usize, kek: &KekArgs) -> anyhow::Result<Projectors> {
    anyhow::ensure!(
        n <= PROJECTORS_MAX,
        "--projectors {n}: at most {PROJECTORS_MAX} on one machine"
    );
    let exe = crate::cmd::check::procs::sibling("im-projector")?;
    let mut members = Vec::new();
    for i in 1..=n {
        let name = format!("up-{i}");
        let metrics = match i {
            1 => args.projector_metrics_listen,
            _ => std::net::SocketAddr::new(args.projector_metrics_listen.ip(), 0),
        };
        let child = Command::new(&exe)
            .env("IM_NATS_URL", &nats.nats_url)
            .envs(nats.auth.env())
            .env("IM_PROJECTOR_INSTANCE", &name)
            .env(
                "IM_PROJECTOR_DATA_DIR",
                args.data_dir.join(format!("projector-{i}")),
            )
            .env("IM_FANOUT_THRESHOLD", args.fanout_threshold.to_string())
            .envs(kek.kek_file.iter().map(|f| ("IM_KEK_FILE", f)))
            .env("IM_PROJECTOR_METRICS_LISTEN", metrics.to_string())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        println!(
            "imctl: projector {name} pid {} in the pool (kill -9 it to see its partitions taken over)",
            child.id().unwrap_or_default()
        );
        members.push((name, child));
    }
    Ok(Projectors::Pool(members))
}
