//! Dead letters on demand (`imctl projections dead-letters`): listed per
//! projection, and replayed: each letter's conversation is repaired (its
//! events folded again by the running code, which may read what an older
//! build could not), and a letter whose event now decodes is removed.

use std::collections::BTreeSet;

use im_schema::v1;

use crate::fold::{Delivered, Item};
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

/// Repairs the letters' conversations, then removes the letters whose
/// events decode now; how many it removed.
async fn replay(ctx: &QueryContext, state: &ProjectionState) -> Result<u32, Failed> {
    let letters = dead_letters(state.ks().as_ref()).map_err(internal)?;
    let convs: BTreeSet<&str> = letters
        .iter()
        .filter_map(|l| im_streams::subjects::conv_id_of_subject(&l.subject))
        .filter(|c| im_streams::ids::validate_id(im_streams::ids::IdKind::Conversation, c).is_ok())
        .collect();
    for conv in convs {
        crate::repair::repair(&ctx.client, ctx.topology, state, conv)
            .await
            .map_err(internal)?;
    }
    let js = async_nats::jetstream::new(ctx.client.clone());
    let mut removed = 0;
    for letter in &letters {
        let source = match letter.stream.as_str() {
            s if s == Source::Rcpt.stream() => Source::Rcpt,
            _ => Source::Conv,
        };
        // One that cannot be read again stays, as one that fails still.
        if decodes_now(&js, source, letter).await.unwrap_or(false) {
            let key = dead_letter_key(source, letter.stream_seq);
            state.ks().commit(vec![(key, None)]).map_err(internal)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether the letter's event, read again from its stream, decodes now.
async fn decodes_now(
    js: &async_nats::jetstream::Context,
    source: Source,
    letter: &v1::DeadLetter,
) -> Result<bool, Failed> {
    let stream = js.get_stream(source.stream()).await.map_err(internal)?;
    let msg = stream
        .get_raw_message(letter.stream_seq)
        .await
        .map_err(internal)?;
    let delivered = Delivered {
        source,
        stream_seq: letter.stream_seq,
        subject: msg.subject.as_str(),
        headers: Some(&msg.headers),
        payload: &msg.payload,
    };
    Ok(Item::decode(&delivered).decoded.is_ok())
}
