//! Exact recovery and multi-gateway delivery, over real WebSockets.

mod common;

use std::collections::BTreeMap;

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};
use im_streams::{Action, Command, Role};

fn fast() -> Limits {
    Limits {
        sends_per_sec: 100_000,
        send_burst: 100_000,
        user_sends_per_sec: 100_000,
        user_send_burst: 100_000,
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_missed_200_messages_syncs_and_pages_exactly_what_it_missed() {
    let s = Stack::start(fast()).await;
    let gw = s.gateways[0];
    let mut alice = connect(gw, "alice", Wire::Proto).await;
    let mut bob = connect(gw, "bob", Wire::Json).await;
    alice.send(text_send_to("bob", "hello", "hello")).await;
    let conv = alice.recv_until(ack_of).await.conversation_id;
    let seen = bob
        .recv_until(|p| deliver_of(p).filter(|d| d.conv_seq == 2))
        .await
        .conv_seq;
    drop(bob);

    let (mut last, mut last_pos) = (0, 0);
    for i in 0..200 {
        alice
            .send(text_send_in(
                &conv,
                &format!("m{i}"),
                &format!("missed {i}"),
            ))
            .await;
        let ack = alice.recv_until(ack_of).await;
        assert_eq!(ack.status, v1::AckStatus::Stored as i32);
        last = ack.conv_seq;
        last_pos = ack.stream_seq;
    }
    assert_eq!(last, seen + 200);
    // The read models have caught up with the last send.
    wait_projected(&s, &conv, last_pos).await;

    // Reconnect (as a phone would) and sync from what it knew.
    let mut bob = connect(gw, "bob", Wire::Json).await;
    let mut known = BTreeMap::new();
    known.insert(conv.clone(), seen);
    bob.send(Payload::Sync(v1::SyncRequest {
        known: known.clone(),
    }))
    .await;
    let changed = bob
        .recv_until(|p| match p {
            Payload::SyncResponse(r) => Some(r.clone()),
            _ => None,
        })
        .await
        .changed;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(
        (
            changed[0].conversation_id.as_str(),
            changed[0].last_seq,
            changed[0].unread,
            changed[0].unread_capped
        ),
        // 201 unread, shown as "99+": counts are exact up to the cap.
        (conv.as_str(), last, 99, true)
    );

    // Page history over HTTP from the first missed seq.
    let mut got = Vec::new();
    let mut from = seen + 1;
    while from != 0 {
        let (status, body) = http_get(
            gw,
            &format!("/v1/history?conversationId={conv}&fromSeq={from}&limit=50"),
            &token("bob"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let page: v1::HistoryPage = im_schema::from_json(&body).unwrap();
        got.extend(
            page.entries
                .iter()
                .map(|e| e.event.as_ref().unwrap().conv_seq),
        );
        from = page.next_seq;
    }
    assert_eq!(
        got,
        ((seen + 1)..=last).collect::<Vec<_>>(),
        "exactly the missed ones, no gap, no duplicate"
    );

    // Reading clears the unread count.
    bob.send(Payload::Read(v1::ReadAck {
        conversation_id: conv.clone(),
        up_to_seq: last,
    }))
    .await;
    let _ = alice
        .recv_until(|p| receipt_of(p).filter(|r| r.kind == v1::ReceiptKind::Read as i32))
        .await;
    // The read reaches the unread count through the projector: bounded wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        bob.send(Payload::Sync(v1::SyncRequest {
            known: BTreeMap::new(),
        }))
        .await;
        let after = bob
            .recv_until(|p| match p {
                Payload::SyncResponse(r) => Some(r.clone()),
                _ => None,
            })
            .await
            .changed;
        if after[0].unread == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "unread stayed {}",
            after[0].unread
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Nothing changed since what it now knows.
    known.insert(conv.clone(), last);
    bob.send(Payload::Sync(v1::SyncRequest { known })).await;
    let none = bob
        .recv_until(|p| match p {
            Payload::SyncResponse(r) => Some(r.clone()),
            _ => None,
        })
        .await
        .changed;
    assert!(none.is_empty());

    // History is members only.
    let (status, _) = http_get(
        gw,
        &format!("/v1/history?conversationId={conv}"),
        &token("mallory"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http_get(gw, &format!("/v1/history?conversationId={conv}"), "forged").await;
    assert_eq!(status, 401);
}

/// A few hundred members, half on each of two gateways, protobuf and JSON
/// devices mixed: every member gets every message once and in order —
/// through one dispatcher per gateway, bytes shared, frames coalesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_300_member_group_over_two_gateways_gets_every_message_once_in_order() {
    const MEMBERS: usize = 300;
    const BURST: usize = 30;
    const MESSAGES: usize = 50;
    let mut s = Stack::start(fast()).await;
    let second = s.add_gateway(fast()).await;
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    let app = appender(&s).await;
    let create = Command {
        actor: users[0].clone(),
        client_msg_id: "create".into(),
        action: Action::CreateGroup {
            title: "crowd".into(),
            members: users[1..]
                .iter()
                .map(|u| (u.clone(), Role::Member))
                .collect(),
        },
    };
    app.execute("crowd", &create, "").await.unwrap();

    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let gw = if i % 2 == 0 { s.gateways[0] } else { second };
        let wire = if i % 3 == 0 { Wire::Json } else { Wire::Proto };
        clients.push(connect(gw, u, wire).await);
    }
    // A burst from one member without waiting (deliveries pile up and
    // share frames), then one at a time from members on both gateways.
    for i in 0..BURST {
        let send = text_send_in("crowd", &format!("g{i}"), &format!("to all {i}"));
        clients[0].send(send).await;
    }
    for _ in 0..BURST {
        let ack = clients[0].recv_until(ack_of).await;
        assert_eq!(ack.status, v1::AckStatus::Stored as i32);
    }
    for i in BURST..MESSAGES {
        let sender = &mut clients[(i * 7) % MEMBERS];
        sender
            .send(text_send_in(
                "crowd",
                &format!("g{i}"),
                &format!("to all {i}"),
            ))
            .await;
        assert_eq!(
            sender.recv_until(ack_of).await.status,
            v1::AckStatus::Stored as i32
        );
    }
    let expected: Vec<u64> = (2..=(MESSAGES as u64 + 1)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut seqs = Vec::new();
        // Up to the last message: a duplicate of any would show before it.
        while seqs.last() != expected.last() {
            let Some(env) = c.recv().await else {
                panic!("member {i} ({:?}) stopped after {seqs:?}", c.wire);
            };
            let Some(d) = env.payload.as_ref().and_then(deliver_of) else {
                continue;
            };
            assert_eq!(d.conversation_id, "crowd");
            // The creation may arrive after a member connected; every
            // message must arrive, once, in order.
            if d.event_type != "conversation_created" {
                seqs.push(d.conv_seq);
            }
        }
        assert_eq!(seqs, expected, "member {i} ({:?})", c.wire);
    }
}

/// The dispatcher's own NATS connection comes back after nats-server is
/// killed and restarted and subscribes again for the devices that stayed;
/// a message stored while it was away reached no one here, so each device
/// is sent `Connected` again ("sync now") and its sync finds the message.
/// A message sent afterwards is delivered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_resume_after_nats_server_restarts_and_devices_are_told_to_sync() {
    // Answers within the test client's read timeout while NATS is away.
    let limits = Limits {
        command_timeout_ms: 3_000,
        ..fast()
    };
    let mut s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let mut alice = connect(gw, "alice", Wire::Proto).await;
    let mut bob = connect(gw, "bob", Wire::Json).await;
    alice.send(text_send_to("bob", "before", "before")).await;
    let conv = alice.recv_until(ack_of).await.conversation_id;
    bob.recv_until(|p| deliver_of(p).filter(|d| d.conv_seq == 2))
        .await;

    s.server.restart().await.unwrap();
    let stored = send_until_stored(&mut alice, &conv, "during").await;
    // Told to sync (it may or may not have had the delivery): the sync
    // knows the message.
    bob.recv_until(|p| match p {
        Payload::Connected(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    let mut known = BTreeMap::new();
    known.insert(conv.clone(), 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        bob.send(Payload::Sync(v1::SyncRequest {
            known: known.clone(),
        }))
        .await;
        let changed = bob
            .recv_until(|p| match p {
                Payload::SyncResponse(r) => Some(r.changed.clone()),
                _ => None,
            })
            .await;
        if changed.iter().any(|c| c.last_seq >= stored.conv_seq) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{changed:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let next = send_until_stored(&mut alice, &conv, "after").await;
    let got = bob
        .recv_until(|p| deliver_of(p).filter(|d| d.conv_seq == next.conv_seq))
        .await;
    assert_eq!(got.stream_seq, next.stream_seq);
    assert_eq!(s.states[0].dispatcher.device_count("bob"), 1);
}

/// Sends until stored, retrying with one id while NATS comes back.
async fn send_until_stored(c: &mut Client, conv: &str, cmid: &str) -> v1::SendAck {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        c.send(text_send_in(conv, cmid, cmid)).await;
        let answer = c
            .recv_until(|p| match p {
                Payload::SendAck(a) => Some(Some(a.clone())),
                Payload::Error(_) => Some(None),
                _ => None,
            })
            .await;
        if let Some(ack) = answer.filter(|a| a.status != v1::AckStatus::Rejected as i32) {
            return ack;
        }
        assert!(std::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
