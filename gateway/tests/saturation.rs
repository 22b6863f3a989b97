//! Every command gets an answer, under saturating load: many senders pipeline
//! far more sends than their gateways let wait, into one group over two
//! `im-gateway` processes, and retry what is refused or timed out with the
//! same id. No send goes unanswered on an open connection, and in the end
//! each is in the log exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};
use im_streams::{Action, Role};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const SENDERS: usize = 24;
const SENDS: usize = 300;
/// Small on purpose: most of each burst is refused at once.
const QUEUED_MAX: usize = 16;
const TIMEOUT_MS: u64 = 3_000;
/// Far past the gateway's bound: an answer later than this is silence.
const SILENCE: Duration = Duration::from_secs(30);

/// One answer to a send: its id and whether it was final (stored or a
/// duplicate) or asks for a retry (refused, timed out, unavailable).
type Answer = (String, bool);

/// A sender: opens a connection, pipelines every unacknowledged id, waits
/// for an answer to each, retries the others. Returns (acks, refusals).
async fn sender(addr: std::net::SocketAddr, user: String) -> (usize, BTreeMap<i32, usize>) {
    let mut todo: BTreeSet<String> = (0..SENDS).map(|i| format!("{user}-{i}")).collect();
    let (mut acked, mut errors) = (0, BTreeMap::new());
    for _round in 0..200 {
        if todo.is_empty() {
            break;
        }
        let mut req = format!("ws://{addr}/v1/ws?device_id=d1")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", token(&user)).parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let (tx, mut answers) = mpsc::unbounded_channel::<Answer>();
        let mut errors_here = BTreeMap::new();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Binary(bytes) = msg else {
                    continue;
                };
                let mut buf = bytes.as_ref();
                while !buf.is_empty() {
                    let env = v1::Envelope::decode_length_delimited(&mut buf).unwrap();
                    let answer = match env.payload {
                        Some(Payload::SendAck(a)) => {
                            (a.client_msg_id, a.status != v1::AckStatus::Rejected as i32)
                        }
                        Some(Payload::Error(e)) if !e.client_msg_id.is_empty() => {
                            *errors_here.entry(e.code).or_insert(0) += 1;
                            (e.client_msg_id, false)
                        }
                        _ => continue,
                    };
                    if tx.send(answer).is_err() {
                        return errors_here;
                    }
                }
            }
            errors_here
        });
        let sent: Vec<String> = todo.iter().cloned().collect();
        for chunk in sent.chunks(64) {
            let mut frame = Vec::new();
            for id in chunk {
                v1::Envelope {
                    header: None,
                    payload: Some(text_send_in("hot", id, "load")),
                }
                .encode_length_delimited(&mut frame)
                .unwrap();
            }
            sink.send(Message::Binary(frame.into())).await.unwrap();
        }
        for _ in &sent {
            let (id, done) = tokio::time::timeout(SILENCE, answers.recv())
                .await
                .unwrap_or_else(|_| panic!("{user}: a send went unanswered for {SILENCE:?}"))
                .expect("the connection stays open while sends wait");
            if done && todo.remove(&id) {
                acked += 1;
            }
        }
        drop(answers);
        let _ = sink.close().await;
        for (code, n) in reader.await.unwrap() {
            *errors.entry(code).or_insert(0) += n;
        }
    }
    assert!(todo.is_empty(), "{user}: {} never acked", todo.len());
    (acked, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_send_is_answered_under_saturating_load() {
    let s = Stack::start(Limits::default()).await;
    let url = s.server.url();
    let limits = format!(
        r#"{{"sends_per_sec": 100000, "send_burst": 100000, "user_sends_per_sec": 100000, "user_send_burst": 100000, "commands_queued_max": {QUEUED_MAX}, "command_timeout_ms": {TIMEOUT_MS}, "outbound_queue_max": 100000}}"#
    );
    let gateways = [spawn_gateway(&url, &limits), spawn_gateway(&url, &limits)];
    let members: Vec<(String, Role)> = (0..SENDERS)
        .map(|i| (format!("s{i}"), Role::Member))
        .collect();
    let create = im_streams::Command {
        actor: "owner".into(),
        client_msg_id: "create".into(),
        action: Action::CreateGroup {
            title: "hot".into(),
            members,
        },
    };
    appender(&s)
        .await
        .execute("hot", &create, "")
        .await
        .unwrap();

    let tasks: Vec<_> = (0..SENDERS)
        .map(|i| tokio::spawn(sender(gateways[i % 2].1, format!("s{i}"))))
        .collect();
    let (mut acked, mut errors) = (0, BTreeMap::new());
    for t in tasks {
        let (a, e) = t.await.unwrap();
        acked += a;
        for (code, n) in e {
            *errors.entry(code).or_insert(0) += n;
        }
    }
    println!(
        "senders={SENDERS} sends={} acked={acked} errors_by_code={errors:?}",
        SENDERS * SENDS
    );
    assert_eq!(acked, SENDERS * SENDS);
    let refused = errors
        .get(&(v1::ErrorCode::RateLimited as i32))
        .copied()
        .unwrap_or(0);
    assert!(refused > 0, "the queue bound was never reached: {errors:?}");

    let log = s.log_of("hot").await;
    let mut ids = BTreeSet::new();
    for e in &log[1..] {
        assert!(
            ids.insert(e.event.client_msg_id.clone()),
            "stored twice: {}",
            e.event.client_msg_id
        );
    }
    assert_eq!(ids.len(), SENDERS * SENDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_past_its_bound_is_answered_with_timeout_and_a_retry_is_exact() {
    let s = Stack::start(Limits::default()).await;
    let url = s.server.url();
    let hurried = spawn_gateway(&url, r#"{"command_timeout_ms": 1, "send_burst": 1000}"#);
    let create = im_streams::Command {
        actor: "owner".into(),
        client_msg_id: "create".into(),
        action: Action::CreateGroup {
            title: "g".into(),
            members: vec![("alice".into(), Role::Member)],
        },
    };
    appender(&s)
        .await
        .execute("hot", &create, "")
        .await
        .unwrap();
    let mut alice = connect(hurried.1, "alice", Wire::Proto).await;
    for i in 0..50 {
        alice
            .send(text_send_in("hot", &format!("a{i}"), "hi"))
            .await;
    }
    let mut timed_out = 0;
    for _ in 0..50 {
        match alice
            .recv_until(|p| match p {
                Payload::SendAck(_) => Some(true),
                Payload::Error(e) if e.code == v1::ErrorCode::Timeout as i32 => Some(false),
                _ => None,
            })
            .await
        {
            true => {}
            false => timed_out += 1,
        }
    }
    println!("timed_out={timed_out} of 50");
    assert!(timed_out > 0, "nothing met the 1 ms bound's end");
    // Retried through a gateway with time to spare: each once.
    let patient = spawn_gateway(&url, r#"{"send_burst": 1000}"#);
    let mut alice = connect(patient.1, "alice", Wire::Proto).await;
    for i in 0..50 {
        alice
            .send(text_send_in("hot", &format!("a{i}"), "hi"))
            .await;
        let ack = alice.recv_until(ack_of).await;
        assert_ne!(ack.status, v1::AckStatus::Rejected as i32, "{ack:?}");
    }
    let log = s.log_of("hot").await;
    let ids: BTreeSet<_> = log[1..]
        .iter()
        .map(|e| e.event.client_msg_id.clone())
        .collect();
    assert_eq!((log.len() - 1, ids.len()), (50, 50));
}
