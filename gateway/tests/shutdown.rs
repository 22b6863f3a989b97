//! SIGTERM to a real gateway process: it stops taking connections, lets an
//! upload already in flight finish, closes each WebSocket with 1001 after
//! its running command is answered, and exits 0 within its bound.

mod common;

use std::time::{Duration, Instant};

use common::*;
use im_gateway::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sigterm(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &gw.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_and_drains_http() {
    let stack = Stack::start(Limits::default()).await;
    let media = tempfile::tempdir().unwrap();
    let mut gw = spawn_gateway_env(
        &stack.url(),
        "{}",
        &[("IM_MEDIA_DIR", media.path().to_str().unwrap())],
    );
    let addr = gw.1;
    let mut alice = connect(addr, "alice", Wire::Json).await;
    let mut bob = connect(addr, "bob", Wire::Proto).await;
    alice.send(text_send_to("bob", "before", "hello")).await;
    let ack = alice.recv_until(ack_of).await;
    assert_eq!(ack.status, im_schema::v1::AckStatus::Stored as i32);

    // An upload in flight: its headers and half its body.
    let image = png(64, 64, true);
    let mut upload = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/media/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        token("alice"),
        image.len()
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let half = image.len() / 2;
    upload.write_all(&image[..half]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    sigterm(&gw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    upload.write_all(&image[half..]).await.unwrap();
    let mut answer = String::new();
    upload.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("mediaId"), "{answer}");

    assert_eq!(alice.close_code().await, Some(1001));
    assert_eq!(bob.close_code().await, Some(1001));
    let bound = im_gateway::SHUTDOWN_DRAIN_MAX + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = gw.0.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < bound, "still running after {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    // What it stored before stopping is there for the next gateway.
    assert_eq!(stack.conv_messages().await, 2);
}
