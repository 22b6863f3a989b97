//! Given a log made by the real rules, when it is audited, then...

use im_schema::v1::message_sent::Body;
use im_streams::conversation::{apply, decide, Action, Command, ConvState, MessageBody, Role};
use im_streams::seal::seal;
use im_streams::Topology;

use super::*;

/// A log as the append path writes it: events from `decide`, chained and
/// encoded, at consecutive stream sequences.
#[derive(Default)]
struct Log {
    states: BTreeMap<String, ConvState>,
    raws: Vec<Raw>,
}

fn raw(seq: u64, ev: &v1::ConvEvent) -> Raw {
    Raw {
        stream: "IM_CONV".into(),
        seq,
        time: time::OffsetDateTime::UNIX_EPOCH,
        subject: Topology::new(16).conv_subject(&ev.conversation_id).unwrap(),
        headers: vec![(HDR_CONV_SEQ.to_string(), ev.conv_seq.to_string())],
        payload: im_schema::encode(ev).into(),
    }
}

impl Log {
    fn run(&mut self, conv: &str, actor: &str, id: &str, action: Action) {
        let state = self
            .states
            .entry(conv.to_string())
            .or_insert_with(|| ConvState::empty(conv))
            .clone();
        let cmd = Command {
            actor: actor.into(),
            client_msg_id: id.into(),
            action,
        };
        for sealed in seal(&state, decide(&state, &cmd, 1_000).unwrap()) {
            self.append(sealed.event);
        }
    }

    /// Appends an event as given, around the rules.
    fn append(&mut self, ev: v1::ConvEvent) {
        let state = self
            .states
            .entry(ev.conversation_id.clone())
            .or_insert_with(|| ConvState::empty(ev.conversation_id.clone()));
        let r = raw(self.raws.len() as u64 + 1, &ev);
        apply(state, &ev);
        state.record_position(r.seq, payload_hash(&r.payload));
        self.raws.push(r);
    }

    /// Publishes an event around the writers, who step over it: their
    /// state stays as it was.
    fn forge(&mut self, ev: v1::ConvEvent) -> u64 {
        let r = raw(self.raws.len() as u64 + 1, &ev);
        self.raws.push(r);
        self.raws.len() as u64
    }

    /// The next event of `conv` as a writer would chain it.
    fn next_event(&self, conv: &str, actor: &str, id: &str, kind: Kind) -> v1::ConvEvent {
        let event = v1::ConvEvent {
            conversation_id: conv.into(),
            actor: actor.into(),
            at_ms: 1_000,
            client_msg_id: id.into(),
            schema_version: im_schema::SCHEMA_VERSION,
            kind: Some(kind),
            ..Default::default()
        };
        seal(&self.states[conv], vec![event]).remove(0).event
    }

    fn audit(&self) -> Result<Report, Violation> {
        let mut a = Auditor::default();
        for r in &self.raws {
            a.check(r)?;
        }
        a.finish()
    }
}

fn text(t: &str) -> Action {
    Action::Send {
        peer: None,
        body: MessageBody::Text(t.into()),
        meta: Default::default(),
    }
}

fn sent(t: &str) -> Kind {
    Kind::MessageSent(v1::MessageSent {
        sealed: None,
        body: Some(Body::Text(t.into())),
        meta: Default::default(),
    })
}

/// A group with an admin, a muted member, an edit and a recall, and a
/// direct conversation whose first send created it, interleaved.
fn history() -> Log {
    let mut log = Log::default();
    log.run(
        "team",
        "olga",
        "c1",
        Action::CreateGroup {
            title: "team".into(),
            members: vec![("amy".into(), Role::Admin), ("bo".into(), Role::Member)],
        },
    );
    let dm = im_streams::subjects::direct_conversation_id("amy", "bo").unwrap();
    log.run(
        &dm,
        "amy",
        "d1",
        Action::Send {
            peer: Some("bo".into()),
            body: MessageBody::Text("hi bo".into()),
            meta: Default::default(),
        },
    );
    log.run("team", "amy", "m1", text("hello"));
    log.run(&dm, "bo", "d2", text("hi amy"));
    log.run("team", "bo", "m2", text("tpyo"));
    log.run(
        "team",
        "bo",
        "m3",
        Action::Edit {
            conv_seq: 3,
            text: "typo".into(),
        },
    );
    log.run("team", "amy", "m4", Action::Recall { conv_seq: 2 });
    log.run(
        "team",
        "amy",
        "m5",
        Action::Mute {
            user: "bo".into(),
            until_ms: 5_000,
        },
    );
    log.run(
        "team",
        "olga",
        "m6",
        Action::AddMember {
            user: "cy".into(),
            role: Role::Member,
        },
    );
    log
}

#[test]
fn an_intact_history_passes_with_a_chain_head_per_conversation() {
    let log = history();
    let report = log.audit().unwrap();
    assert_eq!(report.events, log.raws.len() as u64);
    assert_eq!(report.conversations.len(), 2);
    let team = &report.conversations["team"];
    assert_eq!(team.events, 7);
    let last_team = log
        .raws
        .iter()
        .rev()
        .find(|r| r.subject.ends_with(".team"))
        .unwrap();
    assert_eq!(team.head, hex::encode(payload_hash(&last_team.payload)));
    // The same log gives the same digest; one byte elsewhere does not.
    assert_eq!(log.audit().unwrap().range_digest, report.range_digest);
}

#[test]
fn a_forged_link_is_named() {
    let mut log = history();
    let mut ev = log.next_event("team", "amy", "f1", sent("forged"));
    ev.prev_hash = vec![7; 32];
    log.append(ev);
    let v = log.audit().unwrap_err();
    assert_eq!(v.stream_seq, log.raws.len() as u64);
    assert_eq!((v.conversation_id.as_str(), v.conv_seq), ("team", 8));
    assert!(matches!(v.kind, ViolationKind::BadChain { .. }), "{v}");
}

#[test]
fn a_rewritten_event_breaks_the_next_link() {
    let mut log = history();
    // "hello" (team conv_seq 2) rewritten in place.
    let i = log
        .raws
        .iter()
        .position(|r| r.subject.ends_with(".team") && r.header(HDR_CONV_SEQ) == Some("2"))
        .unwrap();
    let mut ev: v1::ConvEvent = im_schema::decode(&log.raws[i].payload).unwrap();
    ev.kind = Some(sent("goodbye"));
    log.raws[i].payload = im_schema::encode(&ev).into();
    let v = log.audit().unwrap_err();
    assert_eq!((v.conversation_id.as_str(), v.conv_seq), ("team", 3));
    assert!(matches!(v.kind, ViolationKind::BadChain { .. }), "{v}");
}

#[test]
fn a_non_members_message_is_refused_by_the_rules() {
    let mut log = history();
    let ev = log.next_event("team", "mallory", "x1", sent("let me in"));
    log.append(ev);
    let v = log.audit().unwrap_err();
    assert_eq!(v.stream_seq, log.raws.len() as u64);
    assert_eq!(
        v.kind,
        ViolationKind::NotAllowed {
            code: "not_member",
            reason: "not a member of this conversation".into()
        }
    );
    assert!(v.to_string().contains("conv_seq 8"), "{v}");
}

#[test]
fn a_muted_members_message_and_a_members_role_grab_are_refused() {
    let mut log = history();
    log.append(log.next_event("team", "bo", "x2", sent("muted but talking")));
    let v = log.audit().unwrap_err();
    assert!(
        matches!(v.kind, ViolationKind::NotAllowed { code: "muted", .. }),
        "{v}"
    );

    let mut log = history();
    let grab = Kind::RoleChanged(v1::RoleChanged {
        user_id: "bo".into(),
        role: v1::Role::Admin as i32,
    });
    log.append(log.next_event("team", "bo", "x3", grab));
    let v = log.audit().unwrap_err();
    assert!(matches!(v.kind, ViolationKind::NotAllowed { .. }), "{v}");
}

#[test]
fn an_event_unlike_what_the_rules_produce_is_refused() {
    let mut log = history();
    // A group whose creator is listed as a plain member: the rules make
    // the creator its owner.
    let mut ev = log.next_event(
        "team",
        "eve",
        "x4",
        Kind::Created(v1::ConversationCreated {
            kind: v1::ConversationKind::Group as i32,
            title: "fake".into(),
            members: vec![v1::InitialMember {
                user_id: "eve".into(),
                role: v1::Role::Member as i32,
            }],
        }),
    );
    ev.conversation_id = "fake".into();
    ev.conv_seq = 1;
    ev.prev_hash = vec![0; 32];
    log.append(ev);
    let v = log.audit().unwrap_err();
    assert_eq!((v.conversation_id.as_str(), v.conv_seq), ("fake", 1));
    assert!(
        matches!(v.kind, ViolationKind::NotWhatTheRulesProduce { .. }),
        "{v}"
    );
}

#[test]
fn gaps_reused_ids_and_wrong_subjects_are_named() {
    let mut log = history();
    let mut ev = log.next_event("team", "amy", "g1", sent("skipped one"));
    ev.conv_seq += 1;
    log.append(ev);
    let v = log.audit().unwrap_err();
    assert_eq!(v.kind, ViolationKind::Gap { expected: 8 });

    let mut log = history();
    log.append(log.next_event("team", "amy", "m1", sent("again")));
    let v = log.audit().unwrap_err();
    assert_eq!(
        v.kind,
        ViolationKind::DuplicateClientMsgId {
            client_msg_id: "m1".into()
        }
    );

    let mut log = history();
    let ev = log.next_event("team", "amy", "s1", sent("elsewhere"));
    let mut r = raw(log.raws.len() as u64 + 1, &ev);
    r.subject = Topology::new(16).conv_subject("other").unwrap();
    log.raws.push(r);
    assert_eq!(
        log.audit().unwrap_err().kind,
        ViolationKind::SubjectMismatch
    );
}

#[test]
fn a_direct_creation_without_its_message_is_incomplete() {
    let mut log = Log::default();
    let dm = im_streams::subjects::direct_conversation_id("amy", "bo").unwrap();
    log.run(
        &dm,
        "amy",
        "d1",
        Action::Send {
            peer: Some("bo".into()),
            body: MessageBody::Text("hi".into()),
            meta: Default::default(),
        },
    );
    log.raws.pop();
    assert_eq!(
        log.audit().unwrap_err().kind,
        ViolationKind::IncompleteCommand
    );
}

#[test]
fn every_unfinished_command_is_named_not_only_the_first() {
    let mut log = Log::default();
    let mut convs = Vec::new();
    for peer in ["bo", "cy"] {
        let dm = im_streams::subjects::direct_conversation_id("amy", peer).unwrap();
        log.run(
            &dm,
            "amy",
            &format!("d-{peer}"),
            Action::Send {
                peer: Some(peer.into()),
                body: MessageBody::Text("hi".into()),
                meta: Default::default(),
            },
        );
        log.raws.pop();
        convs.push(dm);
    }
    let mut a = Auditor::default();
    for r in &log.raws {
        a.check(r).unwrap();
    }
    let (report, unfinished) = a.finish_all();
    assert!(unfinished
        .iter()
        .all(|v| v.kind == ViolationKind::IncompleteCommand));
    let mut named: Vec<_> = unfinished
        .iter()
        .map(|v| v.conversation_id.clone())
        .collect();
    named.sort();
    convs.sort();
    assert_eq!(named, convs);
    assert_eq!(report.events, 2);
}

#[test]
fn from_the_first_registration_every_event_carries_a_registered_signature() {
    use im_streams::signing::{EventSigner, SignatureError, WriterKeys, HDR_SIGNATURE};
    let mut log = Log::default();
    log.run(
        "g",
        "o",
        "c1",
        Action::CreateGroup {
            title: "t".into(),
            members: vec![("m".into(), Role::Member)],
        },
    );
    log.run("g", "m", "c2", text("before keys"));
    log.run("g", "m", "c3", text("signed"));
    let writer = EventSigner::from_seed([1; 32]);
    let stranger = EventSigner::from_seed([2; 32]);
    let audit_with = |sig: Option<String>| {
        let mut keys = WriterKeys::default();
        keys.insert(writer.public(), 3);
        let mut a = Auditor::with_keys(keys);
        for r in &log.raws {
            let mut r = r.clone();
            if let (3, Some(sig)) = (r.seq, &sig) {
                r.headers.push((HDR_SIGNATURE.to_string(), sig.clone()));
            }
            a.check(&r)?;
        }
        a.finish()
    };
    let signed = &log.raws[2].payload;
    assert!(audit_with(Some(writer.sign(signed))).is_ok());
    let kind = |r: Result<Report, Violation>| r.unwrap_err().kind;
    assert_eq!(
        kind(audit_with(None)),
        ViolationKind::Signature(SignatureError::Unsigned)
    );
    assert_eq!(
        kind(audit_with(Some(stranger.sign(signed)))),
        ViolationKind::Signature(SignatureError::UnknownKey(stranger.key_id().into()))
    );
    assert_eq!(
        kind(audit_with(Some(writer.sign(b"other bytes")))),
        ViolationKind::Signature(SignatureError::Bad(writer.key_id().into()))
    );
}

#[test]
fn every_violation_is_named_and_what_follows_is_judged_as_writers_judge_it() {
    let mut log = history();
    let intruder = log.forge(log.next_event("team", "mallory", "x1", sent("let me in")));
    let grab = Kind::RoleChanged(v1::RoleChanged {
        user_id: "bo".into(),
        role: v1::Role::Admin as i32,
    });
    let role_grab = log.forge(log.next_event("team", "bo", "x2", grab));
    // The writers chained on past them: the honest events pass.
    log.run("team", "amy", "m7", text("still here"));
    log.run("team", "olga", "m8", text("and here"));
    let mut a = Auditor::default();
    let found: Vec<(u64, &'static str)> = log
        .raws
        .iter()
        .filter_map(|r| a.check(r).err())
        .map(|v| match v.kind {
            ViolationKind::NotAllowed { code, .. } => (v.stream_seq, code),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(
        found,
        vec![(intruder, "not_member"), (role_grab, "forbidden")]
    );
    let report = a.finish().unwrap();
    assert_eq!(report.events, log.raws.len() as u64);
    assert_eq!(report.conversations["team"].events, 9);
}

#[test]
fn a_bulk_adds_parts_are_one_command_and_its_id_is_not_reused_later() {
    let users = |from: usize| -> Vec<(String, Role)> {
        (from..from + 600)
            .map(|i| (format!("u{i:04}"), Role::Member))
            .collect()
    };
    let mut log = history();
    let add = Action::AddMembers { users: users(0) };
    log.run("team", "olga", "bulk", add);
    // 600 members: two `MembersAdded` events under one id.
    assert_eq!(log.raws.len(), 12);
    assert!(log.audit().is_ok(), "{:?}", log.audit());

    log.run("team", "amy", "m7", text("welcome"));
    let ev = log.next_event(
        "team",
        "olga",
        "bulk",
        Kind::MembersAdded(v1::MembersAdded {
            members: vec![v1::InitialMember {
                user_id: "zed".into(),
                role: v1::Role::Member as i32,
            }],
        }),
    );
    log.append(ev);
    let v = log.audit().unwrap_err();
    assert_eq!(
        v.kind,
        ViolationKind::DuplicateClientMsgId {
            client_msg_id: "bulk".into()
        },
        "{v}"
    );
}

/// The first event a command makes in a new people log (its creation),
/// without the command's own event: what a writer killed between the two
/// leaves.
fn creation_alone(conv: &str, actor: &str, id: &str, action: Action) -> v1::ConvEvent {
    let cmd = Command {
        actor: actor.into(),
        client_msg_id: id.into(),
        action,
    };
    let empty = ConvState::empty(conv);
    seal(&empty, decide(&empty, &cmd, 1_000).unwrap())
        .remove(0)
        .event
}

/// A people log's creation stored, its command's event not (a writer
/// killed between them): another's command comes next, then the retry
/// completes it. Not a violation: a creation alone is an empty log.
#[test]
fn a_people_logs_creation_may_be_completed_after_anothers_command() {
    let mut log = Log::default();
    let pair = im_streams::ids::pair_log_id("amy", "bo").unwrap();
    let block = Action::BlockUser { user: "bo".into() };
    log.append(creation_alone(&pair, "amy", "a1", block.clone()));
    assert!(log.audit().is_ok(), "a creation alone");
    log.run(
        &pair,
        "bo",
        "b1",
        Action::RequestContact { user: "amy".into() },
    );
    log.run(&pair, "amy", "a1", block);
    let report = log.audit().expect("completed later");
    assert_eq!(report.conversations[&pair].events, 3);
    // The id is then spent: used again, it is named.
    log.run(
        &pair,
        "amy",
        "a1",
        Action::UnblockUser { user: "bo".into() },
    );
    assert!(matches!(
        log.audit().unwrap_err().kind,
        ViolationKind::DuplicateClientMsgId { .. }
    ));
}

/// An auditor's state encoded whole, at the start: what a file written
/// conversation by conversation must decode to.
fn saved_whole(a: &Auditor) -> v1::AuditState {
    v1::AuditState {
        conversations: a.convs.iter().map(|(c, audit)| audit.save(c)).collect(),
        ..state::head(&state::Position::default())
    }
}

/// A state's file contents: its bytes, then their sha256.
fn to_file(state: &v1::AuditState) -> Vec<u8> {
    let mut bytes = prost::Message::encode_to_vec(state);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    bytes
}

/// A state file's contents as `verify` reads them: written to a file,
/// opened (its digest checked, `expected` when given) and read whole.
fn read_state(file: &[u8], expected: Option<&str>) -> Result<v1::AuditState, state::StateError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.state");
    std::fs::write(&path, file).unwrap();
    let (opened, _) = state_file::StateFile::open(&path, expected)?;
    opened.read(Some(Pass::WHOLE))
}

/// Every violation and the report of a whole audit, the state saved to a
/// file after `split` events and the audit taken up from it.
fn audit_split(raws: &[Raw], split: Option<usize>) -> (Vec<String>, Report) {
    let mut a = Auditor::default();
    let mut found = Vec::new();
    let mut first = 0;
    for (i, r) in raws.iter().enumerate() {
        if Some(i) == split {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.state");
            let mut writer = state_file::StateWriter::create(&path).unwrap();
            writer.conversations(&a).unwrap();
            let digest = writer.finish(&state::Position::default()).unwrap();
            let saved = read_state(&std::fs::read(&path).unwrap(), Some(&digest)).unwrap();
            assert_eq!(saved, saved_whole(&a));
            a = Auditor::restore(saved, Default::default()).unwrap().0;
            first = i;
        }
        if let Err(v) = a.check(r) {
            found.push(v.to_string());
        }
    }
    let (report, unfinished) = a.finish_all();
    found.extend(unfinished.iter().map(|v| v.to_string()));
    assert_eq!(report.events, (raws.len() - first) as u64);
    (found, report)
}

/// A log with something of everything the audit remembers across events:
/// rules state, a bulk add's parts, a reused id, a forged link, a people
/// log's creation completed later and a direct creation left unfinished.
fn eventful() -> Log {
    let mut log = history();
    let users = (0..600)
        .map(|i| (format!("u{i:04}"), Role::Member))
        .collect();
    log.run("team", "olga", "bulk", Action::AddMembers { users });
    log.append(log.next_event("team", "amy", "m1", sent("again")));
    let mut ev = log.next_event("team", "amy", "f1", sent("forged"));
    ev.prev_hash = vec![7; 32];
    log.forge(ev);
    let pair = im_streams::ids::pair_log_id("amy", "bo").unwrap();
    let block = Action::BlockUser { user: "bo".into() };
    log.append(creation_alone(&pair, "amy", "a1", block.clone()));
    log.run(
        &pair,
        "bo",
        "b1",
        Action::RequestContact { user: "amy".into() },
    );
    log.run(&pair, "amy", "a1", block);
    let dm = im_streams::subjects::direct_conversation_id("cy", "olga").unwrap();
    let first = Action::Send {
        peer: Some("olga".into()),
        body: MessageBody::Text("hi".into()),
        meta: Default::default(),
    };
    log.run(&dm, "cy", "x1", first);
    log.raws.pop();
    log
}

#[test]
fn an_audit_taken_up_from_its_saved_state_finds_what_one_whole_audit_finds() {
    let log = eventful();
    let (whole, report) = audit_split(&log.raws, None);
    assert_eq!(whole.len(), 3, "{whole:#?}");
    for split in 1..log.raws.len() {
        let (found, resumed) = audit_split(&log.raws, Some(split));
        assert_eq!(found, whole, "split after {split} events");
        assert_eq!(resumed.conversations, report.conversations, "split {split}");
    }
}

#[test]
fn a_state_changed_or_cut_short_is_refused() {
    let log = history();
    let mut a = Auditor::default();
    for r in &log.raws {
        a.check(r).unwrap();
    }
    let file = to_file(&saved_whole(&a));
    assert!(read_state(&file, None).is_ok());
    for at in [0, file.len() / 2, file.len() - 1] {
        let mut changed = file.clone();
        changed[at] ^= 1;
        assert!(matches!(
            read_state(&changed, None),
            Err(state::StateError::Digest)
        ));
    }
    let cut = &file[..file.len() - 5];
    assert!(matches!(
        read_state(cut, None),
        Err(state::StateError::Digest)
    ));
    // A state rewritten whole, its digest made again, is not the one the
    // auditor noted down.
    let mut saved = read_state(&file, None).unwrap();
    saved.conversations.pop();
    let forged = to_file(&saved);
    let noted = hex::encode(&file[file.len() - 32..]);
    assert!(matches!(
        read_state(&forged, Some(&noted)),
        Err(state::StateError::NotTheExpected { .. })
    ));
    let mut newer = saved;
    newer.format = state::STATE_FORMAT + 1;
    let newer = read_state(&to_file(&newer), None).unwrap();
    assert!(matches!(
        Auditor::restore(newer, Default::default()),
        Err(state::StateError::TooNew(_))
    ));
}

/// One run over `raws` in `of` passes, taken up from the state at `from`
/// (when given) and saved to `to` pass by pass: its violations (sorted)
/// and its report.
fn audit_in_passes(
    raws: &[Raw],
    of: u32,
    from: Option<&std::path::Path>,
    to: &std::path::Path,
) -> (Vec<String>, Report) {
    let saved = from.map(|p| state_file::StateFile::open(p, None).unwrap().0);
    let mut writer = state_file::StateWriter::create(to).unwrap();
    let (mut found, mut report) = (Vec::new(), None);
    for index in 0..of {
        let pass = Pass { index, of };
        let mut a = match &saved {
            Some(file) => {
                Auditor::restore(file.read(Some(pass)).unwrap(), Default::default())
                    .unwrap()
                    .0
            }
            None => Auditor::default(),
        };
        // In chunks, as `verify` hands them on.
        for chunk in raws.chunks(7) {
            let steps = prepare_pass(&Default::default(), chunk, pass);
            for (r, step) in chunk.iter().zip(steps) {
                if let Err(v) = a.take(r, step) {
                    found.push(v.to_string());
                }
            }
        }
        let (part, unfinished) = a.finish_all();
        found.extend(unfinished.iter().map(|v| v.to_string()));
        report = Some(Report::merged(report, part));
        writer.conversations(&a).unwrap();
    }
    writer.finish(&state::Position::default()).unwrap();
    found.sort();
    (found, report.unwrap())
}

/// An audit in passes (each a share of the conversations, the first also
/// counting every event into the range), its state written pass by pass
/// and taken up in another number of passes, finds what one whole audit
/// finds, with the same count, range digest and heads.
#[test]
fn an_audit_in_passes_finds_what_one_whole_audit_finds() {
    let log = eventful();
    let (mut whole, report) = audit_split(&log.raws, None);
    whole.sort();
    let dir = tempfile::tempdir().unwrap();
    let (first, then) = (dir.path().join("first"), dir.path().join("then"));
    for of in 1..=5 {
        let (found, merged) = audit_in_passes(&log.raws, of, None, &first);
        assert_eq!(found, whole, "{of} passes");
        assert_eq!(merged, report, "{of} passes");
    }
    let mid = log.raws.len() / 2;
    for (of, again) in [(1, 3), (3, 1), (2, 5), (4, 4)] {
        let (mut found, _) = audit_in_passes(&log.raws[..mid], of, None, &first);
        let (more, resumed) = audit_in_passes(&log.raws[mid..], again, Some(&first), &then);
        found.extend(more);
        found.sort();
        assert_eq!(found, whole, "{of} then {again} passes");
        assert_eq!(
            resumed.conversations, report.conversations,
            "{of} then {again}"
        );
        // Written pass by pass, read whole: the state one pass writes.
        let one = dir.path().join("one");
        let (_, one_pass) = audit_in_passes(&log.raws[mid..], 1, Some(&first), &one);
        let mut by_passes = read_state(&std::fs::read(&then).unwrap(), None).unwrap();
        let mut by_one = read_state(&std::fs::read(&one).unwrap(), None).unwrap();
        for s in [&mut by_passes, &mut by_one] {
            s.conversations
                .sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        }
        assert_eq!(by_passes, by_one, "{of} then {again}");
        assert_eq!(one_pass.conversations, report.conversations);
    }
}

/// Every conversation is in exactly one pass, and passes share the
/// conversations out.
#[test]
fn each_conversation_is_in_exactly_one_pass() {
    let topology = Topology::new(4);
    let mut per_pass = [0; 3];
    for i in 0..300 {
        let conv = format!("c{i}");
        let subject = topology.conv_subject(&conv).unwrap();
        let passes: Vec<u32> = (0..3)
            .filter(|&index| Pass { index, of: 3 }.audits(&subject))
            .collect();
        assert_eq!(passes.len(), 1, "{conv}: {passes:?}");
        assert!(Pass {
            index: passes[0],
            of: 3
        }
        .audits_conversation(&conv));
        per_pass[passes[0] as usize] += 1;
    }
    assert!(per_pass.iter().all(|&n| n > 60), "{per_pass:?}");
    assert!(Pass::WHOLE.audits("im.conv.odd"));
}

/// A state file changed after it was opened (between two passes) is
/// refused when read; one whose field claims more bytes than the file has
/// is refused without reserving them.
#[test]
fn a_state_changed_between_passes_or_claiming_too_much_is_refused() {
    let log = history();
    let mut a = Auditor::default();
    for r in &log.raws {
        a.check(r).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.state");
    let file = to_file(&saved_whole(&a));
    std::fs::write(&path, &file).unwrap();
    let (opened, _) = state_file::StateFile::open(&path, None).unwrap();
    let mut changed = file.clone();
    changed[file.len() / 2] ^= 1;
    std::fs::write(&path, &changed).unwrap();
    assert!(matches!(
        opened.read(Some(Pass { index: 1, of: 2 })),
        Err(state::StateError::Digest)
    ));
    // Field 6 claiming 2^40 bytes, the file's digest made over it.
    let mut huge = Vec::new();
    prost::encoding::encode_key(6, prost::encoding::WireType::LengthDelimited, &mut huge);
    prost::encoding::encode_varint(1 << 40, &mut huge);
    huge.extend_from_slice(b"short");
    let digest = Sha256::digest(&huge);
    huge.extend_from_slice(&digest);
    std::fs::write(&path, &huge).unwrap();
    assert!(matches!(
        state_file::StateFile::open(&path, None),
        Err(state::StateError::Malformed(_))
    ));
}

/// A subject that names no conversation is audited where the empty id's
/// saved state is restored, in every split.
#[test]
fn a_subject_naming_no_conversation_goes_where_the_empty_id_goes() {
    for of in 1..=8 {
        for index in 0..of {
            let pass = Pass { index, of };
            assert_eq!(pass.audits("im.conv.odd"), pass.audits_conversation(""));
        }
    }
}
