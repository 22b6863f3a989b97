//! Content encryption against a real server: what the log stores, what
//! readers open, erasure and retention by destroying keys, and the KEK
//! checks at start (docs/privacy.md).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use im_schema::v1::{self, conv_event::Kind};
use im_streams::content::{self, destroy, ContentKeys, Kek, Policy};
use im_streams::definitions::StreamSettings;
use im_streams::{AppendOutcome, Appender, AppenderOptions, Role, Topology};
use im_testkit::NatsServer;

fn kek(byte: u8) -> Kek {
    Kek::from_bytes([byte; 32])
}

async fn keys(url: &str, byte: u8, policy: Policy) -> Arc<ContentKeys> {
    ContentKeys::open(&js_for(url).await, Some(kek(byte)), policy)
        .await
        .expect("open")
        .expect("encrypting")
}

async fn encrypting_appender(
    url: &str,
    topology: Topology,
    keys: Arc<ContentKeys>,
) -> Arc<Appender> {
    let options = AppenderOptions {
        content: Some(keys),
        ..Default::default()
    };
    Appender::with_options(async_nats::connect(url).await.unwrap(), topology, options)
        .await
        .unwrap()
}

async fn send(app: &Appender, conv: &str, actor: &str, id: &str, body: &str) {
    let out = app
        .execute(conv, &cmd(actor, id, text(body)), "")
        .await
        .unwrap();
    assert!(matches!(out, AppendOutcome::Stored { .. }), "{out:?}");
}

/// The stored message events of a conversation, opened by `keys`.
async fn opened(
    js: &async_nats::jetstream::Context,
    topology: Topology,
    keys: &ContentKeys,
    conv: &str,
) -> Vec<(String, Result<String, v1::SealedState>)> {
    let mut out = Vec::new();
    for stored in history(js, topology, conv).await {
        let mut ev = stored.event;
        if !matches!(ev.kind, Some(Kind::MessageSent(_))) {
            continue;
        }
        content::open_event(keys, &mut ev).await.unwrap();
        let Some(Kind::MessageSent(m)) = ev.kind else {
            unreachable!()
        };
        let shown = match (m.body, m.sealed) {
            (Some(v1::message_sent::Body::Text(t)), None) => Ok(t),
            (_, Some(s)) => Err(s.state()),
            other => panic!("{other:?}"),
        };
        out.push((ev.actor, shown));
    }
    out
}

#[tokio::test]
async fn the_log_holds_ciphertext_that_readers_open_and_the_rules_accept() {
    let server = NatsServer::start().await.unwrap();
    let (js, topo) = setup(&server.url(), &StreamSettings::default()).await;
    let keys = keys(&server.url(), 1, Policy::default()).await;
    let app = encrypting_appender(&server.url(), topo, keys.clone()).await;
    create_group(&app, "g", &[("ann", Role::Member), ("bob", Role::Member)]).await;
    send(&app, "g", "ann", "m1", "marker-ann-7f3a").await;
    send(&app, "g", "bob", "m2", "hello from bob").await;

    let stored = history(&js, topo, "g").await;
    for s in &stored {
        assert!(
            !s.payload.windows(6).any(|w| w == b"marker"),
            "clear text in the log"
        );
    }
    let sealed = stored
        .iter()
        .filter_map(|s| s.event.kind.as_ref().and_then(im_rules::content::sealed))
        .count();
    assert_eq!(sealed, 2);
    // A second writer, cold, folds the sealed events through the rules.
    let other = encrypting_appender(&server.url(), topo, keys_again(&server.url()).await).await;
    let out = other
        .execute("g", &cmd("ann", "m3", text("third")), "")
        .await
        .unwrap();
    assert!(matches!(out, AppendOutcome::Stored { .. }), "{out:?}");
    // A writer without the keys appends nothing with content: it would be
    // in clear; it still appends what has none.
    let keyless = appender(&server.url(), topo).await;
    let refused = keyless
        .execute("g", &cmd("ann", "m4", text("clear?")), "")
        .await;
    let err = refused.expect_err("refused").to_string();
    assert!(err.contains("no key-encryption key"), "{err}");
    let leave = keyless
        .execute("g", &cmd("bob", "l1", im_streams::Action::Leave), "")
        .await
        .unwrap();
    assert!(matches!(leave, AppendOutcome::Stored { .. }), "{leave:?}");

    let shown = opened(&js, topo, &keys, "g").await;
    assert_eq!(shown[0], ("ann".into(), Ok("marker-ann-7f3a".into())));
    assert_eq!(shown[1], ("bob".into(), Ok("hello from bob".into())));
    // Another reader with the KEK opens it too; the key was made once.
    let reader = keys_again(&server.url()).await;
    assert_eq!(
        opened(&js, topo, &reader, "g").await[0].1,
        Ok("marker-ann-7f3a".into())
    );
}

async fn keys_again(url: &str) -> Arc<ContentKeys> {
    keys(url, 1, Policy::default()).await
}

#[tokio::test]
async fn erasing_a_user_destroys_their_keys_for_every_reader_and_no_one_elses() {
    let server = NatsServer::start().await.unwrap();
    let (js, topo) = setup(&server.url(), &StreamSettings::default()).await;
    let keys = keys(&server.url(), 1, Policy::default()).await;
    let app = encrypting_appender(&server.url(), topo, keys.clone()).await;
    create_group(&app, "g", &[("ann", Role::Member), ("bob", Role::Member)]).await;
    create_group(&app, "h", &[("ann", Role::Member)]).await;
    send(&app, "g", "ann", "m1", "ann in g").await;
    send(&app, "g", "bob", "m2", "bob in g").await;
    send(&app, "h", "ann", "m3", "ann in h").await;
    // Cached by both the writer and a reader before the erasure.
    let reader = keys_again(&server.url()).await;
    assert_eq!(
        opened(&js, topo, &reader, "g").await[0].1,
        Ok("ann in g".into())
    );

    assert_eq!(destroy::erase_user(&js, "ann").await.unwrap(), 2);
    // The notice reaches the caches.
    let mut shown = Vec::new();
    for _ in 0..50 {
        shown = opened(&js, topo, &reader, "g").await;
        if shown[0].1.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown[0], ("ann".into(), Err(v1::SealedState::Erased)));
    assert_eq!(shown[1], ("bob".into(), Ok("bob in g".into())));
    assert_eq!(
        opened(&js, topo, &keys, "h").await[0].1,
        Err(v1::SealedState::Erased)
    );
    // Nothing of the keys is left in the bucket's stream but the notice,
    // the check, the policy and the epoch mark.
    let kv_stream = js.get_stream("KV_im_content_keys").await.unwrap();
    let mut subjects = Vec::new();
    let mut info = kv_stream
        .info_with_subjects("$KV.im_content_keys.k.>")
        .await
        .unwrap();
    while let Some((s, _)) = futures::TryStreamExt::try_next(&mut info).await.unwrap() {
        subjects.push(s);
    }
    assert_eq!(subjects.len(), 1, "only bob's key: {subjects:?}");

    // What ann writes after the erasure is hers again, readable.
    send(&app, "g", "ann", "m4", "after").await;
    assert_eq!(
        opened(&js, topo, &reader, "g").await[2],
        ("ann".into(), Ok("after".into()))
    );
    assert_eq!(
        opened(&js, topo, &reader, "g").await[0].1,
        Err(v1::SealedState::Erased)
    );
}

#[tokio::test]
async fn content_past_retention_is_erased_and_new_content_stays_readable() {
    let server = NatsServer::start().await.unwrap();
    let (js, topo) = setup(&server.url(), &StreamSettings::default()).await;
    let policy = Policy {
        epoch_ms: 1_000,
        retention_ms: 3_000,
    };
    let keys = keys(&server.url(), 1, policy).await;
    let app = encrypting_appender(&server.url(), topo, keys.clone()).await;
    create_group(&app, "g", &[("ann", Role::Member)]).await;
    send(&app, "g", "ann", "old", "old words").await;
    assert_eq!(
        opened(&js, topo, &keys, "g").await[0].1,
        Ok("old words".into())
    );
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    send(&app, "g", "ann", "new", "new words").await;
    // Readers stop opening it by the policy alone; the run destroys it.
    let reader = keys_again(&server.url()).await;
    let shown = opened(&js, topo, &reader, "g").await;
    assert_eq!(shown[0].1, Err(v1::SealedState::Erased));
    assert_eq!(shown[1].1, Ok("new words".into()));
    let expired = destroy::expire(&js, content_now()).await.unwrap();
    assert!(expired.epochs >= 1 && expired.keys >= 1, "{expired:?}");
    assert_eq!(
        destroy::expire(&js, content_now()).await.unwrap().keys,
        0,
        "idempotent"
    );
    // Keys exist: the epoch length is fixed (old ciphertexts name their
    // epoch by number).
    let longer = Policy {
        epoch_ms: 60_000,
        ..policy
    };
    let err = destroy::set_policy(&js, longer)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot change"), "{err}");
    let unlimited = Policy {
        retention_ms: 0,
        ..policy
    };
    destroy::set_policy(&js, unlimited).await.unwrap();
    let fresh = ContentKeys::open(&js, Some(kek(1)), unlimited)
        .await
        .unwrap()
        .unwrap();
    let shown = opened(&js, topo, &fresh, "g").await;
    assert_eq!(
        shown[0].1,
        Err(v1::SealedState::Erased),
        "the key itself is gone"
    );
    assert_eq!(shown[1].1, Ok("new words".into()));
}

fn content_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_wrong_or_missing_kek_is_refused_and_none_with_no_bucket_keeps_content_clear() {
    let server = NatsServer::start().await.unwrap();
    let (js, _) = setup(&server.url(), &StreamSettings::default()).await;
    let none = ContentKeys::open(&js, None, Policy::default())
        .await
        .unwrap();
    assert!(none.is_none());
    keys(&server.url(), 1, Policy::default()).await;
    let wrong = ContentKeys::open(&js, Some(kek(2)), Policy::default()).await;
    let err = wrong.err().expect("refused").to_string();
    assert!(err.contains("wrong key-encryption key"), "{err}");
    let missing = ContentKeys::open(&js, None, Policy::default()).await;
    let err = missing.err().expect("refused").to_string();
    assert!(err.contains("encrypts message content"), "{err}");
    assert!(!err.contains(&hex_of(1)), "no key in errors");
}

fn hex_of(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

#[tokio::test]
async fn a_corrupted_key_or_ciphertext_is_reported_and_nothing_else_breaks() {
    let server = NatsServer::start().await.unwrap();
    let (js, topo) = setup(&server.url(), &StreamSettings::default()).await;
    let keys = keys(&server.url(), 1, Policy::default()).await;
    let app = encrypting_appender(&server.url(), topo, keys.clone()).await;
    create_group(&app, "g", &[("ann", Role::Member), ("bob", Role::Member)]).await;
    // bob's key for today is garbage before he first writes.
    let kv = js
        .get_key_value(content::CONTENT_KEYS_BUCKET)
        .await
        .unwrap();
    let epoch = Policy::default().epoch_of(content_now());
    let name = content::key_name(epoch, "bob", "g");
    let bad_rev = kv.create(&name, vec![0u8; 72].into()).await.unwrap();
    send(&app, "g", "ann", "m1", "fine").await;
    // The writer replaces a key it cannot open: bob's message is readable.
    send(&app, "g", "bob", "m2", "bob's").await;
    let shown = opened(&js, topo, &keys, "g").await;
    assert_eq!(shown[1].1, Ok("bob's".into()));
    // Content under the garbage revision, and a flipped ciphertext byte,
    // are unreadable; the rest opens.
    let mut stored = history(&js, topo, "g").await;
    let mut under_bad = stored[1].event.clone();
    if let Some(Kind::MessageSent(m)) = under_bad.kind.as_mut() {
        let s = m.sealed.as_mut().unwrap();
        s.key_rev = bad_rev;
    }
    let mut flipped = stored.remove(1).event;
    if let Some(Kind::MessageSent(m)) = flipped.kind.as_mut() {
        m.sealed.as_mut().unwrap().ciphertext[0] ^= 1;
    }
    let state = |ev: &v1::ConvEvent| match &ev.kind {
        Some(Kind::MessageSent(m)) => m.sealed.as_ref().map(|s| s.state()),
        _ => None,
    };
    // A fresh reader: the garbage revision was never cached as open.
    let reader = keys_again(&server.url()).await;
    content::open_event(&reader, &mut flipped).await.unwrap();
    assert_eq!(state(&flipped), Some(v1::SealedState::Unreadable));
    content::open_event(&reader, &mut under_bad).await.unwrap();
    // The garbage revision was replaced: erased, not shown.
    assert_eq!(state(&under_bad), Some(v1::SealedState::Erased));
    assert_eq!(
        opened(&js, topo, &reader, "g").await[0].1,
        Ok("fine".into())
    );
}
