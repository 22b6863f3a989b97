//! Folding a rebuild's rounds: decoded once, in parallel, then every
//! generation folds them on its own thread and commits with its position.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_nats::jetstream;

use crate::fold::{fold_item, Delivered, Item, Target, Verdicts};
use crate::judge;
use crate::members_cache::MembersCache;
use crate::projections::FoldCtx;
use crate::projections::Projection;
use crate::runner::{commit_at, Applied, ProjectionState, RunError, Source};
use crate::store::{Keyspace, StoreError};

use super::read::Reader;
use super::{Generation, Work};

/// `commit_at`, off the async threads.
pub(super) async fn commit_blocking(
    ks: Arc<dyn Keyspace>,
    writes: Vec<crate::store::Write>,
    at: Applied,
) -> Result<(), RunError> {
    tokio::task::spawn_blocking(move || commit_at(ks.as_ref(), writes, at))
        .await
        .map_err(|e| RunError::Task(e.into()))?
        .map_err(RunError::Store)
}

/// Events a rebuild folds per round: large, to amortize the commits and
/// the threads' start; bounded, since a round's decoded events are held in
/// memory (~1 KB each: ~16 MB).
pub const REBUILD_BATCH_MAX: usize = 16_384;

/// Folds every reader's events up to each generation's limit (its
/// projection's live position), a round at a time: each round's messages
/// are decoded once, in parallel, then every generation folds them on its
/// own thread (as many threads as cores) and commits with its position.
pub(super) async fn fold_to(
    gens: &mut [Generation],
    readers: &mut [Reader],
    limits: &[Applied],
    (work, verdicts): (&Work, &ProjectionState),
) -> Result<(), RunError> {
    for reader in readers.iter_mut() {
        let source = reader.source;
        let reads = |g: &Generation| source == Source::Conv || g.projection.reads_receipts();
        let upto = gens
            .iter()
            .zip(limits)
            .filter(|(g, _)| reads(g))
            .map(|(_, l)| source.of(*l))
            .max()
            .unwrap_or(0);
        loop {
            let at = gens
                .iter()
                .filter(|g| reads(g))
                .map(|g| source.of(g.at))
                .min()
                .unwrap_or(upto);
            let mut batch = Vec::new();
            let mut remaining = 0;
            while batch.len() < REBUILD_BATCH_MAX {
                let from = batch.last().map_or(at, |(seq, _)| *seq);
                let Some((seq, left, msg)) = reader.next_upto(from, upto).await? else {
                    break;
                };
                remaining = left;
                batch.push((seq, msg));
            }
            if batch.is_empty() {
                break;
            }
            let folded = fold_round(gens, source, batch, limits, verdicts.ks()).await?;
            for ((job, _), (g, n)) in work.iter().zip(gens.iter().zip(folded)) {
                job.folded.fetch_add(n, Relaxed);
                job.remaining[source as usize].store(remaining, Relaxed);
                job.conv_position.store(g.at.conv, Relaxed);
                job.rcpt_position.store(g.at.rcpt, Relaxed);
            }
            if work.iter().any(|(j, _)| j.cancel.load(Relaxed)) {
                return Ok(());
            }
        }
    }
    // Reached the limits (possibly with nothing in between matching).
    for (g, l) in gens.iter_mut().zip(limits) {
        g.at.conv = g.at.conv.max(l.conv);
        if g.projection.reads_receipts() {
            g.at.rcpt = g.at.rcpt.max(l.rcpt);
        }
    }
    Ok(())
}

/// One round, off the async threads: decodes in parallel, then folds each
/// generation (only the events at or below its limit) on its own thread
/// and commits it. Returns the events each folded.
pub(super) async fn fold_round(
    gens: &mut [Generation],
    source: Source,
    batch: Vec<(u64, jetstream::Message)>,
    limits: &[Applied],
    verdicts: Arc<dyn Keyspace>,
) -> Result<Vec<u64>, RunError> {
    let work: Vec<RoundWork> = gens
        .iter()
        .zip(limits)
        .map(|(g, l)| (g.projection.clone(), g.ks.clone(), g.at, source.of(*l)))
        .collect();
    let done = tokio::task::spawn_blocking(move || {
        fold_round_blocking(source, &batch, &work, verdicts.as_ref())
    })
    .await
    .map_err(|e| RunError::Task(e.into()))?
    .map_err(RunError::Store)?;
    let mut folded = Vec::with_capacity(gens.len());
    for (g, (at, n)) in gens.iter_mut().zip(done) {
        g.at = at;
        folded.push(n);
    }
    Ok(folded)
}

type RoundWork = (Arc<dyn Projection>, Arc<dyn Keyspace>, Applied, u64);

pub(super) fn fold_round_blocking(
    source: Source,
    batch: &[(u64, jetstream::Message)],
    work: &[RoundWork],
    verdicts: &dyn Keyspace,
) -> Result<Vec<(Applied, u64)>, StoreError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = batch.len().div_ceil(threads).max(1);
    let items: Vec<Item> = std::thread::scope(|scope| {
        let parts: Vec<_> = batch
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(seq, msg)| Item::decode(&Delivered::of(source, *seq, msg)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("decoding does not panic"))
            .collect()
    });
    let items = &items;
    let first = items.first().map_or(0, |i| i.stream_seq);
    let last = items.last().map_or(0, |i| i.stream_seq);
    let refused = match source {
        Source::Conv => judge::recorded_between(verdicts, first, last)?,
        Source::Rcpt => Default::default(),
    };
    let refused = &refused;
    let groups = work.len().min(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..groups)
            .map(|g| {
                scope.spawn(move || {
                    work.iter()
                        .skip(g)
                        .step_by(groups)
                        .map(|(p, ks, at, limit)| {
                            let into = (p.as_ref(), ks.as_ref(), refused);
                            fold_generation(into, *at, *limit, items)
                        })
                        .collect::<Result<Vec<_>, StoreError>>()
                })
            })
            .collect();
        let mut out = vec![(Applied::default(), 0); work.len()];
        for (g, h) in handles.into_iter().enumerate() {
            let results = h.join().expect("folding does not panic")?;
            for (k, r) in results.into_iter().enumerate() {
                out[g + k * groups] = r;
            }
        }
        Ok(out)
    })
}

/// Folds the items at or below `limit` into one generation and commits
/// them with its new position (no flush: see `commit_at`). Verdicts are
/// those the live `members` keyspace recorded: it has applied every event
/// a rebuild folds, and a verdict never changes.
pub(super) fn fold_generation(
    (projection, ks, refused): (&dyn Projection, &dyn Keyspace, &judge::Recorded),
    at: Applied,
    limit: u64,
    items: &[Item],
) -> Result<(Applied, u64), StoreError> {
    let mut target = Target::new(projection, ks, at)?;
    let mut members = MembersCache::default();
    let mut ctx = FoldCtx {
        members: &mut members,
        effects: false,
        large_above: usize::MAX,
    };
    let mut verdicts = Verdicts::Recorded(refused);
    for item in items.iter().take_while(|i| i.stream_seq <= limit) {
        fold_item(
            std::slice::from_mut(&mut target),
            item,
            &mut verdicts,
            &mut ctx,
            &mut Vec::new(),
        )?;
    }
    let (at, folded) = (target.at, target.folded);
    commit_at(ks, target.tx.into_writes(), at)?;
    Ok((at, folded))
}
