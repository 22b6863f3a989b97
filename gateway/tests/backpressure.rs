//! A client that never reads is cut off once its bounded queue is full; the
//! gateway keeps serving everyone else.

mod common;

use std::time::Duration;

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_is_closed_once_its_queue_is_full() {
    const FLOOD: usize = 20_000;
    let limits = Limits {
        outbound_queue_max: 8,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    let mut slow = connect(gw, "slow", Wire::Proto).await;
    let mut fine = connect(gw, "fine", Wire::Json).await;
    assert_eq!(s.states[0].dispatcher.device_count("slow"), 1);

    // Deliveries to the slow user, as a busy group's fan-out would send them
    // (4 KiB each, 80 MB in all), while it reads nothing.
    let big = v1::Envelope {
        header: None,
        payload: Some(Payload::Deliver(v1::Deliver {
            conversation_id: "flood".into(),
            conv_seq: 1,
            event_type: "message_sent".into(),
            event: Some(v1::ConvEvent {
                client_msg_id: "x".repeat(4096),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let payload: bytes::Bytes = im_schema::encode(&big).into();
    for _ in 0..FLOOD {
        s.client
            .publish("im.deliver.slow.e", payload.clone())
            .await
            .unwrap();
    }
    s.client.flush().await.unwrap();

    // The gateway lets go of it: its device and queue are gone...
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.states[0].dispatcher.device_count("slow") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow client was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and when it finally reads, it finds the flood cut short and the
    // resync code after it.
    let (frames, code) = slow.drain().await;
    assert!(
        frames < FLOOD,
        "got all {frames} frames: nothing was cut off"
    );
    assert_eq!(code, Some(4008), "close code");
    println!(
        "backpressure: slow client read {frames} of {FLOOD} frames before the cut, close {code:?}"
    );

    // Everyone else is still served.
    fine.send(Payload::Heartbeat(v1::Heartbeat { client_time_ms: 7 }))
        .await;
    let ack = fine
        .recv_until(|p| match p {
            Payload::HeartbeatAck(a) => Some(*a),
            _ => None,
        })
        .await;
    assert_eq!(ack.client_time_ms, 7);
    // The slow one's connection ends once its client answers the close or
    // goes away.
    drop(slow);
    let connections = || {
        s.states[0]
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while connections() > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_process_memory_stays_bounded_while_a_client_does_not_read() {
    const FLOOD: usize = 20_000;
    const FRAME_BYTES: usize = 4096;
    let s = Stack::start(Limits::default()).await;
    // The real binary with its default limits (outbound queue 256).
    let gw = spawn_gateway(&s.server.url(), "{}");
    let _slow = connect(gw.1, "slow", Wire::Proto).await;
    let before = gw.rss_kib();
    let big = v1::Envelope {
        header: None,
        payload: Some(Payload::Deliver(v1::Deliver {
            conversation_id: "flood".into(),
            event: Some(v1::ConvEvent {
                client_msg_id: "x".repeat(FRAME_BYTES),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let payload: bytes::Bytes = im_schema::encode(&big).into();
    for _ in 0..FLOOD {
        s.client
            .publish("im.deliver.slow.e", payload.clone())
            .await
            .unwrap();
    }
    s.client.flush().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_get(gw.2, "/metrics", "").await;
        if metrics.contains("im_gateway_connections 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow client was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = gw.rss_kib();
    let flood_kib = (FLOOD * FRAME_BYTES / 1024) as u64;
    println!("backpressure: gateway rss {before} KiB -> {after} KiB while {flood_kib} KiB were sent to a client that reads nothing");
    // An unbounded queue would have grown by about the flood; the bounded
    // one holds at most 256 frames (1 MiB) plus socket buffers.
    assert!(
        after.saturating_sub(before) < flood_kib / 4,
        "grew {} KiB",
        after - before
    );
}

/// A client that pauses for three seconds, then reads, learns why it was
/// cut off: it reads what was already on its way, then 4008 (resync), not
/// an abrupt end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_pauses_then_reads_gets_4008() {
    let limits = Limits {
        outbound_queue_max: 16,
        ..Limits::default()
    };
    let s = Stack::start(limits).await;
    let gw = s.gateways[0];
    for wire in [Wire::Proto, Wire::Json] {
        let mut paused = connect(gw, "paused", wire).await;
        let big = v1::Envelope {
            header: None,
            payload: Some(Payload::Deliver(v1::Deliver {
                conversation_id: "flood".into(),
                event: Some(v1::ConvEvent {
                    client_msg_id: "y".repeat(8192),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let payload: bytes::Bytes = im_schema::encode(&big).into();
        // At a pace the socket keeps up with until the client's buffers
        // and the kernel's are full: then the queue overflows, with
        // megabytes already on their way ahead of the close.
        let started = std::time::Instant::now();
        for _ in 0..500 {
            for _ in 0..8 {
                s.client
                    .publish("im.deliver.paused.e", payload.clone())
                    .await
                    .unwrap();
            }
            s.client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
        let (frames, code) = paused.drain().await;
        assert!(frames < 4_000, "{wire:?}: nothing was cut off");
        println!("backpressure: paused client read {frames} frames, then {code:?}");
        assert_eq!(code, Some(4008), "{wire:?} after {frames} frames");
    }
}
