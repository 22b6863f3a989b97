//! `imctl streams apply|status` as a process against a real nats-server.

use std::process::Command;

use im_streams::{Action, Appender, Command as Cmd, MessageBody};

fn imctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn apply_prints_the_diff_and_status_shows_state_and_consumers() {
    let server = im_testkit::NatsServer::start().await.unwrap();
    let url = server.url();
    let (ok, out, err) = imctl(&["streams", "apply", "--nats-url", &url]);
    assert!(ok, "{err}");
    assert!(
        out.contains("IM_CONV: created") && out.contains("IM_RCPT: created"),
        "{out}"
    );
    let (ok, out, _) = imctl(&["streams", "apply", "--nats-url", &url]);
    assert!(ok && out.contains("IM_CONV: unchanged"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("streams.json");
    std::fs::write(&file, r#"{"duplicate_window_ms": 300000}"#).unwrap();
    let (ok, out, _) = imctl(&[
        "streams",
        "apply",
        "--nats-url",
        &url,
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("IM_CONV: duplicate_window: 120s -> 300s"),
        "{out}"
    );
    std::fs::write(&file, r#"{"duplicate_window": 1}"#).unwrap();
    let (ok, _, err) = imctl(&[
        "streams",
        "apply",
        "--nats-url",
        &url,
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("unknown field"), "{err}");

    // Some events and a consumer with work pending.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let topo = im_streams::definitions::read_topology(&js).await.unwrap();
    let app = Appender::new(client, topo).await.unwrap();
    let conv = im_streams::subjects::direct_conversation_id("ann", "ben").unwrap();
    for i in 0..3 {
        let cmd = Cmd {
            actor: "ann".into(),
            client_msg_id: format!("m{i}"),
            action: Action::Send {
                peer: Some("ben".into()),
                body: MessageBody::Text("x".into()),
                meta: Default::default(),
            },
        };
        app.execute(&conv, &cmd, "").await.unwrap();
    }
    js.get_stream("IM_CONV")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("watcher".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (ok, out, err) = imctl(&["streams", "status", "--nats-url", &url, "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let conv_stream = &status[0];
    assert_eq!(conv_stream["name"], "IM_CONV");
    assert_eq!(conv_stream["messages"], 4, "created + 3 messages");
    assert_eq!(conv_stream["last_seq"], 4);
    assert_eq!(conv_stream["consumers"][0]["name"], "watcher");
    assert_eq!(conv_stream["consumers"][0]["pending"], 4);
    let (ok, table, _) = imctl(&["streams", "status", "--nats-url", &url]);
    assert!(
        ok && table.contains("IM_CONV") && table.contains("watcher"),
        "{table}"
    );
}
