//! One of two gateway processes is SIGKILLed mid-conversation; its clients
//! reconnect to the other and recover exactly (sync + history), retrying
//! their unacknowledged send with the same client_msg_id.

mod common;

use std::collections::BTreeSet;

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};
use im_streams::{Action, Role};

/// Recovers a client after a reconnect: sync, then page history from what it
/// held; returns every conv_seq it now holds.
async fn recover(
    c: &mut Client,
    addr: std::net::SocketAddr,
    user: &str,
    conv: &str,
    mut held: BTreeSet<u64>,
) -> BTreeSet<u64> {
    let known = held.iter().max().copied().unwrap_or(0);
    c.send(Payload::Sync(v1::SyncRequest {
        known: [(conv.to_string(), known)].into(),
    }))
    .await;
    let changed = c
        .recv_until(|p| match p {
            Payload::SyncResponse(r) => Some(r.clone()),
            _ => None,
        })
        .await
        .changed;
    for change in changed {
        let mut from = known + 1;
        while from != 0 && from <= change.last_seq {
            let (status, body) = http_get(
                addr,
                &format!("/v1/history?conversationId={conv}&fromSeq={from}&limit=50"),
                &token(user),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let page: v1::HistoryPage = im_schema::from_json(&body).unwrap();
            for e in &page.entries {
                assert!(
                    held.insert(e.event.as_ref().unwrap().conv_seq),
                    "duplicate while paging"
                );
            }
            from = page.next_seq;
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_gateways_clients_recover_exactly_on_the_other() {
    let s = Stack::start(Limits::default()).await;
    let url = s.server.url();
    let doomed = spawn_gateway(&url, "{}");
    let survivor = spawn_gateway(&url, "{}");
    let app = appender(&s).await;
    let create = im_streams::Command {
        actor: "carol".into(),
        client_msg_id: "create".into(),
        action: Action::CreateGroup {
            title: "trio".into(),
            members: vec![("alice".into(), Role::Member), ("bob".into(), Role::Member)],
        },
    };
    app.execute("trio", &create, "").await.unwrap();

    let mut alice = connect(doomed.1, "alice", Wire::Proto).await;
    let mut bob = connect(doomed.1, "bob", Wire::Json).await;
    let mut carol = connect(survivor.1, "carol", Wire::Proto).await;
    let mut held_bob = BTreeSet::new();
    for i in 0..10 {
        alice
            .send(text_send_in("trio", &format!("a{i}"), "before"))
            .await;
        assert_eq!(
            alice.recv_until(ack_of).await.status,
            v1::AckStatus::Stored as i32
        );
    }
    for _ in 0..10 {
        held_bob.insert(
            bob.recv_until(|p| deliver_of(p).filter(|d| d.event_type == "message_sent"))
                .await
                .conv_seq,
        );
    }

    // alice sends and the gateway dies before she sees the ack.
    alice
        .send(text_send_in("trio", "in-flight", "was it stored?"))
        .await;
    drop(doomed);
    // The conversation goes on meanwhile.
    let mut carol_pos = 0;
    for i in 0..20 {
        carol
            .send(text_send_in("trio", &format!("c{i}"), "during"))
            .await;
        let ack = carol.recv_until(ack_of).await;
        assert_eq!(ack.status, v1::AckStatus::Stored as i32);
        carol_pos = ack.stream_seq;
    }

    // Reconnect to the survivor; alice retries with the same id.
    let mut alice = connect(survivor.1, "alice", Wire::Proto).await;
    alice
        .send(text_send_in("trio", "in-flight", "was it stored?"))
        .await;
    let retry = alice.recv_until(ack_of).await;
    assert!(
        retry.status == v1::AckStatus::Stored as i32
            || retry.status == v1::AckStatus::Duplicate as i32,
        "{retry:?}"
    );
    wait_projected(&s, "trio", carol_pos.max(retry.stream_seq)).await;
    let mut bob = connect(survivor.1, "bob", Wire::Json).await;
    let held = recover(&mut bob, survivor.1, "bob", "trio", held_bob.clone()).await;

    // Exactly the whole conversation, no gap; the retried send once.
    let (status, body) = http_get(
        survivor.1,
        "/v1/history?conversationId=trio&limit=200",
        &token("bob"),
    )
    .await;
    assert_eq!(status, 200);
    let page: v1::HistoryPage = im_schema::from_json(&body).unwrap();
    let last = page
        .entries
        .last()
        .unwrap()
        .event
        .as_ref()
        .unwrap()
        .conv_seq;
    // Deliveries before the kill plus history after it: every event after
    // the creation (which came before bob connected), each once.
    assert_eq!(
        held,
        (2..=last).collect::<BTreeSet<u64>>(),
        "bob's view has a gap"
    );
    let in_flight = page
        .entries
        .iter()
        .filter(|e| e.event.as_ref().unwrap().client_msg_id == "in-flight")
        .count();
    assert_eq!(in_flight, 1, "the retried send is in the log once");
    assert_eq!(
        retry.conv_seq,
        page.entries
            .iter()
            .find(|e| e.event.as_ref().unwrap().client_msg_id == "in-flight")
            .unwrap()
            .event
            .as_ref()
            .unwrap()
            .conv_seq
    );
}
