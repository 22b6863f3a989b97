//! The web app's routes: development sign-in (on only when configured, and
//! for this machine's pages only), the app's files, and the receipts read
//! the app's "read by" uses.

mod common;

use common::*;
use im_gateway::Limits;

/// `POST /v1/dev/token` as a page served under `host` would send it.
async fn dev_token(addr: std::net::SocketAddr, host: &str, user: &str) -> (u16, String) {
    let body = format!(r#"{{"userId": "{user}"}}"#);
    let req = format!(
        "POST /v1/dev/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_raw(addr, &req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn development_sign_in_gives_local_pages_a_working_token_and_nothing_else() {
    let mut s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let (status, body) = dev_token(gw, &format!("{gw}"), "alice").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = v["token"].as_str().unwrap();
    let client = try_connect(gw, Some(token), Wire::Json, "web").await;
    assert!(client.is_ok(), "the token it gave opens a connection");
    for (host, user, want) in [
        ("localhost:8080", "bob", 200),
        ("evil.example", "alice", 403), // a rebinding page names its own host
        (&gw.to_string(), "not an id", 400),
    ] {
        let (status, body) = dev_token(gw, host, user).await;
        assert_eq!(status, want, "{host} {user}: {body}");
    }
    // Off unless configured: a gateway without it answers 404 and no token.
    let off = s
        .add_gateway_with_web(Limits::default(), Default::default())
        .await;
    let (status, body) = dev_token(off, &off.to_string(), "alice").await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("token\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_app_is_served_at_the_root_when_configured() {
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("index.html"), "<!doctype html><title>im</title>").unwrap();
    std::fs::write(root.path().join("secret.txt"), "beside the app, not in it").unwrap();
    let mut s = Stack::start(Limits::default()).await;
    let web = im_gateway::http::web::WebConfig {
        dir: Some(app),
        dev_login: false,
    };
    let gw = s.add_gateway_with_web(Limits::default(), web).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (status, body) = http_raw(gw, &get("/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>im</title>"), "{body}");
    assert_eq!(http_raw(gw, &get("/../secret.txt")).await.0, 404);
    assert_eq!(http_raw(gw, &get("/%2e%2e/secret.txt")).await.0, 404);
    assert_eq!(
        http_raw(gw, &get("/healthz")).await.0,
        200,
        "the API keeps its routes"
    );
    // Without a directory there is no app.
    assert_eq!(http_raw(s.gateways[0], &get("/")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receipts_name_who_read_a_message_and_answer_members_only() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let mut alice = connect(gw, "alice", Wire::Proto).await;
    alice.send(text_send_to("bob", "r-1", "read me")).await;
    let ack = alice.recv_until(ack_of).await;
    let conv = ack.conversation_id;
    let mut bob = connect(gw, "bob", Wire::Proto).await;
    bob.send(im_schema::v1::envelope::Payload::Read(
        im_schema::v1::ReadAck {
            conversation_id: conv.clone(),
            up_to_seq: ack.conv_seq,
        },
    ))
    .await;
    let path = format!("/v1/conversations/{conv}/receipts?seq={}", ack.conv_seq);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = http_get(gw, &path, &token("alice")).await;
        if status == 200 && body.contains(r#""readBy":["bob"]"#) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = http_get(gw, &path, &token("mallory")).await;
    assert_eq!(status, 403, "{body}");
}
