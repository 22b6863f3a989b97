//! The client's recovery against the real parts: nats-server, streams, a
//! projector and a gateway in-process.

mod common;

use std::collections::BTreeMap;

use common::*;
use im_client::{ConnectOptions, Connection};
use im_schema::v1::{self, envelope::Payload};
use im_streams::conversation::{Action, Role};

#[tokio::test]
async fn back_from_offline_a_client_has_every_message_once_and_in_order() {
    // A tight send rate: the client must retry refused sends, in order.
    let limits = im_gateway::Limits {
        sends_per_sec: 20,
        send_burst: 5,
        ..Default::default()
    };
    let s = stack_with(im_projectors::DEFAULT_FANOUT_THRESHOLD, limits).await;
    let mut alice = s.client("alice", BTreeMap::new());
    let mut bob = s.client("bob", BTreeMap::new());
    let first = alice.send(text("", "bob", "m0", "m0")).await.unwrap();
    assert_eq!(first.status(), v1::AckStatus::Stored);
    let conv = first.conversation_id;
    let seen = events_until(&mut bob, 1).await;
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    let known = bob.known();
    drop(bob);
    for i in 1..=50 {
        let id = format!("m{i}");
        let ack = alice.send(text(&conv, "", &id, &id)).await.unwrap();
        assert_eq!(ack.status(), v1::AckStatus::Stored, "{ack:?}");
    }
    assert!(alice.stats().resends > 0, "{:?}", alice.stats());
    let mut bob = s.client("bob", known);
    let back = events_until(&mut bob, 50).await;
    let want: Vec<String> = (1..=50).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&back), want);
    assert_eq!(
        back.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (3..=52).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn notifications_without_events_are_filled_from_history() {
    let s = stack(1).await;
    let owner = s.kit.appender().await;
    let create = im_streams::Command {
        actor: "carol".into(),
        client_msg_id: "create".into(),
        action: Action::CreateGroup {
            title: "big".into(),
            members: vec![("dave".into(), Role::Member), ("erin".into(), Role::Member)],
        },
    };
    owner.execute("big", &create, "").await.unwrap();
    let mut carol = s.client("carol", BTreeMap::new());
    let mut dave = s.client("dave", BTreeMap::new());
    assert_eq!(
        events_until(&mut dave, 0).await.len(),
        1,
        "the creation, from sync"
    );
    for i in 0..5 {
        carol
            .send(text("big", "", &format!("n{i}"), &format!("n{i}")))
            .await
            .unwrap();
    }
    let got = events_until(&mut dave, 5).await;
    assert_eq!(texts(&got), ["n0", "n1", "n2", "n3", "n4"]);
}

#[tokio::test]
async fn a_send_whose_answer_was_lost_is_stored_once_when_sent_again() {
    let s = stack(im_projectors::DEFAULT_FANOUT_THRESHOLD).await;
    let token = im_gateway::auth::issue_hs256(SECRET, "frank", 3600);
    let mut raw = Connection::connect(&ConnectOptions::new(&s.url, token))
        .await
        .unwrap();
    raw.send(Payload::Send(text("", "gina", "lost", "once")))
        .await
        .unwrap();
    raw.close().await; // before reading the answer
    let mut frank = s.client("frank", BTreeMap::new());
    let ack = frank.send(text("", "gina", "lost", "once")).await.unwrap();
    assert!(
        matches!(
            ack.status(),
            v1::AckStatus::Duplicate | v1::AckStatus::Stored
        ),
        "{ack:?}"
    );
    let mut gina = s.client("gina", BTreeMap::new());
    let got = events_until(&mut gina, 1).await;
    assert_eq!(texts(&got), ["once"]);
}

/// Copies a directory tree (a stopped projector's store).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Deliveries leave before their batch is committed (I12), so a projector
/// killed after publishing and before its commit reached the disk starts
/// again from an older checkpoint and publishes those deliveries again.
/// Here the store is put back to a copy taken before the messages, which
/// is exactly what such a crash leaves: the client holds every message
/// once, in order, and goes on.
#[tokio::test]
async fn deliveries_published_again_after_a_lost_commit_reach_the_client_once() {
    let mut kit = im_testkit::Stack::start().await;
    let config = kit.projector_config("main");
    let dir = config.data_dir.clone();
    let projector = kit.projector(config.clone()).await;
    let s = Stack {
        url: gateway_on(&kit).await,
        kit,
        _projector: projector,
    };
    let mut alice = s.client("alice", BTreeMap::new());
    let mut bob = s.client("bob", BTreeMap::new());
    let first = alice.send(text("", "bob", "m0", "m0")).await.unwrap();
    let conv = first.conversation_id;
    events_until(&mut bob, 1).await;
    let Stack {
        mut kit,
        _projector: projector,
        url,
    } = s;
    projector.finish().await.unwrap();
    let before = tempfile::tempdir().unwrap();
    copy_dir(&dir, before.path());
    let projector = kit.projector(config.clone()).await;
    for i in 1..=5 {
        let id = format!("m{i}");
        alice.send(text(&conv, "", &id, &id)).await.unwrap();
    }
    let got = events_until(&mut bob, 5).await;
    assert_eq!(texts(&got), ["m1", "m2", "m3", "m4", "m5"]);
    projector.finish().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(before.path(), &dir);
    let projector = kit.projector(config).await;
    alice.send(text(&conv, "", "m6", "m6")).await.unwrap();
    let again = events_until(&mut bob, 1).await;
    assert_eq!(texts(&again), ["m6"], "m1..m5 came again and were dropped");
    assert_eq!(bob.stats().duplicates, 5, "{:?}", bob.stats());
    drop((projector, url));
}
