//! Presence across gateways: a user's contacts are told when they come
//! online and go offline, on whichever gateway each is connected to; a
//! killed gateway's users go offline by expiry; `GET /v1/presence` answers
//! for contacts only. Never in the log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};

/// Waits for a presence push about `who` with `online`, heartbeating so the
/// connection stays open; other frames are passed over.
async fn pushed(c: &mut Client, who: &str, online: bool, within: Duration) -> v1::PresenceUpdate {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        c.send(Payload::Heartbeat(v1::Heartbeat { client_time_ms: 1 }))
            .await;
        let Some(env) = c.recv_within(Duration::from_secs(2)).await else {
            continue;
        };
        if let Some(Payload::Presence(p)) = env.payload {
            if p.user_id == who && p.online == online {
                return p;
            }
        }
    }
    panic!("no presence push {who} online={online} within {within:?}");
}

async fn presence(gw: std::net::SocketAddr, caller: &str, users: &str) -> v1::PresenceList {
    let (status, body) = http_get(gw, &format!("/v1/presence?users={users}"), &token(caller)).await;
    assert_eq!(status, 200, "{body}");
    im_schema::from_json(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contacts_see_online_and_offline_across_gateways_and_a_killed_gateway() {
    let s = Stack::start(Limits::default()).await;
    let gw0 = s.gateways[0];
    let create = r#"{"conversationId": "crew", "members": [{"userId": "bob"}]}"#;
    let (status, body) = http_post(gw0, "/v1/conversations", &token("alice"), create).await;
    assert_eq!(status, 200, "{body}");
    let pos: serde_json::Value = serde_json::from_str(&body).unwrap();
    wait_projected(
        &s,
        "crew",
        pos["streamSeq"].as_str().unwrap().parse().unwrap(),
    )
    .await;
    let events_before = s.conv_messages().await;

    // bob on gateway 0; alice on gateway 1 (a process of its own); carol,
    // who shares nothing with alice, beside bob.
    let mut bob = connect(gw0, "bob", Wire::Proto).await;
    let mut carol = connect(gw0, "carol", Wire::Proto).await;
    let gw1 = spawn_gateway(&s.server.url(), "{}");
    let mut alice = connect(gw1.1, "alice", Wire::Json).await;
    let online = pushed(&mut bob, "alice", true, Duration::from_secs(20)).await;
    assert!(online.last_seen_ms > 0, "{online:?}");
    let list = presence(gw0, "bob", "alice,carol").await;
    let seen: Vec<(&str, bool)> = list
        .users
        .iter()
        .map(|u| (u.user_id.as_str(), u.online))
        .collect();
    assert_eq!(
        seen,
        [("alice", true)],
        "carol shares nothing with bob: left out"
    );
    assert!(
        presence(gw0, "carol", "alice").await.users.is_empty(),
        "a stranger learns nothing"
    );
    // alice hears of bob too, on the other gateway; bob's second device is
    // told where alice stands when it connects.
    pushed(&mut alice, "bob", true, Duration::from_secs(20)).await;
    let mut bob2 = try_connect(gw0, Some(&token("bob")), Wire::Json, "d2")
        .await
        .unwrap();
    pushed(&mut bob2, "alice", true, Duration::from_secs(10)).await;
    drop(bob2);
    // A reload (close, connect again at once) ends online, whatever order
    // the two bucket writes land in.
    drop(alice);
    let mut alice = connect(gw1.1, "alice", Wire::Json).await;
    alice
        .send(Payload::Heartbeat(v1::Heartbeat { client_time_ms: 1 }))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        presence(gw0, "bob", "alice").await.users[0].online,
        "online after a reload"
    );

    // A clean close: offline at once, with when.
    drop(alice);
    let offline = pushed(&mut bob, "alice", false, Duration::from_secs(10)).await;
    assert!(offline.last_seen_ms > 0, "{offline:?}");

    // Back on gateway 1, which is then killed: offline by expiry.
    let mut alice = connect(gw1.1, "alice", Wire::Json).await;
    pushed(&mut bob, "alice", true, Duration::from_secs(20)).await;
    alice
        .send(Payload::Heartbeat(v1::Heartbeat { client_time_ms: 1 }))
        .await;
    let killed_at = Instant::now();
    drop(gw1); // SIGKILL
    let ttl = im_streams::definitions::PRESENCE_TTL;
    let offline = pushed(&mut bob, "alice", false, ttl + Duration::from_secs(20)).await;
    assert!(offline.last_seen_ms > 0, "{offline:?}");
    tracing::info!(after_s = killed_at.elapsed().as_secs(), "offline by expiry");
    let list = presence(gw0, "bob", "alice").await;
    assert!(
        !list.users[0].online && list.users[0].last_seen_ms > 0,
        "{list:?}"
    );
    assert_eq!(
        s.conv_messages().await,
        events_before,
        "presence is never in the log"
    );
    // carol, no contact of alice's, was told nothing of her.
    while let Some(env) = carol.recv_within(Duration::from_millis(300)).await {
        if let Some(Payload::Presence(p)) = env.payload {
            assert_ne!(p.user_id, "alice", "a stranger was told: {p:?}");
        }
    }
}

/// Under the shipped NATS authorization, pushes go on after nats-server
/// restarts: the bucket watch is made again within the gateway's own
/// permissions, and the server refuses nothing the gateway does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_pushes_survive_a_nats_restart_under_the_shipped_permissions() {
    let mut s = Stack::start_secured(Limits::default()).await;
    let gw = s.gateways[0];
    let create = r#"{"conversationId": "pair", "members": [{"userId": "bob"}]}"#;
    let (status, body) = http_post(gw, "/v1/conversations", &token("alice"), create).await;
    assert_eq!(status, 200, "{body}");
    let pos: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seq = pos["streamSeq"].as_str().unwrap().parse().unwrap();
    wait_projected(&s, "pair", seq).await;
    let mut bob = connect(gw, "bob", Wire::Proto).await;
    for restarts in 0..3 {
        if restarts > 0 {
            s.server.restart().await.unwrap();
        }
        // bob's connection stays (told to resync); alice comes and goes.
        let alice = connect(gw, "alice", Wire::Json).await;
        pushed(&mut bob, "alice", true, Duration::from_secs(30)).await;
        drop(alice);
        pushed(&mut bob, "alice", false, Duration::from_secs(30)).await;
    }
    let log = std::fs::read_to_string(s.server.log_path()).unwrap_or_default();
    assert!(
        !log.to_lowercase().contains("permissions violation"),
        "the server refused something: {}",
        log.lines()
            .filter(|l| l.to_lowercase().contains("permissions violation"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_requests_are_bounded_and_checked() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let many = many.join(",");
    let (status, body) = http_get(gw, &format!("/v1/presence?users={many}"), &token("bob")).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_get(gw, "/v1/presence?users=a.b", &token("bob")).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http_get(gw, "/v1/presence?users=a", "forged").await;
    assert_eq!(status, 401);
}

/// A large group gives no contacts: presence there would cost every member
/// a notice for every other member's comings and goings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_large_groups_are_not_contacts() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let size = im_gateway::presence::contacts::GROUP_MEMBERS_MAX;
    let members: Vec<String> = (0..size)
        .map(|i| format!(r#"{{"userId": "m{i}"}}"#))
        .collect();
    let create = format!(
        r#"{{"conversationId": "big", "members": [{}]}}"#,
        members.join(",")
    );
    let (status, body) = http_post(gw, "/v1/conversations", &token("owner"), &create).await;
    assert_eq!(status, 200, "{body}");
    let pos: serde_json::Value = serde_json::from_str(&body).unwrap();
    wait_projected(
        &s,
        "big",
        pos["streamSeq"].as_str().unwrap().parse().unwrap(),
    )
    .await;
    let _owner = connect(gw, "owner", Wire::Proto).await;
    let mut m0 = connect(gw, "m0", Wire::Proto).await;
    assert!(
        presence(gw, "m0", "owner").await.users.is_empty(),
        "a large group's member is no contact"
    );
    while let Some(env) = m0.recv_within(Duration::from_millis(500)).await {
        assert!(
            !matches!(env.payload, Some(Payload::Presence(_))),
            "{env:?}"
        );
    }
}

/// Contacts made by request and acceptance see each other's presence
/// without sharing a conversation; a block, either way, hides it even
/// from a direct conversation's other member; a pending request shows
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_contacts_see_presence_and_a_block_hides_it() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let verb = |user: &'static str, target: &'static str, verb: &'static str| async move {
        let path = format!("/v1/contacts/{target}/{verb}");
        let (status, body) =
            http_post_with_key(gw, &path, &token(user), &format!("{user}-{verb}")).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["streamSeq"].as_str().unwrap().parse::<u64>().unwrap()
    };
    verb("ann", "bob", "request").await;
    verb("cat", "bob", "request").await;
    let pos = verb("bob", "ann", "accept").await;
    wait_projected(
        &s,
        &im_streams::ids::pair_log_id("ann", "bob").unwrap(),
        pos,
    )
    .await;
    let _bob = connect(gw, "bob", Wire::Proto).await;
    let _ann = connect(gw, "ann", Wire::Proto).await;
    let seen = presence(gw, "ann", "bob").await.users;
    assert_eq!(seen.len(), 1, "a contact: {seen:?}");
    assert!(
        presence(gw, "cat", "bob").await.users.is_empty(),
        "only asked"
    );

    // dan chats with bob, then bob blocks dan: dan sees bob no more.
    let mut dan = connect(gw, "dan", Wire::Proto).await;
    dan.send(text_send_to("bob", "d1", "hi")).await;
    let ack = dan.recv_until(ack_of).await;
    assert_eq!(ack.status, v1::AckStatus::Stored as i32, "{ack:?}");
    wait_projected(&s, &ack.conversation_id, ack.stream_seq).await;
    assert_eq!(
        presence(gw, "dan", "bob").await.users.len(),
        1,
        "a direct chat's member"
    );
    let pos = verb("bob", "dan", "block").await;
    wait_projected(
        &s,
        &im_streams::ids::pair_log_id("bob", "dan").unwrap(),
        pos,
    )
    .await;
    // A fresh gateway: no contacts cached from before the block.
    let gw2 = spawn_gateway(&s.server.url(), "{}");
    assert!(
        presence(gw2.1, "dan", "bob").await.users.is_empty(),
        "blocked"
    );
    assert!(
        presence(gw2.1, "bob", "dan").await.users.is_empty(),
        "blocking"
    );
}
