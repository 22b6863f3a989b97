//! Clients over real WebSockets through a gateway, with a real projector
//! and nats-server.

mod common;

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn text_of(d: &v1::Deliver) -> Option<String> {
    match d.event.as_ref()?.kind.as_ref()? {
        v1::conv_event::Kind::MessageSent(m) => match m.body.as_ref()? {
            v1::message_sent::Body::Text(t) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_users_chat_both_ways_and_the_sender_sees_stored_delivered_read() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    // A protobuf client and a JSON client in the same conversation.
    let mut alice = connect(gw, "alice", Wire::Proto).await;
    let mut bob = connect(gw, "bob", Wire::Json).await;

    alice.send(text_send_to("bob", "a-1", "hi bob")).await;
    let ack = alice.recv_until(ack_of).await;
    assert_eq!(ack.status, v1::AckStatus::Stored as i32, "{ack:?}");
    assert_eq!((ack.client_msg_id.as_str(), ack.conv_seq), ("a-1", 2));
    let conv = ack.conversation_id.clone();

    // Bob gets the creation and the message, in order.
    let first = bob.recv_until(deliver_of).await;
    let second = bob.recv_until(deliver_of).await;
    assert_eq!((first.conv_seq, second.conv_seq), (1, 2));
    assert_eq!(text_of(&second).as_deref(), Some("hi bob"));

    // Bob's device acks delivery: alice sees DELIVERED; then READ.
    bob.send(Payload::DeliveryAck(v1::DeliveryAck {
        conversation_id: conv.clone(),
        up_to_seq: 2,
        device_id: "d1".into(),
    }))
    .await;
    let delivered = alice.recv_until(receipt_of).await;
    assert_eq!(
        (
            delivered.user_id.as_str(),
            delivered.kind,
            delivered.up_to_seq
        ),
        ("bob", v1::ReceiptKind::Delivered as i32, 2)
    );
    bob.send(Payload::Read(v1::ReadAck {
        conversation_id: conv.clone(),
        up_to_seq: 2,
    }))
    .await;
    let read = alice.recv_until(receipt_of).await;
    assert_eq!(
        (read.user_id.as_str(), read.kind, read.up_to_seq),
        ("bob", v1::ReceiptKind::Read as i32, 2)
    );

    // And back the other way, by conversation id.
    bob.send(text_send_in(&conv, "b-1", "hi alice")).await;
    let back = bob.recv_until(ack_of).await;
    assert_eq!(
        (back.status, back.conv_seq),
        (v1::AckStatus::Stored as i32, 3)
    );
    let got = alice
        .recv_until(|p| deliver_of(p).filter(|d| d.conv_seq == 3))
        .await;
    assert_eq!(text_of(&got).as_deref(), Some("hi alice"));

    // A retried send is a DUPLICATE with the original ids.
    alice.send(text_send_to("bob", "a-1", "hi bob")).await;
    let dup = alice.recv_until(ack_of).await;
    assert_eq!(
        (dup.status, dup.conv_seq, dup.server_msg_id.clone()),
        (v1::AckStatus::Duplicate as i32, 2, ack.server_msg_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_are_refused_at_the_upgrade() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let now = im_gateway::auth::now_secs();
    let claims = |sub: &str, exp: u64| im_gateway::auth::Claims {
        sub: sub.into(),
        exp,
        nbf: None,
    };
    let hs = |secret: &str, c| {
        encode(
            &Header::new(Algorithm::HS256),
            &c,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let rs_key = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap();

    let forged = hs(
        "some-other-secret-of-enough-length!",
        claims("alice", now + 60),
    );
    let expired = hs(SECRET, claims("alice", now - 600));
    let not_yet = {
        let c = im_gateway::auth::Claims {
            sub: "alice".into(),
            exp: now + 600,
            nbf: Some(now + 300),
        };
        hs(SECRET, c)
    };
    let wrong_alg = encode(
        &Header::new(Algorithm::HS384),
        &claims("alice", now + 60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bad_sub = hs(SECRET, claims("a.b", now + 60));
    for (name, token) in [
        ("forged", Some(forged)),
        ("expired", Some(expired)),
        ("nbf", Some(not_yet)),
        ("wrong alg", Some(wrong_alg)),
        ("bad sub", Some(bad_sub)),
        ("none", None),
    ] {
        let refused = try_connect(gw, token.as_deref(), Wire::Proto, "d1")
            .await
            .err();
        assert_eq!(refused, Some(401), "{name}");
    }
    // RS256 with the configured public key, and HS256, are accepted.
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims("carol", now + 60),
        &rs_key,
    )
    .unwrap();
    assert!(try_connect(gw, Some(&rs), Wire::Json, "d1").await.is_ok());
    assert!(try_connect(gw, Some(&token("dave")), Wire::Proto, "d1")
        .await
        .is_ok());
    // Browsers pass the token as a query parameter.
    let mut req = format!("ws://{gw}/v1/ws?access_token={}", token("erin"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "im.v1.json".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("query-parameter token accepted");
    let first = futures::StreamExt::next(&mut ws).await.unwrap().unwrap();
    assert!(
        first.to_text().unwrap().contains("\"connected\""),
        "{first:?}"
    );
    assert_eq!(s.conv_messages().await, 0, "nothing appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_error_appends_nothing_and_the_gateway_keeps_serving() {
    use tokio_tungstenite::tungstenite::Message;
    let limits = Limits {
        frame_bytes_max: 8 * 1024,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let mut alice = connect(gw, "alice", Wire::Proto).await;
    let mut bob = connect(gw, "bob", Wire::Json).await;
    alice.send(text_send_to("bob", "a-1", "hello")).await;
    let conv = alice.recv_until(ack_of).await.conversation_id;
    let before = s.conv_messages().await;

    // Malformed protobuf, malformed JSON: error frames, connection stays.
    alice
        .send_raw(Message::Binary(vec![0x05, 0xff, 0xff].into()))
        .await;
    let e = alice.recv_until(error_of).await;
    assert_eq!(e.code, v1::ErrorCode::BadRequest as i32);
    assert!(e.message.contains("malformed protobuf"), "{}", e.message);
    bob.send_raw(Message::Text("{\"send\": ".into())).await;
    let e = bob.recv_until(error_of).await;
    assert!(e.message.contains("malformed json"), "{}", e.message);
    bob.send_raw(Message::Text("{\"send\": {\"conversationId\": 7}}".into()))
        .await;
    assert_eq!(
        bob.recv_until(error_of).await.code,
        v1::ErrorCode::BadRequest as i32
    );

    // Ids that would inject subjects: refused with a reason.
    for bad in ["a.b", "*", ">", "a b"] {
        alice.send(text_send_in(bad, "x-1", "boom")).await;
        let ack = alice.recv_until(ack_of).await;
        assert_eq!(ack.status, v1::AckStatus::Rejected as i32, "{bad}");
        assert!(
            ack.reason.starts_with("invalid_argument"),
            "{bad}: {}",
            ack.reason
        );
        alice.send(text_send_to(bad, "x-2", "boom")).await;
        let ack = alice.recv_until(ack_of).await;
        assert_eq!(ack.status, v1::AckStatus::Rejected as i32, "{bad}");
    }
    // A non-member of a group.
    alice.send(text_send_in("nobody-group", "x-3", "hi")).await;
    assert!(alice
        .recv_until(ack_of)
        .await
        .reason
        .starts_with("conversation_not_found"));
    // Server-side messages from a client are refused.
    alice.send(Payload::Error(v1::Error::default())).await;
    assert_eq!(
        alice.recv_until(error_of).await.code,
        v1::ErrorCode::BadRequest as i32
    );

    // An oversized frame ends that connection (1009), no one else's.
    alice
        .send_raw(Message::Binary(vec![0u8; 9 * 1024].into()))
        .await;
    let code = alice.close_code().await;
    assert_eq!(code, Some(1009));
    assert_eq!(s.conv_messages().await, before, "nothing appended");

    bob.send(text_send_in(&conv, "b-ok", "still here")).await;
    assert_eq!(
        bob.recv_until(ack_of).await.status,
        v1::AckStatus::Stored as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sender_is_the_tokens_user_whatever_the_frame_claims() {
    use prost::Message as _;
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let mut alice = connect(gw, "alice", Wire::Proto).await;
    let forged = v1::Envelope {
        header: Some(v1::Header {
            user_id: "mallory".into(),
            client_msg_id: "f-1".into(),
            ..Default::default()
        }),
        payload: Some(text_send_to("bob", "f-1", "who sent this?")),
    };
    alice
        .send_raw(tokio_tungstenite::tungstenite::Message::Binary(
            forged.encode_length_delimited_to_vec().into(),
        ))
        .await;
    let ack = alice.recv_until(ack_of).await;
    assert_eq!(ack.status, v1::AckStatus::Stored as i32);
    // The conversation is alice's with bob, and the event's actor is alice.
    assert_eq!(
        ack.conversation_id,
        im_streams::subjects::direct_conversation_id("alice", "bob").unwrap()
    );
    wait_projected(&s, &ack.conversation_id, ack.stream_seq).await;
    let (status, body) = http_get(
        gw,
        &format!("/v1/history?conversationId={}", ack.conversation_id),
        &token("bob"),
    )
    .await;
    assert_eq!(status, 200);
    let page: v1::HistoryPage = im_schema::from_json(&body).unwrap();
    let actors: Vec<&str> = page
        .entries
        .iter()
        .map(|e| e.event.as_ref().unwrap().actor.as_str())
        .collect();
    assert_eq!(actors, ["alice", "alice"]);
}
