//! What users see is what the rules allow (I30): on a stack running the
//! shipped NATS authorization with signing writers, a holder of only the
//! gateway's NATS password publishes events chained exactly onto the
//! conversation's head — unsigned, signed by a key nobody registered,
//! carrying a signature copied from a real event, a non-member's message
//! unsigned and signed with the real writer key, and a member's removal of
//! the owner signed with the real key. Each is dead-lettered by every
//! projection with its reason, shown in no history, delivered to no one;
//! writers (a warm one and a cold one) step over them, and the next honest
//! events chain onto the last valid one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{query_at, status, wait_caught_up};
use futures::StreamExt;
use im_schema::v1::{self, conv_event::Kind, query_request::Query, query_response::Result as R};
use im_streams::codec::StoredEvent;
use im_streams::identities::Component;
use im_streams::signing::{EventSigner, HDR_SIGNATURE};
use im_streams::{
    Action, AppendOutcome, Appender, AppenderOptions, Command, MessageBody, Role, Topology,
};

async fn run(app: &Appender, conv: &str, actor: &str, id: &str, action: Action) -> (u64, u64) {
    let cmd = Command {
        actor: actor.into(),
        client_msg_id: id.into(),
        action,
    };
    match app.execute(conv, &cmd, "").await.unwrap() {
        AppendOutcome::Stored {
            stream_seq,
            conv_seq,
            ..
        } => (stream_seq, conv_seq),
        other => panic!("{cmd:?}: {other:?}"),
    }
}

fn text(t: &str) -> Action {
    Action::Send {
        peer: None,
        body: MessageBody::Text(t.into()),
        meta: Default::default(),
    }
}

/// The conversation's events as stored.
async fn log_of(client: &async_nats::Client, topology: Topology, conv: &str) -> Vec<StoredEvent> {
    let subject = topology.conv_subject(conv).unwrap();
    im_streams::log::read_conv_events(client, "IM_CONV", &subject, 1, 1_000)
        .await
        .unwrap()
}

/// A signing writer, connected as the gateway.
async fn writer(kit: &im_testkit::Stack, signer: &Arc<EventSigner>) -> Arc<Appender> {
    let options = AppenderOptions {
        signer: Some(signer.clone()),
        ..Default::default()
    };
    let client = kit.connect_as(Component::Gateway).await;
    Appender::with_options(client, kit.topology, options)
        .await
        .unwrap()
}

/// A forgery: the code it must be refused with, the event and its bytes,
/// and how it is signed.
type Forgery<'a> = (
    &'static str,
    (v1::ConvEvent, Vec<u8>),
    Box<dyn Fn(&[u8]) -> Option<String> + 'a>,
);

fn sent(t: &str) -> Kind {
    Kind::MessageSent(v1::MessageSent {
        sealed: None,
        body: Some(v1::message_sent::Body::Text(t.into())),
        meta: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_events_are_dead_lettered_everywhere_never_shown_and_writers_chain_past_them() {
    let mut kit = im_testkit::Stack::start_secured().await;
    let signer = Arc::new(EventSigner::from_seed([5; 32]));
    im_streams::signing::register(&kit.js, &signer.public())
        .await
        .unwrap();
    let _p = kit.main_projector().await;
    let app = writer(&kit, &signer).await;
    let members = vec![("bob".to_string(), Role::Member)];
    let create = Action::CreateGroup {
        title: "g".into(),
        members,
    };
    run(&app, "g1", "owner", "c1", create).await;
    let (real, _) = run(&app, "g1", "bob", "c2", text("real")).await;
    let operator = kit.client.clone();
    wait_caught_up(&operator, "main", real, 0).await;
    let gateway = kit.connect_as(Component::Gateway).await;
    let mut bob = gateway.subscribe("im.deliver.bob.e").await.unwrap();
    gateway.flush().await.unwrap();

    // The forger: the gateway's NATS identity, nothing else.
    let forger = kit.connect_as(Component::Gateway).await;
    let js = async_nats::jetstream::new(forger);
    let log = log_of(&operator, kit.topology, "g1").await;
    let head = log.last().unwrap();
    let stranger = EventSigner::from_seed([6; 32]);
    let next = |actor: &str, id: &str, kind: Kind| {
        let ev = v1::ConvEvent {
            conversation_id: "g1".into(),
            conv_seq: head.event.conv_seq + 1,
            prev_hash: head.hash.to_vec(),
            actor: actor.into(),
            at_ms: head.event.at_ms + 1,
            client_msg_id: id.into(),
            schema_version: im_schema::SCHEMA_VERSION,
            kind: Some(kind),
        };
        let payload = im_schema::encode(&ev);
        (ev, payload)
    };
    let removal = Kind::MemberRemoved(v1::MemberRemoved {
        user_id: "owner".into(),
    });
    let copied = head.signature.clone().unwrap();
    let forgeries: Vec<Forgery> = vec![
        (
            "unsigned",
            next("bob", "f1", sent("unsigned")),
            Box::new(|_| None),
        ),
        (
            "unknown_key",
            next("bob", "f2", sent("stranger's key")),
            Box::new(|p| Some(stranger.sign(p))),
        ),
        (
            "bad_signature",
            next("bob", "f3", sent("copied signature")),
            Box::new(move |_| Some(copied.clone())),
        ),
        (
            "unsigned",
            next("mallory", "f4", sent("non-member, unsigned")),
            Box::new(|_| None),
        ),
        (
            "not_member",
            next("mallory", "f5", sent("non-member, real key")),
            Box::new(|p| Some(signer.sign(p))),
        ),
        (
            "forbidden",
            next("bob", "f6", removal),
            Box::new(|p| Some(signer.sign(p))),
        ),
    ];
    let subject = kit.topology.conv_subject("g1").unwrap();
    let mut forged = Vec::new();
    for (code, (ev, payload), sign) in &forgeries {
        let mut headers = im_streams::codec::conv_headers(ev, "forged", "forger");
        if let Some(sig) = sign(payload) {
            headers.insert(HDR_SIGNATURE, sig.as_str());
        }
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        forged.push((ack.sequence, *code));
    }

    // The warm writer steps over them; so does one that starts cold.
    let (_, conv_seq) = run(&app, "g1", "bob", "c3", text("honest")).await;
    assert_eq!(
        conv_seq,
        head.event.conv_seq + 1,
        "chained onto the last valid event"
    );
    assert_eq!(app.stats().stepped_over, forgeries.len() as u64);
    let cold = writer(&kit, &signer).await;
    let (last, conv_seq) = run(&cold, "g1", "owner", "c4", text("cold")).await;
    assert_eq!(conv_seq, head.event.conv_seq + 2);
    wait_caught_up(&operator, "main", last, 0).await;

    // No history has them.
    let page = match query_at(
        &operator,
        im_projectors::query::partition_subject(kit.topology.partition_of("g1")),
        (last, 0),
        Query::History(v1::HistoryQuery {
            conversation_id: "g1".into(),
            limit: 50,
            ..Default::default()
        }),
    )
    .await
    {
        R::History(p) => p,
        other => panic!("{other:?}"),
    };
    let actors: Vec<(u64, String)> = page
        .entries
        .iter()
        .map(|e| {
            let ev = e.event.as_ref().unwrap();
            (ev.conv_seq, ev.client_msg_id.clone())
        })
        .collect();
    assert_eq!(
        actors,
        vec![
            (1, "c1".into()),
            (2, "c2".into()),
            (3, "c3".into()),
            (4, "c4".into())
        ]
    );
    // Every projection dead-lettered each, with its reason.
    let st = status(&operator, "main").await;
    for name in im_projectors::projections::NAMES {
        assert_eq!(st[name].dead_letters, forged.len() as u64, "{name}");
    }
    let letters = match query_at(
        &operator,
        im_projectors::query::instance_subject("main"),
        (0, 0),
        Query::DeadLetters(v1::DeadLettersQuery::default()),
    )
    .await
    {
        R::DeadLetters(d) => d,
        other => panic!("{other:?}"),
    };
    for p in &letters.projections {
        let got: Vec<(u64, &str)> = p
            .letters
            .iter()
            .map(|l| (l.stream_seq, l.code.as_str()))
            .collect();
        assert_eq!(got, forged, "{}", p.name);
    }
    // bob was delivered the honest events only.
    let mut delivered = Vec::new();
    while delivered.last() != Some(&4) {
        let msg = tokio::time::timeout(Duration::from_secs(10), bob.next())
            .await
            .expect("the honest events are delivered")
            .unwrap();
        let env: v1::Envelope = im_schema::decode(&msg.payload).unwrap();
        let Some(v1::envelope::Payload::Deliver(d)) = env.payload else {
            panic!("{env:?}")
        };
        let ev = d.event.unwrap();
        assert!(
            !ev.client_msg_id.starts_with('f'),
            "a forgery delivered: {ev:?}"
        );
        delivered.push(d.conv_seq);
    }
    assert_eq!(delivered, vec![3, 4]);
    let more = tokio::time::timeout(Duration::from_millis(300), bob.next()).await;
    assert!(more.is_err(), "nothing else is delivered: {more:?}");
    // A fresh instance folding the whole log agrees (the verdicts are the
    // log's, not the instance's).
    let config = kit.projector_config("fresh");
    let _fresh = kit.projector(config).await;
    wait_caught_up(&operator, "fresh", last, 0).await;
    let fresh = status(&operator, "fresh").await;
    for name in im_projectors::projections::NAMES {
        assert_eq!(fresh[name].digest, st[name].digest, "{name}");
        assert_eq!(fresh[name].dead_letters, forged.len() as u64, "{name}");
    }
}

/// While signatures are in force, a writer whose own key is not registered
/// (a mistyped key file makes a new one) appends nothing: every projector
/// would refuse what it told its clients was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_without_a_registered_key_appends_nothing() {
    let kit = im_testkit::Stack::start_secured().await;
    let registered = Arc::new(EventSigner::from_seed([5; 32]));
    im_streams::signing::register(&kit.js, &registered.public())
        .await
        .unwrap();
    let stray = Arc::new(EventSigner::from_seed([9; 32]));
    let app = writer(&kit, &stray).await;
    let members = vec![("bob".to_string(), Role::Member)];
    let cmd = Command {
        actor: "owner".into(),
        client_msg_id: "c1".into(),
        action: Action::CreateGroup {
            title: "g".into(),
            members,
        },
    };
    let err = app.execute("g9", &cmd, "").await.unwrap_err();
    assert!(err.to_string().contains("not registered"), "{err}");
    assert_eq!(im_testkit::stream_messages(&kit.js, "IM_CONV").await, 0);
    // The registered one does.
    let ok = writer(&kit, &registered).await;
    assert!(matches!(
        ok.execute("g9", &cmd, "").await.unwrap(),
        AppendOutcome::Stored { .. }
    ));
}
