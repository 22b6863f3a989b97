//! The log's invariants under concurrency and crashes, against real servers:
//! 2 (gapless conv_seq), 3 (no message from a removed member after the
//! removal), 4 (one message per client_msg_id, also across the recent-index
//! horizon) and PubAck durability across a SIGKILL.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use im_streams::{
    codec::StoredEvent,
    conversation::{apply, check_may_send, event_type, ConvState, MESSAGE_INDEX_MAX},
    definitions::StreamSettings,
    Action, AppendOutcome, Appender, Role, StreamsError, Topology,
};
use im_testkit::{NatsCluster, Stack};

const TASKS: usize = 32;
const SENDS_PER_TASK: usize = 100;
/// Upper bound of a client's random pause between two sends.
const CLIENT_PAUSE_MAX_US: u64 = 3_000;

/// Checks a conversation's whole history: conv_seq 1..=n in stream order,
/// the hash chain intact, and no (sender, client_msg_id) twice. Returns the
/// message events' (sender, client_msg_id) set.
fn check_history(events: &[StoredEvent]) -> BTreeSet<(String, String)> {
    let mut prev_stream_seq = 0;
    let mut prev_hash = [0u8; 32];
    let mut sent = BTreeSet::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.event.conv_seq,
            i as u64 + 1,
            "conv_seq gap at stream seq {}",
            e.stream_seq
        );
        assert!(e.stream_seq > prev_stream_seq, "stream order");
        assert_eq!(
            e.event.prev_hash,
            prev_hash.to_vec(),
            "chain at conv_seq {}",
            e.event.conv_seq
        );
        prev_stream_seq = e.stream_seq;
        prev_hash = e.hash;
        if event_type(&e.event) == "message_sent" {
            let key = (e.event.actor.clone(), e.event.client_msg_id.clone());
            assert!(sent.insert(key.clone()), "message stored twice: {key:?}");
        }
    }
    sent
}

async fn hammer_one_conversation(url_a: &str, url_b: &str, topo: Topology, pause_max_us: u64) {
    let a = appender(url_a, topo).await;
    let b = appender(url_b, topo).await;
    let members: Vec<(String, Role)> = (0..TASKS)
        .map(|t| (format!("u{t}"), Role::Member))
        .collect();
    let member_refs: Vec<(&str, Role)> = members.iter().map(|(u, r)| (u.as_str(), *r)).collect();
    create_group(&a, "hot", &member_refs).await;

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        // Half the tasks write through the second, independent writer.
        let app = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..SENDS_PER_TASK {
                // Clients pause between sends, as people and bots do.
                if pause_max_us > 0 {
                    let pause = rand::random_range(0..pause_max_us);
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                }
                let c = cmd(&format!("u{t}"), &format!("t{t}-{i}"), text("load"));
                match app.execute("hot", &c, "").await {
                    Ok(AppendOutcome::Stored { .. }) => {}
                    other => panic!("task {t} send {i} gave up: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }

    let js = js_for(url_a).await;
    let events = history(&js, topo, "hot").await;
    assert_eq!(events.len(), 1 + TASKS * SENDS_PER_TASK);
    let sent = check_history(&events);
    let expected: BTreeSet<(String, String)> = (0..TASKS)
        .flat_map(|t| (0..SENDS_PER_TASK).map(move |i| (format!("u{t}"), format!("t{t}-{i}"))))
        .collect();
    assert_eq!(sent, expected, "every send stored exactly once");

    // The two writers really contended: compare-and-set refused publishes
    // (a writer that only got in after the other finished tests nothing) ...
    let (sa, sb) = (a.stats(), b.stats());
    let writers: Vec<&str> = events[1..].iter().map(|e| e.writer.as_str()).collect();
    let writer_switches = writers.windows(2).filter(|w| w[0] != w[1]).count();
    // ... and clients of both writers were served throughout: the losing
    // writer forwards to the winning one instead of starving.
    let side = |actor: &str| {
        actor
            .trim_start_matches('u')
            .parse::<usize>()
            .map(|t| t % 2)
            .ok()
    };
    let sides: Vec<usize> = events.iter().filter_map(|e| side(&e.event.actor)).collect();
    let client_switches = sides.windows(2).filter(|w| w[0] != w[1]).count();
    println!(
        "writers=2 tasks={TASKS} sends={} conflicts={} forwarded={} stored_by_a={} stored_by_b={} writer_switches={writer_switches} client_side_switches={client_switches}",
        TASKS * SENDS_PER_TASK,
        sa.conflicts + sb.conflicts,
        sa.forwarded_out + sb.forwarded_out,
        sa.stored,
        sb.stored,
    );
    assert!(
        sa.conflicts + sb.conflicts > 0,
        "the writers never conflicted"
    );
    // A forward can arrive and still be declined or time out.
    assert!(sa.forwarded_out <= sb.forwarded_in && sb.forwarded_out <= sa.forwarded_in);
    assert_eq!(sa.stored + sb.stored, (TASKS * SENDS_PER_TASK) as u64 + 1);
    assert!(
        client_switches >= 3,
        "one writer's clients starved: {client_switches}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_2_gapless_conv_seq_under_two_writers_single_server() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    hammer_one_conversation(&server.url(), &server.url(), topo, CLIENT_PAUSE_MAX_US).await;
}

/// No pauses at all: each writer saturates the conversation. Without
/// forwarding the writer that wins first starves the other until it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_2_gapless_and_fair_with_saturating_writers() {
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    hammer_one_conversation(&server.url(), &server.url(), topo, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_2_gapless_conv_seq_under_two_writers_r3_cluster() {
    let cluster = NatsCluster::start(3).await.unwrap();
    let urls = cluster.urls();
    let settings = StreamSettings {
        replicas: 3,
        ..Default::default()
    };
    let (js, topo) = setup(&urls[0], &settings).await;
    let info = js
        .get_stream("IM_CONV")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.num_replicas, 3);
    // The two writers talk to different nodes of the cluster.
    hammer_one_conversation(&urls[1], &urls[2], topo, CLIENT_PAUSE_MAX_US).await;
}

/// Replays `decide`'s send rule over a history: every message's sender was
/// allowed at the version it was appended after.
fn check_senders_were_allowed(conv: &str, events: &[StoredEvent]) {
    let mut state = ConvState::empty(conv);
    for e in events {
        if event_type(&e.event) == "message_sent" {
            if let Err(r) = check_may_send(&state, &e.event.actor, e.event.at_ms) {
                panic!(
                    "{conv}: message at conv_seq {} from {} who was refused: {r}",
                    e.event.conv_seq, e.event.actor
                );
            }
        }
        apply(&mut state, &e.event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_3_no_message_from_a_removed_member_after_removal() {
    const ROUNDS: usize = 200;
    const SENDS_PER_ROUND: usize = 3;
    let stack = Stack::start_with(&StreamSettings::default()).await;
    let (server, topo) = (&stack.server, stack.topology);
    let js = stack.js.clone();
    let admin_side = appender(&server.url(), topo).await;
    let member_side = appender(&server.url(), topo).await;
    let (mut removed_first, mut sent_before) = (0, 0);
    for round in 0..ROUNDS {
        let conv = format!("race{round}");
        create_group(
            &admin_side,
            &conv,
            &[("admin", Role::Admin), ("b", Role::Member)],
        )
        .await;
        // Both writers know the state (B is a member) before the race.
        member_side.current_state(&conv).await.unwrap();
        let remove = cmd(
            "admin",
            &format!("rm{round}"),
            Action::RemoveMember { user: "b".into() },
        );
        let sends: Vec<_> = (0..SENDS_PER_ROUND)
            .map(|i| cmd("b", &format!("s{round}-{i}"), text("racing")))
            .collect();
        let (removed, outcomes) = tokio::join!(admin_side.execute(&conv, &remove, ""), async {
            let mut out = Vec::new();
            for s in &sends {
                out.push(member_side.execute(&conv, s, "").await.unwrap());
            }
            out
        });
        assert!(matches!(removed.unwrap(), AppendOutcome::Stored { .. }));
        let events = history(&js, topo, &conv).await;
        check_history(&events);
        check_senders_were_allowed(&conv, &events);
        let removal = events
            .iter()
            .position(|e| event_type(&e.event) == "member_removed")
            .unwrap();
        assert!(
            events[removal..]
                .iter()
                .all(|e| !(event_type(&e.event) == "message_sent" && e.event.actor == "b")),
            "round {round}: message from b after removal"
        );
        // What the sender was told matches the log.
        let stored = outcomes
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
            .count();
        let in_log = events.iter().filter(|e| e.event.actor == "b").count();
        assert_eq!(stored, in_log, "round {round}");
        for o in &outcomes {
            assert!(
                matches!(o, AppendOutcome::Stored { .. })
                    || matches!(o, AppendOutcome::Rejected(r) if r.code() == "not_member"),
                "{o:?}"
            );
        }
        if in_log == 0 {
            removed_first += 1;
        }
        sent_before += in_log;
    }
    // The race really raced: both orders happened.
    println!("rounds={ROUNDS} removal_won_outright={removed_first} messages_before_removal={sent_before}");
    assert!(
        sent_before > 0,
        "the member never got a message in before removal"
    );
}

#[tokio::test]
async fn invariant_4_retry_past_the_recent_index_is_answered_from_the_log_without_a_projector() {
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
    let lost = cmd("alice", "old-send", text("first"));
    app.drop_next_ack();
    assert!(app.execute("g1", &lost, "").await.is_err());
    // More messages than the writer's recent index holds arrive after it.
    for i in 0..MESSAGE_INDEX_MAX + 8 {
        let out = app
            .execute("g1", &cmd("bob", &format!("b{i}"), text("chatter")), "")
            .await
            .unwrap();
        assert!(matches!(out, AppendOutcome::Stored { .. }));
    }
    let fresh = appender(&server.url(), topo).await;
    let state = fresh.current_state("g1").await.unwrap();
    assert!(
        state.find_sent("alice", "old-send").is_none(),
        "out of the recent index"
    );
    let retried = fresh.execute("g1", &lost, "").await.unwrap();
    assert!(
        matches!(retried, AppendOutcome::Duplicate { conv_seq: 2, .. }),
        "{retried:?}"
    );
    // No projector runs here: the writer could not rule the id out, the
    // dedupe index did not answer, and it read the subject itself.
    let stats = fresh.stats();
    assert_eq!(
        (stats.index_lookups, stats.index_scans),
        (1, 1),
        "{stats:?}"
    );
    let events = history(&js, topo, "g1").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.client_msg_id == "old-send")
            .count(),
        1
    );
    check_history(&events);
}

/// Sends until stopped, retrying each command with the same client_msg_id
/// until it is acked; returns the acked (client_msg_id -> stream, conv seq).
async fn send_until(
    app: Arc<Appender>,
    conv: String,
    actor: String,
    stop: Instant,
) -> BTreeMap<String, (u64, u64)> {
    let mut acked = BTreeMap::new();
    let mut i = 0;
    while Instant::now() < stop {
        let id = format!("{actor}-{i}");
        let c = cmd(&actor, &id, text("durable?"));
        // Bounded: a command is retried for at most this long.
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            match app.execute(&conv, &c, "").await {
                Ok(
                    AppendOutcome::Stored {
                        stream_seq,
                        conv_seq,
                        ..
                    }
                    | AppendOutcome::Duplicate {
                        stream_seq,
                        conv_seq,
                        ..
                    },
                ) => {
                    acked.insert(id.clone(), (stream_seq, conv_seq));
                    break;
                }
                Ok(AppendOutcome::Rejected(r)) => panic!("{r}"),
                Err(StreamsError::Unavailable { .. } | StreamsError::Conflict { .. }) => {
                    assert!(Instant::now() < give_up, "{id} never acked");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        i += 1;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_pub_acked_event_survives_a_sigkill_in_order() {
    const WRITERS: usize = 8;
    let mut stack = Stack::start().await;
    let url = stack.url();
    let (js, topo) = (stack.js.clone(), stack.topology);
    let a = appender(&url, topo).await;
    let b = appender(&url, topo).await;
    let members: Vec<(String, Role)> = (0..WRITERS)
        .map(|w| (format!("w{w}"), Role::Member))
        .collect();
    let refs: Vec<(&str, Role)> = members.iter().map(|(u, r)| (u.as_str(), *r)).collect();
    create_group(&a, "durable", &refs).await;

    let stop = Instant::now() + Duration::from_secs(6);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let app = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(send_until(app, "durable".into(), format!("w{w}"), stop))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.server.restart().await.unwrap();

    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 50,
        "the writers made progress: {}",
        acked.len()
    );
    let events = history(&js, topo, "durable").await;
    check_history(&events);
    let in_log: BTreeMap<String, (u64, u64)> = events
        .iter()
        .filter(|e| event_type(&e.event) == "message_sent")
        .map(|e| {
            (
                e.event.client_msg_id.clone(),
                (e.stream_seq, e.event.conv_seq),
            )
        })
        .collect();
    for (id, pos) in &acked {
        assert_eq!(
            in_log.get(id),
            Some(pos),
            "acked {id} at {pos:?} is not in the log there"
        );
    }
    println!("acked={} in_log={}", acked.len(), in_log.len());
}
