//! Folding delivered events into the projections that have not applied
//! them yet: each event is decoded once, judged once (signature and rules,
//! `judge.rs`) and checked against each chain once, then each projection
//! folds it into its own overlay (or records it as a dead letter).
//! Synchronous and IO-free apart from the keyspaces read: the live
//! pipeline runs it on its own thread, rebuilds and repairs on theirs.

use async_nats::HeaderMap;
use bytes::Bytes;
use im_schema::v1;
use im_streams::codec::{decode_conv_parts, StoredEvent};

use crate::chain;
use crate::judge::{self, Judge, Refusal, Rows};
use crate::projections::{members, Effect, FoldCtx, Input, Projection};
use crate::runner::{dead_letter_key, Applied, Source};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// One delivered message: where it sits in its stream, and its bytes.
pub struct Delivered<'m> {
    pub source: Source,
    pub stream_seq: u64,
    pub subject: &'m str,
    pub headers: Option<&'m HeaderMap>,
    pub payload: &'m Bytes,
}

impl<'m> Delivered<'m> {
    pub fn of(source: Source, stream_seq: u64, msg: &'m async_nats::jetstream::Message) -> Self {
        Delivered {
            source,
            stream_seq,
            subject: msg.subject.as_str(),
            headers: msg.headers.as_ref(),
            payload: &msg.payload,
        }
    }
}

/// One projection being folded into: its overlay and where it stands.
pub struct Target<'a> {
    pub projection: &'a dyn Projection,
    pub tx: Tx<'a>,
    pub at: Applied,
    /// Whether its conversations start at their creation (see `chain.rs`).
    pub genesis: bool,
    pub folded: u64,
    pub dead: u64,
}

impl<'a> Target<'a> {
    pub fn new(
        projection: &'a dyn Projection,
        ks: &'a dyn Keyspace,
        at: Applied,
    ) -> Result<Self, StoreError> {
        Ok(Target {
            projection,
            tx: Tx::new(ks),
            at,
            genesis: chain::chain_from(ks)?.unwrap_or(1) <= 1,
            folded: 0,
            dead: 0,
        })
    }

    /// Whether this projection still has to fold a message.
    pub fn needs(&self, source: Source, stream_seq: u64) -> bool {
        let reads = source == Source::Conv || self.projection.reads_receipts();
        reads && stream_seq > source.of(self.at)
    }
}

/// A decoded event.
pub enum Decoded {
    Conv(Box<StoredEvent>),
    Rcpt(v1::ReceiptEvent),
}

/// A message decoded once for any number of folds: its position, its
/// subject (for a dead letter), and its event or why it is poison.
pub struct Item {
    pub source: Source,
    pub stream_seq: u64,
    pub subject: String,
    pub decoded: Result<Decoded, Refusal>,
}

impl Item {
    pub fn decode(msg: &Delivered) -> Item {
        Item {
            source: msg.source,
            stream_seq: msg.stream_seq,
            subject: msg.subject.to_string(),
            decoded: decode(msg),
        }
    }
}

fn decode(msg: &Delivered) -> Result<Decoded, Refusal> {
    let too_new = |v: u32| {
        (v > im_schema::SCHEMA_VERSION).then(|| {
            Refusal::new(
                "schema_too_new",
                format!(
                    "schema version {v} is newer than {}",
                    im_schema::SCHEMA_VERSION
                ),
            )
        })
    };
    let mismatch = || {
        Refusal::new(
            "subject_mismatch",
            "conversation id differs from the subject's",
        )
    };
    let subject_conv = im_streams::subjects::conv_id_of_subject(msg.subject);
    match msg.source {
        Source::Conv => {
            let stored = decode_conv_parts(msg.stream_seq, msg.subject, msg.headers, msg.payload)
                .map_err(|e| Refusal::of_error("undecodable", &e))?;
            if let Some(refusal) = too_new(stored.event.schema_version) {
                return Err(refusal);
            }
            if subject_conv != Some(stored.event.conversation_id.as_str()) {
                return Err(mismatch());
            }
            let trace = msg
                .headers
                .and_then(|h| h.get(im_streams::codec::HDR_TRACE_ID));
            if let Some(trace_id) = trace {
                let seq = msg.stream_seq;
                tracing::debug!(
                    trace_id = trace_id.as_str(),
                    stream_seq = seq,
                    "event folded"
                );
            }
            Ok(Decoded::Conv(Box::new(stored)))
        }
        Source::Rcpt => {
            let ev: v1::ReceiptEvent =
                im_schema::decode(msg.payload).map_err(|e| Refusal::of_error("undecodable", &e))?;
            if let Some(refusal) = too_new(ev.schema_version) {
                return Err(refusal);
            }
            if subject_conv != Some(ev.conversation_id.as_str()) {
                return Err(mismatch());
            }
            Ok(Decoded::Rcpt(ev))
        }
    }
}

/// Where each conversation event's verdict (signature and rules) comes
/// from.
pub enum Verdicts<'a> {
    /// Reached here, once per event (the live pipeline, a repair); from
    /// the `members` target's rows when it is among the targets.
    Judge(&'a mut Judge),
    /// Recorded by the live `members` keyspace, which has applied every
    /// event folded here (a rebuild: verdicts never change), read for the
    /// range at hand (`judge::recorded_between`).
    Recorded(&'a judge::Recorded),
}

impl Verdicts<'_> {
    /// The verdict on `stored`, which some of `targets` need.
    fn on(&mut self, targets: &[Target], stored: &StoredEvent) -> Result<Verdict, StoreError> {
        let seq = stored.stream_seq;
        let members = targets
            .iter()
            .find(|t| t.projection.name() == members::NAME);
        match (self, members) {
            (Verdicts::Judge(judge), Some(m)) if m.needs(Source::Conv, seq) => {
                judge.judge(Rows::Members(&m.tx), m.genesis, stored)
            }
            (Verdicts::Judge(_), Some(m)) => judge::recorded(&m.tx, seq),
            (Verdicts::Judge(judge), None) => {
                let genesis = targets.iter().any(|t| t.genesis);
                judge.judge(Rows::Genesis, genesis, stored)
            }
            (Verdicts::Recorded(refused), _) => Ok(match refused.get(&seq) {
                Some(refusal) => Err(refusal.clone()),
                None => Ok(()),
            }),
        }
    }

    /// A conversation the judge moved on that `members` did not apply.
    fn forget(&mut self, conv: &str) {
        if let Verdicts::Judge(judge) = self {
            judge.forget(conv);
        }
    }
}

type Verdict = Result<(), Refusal>;

/// Whether a conversation event extends the chain as `t` holds it.
fn chain_verdict(t: &Target, stored: &StoredEvent) -> Result<Verdict, StoreError> {
    let head = chain::head(&t.tx, &stored.event.conversation_id)?;
    Ok(chain::check(head, stored, t.genesis).map_err(|e| Refusal::new("chain", e)))
}

/// Folds one message into every target that needs it. Returns whether it
/// was dead-lettered.
pub fn fold_one(
    targets: &mut [Target],
    msg: &Delivered,
    verdicts: &mut Verdicts,
    ctx: &mut FoldCtx,
    effects: &mut Vec<Effect>,
) -> Result<bool, StoreError> {
    if !targets.iter().any(|t| t.needs(msg.source, msg.stream_seq)) {
        return Ok(false);
    }
    fold_item(targets, &Item::decode(msg), verdicts, ctx, effects)
}

/// Folds a decoded message into every target that needs it, or
/// dead-letters it there. Returns whether it was dead-lettered. A storage
/// error is never a verdict: it ends the fold.
pub fn fold_item(
    targets: &mut [Target],
    item: &Item,
    verdicts: &mut Verdicts,
    ctx: &mut FoldCtx,
    effects: &mut Vec<Effect>,
) -> Result<bool, StoreError> {
    let needing: Vec<usize> = (0..targets.len())
        .filter(|i| targets[*i].needs(item.source, item.stream_seq))
        .collect();
    let Some(&first) = needing.first() else {
        return Ok(false);
    };
    // Signature and rules: once per event, for every target.
    let judged = match &item.decoded {
        Ok(Decoded::Conv(stored)) => Some(verdicts.on(targets, stored)?),
        _ => None,
    };
    // Every target that needs the event has applied exactly the events
    // before it, so one of them answers for all that start their chains
    // the same way.
    let mut chained: Vec<(bool, Verdict)> = Vec::new();
    let mut dead = false;
    for i in needing {
        let t = &mut targets[i];
        let outcome = match &item.decoded {
            Ok(Decoded::Conv(stored)) => {
                let mut checked = judged.clone().expect("judged above");
                if checked.is_ok() {
                    checked = match chained.iter().find(|(g, _)| *g == t.genesis) {
                        Some((_, v)) => v.clone(),
                        None => {
                            let v = chain_verdict(t, stored)?;
                            chained.push((t.genesis, v.clone()));
                            v
                        }
                    };
                }
                // The judge moved its state on; `members` did not apply it.
                let judged_ok = judged.as_ref().is_some_and(|j| j.is_ok());
                if checked.is_err() && judged_ok && t.projection.name() == members::NAME {
                    verdicts.forget(&stored.event.conversation_id);
                }
                match checked {
                    Ok(()) => {
                        let out = t.projection.apply(&mut t.tx, &Input::Conv(stored), ctx)?;
                        chain::advance(&mut t.tx, stored);
                        Ok(out)
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            Ok(Decoded::Rcpt(event)) => {
                let input = Input::Rcpt {
                    stream_seq: item.stream_seq,
                    event,
                };
                Ok(t.projection.apply(&mut t.tx, &input, ctx)?)
            }
            Err(refusal) => Err(refusal.clone()),
        };
        match outcome {
            Ok(folded) => effects.extend(folded),
            Err(refusal) => {
                if i == first {
                    tracing::error!(
                        stream = item.source.stream(),
                        stream_seq = item.stream_seq,
                        code = refusal.code,
                        reason = refusal.reason,
                        "event dead-lettered"
                    );
                }
                t.tx.put_msg(
                    dead_letter_key(item.source, item.stream_seq),
                    &v1::DeadLetter {
                        stream: item.source.stream().to_string(),
                        stream_seq: item.stream_seq,
                        subject: item.subject.clone(),
                        reason: refusal.reason,
                        code: refusal.code,
                    },
                );
                t.dead += 1;
                dead = true;
            }
        }
        match item.source {
            Source::Conv => t.at.conv = item.stream_seq,
            Source::Rcpt => t.at.rcpt = item.stream_seq,
        }
        t.folded += 1;
    }
    Ok(dead)
}
