//! The query service: NATS request/reply on `im.q.<partition>` for each
//! owned partition (queue group `im-projectors`, so replicas share load) and
//! on `im.projector.<instance>.q` (this instance only). Every query may wait,
//! bounded, for a `min_position`; queries naming a user never reveal
//! conversations that user is not a member of.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::ids::{validate_id, IdKind};

use crate::digest::digest_of;
use crate::projections::{
    convlist, dedupe, history, members, membership, people, receipts, unread,
};
use crate::runner::{checkpoint, ProjectionState, Source};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;
use im_streams::conversation::MEMBERS_PER_COMMAND_MAX;

pub use crate::digest::{key_hashes, KEYS_PAGE_MAX};

/// Queue group of every projector instance.
pub const QUEUE_GROUP: &str = "im-projectors";

/// Users one group-state query asks about: a gateway's connected members
/// of one group, asked in pieces of this size (~70 B each: 350 KB).
pub const GROUP_STATE_USERS_MAX: usize = 5_000;

/// How long a query waits for its `min_position` before answering NOT_YET.
/// Short: the caller usually asks right after an append that lands within
/// milliseconds, and a client must never hang on a lagging projector.
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(2);

/// While a query waits for a position, how often it asks whether the
/// instance's consumers stand past it (two JetStream requests each time).
pub const WATERMARK_RECHECK: Duration = Duration::from_millis(250);

/// Queries answered at once; more are refused with an error right away.
pub const QUERY_INFLIGHT_MAX: usize = 256;

pub use im_streams::subjects::{
    projector_query_subject as instance_subject, query_subject as partition_subject,
};

/// The positions a query must see: (IM_CONV, IM_RCPT) stream sequences.
pub(crate) type Position = (u64, u64);

/// Every id of a query checked, or a bad request naming the first bad one.
pub(crate) fn check_ids(pairs: &[(IdKind, &str)]) -> Result<(), v1::QueryError> {
    for (kind, id) in pairs {
        validate_id(*kind, id).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// A user id that may be absent (an operator's query asks for no one).
fn check_optional_user(user: &str) -> Result<(), v1::QueryError> {
    if user.is_empty() {
        return Ok(());
    }
    check_ids(&[(IdKind::User, user)])
}

pub struct QueryContext {
    pub topology: im_streams::Topology,
    pub instance: String,
    pub partitions: Vec<u32>,
    pub serves: crate::Serves,
    pub projections: Vec<Arc<ProjectionState>>,
    /// The fan-out threshold: groups above it are large.
    pub large_above: usize,
    /// What the instance has delivered, committed or not (I12).
    pub published: Arc<crate::runner::DeliveryMark>,
    pub client: async_nats::Client,
    pub rebuilds: Arc<crate::rebuild::Rebuilds>,
    /// The `search` projection's indexes.
    pub search: Arc<crate::search::indexer::Indexes>,
    /// The data keys content is opened with before it is answered; None
    /// where the deployment keeps content clear.
    pub content: Option<Arc<im_streams::content::ContentKeys>>,
}

pub(crate) fn error(code: v1::QueryErrorCode, message: impl Into<String>) -> v1::QueryError {
    v1::QueryError {
        code: code as i32,
        message: message.into(),
    }
}

pub(crate) fn bad(message: impl Into<String>) -> v1::QueryError {
    error(v1::QueryErrorCode::BadRequest, message)
}

/// The content keys did not answer: the asker may try again.
fn keys_error(e: im_streams::StreamsError) -> v1::QueryError {
    error(v1::QueryErrorCode::NotYet, format!("content keys: {e}"))
}

fn store_error(e: StoreError) -> v1::QueryError {
    error(v1::QueryErrorCode::Internal, e.to_string())
}

fn response(result: R) -> v1::QueryResponse {
    v1::QueryResponse {
        result: Some(result),
    }
}

impl QueryContext {
    pub fn projection(&self, name: &str) -> Option<&Arc<ProjectionState>> {
        self.projections
            .iter()
            .find(|p| p.projection.name() == name)
    }

    /// `pos`, raised to what this instance has delivered so far (I12: a
    /// delivery may leave before its commit; a read after it waits).
    fn past_deliveries(&self, pos: Position) -> Position {
        let d = self.published.get();
        (pos.0.max(d.conv), pos.1.max(d.rcpt))
    }

    /// Waits until every named projection has applied the positions, or
    /// stands past them by the consumer's watermark (`caught_up_to`).
    pub(crate) async fn wait_for(
        &self,
        names: &[&str],
        pos: (u64, u64),
    ) -> Result<(), v1::QueryError> {
        let deadline = tokio::time::Instant::now() + MIN_POSITION_WAIT;
        for name in names {
            let state = self.projection(name).ok_or_else(|| {
                error(
                    v1::QueryErrorCode::Internal,
                    format!("{name} is not running"),
                )
            })?;
            let wants_rcpt = state.projection.reads_receipts();
            let mut rx = state.applied.clone();
            let mut asked: Option<tokio::time::Instant> = None;
            loop {
                let at = *rx.borrow_and_update();
                let conv_ok = at.conv >= pos.0;
                let rcpt_ok = !wants_rcpt || at.rcpt >= pos.1;
                if conv_ok && rcpt_ok {
                    break;
                }
                let now = tokio::time::Instant::now();
                if asked.is_none_or(|t| now >= t + WATERMARK_RECHECK) {
                    asked = Some(now);
                    let past = self.past_by_watermark(at, pos, conv_ok, rcpt_ok);
                    if tokio::time::timeout_at(deadline, past).await == Ok(true) {
                        break;
                    }
                }
                let slice = deadline.min(now + WATERMARK_RECHECK);
                match tokio::time::timeout_at(slice, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    Err(_) if tokio::time::Instant::now() < deadline => continue,
                    _ => {
                        return Err(error(
                            v1::QueryErrorCode::NotYet,
                            format!(
                                "not yet: {name} has applied {}/{}, asked for {}/{}",
                                at.conv, at.rcpt, pos.0, pos.1
                            ),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the positions a projection lacks lie past everything of
    /// this instance's partitions: a position written in a partition it
    /// does not hold (a conversation list asked of every partition).
    async fn past_by_watermark(
        &self,
        at: crate::runner::Applied,
        pos: Position,
        conv_ok: bool,
        rcpt_ok: bool,
    ) -> bool {
        for (source, ok, want, have) in [
            (Source::Conv, conv_ok, pos.0, at.conv),
            (Source::Rcpt, rcpt_ok, pos.1, at.rcpt),
        ] {
            if ok {
                continue;
            }
            match self.caught_up_to(source, have).await {
                Some(end) if end >= want => {}
                _ => return false,
            }
        }
        true
    }

    /// The stream's end, if no event of this instance's partitions lies
    /// between `have` (what the projection applied) and it: the end is
    /// read first, then the last event of each partition's subjects, which
    /// the store holds before any PubAck names it. (The consumer's pending
    /// count is not used: the server updates it after the PubAck, so it
    /// may still say 0 for an event just stored.) `1 + partitions`
    /// requests; not a position to resume from, only to answer at.
    async fn caught_up_to(&self, source: Source, have: u64) -> Option<u64> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
        let js = async_nats::jetstream::new(self.client.clone());
        let stream = js.get_stream(source.stream()).await.ok()?;
        let end = stream.cached_info().state.last_sequence;
        for filter in source.filters(self.topology, &self.partitions) {
            match stream.get_last_raw_message_by_subject(&filter).await {
                Ok(last) if last.sequence > have => return None,
                Ok(_) => {}
                Err(e) if e.kind() == Kind::NoMessageFound => {}
                Err(_) => return None,
            }
        }
        Some(end)
    }

    /// The serving keyspace of a projection, held for one answer.
    fn ks(&self, name: &str) -> Arc<dyn Keyspace> {
        self.projection(name).expect("every projection runs").ks()
    }

    /// The named projections' states (all when empty).
    fn named(&self, names: &[String]) -> Result<Vec<Arc<ProjectionState>>, v1::QueryError> {
        if names.is_empty() {
            return Ok(self.projections.clone());
        }
        names
            .iter()
            .map(|n| {
                self.projection(n)
                    .cloned()
                    .ok_or_else(|| bad(format!("no projection {n:?}")))
            })
            .collect()
    }

    /// Operator control: on the instance subject only, since it acts on
    /// this instance's store, not on whichever replica a partition query
    /// reaches.
    async fn control(&self, query: Query, scope: Option<u32>) -> Result<R, v1::QueryError> {
        if scope.is_some() {
            return Err(bad("control queries go to the instance subject"));
        }
        match query {
            Query::Rebuild(q) => {
                let targets = self.named(&q.projections)?;
                if let Some(own) = targets.iter().find(|t| t.projection.keeps_own_rows()) {
                    return Err(bad(format!(
                        "{} keeps rows the log does not hold: never rebuilt",
                        own.projection.name()
                    )));
                }
                let verdicts = self
                    .projection(crate::projections::members::NAME)
                    .cloned()
                    .ok_or_else(|| bad("no members projection"))?;
                let rebuilds = self
                    .rebuilds
                    .start(targets, verdicts, q.from_seq)
                    .map_err(|e| error(v1::QueryErrorCode::BadRequest, e.to_string()))?;
                Ok(R::RebuildStatus(v1::RebuildStatusResult { rebuilds }))
            }
            Query::RebuildCancel(q) => Ok(R::RebuildStatus(v1::RebuildStatusResult {
                rebuilds: self.rebuilds.cancel(&q.projections),
            })),
            Query::RebuildStatus(_) => Ok(R::RebuildStatus(v1::RebuildStatusResult {
                rebuilds: self.rebuilds.progress(),
            })),
            Query::Repair(q) => {
                validate_id(IdKind::Conversation, &q.conversation_id)
                    .map_err(|e| bad(e.to_string()))?;
                let mut projections = Vec::new();
                for state in self
                    .projections
                    .iter()
                    .filter(|s| !s.projection.keeps_own_rows())
                {
                    projections.push(
                        crate::repair::repair(
                            &self.client,
                            self.topology,
                            state,
                            &q.conversation_id,
                        )
                        .await
                        .map_err(|e| error(v1::QueryErrorCode::Internal, e.to_string()))?,
                    );
                }
                Ok(R::Repair(v1::RepairResult { projections }))
            }
            Query::DeadLetters(q) => crate::dead_letters::answer(self, &q)
                .await
                .map(R::DeadLetters)
                .map_err(|(code, message)| error(code, message)),
            _ => Err(bad("not a control query")),
        }
    }

    fn require_member(
        &self,
        projection: &str,
        conv: &str,
        user: &str,
    ) -> Result<(), v1::QueryError> {
        if user.is_empty() {
            return Ok(());
        }
        match membership::get(&Tx::new(&*self.ks(projection)), conv, user) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(error(
                v1::QueryErrorCode::Forbidden,
                "not a member of this conversation",
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Answers a query. `scope` is the partition the query was addressed to
    /// (`im.q.<p>`): user-level answers then cover that partition only, so a
    /// caller merging every partition sees each conversation once. `None`
    /// (the instance subject) covers all of the instance's partitions.
    pub async fn answer(&self, req: v1::QueryRequest, scope: Option<u32>) -> v1::QueryResponse {
        response(match self.answer_inner(req, scope).await {
            Ok(r) => r,
            Err(e) => R::Error(e),
        })
    }

    async fn answer_inner(
        &self,
        req: v1::QueryRequest,
        scope: Option<u32>,
    ) -> Result<R, v1::QueryError> {
        let pos = (req.min_position, req.min_rcpt_position);
        if req.after_delivered {
            let delivered = self.past_deliveries(pos);
            // A store that cannot commit (a full disk) stays behind what
            // it delivered: answered from what it holds after the wait,
            // rather than refusing every sync for as long.
            if delivered != pos
                && self
                    .wait_for(&crate::projections::NAMES, delivered)
                    .await
                    .is_err()
            {
                tracing::warn!(
                    conv = delivered.0,
                    "answering below what was delivered: the store is behind"
                );
            }
        }
        match req.query.ok_or_else(|| bad("no query"))? {
            Query::History(q) => self.history(q, pos).await,
            Query::Members(q) => self.members(q, pos).await,
            Query::Role(q) => self.role(q, pos).await,
            Query::Unread(q) => self.unread(q, pos).await,
            Query::ConvList(q) => self.conv_list(q, pos, scope).await,
            Query::Receipts(q) => self.receipts(q, pos).await,
            Query::Dedupe(q) => self.dedupe(q, pos).await,
            Query::RulesState(q) => self.rules_state(q).await,
            Query::GroupsOf(q) => self.groups_of(q, pos, scope).await,
            Query::GroupState(q) => self.group_state(q, pos).await,
            Query::Profiles(q) => self.profiles(q, pos).await,
            Query::Contacts(q) => self.contacts(q, pos, scope).await,
            Query::Reach(q) => self.reach(q, pos, scope).await,
            Query::Search(q) => self.search(q, pos, scope).await,
            Query::Status(q) => {
                let digests = q.digests.then(|| self.named(&q.projections)).transpose()?;
                // Digests read every entry and may wait for the search
                // indexer, which opens content on this runtime: off the
                // worker, so the runtime keeps going meanwhile.
                let status = crate::opening::blocking_section(|| self.status(digests));
                Ok(R::Status(status.map_err(store_error)?))
            }
            Query::Keys(q) => {
                let state = self
                    .projection(&q.projection)
                    .ok_or_else(|| bad(format!("no projection {:?}", q.projection)))?;
                Ok(R::Keys(
                    key_hashes(state.ks().as_ref(), &q.after, q.limit).map_err(store_error)?,
                ))
            }
            q @ (Query::Rebuild(_)
            | Query::RebuildCancel(_)
            | Query::RebuildStatus(_)
            | Query::Repair(_)
            | Query::DeadLetters(_)) => self.control(q, scope).await,
        }
    }

    async fn history(&self, q: v1::HistoryQuery, pos: Position) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::Conversation, &q.conversation_id)])?;
        check_optional_user(&q.user_id)?;
        self.wait_for(&["history"], pos).await?;
        self.require_member("history", &q.conversation_id, &q.user_id)?;
        let backward = q.direction == v1::Direction::Backward as i32;
        let ks = self.ks("history");
        let mut page = history::page(&*ks, &q.conversation_id, q.from_seq, q.limit, backward)
            .map_err(store_error)?;
        crate::opening::open_history(self.content.as_deref(), &mut page)
            .await
            .map_err(keys_error)?;
        Ok(R::History(page))
    }

    async fn members(&self, q: v1::MembersQuery, pos: Position) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::Conversation, &q.conversation_id)])?;
        check_optional_user(&q.user_id)?;
        self.wait_for(&["members"], pos).await?;
        self.require_member("members", &q.conversation_id, &q.user_id)?;
        let page = members::members_of(
            &*self.ks("members"),
            &q.conversation_id,
            &q.after_user_id,
            q.limit as usize,
        );
        match page.map_err(store_error)? {
            Some(m) => Ok(R::Members(m)),
            None => Err(error(v1::QueryErrorCode::NotFound, "no such conversation")),
        }
    }

    /// The user's large groups (a gateway joins their group subjects).
    async fn groups_of(
        &self,
        q: v1::GroupsOfQuery,
        pos: Position,
        scope: Option<u32>,
    ) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::User, &q.user_id)])?;
        self.wait_for(&[members::NAME], pos).await?;
        let (_held, ks, at) = self.members_held().await;
        let topology = self.topology;
        let in_scope = move |conv: &str| scope.is_none_or(|p| topology.partition_of(conv) == p);
        let mut groups = members::groups_of(&*ks, &q.user_id, self.large_above, &in_scope)
            .map_err(store_error)?;
        for g in &mut groups {
            g.position = at;
        }
        Ok(R::GroupsOf(v1::GroupsOfResult { groups }))
    }

    /// The profiles of users whose logs are in this partition.
    async fn profiles(&self, q: v1::ProfilesQuery, pos: Position) -> Result<R, v1::QueryError> {
        if q.user_ids.len() > people::PROFILES_PER_QUERY_MAX {
            return Err(bad(format!(
                "at most {} users per query",
                people::PROFILES_PER_QUERY_MAX
            )));
        }
        for u in &q.user_ids {
            check_ids(&[(IdKind::User, u)])?;
        }
        self.wait_for(&[members::NAME], pos).await?;
        let mut found =
            people::profiles(&*self.ks(members::NAME), &q.user_ids).map_err(store_error)?;
        if !q.with_notify {
            found.notify.clear();
        }
        crate::opening::open_profiles(self.content.as_deref(), &mut found)
            .await
            .map_err(keys_error)?;
        Ok(R::Profiles(found))
    }

    /// A user's contacts, requests and blocks in the partition asked.
    async fn contacts(
        &self,
        q: v1::ContactsQuery,
        pos: Position,
        scope: Option<u32>,
    ) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::User, &q.user_id)])?;
        self.wait_for(&[members::NAME], pos).await?;
        let found = people::contacts_of(&*self.ks(members::NAME), &q.user_id, scope)
            .map_err(store_error)?;
        Ok(R::Contacts(found))
    }

    /// The people rows a writer checks a bulk add against (`ReachQuery`).
    async fn reach(
        &self,
        q: v1::ReachQuery,
        pos: Position,
        scope: Option<u32>,
    ) -> Result<R, v1::QueryError> {
        if q.user_ids.len() > MEMBERS_PER_COMMAND_MAX {
            return Err(bad(format!(
                "at most {MEMBERS_PER_COMMAND_MAX} users per query"
            )));
        }
        check_ids(&[(IdKind::User, &q.actor)])?;
        for u in &q.user_ids {
            check_ids(&[(IdKind::User, u)])?;
        }
        self.wait_for(&[members::NAME], pos).await?;
        let topology = self.topology;
        let in_scope = move |log: &str| scope.is_none_or(|p| topology.partition_of(log) == p);
        let logs = people::reach_rows(&*self.ks(members::NAME), &q.actor, &q.user_ids, &in_scope)
            .map_err(store_error)?;
        Ok(R::Reach(v1::ReachResult { logs }))
    }

    /// Which of the users asked are members of a large group, and its chain.
    async fn group_state(
        &self,
        q: v1::GroupStateQuery,
        pos: Position,
    ) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::Conversation, &q.conversation_id)])?;
        if q.user_ids.len() > GROUP_STATE_USERS_MAX {
            return Err(bad(format!("more than {GROUP_STATE_USERS_MAX} users")));
        }
        for u in &q.user_ids {
            check_ids(&[(IdKind::User, u)])?;
        }
        self.wait_for(&[members::NAME], pos).await?;
        let (_held, ks, at) = self.members_held().await;
        match members::group_state(&*ks, &q.conversation_id, &q.user_ids, self.large_above)
            .map_err(store_error)?
        {
            Some(g) => Ok(R::GroupState(v1::GroupState { position: at, ..g })),
            None => Err(error(v1::QueryErrorCode::NotFound, "no such conversation")),
        }
    }

    /// The `members` keyspace and the IM_CONV position it stands at, held
    /// under its batch lock: membership rows and `members_seq` of one
    /// commit (a mix could name a removed user a member: I33).
    async fn members_held(&self) -> (tokio::sync::MutexGuard<'_, ()>, Arc<dyn Keyspace>, u64) {
        let state = self
            .projection(members::NAME)
            .expect("every projection runs");
        let held = state.batch_lock.lock().await;
        (held, state.ks(), state.applied.borrow().conv)
    }

    /// A conversation's whole rules state, for a cold writer (never a
    /// client: only the gateway's writer asks). Read under the `members`
    /// batch lock, so every row is of the one version it names.
    async fn rules_state(&self, q: v1::RulesStateQuery) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::Conversation, &q.conversation_id)])?;
        let state = self
            .projection(members::NAME)
            .ok_or_else(|| bad("no members projection"))?;
        let _held = state.batch_lock.lock().await;
        let ks = state.ks();
        let read = members::rules_state(&Tx::new(&*ks), &q.conversation_id).map_err(store_error)?;
        Ok(R::RulesState(match read {
            Some(rules) => im_streams::snapshot::to_wire(&rules),
            None => v1::RulesStateResult::default(),
        }))
    }

    async fn role(&self, q: v1::RoleQuery, pos: Position) -> Result<R, v1::QueryError> {
        check_ids(&[
            (IdKind::Conversation, &q.conversation_id),
            (IdKind::User, &q.user_id),
        ])?;
        self.wait_for(&["members"], pos).await?;
        let rec = members::role_of(&*self.ks("members"), &q.conversation_id, &q.user_id)
            .map_err(store_error)?;
        Ok(R::Role(match rec {
            Some(m) => v1::RoleResult {
                member: true,
                role: m.role,
                muted_until_ms: m.muted_until_ms,
            },
            None => v1::RoleResult::default(),
        }))
    }

    async fn unread(&self, q: v1::UnreadQuery, pos: Position) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::User, &q.user_id)])?;
        let conv = (!q.conversation_id.is_empty()).then_some(q.conversation_id.as_str());
        if let Some(c) = conv {
            check_ids(&[(IdKind::Conversation, c)])?;
        }
        self.wait_for(&["unread"], pos).await?;
        // Rows exist only for members: nothing else is revealed.
        Ok(R::Unread(
            unread::for_user(&*self.ks("unread"), &q.user_id, conv).map_err(store_error)?,
        ))
    }

    /// A page of the user's conversations by activity, each with its unread
    /// count; `scope` keeps it to the partition asked.
    async fn conv_list(
        &self,
        q: v1::ConvListQuery,
        pos: Position,
        scope: Option<u32>,
    ) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::User, &q.user_id)])?;
        let before = if q.before_conversation_id.is_empty() {
            None
        } else {
            check_ids(&[(IdKind::Conversation, &q.before_conversation_id)])?;
            Some((q.before_activity_ms, q.before_conversation_id.as_str()))
        };
        self.wait_for(&["convlist", "unread"], pos).await?;
        let topology = self.topology;
        let in_scope = move |conv: &str| scope.is_none_or(|p| topology.partition_of(conv) == p);
        let (entries, has_more) = convlist::page(
            &*self.ks("convlist"),
            &q.user_id,
            q.limit,
            before,
            &in_scope,
        )
        .map_err(store_error)?;
        let unread_ks = self.ks("unread");
        let mut items = Vec::with_capacity(entries.len());
        for mut entry in entries {
            crate::opening::open_preview(self.content.as_deref(), &mut entry)
                .await
                .map_err(keys_error)?;
            let counts = unread::for_user(&*unread_ks, &q.user_id, Some(&entry.conversation_id))
                .map_err(store_error)?;
            items.push(v1::ConvListItem {
                entry: Some(entry),
                unread: counts.total,
                unread_capped: counts.total_capped,
            });
        }
        Ok(R::ConvList(v1::ConvListPage { items, has_more }))
    }

    async fn receipts(&self, q: v1::ReceiptsQuery, pos: Position) -> Result<R, v1::QueryError> {
        check_ids(&[(IdKind::Conversation, &q.conversation_id)])?;
        check_optional_user(&q.user_id)?;
        self.wait_for(&["receipts"], pos).await?;
        self.require_member("receipts", &q.conversation_id, &q.user_id)?;
        Ok(R::Receipts(
            receipts::for_seq(&*self.ks("receipts"), &q.conversation_id, q.seq)
                .map_err(store_error)?,
        ))
    }

    async fn dedupe(&self, q: v1::DedupeQuery, pos: Position) -> Result<R, v1::QueryError> {
        check_ids(&[
            (IdKind::User, &q.sender),
            (IdKind::ClientMsg, &q.client_msg_id),
            (IdKind::Conversation, &q.conversation_id),
        ])?;
        self.wait_for(&["dedupe"], pos).await?;
        let ks = self.ks("dedupe");
        let rec = dedupe::lookup(&*ks, &q.sender, &q.client_msg_id, &q.conversation_id)
            .map_err(store_error)?;
        Ok(R::Dedupe(v1::DedupeResult {
            found: rec.is_some(),
            record: rec,
        }))
    }

    /// Every projection's state with every digest (reads every entry).
    pub fn status_with_digests(&self) -> Result<v1::StatusResult, StoreError> {
        self.status(Some(self.projections.clone()))
    }

    /// Every projection's state; digests (a scan of each keyspace) only
    /// for `digests`, so a plain status answers in constant time.
    pub fn status(
        &self,
        digests: Option<Vec<Arc<ProjectionState>>>,
    ) -> Result<v1::StatusResult, StoreError> {
        let wanted = |p: &Arc<ProjectionState>| {
            digests
                .as_ref()
                .is_some_and(|d| d.iter().any(|x| Arc::ptr_eq(x, p)))
        };
        let mut projections = Vec::new();
        for p in &self.projections {
            let ks = p.ks();
            let (digest, problem) = if wanted(p) {
                let problem = self.index_problem(p, ks.as_ref())?;
                (Some(digest_of(ks.as_ref())?), problem)
            } else {
                (None, String::new())
            };
            projections.push(v1::ProjectionStatus {
                name: p.projection.name().to_string(),
                generation: p.generation(),
                conv_checkpoint: checkpoint(ks.as_ref(), Source::Conv)?,
                rcpt_checkpoint: checkpoint(ks.as_ref(), Source::Rcpt)?,
                digest: digest.map(|d| d.hex()).unwrap_or_default(),
                keys: digest.map_or(0, |d| d.keys),
                applied: p.events_applied.load(std::sync::atomic::Ordering::Relaxed),
                dead_letters: p.dead_letters.load(std::sync::atomic::Ordering::Relaxed),
                problem,
            });
        }
        Ok(v1::StatusResult {
            instance: self.instance.clone(),
            partitions: self.partitions.clone(),
            projections,
        })
    }
}

/// Subscribes to the query subjects; `serve` answers on them. Separate so a
/// started projector answers queries as soon as `start` returns.
pub async fn subscribe(
    client: &async_nats::Client,
    ctx: &QueryContext,
) -> Result<Vec<async_nats::Subscriber>, async_nats::Error> {
    let mut subs = Vec::new();
    let partitions = match ctx.serves {
        crate::Serves::Clients => ctx.partitions.as_slice(),
        crate::Serves::OwnerOnly => &[],
    };
    for p in partitions {
        subs.push(
            client
                .queue_subscribe(partition_subject(*p), QUEUE_GROUP.into())
                .await?,
        );
    }
    subs.push(client.subscribe(instance_subject(&ctx.instance)).await?);
    client.flush().await?;
    Ok(subs)
}

/// The permits of answers in flight: a stop takes them all to know that
/// no answer still holds the store.
pub fn answers_in_flight() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(QUERY_INFLIGHT_MAX))
}

/// All of `answers_in_flight`'s permits (what a stop waits to take).
pub const ANSWERS_MAX: u32 = QUERY_INFLIGHT_MAX as u32;

/// Serves queries until the connection closes; each answer holds one of
/// `inflight`'s permits.
pub async fn serve(
    client: async_nats::Client,
    ctx: Arc<QueryContext>,
    subs: Vec<async_nats::Subscriber>,
    inflight: Arc<tokio::sync::Semaphore>,
) {
    let mut requests = futures::stream::select_all(subs);
    while let Some(msg) = requests.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let scope = im_streams::subjects::partition_of_query_subject(msg.subject.as_str());
        let client = client.clone();
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            let busy = response(R::Error(error(
                v1::QueryErrorCode::Internal,
                "busy: too many queries in flight",
            )));
            let _ = client.publish(reply, im_schema::encode(&busy).into()).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let response = match im_schema::decode::<v1::QueryRequest>(&msg.payload) {
                Ok(req) => ctx.answer(req, scope).await,
                Err(e) => response(R::Error(bad(e.to_string()))),
            };
            let _ = client
                .publish(reply, im_schema::encode(&response).into())
                .await;
        });
    }
}
