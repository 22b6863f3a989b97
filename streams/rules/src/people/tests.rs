//! Given/when/then tests of the people rules, asserting the exact events.

use super::*;
use crate::conversation::{apply, decide, Command};
use crate::ids::{pair_log_id, user_log_id};
use crate::seal::seal;
use crate::verdict::check_event;

const T0: i64 = 1_700_000_000_000;

/// Runs each (actor, action) through the rules on the log, as writers do,
/// and checks every event it appends as the auditor does.
fn given(log: &str, history: &[(&str, Action)]) -> ConvState {
    let mut state = ConvState::empty(log);
    for (i, (actor, action)) in history.iter().enumerate() {
        let events = decide(&state, &cmd(actor, action.clone()), T0 + i as i64)
            .unwrap_or_else(|r| panic!("given step {i}: {r}"));
        for s in seal(&state, events) {
            assert_eq!(check_event(&state, &s.event), Ok(()), "step {i}");
            let pos = state.version + 1;
            state.extend(&s, pos);
        }
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

/// The event kinds a command appends.
fn when(state: &ConvState, actor: &str, action: Action) -> Result<Vec<Kind>, Rejection> {
    let events = decide(state, &cmd(actor, action), T0 + 100)?;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.actor, actor, "event {i}");
        assert_eq!(e.at_ms, T0 + 100);
    }
    Ok(events.into_iter().map(|e| e.kind.expect("kind")).collect())
}

fn pair() -> String {
    pair_log_id("ann", "bob").unwrap()
}

fn req(user: &str) -> Action {
    Action::RequestContact { user: user.into() }
}
fn accept(user: &str) -> Action {
    Action::AcceptContact { user: user.into() }
}
fn block(user: &str) -> Action {
    Action::BlockUser { user: user.into() }
}
fn unblock(user: &str) -> Action {
    Action::UnblockUser { user: user.into() }
}

fn pair_created() -> Kind {
    Kind::Created(v1::ConversationCreated {
        kind: v1::ConversationKind::Pair as i32,
        title: String::new(),
        members: ["ann", "bob"]
            .iter()
            .map(|u| v1::InitialMember {
                user_id: u.to_string(),
                role: v1::Role::Member as i32,
            })
            .collect(),
    })
}

fn requested(user: &str, hidden: bool) -> Kind {
    Kind::ContactRequested(v1::ContactRequested {
        user_id: user.into(),
        hidden,
    })
}

#[test]
fn a_first_request_creates_the_pairs_log() {
    let then = when(&ConvState::empty(pair()), "ann", req("bob"));
    assert_eq!(then, Ok(vec![pair_created(), requested("bob", false)]));
}

#[test]
fn a_pairs_log_is_only_made_under_its_derived_id() {
    let other = pair_log_id("ann", "cat").unwrap();
    assert!(matches!(
        when(&ConvState::empty(other), "ann", req("bob")),
        Err(Rejection::Invalid { .. })
    ));
    assert_eq!(
        when(
            &ConvState::empty(pair_log_id("ann", "ann").unwrap()),
            "ann",
            req("ann")
        ),
        Err(Rejection::SelfTarget)
    );
}

#[test]
fn accepting_makes_both_contacts() {
    let state = given(&pair(), &[("ann", req("bob"))]);
    let then = when(&state, "bob", accept("ann"));
    let accepted = Kind::ContactAccepted(v1::ContactAccepted {
        user_id: "ann".into(),
    });
    assert_eq!(then, Ok(vec![accepted]));
    let state = given(&pair(), &[("ann", req("bob")), ("bob", accept("ann"))]);
    assert_eq!(state.people.contact, Contact::Contacts);
    assert_eq!(
        when(&state, "ann", req("bob")),
        Err(Rejection::AlreadyContacts)
    );
    // Only the asked accepts.
    let pending = given(&pair(), &[("ann", req("bob"))]);
    assert_eq!(
        when(&pending, "ann", accept("bob")),
        Err(Rejection::NoRequest)
    );
    assert_eq!(
        when(&pending, "ann", req("bob")),
        Err(Rejection::AlreadyRequested)
    );
}

#[test]
fn asking_back_accepts() {
    let state = given(&pair(), &[("ann", req("bob"))]);
    let then = when(&state, "bob", req("ann"));
    let accepted = Kind::ContactAccepted(v1::ContactAccepted {
        user_id: "ann".into(),
    });
    assert_eq!(then, Ok(vec![accepted]));
}

#[test]
fn declining_and_removing_end_the_request_or_the_contact() {
    let pending = given(&pair(), &[("ann", req("bob"))]);
    let declined = Kind::ContactDeclined(v1::ContactDeclined {
        user_id: "ann".into(),
    });
    assert_eq!(
        when(
            &pending,
            "bob",
            Action::DeclineContact { user: "ann".into() }
        ),
        Ok(vec![declined])
    );
    // The asker withdraws their own request; the asked declines instead.
    let removed = |u: &str| {
        Kind::ContactRemoved(v1::ContactRemoved {
            user_id: u.into(),
            hidden: false,
        })
    };
    let remove = |u: &str| Action::RemoveContact { user: u.into() };
    assert_eq!(
        when(&pending, "ann", remove("bob")),
        Ok(vec![removed("bob")])
    );
    assert_eq!(
        when(&pending, "bob", remove("ann")),
        Err(Rejection::NotContacts)
    );
    let contacts = given(&pair(), &[("ann", req("bob")), ("bob", accept("ann"))]);
    assert_eq!(
        when(&contacts, "bob", remove("ann")),
        Ok(vec![removed("ann")])
    );
    let ended = given(
        &pair(),
        &[
            ("ann", req("bob")),
            ("bob", accept("ann")),
            ("bob", remove("ann")),
        ],
    );
    assert_eq!(ended.people.contact, Contact::None);
    assert_eq!(
        when(&ended, "ann", remove("bob")),
        Err(Rejection::NotContacts)
    );
}

#[test]
fn a_request_to_someone_who_blocks_you_is_recorded_hidden() {
    let blocked = given(&pair(), &[("bob", block("ann"))]);
    // The asker is answered as for any request; the rules mark it hidden.
    assert_eq!(
        when(&blocked, "ann", req("bob")),
        Ok(vec![requested("bob", true)])
    );
    let asked = given(&pair(), &[("bob", block("ann")), ("ann", req("bob"))]);
    // Asking again reads as any pending request would.
    assert_eq!(
        when(&asked, "ann", req("bob")),
        Err(Rejection::AlreadyRequested)
    );
    // The blocker cannot see it, so cannot accept or decline it.
    assert_eq!(
        when(&asked, "bob", accept("ann")),
        Err(Rejection::NoRequest)
    );
    // Once unblocked, asking again makes a request the other sees.
    let lifted = given(
        &pair(),
        &[
            ("bob", block("ann")),
            ("ann", req("bob")),
            ("bob", unblock("ann")),
        ],
    );
    assert_eq!(
        when(&lifted, "ann", req("bob")),
        Ok(vec![requested("bob", false)])
    );
}

#[test]
fn the_blocked_is_told_of_no_block_hidden_request_or_its_withdrawal() {
    let asked = given(&pair(), &[("bob", block("ann")), ("ann", req("bob"))]);
    let withdrawn = when(&asked, "ann", Action::RemoveContact { user: "bob".into() });
    let hidden = Kind::ContactRemoved(v1::ContactRemoved {
        user_id: "bob".into(),
        hidden: true,
    });
    assert_eq!(withdrawn, Ok(vec![hidden.clone()]));
    let told = |kind: Kind| {
        other_is_told(&v1::ConvEvent {
            kind: Some(kind),
            ..Default::default()
        })
    };
    assert!(!told(hidden));
    assert!(!told(requested("bob", true)));
    assert!(!told(Kind::UserBlocked(v1::UserBlocked {
        user_id: "bob".into()
    })));
    assert!(!told(Kind::UserUnblocked(v1::UserUnblocked {
        user_id: "bob".into()
    })));
    assert!(told(requested("bob", false)));
    assert!(told(Kind::ContactAccepted(v1::ContactAccepted {
        user_id: "x".into()
    })));
}

#[test]
fn blocks_are_per_side_and_lifted_only_by_the_blocker() {
    let blocked = given(&pair(), &[("ann", block("bob"))]);
    assert_eq!(blocked.people.blocked_by, ["ann".to_string()].into());
    assert_eq!(
        when(&blocked, "ann", block("bob")),
        Err(Rejection::AlreadyBlocked)
    );
    assert_eq!(
        when(&blocked, "bob", unblock("ann")),
        Err(Rejection::NotBlocked)
    );
    // The blocker must unblock before asking or accepting.
    assert_eq!(
        when(&blocked, "ann", req("bob")),
        Err(Rejection::UnblockFirst)
    );
    let unblocked = Kind::UserUnblocked(v1::UserUnblocked {
        user_id: "bob".into(),
    });
    assert_eq!(when(&blocked, "ann", unblock("bob")), Ok(vec![unblocked]));
    let asked_then_blocked = given(&pair(), &[("bob", req("ann")), ("ann", block("bob"))]);
    assert_eq!(
        when(&asked_then_blocked, "ann", accept("bob")),
        Err(Rejection::UnblockFirst)
    );
}

#[test]
fn no_one_but_the_pair_acts_on_its_log() {
    let state = given(&pair(), &[("ann", req("bob"))]);
    assert!(matches!(
        when(&state, "cat", req("bob")),
        Err(Rejection::Invalid { .. })
    ));
}

fn profile(name: &str) -> Action {
    Action::UpdateProfile {
        display_name: name.into(),
        avatar: None,
        status: String::new(),
    }
}

#[test]
fn a_profile_is_the_users_own_and_stored_normalised() {
    let log = user_log_id("ann").unwrap();
    // "e" and a combining acute accent is stored as one precomposed "é".
    let then = when(
        &ConvState::empty(log.clone()),
        "ann",
        profile("  Rene\u{301} 李雷 "),
    );
    let created = Kind::Created(v1::ConversationCreated {
        kind: v1::ConversationKind::User as i32,
        title: String::new(),
        members: vec![v1::InitialMember {
            user_id: "ann".into(),
            role: v1::Role::Owner as i32,
        }],
    });
    let updated = Kind::ProfileUpdated(v1::ProfileUpdated {
        sealed: None,
        display_name: "René 李雷".into(),
        avatar: None,
        status: String::new(),
    });
    assert_eq!(then, Ok(vec![created, updated]));
    // Nobody writes another's profile, nor makes their log.
    let state = given(&log, &[("ann", profile("Ann"))]);
    assert_eq!(when(&state, "bob", profile("x")), Err(Rejection::Forbidden));
    assert!(matches!(
        when(&ConvState::empty(log), "bob", profile("x")),
        Err(Rejection::Invalid { .. })
    ));
}

#[test]
fn display_names_are_counted_in_graphemes_and_refuse_controls() {
    // 64 user-perceived characters: Chinese, emoji sequences, combining marks.
    let units = [
        "李",
        "👩‍👩‍👧",
        "e\u{301}",
        "🇨🇳",
        "a\u{308}\u{332}",
        "雷",
        "👍🏽",
        "x",
    ];
    let name: String = units.iter().cycle().take(64).copied().collect();
    assert_eq!(name.graphemes(true).count(), 64);
    let ok = profile_text("display_name", &name, 1, DISPLAY_NAME_GRAPHEMES_MAX);
    assert!(ok.is_ok(), "{ok:?}");
    let long: String = units.iter().cycle().take(65).copied().collect();
    assert_eq!(
        profile_text("display_name", &long, 1, DISPLAY_NAME_GRAPHEMES_MAX),
        Err(Rejection::TooLarge {
            what: "display_name (characters)".into(),
            len: 65,
            max: 64
        })
    );
    for bad in [
        "",
        "   ",
        "a\u{0}b",
        "a\nb",
        "\u{7f}",
        "a\u{85}b",
        "a\u{202E}b",
        "a\u{2028}b",
    ] {
        assert!(
            matches!(
                profile_text("display_name", bad, 1, DISPLAY_NAME_GRAPHEMES_MAX),
                Err(Rejection::Invalid { .. })
            ),
            "{bad:?}"
        );
    }
    let zalgo = format!("a{}", "\u{301}".repeat(2_000));
    assert!(matches!(
        profile_text("display_name", &zalgo, 1, DISPLAY_NAME_GRAPHEMES_MAX),
        Err(Rejection::TooLarge { .. })
    ));
    // One grapheme of a thousand marks fits the bytes, not the grapheme bound.
    let stacked = format!("a{}", "\u{301}".repeat(1_000));
    assert!(matches!(
        display_name_of(&stacked),
        Err(Rejection::Invalid { .. })
    ));
    // Names that show nothing, or hide text (found in a user trial).
    let invisible = [
        "\u{200B}",
        "\u{200D}",
        "\u{FEFF}",
        "\u{3164}",
        "\u{2800}",
        "\u{301}",
        "\u{200F}",
        "a\u{200E}b",
        "a\u{61C}b",
    ];
    for name in invisible {
        let refused = display_name_of(name);
        assert!(
            matches!(refused, Err(Rejection::Invalid { .. })),
            "{name:?}"
        );
    }
    // Emoji sequences keep their joiners.
    assert_eq!(display_name_of("👩‍👩‍👧 Ann").unwrap(), "👩‍👩‍👧 Ann");
}

#[test]
fn an_avatar_is_an_image() {
    let pdf = Action::UpdateProfile {
        display_name: "Ann".into(),
        avatar: Some(v1::MediaRef {
            media_id: "m1".into(),
            mime: "application/pdf".into(),
            ..Default::default()
        }),
        status: String::new(),
    };
    let log = user_log_id("ann").unwrap();
    assert!(matches!(
        when(&ConvState::empty(log), "ann", pdf),
        Err(Rejection::Invalid { .. })
    ));
}

fn privacy(direct: Audience, groups: Audience) -> Action {
    Action::SetPrivacy {
        direct_chats: direct,
        group_adds: groups,
    }
}

#[test]
fn reaching_someone_follows_their_privacy_and_blocks() {
    let bob_open = given(&user_log_id("bob").unwrap(), &[]);
    let bob_closed = given(
        &user_log_id("bob").unwrap(),
        &[("bob", privacy(Audience::Contacts, Audience::Contacts))],
    );
    let strangers = ConvState::empty(pair());
    let contacts = given(&pair(), &[("ann", req("bob")), ("bob", accept("ann"))]);
    let blocked = given(&pair(), &[("bob", block("ann"))]);
    let blocking = given(&pair(), &[("ann", block("bob"))]);
    let refused = Err(Rejection::NotAccepting { user: "bob".into() });
    for reach in [Reach::DirectChat, Reach::GroupAdd] {
        let check = |log: &ConvState, pair: &ConvState| {
            check_reach("ann", "bob", reach, &log.people, &pair.people)
        };
        assert_eq!(check(&bob_open, &strangers), Ok(()));
        assert_eq!(check(&bob_closed, &strangers), refused);
        assert_eq!(check(&bob_closed, &contacts), Ok(()));
        // A block reads as the privacy refusal, whatever the privacy.
        assert_eq!(check(&bob_open, &blocked), refused);
        assert_eq!(check(&bob_open, &blocking), Err(Rejection::UnblockFirst));
    }
    let direct_only = given(
        &user_log_id("bob").unwrap(),
        &[("bob", privacy(Audience::Contacts, Audience::Everyone))],
    );
    assert_eq!(
        check_reach(
            "ann",
            "bob",
            Reach::GroupAdd,
            &direct_only.people,
            &strangers.people
        ),
        Ok(())
    );
}

#[test]
fn only_new_members_and_new_direct_chats_need_the_other_logs() {
    let send = |peer: &str| Action::Send {
        peer: Some(peer.into()),
        body: crate::conversation::MessageBody::Text("hi".into()),
        meta: Default::default(),
    };
    let dm = crate::ids::direct_conversation_id("ann", "bob").unwrap();
    assert_eq!(
        reach_of(&ConvState::empty(dm.clone()), "ann", &send("bob")),
        Some((Reach::DirectChat, vec!["bob".to_string()]))
    );
    let mut existing = ConvState::empty(dm);
    existing.kind = Some(ConvKind::Direct);
    assert_eq!(reach_of(&existing, "ann", &send("bob")), None);
    let mut group = ConvState::empty("g");
    group.kind = Some(ConvKind::Group);
    group.members.insert(
        "cat".into(),
        crate::conversation::MemberState {
            role: Role::Member,
            muted_until_ms: 0,
        },
    );
    let add = Action::AddMembers {
        users: vec![("cat".into(), Role::Member), ("bob".into(), Role::Member)],
    };
    assert_eq!(
        reach_of(&group, "ann", &add),
        Some((Reach::GroupAdd, vec!["bob".to_string()]))
    );
    assert_eq!(reach_of(&group, "ann", &Action::Leave), None);
}

#[test]
fn conversation_commands_are_refused_on_people_logs_and_back() {
    let state = given(&pair(), &[("ann", req("bob"))]);
    let send = Action::Send {
        peer: None,
        body: crate::conversation::MessageBody::Text("hi".into()),
        meta: Default::default(),
    };
    assert!(matches!(
        when(&state, "ann", send),
        Err(Rejection::Invalid { .. })
    ));
    let mut group = ConvState::empty("g");
    group.kind = Some(ConvKind::Group);
    assert!(matches!(
        when(&group, "ann", req("bob")),
        Err(Rejection::Invalid { .. })
    ));
    // Group ids may not take the people prefixes.
    let create = Action::CreateGroup {
        title: "t".into(),
        members: vec![],
    };
    assert!(matches!(
        when(&ConvState::empty("ct_x"), "ann", create),
        Err(Rejection::Invalid { .. })
    ));
}

#[test]
fn a_forged_hidden_flag_or_foreign_actor_is_not_what_the_rules_produce() {
    let blocked = given(&pair(), &[("bob", block("ann"))]);
    let mut events = decide(&blocked, &cmd("ann", req("bob")), T0).unwrap();
    // A request shown to a blocker although the rules hide it.
    events[0].kind = Some(requested("bob", false));
    let forged = seal(&blocked, events).remove(0).event;
    assert_eq!(
        check_event(&blocked, &forged).map_err(|e| e.code()),
        Err("not_produced")
    );
    // Someone else's request on this pair's log.
    let mut state = blocked.clone();
    let mut ev = decide(&state, &cmd("ann", block("bob")), T0)
        .unwrap()
        .remove(0);
    ev.actor = "cat".into();
    let ev = seal(&state, vec![ev]).remove(0).event;
    assert!(check_event(&state, &ev).is_err());
    apply(&mut state, &ev);
}

fn erase(by: &str) -> Action {
    Action::EraseUser {
        requested_by: by.into(),
    }
}

#[test]
fn an_erasure_is_recorded_on_the_users_own_log_by_them_only() {
    let log = user_log_id("ann").unwrap();
    let state = given(&log, &[("ann", profile("Ann"))]);
    assert_eq!(
        when(&state, "ann", erase("operator alice")),
        Ok(vec![Kind::UserErased(v1::UserErased {
            requested_by: "operator alice".into(),
        })])
    );
    assert_eq!(
        when(&state, "bob", erase("self")),
        Err(Rejection::Forbidden)
    );
    assert!(matches!(
        when(&state, "ann", erase("")),
        Err(Rejection::Invalid { .. })
    ));
    assert!(matches!(
        when(&state, "ann", erase(&"x".repeat(129))),
        Err(Rejection::Invalid { .. })
    ));
}
