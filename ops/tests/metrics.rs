//! The metrics a running stack (`imctl up`) exposes, and the Grafana
//! dashboard in `ops/grafana/`: every family the gateway and the projector
//! serve is charted, and every series the dashboard charts is served.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::up::*;
use common::{http_get, http_get_as};

const DASHBOARD: &str = include_str!("../grafana/im-dashboard.json");

/// Families (`# TYPE` lines) and sample names of an OpenMetrics text.
fn scraped(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut families = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            samples.insert(line.split(['{', ' ']).next().unwrap().to_string());
        }
    }
    (families, samples)
}

/// Every `im_...` name in the dashboard's queries.
fn charted() -> BTreeSet<String> {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut names = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("im_") {
                    names.insert(word.to_string());
                }
            }
        }
    }
    names
}

async fn post_json(addr: std::net::SocketAddr, path: &str, bearer: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    sock.read_to_string(&mut raw).await.unwrap();
    raw.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Some of everything measured: sends, a delivery, reads, refusals over
/// both ways in, and a rebuild.
async fn traffic(lines: &[String], data: &std::path::Path) {
    let gw = gateway_addr(lines);
    let (alice, bob) = (token(data, "alice"), token(data, "bob"));
    let mut a = ws_connect(gw, &alice).await;
    let mut b = ws_connect(gw, &bob).await;
    let send = r#"{"send": {"toUserId": "bob", "clientMsgId": "m1", "text": "hi"}}"#;
    futures::SinkExt::send(&mut a, send.into()).await.unwrap();
    next_with(&mut a, "sendAck").await;
    next_with(&mut b, "deliver").await;
    let stranger = r#"{"send": {"conversationId": "nobodys", "clientMsgId": "m2", "text": "x"}}"#;
    futures::SinkExt::send(&mut a, stranger.into())
        .await
        .unwrap();
    next_with(&mut a, "REJECTED").await;
    assert_eq!(
        http_get_as(gw, "/v1/conversations", Some(&alice)).await.0,
        200
    );
    assert_eq!(
        http_get_as(gw, "/v1/conversations/nobodys/members", Some(&bob))
            .await
            .0,
        403
    );
    let admin = addr_after(lines, "imctl: ops page http://");
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let rebuild = r#"{"projections": ["history"]}"#;
    assert_eq!(
        post_json(admin, "/admin/v1/rebuild", operator.trim(), rebuild).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_what_the_stack_serves() {
    let data = tempfile::tempdir().unwrap();
    // With the notifier, whose families are charted too.
    let receiver = im_testkit::Receiver::start().await;
    let (child, lines) = start_as(data.path(), im_testkit::free_port(), "127.0.0.1:0", |cmd| {
        cmd.args(["--notify-url", &receiver.url("/push")]);
    });
    let _reaper = Reaper(child.id());
    traffic(&lines, data.path()).await;
    let gateway = addr_after(&lines, "imctl: gateway metrics http://");
    let projector = addr_after(&lines, "imctl: projector metrics http://");
    let notifier = addr_after(&lines, "imctl: notifier metrics http://");
    let (mut families, mut samples) = (BTreeSet::new(), BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    // The rebuild's progress shows once it has started.
    while !samples.contains("im_projection_rebuild_folded") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (families, samples) = (BTreeSet::new(), BTreeSet::new());
        for addr in [gateway, projector, notifier] {
            let (status, text) = http_get(addr, "/metrics").await;
            assert_eq!(status, 200, "{text}");
            let (f, s) = scraped(&text);
            families.extend(f);
            samples.extend(s);
        }
    }
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            http_get(projector, probe).await.0,
            200,
            "the projector's {probe}"
        );
    }
    interrupt_and_wait(child);
    let charted = charted();
    let unserved: Vec<_> = charted.difference(&samples).collect();
    assert!(
        unserved.is_empty(),
        "charted, not served: {unserved:?}\nserved: {samples:?}"
    );
    let uncharted: Vec<_> = families
        .iter()
        .filter(|f| !charted.iter().any(|c| c.starts_with(f.as_str())))
        .collect();
    assert!(uncharted.is_empty(), "served, not charted: {uncharted:?}");
    for histogram in [
        "im_gateway_append_seconds",
        "im_gateway_query_seconds",
        "im_gateway_delivery_queue_seconds",
        "im_gateway_http_request_seconds",
        "im_projector_commit_seconds",
        "im_projector_batch_events",
    ] {
        assert!(
            samples.contains(&format!("{histogram}_bucket")),
            "{histogram} has no samples"
        );
    }
    assert!(families.len() >= 25, "{families:?}");
}
