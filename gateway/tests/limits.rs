//! Connection limits and per-user subscriptions.

mod common;

use std::time::Duration;

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_connection_is_closed_after_the_heartbeat_window() {
    let limits = Limits {
        heartbeat_window_ms: 600,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let mut chatty = connect(gw, "chatty", Wire::Json).await;
    let mut silent = connect(gw, "silent", Wire::Json).await;
    // Heartbeats keep one alive past several windows.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        chatty
            .send(Payload::Heartbeat(v1::Heartbeat { client_time_ms: i }))
            .await;
        let ack = chatty
            .recv_until(|p| match p {
                Payload::HeartbeatAck(a) => Some(*a),
                _ => None,
            })
            .await;
        assert_eq!(ack.client_time_ms, i);
    }
    // The other said nothing: told why, then closed.
    let idle = silent.recv_until(error_of).await;
    assert!(idle.message.contains("heartbeat"), "{}", idle.message);
    assert!(silent.recv().await.is_none(), "closed");
    assert_eq!(s.states[0].dispatcher.device_count("silent"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_subscription_per_user_shared_by_devices_and_dropped_with_the_last() {
    let limits = Limits {
        connections_per_user_max: 2,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let hub = &s.states[0].dispatcher;
    let mut phone = try_connect(gw, Some(&token("ann")), Wire::Proto, "phone")
        .await
        .unwrap();
    let mut laptop = try_connect(gw, Some(&token("ann")), Wire::Json, "laptop")
        .await
        .unwrap();
    assert_eq!(hub.device_count("ann"), 2);
    // A third device is over the per-user limit.
    let third = try_connect(gw, Some(&token("ann")), Wire::Proto, "tablet").await;
    assert_eq!(third.err(), Some(1008));

    // Both devices get what is sent to ann, from another device of hers too.
    phone
        .send(text_send_to("ben", "p-1", "from the phone"))
        .await;
    assert_eq!(
        phone.recv_until(ack_of).await.status,
        v1::AckStatus::Stored as i32
    );
    for device in [&mut phone, &mut laptop] {
        let d = device
            .recv_until(|p| deliver_of(p).filter(|d| d.event_type == "message_sent"))
            .await;
        assert_eq!(d.conv_seq, 2);
    }
    drop(phone);
    drop(laptop);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hub.device_count("ann") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "subscription kept after the last device left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A user's sends share one rate across their devices: two devices of one
/// user exhaust one burst, another user's is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_send_rate_is_shared_by_their_devices() {
    let limits = Limits {
        sends_per_sec: 1_000,
        send_burst: 1_000,
        user_sends_per_sec: 1,
        user_send_burst: 4,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let phone = try_connect(gw, Some(&token("ann")), Wire::Json, "phone")
        .await
        .unwrap();
    let laptop = try_connect(gw, Some(&token("ann")), Wire::Json, "laptop")
        .await
        .unwrap();
    let mut refused = 0;
    for (i, mut device) in [phone, laptop].into_iter().enumerate() {
        for j in 0..3 {
            device
                .send(text_send_to("ben", &format!("m{i}{j}"), "hi"))
                .await;
            let answer = device
                .recv_until(|p| match p {
                    Payload::SendAck(_) => Some(None),
                    Payload::Error(e) => Some(Some(e.clone())),
                    _ => None,
                })
                .await;
            if let Some(e) = answer {
                assert_eq!(e.code, v1::ErrorCode::RateLimited as i32, "{e:?}");
                assert!(e.message.contains("this user"), "{e:?}");
                refused += 1;
            }
        }
    }
    // Six sends against one burst of four (and a token a second).
    assert!((1..=2).contains(&refused), "{refused} refused");
    let mut ben = connect(gw, "ben", Wire::Json).await;
    ben.send(text_send_to("ann", "b1", "yo")).await;
    assert_eq!(
        ben.recv_until(ack_of).await.status,
        v1::AckStatus::Stored as i32
    );
}

/// At most `connections_per_ip_max` WebSockets from one address; one more
/// is refused with 429 until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_capped() {
    let limits = Limits {
        connections_per_ip_max: 2,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let first = connect(gw, "u1", Wire::Json).await;
    let _second = connect(gw, "u2", Wire::Json).await;
    let third = try_connect(gw, Some(&token("u3")), Wire::Json, "d").await;
    assert_eq!(third.err(), Some(429));
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match try_connect(gw, Some(&token("u3")), Wire::Json, "d").await {
            Ok(_) => break,
            Err(429) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(other) => panic!("{other}"),
        }
    }
}

/// One rate for every way in: a user's HTTP commands (here mutes and
/// unmutes from sixteen concurrent requests) draw on the same per-user
/// bucket as their devices' sends; past it they are answered 429 with
/// `Retry-After`, and nothing is appended for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_commands_share_the_users_rate_and_are_refused_429_past_it() {
    let limits = Limits {
        user_sends_per_sec: 2,
        user_send_burst: 6,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let create = r#"{"conversationId": "rl", "members": [{"userId": "bob"}]}"#;
    let (status, body) = http_post(gw, "/v1/conversations", &token("ann"), create).await;
    assert_eq!(status, 200, "{body}");
    let before = s.conv_messages().await;
    let started = std::time::Instant::now();
    let requests = (0..48).map(|i| {
        let verb = if i % 2 == 0 { "mute" } else { "unmute" };
        let json = r#"{"untilMs": "4102444800000"}"#;
        let req = format!(
            "POST /v1/conversations/rl/{verb}/bob HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nIdempotency-Key: k{i}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            token("ann"),
            json.len()
        );
        async move { http_exchange(gw, &req).await }
    });
    let answers = futures::future::join_all(requests).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(
        limited
            .iter()
            .all(|(_, head, body)| head.contains("retry-after:") && body.contains("RATE_LIMITED")),
        "{limited:?}"
    );
    // Some mutes and unmutes may be refused by the rules (already muted):
    // what counts is what the rate let through.
    let allowed = 6.0 + 2.0 * elapsed + 1.0;
    let let_through = answers.len() - limited.len();
    assert!(
        let_through as f64 <= allowed,
        "{let_through} let through in {elapsed:.2} s"
    );
    assert_eq!(s.conv_messages().await - before, ok as u64);
    // A device of the same user meets the same bucket.
    let mut phone = connect(gw, "ann", Wire::Json).await;
    phone.send(text_send_in("rl", "p1", "hi")).await;
    let e = phone.recv_until(error_of).await;
    assert_eq!(e.code, v1::ErrorCode::RateLimited as i32, "{e:?}");
}
