//! Readiness from cheap state only: the NATS connection, and the projector
//! instances' heartbeats (which partitions are served, by whom, and
//! whether any says something is wrong). `/readyz` reads it; nothing is
//! asked of anyone per probe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_schema::v1;

/// A projector silent this long is gone (several missed heartbeats).
pub const PROJECTOR_SILENCE_MAX: Duration = Duration::from_secs(10);

/// Instances remembered; more are ignored (a flood of forged heartbeats
/// cannot grow this).
pub const INSTANCES_MAX: usize = 256;

#[derive(Default)]
pub struct Readiness {
    seen: Mutex<HashMap<String, (Instant, v1::ProjectorHeartbeat)>>,
}

impl Readiness {
    fn record(&self, beat: v1::ProjectorHeartbeat) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, (at, _)| at.elapsed() < PROJECTOR_SILENCE_MAX);
        if seen.len() < INSTANCES_MAX || seen.contains_key(&beat.instance) {
            seen.insert(beat.instance.clone(), (Instant::now(), beat));
        }
    }

    /// What keeps the gateway from being ready, if anything.
    pub fn problems(&self, client: &async_nats::Client, partitions: u32) -> Vec<String> {
        let mut problems = Vec::new();
        if client.connection_state() != async_nats::connection::State::Connected {
            problems.push("not connected to NATS".to_string());
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut served = vec![false; partitions as usize];
        for (at, beat) in seen.values() {
            if at.elapsed() >= PROJECTOR_SILENCE_MAX {
                continue;
            }
            if !beat.problem.is_empty() {
                problems.push(format!("projector {}: {}", beat.instance, beat.problem));
                continue;
            }
            for p in &beat.partitions {
                if let Some(s) = served.get_mut(*p as usize) {
                    *s = true;
                }
            }
        }
        let missing: Vec<usize> = (0..served.len()).filter(|p| !served[*p]).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "no healthy projector heard from for partitions {missing:?}"
            ));
        }
        problems
    }
}

/// Listens to every instance's heartbeat until the connection closes.
pub async fn listen(client: async_nats::Client, readiness: Arc<Readiness>) {
    let Ok(mut beats) = client
        .subscribe(im_streams::subjects::PROJECTOR_ALIVE_ALL)
        .await
    else {
        tracing::warn!("projector heartbeats not subscribed");
        return;
    };
    while let Some(msg) = beats.next().await {
        if let Ok(beat) = im_schema::decode::<v1::ProjectorHeartbeat>(&msg.payload) {
            readiness.record(beat);
        }
    }
}
