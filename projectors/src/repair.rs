//! Repair of one conversation: its subjects are replayed into a scratch
//! keyspace up to the live position, and the live store's entries of that
//! conversation are made equal to the scratch ones (rewritten, added, or
//! deleted when stray). Correct because every model key belongs to exactly
//! one conversation and depends on that conversation's events only (a pure
//! test in `projections::testing` holds the folds to this).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt;
use im_schema::v1;
use im_streams::signing::{KeyRing, HDR_SIGNATURE};
use im_streams::Topology;

use crate::fold::{fold_one, Delivered, Target, Verdicts};
use crate::judge::Judge;
use crate::keys::META;
use crate::members_cache::MembersCache;
use crate::projections::conv_of_key;
use crate::projections::FoldCtx;
use crate::runner::{from_genesis, js_err, Applied, ProjectionState, RunError, Source};
use crate::store::{Keyspace, MemKeyspace, StoreError, Write};

/// Events of one conversation a repair folds at most: it holds the
/// projection's batch lock (the live runner waits) and keeps them in
/// memory, so a conversation beyond this is rebuilt instead.
pub const REPAIR_EVENTS_MAX: u64 = 1_000_000;

/// How long one read may wait for an event the consumer said is pending.
const READ_STALL_MAX: Duration = Duration::from_secs(30);

/// Replays `conv` into one projection's live keyspace.
pub async fn repair(
    client: &async_nats::Client,
    topology: Topology,
    state: &ProjectionState,
    conv: &str,
) -> Result<v1::RepairedProjection, RunError> {
    Ok(repair_judged(client, topology, state, conv).await?.0)
}

/// `repair`, and the stream positions of the conversation's events the
/// replay dead-lettered (judged again by the running code).
pub async fn repair_judged(
    client: &async_nats::Client,
    topology: Topology,
    state: &ProjectionState,
    conv: &str,
) -> Result<(v1::RepairedProjection, Vec<(Source, u64)>), RunError> {
    let projection = state.projection.as_ref();
    let js = jetstream::new(client.clone());
    // The live runner waits while the conversation's entries are replaced,
    // so its position and the keyspace stand still meanwhile.
    let _held = state.batch_lock.lock().await;
    let at = *state.applied.borrow();
    let live = state.ks();
    let mut scratch = Scratch {
        ks: MemKeyspace::default(),
        genesis: from_genesis(live.as_ref())?,
        members: MembersCache::default(),
        judge: Judge::default(),
        keys: KeyRing::new(js.clone(), Duration::MAX),
        folded_at: Applied::default(),
        events: 0,
    };
    let mut sources = vec![(Source::Conv, at.conv)];
    if projection.reads_receipts() {
        sources.push((Source::Rcpt, at.rcpt));
    }
    for (source, upto) in sources {
        let subject = match source {
            Source::Conv => topology.conv_subject(conv),
            Source::Rcpt => topology.rcpt_subject(conv),
        }?;
        let read = (source, subject, upto);
        scratch.fold_subject(&js, projection, read, conv).await?;
    }
    let mut writes = conversation_diff(live.as_ref(), &scratch.ks, conv.as_bytes())?;
    if projection.name() == crate::projections::search::NAME {
        crate::projections::search::queue_changes(&mut writes, at.conv);
    }
    let written = writes.iter().filter(|(_, v)| v.is_some()).count() as u64;
    let deleted = writes.len() as u64 - written;
    if !writes.is_empty() {
        let ks: Arc<dyn Keyspace> = live;
        tokio::task::spawn_blocking(move || {
            ks.commit(writes)?;
            ks.flush()
        })
        .await
        .map_err(|e| RunError::Task(e.into()))??;
        state
            .rows_changed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let events = scratch.events;
    let dead = crate::runner::dead_letters(&scratch.ks)?
        .into_iter()
        .map(|l| (Source::of_stream(&l.stream), l.stream_seq))
        .collect();
    tracing::info!(
        projection = projection.name(),
        conv,
        events,
        written,
        deleted,
        "conversation repaired"
    );
    let tally = v1::RepairedProjection {
        name: projection.name().to_string(),
        events,
        written,
        deleted,
    };
    Ok((tally, dead))
}

/// One conversation folded from scratch, in memory, judged from its
/// first event on (signatures and rules, as the live pipeline judges).
struct Scratch {
    ks: MemKeyspace,
    genesis: bool,
    members: MembersCache,
    judge: Judge,
    keys: KeyRing,
    /// Where the fold stands (it reads one conversation's subjects).
    folded_at: Applied,
    events: u64,
}

impl Scratch {
    /// Folds `subject`'s events of `source` up to `upto` (what the live
    /// store has applied; the runner folds the rest when it resumes).
    async fn fold_subject(
        &mut self,
        js: &jetstream::Context,
        projection: &dyn crate::projections::Projection,
        (source, subject, upto): (Source, String, u64),
        conv: &str,
    ) -> Result<(), RunError> {
        let stream = js.get_stream(source.stream()).await.map_err(js_err)?;
        let mut consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: subject,
                ..Default::default()
            })
            .await
            .map_err(js_err)?;
        let mut pending = consumer.info().await.map_err(js_err)?.num_pending;
        let mut messages = consumer.messages().await.map_err(js_err)?;
        while pending > 0 {
            let msg = tokio::time::timeout(READ_STALL_MAX, messages.next())
                .await
                .map_err(|_| js_err("the stream read stalled"))?
                .ok_or_else(|| js_err("the stream read ended"))?
                .map_err(js_err)?;
            let info = msg.info().map_err(js_err)?;
            pending = info.pending;
            if info.stream_sequence > upto {
                break;
            }
            self.events += 1;
            if self.events > REPAIR_EVENTS_MAX {
                return Err(RunError::TooLargeToRepair {
                    conv: conv.to_string(),
                    max: REPAIR_EVENTS_MAX,
                });
            }
            if source == Source::Conv {
                let signature = msg.headers.as_ref().and_then(|h| h.get(HDR_SIGNATURE));
                let named = vec![(info.stream_sequence, signature.map(|v| v.as_str()))];
                let keys = self.keys.prepare(named).await.map_err(js_err)?;
                self.judge
                    .set_keys(Arc::new(keys.clone()), Default::default());
            }
            let mut target = Target::new(projection, &self.ks, self.folded_at)?;
            target.genesis = self.genesis;
            let mut ctx = FoldCtx {
                members: &mut self.members,
                effects: false,
                large_above: usize::MAX,
            };
            fold_one(
                std::slice::from_mut(&mut target),
                &Delivered::of(source, info.stream_sequence, &msg),
                &mut Verdicts::Judge(&mut self.judge),
                &mut ctx,
                &mut Vec::new(),
            )?;
            self.folded_at = target.at;
            let writes = target.tx.into_writes();
            self.ks.commit(writes)?;
        }
        Ok(())
    }
}

/// The writes that make `live`'s entries of `conv` equal `want`'s.
fn conversation_diff(
    live: &dyn Keyspace,
    want: &dyn Keyspace,
    conv: &[u8],
) -> Result<Vec<Write>, StoreError> {
    let ours = |k: &[u8]| k.first() != Some(&META) && conv_of_key(k) == Some(conv);
    let mut have = BTreeMap::new();
    // A whole scan: keys led by a user id (conversation lists, unread rows)
    // have no conversation prefix to seek to. Repairs are rare.
    live.visit(&mut |k, v| {
        if ours(k) {
            have.insert(k.to_vec(), v.to_vec());
        }
    })?;
    let mut writes = Vec::new();
    want.visit(&mut |k, v| {
        if ours(k) && have.remove(k).as_deref() != Some(v) {
            writes.push((k.to_vec(), Some(v.to_vec())));
        }
    })?;
    writes.extend(have.into_keys().map(|k| (k, None)));
    Ok(writes)
}
