//! A 100,000-member group against the real parts (nats-server, streams, a
//! projector, two gateways): created through the HTTP API in bulk, its
//! messages delivered once on its group subject and routed by each gateway
//! to its connected members only.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures::StreamExt;
use im_client::{Client, LogEvent};

const MEMBERS: usize = 100_000;
const PER_REQUEST: usize = im_streams::conversation::MEMBERS_PER_COMMAND_MAX;

/// POSTs `body` as `user`; the JSON answer (panics on a non-2xx status).
async fn post(http: &reqwest::Client, url: &str, user: &str, body: String) -> serde_json::Value {
    let resp = http
        .post(url)
        .bearer_auth(token(user))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

fn members_json(ids: &[String]) -> String {
    let items: Vec<String> = ids
        .iter()
        .map(|u| format!(r#"{{"userId":"{u}"}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

/// `own`'s group `huge` of `MEMBERS` (own, the named ones, and fillers),
/// created in one request and grown by `add-members`; returns the last
/// add's stream position.
async fn create_huge(gw: &str, named: &[&str]) -> u64 {
    let http = reqwest::Client::new();
    // Everyone but the owner, who is a member by creating it.
    let mut ids: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    ids.extend((ids.len()..MEMBERS - 1).map(|i| format!("f{i:06}")));
    let (first, rest) = ids.split_at(PER_REQUEST - 1);
    let body = format!(
        r#"{{"conversationId":"huge","title":"huge","members":{},"clientMsgId":"create"}}"#,
        members_json(first)
    );
    post(&http, &format!("{gw}/v1/conversations"), "own", body).await;
    let mut last = 0;
    for (i, chunk) in rest.chunks(PER_REQUEST).enumerate() {
        let body = format!(
            r#"{{"members":{},"clientMsgId":"add-{i}"}}"#,
            members_json(chunk)
        );
        let added = post(
            &http,
            &format!("{gw}/v1/conversations/huge/add-members"),
            "own",
            body,
        )
        .await;
        last = added["streamSeq"].as_str().unwrap().parse().unwrap();
    }
    // One more than the limit is refused, clearly, and changes nothing.
    let resp = http
        .post(format!("{gw}/v1/conversations/huge/add-members"))
        .bearer_auth(token("own"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"members":{}}}"#,
            members_json(&["late".into()])
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "{}", resp.text().await.unwrap());
    last
}

/// A page of `huge`'s members once the projector has applied `position`
/// (a read of one's own writes: 503 until then).
async fn members_page(gw: &str, position: u64, after: &str) -> serde_json::Value {
    let http = reqwest::Client::new();
    let url = format!("{gw}/v1/conversations/huge/members?minPosition={position}&after={after}");
    for _ in 0..600 {
        let resp = http
            .get(&url)
            .bearer_auth(token("own"))
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        }
        assert!(resp.status().is_success(), "{}", resp.status());
        return serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    }
    panic!("the group was not projected within two minutes")
}

/// The messages' texts a client holds, until it holds `n` (and a second
/// more for late duplicates).
async fn messages(client: &mut Client, n: usize) -> Vec<LogEvent> {
    events_until(client, n).await
}

fn seqs(events: &[LogEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_member_group_reaches_its_connected_members_once() {
    let mut kit = im_testkit::Stack::start().await;
    let config = kit.projector_config("main");
    let _projector = kit.projector(config).await;
    let (gw1, gw2) = (gateway_on(&kit).await, gateway_on(&kit).await);
    let created = create_huge(&gw1, &["r1", "r2", "r3", "gone"]).await;
    // Paged: 1,000 a page, named by the last id; the count says all.
    let page = members_page(&gw2, created, "").await;
    assert_eq!(page["conversation"]["memberCount"], MEMBERS as u64);
    assert_eq!(page["members"].as_array().unwrap().len(), 1_000);
    let next = page["nextAfter"].as_str().unwrap().to_string();
    let page2 = members_page(&gw2, created, &next).await;
    assert!(page2["members"][0]["userId"].as_str().unwrap() > next.as_str());

    // Members on both gateways, the sender's other device, and an outsider.
    let mut own_a = client_at(&gw1, "own", "a", BTreeMap::new());
    let mut own_b = client_at(&gw2, "own", "b", BTreeMap::new());
    let mut r1 = client_at(&gw1, "r1", "d", BTreeMap::new());
    let mut r2 = client_at(&gw2, "r2", "d", BTreeMap::new());
    let mut gone = client_at(&gw1, "gone", "d", BTreeMap::new());
    let mut outsider = client_at(&gw2, "outsider", "d", BTreeMap::new());
    for c in [&mut own_b, &mut r1, &mut r2, &mut gone] {
        // The group's creation and growth, from sync.
        let got = events_until(c, 0).await;
        assert_eq!(got.len(), MEMBERS / PER_REQUEST * 10, "creation + adds");
    }
    assert!(events_until(&mut outsider, 0).await.is_empty());

    // A member connected nowhere costs nothing: nothing is published to it.
    let nats = async_nats::connect(kit.url()).await.unwrap();
    let mut offline = nats.subscribe("im.deliver.f050000.>").await.unwrap();
    let send = |i: usize| text("huge", "", &format!("m{i}"), &format!("m{i}"));
    for i in 0..10 {
        own_a.send(send(i)).await.unwrap();
    }
    // r3 connects while messages are sent.
    let r3_connects = tokio::spawn(async move {
        let mut r3 = client_at(&gw2, "r3", "d", BTreeMap::new());
        let first = events_until(&mut r3, 0).await;
        (r3, first)
    });
    for i in 10..20 {
        own_a.send(send(i)).await.unwrap();
    }
    let (mut r3, mut r3_got) = r3_connects.await.unwrap();
    // `gone` is removed; more follows.
    let http = reqwest::Client::new();
    let removed = post(
        &http,
        &format!("{gw1}/v1/conversations/huge/remove-member/gone"),
        "own",
        "{}".into(),
    )
    .await;
    let removed_at: u64 = removed["convSeq"]
        .as_str()
        .map_or(0, |s| s.parse().unwrap());
    assert!(removed_at > 0, "{removed}");
    for i in 20..30 {
        own_a.send(send(i)).await.unwrap();
    }

    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    let mut orders = Vec::new();
    for (who, c) in [("own_b", &mut own_b), ("r1", &mut r1), ("r2", &mut r2)] {
        let got = messages(c, 30).await;
        assert_eq!(texts(&got), want, "{who}");
        orders.push(seqs(&got));
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "one order everywhere: {orders:?}"
    );
    // Connected while they were sent: every one, once, in order.
    let held = texts(&r3_got).len();
    r3_got.extend(messages(&mut r3, 30 - held).await);
    assert_eq!(texts(&r3_got), want, "r3");
    let gone_got = messages(&mut gone, 0).await;
    assert!(
        gone_got.iter().all(|e| e.seq <= removed_at),
        "nothing after the removal at {removed_at}: {:?}",
        seqs(&gone_got)
    );
    assert_eq!(
        gone_got.last().map(|e| e.seq),
        Some(removed_at),
        "its removal came"
    );
    assert!(
        events_until(&mut outsider, 0).await.is_empty(),
        "an outsider gets nothing"
    );
    let published =
        tokio::time::timeout(std::time::Duration::from_millis(200), offline.next()).await;
    assert!(
        published.is_err(),
        "published to a member connected nowhere: {published:?}"
    );
}
