//! Pure tests of the folds: events made by the real rules (`decide`), folded
//! into an in-memory keyspace in different interleavings of the two streams.

use std::collections::BTreeMap;

use im_schema::v1;
use im_streams::codec::StoredEvent;
use im_streams::conversation::{decide, Action, Command, ConvState, MessageBody, Role};
use im_streams::seal::seal;

use super::*;
use crate::digest::{digest_of, Digest};
use crate::store::Keyspace;
pub use crate::store::MemKeyspace;

/// One event of either stream, as the log would hold it.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Logged {
    Conv(StoredEvent),
    Rcpt(u64, v1::ReceiptEvent),
}

/// Makes a log with the real rules: conversation events get stream seqs
/// 1, 2, ... and receipts their own sequence.
#[derive(Default)]
pub struct Sim {
    states: BTreeMap<String, ConvState>,
    pub log: Vec<Logged>,
    conv_seq_next: u64,
    rcpt_seq_next: u64,
    clock: i64,
}

impl Sim {
    pub fn run(&mut self, conv: &str, actor: &str, action: Action) -> u64 {
        self.clock += 1_000;
        let state = self
            .states
            .entry(conv.to_string())
            .or_insert_with(|| ConvState::empty(conv));
        let cmd = Command {
            actor: actor.into(),
            client_msg_id: format!("c{}", self.clock),
            action,
        };
        let events = decide(state, &cmd, 1_700_000_000_000 + self.clock)
            .unwrap_or_else(|r| panic!("{cmd:?}: {r}"));
        for sealed in seal(state, events) {
            self.conv_seq_next += 1;
            state.extend(&sealed, self.conv_seq_next);
            self.log.push(Logged::Conv(StoredEvent {
                stream_seq: self.conv_seq_next,
                subject: im_streams::Topology::new(16)
                    .conv_subject(conv)
                    .expect("an id"),
                hash: sealed.hash,
                payload: sealed.payload,
                writer: String::new(),
                msg_id: String::new(),
                signature: None,
                event: sealed.event,
            }));
        }
        state.conv_seq
    }

    pub fn send(&mut self, conv: &str, actor: &str, text: &str) -> u64 {
        self.run(
            conv,
            actor,
            Action::Send {
                peer: None,
                body: MessageBody::Text(text.into()),
                meta: Default::default(),
            },
        )
    }

    pub fn read(&mut self, conv: &str, user: &str, up_to: u64) {
        self.rcpt(
            conv,
            user,
            v1::receipt_event::Kind::Read(v1::Read { up_to_seq: up_to }),
        );
    }

    pub fn delivered(&mut self, conv: &str, user: &str, up_to: u64) {
        self.rcpt(
            conv,
            user,
            v1::receipt_event::Kind::Delivered(v1::Delivered { up_to_seq: up_to }),
        );
    }

    fn rcpt(&mut self, conv: &str, user: &str, kind: v1::receipt_event::Kind) {
        self.rcpt_seq_next += 1;
        self.log.push(Logged::Rcpt(
            self.rcpt_seq_next,
            v1::ReceiptEvent {
                conversation_id: conv.into(),
                user_id: user.into(),
                device_id: "d1".into(),
                kind: Some(kind),
                ..Default::default()
            },
        ));
    }
}

pub fn fold_all(p: &dyn Projection, ks: &dyn Keyspace, log: &[Logged]) -> Vec<Effect> {
    let mut effects = Vec::new();
    let mut members = crate::members_cache::MembersCache::default();
    for item in log {
        let mut ctx = FoldCtx {
            members: &mut members,
            effects: true,
            large_above: usize::MAX,
        };
        let mut tx = Tx::new(ks);
        let input = match item {
            Logged::Conv(s) => Input::Conv(s),
            Logged::Rcpt(seq, e) => Input::Rcpt {
                stream_seq: *seq,
                event: e,
            },
        };
        if matches!(input, Input::Rcpt { .. }) && !p.reads_receipts() {
            continue;
        }
        effects.extend(p.apply(&mut tx, &input, &mut ctx).unwrap());
        ks.commit(tx.into_writes()).unwrap();
    }
    effects
}

fn digest_after(p: &dyn Projection, log: &[Logged]) -> Digest {
    let ks = MemKeyspace::default();
    fold_all(p, &ks, log);
    digest_of(&ks).unwrap()
}

/// The same events with every receipt moved to a different place relative
/// to the conversation events (each stream keeps its own order).
fn interleavings(log: &[Logged], seed: u64) -> Vec<Logged> {
    let conv: Vec<Logged> = log
        .iter()
        .filter(|l| matches!(l, Logged::Conv(_)))
        .cloned()
        .collect();
    let rcpt: Vec<Logged> = log
        .iter()
        .filter(|l| matches!(l, Logged::Rcpt(..)))
        .cloned()
        .collect();
    let (mut out, mut i, mut j, mut x) = (Vec::new(), 0, 0, seed | 1);
    while i < conv.len() || j < rcpt.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take_conv = j >= rcpt.len() || (i < conv.len() && x % 3 != 0);
        if take_conv {
            out.push(conv[i].clone());
            i += 1;
        } else {
            out.push(rcpt[j].clone());
            j += 1;
        }
    }
    out
}

pub fn scenario() -> Sim {
    let mut sim = Sim::default();
    let members = vec![
        ("alice".to_string(), Role::Admin),
        ("bob".to_string(), Role::Member),
        ("carol".to_string(), Role::Member),
    ];
    sim.run(
        "g1",
        "owner",
        Action::CreateGroup {
            title: "team".into(),
            members,
        },
    );
    let m1 = sim.send("g1", "alice", "hello");
    sim.send("g1", "bob", "hi");
    sim.read("g1", "bob", m1);
    let m3 = sim.send("g1", "alice", "typo");
    sim.run(
        "g1",
        "alice",
        Action::Edit {
            conv_seq: m3,
            text: "fixed".into(),
        },
    );
    sim.delivered("g1", "carol", m3);
    sim.run(
        "g1",
        "owner",
        Action::AddMember {
            user: "dave".into(),
            role: Role::Member,
        },
    );
    let m5 = sim.send("g1", "carol", "welcome dave");
    sim.run("g1", "carol", Action::Recall { conv_seq: m5 });
    sim.run(
        "g1",
        "owner",
        Action::Mute {
            user: "bob".into(),
            until_ms: i64::MAX / 2,
        },
    );
    sim.run(
        "g1",
        "alice",
        Action::RemoveMember {
            user: "carol".into(),
        },
    );
    let m6 = sim.send("g1", "alice", "bye carol");
    sim.read("g1", "dave", m6);
    sim.run(
        "g1",
        "owner",
        Action::Blacklist {
            user: "dave".into(),
        },
    );
    sim.send("g1", "owner", "last");
    sim.read("g1", "bob", m6);
    people(&mut sim);
    sim
}

/// People logs beside the group: a contact made, a request to a blocker
/// (hidden), a profile and a privacy.
fn people(sim: &mut Sim) {
    use im_streams::ids::{pair_log_id, user_log_id};
    use im_streams::people::Audience;
    let pair = pair_log_id("alice", "bob").unwrap();
    let user = |u: &str| u.to_string();
    sim.run(&pair, "alice", Action::RequestContact { user: user("bob") });
    sim.run(
        &pair,
        "bob",
        Action::AcceptContact {
            user: user("alice"),
        },
    );
    let blocked = pair_log_id("alice", "eve").unwrap();
    sim.run(
        &blocked,
        "eve",
        Action::BlockUser {
            user: user("alice"),
        },
    );
    sim.run(
        &blocked,
        "alice",
        Action::RequestContact { user: user("eve") },
    );
    let own = user_log_id("bob").unwrap();
    let profile = Action::UpdateProfile {
        display_name: "Bob 鲍勃".into(),
        avatar: None,
        status: String::new(),
    };
    sim.run(&own, "bob", profile);
    let privacy = Action::SetPrivacy {
        direct_chats: Audience::Contacts,
        group_adds: Audience::Everyone,
    };
    sim.run(&own, "bob", privacy);
}

#[test]
fn every_interleaving_of_the_two_streams_gives_the_same_models() {
    let sim = scenario();
    for p in all() {
        let expected = digest_after(p.as_ref(), &sim.log);
        for seed in 1..40 {
            let shuffled = interleavings(&sim.log, seed);
            assert_eq!(
                digest_after(p.as_ref(), &shuffled),
                expected,
                "{} seed {seed}",
                p.name()
            );
        }
    }
}

#[test]
fn unread_counts_others_messages_after_join_and_read_and_not_recalled() {
    let sim = scenario();
    let ks = MemKeyspace::default();
    fold_all(&unread::Unread, &ks, &sim.log);
    let of = |u: &str| unread::for_user(&ks, u, Some("g1")).unwrap();
    // alice (admin): bob's "hi", carol's recalled message doesn't count, owner's "last".
    assert_eq!(of("alice").total, 2);
    // bob read up to m6: only "last" after it.
    assert_eq!(of("bob").total, 1);
    assert_eq!(of("bob").conversations[0].last_read_seq, 11);
    // carol was removed, dave blacklisted: no rows.
    assert!(of("carol").conversations.is_empty());
    assert!(of("dave").conversations.is_empty());
    // owner: alice x3, bob x1 (carol's recalled) = hello, hi, typo, bye carol.
    assert_eq!(of("owner").total, 4);
}

#[test]
fn history_keeps_recalled_slots_and_latest_edits() {
    let sim = scenario();
    let ks = MemKeyspace::default();
    let effects = fold_all(&history::History, &ks, &sim.log);
    let page = history::page(&ks, "g1", 0, 100, false).unwrap();
    let seqs: Vec<u64> = page
        .entries
        .iter()
        .map(|e| e.event.as_ref().unwrap().conv_seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every slot kept"
    );
    let edited = &page.entries[3];
    assert!(edited.edited);
    match edited.event.as_ref().unwrap().kind.as_ref().unwrap() {
        v1::conv_event::Kind::MessageSent(m) => {
            assert_eq!(m.body, Some(v1::message_sent::Body::Text("fixed".into())))
        }
        other => panic!("{other:?}"),
    }
    let recalled = &page.entries[6];
    assert!(recalled.recalled);
    // Backward from the end, in pages of 4.
    let back = history::page(&ks, "g1", 0, 4, true).unwrap();
    let back_seqs: Vec<u64> = back
        .entries
        .iter()
        .map(|e| e.event.as_ref().unwrap().conv_seq)
        .collect();
    let last = seqs.len() as u64;
    assert_eq!(back_seqs, vec![last, last - 1, last - 2, last - 3]);
    assert_eq!(back.next_seq, last - 4);
    // The removal is delivered to the removed member too.
    let removal = effects.iter().find_map(|e| match e {
        Effect::Deliver { users, deliver } if deliver.event_type == "member_removed" => {
            Some(users.clone())
        }
        _ => None,
    });
    assert!(removal.unwrap().contains(&"carol".to_string()));
}

#[test]
fn every_model_key_belongs_to_one_conversation_and_folds_per_conversation_add_up() {
    // Repair rewrites one conversation's keys from its events alone; that
    // is right only if each key names its conversation and a
    // conversation's keys depend on its own events only.
    let mut sim = scenario();
    sim.run(
        "g2",
        "erin",
        Action::CreateGroup {
            title: "pair".into(),
            members: vec![
                ("frank".to_string(), Role::Member),
                ("alice".to_string(), Role::Member),
            ],
        },
    );
    let m = sim.send("g2", "erin", "hi frank");
    sim.read("g2", "frank", m);
    sim.delivered("g2", "alice", m);
    sim.send("g1", "alice", "still here");
    let conv_of = |l: &Logged| match l {
        Logged::Conv(s) => s.event.conversation_id.clone(),
        Logged::Rcpt(_, e) => e.conversation_id.clone(),
    };
    // The groups and the people logs beside them.
    let convs: std::collections::BTreeSet<String> = sim.log.iter().map(conv_of).collect();
    assert!(convs.len() > 4, "{convs:?}");
    for p in all() {
        let whole = MemKeyspace::default();
        fold_all(p.as_ref(), &whole, &sim.log);
        let mut per_conv = Digest::default();
        for conv in &convs {
            let own: Vec<Logged> = sim
                .log
                .iter()
                .filter(|l| &conv_of(l) == conv)
                .cloned()
                .collect();
            let ks = MemKeyspace::default();
            fold_all(p.as_ref(), &ks, &own);
            ks.visit(&mut |k, _| {
                if k[0] != crate::keys::META {
                    assert_eq!(conv_of_key(k), Some(conv.as_bytes()), "{} {k:?}", p.name());
                }
            })
            .unwrap();
            per_conv = per_conv.combine(&digest_of(&ks).unwrap());
        }
        assert!(digest_of(&whole).unwrap().keys > 0, "{}", p.name());
        assert_eq!(per_conv, digest_of(&whole).unwrap(), "{}", p.name());
    }
}

/// Keyspace writes one more message makes in a group of `members`, per
/// projection.
fn writes_per_message(members: usize) -> Vec<(&'static str, usize)> {
    let mut sim = Sim::default();
    let list = (0..members)
        .map(|i| (format!("m{i}"), Role::Member))
        .collect();
    sim.run(
        "g",
        "owner",
        Action::CreateGroup {
            title: "g".into(),
            members: list,
        },
    );
    sim.send("g", "m1", "warm-up");
    let before = sim.log.len();
    sim.send("g", "m2", "counted");
    let Logged::Conv(message) = &sim.log[before] else {
        panic!("a message")
    };
    all()
        .iter()
        .map(|p| {
            let ks = MemKeyspace::default();
            fold_all(p.as_ref(), &ks, &sim.log[..before]);
            let mut members = crate::members_cache::MembersCache::default();
            let mut ctx = FoldCtx {
                members: &mut members,
                effects: true,
                large_above: usize::MAX,
            };
            let mut tx = Tx::new(&ks);
            p.apply(&mut tx, &Input::Conv(message), &mut ctx).unwrap();
            (p.name(), tx.into_writes().len())
        })
        .collect()
}

#[test]
fn a_message_writes_as_much_in_a_group_of_1000_as_in_a_group_of_10() {
    let small = writes_per_message(10);
    let large = writes_per_message(1_000);
    println!("writes per message: 10 members {small:?}, 1000 members {large:?}");
    assert_eq!(small, large);
    // `members` also keeps the rules' recent-message index: a row and its
    // count.
    let bound = |name: &str| if name == members::NAME { 3 } else { 2 };
    assert!(small.iter().all(|(p, n)| *n <= bound(p)), "{small:?}");
}

/// `members` keeps the whole rules state: read back at any point, it is
/// the state the rules folded (members, roles, mutes, blacklist, the
/// recent-message index past its bound, recalls, the chain head).
#[test]
fn the_members_rows_hold_the_rules_state() {
    let mut sim = Sim::default();
    let list = vec![
        ("ann".to_string(), Role::Admin),
        ("bo".to_string(), Role::Member),
    ];
    let create = Action::CreateGroup {
        title: "g".into(),
        members: list,
    };
    sim.run("g", "own", create);
    let ks = MemKeyspace::default();
    let mut folded = 0;
    let mut check = |sim: &Sim| {
        fold_all(&members::Members, &ks, &sim.log[folded..]);
        for l in &sim.log[folded..] {
            if let Logged::Conv(s) = l {
                let mut v = Vec::new();
                v.extend_from_slice(&s.event.conv_seq.to_be_bytes());
                v.extend_from_slice(&s.hash);
                let head = crate::keys::key(crate::chain::HEAD, &[b"g"]);
                ks.commit(vec![(head, Some(v))]).unwrap();
            }
        }
        folded = sim.log.len();
        let read = members::rules_state(&Tx::new(&ks), "g").unwrap().unwrap();
        assert_eq!(read, sim.states["g"]);
    };
    check(&sim);
    let until = 1_700_000_000_000 + 10_000_000;
    let mute = Action::Mute {
        user: "bo".into(),
        until_ms: until,
    };
    sim.run("g", "ann", mute);
    let first = sim.send("g", "ann", "first");
    sim.run("g", "ann", Action::Recall { conv_seq: first });
    check(&sim);
    for i in 0..(im_streams::conversation::MESSAGE_INDEX_MAX + 40) {
        sim.send("g", if i % 2 == 0 { "ann" } else { "own" }, "m");
    }
    sim.run("g", "own", Action::Blacklist { user: "bo".into() });
    let last = sim.send("g", "ann", "last");
    sim.run("g", "ann", Action::Recall { conv_seq: last });
    check(&sim);
}

/// The people rows hold the people rules state of a pair's log and a
/// user's, and each user's view of the pair.
#[test]
fn the_members_rows_hold_the_people_state() {
    use im_streams::ids::{pair_log_id, user_log_id};
    let mut sim = Sim::default();
    people(&mut sim);
    let ks = MemKeyspace::default();
    fold_all(&members::Members, &ks, &sim.log);
    for (log, state) in &sim.states {
        let mut v = Vec::new();
        v.extend_from_slice(&state.conv_seq.to_be_bytes());
        v.extend_from_slice(&state.last_hash);
        let head = crate::keys::key(crate::chain::HEAD, &[log.as_bytes()]);
        ks.commit(vec![(head, Some(v))]).unwrap();
        let read = members::rules_state(&Tx::new(&ks), log).unwrap().unwrap();
        assert_eq!(&read, state, "{log}");
    }
    assert!(sim
        .states
        .contains_key(&pair_log_id("alice", "eve").unwrap()));
    assert!(sim.states.contains_key(&user_log_id("bob").unwrap()));
    let view = |u: &str| {
        super::people::contacts_of(&ks, u, None)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.user_id, e.state, e.blocked))
            .collect::<Vec<_>>()
    };
    use v1::ContactState as S;
    let bob = ("bob".to_string(), S::Contact as i32, false);
    let eve = ("eve".to_string(), S::Outgoing as i32, false);
    assert_eq!(view("alice"), vec![bob, eve]);
    assert_eq!(
        view("eve"),
        vec![("alice".to_string(), S::None as i32, true)]
    );
    // Each partition's query reads its own entries, and they add up (a
    // scan bounded before the partition was picked lost entries: found
    // in a user trial with 5,200 requests to one user).
    let topology = im_streams::Topology::new(16);
    let mut by_partition = Vec::new();
    for p in 0..16 {
        for e in super::people::contacts_of(&ks, "alice", Some(p))
            .unwrap()
            .entries
        {
            assert_eq!(
                topology.partition_of(&pair_log_id("alice", &e.user_id).unwrap()),
                p
            );
            by_partition.push(e.user_id);
        }
    }
    by_partition.sort();
    assert_eq!(by_partition, ["bob", "eve"]);
    let found = super::people::profiles(&ks, &["bob".into(), "eve".into()]).unwrap();
    assert_eq!(found.profiles.len(), 1);
    assert_eq!(found.profiles[0].display_name, "Bob 鲍勃");
}
