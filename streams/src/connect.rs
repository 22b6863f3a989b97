//! Connecting to NATS the same way in every process: a list of servers
//! (comma-separated; a process starts while any one of them answers, and
//! fails over to the others), a client name per component, and errors
//! that say which servers were tried.

use std::time::Duration;

use async_nats::ServerAddr;

use crate::error::StreamsError;
pub use crate::nats_auth::NatsAuth;

/// Where a local stack's server listens.
pub const DEFAULT_SERVERS: &str = "nats://127.0.0.1:4222";

/// How long one attempt to reach a server may take; with a list, each
/// server is tried in turn.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a process keeps trying while JetStream does not answer as it
/// starts: a cluster elects a new leader within seconds and a rolling
/// restart takes well under a minute; past this the process exits, so the
/// outage is seen by whatever supervises it.
pub const STARTUP_WAIT: Duration = Duration::from_secs(60);

/// The first pause between two tries, doubled up to `RETRY_PAUSE_MAX`.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(250);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(4);

/// Runs `attempt` until it succeeds, fails for a reason `is_transient`
/// does not accept, or `STARTUP_WAIT` has passed since the first try.
pub async fn until_available<T, E, Fut>(
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    let mut pause = RETRY_PAUSE_MIN;
    loop {
        match attempt().await {
            Err(e) if is_transient(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(what, error = %e, retry_in_ms = pause.as_millis() as u64, "jetstream not available yet: trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

/// Whether an error is JetStream not answering (yet), worth a retry.
pub fn is_unavailable(e: &StreamsError) -> bool {
    matches!(
        e,
        StreamsError::Unavailable { .. } | StreamsError::Connect { .. }
    )
}

/// The NATS settings every binary takes (flag and environment variable).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct NatsArgs {
    /// NATS servers, comma-separated (e.g. a cluster's seeds): any one that
    /// answers will do.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-url", env = "IM_NATS_URL", default_value = DEFAULT_SERVERS)
    )]
    pub nats_url: String,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub auth: NatsAuth,
}

impl Default for NatsArgs {
    fn default() -> Self {
        NatsArgs::new(DEFAULT_SERVERS)
    }
}

impl NatsArgs {
    pub fn new(servers: impl Into<String>) -> Self {
        NatsArgs {
            nats_url: servers.into(),
            auth: NatsAuth::default(),
        }
    }

    pub fn with_auth(mut self, auth: NatsAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Connects as `name` (shown in the server's connection list).
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, StreamsError> {
        let servers = parse_servers(&self.nats_url)?;
        self.auth
            .options()
            .await?
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(servers)
            .await
            .map_err(|source| {
                let servers = self.nats_url.clone();
                match source.kind() {
                    async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication => {
                        let who = self
                            .auth
                            .user
                            .clone()
                            .map_or_else(|| "no identity".to_string(), |u| format!("user {u:?}"));
                        StreamsError::IdentityRefused {
                            servers,
                            who,
                            source,
                        }
                    }
                    _ => StreamsError::Connect { servers, source },
                }
            })
    }
}

/// The servers of a comma-separated list; an empty or bad entry is an error
/// naming it.
pub fn parse_servers(list: &str) -> Result<Vec<ServerAddr>, StreamsError> {
    let servers: Vec<ServerAddr> = list
        .split(',')
        .map(str::trim)
        .map(|s| match s {
            "" => Err(StreamsError::Config(format!(
                "an empty NATS server in {list:?}"
            ))),
            s => s
                .parse::<ServerAddr>()
                .map_err(|e| StreamsError::setting(format!("NATS server {s:?}"), e)),
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err(StreamsError::Config("no NATS server given".into()));
    }
    Ok(servers)
}

/// SIGTERM (an orchestrator) or SIGINT (Ctrl-C): how every binary is told
/// to stop.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_servers_parses_and_a_bad_one_is_named() {
        let list = parse_servers("nats://a:4222, nats://b:4223,c:4224").unwrap();
        assert_eq!(list.len(), 3);
        let err = parse_servers("nats://a:4222,nats://b:x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats://b:x"), "{err}");
        assert!(parse_servers("").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn only_transient_errors_are_retried_and_only_for_the_startup_wait() {
        let mut tries = 0;
        let r: Result<(), StreamsError> = until_available("t", is_unavailable, || {
            tries += 1;
            let n = tries;
            async move {
                match n {
                    1..=3 => Err(StreamsError::unavailable("startup", "electing")),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert!(r.is_ok());
        assert_eq!(tries, 4);

        let mut tries = 0;
        let r: Result<(), StreamsError> = until_available("t", is_unavailable, || {
            tries += 1;
            async { Err(StreamsError::Config("bad".into())) }
        })
        .await;
        assert!(matches!(r, Err(StreamsError::Config(_))));
        assert_eq!(tries, 1);

        let started = tokio::time::Instant::now();
        let r: Result<(), StreamsError> = until_available("t", is_unavailable, || async {
            Err(StreamsError::unavailable("startup", "down"))
        })
        .await;
        assert!(r.is_err());
        assert!(started.elapsed() <= STARTUP_WAIT, "{:?}", started.elapsed());
        assert!(started.elapsed() >= STARTUP_WAIT - RETRY_PAUSE_MAX);
    }
}
