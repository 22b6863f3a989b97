//! Each component's NATS identity against a real server configured from
//! `im_streams::identities`: every boundary below is refused by the server
//! (which says so), and the same action by the identity meant to do it
//! goes through.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use im_streams::connect::NatsArgs;
use im_streams::definitions::CONV_STREAM;
use im_streams::identities::Component;
use im_testkit::Stack;

/// A connection as `component` that records the errors the server sends it.
struct Watched {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Watched {
    async fn connect(stack: &Stack, component: Component) -> Watched {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let client = stack
            .auth(component)
            .options()
            .await
            .unwrap()
            .event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        seen.lock().unwrap().push(e.to_string());
                    }
                }
            })
            .connect(stack.url())
            .await
            .unwrap();
        Watched { client, errors }
    }

    /// Waits for the server to refuse `what` on `subject`.
    async fn refused(&self, what: &str, subject: &str) {
        let wanted = format!("permissions violation for {what} to \"{subject}\"");
        for _ in 0..100 {
            let errors = self.errors.lock().unwrap().clone();
            if errors
                .iter()
                .any(|e| e.to_lowercase().contains(&wanted.to_lowercase()))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {wanted:?}; the server said {:?}",
            self.errors.lock().unwrap()
        );
    }
}

async fn nothing_arrives(sub: &mut async_nats::Subscriber) {
    let got = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(got.is_err(), "a message arrived: {got:?}");
}

#[tokio::test]
async fn a_connection_without_an_identity_is_refused() {
    let stack = Stack::start_secured().await;
    let err = NatsArgs::new(stack.url())
        .connect("anonymous")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("authorization"),
        "{err:?}"
    );
    // The message says what to do: which identity, and where `up` keeps them.
    let told = err.to_string();
    assert!(
        told.contains("no identity")
            && told.contains("IM_NATS_USER")
            && told.contains("identities/"),
        "{told}"
    );
    let mut wrong = stack.auth(Component::Gateway);
    wrong.password = Some("not-the-password".into());
    let err = NatsArgs::new(stack.url())
        .with_auth(wrong)
        .connect("wrong")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("user \"im-gateway\""), "{err}");
}

#[tokio::test]
async fn only_the_projector_publishes_deliveries_and_only_the_operator_controls_it() {
    let stack = Stack::start_secured().await;
    let listener = stack.connect_as(Component::Gateway).await;
    let mut deliveries = listener.subscribe("im.deliver.bob.e").await.unwrap();
    listener.flush().await.unwrap();

    let gateway = Watched::connect(&stack, Component::Gateway).await;
    gateway
        .client
        .publish("im.deliver.bob.e", "forged".into())
        .await
        .unwrap();
    gateway.client.flush().await.unwrap();
    gateway.refused("publish", "im.deliver.bob.e").await;
    nothing_arrives(&mut deliveries).await;
    gateway
        .client
        .publish("im.projector.main.q", "rebuild".into())
        .await
        .unwrap();
    gateway.refused("publish", "im.projector.main.q").await;

    let projector = stack.connect_as(Component::Projector).await;
    projector
        .publish("im.deliver.bob.e", "real".into())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), deliveries.next())
        .await
        .expect("the projector's delivery arrives")
        .unwrap();
    assert_eq!(&got.payload[..], b"real");
}

#[tokio::test]
async fn the_projector_cannot_append_to_the_log_or_the_receipts() {
    let stack = Stack::start_secured().await;
    let projector = Watched::connect(&stack, Component::Projector).await;
    let conv = stack.topology.conv_subject("g1").unwrap();
    let rcpt = stack.topology.rcpt_subject("g1").unwrap();
    for subject in [&conv, &rcpt] {
        projector
            .client
            .publish(subject.clone(), "forged".into())
            .await
            .unwrap();
        projector.client.flush().await.unwrap();
        projector.refused("publish", subject).await;
    }
    assert_eq!(im_testkit::stream_messages(&stack.js, CONV_STREAM).await, 0);
    assert_eq!(im_testkit::stream_messages(&stack.js, "IM_RCPT").await, 0);
    // The writer's identity appends.
    let gateway = jetstream::new(stack.connect_as(Component::Gateway).await);
    gateway
        .publish(conv, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(im_testkit::stream_messages(&stack.js, CONV_STREAM).await, 1);
}

#[tokio::test]
async fn the_auditor_reads_and_changes_nothing() {
    let stack = Stack::start_secured().await;
    let conv = stack.topology.conv_subject("g1").unwrap();
    let writer = jetstream::new(stack.connect_as(Component::Gateway).await);
    writer
        .publish(conv.clone(), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let auditor = Watched::connect(&stack, Component::Auditor).await;
    let js = jetstream::new(auditor.client.clone());
    // Reads: the stream's info and an ordered (ephemeral) consumer.
    let mut stream = js.get_stream(CONV_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let ordered = stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .unwrap();
    let first = ordered
        .messages()
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first.payload[..], b"x");

    auditor
        .client
        .publish(conv.clone(), "forged".into())
        .await
        .unwrap();
    auditor.refused("publish", &conv).await;
    assert!(js.delete_stream(CONV_STREAM).await.is_err());
    auditor
        .refused("publish", "$JS.API.STREAM.DELETE.IM_CONV")
        .await;
    assert!(stream.purge().await.is_err());
    auditor
        .refused("publish", "$JS.API.STREAM.PURGE.IM_CONV")
        .await;
    // The legacy durable API is refused.
    let legacy = "$JS.API.CONSUMER.DURABLE.CREATE.IM_CONV.mine";
    auditor.client.publish(legacy, "{}".into()).await.unwrap();
    auditor.refused("publish", legacy).await;
    assert_eq!(im_testkit::stream_messages(&stack.js, CONV_STREAM).await, 1);
}

/// The auditor reads with a standard client's pull consumer: nats-py's
/// `pull_subscribe` creates it by name with the filter in the subject
/// (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`), then fetches;
/// async-nats does the same for a named consumer.
#[tokio::test]
async fn the_auditor_reads_with_a_standard_clients_pull_consumer() {
    let stack = Stack::start_secured().await;
    let conv = stack.topology.conv_subject("g1").unwrap();
    let writer = jetstream::new(stack.connect_as(Component::Gateway).await);
    for text in ["a", "b"] {
        writer
            .publish(conv.clone(), text.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let auditor = Watched::connect(&stack, Component::Auditor).await;
    let js = jetstream::new(auditor.client.clone());
    let stream = js.get_stream(CONV_STREAM).await.unwrap();
    let named = pull::Config {
        name: Some("AuditorReadsNatsPyStyle0".into()),
        filter_subject: conv.clone(),
        ack_policy: jetstream::consumer::AckPolicy::None,
        ..Default::default()
    };
    let consumer = stream.create_consumer(named).await.unwrap();
    let batch: Vec<_> = consumer
        .fetch()
        .max_messages(2)
        .messages()
        .await
        .unwrap()
        .collect()
        .await;
    let texts: Vec<String> = batch
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.unwrap().payload).into_owned())
        .collect();
    assert_eq!(texts, ["a", "b"]);
    assert!(auditor.errors.lock().unwrap().is_empty());
}

/// A reply subject is no way around a deny: the gateway sends itself a
/// message whose reply is the stream-delete API, and answers it.
#[tokio::test]
async fn a_reply_subject_is_no_way_around_a_deny() {
    let stack = Stack::start_secured().await;
    let gateway = Watched::connect(&stack, Component::Gateway).await;
    let mut own = gateway.client.subscribe("im.writer.me").await.unwrap();
    gateway.client.flush().await.unwrap();
    let delete = "$JS.API.STREAM.DELETE.IM_CONV";
    gateway
        .client
        .publish_with_reply("im.writer.me", delete, "x".into())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), own.next())
        .await
        .unwrap()
        .unwrap();
    let reply = got.reply.expect("the reply subject");
    gateway.client.publish(reply, "{}".into()).await.unwrap();
    gateway.client.flush().await.unwrap();
    gateway.refused("publish", delete).await;
    assert!(stack.js.get_stream(CONV_STREAM).await.is_ok());
}
