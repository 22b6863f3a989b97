//! The search query, as the query service answers it: after the position
//! asked for is folded and indexed (bounded), in a blocking thread,
//! within `QUERY_TIME_MAX`.

use std::time::Duration;

use im_schema::v1::{self, query_response::Result as R};
use im_streams::ids::IdKind;

use super::find::{self, FindError};
use crate::projections::search::NAME;
use crate::query::{bad, check_ids, error, Position, QueryContext, MIN_POSITION_WAIT};

/// How long one search may take in the index: past it the user gets an
/// error rather than a hung box (the index keeps the thread until done,
/// and its permit of `SEARCHES_RUNNING_MAX`). With the waits before it
/// (`MIN_POSITION_WAIT` in all), under the gateway's 5 s.
pub const QUERY_TIME_MAX: Duration = Duration::from_secs(2);

/// Searches running in the index at once, per projector instance: each
/// takes a core while it runs, and a search that timed out still runs
/// (holding its permit); more wait, within their `QUERY_TIME_MAX`. (A
/// gateway asks every partition at once: an instance serving many gets
/// that many.)
pub const SEARCHES_RUNNING_MAX: usize = 4;

/// Users a user search may be limited to: a user's contacts, as many as
/// one contacts answer holds.
pub const USERS_PER_QUERY_MAX: usize = 5_000;

fn internal(e: impl std::fmt::Display) -> v1::QueryError {
    error(v1::QueryErrorCode::Internal, e.to_string())
}

/// How long a search waits for what is folded but not yet indexed when
/// no position was asked for: past it, it answers from the index as it
/// stands (a search box must not hang on a backlog).
pub const FRESH_WAIT_MAX: Duration = Duration::from_millis(500);

/// Makes the index cover everything folded (`applied`): the indexer is
/// woken, and waited for up to `FRESH_WAIT_MAX`, or until `deadline` (the
/// query's, shared with its wait for the fold) for a position a caller
/// asked for (`asked`), which it must reach.
async fn caught_up(
    indexes: &super::indexer::Indexes,
    index: &super::SearchIndex,
    (asked, applied): (u64, u64),
    deadline: tokio::time::Instant,
) -> Result<(), v1::QueryError> {
    if *index.indexed.borrow() >= applied {
        return Ok(());
    }
    indexes.wake();
    let mut indexed = index.indexed.subscribe();
    let fresh = tokio::time::timeout(FRESH_WAIT_MAX, indexed.wait_for(|at| *at >= applied));
    if fresh.await.is_ok() {
        return Ok(());
    }
    let reached = tokio::time::timeout_at(deadline, indexed.wait_for(|at| *at >= asked))
        .await
        .is_ok();
    match reached {
        true => Ok(()),
        false => Err(error(
            v1::QueryErrorCode::NotYet,
            format!("not yet: the search index has not reached {asked}"),
        )),
    }
}

impl QueryContext {
    pub(crate) async fn search(
        &self,
        q: v1::SearchQuery,
        pos: Position,
        scope: Option<u32>,
    ) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::User, &q.user_id)])?;
        if !q.conversation_id.is_empty() {
            check_ids(&[(IdKind::Conversation, &q.conversation_id)])?;
        }
        if q.user_ids.len() > USERS_PER_QUERY_MAX {
            return Err(bad(format!("more than {USERS_PER_QUERY_MAX} users")));
        }
        for u in &q.user_ids {
            check_ids(&[(IdKind::User, u)])?;
        }
        // A query the index would refuse is refused before any wait.
        im_streams::search::parse(&q.q).map_err(|e| bad(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + MIN_POSITION_WAIT;
        self.wait_for(&[NAME], pos).await?;
        let state = self
            .projection(NAME)
            .ok_or_else(|| internal("search is not running"))?;
        let (ks, index) = self.search.serving(state).map_err(internal)?;
        let applied = state.applied.borrow().conv;
        caught_up(
            &self.search,
            &index,
            (pos.0.min(applied), applied),
            deadline,
        )
        .await?;
        let topology = self.topology;
        let in_scope = move |conv: &str| scope.is_none_or(|p| topology.partition_of(conv) == p);
        // The permit goes with the search into its thread: one that
        // outlives its answer still counts. Waiting for it counts against
        // the search's own time.
        let until = tokio::time::Instant::now() + QUERY_TIME_MAX;
        let permit = self.search.running.clone().acquire_owned();
        let permit = match tokio::time::timeout_at(until, permit).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(error(
                    v1::QueryErrorCode::NotYet,
                    "too many searches at once: retry",
                ))
            }
        };
        let opener = self.search.opener.clone();
        let run = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            find::run(&index, ks.as_ref(), &q, (&in_scope, &opener))
        });
        match tokio::time::timeout_at(until, run).await {
            Err(_) => Err(error(
                v1::QueryErrorCode::NotYet,
                format!("the search took longer than {} s", QUERY_TIME_MAX.as_secs()),
            )),
            Ok(Err(e)) => Err(internal(e)),
            Ok(Ok(Err(e @ (FindError::Query(_) | FindError::TooDeep)))) => Err(bad(e.to_string())),
            Ok(Ok(Err(e))) => Err(internal(e)),
            Ok(Ok(Ok(found))) => Ok(R::Search(found)),
        }
    }

    /// With a digest: whether the search index holds exactly what its
    /// rows hold (drained first); empty when it does, else how it differs.
    pub(crate) fn index_problem(
        &self,
        state: &crate::runner::ProjectionState,
        ks: &dyn crate::store::Keyspace,
    ) -> Result<String, crate::store::StoreError> {
        if state.projection.name() != NAME {
            return Ok(String::new());
        }
        let compared = || -> Result<String, super::SearchError> {
            let (_, index) = self.search.serving(state)?;
            let open = &self.search.opener;
            super::indexer::drain_all(ks, &index, open)?;
            let (have, want) = (index.digest()?, super::rows_digest(ks, open)?);
            Ok(match have == want {
                true => String::new(),
                false => format!(
                    "the search index ({} documents, digest {}) differs from its rows ({}, {})",
                    have.keys,
                    have.hex(),
                    want.keys,
                    want.hex()
                ),
            })
        };
        compared().map_err(|e| crate::store::StoreError::Corrupt {
            key: "search index".into(),
            detail: e.to_string(),
        })
    }
}
