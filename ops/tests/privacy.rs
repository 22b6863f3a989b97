//! Erasure and retention as an operator runs them, on `imctl up` as a real
//! process (content encrypted by default, every component on its own NATS
//! identity): `imctl erase`, the auditor's export and verify, no plaintext
//! left in the data directory, retention by epochs, and a wrong KEK
//! refused at start (docs/privacy.md).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::up::*;
use futures::SinkExt;
use im_ops::cmd::nats_identities;
use im_streams::identities::Component;
use tokio_tungstenite::tungstenite::Message;

const MARKER: &str = "zqxalicesecret";

/// Sends `text` from `from` to `to` over WebSocket; the ack's stream seq.
async fn send(
    gw: std::net::SocketAddr,
    data: &std::path::Path,
    (from, to): (&str, &str),
    id: &str,
    text: &str,
) -> u64 {
    let mut ws = ws_connect(gw, &token(data, from)).await;
    next_with(&mut ws, "connected").await;
    let send = serde_json::json!({"send": {"toUserId": to, "clientMsgId": id, "text": text}});
    ws.send(Message::Text(send.to_string().into()))
        .await
        .unwrap();
    let ack: serde_json::Value =
        serde_json::from_str(&next_with(&mut ws, "sendAck").await).unwrap();
    assert_eq!(ack["sendAck"]["status"], "ACK_STATUS_STORED", "{ack}");
    ack["sendAck"]["streamSeq"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// What `user` sees of the direct conversation's messages: (sender, text
/// or the reason it is not shown).
async fn history(
    gw: std::net::SocketAddr,
    data: &std::path::Path,
    user: &str,
    pos: u64,
) -> Vec<(String, String)> {
    let conv = im_streams::subjects::direct_conversation_id("alice", "bob").unwrap();
    let path = format!("/v1/history?conversationId={conv}&minPosition={pos}");
    let (status, body) = common::http_get_as(gw, &path, Some(&token(data, user))).await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let ev = &e["event"];
            let m = ev.get("messageSent")?;
            let shown = m["text"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| m["sealed"]["state"].to_string());
            Some((ev["actor"].as_str().unwrap().to_string(), shown))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_erases_a_user_and_the_auditor_sees_erased_content_in_a_verified_log() {
    let data = tempfile::tempdir().unwrap();
    let port = im_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (child, lines) = start(data.path(), port);
    let _reaper = Reaper(child.id());
    assert!(
        lines.iter().any(|l| l.contains("content encrypted")),
        "{lines:?}"
    );
    let gw = gateway_addr(&lines);
    wait_ready(gw).await;
    send(
        gw,
        data.path(),
        ("alice", "bob"),
        "a1",
        &format!("hi {MARKER}"),
    )
    .await;
    let pos = send(gw, data.path(), ("bob", "alice"), "b1", "hi alice").await;
    let seen = history(gw, data.path(), "bob", pos).await;
    assert_eq!(seen[0], ("alice".into(), format!("hi {MARKER}")));

    // Events are signed here: an erasure nobody could sign is refused
    // before any key is destroyed.
    let (ok, _) = imctl_as_operator(data.path(), &url, &["erase", "--user", "alice"]);
    assert!(!ok, "an unsigned erasure is refused");
    assert_eq!(
        history(gw, data.path(), "bob", pos).await[0].1,
        format!("hi {MARKER}")
    );
    let key = data.path().join("event-signing-key");
    let (ok, out) = imctl_as_operator(
        data.path(),
        &url,
        &[
            "erase",
            "--user",
            "alice",
            "--json",
            "--signing-key-file",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let erased: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(erased["keys_destroyed"].as_u64().unwrap() >= 1, "{erased}");
    let at = erased["recorded_at_stream_seq"].as_u64().unwrap();
    for user in ["bob", "alice"] {
        let seen = history(gw, data.path(), user, at).await;
        assert_eq!(
            seen[0],
            ("alice".into(), "\"SEALED_STATE_ERASED\"".into()),
            "{user}"
        );
        assert_eq!(seen[1], ("bob".into(), "hi alice".into()), "{user}");
    }

    // A rebuild after the erasure makes the same models: `verify` folds
    // the log into a scratch store and compares it key by key.
    let (ok, out) = imctl_as_operator(data.path(), &url, &["projections", "verify", "--all"]);
    assert!(ok, "the models rebuilt after the erasure differ: {out}");

    // The auditor: the log verifies; the export shows alice's content
    // erased and bob's opened, with the ciphertexts' digests.
    let auditor = im_streams::connect::NatsArgs::new(&url)
        .with_auth(nats_identities::auth(data.path(), Component::Auditor).unwrap());
    let connection = || im_replay::cmd::Connection {
        nats: auditor.clone(),
    };
    im_replay::cmd::verify::run(im_replay::cmd::verify::VerifyArgs {
        conv: None,
        json: false,
        state: None,
        from_seq: None,
        expect_state_digest: None,
        memory_mb: 256,
        passes: None,
        nats: connection(),
    })
    .await
    .expect("the log verifies after the erasure");
    let mut exported = Vec::new();
    let args = im_replay::cmd::export::ExportArgs {
        kek: im_streams::content::KekArgs::from_file(data.path().join("kek")),
        stream: im_replay::cmd::export::StreamChoice::Conv,
        conv: None,
        user: None,
        since: None,
        until: None,
        from_seq: None,
        to_seq: None,
        format: im_replay::cmd::export::Format::Jsonl,
        nats: connection(),
    };
    im_replay::cmd::export::run_to(args, &mut exported)
        .await
        .unwrap();
    let exported = String::from_utf8(exported).unwrap();
    assert!(!exported.contains(MARKER), "{exported}");
    let states: Vec<(String, String)> = exported
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"].get("messageSent").is_some())
        .map(|l| {
            (
                l["event"]["actor"].as_str().unwrap().to_string(),
                l["event"]["content"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("alice".to_string(), "erased".to_string()),
            ("bob".to_string(), "opened".to_string())
        ]
    );
    assert!(exported.contains("\"hi alice\"") && exported.contains("ciphertextSha256"));
    interrupt_and_wait(child);

    // Nothing of alice's text anywhere in the data directory (NATS's
    // files, the projector's store and index); a clear id is, so the
    // grep sees.
    let dirs = [data.path().to_path_buf()];
    assert!(!im_testkit::files_containing(&dirs, b"IM_CONV").is_empty());
    let left = im_testkit::files_containing(&dirs, MARKER.as_bytes());
    assert!(left.is_empty(), "plaintext left in {left:?}");
    let log = std::fs::read_to_string(data.path().join("nats").join("nats.log")).unwrap();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(refused.is_empty(), "{refused:#?}");

    // Another KEK in its place: the stack refuses to start, and says why.
    std::fs::write(data.path().join("kek"), "ab".repeat(32)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(["up", "--data-dir"])
        .arg(data.path())
        .args(["--nats-port", &im_testkit::free_port().to_string()])
        .args([
            "--gateway-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("wrong key-encryption key"), "{stderr}");
    assert!(
        !stderr.contains(&"ab".repeat(32)),
        "the key is never printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retention_old_messages_become_erased_and_new_ones_stay_readable() {
    let data = tempfile::tempdir().unwrap();
    let port = im_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (child, lines) = start_as(data.path(), port, "127.0.0.1:0", |cmd| {
        cmd.args(["--content-epoch-secs", "1", "--retention-secs", "3"]);
    });
    let _reaper = Reaper(child.id());
    let gw = gateway_addr(&lines);
    wait_ready(gw).await;
    let (ok, out) = imctl_as_operator(data.path(), &url, &["keys", "policy", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), r#"{"epoch_ms":1000,"retention_ms":3000}"#);
    let pos = send(gw, data.path(), ("alice", "bob"), "old", "old words").await;
    assert_eq!(history(gw, data.path(), "bob", pos).await[0].1, "old words");
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let pos = send(gw, data.path(), ("alice", "bob"), "new", "new words").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = history(gw, data.path(), "bob", pos).await;
        if seen[0].1.contains("ERASED") || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seen[0].1, "\"SEALED_STATE_ERASED\"");
    assert_eq!(seen[1].1, "new words");
    // The stack's retention task destroyed the old epochs' keys: a run now
    // finds nothing more to do, and the bucket holds no old key.
    let (ok, out) = imctl_as_operator(data.path(), &url, &["keys", "expire", "--json"]);
    assert!(ok, "{out}");
    let js = async_nats::jetstream::new(
        im_streams::connect::NatsArgs::new(&url)
            .with_auth(nats_identities::auth(data.path(), Component::Operator).unwrap())
            .connect("test")
            .await
            .unwrap(),
    );
    let now_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        / 1_000;
    let stream = js.get_stream("KV_im_content_keys").await.unwrap();
    let mut subjects = stream
        .info_with_subjects("$KV.im_content_keys.k.>")
        .await
        .unwrap();
    while let Some((s, _)) = futures::TryStreamExt::try_next(&mut subjects)
        .await
        .unwrap()
    {
        let epoch: u64 = s.split('.').nth(3).unwrap().parse().unwrap();
        assert!(epoch + 5 >= now_epoch, "an old key survives: {s}");
    }
    interrupt_and_wait(child);
}
