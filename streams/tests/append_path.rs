//! The append path against a real nats-server: stored events, headers,
//! idempotent stream setup, duplicates (I3), receipts, bad input.

mod common;

use common::*;
use im_schema::v1;
use im_streams::{
    codec::{HDR_CONV_SEQ, HDR_EVENT_TYPE, HDR_SCHEMA_VERSION, HDR_TRACE_ID},
    definitions::{StreamSettings, CONV_STREAM, META_PARTITIONS, RCPT_STREAM},
    subjects::direct_conversation_id,
    Action, AppendOutcome, MessageBody, ReceiptKind, ReceiptOutcome, Role,
};
use im_testkit::{NatsServer, Stack};

#[tokio::test]
async fn streams_apply_idempotently_and_record_partitions() {
    let server = NatsServer::start().await.unwrap();
    let js = js_for(&server.url()).await;
    let first = im_streams::apply_streams(&js, &StreamSettings::default())
        .await
        .unwrap();
    assert!(first.reports.iter().all(|r| r.created));
    assert_eq!(first.topology.partitions, 16);
    let again = im_streams::apply_streams(&js, &StreamSettings::default())
        .await
        .unwrap();
    assert!(
        again
            .reports
            .iter()
            .all(|r| !r.created && r.changes.is_empty()),
        "{:?}",
        again.reports
    );

    // A compatible change is applied and reported; P never changes.
    let changed = StreamSettings {
        duplicate_window_ms: 300_000,
        partitions: 4,
        ..Default::default()
    };
    let third = im_streams::apply_streams(&js, &changed).await.unwrap();
    assert_eq!(third.topology.partitions, 16, "P is fixed at creation");
    let conv = third
        .reports
        .iter()
        .find(|r| r.name == CONV_STREAM)
        .unwrap();
    assert!(
        conv.changes
            .iter()
            .any(|c| c.starts_with("duplicate_window")),
        "{conv:?}"
    );
    let info = js
        .get_stream(CONV_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.duplicate_window.as_millis(), 300_000);
    assert_eq!(
        info.metadata.get(META_PARTITIONS).map(String::as_str),
        Some("16")
    );
    assert!(info.deny_delete && info.deny_purge);
    assert!(js.get_stream(RCPT_STREAM).await.is_ok());

    // Bad settings are refused before anything is sent.
    let bad = StreamSettings {
        replicas: 0,
        ..Default::default()
    };
    assert!(im_streams::apply_streams(&js, &bad).await.is_err());
}

#[tokio::test]
async fn events_carry_conv_seq_type_schema_and_trace_headers_and_chain() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let js = stack.js.clone();
    let app = appender(&server.url(), topo).await;
    create_group(&app, "g1", &[("alice", Role::Member)]).await;
    let out = app
        .execute("g1", &cmd("alice", "m1", text("hello")), "trace-1")
        .await
        .unwrap();
    assert!(
        matches!(out, AppendOutcome::Stored { conv_seq: 2, .. }),
        "{out:?}"
    );

    let subject = topo.conv_subject("g1").unwrap();
    let msg = conv_stream(&js)
        .await
        .direct_get_last_for_subject(&subject)
        .await
        .unwrap();
    assert_eq!(msg.headers.get(HDR_CONV_SEQ).unwrap().as_str(), "2");
    assert_eq!(
        msg.headers.get(HDR_EVENT_TYPE).unwrap().as_str(),
        "message_sent"
    );
    assert_eq!(msg.headers.get(HDR_SCHEMA_VERSION).unwrap().as_str(), "1");
    assert_eq!(msg.headers.get(HDR_TRACE_ID).unwrap().as_str(), "trace-1");
    assert_eq!(msg.headers.get("Nats-Msg-Id").unwrap().as_str(), "alice:m1");

    let events = history(&js, topo, "g1").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event.prev_hash, vec![0u8; 32]);
    assert_eq!(
        events[1].event.prev_hash,
        events[0].hash.to_vec(),
        "chained"
    );
    match &events[1].event.kind {
        Some(v1::conv_event::Kind::MessageSent(m)) => {
            assert_eq!(m.body, Some(v1::message_sent::Body::Text("hello".into())))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn first_direct_send_creates_the_conversation_once() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let js = stack.js.clone();
    let app = appender(&server.url(), topo).await;
    let other = appender(&server.url(), topo).await;
    let conv = direct_conversation_id("alice", "bob").unwrap();
    let send = |to: &str, t: &str| Action::Send {
        peer: Some(to.into()),
        body: MessageBody::Text(t.into()),
        meta: Default::default(),
    };
    // Both sides send first, concurrently, through different writers.
    let (from_alice, from_bob) = (
        cmd("alice", "a1", send("bob", "hi bob")),
        cmd("bob", "b1", send("alice", "hi alice")),
    );
    let (a, b) = tokio::join!(
        app.execute(&conv, &from_alice, ""),
        other.execute(&conv, &from_bob, ""),
    );
    assert!(matches!(a.unwrap(), AppendOutcome::Stored { .. }));
    assert!(matches!(b.unwrap(), AppendOutcome::Stored { .. }));
    let events = history(&js, topo, &conv).await;
    let types: Vec<&str> = events
        .iter()
        .map(|e| im_streams::conversation::event_type(&e.event))
        .collect();
    assert_eq!(
        types,
        ["conversation_created", "message_sent", "message_sent"]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.event.conv_seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[tokio::test]
async fn invariant_4_a_retried_send_is_stored_once_with_the_original_ids() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let js = stack.js.clone();
    let app = appender(&server.url(), topo).await;
    create_group(
        &app,
        "g1",
        &[("alice", Role::Member), ("bob", Role::Member)],
    )
    .await;
    let send = cmd("alice", "retry-1", text("once"));

    // Plain retry on the same writer.
    let first = app.execute("g1", &send, "").await.unwrap();
    let AppendOutcome::Stored {
        stream_seq,
        conv_seq,
        ..
    } = first
    else {
        panic!("{first:?}")
    };
    let again = app.execute("g1", &send, "").await.unwrap();
    assert_eq!(
        again,
        AppendOutcome::Duplicate {
            conv_id: "g1".into(),
            stream_seq,
            conv_seq
        }
    );

    // Retry on another writer (the client reconnected to another gateway),
    // after someone else wrote in between.
    app.execute("g1", &cmd("bob", "b-1", text("between")), "")
        .await
        .unwrap();
    let other = appender(&server.url(), topo).await;
    let via_other = other.execute("g1", &send, "").await.unwrap();
    assert_eq!(
        via_other,
        AppendOutcome::Duplicate {
            conv_id: "g1".into(),
            stream_seq,
            conv_seq
        }
    );

    // The first PubAck is lost: the writer answers "unavailable" though the
    // server stored the event; the client retries.
    let lost = cmd("alice", "lost-ack", text("was it stored?"));
    app.drop_next_ack();
    let err = app.execute("g1", &lost, "").await.unwrap_err();
    assert!(
        matches!(err, im_streams::StreamsError::Unavailable { .. }),
        "{err}"
    );
    let retried = app.execute("g1", &lost, "").await.unwrap();
    let AppendOutcome::Duplicate {
        stream_seq: lost_seq,
        conv_seq: lost_conv_seq,
        ..
    } = retried
    else {
        panic!("{retried:?}")
    };
    // ... and so does a fresh writer, and the one that lost the ack again.
    let fresh = appender(&server.url(), topo).await;
    assert_eq!(fresh.execute("g1", &lost, "").await.unwrap(), retried);
    assert_eq!(app.execute("g1", &lost, "").await.unwrap(), retried);

    // Exactly one message per client_msg_id in the log.
    let events = history(&js, topo, "g1").await;
    let count = |id: &str| {
        events
            .iter()
            .filter(|e| e.event.client_msg_id == id)
            .count()
    };
    assert_eq!(count("retry-1"), 1);
    assert_eq!(count("lost-ack"), 1);
    let stored = events
        .iter()
        .find(|e| e.event.client_msg_id == "lost-ack")
        .unwrap();
    assert_eq!(
        (stored.stream_seq, stored.event.conv_seq),
        (lost_seq, lost_conv_seq)
    );

    // Reusing a client_msg_id for another conversation is refused, not
    // answered with the other conversation's ids.
    create_group(&app, "g2", &[("alice", Role::Member)]).await;
    let reuse = fresh.execute("g2", &send, "").await.unwrap();
    assert!(
        matches!(reuse, AppendOutcome::Rejected(ref r) if r.code() == "invalid_argument"),
        "{reuse:?}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_appends_nothing() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let js = stack.js.clone();
    let app = appender(&server.url(), topo).await;
    create_group(
        &app,
        "g1",
        &[
            ("admin", Role::Admin),
            ("muted", Role::Member),
            ("black", Role::Member),
        ],
    )
    .await;
    let until = i64::MAX / 2;
    let ok = |o: AppendOutcome| assert!(matches!(o, AppendOutcome::Stored { .. }), "{o:?}");
    ok(app
        .execute(
            "g1",
            &cmd(
                "admin",
                "mute",
                Action::Mute {
                    user: "muted".into(),
                    until_ms: until,
                },
            ),
            "",
        )
        .await
        .unwrap());
    ok(app
        .execute(
            "g1",
            &cmd(
                "admin",
                "bl",
                Action::Blacklist {
                    user: "black".into(),
                },
            ),
            "",
        )
        .await
        .unwrap());
    let before = conv_message_count(&js).await;

    let mut cases: Vec<(String, im_streams::Command, &str)> = Vec::new();
    for bad in ["a.b", "*", ">", "a b", "", "x".repeat(65).as_str()] {
        cases.push((
            bad.to_string(),
            cmd("owner", "c1", text("x")),
            "invalid_argument",
        ));
        cases.push(("g1".into(), cmd(bad, "c1", text("x")), "invalid_argument"));
        cases.push((
            "g1".into(),
            cmd("owner", bad, text("x")),
            "invalid_argument",
        ));
    }
    cases.push((
        "g1".into(),
        cmd(
            "owner",
            "big",
            text(&"x".repeat(im_streams::conversation::TEXT_BYTES_MAX + 1)),
        ),
        "too_large",
    ));
    cases.push(("g1".into(), cmd("stranger", "c2", text("x")), "not_member"));
    cases.push(("g1".into(), cmd("muted", "c3", text("x")), "muted"));
    cases.push(("g1".into(), cmd("black", "c4", text("x")), "blacklisted"));
    cases.push((
        "nope".into(),
        cmd("owner", "c5", text("x")),
        "conversation_not_found",
    ));
    for (conv, c, code) in cases {
        match app.execute(&conv, &c, "").await.unwrap() {
            AppendOutcome::Rejected(r) => assert_eq!(r.code(), code, "{conv:?} {c:?}: {r}"),
            other => panic!("{conv:?} {c:?} was not refused: {other:?}"),
        }
    }
    // Receipts: beyond the end, from a non-member, or with bad ids.
    let r = app
        .append_receipt("g1", "stranger", "d1", ReceiptKind::Read, 1, "")
        .await
        .unwrap();
    assert!(
        matches!(r, ReceiptOutcome::Rejected(ref r) if r.code() == "not_member"),
        "{r:?}"
    );
    let r = app
        .append_receipt("g1", "admin", "d1", ReceiptKind::Read, 999, "")
        .await
        .unwrap();
    assert!(
        matches!(r, ReceiptOutcome::Rejected(ref r) if r.code() == "cursor_beyond_end"),
        "{r:?}"
    );
    let r = app
        .append_receipt("g1", "admin", "d.1", ReceiptKind::Delivered, 1, "")
        .await
        .unwrap();
    assert!(
        matches!(r, ReceiptOutcome::Rejected(ref r) if r.code() == "invalid_argument"),
        "{r:?}"
    );

    assert_eq!(conv_message_count(&js).await, before, "nothing appended");
    let rcpt = js
        .get_stream(RCPT_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(rcpt, 0, "no receipt appended");
}

#[tokio::test]
async fn receipts_are_appended_without_cas_and_deduplicated() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let js = stack.js.clone();
    let app = appender(&server.url(), topo).await;
    create_group(&app, "g1", &[("bob", Role::Member)]).await;
    app.execute("g1", &cmd("owner", "m1", text("hi")), "")
        .await
        .unwrap();
    // The same cursor twice is a duplicate; a new kind is not.
    let bob_receipt = |kind| {
        let app = app.clone();
        async move {
            match app
                .append_receipt("g1", "bob", "phone", kind, 2, "t")
                .await
                .unwrap()
            {
                ReceiptOutcome::Stored { duplicate, .. } => duplicate,
                other => panic!("{other:?}"),
            }
        }
    };
    assert!(!bob_receipt(ReceiptKind::Delivered).await);
    assert!(bob_receipt(ReceiptKind::Delivered).await);
    assert!(!bob_receipt(ReceiptKind::Read).await);
    // The same cursor in another conversation is another receipt.
    create_group(&app, "g2", &[("bob", Role::Member)]).await;
    app.execute("g2", &cmd("owner", "m2", text("hi")), "")
        .await
        .unwrap();
    let other = app
        .append_receipt("g2", "bob", "phone", ReceiptKind::Read, 2, "t")
        .await
        .unwrap();
    assert!(
        matches!(
            other,
            ReceiptOutcome::Stored {
                duplicate: false,
                ..
            }
        ),
        "{other:?}"
    );
    let stream = js.get_stream(RCPT_STREAM).await.unwrap();
    let msg = stream
        .direct_get_last_for_subject(topo.rcpt_subject("g1").unwrap())
        .await
        .unwrap();
    let ev: v1::ReceiptEvent = im_schema::decode(&msg.payload).unwrap();
    assert_eq!(ev.user_id, "bob");
    assert_eq!(
        ev.kind,
        Some(v1::receipt_event::Kind::Read(v1::Read { up_to_seq: 2 }))
    );
    // A removed member's cursor is refused, even through a writer whose
    // cache predates the removal.
    let stale = appender(&server.url(), topo).await;
    stale.current_state("g1").await.unwrap();
    app.execute(
        "g1",
        &cmd("owner", "rm", Action::RemoveMember { user: "bob".into() }),
        "",
    )
    .await
    .unwrap();
    let r4 = stale
        .append_receipt("g1", "bob", "phone", ReceiptKind::Read, 2, "")
        .await
        .unwrap();
    assert!(
        matches!(r4, ReceiptOutcome::Rejected(ref r) if r.code() == "not_member"),
        "{r4:?}"
    );
}

/// The retry path relies on this server behaviour (checked on the pinned
/// release): the expected-last-subject-sequence check comes before msg-id
/// dedupe, so a stale retry is a 10071 conflict; re-published at the current
/// version, the same msg id is answered as a duplicate with the original
/// sequence. The appender therefore refreshes on conflict and retries, and
/// either finds the send in its recent index or gets the duplicate ack.
#[tokio::test]
async fn server_checks_expected_sequence_before_dedupe() {
    use async_nats::jetstream::{context::PublishErrorKind, message::PublishMessage};
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let topo = stack.topology;
    let js = stack.js.clone();
    let subject = topo.conv_subject("raw").unwrap();
    let publish = |expected: u64, id: &str| {
        PublishMessage::build()
            .payload("x".into())
            .message_id(id)
            .expected_last_subject_sequence(expected)
    };
    let first = js
        .send_publish(subject.clone(), publish(0, "p:1"))
        .await
        .unwrap()
        .await
        .unwrap();
    let second = js
        .send_publish(subject.clone(), publish(first.sequence, "p:2"))
        .await
        .unwrap()
        .await
        .unwrap();
    let stale = js
        .send_publish(subject.clone(), publish(0, "p:1"))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), PublishErrorKind::WrongLastSequence);
    let dup = js
        .send_publish(subject.clone(), publish(second.sequence, "p:1"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.sequence, first.sequence);
    let info = js
        .get_stream(CONV_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(info, 2);
}

#[tokio::test]
async fn a_writer_out_of_retries_reports_the_conflict_it_lost() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let js = stack.js.clone();
    let fresh = appender(&server.url(), topo).await;
    let options = im_streams::AppenderOptions {
        no_forwarding: true,
        conflict_retries_max: Some(0),
        ..Default::default()
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let stale = im_streams::Appender::with_options(client, topo, options)
        .await
        .unwrap();
    create_group(&fresh, "g1", &[("bob", Role::Member)]).await;
    let known = stale.current_state("g1").await.unwrap().version;
    let Ok(AppendOutcome::Stored {
        stream_seq: newer, ..
    }) = fresh
        .execute("g1", &cmd("bob", "b1", text("first")), "")
        .await
    else {
        panic!("fresh writer stores")
    };
    let before = conv_message_count(&js).await;
    let err = stale
        .execute("g1", &cmd("owner", "o1", text("late")), "")
        .await
        .unwrap_err();
    match err {
        im_streams::StreamsError::Conflict {
            expected,
            actual,
            attempts,
        } => {
            assert_eq!((expected, actual, attempts), (known, newer, 1));
        }
        other => panic!("{other}"),
    }
    assert_eq!(conv_message_count(&js).await, before, "nothing appended");
    assert_eq!(stale.stats().conflicts, 1);
    // Retried (the client's move), it lands after the event it lost to.
    let out = stale
        .execute("g1", &cmd("owner", "o1", text("late")), "")
        .await
        .unwrap();
    assert!(
        matches!(out, AppendOutcome::Stored { conv_seq: 3, .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn an_incompatible_existing_stream_is_refused_not_changed() {
    use async_nats::jetstream::stream::{Config, StorageType};
    let server = NatsServer::start().await.unwrap();
    let js = js_for(&server.url()).await;
    js.create_stream(Config {
        name: CONV_STREAM.into(),
        subjects: vec!["im.conv.>".into()],
        storage: StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = im_streams::apply_streams(&js, &StreamSettings::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, im_streams::StreamsError::IncompatibleStream { field, .. } if field == "storage"),
        "{err}"
    );
    let info = js
        .get_stream(CONV_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.storage, StorageType::Memory, "left as it was");
}

/// A message's media must be an upload recorded for its sender, as
/// recorded; a stored one leaves a `MediaSent` record.
#[tokio::test]
async fn media_in_a_message_must_be_the_senders_recorded_upload() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let js = stack.js.clone();
    let app = appender(&server.url(), topo).await;
    create_group(&app, "g1", &[("bob", Role::Member)]).await;
    let media = v1::MediaRef {
        media_id: "md1".into(),
        size: 10,
        checksum: "ab".repeat(32),
        checksum_algo: "sha256".into(),
        mime: "image/png".into(),
        ..Default::default()
    };
    let send = |actor: &str, id: &str, m: v1::MediaRef| {
        cmd(
            actor,
            id,
            Action::Send {
                peer: None,
                body: im_streams::MessageBody::Media(m),
                meta: Default::default(),
            },
        )
    };
    let rejected = |o: AppendOutcome| match o {
        AppendOutcome::Rejected(r) => r.to_string(),
        other => panic!("{other:?}"),
    };
    // Not uploaded at all.
    let r = rejected(
        app.execute("g1", &send("owner", "s1", media.clone()), "")
            .await
            .unwrap(),
    );
    assert!(r.contains("no upload"), "{r}");
    im_streams::media::record_upload(
        &js,
        &v1::MediaUploaded {
            media: Some(media.clone()),
            uploader: "owner".into(),
            at_ms: 1,
            object_key: "md1".into(),
        },
    )
    .await
    .unwrap();
    // Recorded once only.
    assert!(im_streams::media::record_upload(
        &js,
        &v1::MediaUploaded {
            media: Some(media.clone()),
            uploader: "bob".into(),
            ..Default::default()
        },
    )
    .await
    .is_err());
    // Someone else's upload, or the upload with other attributes.
    let r = rejected(
        app.execute("g1", &send("bob", "s2", media.clone()), "")
            .await
            .unwrap(),
    );
    assert!(r.contains("not uploaded by the sender"), "{r}");
    let bigger = v1::MediaRef {
        size: 11,
        ..media.clone()
    };
    let r = rejected(
        app.execute("g1", &send("owner", "s3", bigger), "")
            .await
            .unwrap(),
    );
    assert!(r.contains("differ from the upload"), "{r}");
    assert!(im_streams::media::sent_conversations(&js, "md1")
        .await
        .unwrap()
        .is_empty());
    // The uploader's own.
    let out = app
        .execute("g1", &send("owner", "s4", media), "")
        .await
        .unwrap();
    assert!(matches!(out, AppendOutcome::Stored { .. }), "{out:?}");
    assert_eq!(
        im_streams::media::sent_conversations(&js, "md1")
            .await
            .unwrap(),
        vec!["g1".to_string()]
    );
}

#[tokio::test]
async fn the_writer_cache_stays_under_its_byte_bound() {
    const BOUND: usize = 512 * 1024;
    const GROUPS: usize = 40;
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let _js = stack.js.clone();
    let client = async_nats::connect(server.url()).await.unwrap();
    let options = im_streams::AppenderOptions {
        cache_bytes_max: Some(BOUND),
        ..Default::default()
    };
    let app = im_streams::Appender::with_options(client, topo, options)
        .await
        .unwrap();
    // 40 groups of 400 members: ~30 KB each, twice the bound in all.
    let members: Vec<String> = (0..400).map(|i| format!("member-{i}")).collect();
    let refs: Vec<(&str, Role)> = members.iter().map(|m| (m.as_str(), Role::Member)).collect();
    for g in 0..GROUPS {
        create_group(&app, &format!("big{g}"), &refs).await;
        let (conversations, bytes) = app.cache_usage();
        assert!(
            bytes <= BOUND,
            "{bytes} bytes in {conversations} conversations"
        );
    }
    let (conversations, _) = app.cache_usage();
    assert!(
        conversations < GROUPS,
        "nothing was evicted: {conversations}"
    );
    // An evicted conversation is loaded again when next used.
    let sent = app
        .execute("big0", &cmd("member-7", "late", text("still here")), "")
        .await
        .unwrap();
    assert!(
        matches!(sent, AppendOutcome::Stored { conv_seq: 2, .. }),
        "{sent:?}"
    );
    assert!(app.cache_usage().1 <= BOUND);
}

#[tokio::test]
async fn a_working_set_of_conversations_stays_cached_under_the_default_bound() {
    // Evicting a conversation still being written to costs a reload of its
    // log on its next command: the default bound must hold a realistic
    // working set (here 300 conversations with full recent indexes).
    const CONVERSATIONS: usize = 300;
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let _js = stack.js.clone();
    let app = appender(&server.url(), topo).await;
    for c in 0..CONVERSATIONS {
        create_group(&app, &format!("w{c}"), &[("alice", Role::Member)]).await;
    }
    let (_, small) = app.cache_usage();
    // Each index full: more messages than it keeps, in one conversation (the
    // size of one is what matters).
    let full = im_streams::seen::RECENT_COMMANDS_MAX + 10;
    for i in 0..full {
        app.execute("w0", &cmd("alice", &format!("m{i}"), text("x")), "")
            .await
            .unwrap();
    }
    let (_, after) = app.cache_usage();
    let one_full = after - small + small / CONVERSATIONS;
    println!("a conversation with full indexes: about {one_full} bytes");
    assert!(
        CONVERSATIONS * one_full <= im_streams::writer_cache::WRITER_CACHE_BYTES_MAX,
        "{CONVERSATIONS} full conversations would not fit: {one_full} bytes"
    );
    // The people logs the adds were checked against have no events: not
    // kept.
    assert_eq!(app.cache_usage().0, CONVERSATIONS);
}

/// An event the stream refuses as too large is `EventTooLarge` (a 413 at
/// the gateway, never "unavailable, retry"), and nothing is stored.
#[tokio::test]
async fn an_event_over_the_streams_message_limit_is_too_large_not_unavailable() {
    let settings = StreamSettings {
        max_msg_bytes: 4096,
        ..Default::default()
    };
    let stack = Stack::start_with(&settings).await;
    let app = appender(&stack.server.url(), stack.topology).await;
    let send = |t: String| Action::Send {
        peer: Some("bob".into()),
        body: MessageBody::Text(t),
        meta: Default::default(),
    };
    let conv = direct_conversation_id("alice", "bob").unwrap();
    let small = app
        .execute(&conv, &cmd("alice", "small", send("hi".into())), "")
        .await
        .unwrap();
    assert!(
        matches!(small, AppendOutcome::Stored { conv_seq: 2, .. }),
        "{small:?}"
    );
    let big = app
        .execute(&conv, &cmd("alice", "big", send("x".repeat(8000))), "")
        .await;
    assert!(
        matches!(big, Err(im_streams::StreamsError::EventTooLarge { .. })),
        "{big:?}"
    );
    assert_eq!(history(&stack.js, stack.topology, &conv).await.len(), 2);
}
