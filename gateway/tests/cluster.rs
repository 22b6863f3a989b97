//! A 3-node cluster with one node down from the start: every stream and
//! bucket is R3, and a projector and gateway processes given the server
//! list (the dead node first) start, chat and upload media.

mod common;

use std::time::{Duration, Instant};

use common::*;
use im_schema::v1;
use im_streams::{connect::NatsArgs, StreamSettings};

/// Sends until stored (a leader election may refuse a few), same id.
async fn send_stored(c: &mut Client, to: &str, cmid: &str) -> v1::SendAck {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        c.send(text_send_to(to, cmid, "over the cluster")).await;
        let answer = c
            .recv_until(|p| match p {
                v1::envelope::Payload::SendAck(a) => Some(Ok(a.clone())),
                v1::envelope::Payload::Error(e) => Some(Err(e.clone())),
                _ => None,
            })
            .await;
        match answer {
            Ok(ack) if ack.status != v1::AckStatus::Rejected as i32 => return ack,
            other => assert!(Instant::now() < deadline, "never stored: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_is_r3_and_starts_with_a_node_down() {
    // What the supervised projector says is shown when this fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,im_projectors=info,im_streams=info")
        .with_test_writer()
        .try_init();
    let mut cluster = im_testkit::NatsCluster::start(3).await.unwrap();
    let urls = cluster.urls();
    let settings = StreamSettings {
        replicas: 3,
        ..Default::default()
    };
    let admin = cluster.connect().await;
    let js = async_nats::jetstream::new(admin.clone());
    im_streams::apply_streams(&js, &settings).await.unwrap();
    for name in [
        "IM_CONV",
        "IM_RCPT",
        "IM_MEDIA",
        "KV_im_media_quota",
        "KV_im_media_pending",
    ] {
        let info = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }
    // The first node named in every list is down when they start.
    cluster.nodes[0].kill();
    let list = urls.join(",");
    let client = NatsArgs::new(&list)
        .connect("test-projector")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // As `im-projector` runs it: supervised, so the election that follows
    // the kill (JetStream not answering for a few seconds) is waited out.
    let (current, mut started) = tokio::sync::watch::channel(None);
    let clients = im_projectors::Clients {
        consume: client.clone(),
        publish: client,
    };
    let mut projector = AbortOnDrop(tokio::spawn(im_projectors::supervisor::run(
        clients,
        im_projectors::ProjectorConfig {
            kek: Default::default(),
            instance: "main".into(),
            partitions: None,
            data_dir: dir.path().to_path_buf(),
            fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
            fanout: true,
            store_faults: None,
            store_engine: Default::default(),
            serves: im_projectors::Serves::Clients,
            lease: None,
            projections: None,
        },
        current,
        tokio::sync::watch::channel(false).1,
    )));
    // The supervisor gives up after `STARTUP_WAIT` of JetStream not
    // answering (twice: its topology read, then its runs); on a loaded box
    // an election can take a good part of that.
    tokio::select! {
        s = started.wait_for(Option::is_some) => { s.unwrap(); }
        ended = &mut projector.0 => panic!("the projector gave up: {ended:?}"),
        _ = tokio::time::sleep(im_streams::connect::STARTUP_WAIT * 3) => panic!("no projector after 3 startup waits"),
    }
    let media = tempfile::tempdir().unwrap();
    let media_dir = media.path().to_str().unwrap();
    // Commands answered (or timed out) well within the test client's 10 s
    // read, so a send slowed by the election is retried, not waited out.
    let limits = r#"{"command_timeout_ms": 3000}"#;
    let gw = spawn_gateway_env(&list, limits, &[("IM_MEDIA_DIR", media_dir)]);
    let mut alice = connect(gw.1, "alice", Wire::Proto).await;
    let mut bob = connect(gw.1, "bob", Wire::Json).await;
    let ack = send_stored(&mut alice, "bob", "over-r3").await;
    // The projector's consumers may be between leaders for a while after
    // the kill (their pipeline waits and reads on): a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        let found = bob.recv().await.and_then(|env| {
            env.payload
                .as_ref()
                .and_then(deliver_of)
                .filter(|d| d.event_type == "message_sent")
        });
        if let Some(d) = found {
            break d;
        }
        assert!(Instant::now() < deadline, "no delivery within 90 s");
    };
    assert_eq!(
        (got.conv_seq, got.stream_seq),
        (ack.conv_seq, ack.stream_seq)
    );
    let (status, body) = upload(gw.1, "alice", "image/png", &png(4, 4, false)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
