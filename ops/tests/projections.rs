//! `imctl projections status` as a process, against a real projector.

use std::process::Command;
use std::time::{Duration, Instant};

use im_streams::{Action, Appender, Command as Cmd, MessageBody};

/// (success, stdout); stderr (logs) is shown on failure only.
fn imctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A real server with the streams, a projector instance "main" and a
/// writer; `sends` messages between ann and ben. Returns the stack and the
/// last stream seq.
async fn stack(
    sends: usize,
) -> (
    im_testkit::NatsServer,
    im_projectors::Projector,
    tempfile::TempDir,
    String,
    u64,
) {
    let server = im_testkit::NatsServer::start().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let topo = im_streams::apply_streams(&js, &Default::default())
        .await
        .unwrap()
        .topology;
    let dir = tempfile::tempdir().unwrap();
    let projector = im_projectors::Projector::start(
        client.clone(),
        im_projectors::ProjectorConfig {
            instance: "main".into(),
            partitions: None,
            data_dir: dir.path().to_path_buf(),
            fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
            fanout: true,
        },
    )
    .await
    .unwrap();
    let app = Appender::new(client, topo).await.unwrap();
    let conv = im_streams::subjects::direct_conversation_id("ann", "ben").unwrap();
    let mut last = 0;
    for i in 0..sends {
        let (from, to) = if i % 2 == 0 {
            ("ann", "ben")
        } else {
            ("ben", "ann")
        };
        let cmd = Cmd {
            actor: from.into(),
            client_msg_id: format!("m{i}"),
            action: Action::Send {
                peer: Some(to.into()),
                body: MessageBody::Text(format!("message {i}")),
                meta: Default::default(),
            },
        };
        if let im_streams::AppendOutcome::Stored { stream_seq, .. } =
            app.execute(&conv, &cmd, "").await.unwrap()
        {
            last = stream_seq;
        }
    }
    (server, projector, dir, conv, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_projection_caught_up_with_its_digest() {
    let (server, _projector, _dir, _conv, _) = stack(10).await;
    let url = server.url();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let (ok, out) = imctl(&[
            "projections",
            "status",
            "--nats-url",
            &url,
            "--json",
            "--interval-ms",
            "100",
        ]);
        assert!(ok, "{out}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if rows.iter().all(|r| r["lag"] == 0) {
            break rows;
        }
        assert!(Instant::now() < deadline, "never caught up: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["projection"].as_str().unwrap())
        .collect();
    assert_eq!(names, im_projectors::projections::NAMES);
    for r in &rows {
        assert_eq!(
            (r["instance"].as_str(), r["checkpoint"].as_u64()),
            (Some("main"), Some(11)),
            "{r}"
        );
        assert_eq!(r["dead_letters"], 0);
        assert_eq!(r["digest"].as_str().unwrap().len(), 64);
    }
    let (ok, table) = imctl(&[
        "projections",
        "status",
        "--nats-url",
        &url,
        "--interval-ms",
        "100",
    ]);
    assert!(
        ok && table.contains("history") && table.contains("LAG"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_an_intact_store_and_names_a_corrupted_key() {
    let (server, projector, _dir, conv, last) = stack(20).await;
    let url = server.url();
    let deadline = Instant::now() + Duration::from_secs(30);
    while projector
        .context
        .status()
        .unwrap()
        .projections
        .iter()
        .any(|p| p.conv_checkpoint < last)
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (ok, out) = imctl(&[
        "projections",
        "verify",
        "--all",
        "--instance",
        "main",
        "--nats-url",
        &url,
    ]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(": ok ")).count(),
        6,
        "{out}"
    );

    // One read-model entry goes bad behind the projector's back.
    let history = projector
        .context
        .projections
        .iter()
        .find(|p| p.projection.name() == "history")
        .unwrap();
    let bad_key = im_projectors::keys::key(b'h', &[conv.as_bytes(), &im_projectors::keys::seq(5)]);
    history
        .ks
        .commit(vec![(bad_key.clone(), Some(b"garbage".to_vec()))])
        .unwrap();
    let (ok, out) = imctl(&[
        "projections",
        "verify",
        "--all",
        "--instance",
        "main",
        "--nats-url",
        &url,
    ]);
    assert!(!ok, "verify passed on a corrupted store: {out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("history: MISMATCH"))
        .unwrap_or_else(|| panic!("{out}"));
    let expected = im_ops::cmd::projections::printable_key(&bad_key);
    assert!(
        line.ends_with(&format!("first differing key: {expected}")),
        "{line}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(": ok ")).count(),
        5,
        "{out}"
    );
}
