//! Faults on a schedule: kill -9 and restart of a gateway, the projector or
//! nats-server; on a cluster, kill -9 of IM_CONV's leader and SIGSTOP of a
//! node for a while; with a pool of projectors, kill -9 of a partition's
//! owner (down past the lease, so another takes over), SIGTERM of one (it
//! hands over before it exits) and moves of partitions. Each is logged
//! with when it happened; a SIGTERMed member that does not exit cleanly
//! within `STOP_MAX` is a problem.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use super::procs::System;

/// How long a killed process stays down, or a stopped node stopped.
const OUTAGE: Duration = Duration::from_millis(1_500);

/// How long a killed pool member stays down: past the lease, so that its
/// partitions are taken over (a shorter outage is a restart that takes its
/// own leases back, which the plain projector kill already covers).
const OWNER_OUTAGE: Duration = Duration::from_secs(10);

/// How long a SIGTERMed pool member may take to hand over and exit.
const STOP_MAX: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillGateway(usize),
    KillProjector,
    KillOwner,
    StopOwner,
    MovePartition,
    KillNats,
    KillLeader,
    StopNode(usize),
}

/// The `n`th fault: a pool's first three are one of each owner fault, so a
/// short check has them all; then at random.
fn pick(system: &System, n: usize) -> Fault {
    let mut rng = rand::rng();
    let cluster = system.nodes() > 1;
    if system.pool() {
        let first = [Fault::KillOwner, Fault::StopOwner, Fault::MovePartition];
        if let Some(f) = first.get(n) {
            return *f;
        }
        // Owners are the point of a pool check: half the faults.
        return match rng.random_range(0..8) {
            0 => Fault::KillGateway(0),
            1 => Fault::KillGateway(1),
            2 | 3 => Fault::KillOwner,
            4 => Fault::StopOwner,
            5 => Fault::MovePartition,
            6 if cluster => Fault::KillLeader,
            6 => Fault::KillNats,
            _ if cluster => Fault::StopNode(rng.random_range(0..system.nodes())),
            _ => Fault::KillOwner,
        };
    }
    match rng.random_range(0..if cluster { 5 } else { 4 }) {
        0 => Fault::KillGateway(0),
        1 => Fault::KillGateway(1),
        2 => Fault::KillProjector,
        3 if cluster => Fault::KillLeader,
        3 => Fault::KillNats,
        _ => Fault::StopNode(rng.random_range(0..system.nodes())),
    }
}

/// A JetStream context as the operator, on any node that answers.
async fn operator(system: &System) -> Option<async_nats::jetstream::Context> {
    let client = im_streams::connect::NatsArgs::new(system.nats.urls())
        .with_auth(
            system
                .identities
                .auth(im_streams::identities::Component::Operator),
        )
        .connect("imctl-check-faults")
        .await
        .ok()?;
    Some(async_nats::jetstream::new(client))
}

/// A random partition and its owner's index among the projectors.
async fn some_owner(system: &System) -> Option<(u32, usize)> {
    let js = operator(system).await?;
    let kv = js
        .get_key_value(im_projectors::lease::PARTITION_LEASES_BUCKET)
        .await
        .ok()?;
    let topology = im_streams::definitions::read_topology(&js).await.ok()?;
    let p = rand::rng().random_range(0..topology.partitions);
    let raw = kv.get(im_projectors::lease::lease_key(p)).await.ok()??;
    let lease: im_projectors::lease::Lease = serde_json::from_slice(&raw).ok()?;
    let i = system
        .projectors
        .iter()
        .position(|m| m.name == lease.owner)?;
    Some((p, i))
}

/// The node leading IM_CONV (its index), on a cluster.
async fn leader(system: &System) -> Option<usize> {
    let js = operator(system).await?;
    let mut stream = js.get_stream("IM_CONV").await.ok()?;
    let name = stream.info().await.ok()?.cluster.as_ref()?.leader.clone()?;
    name.strip_prefix('n')?.parse::<usize>().ok().map(|n| n - 1)
}

/// What was done, and a problem if the system misbehaved doing it.
async fn inflict(
    system: &tokio::sync::Mutex<System>,
    fault: Fault,
) -> anyhow::Result<(String, Option<String>)> {
    let mut s = system.lock().await;
    let what = match fault {
        Fault::KillGateway(i) => {
            s.gateways[i].0.kill();
            tokio::time::sleep(OUTAGE).await;
            s.gateways[i].0.restart()?;
            format!("kill -9 gateway{i}")
        }
        Fault::KillProjector => {
            s.projectors[0].kill();
            tokio::time::sleep(OUTAGE).await;
            s.projectors[0].restart()?;
            "kill -9 projector".to_string()
        }
        Fault::KillOwner => {
            let Some((p, i)) = some_owner(&s).await else {
                return Ok(("no owner found to kill".into(), None));
            };
            s.projectors[i].kill();
            tokio::time::sleep(OWNER_OUTAGE).await;
            s.projectors[i].restart()?;
            let name = &s.projectors[i].name;
            format!("kill -9 {name} (owner of partition {p}), down {OWNER_OUTAGE:?}")
        }
        Fault::StopOwner => {
            let Some((p, i)) = some_owner(&s).await else {
                return Ok(("no owner found to stop".into(), None));
            };
            let clean = s.projectors[i].terminate(STOP_MAX).await;
            s.projectors[i].restart()?;
            let what = format!("SIGTERM {} (owner of partition {p})", s.projectors[i].name);
            if !clean {
                let problem = format!("{what}: no clean exit within {STOP_MAX:?}");
                return Ok((what, Some(problem)));
            }
            what
        }
        Fault::MovePartition => move_partition(&s).await,
        Fault::KillNats => {
            s.node(0).kill();
            tokio::time::sleep(OUTAGE).await;
            s.node(0).restart().await?;
            "kill -9 nats-server".to_string()
        }
        Fault::KillLeader => {
            let i = leader(&s).await.unwrap_or(0);
            s.node(i).kill();
            tokio::time::sleep(OUTAGE).await;
            s.node(i).restart().await?;
            format!("kill -9 n{} (IM_CONV's leader)", i + 1)
        }
        Fault::StopNode(i) => {
            let pid = s.node(i).pid();
            super::procs::signal("-STOP", pid);
            tokio::time::sleep(2 * OUTAGE).await;
            super::procs::signal("-CONT", pid);
            format!("SIGSTOP n{} for {:?}", i + 1, 2 * OUTAGE)
        }
    };
    Ok((what, None))
}

/// A random partition moved to a random other member (`imctl projections
/// move` without waiting): its owner hands it over once the member has
/// caught up.
async fn move_partition(s: &System) -> String {
    let Some((p, i)) = some_owner(s).await else {
        return "no owner found to move from".into();
    };
    let others: Vec<&str> = (0..s.projectors.len())
        .filter(|j| *j != i)
        .map(|j| s.projectors[j].name.as_str())
        .collect();
    let to = others[rand::rng().random_range(0..others.len())];
    let Some(js) = operator(s).await else {
        return "no operator connection to move with".into();
    };
    match im_projectors::lease::set_move(&js, p, Some(to)).await {
        Ok(()) => format!("move partition {p} to {to}"),
        Err(e) => format!("move partition {p} to {to} not recorded: {e}"),
    }
}

/// What faults did, and the problems they met.
#[derive(Default)]
pub struct Log {
    pub done: Vec<String>,
    pub problems: Vec<String>,
}

/// Inflicts a fault every `every` until `until`; the log of what was done.
pub async fn run(
    system: Arc<tokio::sync::Mutex<System>>,
    every: Duration,
    started: Instant,
    until: Instant,
    log: Arc<Mutex<Log>>,
) -> anyhow::Result<()> {
    for n in 0.. {
        tokio::time::sleep(every).await;
        if Instant::now() + OUTAGE * 2 >= until {
            return Ok(());
        }
        let fault = pick(&*system.lock().await, n);
        let at = started.elapsed().as_secs_f64();
        let (what, problem) = inflict(&system, fault).await?;
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.done.push(format!("{at:.1} s: {what}"));
        log.problems.extend(problem);
    }
    Ok(())
}
