//! A cold writer costs the tail, not the history: a writer that takes up a
//! long conversation (after a restart, or an eviction) starts from the
//! `members` projection's snapshot and reads only the events after it;
//! retries of any age are still answered with their originals; and with no
//! projector it reads the whole subject, as before.

use std::time::{Duration, Instant};

use im_streams::{Action, AppendOutcome, Appender, Command, MessageBody, Rejection, Role};

/// Over `COLD_FOLD_EVENTS_MAX`: long enough to be taken up from a snapshot.
const EVENTS: u64 = 2_000;

fn cmd(actor: &str, id: &str, action: Action) -> Command {
    Command {
        actor: actor.into(),
        client_msg_id: id.into(),
        action,
    }
}

fn text(t: &str) -> Action {
    Action::Send {
        peer: None,
        body: MessageBody::Text(t.into()),
        meta: Default::default(),
    }
}

async fn stored(app: &Appender, c: &Command) -> (u64, u64) {
    match app.execute("long", c, "").await.unwrap() {
        AppendOutcome::Stored {
            stream_seq,
            conv_seq,
            ..
        } => (stream_seq, conv_seq),
        other => panic!("{c:?}: {other:?}"),
    }
}

/// Waits until the projector's snapshot of `conv` reaches `position`.
async fn snapshot_at(client: &async_nats::Client, topology: im_streams::Topology, position: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = im_streams::snapshot::fetch(client, topology, "long").await;
        if let Ok(Some(s)) = &state {
            if s.version >= position {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot at {position}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_writer_reads_the_snapshot_and_the_tail_not_the_history() {
    let mut kit = im_testkit::Stack::start().await;
    let projector = kit.main_projector().await;
    let warm = kit.appender().await;
    let members = vec![
        ("ann".to_string(), Role::Admin),
        ("bo".to_string(), Role::Member),
    ];
    let create = Action::CreateGroup {
        title: "long".into(),
        members,
    };
    stored(&warm, &cmd("own", "c0", create)).await;
    let mut last = (0, 0);
    for i in 1..EVENTS {
        let who = if i % 2 == 0 { "ann" } else { "bo" };
        last = stored(&warm, &cmd(who, &format!("c{i}"), text("m"))).await;
    }
    snapshot_at(&kit.client, kit.topology, last.0).await;

    let cold = kit.appender().await;
    let (seq, conv_seq) = stored(&cold, &cmd("ann", "first", text("after a restart"))).await;
    assert_eq!(conv_seq, EVENTS + 1);
    let stats = cold.stats();
    assert_eq!(stats.snapshots, 1);
    assert!(stats.events_read <= 1, "read {} events", stats.events_read);
    // Exactly once at any delay: the oldest command and the newest.
    let retry = cold
        .execute("long", &cmd("own", "c0", text("x")), "")
        .await
        .unwrap();
    assert!(
        matches!(retry, AppendOutcome::Duplicate { conv_seq: 1, .. }),
        "{retry:?}"
    );
    let again = cold
        .execute("long", &cmd("ann", "first", text("after a restart")), "")
        .await
        .unwrap();
    assert!(
        matches!(again, AppendOutcome::Duplicate { stream_seq, .. } if stream_seq == seq),
        "{again:?}"
    );
    // The rules from the snapshot: a recent message recalled by its
    // sender, the muted and the non-member refused.
    let recall = Action::Recall { conv_seq };
    stored(&cold, &cmd("ann", "recall", recall)).await;
    let mute = Action::Mute {
        user: "bo".into(),
        until_ms: i64::MAX,
    };
    stored(&cold, &cmd("own", "mute", mute)).await;
    let muted = cold
        .execute("long", &cmd("bo", "m1", text("x")), "")
        .await
        .unwrap();
    assert!(
        matches!(muted, AppendOutcome::Rejected(Rejection::Muted { .. })),
        "{muted:?}"
    );
    let stranger = cold
        .execute("long", &cmd("eve", "e1", text("x")), "")
        .await
        .unwrap();
    assert_eq!(stranger, AppendOutcome::Rejected(Rejection::NotMember));
    assert!(cold.stats().events_read <= 1);

    // No projector: the whole subject is read, and all still holds.
    drop(projector);
    let alone = kit.appender().await;
    let (_, conv_seq) = stored(&alone, &cmd("ann", "alone", text("no projector"))).await;
    assert_eq!(conv_seq, EVENTS + 4);
    assert_eq!(alone.stats().snapshots, 0);
    assert!(alone.stats().events_read >= EVENTS);
}
