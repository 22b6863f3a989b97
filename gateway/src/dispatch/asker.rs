//! Asks the projectors about large groups for the dispatcher: which groups
//! a connecting user is in, and which of the users here are members of a
//! group whose chain broke. Every ask waits for what its projector had
//! delivered (`after_delivered`), so an answer covers every delivery sent
//! before it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::Topology;
use tokio::sync::mpsc;

use super::{Ask, Command, Routes};

/// Group asks in flight at once (each a query of one partition).
const ASKS_IN_FLIGHT: usize = 16;

/// Group queries of this gateway in flight at once, asks and connects
/// together: a burst of connects (each asks every partition) is spread
/// out rather than refused by the projectors' own bound (256 each).
const GROUP_QUERIES_IN_FLIGHT: usize = 64;

/// Tries of one ask before its users wait for the group's next delivery
/// or join, and the pause between them (a projector failing over takes
/// seconds).
const ASK_TRIES_MAX: u32 = 5;
const ASK_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// How the dispatcher reaches the projectors.
#[derive(Clone)]
pub struct GroupQueries {
    client: async_nats::Client,
    topology: Topology,
    inflight: Arc<tokio::sync::Semaphore>,
}

impl GroupQueries {
    pub fn new(client: async_nats::Client, topology: Topology) -> Self {
        GroupQueries {
            client,
            topology,
            inflight: Arc::new(tokio::sync::Semaphore::new(GROUP_QUERIES_IN_FLIGHT)),
        }
    }

    /// The user's large groups, from every partition (without a partition
    /// that does not answer in `ASK_TRIES_MAX` tries: logged; the user
    /// still syncs its groups, and a change of one brings them in).
    pub async fn groups_of(&self, user: &str) -> Vec<v1::GroupState> {
        let asks = (0..self.topology.partitions).map(|p| {
            let q = Query::GroupsOf(v1::GroupsOfQuery {
                user_id: user.to_string(),
            });
            self.ask(p, q)
        });
        let mut out = Vec::new();
        for answer in futures::future::join_all(asks).await {
            match answer {
                Some(R::GroupsOf(r)) => out.extend(r.groups),
                _ => tracing::warn!(user, "large groups of a user unknown in a partition"),
            }
        }
        out
    }

    /// Which of `users` are members of `conv`.
    async fn group_state(&self, conv: &str, users: &[Box<str>]) -> Option<v1::GroupState> {
        let q = Query::GroupState(v1::GroupStateQuery {
            conversation_id: conv.to_string(),
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        });
        match self.ask(self.topology.partition_of(conv), q).await {
            Some(R::GroupState(g)) => Some(g),
            _ => None,
        }
    }

    /// One query (covering what its projector delivered), tried up to
    /// `ASK_TRIES_MAX` times; at most `GROUP_QUERIES_IN_FLIGHT` at once.
    async fn ask(&self, partition: u32, q: Query) -> Option<R> {
        for attempt in 1..=ASK_TRIES_MAX {
            let answer = {
                let _permit = self.inflight.acquire().await.ok()?;
                crate::query::ask_with(&self.client, partition, (0, 0), true, q.clone()).await
            };
            match answer {
                Ok(r) => return Some(r),
                Err(code) => {
                    tracing::debug!(partition, attempt, ?code, "group query not answered");
                    tokio::time::sleep(ASK_RETRY_PAUSE * attempt).await;
                }
            }
        }
        tracing::warn!(
            partition,
            "group query not answered in {ASK_TRIES_MAX} tries"
        );
        None
    }
}

/// Answers asks until the dispatcher is gone.
pub(super) async fn run(
    routes: Arc<Routes>,
    commands: mpsc::Sender<Command>,
    queries: GroupQueries,
    mut asks: mpsc::Receiver<Ask>,
) {
    futures::stream::poll_fn(|cx| asks.poll_recv(cx))
        .for_each_concurrent(ASKS_IN_FLIGHT, |(conv, users)| {
            let (routes, commands, queries) = (&routes, &commands, &queries);
            async move {
                let answer = queries.group_state(&conv, &users).await;
                routes.answered(&conv, answer.as_ref(), &mut |c| {
                    let _ = commands.try_send(c);
                });
            }
        })
        .await;
}
