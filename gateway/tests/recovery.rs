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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_50_member_group_over_two_gateways_gets_every_message_once_in_order() {
    const MEMBERS: usize = 50;
    const MESSAGES: usize = 20;
    let mut s = Stack::start(fast()).await;
    let second = s.add_gateway(fast()).await;
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    let app = appender(&s).await;
    let create = Command {
        actor: users[0].clone(),
        client_msg_id: "create".into(),
        action: Action::CreateGroup {
            title: "fifty".into(),
            members: users[1..]
                .iter()
                .map(|u| (u.clone(), Role::Member))
                .collect(),
        },
    };
    app.execute("fifty", &create, "").await.unwrap();

    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let gw = if i % 2 == 0 { s.gateways[0] } else { second };
        let wire = if i % 3 == 0 { Wire::Json } else { Wire::Proto };
        clients.push(connect(gw, u, wire).await);
    }
    for i in 0..MESSAGES {
        let sender = &mut clients[(i * 7) % MEMBERS];
        sender
            .send(text_send_in(
                "fifty",
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
        while seqs.len() < MESSAGES {
            let Some(env) = c.recv().await else {
                panic!("member {i} ({:?}) stopped after {seqs:?}", c.wire);
            };
            let Some(d) = env.payload.as_ref().and_then(deliver_of) else {
                continue;
            };
            assert_eq!(d.conversation_id, "fifty");
            // The creation may arrive after a member connected; every
            // message must arrive, once, in order.
            if d.event_type != "conversation_created" {
                seqs.push(d.conv_seq);
            }
        }
        assert_eq!(seqs, expected, "member {i}");
    }
}
