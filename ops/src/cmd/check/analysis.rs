//! What a check finds, from the log itself (read independently of the read
//! models) and the recorded outcomes: acknowledged sends lost, the same
//! (sender, id) stored twice, conv_seq gaps and chain breaks, messages from
//! non-members, rejections decided on a stale state, history and members
//! that differ from the log; then the project's own verifiers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::chain::check_link;
use im_streams::codec::StoredEvent;
use im_streams::conversation::{apply, check_may_send, event_type, ConvState};

use super::workload::{Churn, Outcome, Records};

/// Findings by kind; each entry names what was found.
#[derive(Default, Debug, serde::Serialize)]
pub struct Findings {
    pub acked_but_lost: Vec<String>,
    pub duplicates: Vec<String>,
    pub chain_breaks: Vec<String>,
    pub messages_from_non_members: Vec<String>,
    pub stale_rejections: Vec<String>,
    pub history_vs_log: Vec<String>,
    pub members_vs_log: Vec<String>,
    pub receipts_vs_log: Vec<String>,
    pub verifiers: Vec<String>,
    /// Presence pushes that did not arrive (before or after the faults).
    pub presence: Vec<String>,
    /// Members connected through the run not holding every event of their
    /// groups exactly once, in order (`deliveries.rs`).
    pub readers: Vec<String>,
    /// Event deliveries published more than once (I32).
    pub fanned_out_twice: Vec<String>,
    /// Faults the system did not take as it should (a pool member that did
    /// not exit cleanly on SIGTERM).
    pub fault_problems: Vec<String>,
}

impl Findings {
    pub fn total(&self) -> usize {
        self.acked_but_lost.len()
            + self.duplicates.len()
            + self.chain_breaks.len()
            + self.messages_from_non_members.len()
            + self.stale_rejections.len()
            + self.history_vs_log.len()
            + self.members_vs_log.len()
            + self.receipts_vs_log.len()
            + self.verifiers.len()
            + self.presence.len()
            + self.readers.len()
            + self.fanned_out_twice.len()
            + self.fault_problems.len()
    }
}

/// The log folded per conversation by the rules, as a checker sees it.
pub struct Folded {
    pub states: BTreeMap<String, ConvState>,
    /// stream_seq -> the event extending its conversation.
    pub events: HashMap<u64, StoredEvent>,
    pub last_seq: u64,
}

/// Folds the log, noting chain breaks, duplicates and non-members' messages.
pub fn fold_log(log: Vec<StoredEvent>, f: &mut Findings) -> Folded {
    let mut states: BTreeMap<String, ConvState> = BTreeMap::new();
    let mut events = HashMap::new();
    let mut finals = HashSet::new();
    let last_seq = log.last().map_or(0, |e| e.stream_seq);
    for e in log {
        let conv = e.event.conversation_id.clone();
        let state = states
            .entry(conv.clone())
            .or_insert_with(|| ConvState::empty(&conv));
        if let Err(why) = check_link(state.conv_seq, &state.last_hash, &e.event) {
            f.chain_breaks
                .push(format!("{conv} at stream seq {}: {why}", e.stream_seq));
            continue;
        }
        let ev = &e.event;
        if event_type(ev) == "message_sent" {
            if let Err(r) = check_may_send(state, &ev.actor, ev.at_ms) {
                f.messages_from_non_members.push(format!(
                    "{conv} conv_seq {} from {}: {r}",
                    ev.conv_seq, ev.actor
                ));
            }
        }
        let primary = format!("{}:{}", ev.actor, ev.client_msg_id);
        if (e.msg_id.is_empty() || e.msg_id == primary)
            && !finals.insert((conv.clone(), primary.clone()))
        {
            f.duplicates.push(format!(
                "{conv}: {primary} stored again at conv_seq {}",
                ev.conv_seq
            ));
        }
        apply(state, ev);
        state.record_position(e.stream_seq, e.hash);
        events.insert(e.stream_seq, e);
    }
    Folded {
        states,
        events,
        last_seq,
    }
}

/// Every acknowledged send is in the log where its ack said, and every ack
/// of one id said the same.
pub fn check_acks(records: &Records, log: &Folded, f: &mut Findings) {
    let attempts = records.attempts.lock().unwrap_or_else(|e| e.into_inner());
    let mut positions: HashMap<(&str, &str), (u64, u64)> = HashMap::new();
    for a in attempts.iter() {
        let (Outcome::Stored {
            stream_seq,
            conv_seq,
        }
        | Outcome::Duplicate {
            stream_seq,
            conv_seq,
        }) = a.outcome
        else {
            continue;
        };
        let found = log.events.get(&stream_seq).map(|e| &e.event);
        let here = found.is_some_and(|ev| {
            ev.conversation_id == a.conv
                && ev.conv_seq == conv_seq
                && ev.client_msg_id == a.id
                && ev.actor == a.user
        });
        if !here {
            f.acked_but_lost.push(format!(
                "{} {} acked at {stream_seq}/{conv_seq}, log has {found:?}",
                a.conv, a.id
            ));
        }
        let first = *positions
            .entry((&a.conv, &a.id))
            .or_insert((stream_seq, conv_seq));
        if first != (stream_seq, conv_seq) {
            f.duplicates.push(format!(
                "{} {} acked at {first:?} and at {stream_seq}/{conv_seq}",
                a.conv, a.id
            ));
        }
    }
}

/// Whether `user` was a member of `conv` throughout [from, to], as far as
/// the recorded answers prove it: its last completed change before `from`
/// (if any: members start in) made it one, and no change was under way
/// between that and `to`.
fn provably_member(churn: &[Churn], conv: &str, user: &str, from: Instant, to: Instant) -> bool {
    let mine: Vec<&Churn> = churn
        .iter()
        .filter(|c| c.ok && c.conv == conv && c.user == user)
        .collect();
    let last_done = mine
        .iter()
        .filter(|c| c.answered <= from)
        .max_by_key(|c| c.answered);
    if last_done.is_some_and(|c| !c.add) {
        return false;
    }
    let since = last_done.map(|c| c.answered);
    !mine.iter().any(|c| {
        c.first_sent < to && since.is_none_or(|s| c.answered > s) && Some(c.answered) != since
    })
}

/// A `not_member` refusal while the sender provably was one is stale.
pub fn check_rejections(records: &Records, f: &mut Findings) {
    let attempts = records.attempts.lock().unwrap_or_else(|e| e.into_inner());
    let churn = records.churn.lock().unwrap_or_else(|e| e.into_inner());
    for a in attempts.iter() {
        let Outcome::Rejected { reason } = &a.outcome else {
            continue;
        };
        if reason.starts_with("not_member")
            && provably_member(&churn, &a.conv, &a.user, a.sent, a.answered)
        {
            f.stale_rejections
                .push(format!("{} {} from {}: {reason}", a.conv, a.id, a.user));
        }
    }
}

/// Positions a query waits for: IM_CONV's and IM_RCPT's last sequences.
#[derive(Clone, Copy)]
pub struct At {
    pub conv: u64,
    pub rcpt: u64,
}

async fn ask(client: &async_nats::Client, conv: &str, at: At, query: Query) -> anyhow::Result<R> {
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let req = v1::QueryRequest {
        min_position: at.conv,
        min_rcpt_position: at.rcpt,
        query: Some(query),
        after_delivered: false,
    };
    let subject = im_streams::subjects::query_subject(topology.partition_of(conv));
    let payload: bytes::Bytes = im_schema::encode(&req).into();
    // A projector restarted by the last fault may still be folding the
    // tail: "not yet" is asked again, for a bounded time.
    let deadline = tokio::time::Instant::now() + NOT_YET_WAIT;
    loop {
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(Duration::from_secs(30)));
        let reply = client.send_request(subject.clone(), request).await?;
        match im_schema::decode::<v1::QueryResponse>(&reply.payload)?.result {
            Some(R::Error(e))
                if e.code == v1::QueryErrorCode::NotYet as i32
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(R::Error(e)) => anyhow::bail!("{conv}: {}", e.message),
            Some(r) => return Ok(r),
            None => anyhow::bail!("{conv}: an empty answer"),
        }
    }
}

/// How long the checker waits for the projector to reach the log's end
/// before it compares: a restart replays from its checkpoints, seconds on a
/// check's log.
const NOT_YET_WAIT: Duration = Duration::from_secs(120);

/// History and members served by the projector equal the log's.
pub async fn check_read_models(
    client: &async_nats::Client,
    log: &Folded,
    at: At,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let mut by_conv: BTreeMap<&str, Vec<(u64, String)>> = BTreeMap::new();
    let mut seqs: Vec<&u64> = log.events.keys().collect();
    seqs.sort();
    for s in seqs {
        let ev = &log.events[s].event;
        by_conv
            .entry(&ev.conversation_id)
            .or_default()
            .push((ev.conv_seq, ev.client_msg_id.clone()));
    }
    for (conv, want) in by_conv {
        let mut got = Vec::new();
        let mut from = 1;
        while from != 0 {
            let q = Query::History(v1::HistoryQuery {
                conversation_id: conv.into(),
                from_seq: from,
                limit: 200,
                ..Default::default()
            });
            let R::History(page) = ask(client, conv, at, q).await? else {
                anyhow::bail!("history of {conv}: another answer")
            };
            got.extend(
                page.entries
                    .iter()
                    .filter_map(|e| e.event.as_ref())
                    .map(|e| (e.conv_seq, e.client_msg_id.clone())),
            );
            from = page.next_seq;
        }
        if got != want {
            f.history_vs_log.push(format!(
                "{conv}: history has {} events, the log {}",
                got.len(),
                want.len()
            ));
        }
        let mut got: Vec<String> = Vec::new();
        loop {
            let q = Query::Members(v1::MembersQuery {
                conversation_id: conv.into(),
                after_user_id: got.last().cloned().unwrap_or_default(),
                ..Default::default()
            });
            let R::Members(m) = ask(client, conv, at, q).await? else {
                anyhow::bail!("members of {conv}: another answer")
            };
            got.extend(m.members.iter().map(|r| r.user_id.clone()));
            if m.next_after.is_empty() {
                break;
            }
        }
        let want: Vec<String> = log.states[conv].members.keys().cloned().collect();
        if got != want {
            f.members_vs_log
                .push(format!("{conv}: members {got:?}, the log {want:?}"));
        }
    }
    Ok(())
}

/// Per (conversation, user): the highest delivered (a read counts as
/// delivered) and read cursors in IM_RCPT.
pub type Cursors = BTreeMap<(String, String), (u64, u64)>;

/// Reads IM_RCPT up to `last` and folds its receipts into cursors.
pub async fn read_receipts(
    client: &async_nats::Client,
    last: u64,
) -> anyhow::Result<Vec<v1::ReceiptEvent>> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    use futures::StreamExt;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let js = async_nats::jetstream::new(client.clone());
    let consumer = js
        .get_stream("IM_RCPT")
        .await?
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        out.push(im_schema::decode::<v1::ReceiptEvent>(&msg.payload)?);
        let seq = msg
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// Receipts fold into cursors, and none points past its conversation's end.
pub fn fold_receipts(receipts: &[v1::ReceiptEvent], log: &Folded, f: &mut Findings) -> Cursors {
    use v1::receipt_event::Kind;
    let mut cursors = Cursors::new();
    for r in receipts {
        let (up_to, read) = match &r.kind {
            Some(Kind::Delivered(d)) => (d.up_to_seq, false),
            Some(Kind::Read(x)) => (x.up_to_seq, true),
            None => continue,
        };
        let end = log.states.get(&r.conversation_id).map_or(0, |s| s.conv_seq);
        if up_to == 0 || up_to > end {
            f.receipts_vs_log.push(format!(
                "{} by {}: up to {up_to}, the conversation ends at {end}",
                r.conversation_id, r.user_id
            ));
        }
        let c = cursors
            .entry((r.conversation_id.clone(), r.user_id.clone()))
            .or_default();
        c.0 = c.0.max(up_to);
        if read {
            c.1 = c.1.max(up_to);
        }
    }
    cursors
}

/// The cursors the projector serves for each member equal the log's.
pub async fn check_receipts(
    client: &async_nats::Client,
    log: &Folded,
    cursors: &Cursors,
    at: At,
    f: &mut Findings,
) -> anyhow::Result<()> {
    for conv in log.states.keys() {
        let q = Query::Receipts(v1::ReceiptsQuery {
            conversation_id: conv.clone(),
            ..Default::default()
        });
        let R::Receipts(got) = ask(client, conv, at, q).await? else {
            anyhow::bail!("receipts of {conv}: another answer")
        };
        for m in got.members {
            let want = cursors
                .get(&(conv.clone(), m.user_id.clone()))
                .copied()
                .unwrap_or_default();
            if (m.delivered_seq, m.read_seq) != want {
                f.receipts_vs_log.push(format!(
                    "{conv} {}: served delivered {} read {}, the log {want:?}",
                    m.user_id, m.delivered_seq, m.read_seq
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The checker finds what it claims to: each kind of anomaly planted in
    //! a small log is reported, and a clean log reports nothing.

    use super::*;
    use im_schema::v1::conv_event::Kind;
    use im_schema::v1::message_sent::Body;

    /// A log builder: events chained as writers chain them (the hash of
    /// stream seq `s` is `[s; 32]`).
    struct Log {
        events: Vec<StoredEvent>,
        heads: HashMap<String, (u64, [u8; 32])>,
    }

    impl Log {
        fn new() -> Log {
            Log {
                events: Vec::new(),
                heads: HashMap::new(),
            }
        }

        fn push(&mut self, conv: &str, actor: &str, id: &str, kind: Kind) -> &mut Log {
            let (last, hash) = self.heads.get(conv).copied().unwrap_or((0, [0; 32]));
            self.raw(conv, last + 1, hash, actor, id, kind)
        }

        fn raw(
            &mut self,
            conv: &str,
            conv_seq: u64,
            prev: [u8; 32],
            actor: &str,
            id: &str,
            kind: Kind,
        ) -> &mut Log {
            let stream_seq = self.events.len() as u64 + 1;
            let hash = [stream_seq as u8; 32];
            let event = v1::ConvEvent {
                conversation_id: conv.into(),
                conv_seq,
                prev_hash: prev.to_vec(),
                actor: actor.into(),
                client_msg_id: id.into(),
                at_ms: 1_700_000_000_000 + stream_seq as i64,
                kind: Some(kind),
                ..Default::default()
            };
            if check_link(self.heads.get(conv).map_or(0, |h| h.0), &prev, &event).is_ok() {
                self.heads.insert(conv.into(), (conv_seq, hash));
            }
            self.events.push(StoredEvent {
                stream_seq,
                subject: format!("im.conv.{conv}"),
                event,
                hash,
                payload: Default::default(),
                writer: String::new(),
                msg_id: String::new(),
                signature: None,
            });
            self
        }
    }

    fn created(members: &[&str]) -> Kind {
        Kind::Created(v1::ConversationCreated {
            kind: v1::ConversationKind::Group as i32,
            title: "g".into(),
            members: members
                .iter()
                .map(|u| v1::InitialMember {
                    user_id: u.to_string(),
                    role: if *u == "owner" {
                        v1::Role::Owner
                    } else {
                        v1::Role::Member
                    } as i32,
                })
                .collect(),
        })
    }

    fn sent() -> Kind {
        Kind::MessageSent(v1::MessageSent {
            body: Some(Body::Text("hi".into())),
            ..Default::default()
        })
    }

    fn group() -> Log {
        let mut log = Log::new();
        log.push("g0", "owner", "create", created(&["owner", "m0"]));
        log
    }

    #[test]
    fn a_clean_log_has_no_findings() {
        let mut log = group();
        log.push("g0", "m0", "a", sent())
            .push("g0", "m0", "b", sent());
        let mut f = Findings::default();
        let folded = fold_log(log.events, &mut f);
        assert_eq!(f.total(), 0, "{f:?}");
        assert_eq!(folded.states["g0"].conv_seq, 3);
    }

    #[test]
    fn the_same_id_stored_twice_is_a_duplicate() {
        let mut log = group();
        log.push("g0", "m0", "a", sent())
            .push("g0", "m0", "a", sent());
        let mut f = Findings::default();
        fold_log(log.events, &mut f);
        assert_eq!(f.duplicates.len(), 1, "{f:?}");
        assert_eq!(f.total(), 1);
    }

    #[test]
    fn a_message_from_a_non_member_is_found() {
        let mut log = group();
        log.push("g0", "stranger", "a", sent());
        let mut f = Findings::default();
        fold_log(log.events, &mut f);
        assert_eq!(f.messages_from_non_members.len(), 1, "{f:?}");
    }

    #[test]
    fn a_gap_and_a_wrong_hash_are_chain_breaks() {
        let mut log = group();
        let head = log.heads["g0"].1;
        log.raw("g0", 3, head, "m0", "gap", sent());
        log.raw("g0", 2, [9; 32], "m0", "hash", sent());
        let mut f = Findings::default();
        fold_log(log.events, &mut f);
        assert_eq!(f.chain_breaks.len(), 2, "{f:?}");
    }

    #[test]
    fn receipts_fold_into_maxima_and_one_past_the_end_is_found() {
        let mut log = group();
        log.push("g0", "m0", "a", sent());
        let mut f = Findings::default();
        let folded = fold_log(log.events, &mut f);
        let receipt = |read, up_to_seq| v1::ReceiptEvent {
            conversation_id: "g0".into(),
            user_id: "m0".into(),
            kind: Some(if read {
                v1::receipt_event::Kind::Read(v1::Read { up_to_seq })
            } else {
                v1::receipt_event::Kind::Delivered(v1::Delivered { up_to_seq })
            }),
            ..Default::default()
        };
        let cursors = fold_receipts(&[receipt(false, 2), receipt(true, 1)], &folded, &mut f);
        assert_eq!(cursors[&("g0".to_string(), "m0".to_string())], (2, 1));
        assert_eq!(f.total(), 0, "{f:?}");
        fold_receipts(&[receipt(true, 3)], &folded, &mut f);
        assert_eq!(f.receipts_vs_log.len(), 1, "{f:?}");
    }

    fn attempt(
        id: &str,
        outcome: Outcome,
        sent: Instant,
        answered: Instant,
    ) -> super::super::workload::Attempt {
        super::super::workload::Attempt {
            user: "m0".into(),
            conv: "g0".into(),
            id: id.into(),
            sent,
            answered,
            outcome,
        }
    }

    #[test]
    fn an_ack_the_log_does_not_hold_is_lost_and_two_positions_for_one_id_are_duplicates() {
        let mut log = group();
        log.push("g0", "m0", "a", sent());
        let mut f = Findings::default();
        let folded = fold_log(log.events, &mut f);
        let now = Instant::now();
        let records = Records::default();
        let at = |stream_seq, conv_seq| Outcome::Stored {
            stream_seq,
            conv_seq,
        };
        for a in [
            attempt("a", at(2, 2), now, now),
            attempt(
                "a",
                Outcome::Duplicate {
                    stream_seq: 2,
                    conv_seq: 2,
                },
                now,
                now,
            ),
            attempt("b", at(7, 3), now, now),
            attempt("a", at(3, 3), now, now),
        ] {
            records.attempts.lock().unwrap().push(a);
        }
        check_acks(&records, &folded, &mut f);
        assert_eq!(f.acked_but_lost.len(), 2, "{f:?}");
        assert_eq!(f.duplicates.len(), 1, "{f:?}");
    }

    #[test]
    fn a_refusal_is_stale_only_while_membership_provably_held() {
        let t = |ms| Instant::now() + Duration::from_millis(ms);
        let (t0, t1, t2, t3, t4) = (t(0), t(100), t(200), t(300), t(400));
        let churn = |add, first_sent, answered| Churn {
            conv: "g0".into(),
            user: "m0".into(),
            add,
            first_sent,
            answered,
            ok: true,
        };
        // Member from the start, nothing under way: a refusal is stale.
        assert!(provably_member(&[], "g0", "m0", t0, t1));
        // Removed before the send: not a member.
        assert!(!provably_member(
            &[churn(false, t0, t1)],
            "g0",
            "m0",
            t2,
            t3
        ));
        // Re-added before the send: a member again.
        let both = [churn(false, t0, t1), churn(true, t1, t2)];
        assert!(provably_member(&both, "g0", "m0", t3, t4));
        // A removal under way while the send was: either order is fine.
        assert!(!provably_member(
            &[churn(false, t1, t3)],
            "g0",
            "m0",
            t2,
            t4
        ));
    }
}
