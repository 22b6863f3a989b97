//! People against the real stack: contacts over two `im-gateway`
//! processes (retries past the duplicate window answered DUPLICATE),
//! privacy refusing strangers' direct chats and group adds, user-level
//! blocks stopping a direct chat both ways, hidden requests, and display
//! names (Unicode in, bad input out with nothing appended).

mod common;

use std::time::Duration;

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, envelope::Payload};
use im_streams::ids::{direct_conversation_id, pair_log_id, user_log_id};
use im_streams::StreamSettings;

const FAST: &str = r#"{"sends_per_sec": 100000, "send_burst": 100000, "user_sends_per_sec": 100000, "user_send_burst": 100000}"#;

/// JetStream's duplicate window in these tests: retries come after it.
const WINDOW_MS: u64 = 1_000;

async fn stack() -> Stack {
    let settings = StreamSettings {
        duplicate_window_ms: WINDOW_MS,
        ..Default::default()
    };
    Stack::start_with(Limits::default(), &settings).await
}

/// One request with a JSON body; (status, body as JSON).
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    user: &str,
    (key, body): (&str, &[u8]),
) -> (u16, serde_json::Value) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nIdempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        token(user),
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = dechunk_text(head, body);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn dechunk_text(head: &str, body: &str) -> String {
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        String::from_utf8(dechunk(body.as_bytes())).unwrap()
    } else {
        body.to_string()
    }
}

async fn contact(
    addr: std::net::SocketAddr,
    user: &str,
    verb: &str,
    target: &str,
    key: &str,
) -> (u16, serde_json::Value) {
    let path = format!("/v1/contacts/{target}/{verb}");
    call(addr, "POST", &path, user, (key, b"{}")).await
}

async fn get(addr: std::net::SocketAddr, path: &str, user: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path, &token(user)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `user`'s contact entries as (peer, state, blocked), read at `pos`.
async fn contacts(
    addr: std::net::SocketAddr,
    user: &str,
    pos: &serde_json::Value,
) -> Vec<(String, String, bool)> {
    let pos = pos["streamSeq"].as_str().unwrap_or("0");
    let v = get(addr, &format!("/v1/me/contacts?minPosition={pos}"), user).await;
    v["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["userId"].as_str().unwrap().to_string(),
                e["state"]
                    .as_str()
                    .unwrap_or("CONTACT_STATE_NONE")
                    .to_string(),
                e["blocked"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn entry(peer: &str, state: &str, blocked: bool) -> (String, String, bool) {
    (peer.into(), format!("CONTACT_STATE_{state}"), blocked)
}

fn ok(answer: &(u16, serde_json::Value), duplicate: bool) {
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["duplicate"], duplicate, "{}", answer.1);
}

fn refused(answer: &(u16, serde_json::Value), status: u16, reason: &str) {
    assert_eq!(
        (answer.0, answer.1["reason"].as_str()),
        (status, Some(reason)),
        "{}",
        answer.1
    );
}

/// The next delivery of a people event, by its type.
async fn next_event_type(c: &mut Client) -> (String, String) {
    let d = c.recv_until(deliver_of).await;
    let actor = d.event.map(|e| e.actor).unwrap_or_default();
    (d.event_type, actor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contacts_over_two_gateways_and_retries_past_the_window_are_duplicates() {
    let s = stack().await;
    let (gw1, gw2) = (
        spawn_gateway(&s.server.url(), FAST),
        spawn_gateway(&s.server.url(), FAST),
    );
    let mut bob_device = connect(gw2.1, "bob", Wire::Json).await;

    let asked = contact(gw1.1, "ann", "request", "bob", "ann-asks-bob").await;
    ok(&asked, false);
    assert_eq!(
        asked.1["conversationId"],
        pair_log_id("ann", "bob").unwrap()
    );
    // The same key for another pair, within the duplicate window: refused
    // as a reused id (a new log's creation is deduplicated first).
    let reused = contact(gw2.1, "ann", "request", "dan", "ann-asks-bob").await;
    refused(&reused, 400, "invalid_argument");
    assert!(s
        .log_of(&pair_log_id("ann", "dan").unwrap())
        .await
        .is_empty());
    assert_eq!(
        next_event_type(&mut bob_device).await,
        ("contact_requested".into(), "ann".into()),
        "the asked is told on their own subject"
    );
    assert_eq!(
        contacts(gw2.1, "bob", &asked.1).await,
        vec![entry("ann", "INCOMING", false)]
    );
    assert_eq!(
        contacts(gw1.1, "ann", &asked.1).await,
        vec![entry("bob", "OUTGOING", false)]
    );

    let accepted = contact(gw2.1, "bob", "accept", "ann", "bob-accepts-ann").await;
    ok(&accepted, false);
    assert_eq!(
        contacts(gw1.1, "ann", &accepted.1).await,
        vec![entry("bob", "CONTACT", false)]
    );
    assert_eq!(
        contacts(gw2.1, "bob", &accepted.1).await,
        vec![entry("ann", "CONTACT", false)]
    );

    let asked_cat = contact(gw1.1, "ann", "request", "cat", "ann-asks-cat").await;
    ok(&asked_cat, false);
    let declined = contact(gw2.1, "cat", "decline", "ann", "cat-declines").await;
    ok(&declined, false);
    assert_eq!(contacts(gw2.1, "cat", &declined.1).await, vec![]);
    let removed = contact(gw1.1, "bob", "remove", "ann", "bob-removes-ann").await;
    ok(&removed, false);
    assert_eq!(contacts(gw1.1, "ann", &removed.1).await, vec![]);
    // Refusals name their rule and append nothing.
    refused(
        &contact(gw1.1, "ann", "accept", "bob", "x1").await,
        404,
        "no_request",
    );
    refused(
        &contact(gw1.1, "ann", "request", "ann", "x2").await,
        400,
        "self_target",
    );
    let before = s.log_of(&pair_log_id("ann", "bob").unwrap()).await.len();

    // Past the duplicate window, through the other gateway and the same.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS + 500)).await;
    let retries = [
        (gw2.1, "ann", "request", "bob", "ann-asks-bob", &asked),
        (gw1.1, "bob", "accept", "ann", "bob-accepts-ann", &accepted),
        (gw1.1, "cat", "decline", "ann", "cat-declines", &declined),
        (gw2.1, "bob", "remove", "ann", "bob-removes-ann", &removed),
    ];
    for (gw, user, verb, target, key, original) in retries {
        let again = contact(gw, user, verb, target, key).await;
        ok(&again, true);
        assert_eq!(again.1["convSeq"], original.1["convSeq"], "{verb}");
        assert_eq!(again.1["streamSeq"], original.1["streamSeq"], "{verb}");
    }
    assert_eq!(
        s.log_of(&pair_log_id("ann", "bob").unwrap()).await.len(),
        before
    );
}

async fn dm(c: &mut Client, to: &str, key: &str) -> v1::SendAck {
    c.send(text_send_to(to, key, "hi")).await;
    c.recv_until(ack_of).await
}

fn rejected(ack: &v1::SendAck, reason: &str) {
    assert_eq!(ack.status, v1::AckStatus::Rejected as i32, "{ack:?}");
    assert!(ack.reason.starts_with(&format!("{reason}:")), "{ack:?}");
}

fn stored(ack: &v1::SendAck) {
    assert_eq!(ack.status, v1::AckStatus::Stored as i32, "{ack:?}");
}

async fn set_privacy(addr: std::net::SocketAddr, user: &str, direct: &str, groups: &str) {
    let body = format!(r#"{{"directChats":"{direct}","groupAdds":"{groups}"}}"#);
    let key = format!("privacy-{user}-{direct}-{groups}");
    let answer = call(addr, "PUT", "/v1/me/privacy", user, (&key, body.as_bytes())).await;
    ok(&answer, false);
}

async fn create_group(
    addr: std::net::SocketAddr,
    owner: &str,
    conv: &str,
    members: &[&str],
) -> (u16, serde_json::Value) {
    let members: Vec<_> = members
        .iter()
        .map(|m| serde_json::json!({ "userId": m }))
        .collect();
    let body = serde_json::json!({ "conversationId": conv, "members": members }).to_string();
    call(
        addr,
        "POST",
        "/v1/conversations",
        owner,
        (conv, body.as_bytes()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn privacy_refuses_strangers_and_a_block_stops_a_direct_chat_both_ways() {
    let s = stack().await;
    let (gw1, gw2) = (
        spawn_gateway(&s.server.url(), FAST),
        spawn_gateway(&s.server.url(), FAST),
    );
    set_privacy(gw1.1, "bob", "contacts", "contacts").await;
    let mut eve = connect(gw1.1, "eve", Wire::Proto).await;
    let mut ann = connect(gw1.1, "ann", Wire::Proto).await;
    let mut bob = connect(gw2.1, "bob", Wire::Proto).await;

    // A stranger's direct chat and group add: refused, nothing appended.
    rejected(&dm(&mut eve, "bob", "eve-1").await, "not_accepting");
    assert!(s
        .log_of(&direct_conversation_id("eve", "bob").unwrap())
        .await
        .is_empty());
    refused(
        &create_group(gw2.1, "eve", "eves", &["bob", "ann"]).await,
        403,
        "not_accepting",
    );
    assert!(s.log_of("eves").await.is_empty());
    ok(&create_group(gw2.1, "eve", "eves2", &["ann"]).await, false);
    let add = call(
        gw1.1,
        "POST",
        "/v1/conversations/eves2/add-member/bob",
        "eve",
        ("add-bob", b"{}"),
    )
    .await;
    refused(&add, 403, "not_accepting");
    // Many at once are asked of the projectors: the same answer.
    let many: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let mut with_bob: Vec<&str> = many.iter().map(String::as_str).collect();
    with_bob.push("bob");
    refused(
        &create_group(gw1.1, "eve", "bulk", &with_bob).await,
        403,
        "not_accepting",
    );
    ok(
        &create_group(gw1.1, "eve", "bulk2", &with_bob[..40]).await,
        false,
    );

    // A contact's succeed.
    ok(&contact(gw1.1, "ann", "request", "bob", "a1").await, false);
    let accepted = contact(gw2.1, "bob", "accept", "ann", "b1").await;
    ok(&accepted, false);
    stored(&dm(&mut ann, "bob", "ann-1").await);
    ok(&create_group(gw1.1, "ann", "anns", &["bob"]).await, false);

    // A block stops the ongoing direct chat in both directions...
    ok(&contact(gw2.1, "bob", "block", "ann", "b2").await, false);
    rejected(&dm(&mut ann, "bob", "ann-2").await, "blacklisted");
    rejected(&dm(&mut bob, "ann", "bob-2").await, "blacklisted");
    // ... and a new group add by the blocked.
    refused(
        &create_group(gw1.1, "ann", "anns2", &["bob"]).await,
        403,
        "not_accepting",
    );
    // The conversation's own blacklist cannot lift it there.
    let dm_id = direct_conversation_id("ann", "bob").unwrap();
    let lift = format!("/v1/conversations/{dm_id}/unblacklist/ann");
    let lifted = call(gw2.1, "POST", &lift, "bob", ("b-lift", b"{}")).await;
    refused(&lifted, 403, "unblock_first");
    rejected(&dm(&mut ann, "bob", "ann-2b").await, "blacklisted");
    // Unblocking restores it.
    ok(&contact(gw1.1, "bob", "unblock", "ann", "b3").await, false);
    stored(&dm(&mut ann, "bob", "ann-3").await);
    stored(&dm(&mut bob, "ann", "bob-3").await);
    let block_again = contact(gw1.1, "bob", "block", "ann", "b4").await;
    ok(&block_again, false);
    // A retry of the block completes nothing twice.
    ok(&contact(gw2.1, "bob", "block", "ann", "b4").await, true);
    rejected(&dm(&mut ann, "bob", "ann-4").await, "blacklisted");
    assert_eq!(
        contacts(gw2.1, "bob", &block_again.1).await,
        vec![entry("ann", "CONTACT", true)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_to_someone_who_blocks_you_reads_as_sent_and_is_never_shown() {
    let s = stack().await;
    let gw = s.gateways[0];
    let mut bob = connect(gw, "bob", Wire::Json).await;
    let mut eve = connect(gw, "eve", Wire::Json).await;
    ok(&contact(gw, "bob", "block", "eve", "b1").await, false);
    let asked = contact(gw, "eve", "request", "bob", "e1").await;
    ok(&asked, false);
    // The blocked is not told of the block: the asker's own devices see
    // their request first; the blocker's, only his block.
    let first = next_event_type(&mut eve).await;
    assert_eq!(first.0, "contact_requested");
    assert_eq!(
        contacts(gw, "eve", &asked.1).await,
        vec![entry("bob", "OUTGOING", false)]
    );
    let pos = asked.1["streamSeq"].as_str().unwrap();
    let view = get(gw, &format!("/v1/me/contacts?minPosition={pos}"), "bob").await;
    assert_eq!(view["entries"][0]["userId"], "eve");
    assert_eq!(view["entries"][0]["blocked"], true);
    assert!(
        view["entries"][0].get("sinceMs").is_none(),
        "no time of the hidden request: {view}"
    );
    assert_eq!(
        next_event_type(&mut bob).await,
        ("user_blocked".into(), "bob".into())
    );
    // A withdrawal of the hidden request is no news to him either.
    ok(&contact(gw, "eve", "remove", "bob", "e2").await, false);
    assert_eq!(next_event_type(&mut eve).await.0, "contact_removed");
    let later = bob.recv_within(Duration::from_secs(1)).await;
    assert!(
        !matches!(later.and_then(|e| e.payload), Some(Payload::Deliver(_))),
        "the hidden request or its withdrawal reached the blocker"
    );
    // Neither can the blocker read the pair's log, nor accept it.
    let pair = pair_log_id("bob", "eve").unwrap();
    let (status, _) = http_get(
        gw,
        &format!("/v1/history?conversationId={pair}"),
        &token("bob"),
    )
    .await;
    assert_eq!(status, 404);
    refused(
        &contact(gw, "bob", "accept", "eve", "b2").await,
        404,
        "no_request",
    );
}

async fn put_name(
    gw: std::net::SocketAddr,
    user: &str,
    key: &str,
    name: &[u8],
) -> (u16, serde_json::Value) {
    let mut body = br#"{"displayName":""#.to_vec();
    body.extend_from_slice(name);
    body.extend_from_slice(br#""}"#);
    call(gw, "PUT", "/v1/me/profile", user, (key, &body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn display_names_take_any_unicode_and_refuse_bad_input_appending_nothing() {
    let s = stack().await;
    let gw = s.gateways[0];
    let units = ["李", "👩‍👩‍👧", "é", "🇨🇳", "ä̲", "雷", "👍🏽", "x"];
    let name: String = units.iter().cycle().take(64).copied().collect();
    let stored_name = contact_name(&s, gw, "li", &name).await;
    assert_eq!(stored_name, name, "64 graphemes kept as sent (NFC)");
    // NFC on the way in: "e" + U+0301 is stored precomposed.
    assert_eq!(contact_name(&s, gw, "rene", "Rene\u{301}").await, "René");

    let log = user_log_id("li").unwrap();
    let before = s.log_of(&log).await.len();
    let long: String = units.iter().cycle().take(65).copied().collect();
    refused(
        &put_name(gw, "li", "n2", long.as_bytes()).await,
        413,
        "too_large",
    );
    refused(
        &put_name(gw, "li", "n3", b"").await,
        400,
        "invalid_argument",
    );
    refused(
        &put_name(gw, "li", "n4", b"a\\u0007b").await,
        400,
        "invalid_argument",
    );
    refused(
        &put_name(gw, "li", "n5", "a\u{202E}b".as_bytes()).await,
        400,
        "invalid_argument",
    );
    let (status, body) = put_name(gw, "li", "n6", b"a\xff\xfeb").await;
    assert_eq!(status, 400, "invalid UTF-8: {body}");
    let message = body["message"].as_str().unwrap().to_lowercase();
    assert!(
        message.contains("unicode") || message.contains("utf-8"),
        "{body}"
    );
    assert_eq!(s.log_of(&log).await.len(), before, "nothing appended");
    // Only a media reference the user uploaded is an avatar.
    let avatar =
        br#"{"displayName":"x","avatar":{"mediaId":"nope","mime":"image/png","size":"3"}}"#;
    let forged = call(gw, "PUT", "/v1/me/profile", "li", ("n7", avatar)).await;
    assert_eq!(forged.0, 400, "{}", forged.1);
    assert_eq!(s.log_of(&log).await.len(), before, "nothing appended");
}

/// Sets `user`'s display name and reads it back as others see it.
async fn contact_name(s: &Stack, gw: std::net::SocketAddr, user: &str, name: &str) -> String {
    let key = format!("name-{user}");
    let answer = put_name(gw, user, &key, name.as_bytes()).await;
    ok(&answer, false);
    let pos = answer.1["streamSeq"].as_str().unwrap();
    let v = get(
        gw,
        &format!("/v1/users/profiles?ids={user},nobody&minPosition={pos}"),
        "someone",
    )
    .await;
    let profiles = v["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 1, "{v}");
    let me = get(gw, &format!("/v1/me?minPosition={pos}"), user).await;
    assert_eq!(me["privacy"]["directChats"], "everyone");
    assert!(
        v.get("privacy").is_none(),
        "nobody's privacy is shown to others: {v}"
    );
    let _ = s;
    profiles[0]["displayName"].as_str().unwrap().to_string()
}

/// A user's notification settings as `GET /v1/me/notifications` shows
/// them, read after `pos`.
async fn notify_settings(addr: std::net::SocketAddr, user: &str, pos: &str) -> serde_json::Value {
    let path = format!("/v1/me/notifications?minPosition={pos}");
    let (status, body) = call(addr, "GET", &path, user, ("", b"")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn pos_of(answer: &(u16, serde_json::Value)) -> String {
    answer.1["streamSeq"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_registrations_and_mutes_are_events_read_back_and_bad_input_changes_nothing() {
    let s = stack().await;
    let addr = s.gateways[0];
    let body = br#"{"platform":"apns","token":"ab12","appId":"chat.app","lang":"zh-Hans"}"#;
    let first = call(
        addr,
        "POST",
        "/v1/devices/phone/push",
        "amy",
        ("reg-1", body),
    )
    .await;
    ok(&first, false);
    // The same key later: the same answer, nothing appended twice.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS + 200)).await;
    ok(
        &call(
            addr,
            "POST",
            "/v1/devices/phone/push",
            "amy",
            ("reg-1", body),
        )
        .await,
        true,
    );
    let tablet = br#"{"platform":"fcm","token":"cd34","appId":"chat.app"}"#;
    ok(
        &call(
            addr,
            "POST",
            "/v1/devices/tablet/push",
            "amy",
            ("reg-2", tablet),
        )
        .await,
        false,
    );
    let dnd = call(
        addr,
        "PUT",
        "/v1/me/notifications",
        "amy",
        ("dnd", br#"{"untilMs":4102444800000}"#),
    )
    .await;
    ok(&dnd, false);
    let muted = call(
        addr,
        "PUT",
        "/v1/me/notifications/conversations/g1",
        "amy",
        ("mute", br#"{"untilMs":4102444800000}"#),
    )
    .await;
    ok(&muted, false);
    let seen = notify_settings(addr, "amy", &pos_of(&muted)).await;
    let devices: Vec<(&str, &str)> = seen["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let r = &d["registration"];
            (
                r["deviceId"].as_str().unwrap(),
                r["token"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(devices, [("phone", "ab12"), ("tablet", "cd34")], "{seen}");
    assert_eq!(seen["dndUntilMs"], "4102444800000");
    assert_eq!(seen["muted"]["g1"], "4102444800000");
    // Nobody else's settings show: bo has none.
    assert_eq!(
        notify_settings(addr, "bo", &pos_of(&muted)).await,
        serde_json::json!({})
    );
    // Bad input: a clear error, nothing appended.
    let log = user_log_id("amy").unwrap();
    let before = s.log_of(&log).await.len();
    // (A body the types refuse is 422, as everywhere in the API.)
    let bad: [(&str, &str, &[u8], u16); 5] = [
        ("POST", "/v1/devices/a.b/push", body, 400),
        (
            "POST",
            "/v1/devices/phone/push",
            br#"{"platform":"apns","token":"","appId":"a"}"#,
            400,
        ),
        (
            "POST",
            "/v1/devices/phone/push",
            br#"{"platform":"apns","token":"t","appId":"a","lang":"en_US!"}"#,
            400,
        ),
        (
            "POST",
            "/v1/devices/phone/push",
            br#"{"platform":"apns","token":"t"}"#,
            422,
        ),
        ("PUT", "/v1/me/notifications", br#"{"untilMs":-1}"#, 400),
    ];
    for (i, (method, path, b, expected)) in bad.iter().enumerate() {
        let (status, answer) = call(addr, method, path, "amy", (&format!("bad-{i}"), b)).await;
        assert_eq!(
            status,
            *expected,
            "{path} {}: {answer}",
            String::from_utf8_lossy(b)
        );
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    let long = format!(
        r#"{{"platform":"apns","token":"{}","appId":"a"}}"#,
        "x".repeat(5_000)
    );
    let (status, answer) = call(
        addr,
        "POST",
        "/v1/devices/phone/push",
        "amy",
        ("bad-long", long.as_bytes()),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(s.log_of(&log).await.len(), before, "nothing appended");
    // Unregistered: the device is gone, the other stays.
    let gone = call(
        addr,
        "DELETE",
        "/v1/devices/phone/push",
        "amy",
        ("unreg", b""),
    )
    .await;
    ok(&gone, false);
    let seen = notify_settings(addr, "amy", &pos_of(&gone)).await;
    assert_eq!(seen["devices"].as_array().unwrap().len(), 1, "{seen}");
    assert_eq!(seen["devices"][0]["registration"]["deviceId"], "tablet");
}
