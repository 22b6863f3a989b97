//! Partition splitting and unread exactness, against a real nats-server.

mod common;

use std::collections::BTreeMap;

use common::*;
use im_projectors::digest::Digest;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::{Action, Role};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_splitting_partitions_equal_one_instance() {
    let mut s = Stack::start().await;
    let p = s.topology.partitions;
    let left: Vec<u32> = (0..p / 2).collect();
    let right: Vec<u32> = (p / 2..p).collect();
    let _all = s.projector("all", None).await;
    let _left = s.projector("left", Some(left.clone())).await;
    let _right = s.projector("right", Some(right.clone())).await;

    let mut rng = StdRng::seed_from_u64(7);
    // Highest stream seq per partition, per stream.
    let mut conv_last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut rcpt_last: BTreeMap<u32, u64> = BTreeMap::new();
    let users = ["ann", "ben", "cat", "dan"];
    let convs: Vec<String> = (0..24).map(|i| format!("c{i}")).collect();
    for c in &convs {
        let (seq, _) = s
            .create(
                c,
                &[
                    ("ann", Role::Admin),
                    ("ben", Role::Member),
                    ("cat", Role::Member),
                    ("dan", Role::Member),
                ],
            )
            .await;
        conv_last.insert(s.topology.partition_of(c), seq);
    }
    for i in 0..300 {
        let c = &convs[rng.random_range(0..convs.len())];
        let part = s.topology.partition_of(c);
        let who = users[rng.random_range(0..users.len())];
        let (seq, conv_seq) = s.send(c, who, &format!("m{i}")).await;
        conv_last.insert(part, seq);
        if rng.random_bool(0.3) {
            let reader = users[rng.random_range(0..users.len())];
            let r = s.read(c, reader, conv_seq).await;
            rcpt_last.insert(part, r);
        }
        if rng.random_bool(0.05) {
            let (seq, _) = s.run(c, who, Action::Recall { conv_seq }).await;
            conv_last.insert(part, seq);
        }
    }
    let max_in = |m: &BTreeMap<u32, u64>, parts: &[u32]| {
        parts
            .iter()
            .filter_map(|p| m.get(p))
            .copied()
            .max()
            .unwrap_or(0)
    };
    let all_parts: Vec<u32> = (0..p).collect();
    wait_caught_up(
        &s.client,
        "all",
        max_in(&conv_last, &all_parts),
        max_in(&rcpt_last, &all_parts),
    )
    .await;
    wait_caught_up(
        &s.client,
        "left",
        max_in(&conv_last, &left),
        max_in(&rcpt_last, &left),
    )
    .await;
    wait_caught_up(
        &s.client,
        "right",
        max_in(&conv_last, &right),
        max_in(&rcpt_last, &right),
    )
    .await;

    let (a, l, r) = (
        status(&s.client, "all").await,
        status(&s.client, "left").await,
        status(&s.client, "right").await,
    );
    for name in im_projectors::projections::NAMES {
        let d = |st: &BTreeMap<String, v1::ProjectionStatus>| {
            Digest::from_hex(&st[name].digest, st[name].keys).unwrap()
        };
        assert!(
            l[name].keys > 0 && r[name].keys > 0,
            "{name}: both halves hold data"
        );
        assert_eq!(d(&l).combine(&d(&r)), d(&a), "{name}: left + right != all");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_is_exact_through_interleaved_sends_reads_recalls_and_after_a_rebuild() {
    let mut s = Stack::start().await;
    let _p = s.projector("main", None).await;
    let users = ["ann", "ben", "cat"];
    s.create(
        "g",
        &[
            ("ann", Role::Member),
            ("ben", Role::Member),
            ("cat", Role::Member),
        ],
    )
    .await;
    let mut rng = StdRng::seed_from_u64(11);
    // The oracle: messages (conv_seq, sender, recalled) and read cursors.
    let mut msgs: Vec<(u64, &str, bool)> = Vec::new();
    let mut read: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut pos, mut rpos) = (0, 0);
    for step in 0..150 {
        match rng.random_range(0..10) {
            0..=5 => {
                let who = users[rng.random_range(0..3)];
                let (p, conv_seq) = s.send("g", who, &format!("s{step}")).await;
                msgs.push((conv_seq, who, false));
                pos = p;
            }
            6..=7 if !msgs.is_empty() => {
                let who = users[rng.random_range(0..3)];
                let upto = msgs[rng.random_range(0..msgs.len())].0;
                rpos = s.read("g", who, upto).await;
                let r = read.entry(who).or_default();
                *r = (*r).max(upto);
            }
            8 => {
                // The sender recalls one of their recent messages.
                if let Some(m) = msgs.iter_mut().rev().take(5).find(|m| !m.2) {
                    let (p, _) = s.run("g", m.1, Action::Recall { conv_seq: m.0 }).await;
                    m.2 = true;
                    pos = p;
                }
            }
            _ => {}
        }
        for u in users {
            let want = msgs
                .iter()
                .filter(|(seq, from, recalled)| {
                    *from != u && !recalled && *seq > read.get(u).copied().unwrap_or(0)
                })
                .count() as u64;
            let R::Unread(got) = s
                .query(
                    "g",
                    (pos, rpos),
                    Query::Unread(v1::UnreadQuery {
                        user_id: u.into(),
                        conversation_id: String::new(),
                    }),
                )
                .await
            else {
                panic!("unread")
            };
            assert_eq!(got.total, want, "step {step}: {u}");
        }
    }
    let _rebuilt = s.projector("rebuild", None).await;
    wait_caught_up(&s.client, "rebuild", pos, rpos).await;
    let (a, b) = (
        status(&s.client, "main").await,
        status(&s.client, "rebuild").await,
    );
    assert_eq!(a["unread"].digest, b["unread"].digest);
    assert_eq!(a["convlist"].digest, b["convlist"].digest);
    for u in users {
        let q = |inst: &str| {
            let client = s.client.clone();
            let subject = im_projectors::query::instance_subject(inst);
            async move {
                query_at(
                    &client,
                    subject,
                    (pos, rpos),
                    Query::Unread(v1::UnreadQuery {
                        user_id: u.into(),
                        conversation_id: String::new(),
                    }),
                )
                .await
            }
        };
        assert_eq!(q("main").await, q("rebuild").await, "{u}");
    }
}

/// A position written in a partition an instance does not hold is one it
/// stands past once its consumers are drained: a conversation list asked
/// of every partition at the caller's last write is answered by each
/// (not "not yet", which a gateway turns into a 503), and still waits
/// where the instance has not applied it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_instance_answers_at_a_position_written_elsewhere() {
    let mut s = Stack::start().await;
    let p = s.topology.partitions;
    let left: Vec<u32> = (0..p / 2).collect();
    let right: Vec<u32> = (p / 2..p).collect();
    let _left = s.projector("left", Some(left.clone())).await;
    let _right = s.projector("right", Some(right.clone())).await;
    let in_half = |half: &[u32]| {
        (0..1000)
            .map(|i| format!("w{i}"))
            .find(|c| half.contains(&s.topology.partition_of(c)))
            .unwrap()
    };
    let (here, there) = (in_half(&left), in_half(&right));
    s.create(&here, &[("ann", Role::Admin), ("ben", Role::Member)])
        .await;
    s.create(&there, &[("ann", Role::Admin), ("ben", Role::Member)])
        .await;
    let (pos, _) = s.send(&there, "ann", "hi").await;
    let list = Query::ConvList(v1::ConvListQuery {
        user_id: "ann".into(),
        limit: 10,
        ..Default::default()
    });
    let subject = im_projectors::query::partition_subject(s.topology.partition_of(&here));
    match query_at(&s.client, subject, (pos, 0), list.clone()).await {
        R::ConvList(page) => assert_eq!(page.items.len(), 1, "{page:?}"),
        other => panic!("the left instance at a position of the right: {other:?}"),
    }
    // A position past the stream's end is still "not yet".
    let subject = im_projectors::query::partition_subject(s.topology.partition_of(&here));
    match query_at(&s.client, subject, (pos + 100, 0), list).await {
        R::Error(e) => assert_eq!(e.code, v1::QueryErrorCode::NotYet as i32),
        other => panic!("a position no write produced: {other:?}"),
    }
}
