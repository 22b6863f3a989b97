//! The HTTP API through the same append path and rules as the WebSocket.

mod common;

use common::*;
use im_gateway::Limits;
use im_schema::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_over_http_and_refused_senders_over_websocket() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let owner = token("owner");
    let (status, body) = http_post(
        gw,
        "/v1/conversations",
        &owner,
        r#"{"conversationId": "team", "title": "Team", "members": [{"userId": "admin1", "role": "admin"}, {"userId": "mia"}, {"userId": "bea"}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The same request with the same key is idempotent; without, a conflict.
    let (status, _) = http_post(
        gw,
        "/v1/conversations",
        &owner,
        r#"{"conversationId": "team"}"#,
    )
    .await;
    assert_eq!(status, 409);
    let admin = token("admin1");
    let (status, body) = http_post(
        gw,
        "/v1/conversations/team/mute/mia",
        &admin,
        r#"{"untilMs": 99999999999999}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_post(gw, "/v1/conversations/team/blacklist/bea", &admin, "{}").await;
    assert_eq!(status, 200, "{body}");
    // Refused by the rules, with the code in the body.
    let (status, body) = http_post(
        gw,
        "/v1/conversations/team/remove-member/owner",
        &admin,
        "{}",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forbidden"));
    let (status, _) = http_post(gw, "/v1/conversations/team/add-member/x.y", &admin, "{}").await;
    assert_eq!(status, 400);
    let (status, _) = http_post(gw, "/v1/conversations/team/mute/mia", "forged", "{}").await;
    assert_eq!(status, 401);
    let before = s.conv_messages().await;

    // Over the WebSocket: non-member, muted and blacklisted senders.
    for (user, reason) in [
        ("stranger", "not_member"),
        ("mia", "muted"),
        ("bea", "blacklisted"),
    ] {
        let mut c = connect(gw, user, Wire::Json).await;
        c.send(text_send_in("team", "try-1", "let me in")).await;
        let ack = c.recv_until(ack_of).await;
        assert_eq!(ack.status, v1::AckStatus::Rejected as i32, "{user}");
        assert!(ack.reason.starts_with(reason), "{user}: {}", ack.reason);
    }
    assert_eq!(s.conv_messages().await, before, "nothing appended");

    // Reads through the projector.
    let mut admin_ws = connect(gw, "admin1", Wire::Proto).await;
    admin_ws
        .send(text_send_in("team", "hello-1", "hello team"))
        .await;
    let ack = admin_ws.recv_until(ack_of).await;
    wait_projected(&s, "team", ack.stream_seq).await;
    let (status, body) = http_get(
        gw,
        &format!(
            "/v1/history?conversationId=team&minPosition={}",
            ack.stream_seq
        ),
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(gw, "/v1/conversations/team/members", &admin).await;
    assert_eq!(status, 200, "{body}");
    let members: v1::MembersResult = im_schema::from_json(&body).unwrap();
    let ids: Vec<&str> = members.members.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(ids, ["admin1", "mia", "owner"]);
    assert_eq!(members.blacklist, ["bea"]);
    let (status, body) = http_get(gw, "/v1/conversations/team/role/me", &admin).await;
    assert_eq!(status, 200);
    let role: v1::RoleResult = im_schema::from_json(&body).unwrap();
    assert!(role.member && role.role == v1::Role::Admin as i32);
    let (status, _) = http_get(gw, "/v1/conversations/team/members", &token("stranger")).await;
    assert_eq!(status, 403);
    let (status, body) = http_get(gw, "/v1/conversations", &token("mia")).await;
    assert_eq!(status, 200);
    let list: v1::ConvListPage = im_schema::from_json(&body).unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        (
            list.items[0].unread,
            list.items[0].entry.as_ref().unwrap().preview.as_str()
        ),
        (1, "hello team")
    );

    let (status, body) = http_get(gw, "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    // Ready once a projector's heartbeat (every 2 s) has been heard.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = http_get(gw, "/readyz", "").await;
        if status == 200 {
            assert_eq!(body, r#"{"status":"ready"}"#);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Metrics are on their own listener, not the public one.
    let (status, _) = http_get(gw, "/metrics", "").await;
    assert_eq!(status, 404);
    let (_, metrics) = http_get(s.metrics[0], "/metrics", "").await;
    // The three refused clients were dropped; the admin is still connected.
    assert!(metrics.contains("im_gateway_connections 1"), "{metrics}");
    assert!(
        metrics.contains("im_gateway_events_stored_total"),
        "{metrics}"
    );
}

/// (status, Retry-After) of a GET.
async fn get_with_retry_after(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: &str,
) -> (u16, Option<String>, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {bearer}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = http_exchange(addr, &req).await;
    let retry = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: ").map(str::to_string));
    (status, retry, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_projected_yet_is_never_forbidden_and_reads_take_min_position() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let owner = token("owner");
    let mut forbidden = 0;
    for i in 0..30 {
        let conv = format!("fresh{i}");
        let (status, body) = http_post(
            gw,
            "/v1/conversations",
            &owner,
            &format!(r#"{{"conversationId": "{conv}", "members": [{{"userId": "mia"}}]}}"#),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        // Asked at once, before the projector may have applied the
        // creation: the members, or "not yet" — never a 403 or 404.
        for (path, who) in [
            (format!("/v1/conversations/{conv}/members"), &owner),
            (format!("/v1/conversations/{conv}/role/me"), &owner),
            (format!("/v1/history?conversationId={conv}"), &owner),
        ] {
            let (status, retry, body) = get_with_retry_after(gw, &path, who).await;
            match status {
                200 => {}
                503 => assert_eq!(retry.as_deref(), Some("1"), "{body}"),
                403 | 404 => forbidden += 1,
                other => panic!("{path}: {other} {body}"),
            }
        }
    }
    assert_eq!(forbidden, 0, "a state not yet projected was refused");

    // minPosition on every read: the answer includes the write it names.
    let (status, body) =
        http_post(gw, "/v1/conversations/fresh0/add-member/zed", &owner, "{}").await;
    assert_eq!(status, 200, "{body}");
    let pos: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pos: u64 = pos["streamSeq"].as_str().unwrap().parse().unwrap();
    let zed = token("zed");
    for path in [
        format!("/v1/conversations/fresh0/members?minPosition={pos}"),
        format!("/v1/conversations/fresh0/role/me?minPosition={pos}"),
        format!("/v1/history?conversationId=fresh0&minPosition={pos}"),
        format!("/v1/conversations?minPosition={pos}"),
    ] {
        let (status, _, body) = get_with_retry_after(gw, &path, &zed).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, _, body) =
        get_with_retry_after(gw, &format!("/v1/conversations?minPosition={pos}"), &zed).await;
    assert!(body.contains("fresh0"), "{body}");
    // A real refusal stays one, once the projector is current.
    let (status, _, _) =
        get_with_retry_after(gw, "/v1/conversations/fresh0/members", &token("stranger")).await;
    assert_eq!(status, 403);
    // A position the log has not reached is no write's: 400, not a 503 to
    // retry for ever.
    for path in [
        "/v1/conversations/fresh0/members?minPosition=99999999",
        "/v1/conversations?minPosition=99999999",
    ] {
        let (status, retry, body) = get_with_retry_after(gw, path, &owner).await;
        assert_eq!((status, retry), (400, None), "{path}: {body}");
        assert!(body.contains("past the log's end"), "{body}");
    }
}
