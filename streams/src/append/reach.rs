//! Reaching someone depends on two logs besides the conversation's: the
//! target's own (privacy) and the pair's (contact, blocks). A command that
//! starts a direct conversation or adds members is checked against both
//! at their latest version before it is appended (`people::check_reach`):
//! a few targets by reading their logs here, a bulk add by asking the
//! `members` projection of every partition at once, at the log's end (or,
//! when no projector answers, by reading them here too).

use std::collections::HashMap;
use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

use super::Appender;
use crate::conversation::{Action, Command, ConvKind, ConvState, Rejection};
use crate::error::{BoxError, StreamsError};
use crate::ids::{pair_log_id, user_log_id};
use crate::people::{check_reach, reach_of, People, Reach};
use crate::subjects::query_subject;

/// Targets checked by reading their logs here, at most (two logs each);
/// more are asked of the projectors, one query per partition, so a bulk
/// add of thousands costs a round trip, not thousands.
pub const REACH_READS_MAX: usize = 16;

/// Logs read at once for one command.
const REACH_READS_IN_FLIGHT: usize = 8;

/// How long a bulk check waits for the projectors (they first apply the
/// log up to its end, bounded by their own `MIN_POSITION_WAIT`).
pub const REACH_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

impl Appender {
    /// The refusal, if the command reaches someone it may not (None for
    /// the commands that reach no one: `people::reach_of`).
    pub(super) async fn refuse_reach_of(
        &self,
        state: &ConvState,
        cmd: &Command,
    ) -> Result<Option<Rejection>, StreamsError> {
        if let (Action::Unblacklist { user }, Some(ConvKind::Direct)) = (&cmd.action, state.kind) {
            return self.refuse_lifting(&cmd.actor, user).await;
        }
        match reach_of(state, &cmd.actor, &cmd.action) {
            Some((reach, targets)) => self.refuse_reach(&cmd.actor, reach, &targets).await,
            None => Ok(None),
        }
    }

    /// A direct conversation's block is not lifted there while the user
    /// block it carries stands (`unblock` lifts both).
    async fn refuse_lifting(
        &self,
        actor: &str,
        user: &str,
    ) -> Result<Option<Rejection>, StreamsError> {
        let Ok(pair) = pair_log_id(actor, user) else {
            return Ok(None);
        };
        let blocking = self.people_of(&pair).await?.blocked_by.contains(actor);
        Ok(blocking.then_some(Rejection::UnblockFirst))
    }

    /// The refusal, if `actor` may not reach one of `targets` this way.
    async fn refuse_reach(
        &self,
        actor: &str,
        reach: Reach,
        targets: &[String],
    ) -> Result<Option<Rejection>, StreamsError> {
        let mut ids = Vec::with_capacity(targets.len() * 2);
        for t in targets {
            let bad = |e| crate::conversation::invalid("user_id", e);
            let (Ok(own), Ok(pair)) = (user_log_id(t), pair_log_id(actor, t)) else {
                let e = user_log_id(t).and(pair_log_id(actor, t)).unwrap_err();
                return Ok(Some(bad(e)));
            };
            ids.push((t, own, pair));
        }
        let logs = if targets.len() <= REACH_READS_MAX {
            self.read_people(&ids).await?
        } else {
            match self.ask_people(actor, targets).await {
                Ok(logs) => logs,
                // No projector answers: read them here, as a few are.
                Err(e @ StreamsError::Unavailable { .. }) => {
                    tracing::warn!(actor, targets = targets.len(), error = %e, "reading whom a bulk add reaches");
                    self.read_people(&ids).await?
                }
                Err(e) => return Err(e),
            }
        };
        let none = People::default();
        for (target, own, pair) in &ids {
            let get = |id: &String| logs.get(id).unwrap_or(&none);
            if let Err(r) = check_reach(actor, target, reach, get(own), get(pair)) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Each log's people state at its latest version, read here.
    async fn read_people(
        &self,
        ids: &[(&String, String, String)],
    ) -> Result<HashMap<String, People>, StreamsError> {
        let logs: Vec<&String> = ids.iter().flat_map(|(_, own, pair)| [own, pair]).collect();
        let mut out = HashMap::with_capacity(logs.len());
        for chunk in logs.chunks(REACH_READS_IN_FLIGHT) {
            let states = futures::future::try_join_all(chunk.iter().map(|l| self.people_of(l)));
            for (log, people) in chunk.iter().zip(states.await?) {
                out.insert((*log).clone(), people);
            }
        }
        Ok(out)
    }

    /// A people log's state at its latest version. One that has no event
    /// (most users never set a privacy, most pairs never met) is not kept
    /// in the cache, where it would push out the conversations in use.
    async fn people_of(&self, log: &str) -> Result<People, StreamsError> {
        if !self.cache.contains(log) {
            let subject = self.topology.conv_subject(log)?;
            if self.last_seq_of(&subject).await? == 0 {
                return Ok(People::default());
            }
        }
        Ok(self.current_state(log).await?.people)
    }

    /// The same from the `members` projection of every partition, once it
    /// has applied the log up to its current end.
    async fn ask_people(
        &self,
        actor: &str,
        targets: &[String],
    ) -> Result<HashMap<String, People>, StreamsError> {
        let request = v1::QueryRequest {
            min_position: self.log_end().await?,
            query: Some(Query::Reach(v1::ReachQuery {
                actor: actor.to_string(),
                user_ids: targets.to_vec(),
            })),
            ..Default::default()
        };
        let payload: bytes::Bytes = im_schema::encode(&request).into();
        let unavailable =
            |why: BoxError| StreamsError::unavailable("checking whom a command reaches", why);
        let asks = (0..self.topology.partitions).map(|p| {
            let (client, payload) = (self.client.clone(), payload.clone());
            async move {
                let reply = tokio::time::timeout(
                    REACH_QUERY_TIMEOUT,
                    client.request(query_subject(p), payload),
                )
                .await
                .map_err(|_| unavailable("no projector answered in time".into()))?
                .map_err(|e| unavailable(e.into()))?;
                let response: v1::QueryResponse =
                    im_schema::decode(&reply.payload).map_err(|e| unavailable(e.into()))?;
                match response.result {
                    Some(R::Reach(r)) => Ok(r.logs),
                    Some(R::Error(e)) => Err(unavailable(e.message.into())),
                    other => Err(unavailable(format!("unexpected answer {other:?}").into())),
                }
            }
        });
        let answers: Vec<Vec<v1::PeopleLogRow>> = futures::future::try_join_all(asks).await?;
        Ok(answers
            .into_iter()
            .flatten()
            .map(|l| (l.log_id, People::from_row(&l.row.unwrap_or_default())))
            .collect())
    }
}
