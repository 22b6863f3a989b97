//! The notifier against a real nats-server and a real HTTP receiver: who
//! is woken, once per window, with the right badge; a receiver down, slow,
//! failing or refusing tokens; dead letters.

mod common;

use std::time::Duration;

use common::{notification, wait_for, Stack, DEBOUNCE, SECRET};
use im_notifier::webhook;
use im_schema::v1;
use im_testkit::{Receiver, ReceiverMode};

/// Long enough for a window to be decided and sent once due.
const SETTLE: Duration = Duration::from_secs(4);

fn users_of(received: &[im_testkit::receiver::Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| notification(r)["userId"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_away_are_woken_once_per_window_and_nobody_else() {
    let stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let notifier = stack.notifier(stack.config(&receiver)).await;
    // bo: away with a phone. cy: connected. di: reads within the debounce.
    // ed: muted the group. fa: no device. gi: do not disturb.
    stack
        .create("g1", "amy", &["bo", "cy", "di", "ed", "fa", "gi"])
        .await;
    stack.create("h1", "amy", &["bo"]).await;
    for u in ["bo", "cy", "di", "ed", "gi", "amy"] {
        stack.register(u, "phone", &format!("token-{u}")).await;
    }
    stack.mute("ed", "g1", i64::MAX).await;
    stack.mute("gi", "", i64::MAX).await;
    stack.online("cy").await;
    // One unread message elsewhere, for bo's badge; decided on its own.
    stack.send("h1", "amy", "elsewhere").await;
    wait_for(&receiver, SETTLE * 2, "h1's notification", |r| r.len() == 1).await;
    let (_, first) = stack.send("g1", "amy", "one").await;
    stack.send("g1", "amy", "two").await;
    let (_, last) = stack.send("g1", "amy", "three").await;
    stack.read("g1", "di", last).await;
    wait_for(&receiver, SETTLE * 2, "g1's notification", |r| r.len() >= 2).await;
    // Nothing more comes for the others.
    tokio::time::sleep(DEBOUNCE * 2).await;
    let got = receiver.received();
    assert_eq!(users_of(&got), ["bo", "bo"], "only bo is woken");
    let n = notification(&got[1]);
    assert_eq!(n["conversationId"], "g1");
    assert_eq!(n["messages"], 3, "three messages in one window: {n}");
    assert_eq!(n["firstConvSeq"], first);
    assert_eq!(n["lastConvSeq"], last);
    assert_eq!(n["badge"], 4, "three here and one in h1: {n}");
    assert_eq!(n["text"], "three");
    assert_eq!(n["senderId"], "amy");
    assert_eq!(n["conversationTitle"], "title of g1");
    assert_eq!(n["devices"][0]["token"], "token-bo");
    // Signed with the secret, keyed by the notification's id.
    let r = &got[1];
    let signature = r.header("im-signature").unwrap();
    assert!(webhook::verify(SECRET, signature, &r.body));
    assert!(!webhook::verify(b"another secret!!", signature, &r.body));
    assert_eq!(r.header("idempotency-key").unwrap(), n["id"]);
    // A later window is a new notification, with a new key; di, who read
    // the first three, is woken for this one.
    stack.send("g1", "amy", "later").await;
    wait_for(&receiver, SETTLE * 2, "the next window", |r| r.len() == 4).await;
    let next = receiver.received();
    let mut users = users_of(&next[2..]);
    users.sort();
    assert_eq!(users, ["bo", "di"]);
    let bo = next[2..]
        .iter()
        .find(|r| notification(r)["userId"] == "bo")
        .unwrap();
    assert_eq!(notification(bo)["messages"], 1);
    assert_eq!(notification(bo)["badge"], 5);
    assert_ne!(bo.header("idempotency-key"), r.header("idempotency-key"));
    notifier.stop().await;
}

#[tokio::test]
async fn a_receiver_down_for_30_s_gets_everything_in_order_once() {
    let stack = Stack::start().await;
    let mut receiver = Receiver::start().await;
    let notifier = stack.notifier(stack.config(&receiver)).await;
    stack.create("g1", "amy", &["bo", "cy"]).await;
    stack.create("g2", "amy", &["bo"]).await;
    stack.register("bo", "phone", "tb").await;
    stack.register("cy", "phone", "tc").await;
    receiver.down();
    let down_at = tokio::time::Instant::now();
    // Five windows in g1 and g2 while it is down.
    let mut expected = 0;
    for round in 0..5 {
        stack.send("g1", "amy", &format!("g1 {round}")).await;
        stack.send("g2", "amy", &format!("g2 {round}")).await;
        expected += 3;
        tokio::time::sleep(DEBOUNCE + Duration::from_millis(300)).await;
    }
    tokio::time::sleep_until(down_at + Duration::from_secs(30)).await;
    assert!(receiver.received().is_empty());
    // Back up: first failing twice more with 500s, then taking.
    receiver.up().await;
    receiver.set(ReceiverMode::Status(500));
    wait_for(&receiver, SETTLE * 3, "500s answered", |r| r.len() >= 2).await;
    receiver.set(ReceiverMode::Ok);
    wait_for(
        &receiver,
        Duration::from_secs(30),
        "every notification",
        |_| receiver.taken_once().len() == expected,
    )
    .await;
    for user in ["bo", "cy"] {
        let seqs: Vec<(String, u64)> = receiver
            .taken_once()
            .iter()
            .map(notification)
            .filter(|n| n["userId"] == user)
            .map(|n| {
                (
                    n["conversationId"].as_str().unwrap().to_string(),
                    n["atMs"].as_u64().unwrap(),
                )
            })
            .collect();
        let times: Vec<u64> = seqs.iter().map(|(_, t)| *t).collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted, "{user}'s notifications in order: {seqs:?}");
    }
    assert_eq!(
        notifier
            .stats
            .sent
            .load(std::sync::atomic::Ordering::Relaxed) as usize,
        expected
    );
    notifier.stop().await;
}

#[tokio::test]
async fn a_refused_token_ends_its_registration_by_an_event() {
    let stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let notifier = stack.notifier(stack.config(&receiver)).await;
    stack.create("g1", "amy", &["bo", "cy"]).await;
    stack.register("bo", "phone", "stale-bo").await;
    stack.register("cy", "phone", "stale-cy").await;
    stack.register("cy", "tablet", "good-cy").await;
    // 410 for bo's only token.
    receiver.set(ReceiverMode::Status(410));
    stack.send("g1", "cy", "to bo").await;
    wait_for(&receiver, SETTLE * 2, "bo's 410", |r| r.len() == 1).await;
    // cy's phone token named as rejected, the tablet's kept.
    receiver.set(ReceiverMode::Rejected(vec!["stale-cy".into()]));
    stack.send("g1", "bo", "to cy").await;
    wait_for(&receiver, SETTLE * 2, "cy's answer", |r| r.len() == 2).await;
    let ends = wait_for_unregistrations(&stack, 2).await;
    assert!(
        ends.contains(&("bo".into(), "phone".into(), "stale-bo".into())),
        "{ends:?}"
    );
    assert!(
        ends.contains(&("cy".into(), "phone".into(), "stale-cy".into())),
        "{ends:?}"
    );
    // What is left is what the next notification goes to.
    receiver.set(ReceiverMode::Ok);
    stack.send("g1", "amy", "to both").await;
    wait_for(&receiver, SETTLE * 2, "the next", |r| r.len() == 3).await;
    let n = notification(&receiver.received()[2]);
    assert_eq!(n["userId"], "cy", "bo has no device left: {n}");
    let tokens: Vec<&str> = n["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, ["good-cy"]);
    notifier.stop().await;
}

/// The `PushUnregistered` events in the log: (user, device, token), each
/// with reason GONE, once `n` are there.
async fn wait_for_unregistrations(stack: &Stack, n: usize) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = common::conv_events(&stack.kit.js).await;
        let ends: Vec<(String, String, String)> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(v1::conv_event::Kind::PushUnregistered(u)) => {
                    assert_eq!(u.reason, v1::PushUnregisterReason::Gone as i32);
                    Some((e.actor.clone(), u.device_id.clone(), u.token.clone()))
                }
                _ => None,
            })
            .collect();
        if ends.len() >= n {
            return ends;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ends:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_slow_receiver_is_tried_again_and_a_refusal_is_a_dead_letter_until_replayed() {
    let stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let mut config = stack.config(&receiver);
    config.request_timeout = Duration::from_millis(500);
    let notifier = stack.notifier(config).await;
    stack.create("g1", "amy", &["bo"]).await;
    stack.register("bo", "phone", "tb").await;
    // Slower than the timeout: given up each time, taken (late) by the
    // receiver, sent again under the same key.
    receiver.set(ReceiverMode::Slow(Duration::from_millis(800)));
    stack.send("g1", "amy", "slow").await;
    wait_for(&receiver, SETTLE * 2, "two tries", |r| r.len() >= 2).await;
    receiver.set(ReceiverMode::Ok);
    wait_for(&receiver, SETTLE, "taken", |_| {
        notifier
            .stats
            .sent
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let keys: std::collections::BTreeSet<_> = receiver
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 1, "one notification, tried again under its key");
    assert_eq!(receiver.taken_once().len(), 1);
    // 400: never worth trying again: a dead letter at once.
    receiver.set(ReceiverMode::Status(400));
    stack.send("g1", "amy", "refused").await;
    let operator = stack
        .kit
        .connect_as(im_streams::identities::Component::Operator)
        .await;
    let control = |replay| {
        let client = operator.clone();
        async move {
            let cmd = v1::NotifyControl { replay, limit: 10 };
            let answer = client
                .request(
                    im_notifier::control::control_subject("notifier"),
                    im_schema::encode(&cmd).into(),
                )
                .await
                .unwrap();
            im_schema::decode::<v1::NotifyControlResult>(&answer.payload).unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + SETTLE * 2;
    let listed = loop {
        let listed = control(false).await;
        if listed.total == 1 || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed.total, 1, "{listed:?}");
    let dead = &listed.dead_letters[0];
    assert_eq!(dead.last_error, "HTTP 400");
    assert_eq!(dead.attempts, 1);
    assert_eq!(dead.notification.as_ref().unwrap().text, "refused");
    // The receiver mended: a replay sends it.
    receiver.set(ReceiverMode::Ok);
    let replayed = control(true).await;
    assert_eq!((replayed.replayed, replayed.error.as_str()), (1, ""));
    wait_for(&receiver, SETTLE, "the replayed one", |_| {
        receiver.taken_once().len() == 2
    })
    .await;
    assert_eq!(control(false).await.total, 0);
    notifier.stop().await;
}

fn test_key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/tests/keys")
        .join(name)
}

#[tokio::test]
async fn https_is_verified_against_the_given_ca_and_an_unknown_certificate_is_refused() {
    let stack = Stack::start().await;
    let receiver =
        Receiver::start_tls(&test_key("tls-server.pem"), &test_key("tls-server-key.pem")).await;
    assert!(receiver.url("/").starts_with("https://"));
    // Without the CA: the certificate is not trusted, nothing is taken,
    // and the notification ends a dead letter naming why.
    let mut config = stack.config(&receiver);
    config.attempts_max = 2;
    let untrusting = stack.notifier(config).await;
    stack.create("g1", "amy", &["bo"]).await;
    stack.register("bo", "phone", "tb").await;
    stack.send("g1", "amy", "over tls").await;
    let deadline = tokio::time::Instant::now() + SETTLE * 3;
    while untrusting
        .stats
        .dead
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "never given up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(receiver.received().is_empty());
    untrusting.stop().await;
    // With it: taken (the same store: the dead letter replayed).
    let mut config = stack.config(&receiver);
    config.ca_file = Some(test_key("tls-ca.pem"));
    let trusting = stack.notifier(config).await;
    let operator = stack
        .kit
        .connect_as(im_streams::identities::Component::Operator)
        .await;
    let cmd = v1::NotifyControl {
        replay: true,
        limit: 10,
    };
    let answer = operator
        .request(
            im_notifier::control::control_subject("notifier"),
            im_schema::encode(&cmd).into(),
        )
        .await
        .unwrap();
    let result: v1::NotifyControlResult = im_schema::decode(&answer.payload).unwrap();
    assert_eq!(result.replayed, 1, "{result:?}");
    let why = &result.dead_letters[0].last_error;
    assert!(
        why.contains("certificate") || why.contains("connect"),
        "{why}"
    );
    wait_for(&receiver, SETTLE * 2, "taken over https", |r| r.len() == 1).await;
    assert_eq!(notification(&receiver.received()[0])["text"], "over tls");
    trusting.stop().await;
}

#[test]
fn a_plain_http_gateway_elsewhere_and_a_short_secret_are_refused() {
    let base = im_notifier::NotifierConfig {
        kek: Default::default(),
        instance: "notifier".into(),
        data_dir: "x".into(),
        url: "https://push.example/notify".parse().unwrap(),
        format: webhook::Format::Webhook,
        secret: SECRET.to_vec(),
        ca_file: None,
        preview: im_notifier::window::Preview::Sender,
        debounce: DEBOUNCE,
        late_max: Duration::from_secs(60),
        attempts_max: 3,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        signing_key_file: None,
    };
    assert!(base.validate().is_ok());
    for (url, ok) in [
        ("http://push.example/notify", false),
        ("http://127.0.0.1:9/notify", true),
        ("http://localhost:9/notify", true),
        ("ftp://push.example/", false),
    ] {
        let c = im_notifier::NotifierConfig {
            url: url.parse().unwrap(),
            ..base.clone()
        };
        assert_eq!(c.validate().is_ok(), ok, "{url}");
    }
    let weak = im_notifier::NotifierConfig {
        secret: b"short".to_vec(),
        ..base.clone()
    };
    assert!(weak.validate().is_err());
}

#[tokio::test]
async fn a_window_folded_after_a_restart_is_decided_whole_with_its_reads() {
    let stack = Stack::start().await;
    let receiver = Receiver::start().await;
    stack.create("g1", "amy", &["bo", "cy"]).await;
    stack.register("bo", "phone", "tb").await;
    stack.register("cy", "phone", "tc").await;
    // Started once, to have a store; stopped while a window happens.
    stack.notifier(stack.config(&receiver)).await.stop().await;
    stack.send("g1", "amy", "one").await;
    stack.send("g1", "amy", "two").await;
    let (_, last) = stack.send("g1", "amy", "three").await;
    stack.read("g1", "cy", last).await;
    tokio::time::sleep(DEBOUNCE * 2).await;
    // Back: the window is long due, but decided only once folded whole.
    let notifier = stack.notifier(stack.config(&receiver)).await;
    wait_for(&receiver, SETTLE * 2, "bo's notification", |r| {
        !r.is_empty()
    })
    .await;
    tokio::time::sleep(DEBOUNCE * 2).await;
    let got = receiver.received();
    assert_eq!(
        users_of(&got),
        ["bo"],
        "cy read it while the notifier was down"
    );
    assert_eq!(notification(&got[0])["messages"], 3, "one window, whole");
    notifier.stop().await;
}

#[tokio::test]
async fn a_member_added_within_a_window_is_told_only_of_what_follows() {
    let stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let notifier = stack.notifier(stack.config(&receiver)).await;
    stack.create("g1", "amy", &["bo"]).await;
    stack.register("bo", "phone", "tb").await;
    stack.register("di", "phone", "td").await;
    stack.send("g1", "amy", "before di").await;
    let add = im_streams::Action::AddMember {
        user: "di".into(),
        role: im_streams::Role::Member,
    };
    stack.run("g1", "amy", add).await;
    stack.send("g1", "amy", "after di").await;
    wait_for(&receiver, SETTLE * 2, "both", |r| r.len() == 2).await;
    for r in receiver.received() {
        let n = notification(&r);
        let expected = if n["userId"] == "di" { 1 } else { 2 };
        assert_eq!(n["messages"], expected, "{n}");
    }
    notifier.stop().await;
}

#[tokio::test]
async fn a_notification_read_while_it_waits_is_not_sent() {
    let stack = Stack::start().await;
    let mut receiver = Receiver::start().await;
    let notifier = stack.notifier(stack.config(&receiver)).await;
    stack.create("g1", "amy", &["bo"]).await;
    stack.register("bo", "phone", "tb").await;
    receiver.down();
    let (_, last) = stack.send("g1", "amy", "while it is down").await;
    // Decided (and tried) before bo reads.
    let retried = || {
        notifier
            .stats
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = tokio::time::Instant::now() + SETTLE * 2;
    while retried() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.read("g1", "bo", last).await;
    receiver.up().await;
    tokio::time::sleep(SETTLE).await;
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());
    let dropped = notifier
        .stats
        .read_meanwhile
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 1);
    notifier.stop().await;
}

#[tokio::test]
async fn a_forged_message_wakes_nobody() {
    use im_streams::signing::EventSigner;
    use std::sync::Arc;
    let mut stack = Stack::start().await;
    // Signatures in force: the writers sign, the forger cannot.
    let signer = Arc::new(EventSigner::from_seed([7; 32]));
    im_streams::signing::register(&stack.kit.js, &signer.public())
        .await
        .unwrap();
    let options = im_streams::AppenderOptions {
        signer: Some(signer.clone()),
        ..Default::default()
    };
    let client = stack
        .kit
        .connect_as(im_streams::identities::Component::Gateway)
        .await;
    stack.app = im_streams::Appender::with_options(client, stack.kit.topology, options)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let notifier = stack.notifier(stack.config(&receiver)).await;
    stack.create("g1", "amy", &["bo"]).await;
    stack.register("bo", "phone", "tb").await;
    // The forger holds the gateway's NATS password, not a writer's key:
    // an unsigned message chained exactly onto the log.
    let operator = stack.kit.client.clone();
    let subject = stack.kit.topology.conv_subject("g1").unwrap();
    let log = im_streams::log::read_conv_events(&operator, "IM_CONV", &subject, 1, 1_000)
        .await
        .unwrap();
    let head = log.last().unwrap();
    let ev = v1::ConvEvent {
        conversation_id: "g1".into(),
        conv_seq: head.event.conv_seq + 1,
        prev_hash: head.hash.to_vec(),
        actor: "amy".into(),
        at_ms: im_notifier::stats::now_ms(),
        client_msg_id: "forged".into(),
        schema_version: im_schema::SCHEMA_VERSION,
        kind: Some(v1::conv_event::Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Text("forged".into())),
            meta: Default::default(),
        })),
    };
    let forger = async_nats::jetstream::new(
        stack
            .kit
            .connect_as(im_streams::identities::Component::Gateway)
            .await,
    );
    let headers = im_streams::codec::conv_headers(&ev, "forged", "forger");
    forger
        .publish_with_headers(subject, headers, im_schema::encode(&ev).into())
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::sleep(DEBOUNCE * 3).await;
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());
    // A real message afterwards is told, alone.
    stack.send("g1", "amy", "real").await;
    wait_for(&receiver, SETTLE * 2, "the real one", |r| !r.is_empty()).await;
    tokio::time::sleep(DEBOUNCE * 2).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let n = notification(&got[0]);
    assert_eq!(
        (n["messages"].as_u64(), n["text"].as_str()),
        (Some(1), Some("real")),
        "{n}"
    );
    notifier.stop().await;
}

/// Where content is encrypted the notification still carries the text and
/// the sender's name (opened when sent), while the notifier's store holds
/// neither; one waiting when its sender is erased goes without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_content_is_opened_when_sent_and_an_erased_sender_shows_nothing() {
    let stack = Stack::start_encrypted().await;
    let receiver = Receiver::start().await;
    let notifier = stack.notifier(stack.config(&receiver)).await;
    stack.create("g1", "amy", &["bo"]).await;
    stack.register("bo", "phone", "token-bo").await;
    let name = im_streams::Action::UpdateProfile {
        display_name: "Amy zqxnameword".into(),
        avatar: None,
        status: String::new(),
    };
    stack.on_own_log("amy", name).await;
    stack.send("g1", "amy", "the zqxsecretword inside").await;
    wait_for(&receiver, SETTLE * 2, "the notification", |r| r.len() == 1).await;
    let n = notification(&receiver.received()[0]);
    assert_eq!(n["text"], "the zqxsecretword inside");
    assert_eq!(n["senderName"], "Amy zqxnameword");
    assert!(
        n.get("textSealed").is_none() && n.get("senderNameSealed").is_none(),
        "{n}"
    );
    let left = im_testkit::files_containing(&[stack.dir.path().to_path_buf()], b"zqxsecretword");
    assert!(
        left.is_empty(),
        "plaintext in the notifier's store: {left:?}"
    );

    // Erased while its notification waits (the receiver refuses for now).
    receiver.set(ReceiverMode::Status(503));
    stack.send("g1", "amy", "zqxlaterword").await;
    wait_for(&receiver, SETTLE * 2, "a first attempt", |r| r.len() >= 2).await;
    let js = async_nats::jetstream::new(
        stack
            .kit
            .connect_as(im_streams::identities::Component::Operator)
            .await,
    );
    im_streams::content::destroy::erase(&js, &stack.app, "amy", "test")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.set(ReceiverMode::Ok);
    wait_for(&receiver, SETTLE * 4, "the retry that lands", |r| {
        r.iter().any(|x| {
            x.status == 200
                && notification(x)["lastConvSeq"] == n["lastConvSeq"].as_u64().unwrap() + 1
        })
    })
    .await;
    let landed = receiver
        .received()
        .into_iter()
        .rfind(|x| x.status == 200)
        .unwrap();
    let later = notification(&landed);
    assert!(later.get("text").is_none(), "erased text not sent: {later}");
    assert!(
        later.get("senderName").is_none(),
        "erased name not sent: {later}"
    );
    notifier.stop().await;
}
