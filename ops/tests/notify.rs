//! Offline notifications as a user meets them: `imctl up --notify-url` with
//! a real HTTP receiver; a member whose tab is open gets nothing, the same
//! member after closing it is woken once for what follows, with the badge,
//! signed with the secret in the data dir; every component on its own
//! NATS identity, none refused anything.

mod common;

use std::time::Duration;

use common::up::*;
use futures::SinkExt;
use im_testkit::Receiver;
use tokio_tungstenite::tungstenite::Message;

/// One HTTP/1.1 request with a bearer token: the status.
async fn post(addr: std::net::SocketAddr, path: &str, token: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw[9..12]).parse().unwrap()
}

async fn send(ws: &mut Ws, id: &str, text: &str) {
    let frame =
        format!(r#"{{"send": {{"toUserId": "bob", "clientMsgId": "{id}", "text": "{text}"}}}}"#);
    ws.send(Message::Text(frame.into())).await.unwrap();
    // The sender's own delivery may come before the ack: the ack is the
    // `sendAck` naming this id.
    loop {
        let ack = next_with(ws, "sendAck").await;
        if ack.contains(id) {
            assert!(ack.contains("ACK_STATUS_STORED"), "{ack}");
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_tab_is_woken_once_with_its_badge_and_an_open_one_is_not() {
    let receiver = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let port = im_testkit::free_port();
    let (child, lines) = start_as(data.path(), port, "127.0.0.1:0", |cmd| {
        cmd.args(["--notify-url", &receiver.url("/push")])
            .env("IM_NOTIFY_PREVIEW", "text")
            .env("IM_NOTIFY_DEBOUNCE_MS", "1000");
    });
    let _reaper = Reaper(child.id());
    assert!(
        lines.iter().any(|l| l.contains("imctl: notifier ->")),
        "{lines:?}"
    );
    let gw = gateway_addr(&lines);
    let (amy_token, bob_token) = (token(data.path(), "amy"), token(data.path(), "bob"));
    let push = r#"{"platform":"fcm","token":"bob-phone-token","appId":"im.web"}"#;
    assert_eq!(
        post(gw, "/v1/devices/phone/push", &bob_token, push).await,
        200
    );
    let mut amy = ws_connect(gw, &amy_token).await;
    let mut bob = ws_connect(gw, &bob_token).await;
    next_with(&mut amy, "connected").await;
    next_with(&mut bob, "connected").await;
    // bob's tab is open: delivered, not notified.
    send(&mut amy, "m1", "while you are here").await;
    next_with(&mut bob, "while you are here").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());
    // bob closes the tab (and the gateway's grace passes).
    bob.close(None).await.unwrap();
    drop(bob);
    tokio::time::sleep(Duration::from_secs(4)).await;
    send(&mut amy, "m2", "are you there").await;
    send(&mut amy, "m3", "call me").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.received().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "one notification for the window");
    let n: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    let n = &n["notification"];
    assert_eq!(n["userId"], "bob");
    assert_eq!(n["messages"], 2, "{n}");
    assert_eq!(
        n["badge"], 3,
        "one read on screen but not marked, two new: {n}"
    );
    assert_eq!(n["text"], "call me");
    assert_eq!(n["devices"][0]["token"], "bob-phone-token");
    let secret = std::fs::read_to_string(data.path().join("notify-secret")).unwrap();
    let signature = got[0].header("im-signature").unwrap();
    assert!(im_notifier::webhook::verify(
        secret.trim().as_bytes(),
        signature,
        &got[0].body
    ));
    assert!(!im_notifier::webhook::verify(
        b"not the secret",
        signature,
        &got[0].body
    ));
    // The ops page's status shows the notifier; the operator's CLI lists
    // no dead letter.
    let admin = addr_after(&lines, "imctl: ops page http://");
    let operator = std::fs::read_to_string(data.path().join("operator-token")).unwrap();
    let (status, body) =
        common::http_get_as(admin, "/admin/v1/status", Some(operator.trim())).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let notifier = &v["notifiers"][0];
    assert_eq!(notifier["instance"], "notifier", "{v}");
    assert_eq!(
        (notifier["sent"].as_u64(), notifier["deadLetters"].as_u64()),
        (Some(1), Some(0))
    );
    let url = format!("nats://127.0.0.1:{port}");
    let auth = im_ops::cmd::nats_identities::auth(
        data.path(),
        im_streams::identities::Component::Operator,
    )
    .unwrap();
    let (user, password) = (auth.user.unwrap(), auth.password.unwrap());
    let env = [
        ("IM_NATS_USER", user.as_str()),
        ("IM_NATS_PASSWORD", password.as_str()),
    ];
    let (ok, out) = common::imctl_with_env(&["notify", "dead-letters", "--nats-url", &url], &env);
    assert!(ok && out.contains("0 dead notifications"), "{out}");
    interrupt_and_wait(child);
    let log = std::fs::read_to_string(data.path().join("nats").join("nats.log")).unwrap();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(refused.is_empty(), "{refused:#?}");
}
