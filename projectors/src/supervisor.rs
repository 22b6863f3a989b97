//! Keeps a projector running through storage trouble. A storage error
//! stops the instance where it stands (nothing acknowledged that was not
//! committed), is reported (log, `im_projector_storage_errors_total`, the
//! heartbeat's problem, so `/readyz` says so), and the instance starts
//! again: it waits, reporting, until the disk takes writes, and a store
//! that cannot be trusted is quarantined and rebuilt from the log. JetStream
//! not answering (an election, a node down) restarts it the same way, for
//! at most `STARTUP_WAIT` in a row. Only an error no restart can mend
//! (configuration) ends it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::heartbeat::Health;
use crate::projector::{
    quarantine, Clients, Projector, ProjectorConfig, ProjectorError, STORAGE_ERRORS,
};
use crate::query::QueryContext;
use crate::runner::RunError;
use crate::store::StoreError;
use im_streams::connect::{is_unavailable, until_available, STARTUP_WAIT};

/// The first wait before a restart, doubled after each failed run up to
/// `RESTART_BACKOFF_MAX`: a disk that keeps failing is not hammered.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A run this long counts as healthy: the next failure waits the minimum.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Stores quarantined in a row without a healthy run in between: a fresh
/// store that cannot be trusted either means something else is wrong (the
/// disk, a bug), which another rebuild would not mend.
pub const QUARANTINES_MAX: u32 = 3;

/// Restarts in a row that found the store still held by another handle.
/// Right after an instance stops, its last handles (a query in flight,
/// the fold thread's batch) go within moments; past a minute one is stuck,
/// and only a new process lets go of it: the supervisor ends, and the
/// process manager (systemd, Kubernetes) starts the process afresh.
pub const LOCKED_RESTARTS_MAX: u32 = 60;

/// How long a restart waits for a held store's lock.
const LOCKED_WAIT: Duration = Duration::from_secs(1);

/// JetStream not answering (a leader election, a node or the network
/// down), or a task that ended with it: the instance starts again from its
/// checkpoints once it answers.
fn jetstream_unavailable(e: &ProjectorError) -> bool {
    match e {
        ProjectorError::Streams(s) => im_streams::connect::is_unavailable(s),
        ProjectorError::Run(RunError::JetStream(_) | RunError::Task(_)) => true,
        _ => false,
    }
}

/// The storage error behind a projector's error, if that is what it is.
fn storage_error(e: &ProjectorError) -> Option<&StoreError> {
    match e {
        ProjectorError::Store(s) | ProjectorError::Run(RunError::Store(s)) => Some(s),
        _ => None,
    }
}

/// Runs the projector until an error no restart mends; `current` follows
/// the running instance (for metrics and callers that wait for it).
/// `stop` set to true stops it gracefully (`Projector::finish`).
pub async fn run(
    clients: Clients,
    config: ProjectorConfig,
    current: watch::Sender<Option<Arc<QueryContext>>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ProjectorError> {
    // One heartbeat for every run, so a projector that cannot even start
    // (its disk full) still says why.
    let health = Arc::new(Health::default());
    let partitions = match &config.partitions {
        Some(p) => p.clone(),
        None => {
            let js = async_nats::jetstream::new(clients.publish.clone());
            let read = || im_streams::definitions::read_topology(&js);
            let topology = until_available("topology", is_unavailable, read).await?;
            (0..topology.partitions).collect()
        }
    };
    let _beat = AbortOnDrop(tokio::spawn(crate::heartbeat::run(
        clients.publish.clone(),
        config.instance.clone(),
        crate::heartbeat::served(config.serves, partitions),
        health.clone(),
    )));
    let mut backoff = RESTART_BACKOFF_MIN;
    let mut quarantines = 0;
    let mut locked = 0;
    // Since when JetStream has not let a run last (None: it has).
    let mut outage: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        let start =
            Projector::start_reporting(clients.clone(), config.clone(), Some(health.clone()));
        let outcome = match start.await {
            Ok(mut projector) => {
                locked = 0;
                current.send_replace(Some(projector.context.clone()));
                tokio::select! {
                    r = projector.wait() => r.map_err(ProjectorError::Run),
                    _ = crate::pipeline::stopped(&mut stop) => {
                        let r = projector.finish().await;
                        current.send_replace(None);
                        tracing::info!("stopped: the last batch committed and acknowledged");
                        return r.map_err(ProjectorError::Run);
                    }
                }
            }
            Err(e) => Err(e),
        };
        current.send_replace(None);
        let error = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if started.elapsed() >= HEALTHY_RUN {
            (backoff, quarantines, outage) = (RESTART_BACKOFF_MIN, 0, None);
        }
        if jetstream_unavailable(&error) {
            let since = *outage.get_or_insert(started);
            if since.elapsed() >= STARTUP_WAIT {
                return Err(error);
            }
            health.set_problem(format!("jetstream: {error}"));
            tracing::warn!(error = %error, wait_ms = backoff.as_millis() as u64, "jetstream unavailable: the projector starts again from its checkpoints once it answers");
            pause(backoff, &mut stop).await;
            backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            continue;
        }
        let Some(store_error) = storage_error(&error) else {
            return Err(error);
        };
        if matches!(store_error, StoreError::Locked(_)) {
            locked += 1;
            if locked > LOCKED_RESTARTS_MAX {
                tracing::error!(error = %error, "the store is still held by this process's last instance: ending, for the process to be started afresh");
                return Err(error);
            }
            tracing::info!(
                attempt = locked,
                "the store is still held: waiting for the last instance's handles to go"
            );
            pause(LOCKED_WAIT, &mut stop).await;
            continue;
        }
        locked = 0;
        STORAGE_ERRORS.fetch_add(1, Relaxed);
        health.set_problem(format!("storage: {error}: {}", innermost(&error)));
        if store_error.is_corruption() {
            quarantines += 1;
            if quarantines > QUARANTINES_MAX {
                return Err(error);
            }
            let aside = quarantine(&config.data_dir)?;
            tracing::error!(error = %error, quarantined = %aside.display(), "the store cannot be trusted: quarantined, rebuilding from the log");
            continue;
        }
        tracing::error!(error = %error, source = ?std::error::Error::source(&error), wait_ms = backoff.as_millis() as u64, "storage error: the projector stopped (nothing acknowledged past its last commit) and starts again");
        pause(backoff, &mut stop).await;
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}

/// A pause before the next start, cut short by a stop.
async fn pause(backoff: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(backoff) => {}
        _ = crate::pipeline::stopped(stop) => {}
    }
}

/// The innermost cause of an error, as text.
fn innermost(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
