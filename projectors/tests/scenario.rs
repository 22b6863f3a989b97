//! A scripted conversation through the real append path and a real
//! projector: every projection's view, checked by one helper.

mod common;

use common::*;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::{Action, ReceiptKind, Role};

/// What every projection should show for one conversation.
struct Expected {
    /// (conv_seq, event type, text if a message, recalled, edited)
    history: Vec<(u64, &'static str, Option<&'static str>, bool, bool)>,
    /// (user, role)
    members: Vec<(&'static str, v1::Role)>,
    blacklist: Vec<&'static str>,
    /// (user, unread, last_read_seq) for members; others must have no row.
    unread: Vec<(&'static str, u64, u64)>,
    non_members: Vec<&'static str>,
    /// (preview, preview sender)
    preview: (&'static str, &'static str),
    /// (seq, delivered_to, read_by)
    receipts: (u64, Vec<&'static str>, Vec<&'static str>),
}

async fn check_views(
    s: &Stack,
    conv: &str,
    pos: (u64, u64),
    want: &Expected,
    dedupe: &[(&str, &str, u64)],
) {
    // history, both directions
    let R::History(page) = s
        .query(
            conv,
            pos,
            Query::History(v1::HistoryQuery {
                conversation_id: conv.into(),
                limit: 100,
                ..Default::default()
            }),
        )
        .await
    else {
        panic!("history")
    };
    let got: Vec<_> = page
        .entries
        .iter()
        .map(|e| {
            let ev = e.event.as_ref().unwrap();
            let text = match &ev.kind {
                Some(v1::conv_event::Kind::MessageSent(m)) => match &m.body {
                    Some(v1::message_sent::Body::Text(t)) => Some(t.clone()),
                    _ => None,
                },
                _ => None,
            };
            (
                ev.conv_seq,
                im_streams::conversation::event_type(ev).to_string(),
                text,
                e.recalled,
                e.edited,
            )
        })
        .collect();
    let want_history: Vec<_> = want
        .history
        .iter()
        .map(|(seq, t, text, r, e)| (*seq, t.to_string(), text.map(String::from), *r, *e))
        .collect();
    assert_eq!(got, want_history, "history");
    let R::History(back) = s
        .query(
            conv,
            pos,
            Query::History(v1::HistoryQuery {
                conversation_id: conv.into(),
                limit: 3,
                direction: v1::Direction::Backward as i32,
                ..Default::default()
            }),
        )
        .await
    else {
        panic!("history backward")
    };
    let last = want.history.len() as u64;
    let back_seqs: Vec<u64> = back
        .entries
        .iter()
        .map(|e| e.event.as_ref().unwrap().conv_seq)
        .collect();
    assert_eq!(
        back_seqs,
        vec![last, last - 1, last - 2],
        "history backward"
    );
    assert_eq!(back.next_seq, last - 3);

    // members and roles
    let R::Members(m) = s
        .query(
            conv,
            pos,
            Query::Members(v1::MembersQuery {
                conversation_id: conv.into(),
                ..Default::default()
            }),
        )
        .await
    else {
        panic!("members")
    };
    let got: Vec<(String, i32)> = m
        .members
        .iter()
        .map(|r| (r.user_id.clone(), r.role))
        .collect();
    let want_members: Vec<(String, i32)> = want
        .members
        .iter()
        .map(|(u, r)| (u.to_string(), *r as i32))
        .collect();
    assert_eq!(got, want_members, "members");
    assert_eq!(m.blacklist, want.blacklist, "blacklist");
    let rec = m.conversation.unwrap();
    assert_eq!(
        (rec.last_seq, rec.version, rec.member_count as usize),
        (last, pos.0, want.members.len())
    );
    for (user, role) in &want.members {
        let R::Role(r) = s
            .query(
                conv,
                pos,
                Query::Role(v1::RoleQuery {
                    conversation_id: conv.into(),
                    user_id: user.to_string(),
                }),
            )
            .await
        else {
            panic!("role")
        };
        assert!(r.member && r.role == *role as i32, "{user}: {r:?}");
    }

    // unread, and the conversation list with its preview and unread
    for (user, unread, last_read) in &want.unread {
        let R::Unread(u) = s
            .query(
                conv,
                pos,
                Query::Unread(v1::UnreadQuery {
                    user_id: user.to_string(),
                    conversation_id: String::new(),
                }),
            )
            .await
        else {
            panic!("unread")
        };
        assert_eq!(u.total, *unread, "{user} unread");
        assert_eq!(u.conversations.len(), 1);
        assert_eq!(
            (u.conversations[0].unread, u.conversations[0].last_read_seq),
            (*unread, *last_read),
            "{user}"
        );
        let R::ConvList(list) = s
            .query(
                conv,
                pos,
                Query::ConvList(v1::ConvListQuery {
                    user_id: user.to_string(),
                    limit: 10,
                    ..Default::default()
                }),
            )
            .await
        else {
            panic!("convlist")
        };
        assert_eq!(list.items.len(), 1, "{user} convlist");
        let item = &list.items[0];
        let entry = item.entry.as_ref().unwrap();
        assert_eq!(
            (entry.preview.as_str(), entry.preview_sender.as_str()),
            want.preview,
            "{user} preview"
        );
        assert_eq!(
            (entry.last_seq, item.unread),
            (last, *unread),
            "{user} convlist row"
        );
    }
    for user in &want.non_members {
        let R::Unread(u) = s
            .query(
                conv,
                pos,
                Query::Unread(v1::UnreadQuery {
                    user_id: user.to_string(),
                    conversation_id: String::new(),
                }),
            )
            .await
        else {
            panic!("unread")
        };
        assert!(u.conversations.is_empty(), "{user} is not a member: {u:?}");
        let R::ConvList(list) = s
            .query(
                conv,
                pos,
                Query::ConvList(v1::ConvListQuery {
                    user_id: user.to_string(),
                    limit: 10,
                    ..Default::default()
                }),
            )
            .await
        else {
            panic!("convlist")
        };
        assert!(list.items.is_empty(), "{user} is not a member");
        let denied = s
            .query(
                conv,
                pos,
                Query::History(v1::HistoryQuery {
                    conversation_id: conv.into(),
                    user_id: user.to_string(),
                    limit: 10,
                    ..Default::default()
                }),
            )
            .await;
        assert!(
            matches!(denied, R::Error(ref e) if e.code == v1::QueryErrorCode::Forbidden as i32),
            "{user}: {denied:?}"
        );
    }

    // receipts
    let (seq, delivered_to, read_by) = &want.receipts;
    let R::Receipts(r) = s
        .query(
            conv,
            pos,
            Query::Receipts(v1::ReceiptsQuery {
                conversation_id: conv.into(),
                user_id: String::new(),
                seq: *seq,
            }),
        )
        .await
    else {
        panic!("receipts")
    };
    assert_eq!(&r.delivered_to, delivered_to, "delivered_to");
    assert_eq!(&r.read_by, read_by, "read_by");

    // dedupe
    for (sender, cmid, conv_seq) in dedupe {
        let R::Dedupe(d) = s
            .query(
                conv,
                pos,
                Query::Dedupe(v1::DedupeQuery {
                    sender: sender.to_string(),
                    client_msg_id: cmid.to_string(),
                    conversation_id: conv.into(),
                }),
            )
            .await
        else {
            panic!("dedupe")
        };
        assert!(d.found, "{sender}/{cmid}");
        assert_eq!(d.record.unwrap().conv_seq, *conv_seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scripted_conversation_gives_exact_views_in_every_projection() {
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    let g = "g1";
    let m = Role::Member;
    s.create(
        g,
        &[
            ("alice", Role::Admin),
            ("bob", m),
            ("carol", m),
            ("dave", m),
        ],
    )
    .await; // 1
    s.send(g, "alice", "hello").await; // 2
    s.send(g, "bob", "hi all").await; // 3
    s.send(g, "carol", "hey").await; // 4
    s.run(
        g,
        "owner",
        Action::Mute {
            user: "dave".into(),
            until_ms: i64::MAX / 2,
        },
    )
    .await; // 5
    let typo = im_streams::Command {
        actor: "alice".into(),
        client_msg_id: "typo-1".into(),
        action: Action::Send {
            peer: None,
            body: im_streams::MessageBody::Text("typo".into()),
            meta: Default::default(),
        },
    };
    s.app.execute(g, &typo, "").await.unwrap(); // 6
    s.run(
        g,
        "alice",
        Action::Edit {
            conv_seq: 6,
            text: "fixed".into(),
        },
    )
    .await; // 7
    s.send(g, "bob", "oops").await; // 8
    s.run(g, "bob", Action::Recall { conv_seq: 8 }).await; // 9
    s.run(
        g,
        "owner",
        Action::AddMember {
            user: "erin".into(),
            role: m,
        },
    )
    .await; // 10
    s.run(
        g,
        "alice",
        Action::RemoveMember {
            user: "carol".into(),
        },
    )
    .await; // 11
    s.run(
        g,
        "owner",
        Action::Blacklist {
            user: "dave".into(),
        },
    )
    .await; // 12
    let (last, _) = s.send(g, "erin", "hello erin here").await; // 13
    s.read(g, "bob", 6).await;
    s.read(g, "alice", 13).await;
    s.read(g, "erin", 13).await;
    let rcpt_last = s.receipt(g, "owner", ReceiptKind::Delivered, 13).await;

    let want = Expected {
        history: vec![
            (1, "conversation_created", None, false, false),
            (2, "message_sent", Some("hello"), false, false),
            (3, "message_sent", Some("hi all"), false, false),
            (4, "message_sent", Some("hey"), false, false),
            (5, "member_muted", None, false, false),
            (6, "message_sent", Some("fixed"), false, true),
            (7, "message_edited", None, false, false),
            (8, "message_sent", None, true, false),
            (9, "message_recalled", None, false, false),
            (10, "member_added", None, false, false),
            (11, "member_removed", None, false, false),
            (12, "member_blacklisted", None, false, false),
            (13, "message_sent", Some("hello erin here"), false, false),
        ],
        members: vec![
            ("alice", v1::Role::Admin),
            ("bob", v1::Role::Member),
            ("erin", v1::Role::Member),
            ("owner", v1::Role::Owner),
        ],
        blacklist: vec!["dave"],
        // owner: 2,3,4,6,13 (8 recalled); bob read to 6: 13; alice and erin read all.
        unread: vec![
            ("owner", 5, 0),
            ("bob", 1, 6),
            ("alice", 0, 13),
            ("erin", 0, 13),
        ],
        non_members: vec!["carol", "dave", "zed"],
        preview: ("hello erin here", "erin"),
        receipts: (
            6,
            vec!["alice", "bob", "erin", "owner"],
            vec!["alice", "bob", "erin"],
        ),
    };
    check_views(&s, g, (last, rcpt_last), &want, &[("alice", "typo-1", 6)]).await;

    // A fresh rebuild (new store, new consumers) shows exactly the same.
    let _rebuilt = s.projector("rebuild", None).await;
    wait_caught_up(&s.client, "rebuild", last, rcpt_last).await;
    let (a, b) = (
        status(&s.client, "main").await,
        status(&s.client, "rebuild").await,
    );
    for name in im_projectors::projections::NAMES {
        assert_eq!(a[name].digest, b[name].digest, "{name}");
        assert!(a[name].keys > 0, "{name} is empty");
    }
}
