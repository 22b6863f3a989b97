//! Given/when/then tests of every rule, without IO.

use super::*;
use crate::ids::direct_conversation_id;
use crate::seal::seal;
use im_schema::v1::message_sent::Body;

const T0: i64 = 1_700_000_000_000;

/// Given these (actor, event kind) pairs already happened, in order.
fn given(conv: &str, history: Vec<(&str, Kind)>) -> ConvState {
    let mut state = ConvState::empty(conv);
    for (i, (actor, kind)) in history.into_iter().enumerate() {
        let ev = v1::ConvEvent {
            conversation_id: conv.into(),
            conv_seq: state.conv_seq + 1,
            actor: actor.into(),
            at_ms: T0 + i as i64,
            client_msg_id: format!("h{i}"),
            kind: Some(kind),
            ..Default::default()
        };
        apply(&mut state, &ev);
        state.record_position(ev.conv_seq * 10, [ev.conv_seq as u8; 32]);
    }
    state
}

fn cmd(actor: &str, action: Action) -> Command {
    Command {
        actor: actor.into(),
        client_msg_id: "c1".into(),
        action,
    }
}

fn text(t: &str) -> Action {
    Action::Send {
        peer: None,
        body: MessageBody::Text(t.into()),
        meta: BTreeMap::new(),
    }
}

fn created_group(members: &[(&str, Role)]) -> Kind {
    Kind::Created(group_created(members))
}

fn group_created(members: &[(&str, Role)]) -> v1::ConversationCreated {
    v1::ConversationCreated {
        kind: v1::ConversationKind::Group as i32,
        title: "g".into(),
        members: members
            .iter()
            .map(|(u, r)| v1::InitialMember {
                user_id: u.to_string(),
                role: r.to_wire() as i32,
            })
            .collect(),
    }
}

fn sent(t: &str) -> Kind {
    Kind::MessageSent(v1::MessageSent {
        sealed: None,
        body: Some(Body::Text(t.into())),
        meta: BTreeMap::new(),
    })
}

/// owner o, admins a1 a2, members m1 m2.
fn group() -> ConvState {
    given(
        "g1",
        vec![(
            "o",
            created_group(&[
                ("o", Role::Owner),
                ("a1", Role::Admin),
                ("a2", Role::Admin),
                ("m1", Role::Member),
                ("m2", Role::Member),
            ]),
        )],
    )
}

/// The decision time of every `then_*`.
const NOW: i64 = T0 + 1_000;

/// When `c` is decided on `state`, then it is allowed, and each event it
/// appends carries the command, the decision time, the next position and
/// the hash of the one before it.
fn then_ok(state: &ConvState, c: Command) -> Vec<v1::ConvEvent> {
    let decided = decide(state, &c, NOW).unwrap_or_else(|r| panic!("{c:?} refused: {r}"));
    assert!(!decided.is_empty());
    let sealed = seal(state, decided);
    let mut prev = state.last_hash;
    for (i, s) in sealed.iter().enumerate() {
        let e = &s.event;
        assert_eq!(
            (e.conversation_id.as_str(), e.conv_seq, e.actor.as_str()),
            (
                state.conv_id.as_str(),
                state.conv_seq + 1 + i as u64,
                c.actor.as_str()
            )
        );
        assert_eq!(
            (e.at_ms, e.client_msg_id.as_str(), e.schema_version),
            (NOW, c.client_msg_id.as_str(), im_schema::SCHEMA_VERSION)
        );
        assert_eq!(e.prev_hash, prev.to_vec());
        prev = s.hash;
    }
    sealed.into_iter().map(|s| s.event).collect()
}

/// When `c`, then exactly these events (their envelopes as `then_ok`).
fn then_events(state: &ConvState, c: Command, kinds: Vec<Kind>) -> Vec<v1::ConvEvent> {
    let events = then_ok(state, c);
    let got: Vec<Kind> = events.iter().filter_map(|e| e.kind.clone()).collect();
    assert_eq!(got, kinds);
    events
}

/// The state after exactly these events.
fn after_exactly(state: &ConvState, c: Command, kinds: Vec<Kind>) -> ConvState {
    let mut s = state.clone();
    for ev in then_events(state, c, kinds) {
        apply(&mut s, &ev);
    }
    s
}

fn then_refused(state: &ConvState, c: Command, code: &str) {
    match decide(state, &c, NOW) {
        Err(r) => assert_eq!(r.code(), code, "{c:?}: {r}"),
        Ok(ev) => panic!("{c:?} allowed: {ev:?}"),
    }
}

fn after(state: &ConvState, c: Command) -> ConvState {
    let mut s = state.clone();
    for ev in then_ok(state, c) {
        apply(&mut s, &ev);
    }
    s
}

// ---- creation ----

#[test]
fn create_group_makes_creator_owner_and_positions_the_event() {
    let s = ConvState::empty("g9");
    let ev = then_events(
        &s,
        cmd(
            "o",
            Action::CreateGroup {
                title: "team".into(),
                members: vec![("m1".into(), Role::Member), ("a1".into(), Role::Admin)],
            },
        ),
        vec![Kind::Created(v1::ConversationCreated {
            title: "team".into(),
            ..group_created(&[
                ("a1", Role::Admin),
                ("m1", Role::Member),
                ("o", Role::Owner),
            ])
        })],
    );
    assert_eq!(
        (ev[0].conv_seq, ev[0].prev_hash.as_slice()),
        (1, &[0u8; 32][..])
    );
    let mut s2 = s.clone();
    apply(&mut s2, &ev[0]);
    assert_eq!(s2.role_of("o"), Some(Role::Owner));
    assert_eq!(s2.role_of("a1"), Some(Role::Admin));
    assert_eq!(s2.kind, Some(ConvKind::Group));
}

#[test]
fn create_refuses_existing_reserved_prefix_second_owner_and_bad_ids() {
    let create = |members: Vec<(String, Role)>| Action::CreateGroup {
        title: "t".into(),
        members,
    };
    then_refused(&group(), cmd("o", create(vec![])), "conversation_exists");
    then_refused(
        &ConvState::empty("dm_x"),
        cmd("o", create(vec![])),
        "invalid_argument",
    );
    then_refused(
        &ConvState::empty("g2"),
        cmd("o", create(vec![("x".into(), Role::Owner)])),
        "invalid_argument",
    );
    then_refused(
        &ConvState::empty("g2"),
        cmd("o", create(vec![("x.y".into(), Role::Member)])),
        "invalid_argument",
    );
    then_refused(
        &ConvState::empty("g2"),
        cmd(
            "o",
            Action::CreateGroup {
                title: "t".repeat(TITLE_BYTES_MAX + 1),
                members: vec![],
            },
        ),
        "too_large",
    );
}

#[test]
fn first_send_to_a_user_creates_the_direct_conversation() {
    let id = direct_conversation_id("alice", "bob").unwrap();
    let s = ConvState::empty(&id);
    let send = Action::Send {
        peer: Some("bob".into()),
        body: MessageBody::Text("hi".into()),
        meta: BTreeMap::new(),
    };
    let direct = |members: &[&str]| {
        Kind::Created(v1::ConversationCreated {
            kind: v1::ConversationKind::Direct as i32,
            title: String::new(),
            ..group_created(
                &members
                    .iter()
                    .map(|m| (*m, Role::Member))
                    .collect::<Vec<_>>(),
            )
        })
    };
    then_events(
        &s,
        cmd("alice", send.clone()),
        vec![direct(&["alice", "bob"]), sent("hi")],
    );
    let s2 = after(&s, cmd("alice", send.clone()));
    assert_eq!(s2.members.len(), 2);
    assert_eq!(s2.kind, Some(ConvKind::Direct));
    // Later sends by either side are plain messages.
    then_events(&s2, cmd("bob", text("yo")), vec![sent("yo")]);
    // A mismatched id, a send to self, or no peer at all create nothing.
    then_refused(
        &ConvState::empty("dm_other"),
        cmd("alice", send),
        "conversation_not_found",
    );
    let self_send = Action::Send {
        peer: Some("alice".into()),
        body: MessageBody::Text("hi".into()),
        meta: BTreeMap::new(),
    };
    then_refused(
        &ConvState::empty(direct_conversation_id("alice", "alice").unwrap()),
        cmd("alice", self_send),
        "self_target",
    );
    then_refused(
        &ConvState::empty("g5"),
        cmd("alice", text("x")),
        "conversation_not_found",
    );
}

#[test]
fn direct_block_stops_both_sides_until_the_blocker_lifts_it() {
    let id = direct_conversation_id("alice", "bob").unwrap();
    let s = after(
        &ConvState::empty(&id),
        cmd(
            "alice",
            Action::Send {
                peer: Some("bob".into()),
                body: MessageBody::Text("hi".into()),
                meta: BTreeMap::new(),
            },
        ),
    );
    let blocked = after(&s, cmd("alice", Action::Blacklist { user: "bob".into() }));
    then_refused(&blocked, cmd("bob", text("x")), "blacklisted");
    then_refused(&blocked, cmd("alice", text("x")), "blacklisted");
    // The blocked side cannot lift the block.
    then_refused(
        &blocked,
        cmd("bob", Action::Unblacklist { user: "bob".into() }),
        "self_target",
    );
    let lifted = after(
        &blocked,
        cmd("alice", Action::Unblacklist { user: "bob".into() }),
    );
    then_ok(&lifted, cmd("bob", text("x")));
    // Group operations do not exist in a direct conversation.
    then_refused(
        &s,
        cmd(
            "alice",
            Action::AddMember {
                user: "carol".into(),
                role: Role::Member,
            },
        ),
        "not_in_direct",
    );
    then_refused(&s, cmd("alice", Action::Leave), "not_in_direct");
}

// ---- send ----

#[test]
fn send_requires_membership_no_mute_no_blacklist() {
    let g = group();
    then_events(&g, cmd("m1", text("hello")), vec![sent("hello")]);
    then_refused(&g, cmd("stranger", text("hello")), "not_member");
    let muted = after(
        &g,
        cmd(
            "a1",
            Action::Mute {
                user: "m1".into(),
                until_ms: T0 + 60_000,
            },
        ),
    );
    then_refused(&muted, cmd("m1", text("hello")), "muted");
    // The mute ends by time alone.
    assert!(decide(&muted, &cmd("m1", text("hello")), T0 + 60_001).is_ok());
    let black = after(&g, cmd("a1", Action::Blacklist { user: "m1".into() }));
    then_refused(&black, cmd("m1", text("hello")), "blacklisted");
}

#[test]
fn send_validates_body_and_meta() {
    let g = group();
    then_refused(&g, cmd("m1", text("")), "invalid_argument");
    then_refused(&g, cmd("m1", text("  ")), "invalid_argument");
    then_refused(
        &g,
        cmd("m1", text(&"x".repeat(TEXT_BYTES_MAX + 1))),
        "too_large",
    );
    then_ok(&g, cmd("m1", text(&"x".repeat(TEXT_BYTES_MAX))));
    let big_meta: BTreeMap<String, String> = (0..=META_ENTRIES_MAX)
        .map(|i| (format!("k{i}"), "v".into()))
        .collect();
    then_refused(
        &g,
        cmd(
            "m1",
            Action::Send {
                peer: None,
                body: MessageBody::Text("x".into()),
                meta: big_meta,
            },
        ),
        "too_large",
    );
    let media = v1::MediaRef {
        media_id: "m-1".into(),
        mime: "image/png".into(),
        ..Default::default()
    };
    then_ok(
        &g,
        cmd(
            "m1",
            Action::Send {
                peer: None,
                body: MessageBody::Media(media),
                meta: BTreeMap::new(),
            },
        ),
    );
    let bad_media = v1::MediaRef {
        media_id: "m.1".into(),
        mime: "image/png".into(),
        ..Default::default()
    };
    then_refused(
        &g,
        cmd(
            "m1",
            Action::Send {
                peer: None,
                body: MessageBody::Media(bad_media),
                meta: BTreeMap::new(),
            },
        ),
        "invalid_argument",
    );
}

#[test]
fn bad_actor_and_client_msg_ids_are_refused() {
    let g = group();
    for bad in ["a.b", "*", ">", "a b", "", &"x".repeat(65)] {
        then_refused(&g, cmd(bad, text("x")), "invalid_argument");
        let mut c = cmd("m1", text("x"));
        c.client_msg_id = bad.to_string();
        then_refused(&g, c, "invalid_argument");
    }
}

// ---- membership ----

#[test]
fn add_member_admin_or_owner_not_blacklisted() {
    let g = group();
    then_events(
        &g,
        cmd(
            "a1",
            Action::AddMember {
                user: "n".into(),
                role: Role::Member,
            },
        ),
        vec![Kind::MemberAdded(v1::MemberAdded {
            user_id: "n".into(),
            role: v1::Role::Member as i32,
        })],
    );
    then_ok(
        &g,
        cmd(
            "o",
            Action::AddMember {
                user: "n".into(),
                role: Role::Admin,
            },
        ),
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::AddMember {
                user: "n".into(),
                role: Role::Admin,
            },
        ),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "o",
            Action::AddMember {
                user: "n".into(),
                role: Role::Owner,
            },
        ),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "m1",
            Action::AddMember {
                user: "n".into(),
                role: Role::Member,
            },
        ),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "stranger",
            Action::AddMember {
                user: "n".into(),
                role: Role::Member,
            },
        ),
        "not_member",
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::AddMember {
                user: "m2".into(),
                role: Role::Member,
            },
        ),
        "already_member",
    );
    let black = after(&g, cmd("a1", Action::Blacklist { user: "n".into() }));
    then_refused(
        &black,
        cmd(
            "o",
            Action::AddMember {
                user: "n".into(),
                role: Role::Member,
            },
        ),
        "blacklisted",
    );
    then_refused(
        &ConvState::empty("g7"),
        cmd(
            "o",
            Action::AddMember {
                user: "n".into(),
                role: Role::Member,
            },
        ),
        "conversation_not_found",
    );
}

#[test]
fn remove_only_lower_roles_and_never_the_owner() {
    let g = group();
    let s = after_exactly(
        &g,
        cmd("a1", Action::RemoveMember { user: "m1".into() }),
        vec![Kind::MemberRemoved(v1::MemberRemoved {
            user_id: "m1".into(),
        })],
    );
    assert!(!s.is_member("m1"));
    then_ok(&g, cmd("o", Action::RemoveMember { user: "a1".into() }));
    then_refused(
        &g,
        cmd("a1", Action::RemoveMember { user: "a2".into() }),
        "forbidden",
    );
    then_refused(
        &g,
        cmd("a1", Action::RemoveMember { user: "o".into() }),
        "forbidden",
    );
    then_refused(
        &g,
        cmd("m1", Action::RemoveMember { user: "m2".into() }),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::RemoveMember {
                user: "nobody".into(),
            },
        ),
        "not_member",
    );
    then_refused(
        &g,
        cmd("a1", Action::RemoveMember { user: "a1".into() }),
        "self_target",
    );
}

#[test]
fn leave_any_member_but_the_owner() {
    let g = group();
    let s = after_exactly(
        &g,
        cmd("m1", Action::Leave),
        vec![Kind::MemberLeft(v1::MemberLeft {})],
    );
    assert!(!s.is_member("m1"));
    then_ok(&g, cmd("a1", Action::Leave));
    then_refused(&g, cmd("o", Action::Leave), "owner_must_transfer");
    then_refused(&g, cmd("stranger", Action::Leave), "not_member");
    // After a transfer the old owner may leave.
    let t = after_exactly(
        &g,
        cmd("o", Action::TransferOwnership { user: "m1".into() }),
        vec![Kind::OwnershipTransferred(v1::OwnershipTransferred {
            user_id: "m1".into(),
        })],
    );
    assert_eq!(t.role_of("m1"), Some(Role::Owner));
    assert_eq!(t.role_of("o"), Some(Role::Admin));
    then_ok(&t, cmd("o", Action::Leave));
}

#[test]
fn role_change_and_transfer_owner_only() {
    let g = group();
    let s = after_exactly(
        &g,
        cmd(
            "o",
            Action::ChangeRole {
                user: "m1".into(),
                role: Role::Admin,
            },
        ),
        vec![Kind::RoleChanged(v1::RoleChanged {
            user_id: "m1".into(),
            role: v1::Role::Admin as i32,
        })],
    );
    assert_eq!(s.role_of("m1"), Some(Role::Admin));
    then_refused(
        &g,
        cmd(
            "a1",
            Action::ChangeRole {
                user: "m1".into(),
                role: Role::Admin,
            },
        ),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "o",
            Action::ChangeRole {
                user: "m1".into(),
                role: Role::Owner,
            },
        ),
        "invalid_argument",
    );
    then_refused(
        &g,
        cmd(
            "o",
            Action::ChangeRole {
                user: "o".into(),
                role: Role::Member,
            },
        ),
        "self_target",
    );
    then_refused(
        &g,
        cmd(
            "o",
            Action::ChangeRole {
                user: "zz".into(),
                role: Role::Member,
            },
        ),
        "not_member",
    );
    then_refused(
        &g,
        cmd("a1", Action::TransferOwnership { user: "m1".into() }),
        "forbidden",
    );
    then_refused(
        &g,
        cmd("o", Action::TransferOwnership { user: "zz".into() }),
        "not_member",
    );
    then_refused(
        &g,
        cmd("o", Action::TransferOwnership { user: "o".into() }),
        "self_target",
    );
}

#[test]
fn mute_and_unmute_over_lower_roles() {
    let g = group();
    let until = T0 + 10_000;
    let s = after_exactly(
        &g,
        cmd(
            "a1",
            Action::Mute {
                user: "m1".into(),
                until_ms: until,
            },
        ),
        vec![Kind::Muted(v1::MemberMuted {
            user_id: "m1".into(),
            until_ms: until,
        })],
    );
    assert_eq!(s.members["m1"].muted_until_ms, until);
    then_ok(
        &g,
        cmd(
            "o",
            Action::Mute {
                user: "a1".into(),
                until_ms: until,
            },
        ),
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::Mute {
                user: "a2".into(),
                until_ms: until,
            },
        ),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::Mute {
                user: "o".into(),
                until_ms: until,
            },
        ),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "m1",
            Action::Mute {
                user: "m2".into(),
                until_ms: until,
            },
        ),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::Mute {
                user: "m1".into(),
                until_ms: T0,
            },
        ),
        "invalid_argument",
    );
    let u = after_exactly(
        &s,
        cmd("a2", Action::Unmute { user: "m1".into() }),
        vec![Kind::Unmuted(v1::MemberUnmuted {
            user_id: "m1".into(),
        })],
    );
    assert_eq!(u.members["m1"].muted_until_ms, 0);
    then_ok(&u, cmd("m1", text("free")));
    then_refused(
        &g,
        cmd("a1", Action::Unmute { user: "m1".into() }),
        "not_muted",
    );
    then_refused(
        &s,
        cmd("m2", Action::Unmute { user: "m1".into() }),
        "forbidden",
    );
}

#[test]
fn blacklist_removes_membership_and_unblacklist_allows_readding() {
    let g = group();
    let s = after_exactly(
        &g,
        cmd("a1", Action::Blacklist { user: "m1".into() }),
        vec![Kind::Blacklisted(v1::MemberBlacklisted {
            user_id: "m1".into(),
        })],
    );
    assert!(!s.is_member("m1"));
    assert!(s.blacklist.contains("m1"));
    then_refused(
        &s,
        cmd("a1", Action::Blacklist { user: "m1".into() }),
        "already_blacklisted",
    );
    then_refused(
        &g,
        cmd("a1", Action::Blacklist { user: "a2".into() }),
        "forbidden",
    );
    then_refused(
        &g,
        cmd("a1", Action::Blacklist { user: "o".into() }),
        "forbidden",
    );
    then_refused(
        &g,
        cmd("m2", Action::Blacklist { user: "m1".into() }),
        "forbidden",
    );
    // A non-member can be blacklisted ahead of time.
    then_ok(
        &g,
        cmd(
            "a1",
            Action::Blacklist {
                user: "troll".into(),
            },
        ),
    );
    let u = after_exactly(
        &s,
        cmd("o", Action::Unblacklist { user: "m1".into() }),
        vec![Kind::Unblacklisted(v1::MemberUnblacklisted {
            user_id: "m1".into(),
        })],
    );
    assert!(!u.blacklist.contains("m1"));
    assert!(!u.is_member("m1"), "unblacklisting does not re-add");
    then_ok(
        &u,
        cmd(
            "a1",
            Action::AddMember {
                user: "m1".into(),
                role: Role::Member,
            },
        ),
    );
    then_refused(
        &g,
        cmd("a1", Action::Unblacklist { user: "m1".into() }),
        "not_blacklisted",
    );
    then_refused(
        &s,
        cmd("m2", Action::Unblacklist { user: "m1".into() }),
        "forbidden",
    );
}

// ---- recall and edit ----

fn group_with_message() -> ConvState {
    let mut s = group();
    let ev = then_ok(&s, cmd("m1", text("oops")));
    apply(&mut s, &ev[0]);
    s
}

#[test]
fn recall_by_sender_within_window_or_admin_any_time() {
    let s = group_with_message();
    let seq = s.conv_seq;
    let at = s.messages[&seq].sent_at_ms;
    let recall = |actor: &str| cmd(actor, Action::Recall { conv_seq: seq });
    assert!(decide(&s, &recall("m1"), at + RECALL_WINDOW_MS).is_ok());
    assert_eq!(
        decide(&s, &recall("m1"), at + RECALL_WINDOW_MS + 1)
            .unwrap_err()
            .code(),
        "recall_window_passed"
    );
    assert!(decide(&s, &recall("a1"), at + 10 * RECALL_WINDOW_MS).is_ok());
    assert!(decide(&s, &recall("o"), at + 10 * RECALL_WINDOW_MS).is_ok());
    then_refused(&s, recall("m2"), "not_sender");
    then_refused(&s, recall("stranger"), "not_member");
    let r = after_exactly(
        &s,
        recall("m1"),
        vec![Kind::MessageRecalled(v1::MessageRecalled {
            target_conv_seq: seq,
        })],
    );
    then_refused(&r, recall("a1"), "already_recalled");
    then_refused(
        &s,
        cmd("a1", Action::Recall { conv_seq: 1 }),
        "message_not_found",
    );
    then_refused(
        &s,
        cmd("a1", Action::Recall { conv_seq: 99 }),
        "message_not_found",
    );
}

#[test]
fn edit_by_sender_only() {
    let s = group_with_message();
    let seq = s.conv_seq;
    then_events(
        &s,
        cmd(
            "m1",
            Action::Edit {
                conv_seq: seq,
                text: "fixed".into(),
            },
        ),
        vec![Kind::MessageEdited(v1::MessageEdited {
            sealed: None,
            target_conv_seq: seq,
            text: "fixed".into(),
        })],
    );
    then_refused(
        &s,
        cmd(
            "a1",
            Action::Edit {
                conv_seq: seq,
                text: "fixed".into(),
            },
        ),
        "not_sender",
    );
    then_refused(
        &s,
        cmd(
            "m1",
            Action::Edit {
                conv_seq: seq,
                text: "".into(),
            },
        ),
        "invalid_argument",
    );
    let r = after(&s, cmd("m1", Action::Recall { conv_seq: seq }));
    then_refused(
        &r,
        cmd(
            "m1",
            Action::Edit {
                conv_seq: seq,
                text: "x".into(),
            },
        ),
        "already_recalled",
    );
    let gone = after(&s, cmd("a1", Action::RemoveMember { user: "m1".into() }));
    then_refused(
        &gone,
        cmd(
            "m1",
            Action::Edit {
                conv_seq: seq,
                text: "x".into(),
            },
        ),
        "not_member",
    );
}

#[test]
fn message_index_is_bounded_and_old_targets_say_so() {
    let mut history = vec![(
        "o",
        created_group(&[("o", Role::Owner), ("m1", Role::Member)]),
    )];
    for _ in 0..(MESSAGE_INDEX_MAX + 10) {
        history.push(("m1", sent("x")));
    }
    let s = given("g1", history);
    assert_eq!(s.messages.len(), MESSAGE_INDEX_MAX);
    then_refused(
        &s,
        cmd("o", Action::Recall { conv_seq: 3 }),
        "message_out_of_window",
    );
    then_ok(
        &s,
        cmd(
            "o",
            Action::Recall {
                conv_seq: s.conv_seq,
            },
        ),
    );
}

// ---- receipts, positions, duplicates ----

#[test]
fn receipts_members_only_and_not_past_the_end() {
    let s = group_with_message();
    assert!(check_receipt(&s, "m2", s.conv_seq).is_ok());
    assert_eq!(
        check_receipt(&s, "m2", s.conv_seq + 1).unwrap_err().code(),
        "cursor_beyond_end"
    );
    assert_eq!(
        check_receipt(&s, "stranger", 1).unwrap_err().code(),
        "not_member"
    );
    assert_eq!(
        check_receipt(&s, "m2", 0).unwrap_err().code(),
        "invalid_argument"
    );
    assert_eq!(
        check_receipt(&ConvState::empty("x"), "m2", 1)
            .unwrap_err()
            .code(),
        "conversation_not_found"
    );
}

#[test]
fn events_continue_the_sequence_and_chain_from_the_last_hash() {
    let s = group_with_message();
    let ev = then_events(&s, cmd("m2", text("next")), vec![sent("next")]);
    assert_eq!(ev[0].conv_seq, s.conv_seq + 1);
    assert_eq!(ev[0].prev_hash, s.last_hash.to_vec());
    assert_eq!(ev[0].client_msg_id, "c1");
    assert_eq!(ev[0].schema_version, im_schema::SCHEMA_VERSION);
}

#[test]
fn find_sent_answers_a_retry_of_a_recent_send() {
    let s = group_with_message();
    let (seq, meta) = s.find_sent("m1", "c1").expect("recent send is indexed");
    assert_eq!(seq, s.conv_seq);
    assert_eq!(
        (meta.sender.as_str(), meta.client_msg_id.as_str()),
        ("m1", "c1")
    );
    assert!(s.find_sent("m2", "c1").is_none());
}

#[test]
fn unknown_roles_read_as_the_lowest_privilege() {
    assert_eq!(Role::from_wire(99), Role::Member);
    assert_eq!(Role::from_wire(0), Role::Member);
    assert_eq!(Role::from_wire(v1::Role::Owner as i32), Role::Owner);
}

#[test]
fn replaying_decide_is_deterministic() {
    let s = group();
    let c = cmd("m1", text("same"));
    assert_eq!(decide(&s, &c, T0 + 5), decide(&s, &c, T0 + 5));
}

fn users(prefix: &str, n: usize) -> Vec<(String, Role)> {
    (0..n)
        .map(|i| (format!("{prefix}{i:06}"), Role::Member))
        .collect()
}

fn members_added(users: &[(String, Role)]) -> Kind {
    Kind::MembersAdded(v1::MembersAdded {
        members: users
            .iter()
            .map(|(u, r)| v1::InitialMember {
                user_id: u.clone(),
                role: r.to_wire() as i32,
            })
            .collect(),
    })
}

#[test]
fn a_large_creation_is_split_into_events_the_stream_takes() {
    let empty = ConvState::empty("big");
    // Ids at their longest: 1,200 of them do not fit one event.
    let others: Vec<(String, Role)> = (0..1_200)
        .map(|i| (format!("u{i:0>63}"), Role::Member))
        .collect();
    let create = Action::CreateGroup {
        title: "big".into(),
        members: others.clone(),
    };
    let mut first: Vec<(&str, Role)> = vec![("o", Role::Owner)];
    first.extend(
        others[..MEMBERS_PER_EVENT_MAX - 1]
            .iter()
            .map(|(u, r)| (u.as_str(), *r)),
    );
    first.sort();
    let mut created = group_created(&first);
    created.title = "big".into();
    let events = then_events(
        &empty,
        cmd("o", create),
        vec![
            Kind::Created(created),
            members_added(&others[MEMBERS_PER_EVENT_MAX - 1..2 * MEMBERS_PER_EVENT_MAX - 1]),
            members_added(&others[2 * MEMBERS_PER_EVENT_MAX - 1..]),
        ],
    );
    // A command adds at most MEMBERS_PER_COMMAND_MAX besides its actor.
    let most = Action::CreateGroup {
        title: "t".into(),
        members: users("x", MEMBERS_PER_COMMAND_MAX),
    };
    then_ok(&ConvState::empty("most"), cmd("o", most));
    let past = Action::CreateGroup {
        title: "t".into(),
        members: users("x", MEMBERS_PER_COMMAND_MAX + 1),
    };
    then_refused(&ConvState::empty("past"), cmd("o", past), "too_large");
    // The largest event, with every id at its longest, fits the stream.
    let longest: Vec<(String, Role)> = (0..MEMBERS_PER_EVENT_MAX)
        .map(|i| (format!("{i:0>64}"), Role::Admin))
        .collect();
    let mut big = events[1].clone();
    big.kind = Some(members_added(&longest));
    let bytes = im_schema::encode(&big).len();
    assert!(bytes < 60 * 1024, "{bytes} bytes");
}

/// A creation that fits one event stays one event, as every creation did
/// before bulk adds: those in the log replay to themselves.
#[test]
fn a_creation_that_fits_one_event_stays_one() {
    let others = users("m", 2_000);
    let events = then_ok(
        &ConvState::empty("fits"),
        cmd(
            "o",
            Action::CreateGroup {
                title: "t".into(),
                members: others,
            },
        ),
    );
    assert_eq!(events.len(), 1);
    let Some(Kind::Created(c)) = &events[0].kind else {
        panic!()
    };
    assert_eq!(c.members.len(), 2_001);
}

#[test]
fn a_bulk_add_skips_members_and_is_refused_past_its_limits() {
    let g = group();
    let new = users("n", 3);
    let mut asked = new.clone();
    asked.push(("m1".into(), Role::Member));
    then_events(
        &g,
        cmd("a1", Action::AddMembers { users: asked }),
        vec![members_added(&new)],
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::AddMembers {
                users: vec![("m1".into(), Role::Member)],
            },
        ),
        "already_member",
    );
    then_refused(
        &g,
        cmd("m1", Action::AddMembers { users: new.clone() }),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::AddMembers {
                users: vec![("n1".into(), Role::Admin)],
            },
        ),
        "forbidden",
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::AddMembers {
                users: users("x", MEMBERS_PER_COMMAND_MAX + 1),
            },
        ),
        "too_large",
    );
    then_refused(
        &g,
        cmd(
            "a1",
            Action::AddMembers {
                users: vec![("bad id".into(), Role::Member)],
            },
        ),
        "invalid_argument",
    );
}

#[test]
fn a_group_is_full_at_its_limit() {
    let mut g = group();
    for chunk in users("f", GROUP_MEMBERS_MAX - g.members.len()).chunks(MEMBERS_PER_EVENT_MAX) {
        let ev = v1::ConvEvent {
            conversation_id: "g1".into(),
            conv_seq: g.conv_seq + 1,
            kind: Some(members_added(chunk)),
            ..Default::default()
        };
        apply(&mut g, &ev);
    }
    assert_eq!(g.members.len(), GROUP_MEMBERS_MAX);
    then_refused(
        &g,
        cmd(
            "o",
            Action::AddMembers {
                users: users("z", 1),
            },
        ),
        "group_full",
    );
}
