//! Shared setup for the streams integration tests: real servers, streams
//! applied through the production path, appenders as a gateway would hold.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream;
use im_streams::{
    definitions::{StreamSettings, CONV_STREAM},
    Action, AppendOutcome, Appender, Command, MessageBody, Role, Topology,
};

pub async fn js_for(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.expect("connect"))
}

/// Applies the streams and returns a writer with its own connection.
pub async fn setup(url: &str, settings: &StreamSettings) -> (jetstream::Context, Topology) {
    let js = js_for(url).await;
    let applied = im_streams::apply_streams(&js, settings)
        .await
        .expect("apply streams");
    (js, applied.topology)
}

/// A writer with its own connection and cache, as a second gateway has.
pub async fn appender(url: &str, topology: Topology) -> Arc<Appender> {
    Appender::new(async_nats::connect(url).await.expect("connect"), topology)
        .await
        .expect("appender")
}

pub fn cmd(actor: &str, client_msg_id: &str, action: Action) -> Command {
    Command {
        actor: actor.into(),
        client_msg_id: client_msg_id.into(),
        action,
    }
}

pub fn text(t: &str) -> Action {
    Action::Send {
        peer: None,
        body: MessageBody::Text(t.into()),
        meta: BTreeMap::new(),
    }
}

/// Creates group `conv` owned by "owner" with the given members.
pub async fn create_group(app: &Appender, conv: &str, members: &[(&str, Role)]) {
    let out = app
        .execute(
            conv,
            &cmd(
                "owner",
                &format!("create-{conv}"),
                Action::CreateGroup {
                    title: conv.into(),
                    members: members.iter().map(|(u, r)| (u.to_string(), *r)).collect(),
                },
            ),
            "",
        )
        .await
        .expect("create");
    assert!(matches!(out, AppendOutcome::Stored { .. }), "{out:?}");
}

/// Messages in IM_CONV.
pub async fn conv_message_count(js: &jetstream::Context) -> u64 {
    im_testkit::stream_messages(js, CONV_STREAM).await
}

pub async fn conv_stream(js: &jetstream::Context) -> jetstream::stream::Stream {
    js.get_stream(CONV_STREAM).await.unwrap()
}

/// Every event of one conversation, in stream order.
pub async fn history(
    js: &jetstream::Context,
    topology: Topology,
    conv: &str,
) -> Vec<im_streams::codec::StoredEvent> {
    im_streams::log::read_conv_events(
        &js.client(),
        CONV_STREAM,
        &topology.conv_subject(conv).unwrap(),
        1,
        usize::MAX,
    )
    .await
    .expect("read history")
}
