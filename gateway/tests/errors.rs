//! One error shape on every route and for every failure, the framework's
//! own rejections included; 64-bit numbers as strings everywhere.

mod common;

use common::*;
use im_gateway::Limits;

/// What a WebSocket upgrade carries (RFC 6455's sample key).
const UPGRADE: &str = "Connection: upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn request(method: &str, path: &str, headers: &str, body: &str) -> String {
    let close = match headers.contains("Connection:") {
        true => "",
        false => "Connection: close\r\n",
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}Content-Length: {}\r\n{close}\r\n{body}",
        body.len()
    )
}

/// Asserts the shape: JSON with a known code and a message; returns it.
fn shaped(what: &str, head: &str, body: &str) -> serde_json::Value {
    assert!(
        head.contains("content-type: application/json"),
        "{what}: {head}"
    );
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    let code = v["code"].as_str().unwrap_or_else(|| panic!("{what}: {v}"));
    assert!(
        im_schema::v1::ErrorCode::from_str_name(code).is_some(),
        "{what}: {code}"
    );
    assert!(!v["message"].as_str().unwrap().is_empty(), "{what}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_failure_has_one_shape() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    let auth = format!("Authorization: Bearer {}\r\n", token("owner"));
    let json = format!("{auth}Content-Type: application/json\r\n");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "unknown route",
            request("GET", "/v1/nope", &auth, ""),
            404,
            "ERROR_CODE_NOT_FOUND",
        ),
        (
            "wrong method",
            request("DELETE", "/v1/history", &auth, ""),
            405,
            "ERROR_CODE_BAD_REQUEST",
        ),
        (
            "no token",
            request("GET", "/v1/conversations", "", ""),
            401,
            "ERROR_CODE_UNAUTHORIZED",
        ),
        (
            "bad token",
            request(
                "GET",
                "/v1/conversations",
                "Authorization: Bearer x\r\n",
                "",
            ),
            401,
            "ERROR_CODE_UNAUTHORIZED",
        ),
        (
            "bad query number",
            request("GET", "/v1/history?conversationId=a&fromSeq=x", &auth, ""),
            400,
            "ERROR_CODE_BAD_REQUEST",
        ),
        (
            "unknown query field",
            request("GET", "/v1/history?conversationId=a&bogus=1", &auth, ""),
            400,
            "ERROR_CODE_BAD_REQUEST",
        ),
        (
            "malformed json",
            request("POST", "/v1/conversations", &json, "{"),
            400,
            "ERROR_CODE_BAD_REQUEST",
        ),
        (
            "json of the wrong shape",
            request("POST", "/v1/conversations", &json, r#"{"title": 1}"#),
            422,
            "ERROR_CODE_BAD_REQUEST",
        ),
        (
            "no content type",
            request("POST", "/v1/conversations", &auth, "{}"),
            415,
            "ERROR_CODE_BAD_REQUEST",
        ),
        (
            "websocket without a token",
            request("GET", "/v1/ws", UPGRADE, ""),
            401,
            "ERROR_CODE_UNAUTHORIZED",
        ),
        (
            "websocket without an upgrade",
            request("GET", "/v1/ws", &auth, ""),
            400,
            "ERROR_CODE_BAD_REQUEST",
        ),
        (
            "websocket bad device",
            request(
                "GET",
                "/v1/ws?device_id=a%20b",
                &format!("{auth}{UPGRADE}"),
                "",
            ),
            400,
            "ERROR_CODE_BAD_REQUEST",
        ),
        (
            "unknown command",
            request("POST", "/v1/conversations/c/fly", &json, "{}"),
            404,
            "ERROR_CODE_NOT_FOUND",
        ),
        (
            "websocket misspelt parameter",
            request("GET", "/v1/ws?deviceId=a", &format!("{auth}{UPGRADE}"), ""),
            400,
            "ERROR_CODE_BAD_REQUEST",
        ),
    ];
    for (what, req, status, code) in cases {
        let (got, head, body) = http_exchange(gw, &req).await;
        assert_eq!(got, status, "{what}: {body}");
        let v = shaped(what, &head, &body);
        assert_eq!(v["code"], code, "{what}");
        if status == 401 {
            assert!(head.contains("www-authenticate: bearer"), "{what}: {head}");
        }
        if status == 405 {
            assert!(head.contains("allow: get"), "{what} keeps Allow: {head}");
        }
    }

    // Any method token is answered, and measured as OTHER, not by name:
    // a client chooses no label of the gateway's metrics.
    let (got, head, body) = http_exchange(gw, &request("FROB", "/v1/history", &auth, "")).await;
    assert_eq!(got, 405, "{body}");
    shaped("an unknown method", &head, &body);
    let (_, metrics) = http_get(s.metrics[0], "/metrics", "").await;
    assert!(
        metrics.contains("method=\"OTHER\"") && !metrics.contains("FROB"),
        "{metrics}"
    );

    // A rule's refusal: the protocol's code, and the rule by name.
    let create = r#"{"conversationId": "club", "members": [{"userId": "mia"}]}"#;
    let (status, body) = http_post(gw, "/v1/conversations", &token("owner"), create).await;
    assert_eq!(status, 200, "{body}");
    let (got, head, body) = http_exchange(
        gw,
        &request(
            "POST",
            "/v1/conversations/club/remove-member/mia",
            &format!(
                "Authorization: Bearer {}\r\nContent-Type: application/json\r\n",
                token("stranger")
            ),
            "{}",
        ),
    )
    .await;
    assert_eq!(got, 403, "{body}");
    let v = shaped("refusal", &head, &body);
    assert_eq!(
        (v["code"].as_str(), v["reason"].as_str()),
        (Some("ERROR_CODE_FORBIDDEN"), Some("not_member"))
    );

    // 64-bit numbers are strings, in a command's answer as in a read's.
    let v: serde_json::Value = serde_json::from_str(
        &http_post(
            gw,
            "/v1/conversations/club/add-member/zed",
            &token("owner"),
            "{}",
        )
        .await
        .1,
    )
    .unwrap();
    assert!(
        v["convSeq"].is_string() && v["streamSeq"].is_string(),
        "{v}"
    );
    let pos = v["streamSeq"].as_str().unwrap();
    let (status, body) = http_get(
        gw,
        &format!("/v1/history?conversationId=club&minPosition={pos}"),
        &token("owner"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = &page["entries"][0];
    assert!(first["streamSeq"].is_string(), "{first}");
}

/// The `Bearer` scheme is case-insensitive (RFC 7235), and a refused
/// token's answer names the rule, not a parser's internals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_case_insensitive_and_refusals_say_only_the_rule() {
    let s = Stack::start(Limits::default()).await;
    let gw = s.gateways[0];
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = format!(
            "GET /v1/conversations HTTP/1.1\r\nHost: t\r\nAuthorization: {scheme} {}\r\nConnection: close\r\n\r\n",
            token("ann")
        );
        let (status, body) = http_raw(gw, &req).await;
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    for (garbage, says) in [
        ("not-a-jwt", "not a JWT"),
        ("eyJ.e30.x", "not a JWT"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.c2ln", "signature"),
    ] {
        let (status, body) = http_get(gw, "/v1/conversations", garbage).await;
        assert_eq!(status, 401, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(says), "{garbage}: {message}");
        for internal in [
            "Base64",
            "Json",
            "InvalidToken",
            "Error(",
            "line ",
            "column",
        ] {
            assert!(!message.contains(internal), "{garbage}: {message}");
        }
    }
}
