//! What the client tests share: the stack (nats-server, streams, a
//! projector and gateways in-process), clients, and reading events.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use im_client::{Client, ClientConfig, LogEvent};
use im_schema::v1;

pub const SECRET: &str = "client-test-secret-long-enough-32b";

pub struct Stack {
    pub kit: im_testkit::Stack,
    pub _projector: im_projectors::Projector,
    pub url: String,
}

/// The stack; groups larger than `fanout_threshold` get notifications.
pub async fn stack(fanout_threshold: usize) -> Stack {
    stack_with(fanout_threshold, Default::default()).await
}

pub async fn stack_with(fanout_threshold: usize, limits: im_gateway::Limits) -> Stack {
    let mut kit = im_testkit::Stack::start().await;
    let mut config = kit.projector_config("main");
    config.fanout_threshold = fanout_threshold;
    let projector = kit.projector(config).await;
    Stack {
        url: gateway_with(&kit, limits).await,
        kit,
        _projector: projector,
    }
}

/// A gateway in-process on `kit`'s NATS; returns its URL.
pub async fn gateway_on(kit: &im_testkit::Stack) -> String {
    gateway_with(kit, Default::default()).await
}

pub async fn gateway_with(kit: &im_testkit::Stack, limits: im_gateway::Limits) -> String {
    let gateway = im_gateway::GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        nats_url: kit.url(),
        nats_auth: Default::default(),
        tokens: im_gateway::auth::TokenConfig {
            hs256_secret: Some(SECRET.into()),
            ..Default::default()
        },
        signing_key_file: None,
        kek: Default::default(),
        limits,
        media: None,
        web: Default::default(),
    };
    let nats = async_nats::connect(kit.url()).await.unwrap();
    let state = im_gateway::AppState::new(gateway, nats).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(im_gateway::serve(listener, state));
    url
}

impl Stack {
    pub fn client(&self, user: &str, known: BTreeMap<String, u64>) -> Client {
        client_at(&self.url, user, "rust", known)
    }
}

/// A client of `user`'s device `device` through the gateway at `url`.
pub fn client_at(url: &str, user: &str, device: &str, known: BTreeMap<String, u64>) -> Client {
    let cfg = ClientConfig {
        url: url.to_string(),
        token: token(user),
        device_id: device.into(),
        wire: Default::default(),
        backoff: Default::default(),
    };
    Client::new(cfg, known)
}

/// A token of `user`, for an hour.
pub fn token(user: &str) -> String {
    im_gateway::auth::issue_hs256(SECRET, user, 3600)
}

pub fn text(conv: &str, to: &str, id: &str, text: &str) -> v1::SendMessage {
    v1::SendMessage {
        conversation_id: conv.into(),
        to_user_id: to.into(),
        client_msg_id: id.into(),
        body: Some(v1::send_message::Body::Text(text.into())),
        ..Default::default()
    }
}

/// The texts of messages among `events`.
pub fn texts(events: &[LogEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event.kind {
            Some(v1::conv_event::Kind::MessageSent(m)) => match &m.body {
                Some(v1::message_sent::Body::Text(t)) => Some(t.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Events until `n` messages came, then a second more (late duplicates).
pub async fn events_until(client: &mut Client, n: usize) -> Vec<LogEvent> {
    let mut out = Vec::new();
    while texts(&out).len() < n {
        let e = client.next_event(Duration::from_secs(20)).await.unwrap();
        out.push(e.expect("an event within 20 s"));
    }
    while let Some(e) = client.next_event(Duration::from_secs(1)).await.unwrap() {
        out.push(e);
    }
    out
}
