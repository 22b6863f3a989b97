//! Fan-out (I12), poison events, and min_position, against a real
//! nats-server and an in-process projector.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_member_gets_each_event_once_in_order_and_history_already_has_it() {
    const MEMBERS: usize = 6;
    const MESSAGES: usize = 40;
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    let listener = async_nats::connect(s.server.url()).await.unwrap();
    let mut deliveries = listener.subscribe("im.deliver.*.e").await.unwrap();
    listener.flush().await.unwrap();

    let users: Vec<String> = (0..MEMBERS).map(|i| format!("u{i}")).collect();
    let members: Vec<(&str, Role)> = users.iter().map(|u| (u.as_str(), Role::Member)).collect();
    s.create("g1", &members).await;
    s.create("g2", &members[..2]).await;
    for i in 0..MESSAGES {
        let conv = if i % 4 == 0 { "g2" } else { "g1" };
        s.send(conv, &users[i % 2], &format!("m{i}")).await;
    }
    let expected_g1 = 1 + MESSAGES - MESSAGES / 4;
    let expected_g2 = 1 + MESSAGES / 4;
    let total = (MEMBERS + 1) * expected_g1 + 3 * expected_g2;

    // (user, conv) -> conv_seqs received, in arrival order.
    let mut got: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for _ in 0..total {
        let msg = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
            .await
            .expect("a delivery")
            .unwrap();
        let user = msg
            .subject
            .as_str()
            .trim_start_matches("im.deliver.")
            .trim_end_matches(".e")
            .to_string();
        let env: v1::Envelope = im_schema::decode(&msg.payload).unwrap();
        let Some(v1::envelope::Payload::Deliver(d)) = env.payload else {
            panic!("{env:?}")
        };
        assert!(d.event.is_some(), "small groups get full events");
        // I12: whoever sees seq N fetches it with `min_position` N (the
        // read may wait for the commit; it never answers without it).
        let R::History(page) = s
            .query(
                &d.conversation_id,
                (d.stream_seq, 0),
                Query::History(v1::HistoryQuery {
                    conversation_id: d.conversation_id.clone(),
                    user_id: user.clone(),
                    from_seq: d.conv_seq,
                    limit: 1,
                    ..Default::default()
                }),
            )
            .await
        else {
            panic!("history")
        };
        assert_eq!(
            page.entries.len(),
            1,
            "{user} saw {} before history had it",
            d.conv_seq
        );
        got.entry((user, d.conversation_id))
            .or_default()
            .push(d.conv_seq);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.next())
            .await
            .is_err(),
        "no extra deliveries"
    );
    for u in users.iter().chain(std::iter::once(&"owner".to_string())) {
        assert_eq!(
            got[&(u.clone(), "g1".to_string())],
            (1..=expected_g1 as u64).collect::<Vec<_>>(),
            "{u} g1"
        );
    }
    for u in ["u0", "u1", "owner"] {
        assert_eq!(
            got[&(u.to_string(), "g2".to_string())],
            (1..=expected_g2 as u64).collect::<Vec<_>>(),
            "{u} g2"
        );
    }
    assert!(
        !got.contains_key(&("u3".to_string(), "g2".to_string())),
        "non-members get nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_above_the_threshold_is_delivered_once_on_its_group_subject() {
    const MEMBERS: usize = 600;
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    let listener = async_nats::connect(s.server.url()).await.unwrap();
    let mut personal = listener.subscribe("im.deliver.*.e").await.unwrap();
    let mut group = listener.subscribe("im.group.big").await.unwrap();
    listener.flush().await.unwrap();
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("u{i}")).collect();
    let members: Vec<(&str, Role)> = users.iter().map(|u| (u.as_str(), Role::Member)).collect();
    s.create("big", &members).await;
    s.send("big", "u7", "hello everyone").await;
    let decode = |msg: async_nats::Message| {
        let env: v1::Envelope = im_schema::decode(&msg.payload).unwrap();
        let Some(v1::envelope::Payload::Deliver(d)) = env.payload else {
            panic!()
        };
        d
    };
    // The creation (one event) makes it large: every member's gateway
    // learns of it from their own copy, and it is on the group subject.
    let mut personal_seqs: BTreeMap<(u64, bool), usize> = BTreeMap::new();
    for _ in 0..MEMBERS + 1 {
        let msg = tokio::time::timeout(Duration::from_secs(10), personal.next())
            .await
            .expect("a personal copy")
            .unwrap();
        let d = decode(msg);
        assert!(d.event.is_some(), "{d:?}");
        *personal_seqs.entry((d.conv_seq, d.group)).or_default() += 1;
    }
    assert_eq!(personal_seqs, BTreeMap::from([((1, true), MEMBERS + 1)]));
    let mut on_group = Vec::new();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(10), group.next())
            .await
            .expect("a group delivery")
            .unwrap();
        let d = decode(msg);
        assert!(d.group && d.event.is_some(), "the whole event, once: {d:?}");
        on_group.push((d.conv_seq, d.members_seq));
    }
    assert_eq!(on_group, [(1, 0), (2, 1)], "(conv_seq, members_seq)");
    // The message went to no one personally.
    let more = tokio::time::timeout(Duration::from_millis(500), personal.next()).await;
    assert!(more.is_err(), "a message published per member: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_events_are_dead_lettered_and_later_events_applied() {
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    s.create("g1", &[("bob", Role::Member)]).await;
    let js = async_nats::jetstream::new(s.client.clone());
    // Around the append path: bytes that are not an event, and an event from
    // a newer schema.
    let garbage_subject = s.topology.conv_subject("junk").unwrap();
    js.publish(garbage_subject, "not protobuf \u{1}\u{2}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let newer = v1::ConvEvent {
        conversation_id: "future".into(),
        conv_seq: 1,
        schema_version: 99,
        ..Default::default()
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(im_streams::codec::HDR_CONV_SEQ, "1");
    js.publish_with_headers(
        s.topology.conv_subject("future").unwrap(),
        headers,
        im_schema::encode(&newer).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let (after, _) = s.send("g1", "bob", "still flowing").await;

    let page = first_page(&s, "g1", after).await;
    assert_eq!(
        page.entries.len(),
        2,
        "the event after the poison is applied"
    );
    // Every projection, not only history, has applied past the poison.
    wait_caught_up(&s.client, "main", after, 0).await;
    let st = status(&s.client, "main").await;
    for name in im_projectors::projections::NAMES {
        assert_eq!(st[name].dead_letters, 2, "{name}");
        assert!(st[name].conv_checkpoint >= after, "{name}");
    }
}

/// The first history page of `conv` once `pos` is applied.
async fn first_page(s: &Stack, conv: &str, pos: u64) -> v1::HistoryPage {
    let query = Query::History(v1::HistoryQuery {
        conversation_id: conv.into(),
        limit: 10,
        ..Default::default()
    });
    match s.query(conv, (pos, 0), query).await {
        R::History(page) => page,
        other => panic!("history: {other:?}"),
    }
}

/// Publishes `ev` on `conv`'s subject around the writers (no CAS).
async fn forge(s: &Stack, conv: &str, ev: &v1::ConvEvent) -> u64 {
    let js = async_nats::jetstream::new(s.client.clone());
    let headers = im_streams::codec::conv_headers(ev, "forged", "forger");
    js.publish_with_headers(
        s.topology.conv_subject(conv).unwrap(),
        headers,
        im_schema::encode(ev).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap()
    .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_that_do_not_extend_the_log_are_dead_lettered_never_shown_or_delivered() {
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    s.create("g1", &[("bob", Role::Member)]).await;
    let (original, _) = s.send("g1", "bob", "original").await;
    // Deliveries of what came before are out of the way.
    wait_caught_up(&s.client, "main", original, 0).await;
    let mut bob = s.client.subscribe("im.deliver.bob.e").await.unwrap();
    s.client.flush().await.unwrap();
    let log = im_streams::log::read_conv_events(
        &s.client,
        "IM_CONV",
        &s.topology.conv_subject("g1").unwrap(),
        1,
        10,
    )
    .await
    .unwrap();
    let (first, second) = (&log[0], &log[1]);
    let forged_text = |t: &str| {
        Some(v1::conv_event::Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Text(t.into())),
            meta: Default::default(),
        }))
    };
    let base = v1::ConvEvent {
        conversation_id: "g1".into(),
        actor: "mallory".into(),
        client_msg_id: "forged".into(),
        schema_version: im_schema::SCHEMA_VERSION,
        ..Default::default()
    };
    // A repeat of conv_seq 2 that would replace the original's text, a gap,
    // a wrong link, and a conversation that starts in its middle.
    let forgeries = [
        v1::ConvEvent {
            conv_seq: 2,
            prev_hash: first.hash.to_vec(),
            kind: forged_text("replaced"),
            ..base.clone()
        },
        v1::ConvEvent {
            conv_seq: 9,
            prev_hash: second.hash.to_vec(),
            kind: forged_text("from the future"),
            ..base.clone()
        },
        v1::ConvEvent {
            conv_seq: 3,
            prev_hash: vec![7; 32],
            kind: forged_text("wrong link"),
            ..base.clone()
        },
    ];
    for ev in &forgeries {
        forge(&s, "g1", ev).await;
    }
    let headless = v1::ConvEvent {
        conversation_id: "fake".into(),
        conv_seq: 4,
        prev_hash: vec![1; 32],
        kind: forged_text("no creation"),
        ..base.clone()
    };
    forge(&s, "fake", &headless).await;
    // The writers step over them too: the conversation goes on.
    let (after, conv_seq) = s.send("g1", "bob", "still flowing").await;
    assert_eq!(conv_seq, 3);
    assert_eq!(s.app.stats().stepped_over, 3);

    let page = first_page(&s, "g1", after).await;
    let texts: Vec<(u64, String)> = page
        .entries
        .iter()
        .map(|e| {
            let ev = e.event.as_ref().unwrap();
            let text = match &ev.kind {
                Some(v1::conv_event::Kind::MessageSent(m)) => match &m.body {
                    Some(v1::message_sent::Body::Text(t)) => t.clone(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            (ev.conv_seq, text)
        })
        .collect();
    assert_eq!(
        texts,
        vec![
            (1, String::new()),
            (2, "original".into()),
            (3, "still flowing".into())
        ]
    );
    wait_caught_up(&s.client, "main", after, 0).await;
    let st = status(&s.client, "main").await;
    for name in im_projectors::projections::NAMES {
        assert_eq!(st[name].dead_letters, 4, "{name}");
    }
    // bob was delivered the real events only (those before the forgeries
    // may still be arriving).
    loop {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), bob.next())
            .await
            .unwrap()
            .unwrap();
        let env: v1::Envelope = im_schema::decode(&got.payload).unwrap();
        let Some(v1::envelope::Payload::Deliver(d)) = env.payload else {
            panic!("{env:?}")
        };
        assert_eq!(d.conversation_id, "g1");
        assert_ne!(d.event.unwrap().actor, "mallory");
        if d.conv_seq == 3 {
            break;
        }
    }
    let more = tokio::time::timeout(std::time::Duration::from_millis(300), bob.next()).await;
    assert!(more.is_err(), "nothing else is delivered: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_position_sees_the_append_or_says_not_yet() {
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    s.create("g1", &[("bob", Role::Member)]).await;
    for i in 0..50 {
        let (pos, conv_seq) = s.send("g1", "bob", &format!("m{i}")).await;
        // Right after the append: the answer includes it, never a stale page.
        let R::History(page) = s
            .query(
                "g1",
                (pos, 0),
                Query::History(v1::HistoryQuery {
                    conversation_id: "g1".into(),
                    from_seq: conv_seq,
                    limit: 1,
                    ..Default::default()
                }),
            )
            .await
        else {
            panic!("history")
        };
        assert_eq!(page.entries[0].event.as_ref().unwrap().conv_seq, conv_seq);
        let rpos = s.read("g1", "owner", conv_seq).await;
        let R::Unread(u) = s
            .query(
                "g1",
                (pos, rpos),
                Query::Unread(v1::UnreadQuery {
                    user_id: "owner".into(),
                    conversation_id: "g1".into(),
                }),
            )
            .await
        else {
            panic!("unread")
        };
        assert_eq!((u.total, u.conversations[0].last_read_seq), (0, conv_seq));
    }
    // A position the projector has not reached: a clear "not yet".
    let started = std::time::Instant::now();
    let far = s
        .query(
            "g1",
            (1_000_000, 0),
            Query::Role(v1::RoleQuery {
                conversation_id: "g1".into(),
                user_id: "bob".into(),
            }),
        )
        .await;
    match far {
        R::Error(e) => {
            assert_eq!(e.code, v1::QueryErrorCode::NotYet as i32);
            assert!(e.message.contains("not yet"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "bounded wait");
    // Bad ids are refused, not looked up.
    let bad = s
        .query(
            "g1",
            (0, 0),
            Query::History(v1::HistoryQuery {
                conversation_id: "a.b".into(),
                limit: 1,
                ..Default::default()
            }),
        )
        .await;
    assert!(
        matches!(bad, R::Error(ref e) if e.code == v1::QueryErrorCode::BadRequest as i32),
        "{bad:?}"
    );
}

/// The receipt updates a subscriber gets until it has been quiet a while.
async fn receipt_updates(sub: &mut async_nats::Subscriber) -> Vec<v1::ReceiptUpdate> {
    let mut found = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(800), sub.next()).await {
        let env: v1::Envelope = im_schema::decode(&msg.payload).unwrap();
        if let Some(v1::envelope::Payload::ReceiptUpdate(u)) = env.payload {
            found.push(u);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_cursors_reach_the_other_members_as_receipt_updates() {
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    let listener = async_nats::connect(s.server.url()).await.unwrap();
    let mut to_bob = listener.subscribe("im.deliver.bob.e").await.unwrap();
    let mut to_alice = listener.subscribe("im.deliver.alice.e").await.unwrap();
    listener.flush().await.unwrap();
    s.create("g1", &[("alice", Role::Member), ("bob", Role::Member)])
        .await;
    let (_, seq) = s.send("g1", "bob", "read me").await;
    s.read("g1", "alice", seq).await;

    let bob_got = receipt_updates(&mut to_bob).await;
    assert_eq!(bob_got.len(), 1, "{bob_got:?}");
    let u = &bob_got[0];
    assert_eq!(
        (u.user_id.as_str(), u.kind, u.up_to_seq),
        ("alice", v1::ReceiptKind::Read as i32, seq)
    );
    assert!(
        receipt_updates(&mut to_alice).await.is_empty(),
        "the reader is not told of their own read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_checkpoint_lag_applied_and_dead_letters() {
    let mut s = Stack::start().await;
    let p = s.projector("main", None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let js = async_nats::jetstream::new(s.client.clone());
    let (_current, watching) = tokio::sync::watch::channel(Some(p.context.clone()));
    let view = im_projectors::metrics::single(watching);
    tokio::spawn(im_projectors::metrics::serve(listener, view, js));
    s.create("g1", &[("bob", Role::Member)]).await;
    let (pos, _) = s.send("g1", "bob", "count me").await;
    let R::Role(_) = s
        .query(
            "g1",
            (pos, 0),
            Query::Role(v1::RoleQuery {
                conversation_id: "g1".into(),
                user_id: "bob".into(),
            }),
        )
        .await
    else {
        panic!()
    };
    // Every projection has applied `pos` once the slowest has.
    for name in im_projectors::projections::NAMES {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while status(&s.client, "main").await[name].conv_checkpoint < pos {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    for name in im_projectors::projections::NAMES {
        let cp = format!("im_projection_checkpoint{{projection=\"{name}\",stream=\"IM_CONV\",instance=\"main\"}} {pos}");
        let lag = format!(
            "im_projection_lag{{projection=\"{name}\",stream=\"IM_CONV\",instance=\"main\"}} 0"
        );
        let applied = format!(
            "im_projection_events_applied_total{{projection=\"{name}\",instance=\"main\"}} 2"
        );
        let dead = format!(
            "im_projection_dead_letters_total{{projection=\"{name}\",instance=\"main\"}} 0"
        );
        for line in [cp, lag, applied, dead] {
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_consumer_per_stream_and_nothing_left_unacknowledged() {
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    s.create("g1", &[("bob", Role::Member)]).await;
    let mut last = 0;
    for i in 0..600 {
        last = s.send("g1", "bob", &format!("m{i}")).await.0;
    }
    let read = s.read("g1", "bob", 5).await;
    wait_caught_up(&s.client, "main", last, read).await;
    let js = async_nats::jetstream::new(s.client.clone());
    for (stream, tail) in [("IM_CONV", last), ("IM_RCPT", read)] {
        let mut st = js.get_stream(stream).await.unwrap();
        let mut names = Vec::new();
        let mut consumers = st.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.unwrap();
            if info.config.durable_name.is_some() {
                names.push(info.name.clone());
            }
        }
        let expected = format!("main_{}", if stream == "IM_CONV" { "conv" } else { "rcpt" });
        assert_eq!(
            names,
            vec![expected.clone()],
            "one durable consumer on {stream}"
        );
        // The acks follow the commits: once caught up, nothing is pending
        // and the ack floor is the stream's tail (no redelivery to come).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info = st.consumer_info(&expected).await.unwrap();
            if info.num_ack_pending == 0 && info.ack_floor.stream_sequence == tail {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{stream}: {info:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = st.info().await.unwrap();
    }
}
