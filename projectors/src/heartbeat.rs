//! The instance's heartbeat: every `HEARTBEAT_INTERVAL` it says on
//! `im.projector.<instance>.alive` which partitions it serves and whether
//! anything is wrong, so gateways and operators judge readiness without a
//! query (and a crashed instance is noticed by its silence).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use im_schema::v1;

/// How often an instance says it is alive. Readers call it gone after a
/// few missed beats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// What is wrong with the instance now, if anything; set by whoever finds
/// a problem (a storage error), cleared when it passes.
#[derive(Default)]
pub struct Health {
    problem: Mutex<Option<String>>,
    /// What the instance's runs have published, across restarts.
    pub published: Arc<crate::runner::DeliveryMark>,
}

impl Health {
    pub fn set_problem(&self, problem: impl Into<String>) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(problem.into());
    }

    pub fn clear(&self) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The partitions a heartbeat names: those whose clients it answers. A
/// follower in the pool or a scratch instance beats with none, so that a
/// gateway never counts a partition as served by a store that answers no
/// one (a pool whose owner died is not ready until a successor serves).
pub fn served(serves: crate::Serves, partitions: Vec<u32>) -> Vec<u32> {
    match serves {
        crate::Serves::Clients => partitions,
        crate::Serves::OwnerOnly => Vec::new(),
    }
}

/// Beats until aborted.
pub async fn run(
    client: async_nats::Client,
    instance: String,
    partitions: Vec<u32>,
    health: Arc<Health>,
) {
    let Ok(subject) = im_streams::subjects::projector_alive_subject(&instance) else {
        return;
    };
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tick.tick().await;
        let beat = v1::ProjectorHeartbeat {
            instance: instance.clone(),
            partitions: partitions.clone(),
            problem: health.problem().unwrap_or_default(),
        };
        if let Err(e) = client
            .publish(subject.clone(), im_schema::encode(&beat).into())
            .await
        {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}
