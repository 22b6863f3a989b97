//! `imctl projections status` on a store of 200k events: it answers from
//! counters (no digest, no scan) unless a digest is asked for. Its own
//! test binary, so nothing else competes with the 200k-event fold.

mod common;

use std::time::{Duration, Instant};

use common::imctl;

/// The projection rows of `imctl projections status --json`.
fn projection_rows(out: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    v["projections"].as_array().unwrap().clone()
}

/// A real server with the streams and a projector instance "main" that
/// publishes no deliveries.
async fn stack() -> (im_testkit::Stack, im_projectors::Projector) {
    let mut kit = im_testkit::Stack::start().await;
    let mut config = kit.projector_config("main");
    config.fanout = false;
    let projector = kit.projector(config).await;
    (kit, projector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_from_counters_on_a_200k_event_store() {
    const EVENTS: u64 = 200_000;
    let (kit, _projector) = stack().await;
    let server = &kit.server;
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    im_ops::cmd::bench::rebuild::seed(&js, EVENTS)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let plain = [
        "projections",
        "status",
        "--nats-url",
        &url,
        "--json",
        "--interval-ms",
        "100",
    ];
    loop {
        let (ok, out) = imctl(&plain);
        assert!(ok, "{out}");
        let rows = projection_rows(&out);
        if rows
            .iter()
            .all(|r| r["checkpoint"].as_u64() >= Some(EVENTS))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let t0 = Instant::now();
    let (ok, out) = imctl(&plain);
    let plain_took = t0.elapsed();
    assert!(ok, "{out}");
    let rows = projection_rows(&out);
    assert!(
        rows.iter().all(|r| r["digest"] == ""),
        "a plain status reads no entry"
    );
    let t0 = Instant::now();
    let mut with_digest = plain.to_vec();
    with_digest.push("--digest");
    let (ok, out) = imctl(&with_digest);
    let digest_took = t0.elapsed();
    assert!(ok, "{out}");
    let rows = projection_rows(&out);
    let keys: u64 = rows.iter().map(|r| r["keys"].as_u64().unwrap()).sum();
    assert!(keys >= EVENTS, "{keys} keys");
    // Printed, not compared: the plain status includes the 100 ms between
    // its two samples.
    println!(
        "status over {EVENTS} events ({keys} keys): plain {plain_took:?}, with digests {digest_took:?}"
    );
}
