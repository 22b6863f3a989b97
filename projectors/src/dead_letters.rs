//! Dead letters on demand (`imctl projections dead-letters`): listed per
//! projection, and replayed: each letter's conversation is repaired (its
//! events decoded and judged again by the running code, which may read
//! what an older build could not), and a letter the replay no longer
//! dead-letters is removed; a forgery stays.

use std::collections::BTreeSet;

use im_schema::v1;

use crate::query::QueryContext;
use crate::runner::{dead_letter_key, dead_letters, ProjectionState, Source};

/// What a control query may fail with, as the query's error.
type Failed = (v1::QueryErrorCode, String);

pub async fn answer(
    ctx: &QueryContext,
    q: &v1::DeadLettersQuery,
) -> Result<v1::DeadLettersResult, Failed> {
    let chosen = ctx
        .projections
        .iter()
        .filter(|p| q.projection.is_empty() || p.projection.name() == q.projection);
    let mut projections = Vec::new();
    for state in chosen {
        let replayed = match q.replay {
            true => replay(ctx, state).await?,
            false => 0,
        };
        let letters = dead_letters(state.ks().as_ref()).map_err(internal)?;
        let name = state.projection.name().to_string();
        projections.push(v1::ProjectionDeadLetters {
            name,
            letters,
            replayed,
        });
    }
    if projections.is_empty() {
        return Err((
            v1::QueryErrorCode::BadRequest,
            format!("no projection {:?}", q.projection),
        ));
    }
    Ok(v1::DeadLettersResult { projections })
}

fn internal(e: impl std::fmt::Display) -> Failed {
    (v1::QueryErrorCode::Internal, e.to_string())
}

/// Repairs the letters' conversations (their events judged again by the
/// running code, which may read what an older build could not), then
/// removes the letters the replay no longer dead-letters; how many.
async fn replay(ctx: &QueryContext, state: &ProjectionState) -> Result<u32, Failed> {
    let letters = dead_letters(state.ks().as_ref()).map_err(internal)?;
    let convs: BTreeSet<&str> = letters
        .iter()
        .filter_map(|l| im_streams::subjects::conv_id_of_subject(&l.subject))
        .filter(|c| im_streams::ids::validate_id(im_streams::ids::IdKind::Conversation, c).is_ok())
        .collect();
    let mut still_dead = BTreeSet::new();
    for conv in &convs {
        let (_, dead) = crate::repair::repair_judged(&ctx.client, ctx.topology, state, conv)
            .await
            .map_err(internal)?;
        still_dead.extend(dead);
    }
    let mut removed = 0;
    for letter in &letters {
        let source = Source::of_stream(&letter.stream);
        let repaired = im_streams::subjects::conv_id_of_subject(&letter.subject)
            .is_some_and(|c| convs.contains(c));
        // One whose conversation could not be replayed stays.
        if repaired && !still_dead.contains(&(source, letter.stream_seq)) {
            let key = dead_letter_key(source, letter.stream_seq);
            state.ks().commit(vec![(key, None)]).map_err(internal)?;
            removed += 1;
        }
    }
    Ok(removed)
}
