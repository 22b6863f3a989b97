//! The group state machine, given/when/then: which users a delivery goes
//! to, and when the projector is asked.

use super::*;

fn state(
    conv: &str,
    members_seq: u64,
    last_seq: u64,
    position: u64,
    members: &[&str],
) -> v1::GroupState {
    v1::GroupState {
        conversation_id: conv.into(),
        members_seq,
        last_seq,
        position,
        members: members.iter().map(|m| m.to_string()).collect(),
        large: true,
    }
}

fn msg(conv_seq: u64, stream_seq: u64, members_seq: u64) -> GroupDelivery<'static> {
    GroupDelivery {
        conv_seq,
        stream_seq,
        members_seq,
        ..Default::default()
    }
}

fn sids() -> impl FnMut() -> u64 {
    let mut n = 0;
    move || {
        n += 1;
        n
    }
}

fn sorted(users: Vec<Box<str>>) -> Vec<String> {
    let mut v: Vec<String> = users.into_iter().map(String::from).collect();
    v.sort();
    v
}

const HERE: &dyn Fn(&str) -> bool = &|_| true;

/// ann and bob connected while the group's last change was seq 3.
fn two_members() -> Groups {
    let mut g = Groups::default();
    let mut sid = sids();
    let steps = g.connected("ann", &state("big", 3, 10, 100, &["ann"]), &mut sid);
    assert_eq!(
        steps,
        [Step::Subscribe {
            conv: "big".into(),
            sid: 1
        }]
    );
    assert!(g
        .connected("bob", &state("big", 3, 10, 100, &["bob"]), &mut sid)
        .is_empty());
    g
}

#[test]
fn a_delivery_on_the_chain_goes_to_the_members_here() {
    let mut g = two_members();
    let (to, steps) = g.delivery("big", &msg(11, 101, 3), HERE);
    assert_eq!(sorted(to), ["ann", "bob"]);
    assert!(steps.is_empty());
    // Covered by the answers the members came with: nothing.
    let (to, _) = g.delivery("big", &msg(10, 100, 3), HERE);
    assert!(to.is_empty());
    // Another group: nothing.
    assert!(g.delivery("other", &msg(1, 102, 0), HERE).0.is_empty());
}

#[test]
fn a_removed_member_gets_the_removal_and_nothing_after() {
    let mut g = two_members();
    let removal = GroupDelivery {
        left: vec!["bob"],
        ..msg(11, 101, 3)
    };
    let (to, _) = g.delivery("big", &removal, HERE);
    assert_eq!(sorted(to), ["ann", "bob"], "bob learns of his removal");
    let (to, steps) = g.delivery("big", &msg(12, 102, 11), HERE);
    assert_eq!(sorted(to), ["ann"]);
    assert!(steps.is_empty());
}

#[test]
fn a_member_added_while_connected_is_routed_from_the_change_on() {
    let mut g = two_members();
    let added = GroupDelivery {
        joined: vec!["cat"],
        ..msg(11, 101, 3)
    };
    let (to, _) = g.delivery("big", &added, &|u| u == "cat");
    assert_eq!(sorted(to), ["ann", "bob"], "cat has her own copy");
    // Her own copy arrives next: already a member here, no ask.
    assert!(g.joined("cat", "big", &mut sids()).is_empty());
    let (to, _) = g.delivery("big", &msg(12, 102, 11), HERE);
    assert_eq!(sorted(to), ["ann", "bob", "cat"]);
}

#[test]
fn a_broken_chain_routes_nothing_until_the_answer_then_notifies() {
    let mut g = two_members();
    // A change at seq 11 never came: the chain says 11, here it is 3.
    let (to, steps) = g.delivery("big", &msg(12, 102, 11), HERE);
    assert!(
        to.is_empty(),
        "not routed on a membership it cannot vouch for"
    );
    let Some(Step::Ask { users, .. }) = steps.into_iter().next() else {
        panic!("an ask")
    };
    assert_eq!(sorted(users), ["ann", "bob"]);
    // More comes while asking: nothing routed, nothing asked twice.
    let (to, steps) = g.delivery("big", &msg(13, 103, 11), HERE);
    assert!(to.is_empty() && steps.is_empty());
    // The answer: bob was removed at 11.
    let steps = g.answered("big", Some(&state("big", 11, 12, 102, &["ann"])));
    assert_eq!(
        steps,
        [Step::Notify {
            conv: "big".into(),
            users: vec!["ann".into()],
            conv_seq: 13,
            position: 102
        }]
    );
    let (to, _) = g.delivery("big", &msg(14, 104, 11), HERE);
    assert_eq!(sorted(to), ["ann"]);
}

#[test]
fn one_ask_at_a_time_and_a_failed_one_waits_for_the_next_occasion() {
    let mut g = Groups::default();
    let mut sid = sids();
    let steps = g.joined("ann", "big", &mut sid);
    assert!(
        matches!(&steps[..], [Step::Subscribe { .. }, Step::Ask { .. }]),
        "{steps:?}"
    );
    assert!(
        g.joined("bob", "big", &mut sid).is_empty(),
        "asked after the first"
    );
    g.ask_failed("big");
    let (to, steps) = g.delivery("big", &msg(5, 50, 4), HERE);
    assert!(to.is_empty());
    let Some(Step::Ask { users, .. }) = steps.into_iter().next() else {
        panic!("asked again")
    };
    assert_eq!(sorted(users), ["ann", "bob"]);
    let steps = g.answered("big", Some(&state("big", 4, 5, 50, &["ann", "bob"])));
    assert!(
        matches!(&steps[..], [Step::Notify { conv_seq: 5, .. }]),
        "{steps:?}"
    );
}

#[test]
fn the_last_user_to_leave_unsubscribes_and_a_non_member_is_never_routed() {
    let mut g = two_members();
    assert!(g.left("ann").is_empty());
    assert_eq!(g.left("bob"), [Step::Unsubscribe { sid: 1 }]);
    assert_eq!(g.len(), 0);
    // Asked about someone who turns out not to be a member.
    let mut sid = sids();
    g.joined("eve", "big", &mut sid);
    let steps = g.answered("big", Some(&state("big", 4, 5, 50, &[])));
    assert_eq!(steps, [Step::Unsubscribe { sid: 1 }]);
    assert!(g.delivery("big", &msg(6, 60, 4), HERE).0.is_empty());
}

#[test]
fn after_a_reconnect_every_group_asks_again() {
    let mut g = two_members();
    let steps = g.resubscribed();
    let Some(Step::Ask { users, .. }) = steps.into_iter().next() else {
        panic!("an ask")
    };
    assert_eq!(sorted(users), ["ann", "bob"]);
    assert!(g.delivery("big", &msg(11, 101, 3), HERE).0.is_empty());
}

#[test]
fn a_user_who_leaves_while_asked_about_is_not_brought_back() {
    let mut g = two_members();
    g.joined("cat", "big", &mut sids());
    assert!(g.left("cat").is_empty());
    let steps = g.answered("big", Some(&state("big", 3, 10, 100, &["cat"])));
    assert!(steps.is_empty(), "{steps:?}");
    let (to, _) = g.delivery("big", &msg(11, 101, 3), HERE);
    assert_eq!(sorted(to), ["ann", "bob"]);
    assert!(g.left("ann").is_empty());
    assert_eq!(
        g.left("bob"),
        [Step::Unsubscribe { sid: 1 }],
        "no ghost keeps it"
    );
}

#[test]
fn a_failed_ask_is_tried_again_on_an_intact_chain_and_its_notice_covers_what_went_by() {
    let mut g = two_members();
    let steps = g.joined("cat", "big", &mut sids());
    assert!(matches!(&steps[..], [Step::Ask { .. }]), "{steps:?}");
    g.ask_failed("big");
    let (to, steps) = g.delivery("big", &msg(11, 101, 3), HERE);
    assert_eq!(sorted(to), ["ann", "bob"]);
    let Some(Step::Ask { users, .. }) = steps.into_iter().next() else {
        panic!("asked again")
    };
    assert_eq!(sorted(users), ["cat"]);
    // Another message goes by before the answer, past its position.
    g.delivery("big", &msg(12, 102, 3), HERE);
    let steps = g.answered("big", Some(&state("big", 3, 11, 101, &["cat"])));
    assert!(
        matches!(&steps[..], [Step::Notify { conv_seq: 12, .. }]),
        "{steps:?}"
    );
}
