//! Every message has a JSON form (proto3 JSON mapping) that round-trips, and
//! malformed input is an error, not a default value.

use im_schema::v1::{self, envelope::Payload};
use im_schema::{decode, encode, from_json, to_json};

fn envelope(payload: Payload) -> v1::Envelope {
    v1::Envelope {
        header: Some(v1::Header {
            trace_id: "t-1".into(),
            client_msg_id: "c-1".into(),
            timestamp_ms: 1_700_000_000_000,
            codec_version: 1,
            device_id: "phone".into(),
            user_id: "alice".into(),
        }),
        payload: Some(payload),
    }
}

fn media() -> v1::MediaRef {
    v1::MediaRef {
        media_id: "m1".into(),
        url: "https://media.example/m1".into(),
        size: 1234,
        checksum: "ab".repeat(32),
        checksum_algo: "sha256".into(),
        mime: "image/png".into(),
        duration_ms: 0,
        width: 640,
        height: 480,
        thumbnail_url: "https://media.example/m1/t".into(),
    }
}

fn conv_event(kind: v1::conv_event::Kind) -> v1::ConvEvent {
    v1::ConvEvent {
        conversation_id: "g1".into(),
        conv_seq: 7,
        actor: "alice".into(),
        at_ms: 1_700_000_000_000,
        prev_hash: vec![9; 32],
        client_msg_id: "c-1".into(),
        schema_version: 1,
        kind: Some(kind),
    }
}

fn all_envelopes() -> Vec<v1::Envelope> {
    use v1::conv_event::Kind;
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("reply_to".to_string(), "3".to_string());
    let mut known = std::collections::BTreeMap::new();
    known.insert("g1".to_string(), 5u64);
    let events = vec![
        Kind::Created(v1::ConversationCreated {
            kind: v1::ConversationKind::Group as i32,
            title: "team".into(),
            members: vec![v1::InitialMember {
                user_id: "alice".into(),
                role: v1::Role::Owner as i32,
            }],
        }),
        Kind::MemberAdded(v1::MemberAdded {
            user_id: "bob".into(),
            role: v1::Role::Member as i32,
        }),
        Kind::MemberRemoved(v1::MemberRemoved {
            user_id: "bob".into(),
        }),
        Kind::MemberLeft(v1::MemberLeft {}),
        Kind::RoleChanged(v1::RoleChanged {
            user_id: "bob".into(),
            role: v1::Role::Admin as i32,
        }),
        Kind::OwnershipTransferred(v1::OwnershipTransferred {
            user_id: "bob".into(),
        }),
        Kind::Muted(v1::MemberMuted {
            user_id: "bob".into(),
            until_ms: 5,
        }),
        Kind::Unmuted(v1::MemberUnmuted {
            user_id: "bob".into(),
        }),
        Kind::Blacklisted(v1::MemberBlacklisted {
            user_id: "bob".into(),
        }),
        Kind::Unblacklisted(v1::MemberUnblacklisted {
            user_id: "bob".into(),
        }),
        Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Text("hi".into())),
            meta: meta.clone(),
        }),
        Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Media(media())),
            meta: Default::default(),
        }),
        Kind::MessageRecalled(v1::MessageRecalled { target_conv_seq: 3 }),
        Kind::MessageEdited(v1::MessageEdited {
            sealed: None,
            target_conv_seq: 3,
            text: "fixed".into(),
        }),
    ];
    let mut out: Vec<v1::Envelope> = events
        .into_iter()
        .map(|k| {
            envelope(Payload::Deliver(v1::Deliver {
                conversation_id: "g1".into(),
                conv_seq: 7,
                stream_seq: 42,
                event: Some(conv_event(k)),
                event_type: "x".into(),
                ..Default::default()
            }))
        })
        .collect();
    out.extend([
        envelope(Payload::Send(v1::SendMessage {
            conversation_id: "g1".into(),
            to_user_id: String::new(),
            client_msg_id: "c-1".into(),
            body: Some(v1::send_message::Body::Text("hello".into())),
            meta,
        })),
        envelope(Payload::Send(v1::SendMessage {
            to_user_id: "bob".into(),
            client_msg_id: "c-2".into(),
            body: Some(v1::send_message::Body::Media(media())),
            ..Default::default()
        })),
        envelope(Payload::DeliveryAck(v1::DeliveryAck {
            conversation_id: "g1".into(),
            up_to_seq: 7,
            device_id: "phone".into(),
        })),
        envelope(Payload::Read(v1::ReadAck {
            conversation_id: "g1".into(),
            up_to_seq: 7,
        })),
        envelope(Payload::Typing(v1::Typing {
            conversation_id: "g1".into(),
            typing: true,
        })),
        envelope(Payload::Heartbeat(v1::Heartbeat { client_time_ms: 1 })),
        envelope(Payload::Sync(v1::SyncRequest { known })),
        envelope(Payload::SendAck(v1::SendAck {
            client_msg_id: "c-1".into(),
            server_msg_id: "IM_CONV:42".into(),
            conv_seq: 7,
            status: v1::AckStatus::Stored as i32,
            reason: String::new(),
            conversation_id: "g1".into(),
            stream_seq: 42,
        })),
        envelope(Payload::ReceiptUpdate(v1::ReceiptUpdate {
            conversation_id: "g1".into(),
            user_id: "bob".into(),
            device_id: "phone".into(),
            kind: v1::ReceiptKind::Read as i32,
            up_to_seq: 7,
        })),
        envelope(Payload::TypingNotice(v1::TypingNotice {
            conversation_id: "g1".into(),
            user_id: "bob".into(),
            typing: false,
        })),
        envelope(Payload::HeartbeatAck(v1::HeartbeatAck {
            client_time_ms: 1,
            server_time_ms: 2,
        })),
        envelope(Payload::SyncResponse(v1::SyncResponse {
            changed: vec![v1::ConversationChange {
                conversation_id: "g1".into(),
                last_seq: 9,
                unread: 2,
                unread_capped: false,
            }],
        })),
        envelope(Payload::Error(v1::Error {
            code: v1::ErrorCode::BadRequest as i32,
            message: "bad".into(),
            client_msg_id: "c-1".into(),
        })),
    ]);
    out
}

#[test]
fn every_envelope_round_trips_through_protobuf_and_json() {
    for env in all_envelopes() {
        assert_eq!(decode::<v1::Envelope>(&encode(&env)).unwrap(), env);
        let json = to_json(&env);
        assert_eq!(from_json::<v1::Envelope>(&json).unwrap(), env, "{json}");
    }
}

#[test]
fn receipt_events_have_a_json_form() {
    let ev = v1::ReceiptEvent {
        conversation_id: "g1".into(),
        user_id: "bob".into(),
        device_id: "phone".into(),
        at_ms: 5,
        schema_version: 1,
        kind: Some(v1::receipt_event::Kind::Delivered(v1::Delivered {
            up_to_seq: 3,
        })),
    };
    let json = to_json(&ev);
    assert_eq!(from_json::<v1::ReceiptEvent>(&json).unwrap(), ev);
}

#[test]
fn json_uses_the_proto3_mapping() {
    let env = envelope(Payload::SendAck(v1::SendAck {
        client_msg_id: "c-1".into(),
        conv_seq: 7,
        status: v1::AckStatus::Duplicate as i32,
        ..Default::default()
    }));
    let value: serde_json::Value = serde_json::from_str(&to_json(&env)).unwrap();
    let ack = &value["sendAck"];
    assert_eq!(ack["clientMsgId"], "c-1");
    assert_eq!(ack["convSeq"], "7", "64-bit integers are strings");
    assert_eq!(ack["status"], "ACK_STATUS_DUPLICATE", "enums by name");
}

#[test]
fn malformed_input_is_an_error() {
    assert!(decode::<v1::Envelope>(&[0xff, 0xff, 0xff]).is_err());
    assert!(
        decode::<v1::Envelope>(&[0x0a, 0x05, 0x01]).is_err(),
        "truncated"
    );
    assert!(from_json::<v1::Envelope>("{").is_err());
    assert!(
        from_json::<v1::Envelope>(r#"{"send": {"conversationId": 5}}"#).is_err(),
        "wrong type"
    );
    assert!(
        from_json::<v1::Envelope>(r#"{"sendd": {}}"#).is_err(),
        "unknown field"
    );
    assert!(from_json::<v1::Envelope>(r#"{"send": {"body": "x", "text": "y"}}"#).is_err());
}

#[test]
fn unknown_enum_values_are_kept_not_refused() {
    // A newer peer may send a role this build does not know: protobuf keeps
    // the number, and readers treat it as the lowest privilege.
    let added = v1::MemberAdded {
        user_id: "x".into(),
        role: 77,
    };
    let back: v1::MemberAdded = decode(&encode(&added)).unwrap();
    assert_eq!(back.role, 77);
    assert!(v1::Role::try_from(back.role).is_err());
}
