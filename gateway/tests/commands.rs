//! The remaining commands and limits: typing, send rate, several envelopes
//! per frame, the gateway's connection cap, and the HTTP commands.

mod common;

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_rate_limit_batches_and_the_connection_cap() {
    let limits = Limits {
        sends_per_sec: 1,
        send_burst: 3,
        connections_max: 3,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let mut ann = connect(gw, "ann", Wire::Proto).await;
    let mut ben = connect(gw, "ben", Wire::Json).await;
    ann.send(text_send_to("ben", "t-0", "hi")).await;
    let conv = ann.recv_until(ack_of).await.conversation_id;

    // Typing reaches the other member only, and is never in the log.
    let before = s.conv_messages().await;
    ann.send(Payload::Typing(v1::Typing {
        conversation_id: conv.clone(),
        typing: true,
    }))
    .await;
    let notice = ben
        .recv_until(|p| match p {
            Payload::TypingNotice(t) => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!((notice.user_id.as_str(), notice.typing), ("ann", true));
    assert_eq!(s.conv_messages().await, before);
    // Not a member: refused.
    let mut cy = connect(gw, "cy", Wire::Json).await;
    cy.send(Payload::Typing(v1::Typing {
        conversation_id: conv.clone(),
        typing: true,
    }))
    .await;
    assert_eq!(
        cy.recv_until(error_of).await.code,
        v1::ErrorCode::Forbidden as i32
    );

    // A fourth connection is over the gateway's cap.
    assert_eq!(
        try_connect(gw, Some(&token("dee")), Wire::Proto, "d1")
            .await
            .err(),
        Some(503)
    );
    drop(cy);

    // Several envelopes in one binary frame, each answered.
    let mut frame = Vec::new();
    for i in 0..3 {
        let env = v1::Envelope {
            header: None,
            payload: Some(Payload::Heartbeat(v1::Heartbeat { client_time_ms: i })),
        };
        env.encode_length_delimited(&mut frame).unwrap();
    }
    ann.send_raw(Message::Binary(frame.into())).await;
    for i in 0..3 {
        let ack = ann
            .recv_until(|p| match p {
                Payload::HeartbeatAck(a) => Some(*a),
                _ => None,
            })
            .await;
        assert_eq!(ack.client_time_ms, i);
    }

    // Past the burst, sends are refused and nothing is appended.
    let before = s.conv_messages().await;
    let mut stored = 0;
    let mut limited = 0;
    for i in 0..6 {
        ann.send(text_send_in(&conv, &format!("r-{i}"), "fast"))
            .await;
        match ann
            .recv_until(|p| match p {
                Payload::SendAck(_) | Payload::Error(_) => Some(p.clone()),
                _ => None,
            })
            .await
        {
            Payload::SendAck(a) if a.status == v1::AckStatus::Stored as i32 => stored += 1,
            Payload::Error(e) if e.code == v1::ErrorCode::RateLimited as i32 => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(limited >= 3, "stored {stored}, limited {limited}");
    assert_eq!(s.conv_messages().await, before + stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_commands_change_what_everyone_sees() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let owner = token("owner");
    let post = |path: String, who: String, body: &'static str| async move {
        http_post(gw, &path, &who, body).await
    };
    assert_eq!(
        post(
            "/v1/conversations".into(),
            owner.clone(),
            r#"{"conversationId": "club", "members": [{"userId": "amy"}]}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            "/v1/conversations/club/add-member/bo".into(),
            owner.clone(),
            "{}"
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            "/v1/conversations/club/role/amy".into(),
            owner.clone(),
            r#"{"role": "admin"}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            "/v1/conversations/club/mute/bo".into(),
            token("amy"),
            r#"{"untilMs": 99999999999999}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            "/v1/conversations/club/unmute/bo".into(),
            token("amy"),
            "{}"
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            "/v1/conversations/club/blacklist/zed".into(),
            token("amy"),
            "{}"
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            "/v1/conversations/club/unblacklist/zed".into(),
            token("amy"),
            "{}"
        )
        .await
        .0,
        200
    );

    let mut bo = connect(gw, "bo", Wire::Json).await;
    bo.send(text_send_in("club", "b-1", "tpyo")).await;
    let ack = bo.recv_until(ack_of).await;
    assert_eq!(ack.status, v1::AckStatus::Stored as i32);
    let seq = ack.conv_seq;
    let (status, body) = post(
        format!("/v1/conversations/club/edit/{seq}"),
        token("bo"),
        r#"{"text": "typo"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Only the sender edits; an admin may recall.
    assert_eq!(
        post(
            format!("/v1/conversations/club/edit/{seq}"),
            token("amy"),
            r#"{"text": "x"}"#
        )
        .await
        .0,
        403
    );
    assert_eq!(
        post(
            format!("/v1/conversations/club/recall/{seq}"),
            token("amy"),
            "{}"
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post("/v1/conversations/club/leave".into(), token("bo"), "{}")
            .await
            .0,
        200
    );
    assert_eq!(
        post("/v1/conversations/club/leave".into(), owner.clone(), "{}")
            .await
            .0,
        403,
        "the owner must transfer first"
    );
    assert_eq!(
        post("/v1/conversations/club/fly".into(), owner.clone(), "{}")
            .await
            .0,
        404
    );

    // An idempotency key makes a retry return the same positions.
    let add = || async {
        let mut sock_req = String::new();
        sock_req.push_str("/v1/conversations/club/add-member/cat");
        http_post_with_key(gw, &sock_req, &token("owner"), "add-cat-1").await
    };
    let (first, second) = (add().await, add().await);
    assert_eq!(first.0, 200);
    assert_eq!(second.0, 200);
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&first.1).unwrap(),
        serde_json::from_str(&second.1).unwrap(),
    );
    assert_eq!(
        (&a["convSeq"], &a["duplicate"]),
        (&b["convSeq"], &false.into())
    );
    assert_eq!(b["duplicate"], true);

    // Read our own writes: wait for the last command's position.
    let last: serde_json::Value = serde_json::from_str(&first.1).unwrap();
    let pos: u64 = last["streamSeq"].as_str().unwrap().parse().unwrap();
    let (_, body) = http_get(
        gw,
        &format!("/v1/history?conversationId=club&minPosition={pos}"),
        &owner,
    )
    .await;
    let page: v1::HistoryPage = im_schema::from_json(&body).unwrap();
    let msg = page
        .entries
        .iter()
        .find(|e| e.event.as_ref().unwrap().conv_seq == seq)
        .unwrap();
    assert!(msg.recalled && msg.edited);
    let types: Vec<String> = page
        .entries
        .iter()
        .map(|e| im_streams::conversation::event_type(e.event.as_ref().unwrap()).to_string())
        .collect();
    assert_eq!(
        types,
        [
            "conversation_created",
            "member_added",
            "role_changed",
            "member_muted",
            "member_unmuted",
            "member_blacklisted",
            "member_unblacklisted",
            "message_sent",
            "message_edited",
            "message_recalled",
            "member_left",
            "member_added"
        ]
    );
}

/// Requests take 64-bit numbers as decimal strings too (proto3 JSON, what
/// every answer uses): a mute until a time given as a string is stored
/// with that time, and a string that is no integer is refused (422, as any
/// body that does not read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_bit_numbers_are_taken_as_strings() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let create = r#"{"conversationId": "n64", "members": [{"userId": "bob"}]}"#;
    let (status, body) = http_post(gw, "/v1/conversations", &token("ann"), create).await;
    assert_eq!(status, 200, "{body}");
    let until = 4_102_444_800_000i64;
    let path = "/v1/conversations/n64/mute/bob";
    let json = format!(r#"{{"untilMs": "{until}"}}"#);
    let (status, body) = http_post(gw, path, &token("ann"), &json).await;
    assert_eq!(status, 200, "{body}");
    let muted = s
        .log_of("n64")
        .await
        .into_iter()
        .find_map(|e| match e.event.kind {
            Some(im_schema::v1::conv_event::Kind::Muted(m)) => Some(m.until_ms),
            _ => None,
        });
    assert_eq!(muted, Some(until));
    let (status, body) = http_post(gw, path, &token("ann"), r#"{"untilMs": "soon"}"#).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("untilMs") || body.contains("integer"),
        "{body}"
    );
}
