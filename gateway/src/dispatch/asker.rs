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

/// Tries of one ask before its users wait for the group's next delivery
/// or join, and the pause between them (a projector failing over takes
/// seconds).
const ASK_TRIES_MAX: u32 = 5;
const ASK_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// How the dispatcher reaches the projectors.
#[derive(Clone)]
pub struct GroupQueries {
    pub client: async_nats::Client,
    pub topology: Topology,
}

impl GroupQueries {
    /// The user's large groups, from every partition (empty when a
    /// partition does not answer: logged; the user still syncs them).
    pub async fn groups_of(&self, user: &str) -> Vec<v1::GroupState> {
        let asks = (0..self.topology.partitions).map(|p| {
            let q = Query::GroupsOf(v1::GroupsOfQuery {
                user_id: user.to_string(),
            });
            crate::query::ask_with(&self.client, p, (0, 0), true, q)
        });
        let mut out = Vec::new();
        for answer in futures::future::join_all(asks).await {
            match answer {
                Ok(R::GroupsOf(r)) => out.extend(r.groups),
                other => {
                    tracing::warn!(user, answer = ?other.err(), "large groups of a user unknown")
                }
            }
        }
        out
    }

    /// Which of `users` are members of `conv`, tried `ASK_TRIES_MAX` times.
    async fn group_state(&self, conv: &str, users: &[Box<str>]) -> Option<v1::GroupState> {
        let q = Query::GroupState(v1::GroupStateQuery {
            conversation_id: conv.to_string(),
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        });
        let partition = self.topology.partition_of(conv);
        for attempt in 1..=ASK_TRIES_MAX {
            match crate::query::ask_with(&self.client, partition, (0, 0), true, q.clone()).await {
                Ok(R::GroupState(g)) => return Some(g),
                other => {
                    tracing::warn!(conv, attempt, answer = ?other.err(), "group state not answered");
                    tokio::time::sleep(ASK_RETRY_PAUSE).await;
                }
            }
        }
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
