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
