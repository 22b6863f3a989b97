//! What the push gateway receives, pure: the body in either format, the
//! signature over it, and what its answer means (docs/protocol.md,
//! "Offline notifications").

use hmac::{Hmac, Mac};
use im_schema::v1;
use serde_json::{json, Value};
use sha2::Sha256;

/// The header that carries `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>">` under the deployment's secret.
pub const SIGNATURE_HEADER: &str = "Im-Signature";
/// The header a receiver drops repeats by: the notification's id.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// The body's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// This project's JSON (documented in docs/protocol.md and OpenAPI).
    Webhook,
    /// The Matrix push gateway API (`POST /_matrix/push/v1/notify`), so a
    /// Sygnal can be the receiver as it is.
    Matrix,
}

fn registration(d: &v1::PushDevice) -> v1::PushRegistered {
    d.registration.clone().unwrap_or_default()
}

/// The body for one notification.
pub fn body(format: Format, n: &v1::Notification) -> Vec<u8> {
    let value = match format {
        Format::Webhook => webhook(n),
        Format::Matrix => matrix(n),
    };
    serde_json::to_vec(&value).expect("JSON values serialize")
}

fn webhook(n: &v1::Notification) -> Value {
    let devices: Vec<Value> = n
        .devices
        .iter()
        .map(|d| {
            let r = registration(d);
            json!({
                "deviceId": r.device_id,
                "platform": r.platform,
                "token": r.token,
                "appId": r.app_id,
                "lang": r.lang,
                "registeredMs": d.registered_ms,
            })
        })
        .collect();
    let mut out = json!({
        "id": n.id,
        "userId": n.user_id,
        "conversationId": n.conversation_id,
        "messages": n.messages,
        "firstConvSeq": n.first_conv_seq,
        "lastConvSeq": n.last_conv_seq,
        "atMs": n.at_ms,
        "badge": n.badge,
        "devices": devices,
    });
    let extra = [
        ("conversationTitle", &n.conversation_title),
        ("senderId", &n.sender_id),
        ("senderName", &n.sender_name),
        ("text", &n.text),
    ];
    for (name, v) in extra {
        if !v.is_empty() {
            out[name] = json!(v);
        }
    }
    json!({ "notification": out })
}

/// Matrix's notification: the room is the conversation, the event the
/// window's last message; `counts.unread` the badge; one device per
/// registration (`pushkey` the token). Not mapped: `missed_calls`,
/// `tweaks`, `user_is_target`, `room_alias`, per-device `data.format`.
fn matrix(n: &v1::Notification) -> Value {
    let devices: Vec<Value> = n
        .devices
        .iter()
        .map(|d| {
            let r = registration(d);
            json!({
                "app_id": r.app_id,
                "pushkey": r.token,
                "pushkey_ts": d.registered_ms / 1000,
                "data": {},
            })
        })
        .collect();
    let mut out = json!({
        "event_id": format!("${}", n.id),
        "room_id": format!("!{}", n.conversation_id),
        "type": "m.room.message",
        "prio": "high",
        "counts": { "unread": n.badge },
        "devices": devices,
    });
    if !n.sender_id.is_empty() {
        out["sender"] = json!(format!("@{}", n.sender_id));
    }
    if !n.sender_name.is_empty() {
        out["sender_display_name"] = json!(n.sender_name);
    }
    if !n.conversation_title.is_empty() {
        out["room_name"] = json!(n.conversation_title);
    }
    if !n.text.is_empty() {
        out["content"] = json!({ "msgtype": "m.text", "body": n.text });
    }
    json!({ "notification": out })
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], t: i64, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The signature header's value for `body` at `t` (unix seconds).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let code = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(code))
}

/// Whether `header` signs `body` under `secret` (what a receiver checks;
/// the comparison takes the same time whatever differs).
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut code = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => code = hex::decode(v).ok(),
            _ => {}
        }
    }
    match (t, code) {
        (Some(t), Some(code)) => mac(secret, t, body).verify_slice(&code).is_ok(),
        _ => false,
    }
}

/// What a receiver's answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Taken (2xx); the tokens it names as no longer valid are dropped.
    Taken { rejected: Vec<String> },
    /// 410: every token of the notification is no longer valid.
    Gone,
    /// Worth trying again later: 408, 425, 429, 5xx.
    Retry(String),
    /// Never worth trying again: any other 4xx, 3xx.
    Refused(String),
}

/// Tokens one answer may name as rejected, at most: a notification
/// carries at most `PUSH_DEVICES_MAX` devices.
pub const REJECTED_MAX: usize = im_streams::people::push::PUSH_DEVICES_MAX;

/// Reads a receiver's answer (`{"rejected": [token, ...]}` in either format).
pub fn answer(status: u16, body: &[u8]) -> Answer {
    match status {
        200..=299 => {
            let rejected = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("rejected").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .take(REJECTED_MAX)
                .collect();
            Answer::Taken { rejected }
        }
        410 => Answer::Gone,
        408 | 425 | 429 | 500..=599 => Answer::Retry(format!("HTTP {status}")),
        _ => Answer::Refused(format!("HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification() -> v1::Notification {
        v1::Notification {
            id: "abc".into(),
            user_id: "bo".into(),
            conversation_id: "g1".into(),
            conversation_title: "Team".into(),
            sender_id: "amy".into(),
            sender_name: "Amy".into(),
            text: "hi".into(),
            messages: 2,
            first_conv_seq: 4,
            last_conv_seq: 5,
            at_ms: 1_000,
            badge: 3,
            devices: vec![v1::PushDevice {
                registration: Some(v1::PushRegistered {
                    device_id: "phone".into(),
                    platform: "fcm".into(),
                    token: "tok".into(),
                    app_id: "app".into(),
                    lang: "en".into(),
                }),
                registered_ms: 5_000,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_webhook_body_names_everything_the_docs_say() {
        let v: Value = serde_json::from_slice(&body(Format::Webhook, &notification())).unwrap();
        let n = &v["notification"];
        assert_eq!(n["id"], "abc");
        assert_eq!(n["badge"], 3);
        assert_eq!(n["senderName"], "Amy");
        assert_eq!(n["devices"][0]["token"], "tok");
        assert_eq!(n["devices"][0]["appId"], "app");
        let mut bare = notification();
        bare.text.clear();
        let v: Value = serde_json::from_slice(&body(Format::Webhook, &bare)).unwrap();
        assert!(v["notification"].get("text").is_none());
    }

    #[test]
    fn the_matrix_body_is_what_a_push_gateway_takes() {
        let v: Value = serde_json::from_slice(&body(Format::Matrix, &notification())).unwrap();
        let n = &v["notification"];
        assert_eq!(n["room_id"], "!g1");
        assert_eq!(n["counts"]["unread"], 3);
        assert_eq!(n["devices"][0]["pushkey"], "tok");
        assert_eq!(n["devices"][0]["pushkey_ts"], 5);
        assert_eq!(n["content"]["body"], "hi");
        assert_eq!(n["sender_display_name"], "Amy");
    }

    #[test]
    fn a_signature_verifies_with_its_secret_only() {
        let b = body(Format::Webhook, &notification());
        let header = sign(b"s3cret", 1_700_000_000, &b);
        assert!(header.starts_with("t=1700000000,v1="));
        assert!(verify(b"s3cret", &header, &b));
        assert!(!verify(b"wrong", &header, &b));
        let mut tampered = b.clone();
        tampered[10] ^= 1;
        assert!(!verify(b"s3cret", &header, &tampered));
        assert!(!verify(b"s3cret", "v1=00", &b));
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(
            answer(200, br#"{"rejected":["a","b"]}"#),
            Answer::Taken {
                rejected: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(answer(204, b""), Answer::Taken { rejected: vec![] });
        assert_eq!(answer(410, b""), Answer::Gone);
        assert!(matches!(answer(503, b""), Answer::Retry(_)));
        assert!(matches!(answer(429, b""), Answer::Retry(_)));
        assert!(matches!(answer(400, b""), Answer::Refused(_)));
    }
}
