//! The auditor's check of IM_CONV, pure: events go in in stream order, and
//! each must
//! - decode, and name the conversation of its subject;
//! - be part of its conversation as the writers and the projectors judge
//!   it, by the same function (`im_streams::validity`): signed by a
//!   registered key from the first registration on, the next `conv_seq`,
//!   `prev_hash` = sha256 of the previous event's stored bytes (the chain:
//!   the stored bytes include their own `prev_hash`, so each link commits
//!   to the whole history before it), and exactly what the rules (`decide`)
//!   produce for the command the event records, against the state folded
//!   from the events before it: a non-member's message, a forged role
//!   change or an edited body all fail here;
//! - start a command whose (actor, client_msg_id) the conversation has not
//!   seen before (or continue the one just before it: the `MembersAdded`
//!   parts of a large creation or bulk add), and a direct conversation's
//!   creation be followed by the message that made it (a people log's
//!   creation by its command's event, at once or later) (whole-log checks
//!   only an auditor can afford).
//!
//! Every violation is named. An event that is not part of its
//! conversation is stepped over, as writers and projectors step over it,
//! so what follows is judged against the same state they hold; one that
//! only fails a whole-log check is still part of it.

use std::collections::{BTreeMap, HashSet};

use im_schema::v1::{self, conv_event::Kind};
use im_streams::chain::LinkError;
use im_streams::codec::{payload_hash, HDR_CONV_SEQ};
use im_streams::conversation::{apply, ConvState};
use im_streams::validity::{self, Invalid};
use im_streams::verdict::EventError;
use sha2::{Digest as _, Sha256};

use crate::read::Raw;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    Undecodable(String),
    SubjectMismatch,
    Gap { expected: u64 },
    BadChain { expected: String, found: String },
    NotAllowed { code: &'static str, reason: String },
    Signature(im_streams::signing::SignatureError),
    NotWhatTheRulesProduce { detail: String },
    DuplicateClientMsgId { client_msg_id: String },
    IncompleteCommand,
}

impl std::fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ViolationKind::Undecodable(e) => write!(f, "undecodable: {e}"),
            ViolationKind::SubjectMismatch => {
                write!(f, "names another conversation than its subject")
            }
            ViolationKind::Gap { expected } => write!(f, "conv_seq gap: expected {expected}"),
            ViolationKind::BadChain { expected, found } => write!(
                f,
                "broken hash chain: prev_hash {found}, the previous event hashes to {expected}"
            ),
            ViolationKind::Signature(e) => write!(f, "signature: {e}"),
            ViolationKind::NotAllowed { code, reason } => {
                write!(f, "not allowed by the rules: {code} ({reason})")
            }
            ViolationKind::NotWhatTheRulesProduce { detail } => {
                write!(f, "differs from what the rules produce: {detail}")
            }
            ViolationKind::DuplicateClientMsgId { client_msg_id } => {
                write!(
                    f,
                    "client_msg_id {client_msg_id:?} used by an earlier command"
                )
            }
            ViolationKind::IncompleteCommand => {
                write!(f, "the command's remaining events are missing")
            }
        }
    }
}

/// Where and what: enough to find the event with `export --from-seq`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event at IM_CONV seq {stream_seq} (subject {subject}, conversation {conversation_id}, conv_seq {conv_seq}): {kind}")]
pub struct Violation {
    pub stream_seq: u64,
    pub subject: String,
    pub conversation_id: String,
    pub conv_seq: u64,
    pub kind: ViolationKind,
}

#[derive(Default)]
struct ConvAudit {
    state: Option<ConvState>,
    /// Every command so far, by the fingerprint of its (actor,
    /// client_msg_id): 16 bytes each whatever the ids' lengths.
    commands: HashSet<u128>,
    /// A direct conversation's creation: the send that made it must be its
    /// next event.
    direct_created: Option<v1::ConvEvent>,
    /// (actor, client_msg_id) of a people log's creation whose command's
    /// own event has not come yet: it may come later (a writer killed
    /// between the two retries after another's command), once.
    people_opened: Option<(String, String)>,
    /// (actor, client_msg_id) of the last event: a command's `MembersAdded`
    /// events (a creation or bulk add larger than one event holds) follow
    /// its first event under the same id.
    last: Option<(String, String)>,
    events: u64,
}

/// A conversation's result: its event count and chain head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvDigest {
    pub events: u64,
    /// sha256 of the last event's stored bytes, hex.
    pub head: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub events: u64,
    pub conversations: BTreeMap<String, ConvDigest>,
    /// Over every event in order: its stream seq, subject and stored bytes.
    pub range_digest: String,
}

impl Report {
    /// A report over passes: the first pass's count and range digest (it
    /// counts every event), every pass's conversations.
    pub fn merged(first: Option<Report>, next: Report) -> Report {
        match first {
            None => next,
            Some(mut first) => {
                first.conversations.extend(next.conversations);
                first
            }
        }
    }
}

/// The digest of a message range, shared by `verify` and `archive`.
#[derive(Clone, Default)]
pub struct RangeDigest(Sha256);

impl RangeDigest {
    pub fn add(&mut self, seq: u64, subject: &str, payload: &[u8]) {
        self.add_hashed(seq, subject, &payload_hash(payload));
    }

    /// `add`, the payload's hash computed already.
    pub fn add_hashed(&mut self, seq: u64, subject: &str, hash: &[u8; 32]) {
        self.0.update(seq.to_be_bytes());
        self.0.update((subject.len() as u32).to_be_bytes());
        self.0.update(subject.as_bytes());
        self.0.update(hash);
    }

    pub fn hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[derive(Default)]
pub struct Auditor {
    convs: BTreeMap<String, ConvAudit>,
    range: RangeDigest,
    events: u64,
    /// The writers' registered keys: from the first registration on,
    /// every event must carry a valid signature by one of them.
    keys: im_streams::signing::WriterKeys,
}

/// The `Im-Sig` header of a stored event.
pub fn signature_of(raw: &Raw) -> Option<&str> {
    raw.headers
        .iter()
        .find(|(k, _)| k == im_streams::signing::HDR_SIGNATURE)
        .map(|(_, v)| v.as_str())
}

impl Auditor {
    /// An auditor that checks signatures against `keys`.
    pub fn with_keys(keys: im_streams::signing::WriterKeys) -> Self {
        Auditor {
            keys,
            ..Default::default()
        }
    }
}

/// The event of an IM_CONV message, whose header and subject agree with
/// its payload.
fn decode_event(raw: &Raw) -> Result<v1::ConvEvent, Violation> {
    let conv_of_subject =
        im_streams::subjects::conv_id_of_subject(&raw.subject).unwrap_or_default();
    let violation = |conv: &str, conv_seq: u64, kind| Violation {
        stream_seq: raw.seq,
        subject: raw.subject.clone(),
        conversation_id: conv.to_string(),
        conv_seq,
        kind,
    };
    let ev: v1::ConvEvent = im_schema::decode(&raw.payload).map_err(|e| {
        violation(
            conv_of_subject,
            0,
            ViolationKind::Undecodable(e.to_string()),
        )
    })?;
    if raw.header(HDR_CONV_SEQ) != Some(ev.conv_seq.to_string().as_str()) {
        let detail = format!(
            "header {HDR_CONV_SEQ} {:?} disagrees with the payload",
            raw.header(HDR_CONV_SEQ)
        );
        return Err(violation(
            &ev.conversation_id,
            ev.conv_seq,
            ViolationKind::Undecodable(detail),
        ));
    }
    if ev.conversation_id != conv_of_subject {
        return Err(violation(
            &ev.conversation_id,
            ev.conv_seq,
            ViolationKind::SubjectMismatch,
        ));
    }
    Ok(ev)
}

/// What `validity` says of an event, as the auditor names it.
fn kind_of(state: &ConvState, ev: &v1::ConvEvent, invalid: Invalid) -> ViolationKind {
    match invalid {
        Invalid::Signature(e) => ViolationKind::Signature(e),
        Invalid::Rules(EventError::Link(LinkError::Position { .. })) => ViolationKind::Gap {
            expected: state.conv_seq + 1,
        },
        Invalid::Rules(EventError::Link(LinkError::Hash { .. })) => ViolationKind::BadChain {
            expected: hex::encode(state.last_hash),
            found: hex::encode(&ev.prev_hash),
        },
        Invalid::Rules(EventError::NotAllowed(r)) => ViolationKind::NotAllowed {
            code: r.code(),
            reason: r.to_string(),
        },
        Invalid::Rules(e @ (EventError::Link(LinkError::Creation) | EventError::NoCommand)) => {
            ViolationKind::NotWhatTheRulesProduce {
                detail: e.to_string(),
            }
        }
        Invalid::Rules(EventError::NotProduced { detail }) => {
            ViolationKind::NotWhatTheRulesProduce { detail }
        }
    }
}

impl ConvAudit {
    /// The whole-log checks of an event that is part of the conversation:
    /// its command is new, and a direct conversation's creation is followed
    /// by the message that made it (one command, two events); a people
    /// log's creation by its command's event, at once or later.
    fn check_command(&mut self, ev: &v1::ConvEvent) -> Result<(), ViolationKind> {
        let key = (ev.actor.clone(), ev.client_msg_id.clone());
        let continues = matches!(&ev.kind, Some(Kind::MembersAdded(_)))
            && self.last.as_ref() == Some(&key)
            && self.direct_created.is_none();
        self.last = Some(key.clone());
        if continues {
            return Ok(());
        }
        // A people log's first command: its event follows the creation,
        // at once or (a writer killed between the two, retried after
        // another's command) later; a creation alone is an empty log.
        let created = matches!(&ev.kind, Some(Kind::Created(_)));
        if !created && self.people_opened.as_ref() == Some(&key) {
            self.people_opened = None;
            return Ok(());
        }
        if let Some(created) = self.direct_created.take() {
            let completes = matches!(&ev.kind, Some(Kind::MessageSent(_)))
                && ev.actor == created.actor
                && ev.client_msg_id == created.client_msg_id;
            if completes {
                return Ok(());
            }
            self.note_command(ev)?;
            return Err(ViolationKind::IncompleteCommand);
        }
        match &ev.kind {
            Some(Kind::Created(c)) if c.kind == v1::ConversationKind::Direct as i32 => {
                self.direct_created = Some(ev.clone());
            }
            Some(Kind::Created(c)) if c.kind != v1::ConversationKind::Group as i32 => {
                self.people_opened = self.last.clone();
            }
            _ => {}
        }
        self.note_command(ev)
    }

    fn note_command(&mut self, ev: &v1::ConvEvent) -> Result<(), ViolationKind> {
        if self
            .commands
            .insert(command_fingerprint(&ev.actor, &ev.client_msg_id))
        {
            Ok(())
        } else {
            Err(ViolationKind::DuplicateClientMsgId {
                client_msg_id: ev.client_msg_id.clone(),
            })
        }
    }
}

/// The first 16 bytes of the sha256 of a command's (actor, client_msg_id):
/// what the auditor remembers of each command to find one used twice. A
/// cryptographic hash, so that a forger cannot make two commands look
/// alike (nor one look new).
pub fn command_fingerprint(actor: &str, client_msg_id: &str) -> u128 {
    let mut h = Sha256::new();
    h.update((actor.len() as u32).to_be_bytes());
    h.update(actor.as_bytes());
    h.update(client_msg_id.as_bytes());
    u128::from_be_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

/// What can be worked out of an event on any thread, before the checks
/// that need the events before it: its decoding, its signature's verdict
/// and its payload's hash.
pub struct Prepared {
    decoded: Result<v1::ConvEvent, Violation>,
    signed: Result<(), im_streams::signing::SignatureError>,
    hash: [u8; 32],
}

impl Prepared {
    /// The sha256 of the event's stored bytes.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }
}

/// Prepares a run of events: each decoded, its signature verified and its
/// payload hashed. `keys` must know every key the events name
/// (`WriterKeys::learn`). Signatures are verified one by one with
/// `check_at`, the writers' own check, not as an ed25519 batch: a batch
/// accepts encodings of R (non-canonical, or with a small-order part)
/// that the single check refuses, and the auditor must never accept an
/// event a writer would step over.
pub fn prepare(keys: &im_streams::signing::WriterKeys, raws: &[Raw]) -> Vec<Prepared> {
    raws.iter()
        .map(|raw| {
            let decoded = decode_event(raw);
            let signed = match decoded {
                Ok(_) => keys.check_at(raw.seq, signature_of(raw), &raw.payload),
                Err(_) => Ok(()),
            };
            Prepared {
                decoded,
                signed,
                hash: payload_hash(&raw.payload),
            }
        })
        .collect()
}

/// Which conversations one pass over the log audits, when the audit's
/// state is too large to hold at once (`verify --memory-mb`): those whose
/// subject hashes to `index` of `of`. Every event is checked in exactly
/// one pass; the first pass also counts every event into the range digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    pub index: u32,
    pub of: u32,
}

impl Pass {
    /// One pass over everything.
    pub const WHOLE: Pass = Pass { index: 0, of: 1 };

    /// Whether the pass audits the conversation of this IM_CONV subject.
    pub fn audits(&self, subject: &str) -> bool {
        // A subject that names none: its events can only be audited under
        // the empty id, so they go where that id's saved state goes.
        self.audits_conversation(im_streams::subjects::conv_id_of_subject(subject).unwrap_or(""))
    }

    /// Whether the pass audits this conversation (by its id): a stable
    /// hash, so a saved state splits as the log does.
    pub fn audits_conversation(&self, conv: &str) -> bool {
        if self.of <= 1 {
            return true;
        }
        let h = Sha256::digest(conv.as_bytes());
        u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % u64::from(self.of)
            == u64::from(self.index)
    }

    fn counts_every_event(&self) -> bool {
        self.index == 0
    }
}

/// What a pass does with one event, worked out off the ordered path.
// Unboxed: in a single pass every step is a `Check`, and a box would be
// one allocation an event.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// Audited in this pass.
    Check(Prepared),
    /// Another pass audits it; this one only counts it into the range.
    Count([u8; 32]),
    /// Another pass audits it and counts it.
    Skip,
}

impl Step {
    /// The event's payload hash, when the pass worked it out.
    pub fn hash(&self) -> Option<[u8; 32]> {
        match self {
            Step::Check(p) => Some(p.hash),
            Step::Count(h) => Some(*h),
            Step::Skip => None,
        }
    }
}

/// `prepare` for one pass: only its own events are decoded and verified.
pub fn prepare_pass(keys: &im_streams::signing::WriterKeys, raws: &[Raw], pass: Pass) -> Vec<Step> {
    raws.iter()
        .map(|raw| match pass.audits(&raw.subject) {
            true => Step::Check(prepare(keys, std::slice::from_ref(raw)).remove(0)),
            false if pass.counts_every_event() => Step::Count(payload_hash(&raw.payload)),
            false => Step::Skip,
        })
        .collect()
}

impl Auditor {
    /// Checks the next IM_CONV message (stream order). An event that is
    /// not part of its conversation is stepped over; the audit goes on
    /// either way.
    pub fn check(&mut self, raw: &Raw) -> Result<(), Violation> {
        let prepared = prepare(&self.keys, std::slice::from_ref(raw));
        self.check_prepared(raw, prepared.into_iter().next().expect("one"))
    }

    /// `check`, the event prepared already (`prepare`).
    pub fn check_prepared(&mut self, raw: &Raw, prepared: Prepared) -> Result<(), Violation> {
        self.events += 1;
        self.range.add_hashed(raw.seq, &raw.subject, &prepared.hash);
        let ev = prepared.decoded?;
        let v = |kind| Violation {
            stream_seq: raw.seq,
            subject: raw.subject.clone(),
            conversation_id: ev.conversation_id.clone(),
            conv_seq: ev.conv_seq,
            kind,
        };
        let audit = self.convs.entry(ev.conversation_id.clone()).or_default();
        let state = audit
            .state
            .get_or_insert_with(|| ConvState::empty(ev.conversation_id.clone()));
        if let Err(invalid) = validity::check_signed(state, prepared.signed, &ev) {
            return Err(v(kind_of(state, &ev, invalid)));
        }
        apply(state, &ev);
        state.record_position(raw.seq, prepared.hash);
        audit.events += 1;
        audit.check_command(&ev).map_err(v)
    }

    /// One pass's step for the next IM_CONV message (`prepare_pass`).
    pub fn take(&mut self, raw: &Raw, step: Step) -> Result<(), Violation> {
        match step {
            Step::Check(prepared) => self.check_prepared(raw, prepared),
            Step::Count(hash) => {
                self.events += 1;
                self.range.add_hashed(raw.seq, &raw.subject, &hash);
                Ok(())
            }
            Step::Skip => Ok(()),
        }
    }

    /// The report, once every event is in; a command cut short is a
    /// violation.
    pub fn finish(self) -> Result<Report, Violation> {
        let (report, mut unfinished) = self.finish_all();
        match unfinished.is_empty() {
            true => Ok(report),
            false => Err(unfinished.remove(0)),
        }
    }

    /// The report, and every command the log leaves unfinished (a direct
    /// conversation created without the message that created it), in
    /// conversation order: an auditor is told of each, not of the first.
    pub fn finish_all(&self) -> (Report, Vec<Violation>) {
        let mut conversations = BTreeMap::new();
        let mut unfinished = Vec::new();
        for (conv, audit) in &self.convs {
            let (version, head) = audit
                .state
                .as_ref()
                .map_or((0, [0; 32]), |s| (s.version, s.last_hash));
            if let Some(created) = &audit.direct_created {
                unfinished.push(Violation {
                    stream_seq: version,
                    subject: String::new(),
                    conversation_id: conv.clone(),
                    conv_seq: created.conv_seq,
                    kind: ViolationKind::IncompleteCommand,
                });
            }
            conversations.insert(
                conv.clone(),
                ConvDigest {
                    events: audit.events,
                    head: hex::encode(head),
                },
            );
        }
        let report = Report {
            events: self.events,
            conversations,
            range_digest: self.range.clone().hex(),
        };
        (report, unfinished)
    }
}

#[path = "audit_state.rs"]
pub mod state;

#[path = "audit_state_file.rs"]
pub mod state_file;

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
