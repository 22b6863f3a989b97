//! Faults on a schedule: kill -9 and restart of a gateway, the projector or
//! nats-server; on a cluster, kill -9 of IM_CONV's leader and SIGSTOP of a
//! node for a while. Each is logged with when it happened.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use super::procs::System;

/// How long a killed process stays down, or a stopped node stopped.
const OUTAGE: Duration = Duration::from_millis(1_500);

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillGateway(usize),
    KillProjector,
    KillNats,
    KillLeader,
    StopNode(usize),
}

fn pick(system: &System) -> Fault {
    let mut rng = rand::rng();
    let cluster = system.nodes() > 1;
    match rng.random_range(0..if cluster { 5 } else { 4 }) {
        0 => Fault::KillGateway(0),
        1 => Fault::KillGateway(1),
        2 => Fault::KillProjector,
        3 if cluster => Fault::KillLeader,
        3 => Fault::KillNats,
        _ => Fault::StopNode(rng.random_range(0..system.nodes())),
    }
}

/// The node leading IM_CONV (its index), on a cluster.
async fn leader(system: &System) -> Option<usize> {
    let url = system.nats.urls().split(',').next()?.to_string();
    let client = system
        .identities
        .auth(im_streams::identities::Component::Operator)
        .options()
        .await
        .ok()?
        .connect(url)
        .await
        .ok()?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("IM_CONV").await.ok()?;
    let name = stream.info().await.ok()?.cluster.as_ref()?.leader.clone()?;
    name.strip_prefix('n')?.parse::<usize>().ok().map(|n| n - 1)
}

fn signal(sig: &str, pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status();
    }
}

async fn inflict(system: &tokio::sync::Mutex<System>, fault: Fault) -> anyhow::Result<String> {
    let mut s = system.lock().await;
    let what = match fault {
        Fault::KillGateway(i) => {
            s.gateways[i].0.kill();
            tokio::time::sleep(OUTAGE).await;
            s.gateways[i].0.restart()?;
            format!("kill -9 gateway{i}")
        }
        Fault::KillProjector => {
            s.projector.kill();
            tokio::time::sleep(OUTAGE).await;
            s.projector.restart()?;
            "kill -9 projector".to_string()
        }
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
            signal("-STOP", pid);
            tokio::time::sleep(2 * OUTAGE).await;
            signal("-CONT", pid);
            format!("SIGSTOP n{} for {:?}", i + 1, 2 * OUTAGE)
        }
    };
    Ok(what)
}

/// Inflicts a fault every `every` until `until`; the log of what was done.
pub async fn run(
    system: Arc<tokio::sync::Mutex<System>>,
    every: Duration,
    started: Instant,
    until: Instant,
    log: Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(every).await;
        if Instant::now() + OUTAGE * 2 >= until {
            return Ok(());
        }
        let fault = pick(&*system.lock().await);
        let at = started.elapsed().as_secs_f64();
        let what = inflict(&system, fault).await?;
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{at:.1} s: {what}"));
    }
}
