//! I3 (the design brief's invariant 4) at any delay and through any gateway, and REJECTED only on
//! the latest state (I4), against real `im-gateway`
//! processes sharing one nats-server and one projector.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use im_gateway::Limits;
use im_schema::v1;
use im_streams::{Action, Role, StreamSettings};

/// Gateways that let a test client send as fast as it likes.
const FAST: &str = r#"{"sends_per_sec": 100000, "send_burst": 100000, "user_sends_per_sec": 100000, "user_send_burst": 100000}"#;

/// JetStream's duplicate window in these tests: retries come after it.
const WINDOW_MS: u64 = 1_000;

async fn create_group(s: &Stack, conv: &str, members: &[&str]) {
    let cmd = im_streams::Command {
        actor: "owner".into(),
        client_msg_id: format!("create-{conv}"),
        action: Action::CreateGroup {
            title: conv.into(),
            members: members
                .iter()
                .map(|m| (m.to_string(), Role::Member))
                .collect(),
        },
    };
    appender(s).await.execute(conv, &cmd, "").await.unwrap();
}

/// One send on a fresh connection; its ack.
async fn send_once(
    addr: std::net::SocketAddr,
    user: &str,
    payload: v1::envelope::Payload,
) -> v1::SendAck {
    let mut c = connect(addr, user, Wire::Proto).await;
    c.send(payload).await;
    c.recv_until(ack_of).await
}

/// `n` sends, `chunk` in flight at a time, each acked STORED.
async fn send_many(c: &mut Client, conv: &str, prefix: &str, n: usize) {
    const CHUNK: usize = 50;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        for i in start..end {
            c.send(text_send_in(conv, &format!("{prefix}{i}"), "chatter"))
                .await;
        }
        for _ in start..end {
            let ack = c.recv_until(ack_of).await;
            assert_eq!(ack.status, v1::AckStatus::Stored as i32, "{ack:?}");
        }
    }
}

fn assert_duplicate_of(ack: &v1::SendAck, original: &v1::SendAck, via: &str) {
    assert_eq!(
        ack.status,
        v1::AckStatus::Duplicate as i32,
        "{via}: {ack:?}"
    );
    assert_eq!(
        (ack.stream_seq, ack.conv_seq),
        (original.stream_seq, original.conv_seq),
        "{via}: the original's positions"
    );
}

/// (status, convSeq, duplicate) of an HTTP command's answer.
fn http_outcome(status: u16, body: &str) -> (u16, u64, bool) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    (
        status,
        v["convSeq"].as_str().map_or(0, |s| s.parse().unwrap()),
        v["duplicate"].as_bool().unwrap_or(false),
    )
}

/// No (sender, client_msg_id) twice in a conversation's log.
async fn assert_each_id_once(s: &Stack, conv: &str) -> usize {
    let log = s.log_of(conv).await;
    let mut ids = BTreeSet::new();
    for e in &log {
        let key = (e.event.actor.clone(), e.event.client_msg_id.clone());
        // A first direct send is two events of one command.
        if e.msg_id.ends_with(&format!(":{}", e.event.client_msg_id)) {
            assert!(ids.insert(key.clone()), "stored twice: {key:?}");
        }
    }
    log.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_is_a_duplicate_after_the_window_and_the_cache_through_any_gateway() {
    let settings = StreamSettings {
        duplicate_window_ms: WINDOW_MS,
        ..Default::default()
    };
    let s = Stack::start_with(Limits::default(), &settings).await;
    let url = s.server.url();
    let gw1 = spawn_gateway(&url, FAST);
    let gw2 = spawn_gateway(&url, FAST);
    create_group(&s, "busy", &["alice", "bob"]).await;

    let original = send_once(gw1.1, "alice", text_send_in("busy", "k", "hello")).await;
    assert_eq!(original.status, v1::AckStatus::Stored as i32);
    let direct = send_once(gw1.1, "alice", text_send_to("bob", "d", "hi bob")).await;
    assert_eq!(direct.status, v1::AckStatus::Stored as i32);
    let add = http_post_with_key(
        gw1.1,
        "/v1/conversations/busy/add-member/carol",
        &token("owner"),
        "add-carol",
    )
    .await;
    let added = http_outcome(add.0, &add.1);
    assert_eq!((added.0, added.2), (200, false), "{add:?}");
    // More commands than a writer remembers follow, through the same
    // gateway, which folds every one of them.
    let mut bob = connect(gw1.1, "bob", Wire::Proto).await;
    send_many(
        &mut bob,
        "busy",
        "b",
        im_streams::seen::RECENT_COMMANDS_MAX + 88,
    )
    .await;
    // JetStream alone would now store a retry again.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS + 500)).await;

    let retry = text_send_in("busy", "k", "hello");
    let ack = send_once(gw1.1, "alice", retry.clone()).await;
    assert_duplicate_of(&ack, &original, "the same gateway, past its cache");
    let ack = send_once(gw2.1, "alice", retry.clone()).await;
    assert_duplicate_of(&ack, &original, "another gateway");
    let ack = send_once(gw2.1, "alice", text_send_to("bob", "d", "hi bob")).await;
    assert_duplicate_of(&ack, &direct, "a first direct send, on another gateway");
    drop(gw1);
    let gw1 = spawn_gateway(&url, FAST);
    let ack = send_once(gw1.1, "alice", retry).await;
    assert_duplicate_of(&ack, &original, "the first gateway, restarted");
    for addr in [gw1.1, gw2.1] {
        let again = http_post_with_key(
            addr,
            "/v1/conversations/busy/add-member/carol",
            &token("owner"),
            "add-carol",
        )
        .await;
        assert_eq!(
            http_outcome(again.0, &again.1),
            (200, added.1, true),
            "{again:?}"
        );
    }
    // A new id is stored, not mistaken for an old one.
    let fresh = send_once(gw2.1, "alice", text_send_in("busy", "k2", "new")).await;
    assert_eq!(fresh.status, v1::AckStatus::Stored as i32);
    assert_each_id_once(&s, "busy").await;
    assert_each_id_once(&s, &direct.conversation_id).await;
}

async fn http_cmd(addr: std::net::SocketAddr, path: &str) -> u16 {
    http_post(addr, path, &token("owner"), "{}").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejection_is_decided_on_the_latest_state_not_a_stale_cache() {
    let s = Stack::start(Limits::default()).await;
    let url = s.server.url();
    let (gw1, gw2) = (spawn_gateway(&url, FAST), spawn_gateway(&url, FAST));
    create_group(&s, "g", &["m"]).await;
    let send = |addr, id: &str| send_once(addr, "m", text_send_in("g", id, "hi"));
    // gw2 holds the group in its cache.
    assert_eq!(send(gw2.1, "m1").await.status, v1::AckStatus::Stored as i32);
    // Removed through gw2, re-added through gw1: gw2 has not seen the re-add.
    assert_eq!(
        http_cmd(gw2.1, "/v1/conversations/g/remove-member/m").await,
        200
    );
    assert_eq!(
        http_cmd(gw1.1, "/v1/conversations/g/add-member/m").await,
        200
    );
    let ack = send(gw2.1, "m2").await;
    assert_eq!(ack.status, v1::AckStatus::Stored as i32, "{ack:?}");
    // The other way round: removed through gw1, re-added through gw2,
    // which still thinks m is a member.
    assert_eq!(
        http_cmd(gw1.1, "/v1/conversations/g/remove-member/m").await,
        200
    );
    assert_eq!(
        http_cmd(gw2.1, "/v1/conversations/g/add-member/m").await,
        200
    );
    // A refusal that is right stays one.
    assert_eq!(
        http_cmd(gw1.1, "/v1/conversations/g/remove-member/m").await,
        200
    );
    let ack = send(gw2.1, "m3").await;
    assert_eq!(ack.status, v1::AckStatus::Rejected as i32, "{ack:?}");
    assert!(ack.reason.starts_with("not_member"), "{ack:?}");
    assert_eq!(
        http_cmd(gw2.1, "/v1/conversations/g/remove-member/m").await,
        403
    );
}

/// Replays a conversation's log with the rules: every message's sender
/// was allowed to send at the version it was appended after.
async fn assert_no_message_from_a_non_member(s: &Stack, conv: &str) {
    use im_streams::conversation::{apply, check_may_send, event_type, ConvState};
    let mut state = ConvState::empty(conv);
    for e in s.log_of(conv).await {
        if event_type(&e.event) == "message_sent" {
            check_may_send(&state, &e.event.actor, e.event.at_ms).unwrap_or_else(|r| {
                panic!("conv_seq {} from {}: {r}", e.event.conv_seq, e.event.actor)
            });
        }
        apply(&mut state, &e.event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_readd_send_races_over_two_gateways_leave_no_stale_rejection() {
    const ROUNDS: usize = 200;
    let s = Stack::start(Limits::default()).await;
    let url = s.server.url();
    let (gw1, gw2) = (spawn_gateway(&url, FAST), spawn_gateway(&url, FAST));
    create_group(&s, "race", &["m"]).await;
    let mut m = connect(gw2.1, "m", Wire::Proto).await;
    let (mut stale, mut raced_in, mut raced_out) = (0, 0, 0);
    for round in 0..ROUNDS {
        let (remover, adder) = if round % 2 == 0 {
            (gw1.1, gw2.1)
        } else {
            (gw2.1, gw1.1)
        };
        assert_eq!(
            http_cmd(remover, "/v1/conversations/race/remove-member/m").await,
            200
        );
        assert_eq!(
            http_cmd(adder, "/v1/conversations/race/add-member/m").await,
            200
        );
        // m is a member from the re-add's answer until the next removal:
        // a send in between must be stored, whichever gateway saw what.
        m.send(text_send_in("race", &format!("s{round}"), "member"))
            .await;
        let ack = m.recv_until(ack_of).await;
        if ack.status != v1::AckStatus::Stored as i32 {
            stale += 1;
        }
        // A removal racing a send: either may win, the log decides.
        let remove = http_cmd(remover, "/v1/conversations/race/remove-member/m");
        let send = async {
            m.send(text_send_in("race", &format!("r{round}"), "racing"))
                .await;
            m.recv_until(ack_of).await
        };
        let (removed, ack) = tokio::join!(remove, send);
        assert_eq!(removed, 200);
        match v1::AckStatus::try_from(ack.status) {
            Ok(v1::AckStatus::Stored) => raced_in += 1,
            Ok(v1::AckStatus::Rejected) if ack.reason.starts_with("not_member") => raced_out += 1,
            other => panic!("{other:?}: {ack:?}"),
        }
        assert_eq!(
            http_cmd(adder, "/v1/conversations/race/add-member/m").await,
            200
        );
    }
    println!("rounds={ROUNDS} stale_rejections={stale} raced_in={raced_in} raced_out={raced_out}");
    assert_eq!(stale, 0, "sends rejected while the sender was a member");
    assert_no_message_from_a_non_member(&s, "race").await;
}
