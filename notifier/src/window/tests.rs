use super::*;

const DEBOUNCE: i64 = 3_000;

fn q(stream_seq: u64, conv: &str, conv_seq: u64, at_ms: i64, sender: &str, text: &str) -> Queued {
    Queued {
        stream_seq,
        msg: v1::NotifyQueued {
            sealed: None,
            conversation_id: conv.into(),
            conv_seq,
            at_ms,
            sender: sender.into(),
            preview: text.into(),
            media: false,
        },
    }
}

fn device() -> v1::PushDevice {
    v1::PushDevice {
        registration: Some(v1::PushRegistered {
            device_id: "phone".into(),
            platform: "fcm".into(),
            token: "t".into(),
            app_id: "app".into(),
            lang: "en".into(),
        }),
        registered_ms: 1,
    }
}

fn away(user: &str) -> Member {
    Member {
        user: user.into(),
        devices: vec![device()],
        badge: 7,
        ..Default::default()
    }
}

fn place() -> Place<'static> {
    Place {
        title: "Team",
        name_of: &|u: &str| (format!("{u}!"), None),
    }
}

#[test]
fn messages_within_the_debounce_are_one_window_and_due_after_it() {
    let mut ws = Windows::default();
    ws.add(q(1, "g", 2, 1_000, "amy", "a"), DEBOUNCE);
    ws.add(q(2, "h", 2, 1_500, "amy", "x"), DEBOUNCE);
    ws.add(q(3, "g", 3, 4_000, "amy", "b"), DEBOUNCE);
    ws.add(q(4, "g", 4, 4_001, "amy", "c"), DEBOUNCE);
    assert_eq!(ws.messages, 4);
    assert!(ws.take_due(3_999, DEBOUNCE, 10).is_empty());
    let due = ws.take_due(4_500, DEBOUNCE, 10);
    let seqs: Vec<Vec<u64>> = due
        .iter()
        .map(|w| w.messages.iter().map(|m| m.stream_seq).collect())
        .collect();
    assert_eq!(seqs, vec![vec![1, 3], vec![2]]);
    // The third message opened the next window of g.
    assert_eq!(ws.oldest_opened_ms(), Some(4_001));
    assert!(ws.take_due(7_000, DEBOUNCE, 10).is_empty());
    assert_eq!(ws.take_due(7_001, DEBOUNCE, 10).len(), 1);
    assert_eq!(ws.messages, 0);
}

#[test]
fn an_away_member_gets_one_notification_with_the_last_message() {
    let w = Window {
        conv: "g".into(),
        messages: vec![
            q(1, "g", 2, 1_000, "amy", "hi"),
            q(3, "g", 3, 1_200, "cy", "there"),
        ],
    };
    let n = notification_for(&w, &away("bo"), &place(), Preview::Text).unwrap();
    assert_eq!(n.messages, 2);
    assert_eq!((n.first_conv_seq, n.last_conv_seq), (2, 3));
    assert_eq!(
        (n.sender_id.as_str(), n.sender_name.as_str()),
        ("cy", "cy!")
    );
    assert_eq!(n.text, "there");
    assert_eq!(n.badge, 7);
    assert_eq!(n.conversation_title, "Team");
    assert_eq!(n.id, notification_id("bo", "g", 2));
    assert_ne!(n.id, notification_id("bo", "g", 3));
    let quiet = notification_for(&w, &away("bo"), &place(), Preview::None).unwrap();
    assert!(quiet.sender_id.is_empty() && quiet.text.is_empty());
    let sender_only = notification_for(&w, &away("bo"), &place(), Preview::Sender).unwrap();
    assert_eq!(sender_only.sender_name, "cy!");
    assert!(sender_only.text.is_empty());
}

#[test]
fn nothing_for_the_reader_the_sender_the_connected_the_muted_or_without_a_device() {
    let w = Window {
        conv: "g".into(),
        messages: vec![
            q(1, "g", 2, 1_000, "amy", "hi"),
            q(2, "g", 3, 1_100, "bo", "yo"),
        ],
    };
    let skip = |m: Member| notification_for(&w, &m, &place(), Preview::Text).unwrap_err();
    // bo answered after amy's message: seen.
    assert_eq!(skip(away("bo")), Skip::Own);
    // amy is told of bo's answer.
    let amy = notification_for(&w, &away("amy"), &place(), Preview::Text).unwrap();
    assert_eq!((amy.messages, amy.text.as_str()), (1, "yo"));
    let read = Member {
        read_up_to: 3,
        ..away("cy")
    };
    assert_eq!(skip(read), Skip::Read);
    let partly = Member {
        read_up_to: 2,
        ..away("cy")
    };
    let n = notification_for(&w, &partly, &place(), Preview::Text).unwrap();
    assert_eq!((n.messages, n.text.as_str()), (1, "yo"));
    assert_eq!(
        skip(Member {
            devices: vec![],
            ..away("cy")
        }),
        Skip::NoDevice
    );
    assert_eq!(
        skip(Member {
            quiet: true,
            ..away("cy")
        }),
        Skip::Quiet
    );
    assert_eq!(
        skip(Member {
            online: true,
            ..away("cy")
        }),
        Skip::Online
    );
}
