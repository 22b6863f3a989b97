//! Shared setup for the notifier's tests: a real nats-server with the
//! streams, a writer, a real HTTP receiver, and the notifier in-process.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use im_notifier::webhook::Format;
use im_notifier::window::Preview;
use im_notifier::{Notifier, NotifierConfig};
use im_schema::v1;
use im_streams::identities::Component;
use im_streams::{
    Action, AppendOutcome, Appender, Command, MessageBody, ReceiptKind, ReceiptOutcome, Role,
};
use im_testkit::Receiver;

pub const SECRET: &[u8] = b"a webhook secret of some length";
pub const DEBOUNCE: Duration = Duration::from_millis(1_000);

pub struct Stack {
    pub kit: im_testkit::Stack,
    pub app: Arc<Appender>,
    next_id: std::sync::atomic::AtomicU64,
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// With the shipped NATS authorization: the notifier runs as itself.
    pub async fn start() -> Stack {
        Self::around(im_testkit::Stack::start_secured().await).await
    }

    /// As `start`, content encrypted (the notifier given the KEK).
    pub async fn start_encrypted() -> Stack {
        let mut kit = im_testkit::Stack::start_secured().await;
        kit.encrypt(Default::default()).await;
        Self::around(kit).await
    }

    async fn around(kit: im_testkit::Stack) -> Stack {
        let app = kit.appender().await;
        Stack {
            kit,
            app,
            next_id: Default::default(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn config(&self, receiver: &Receiver) -> NotifierConfig {
        NotifierConfig {
            kek: self.kit.kek.clone(),
            instance: "notifier".into(),
            data_dir: self.dir.path().to_path_buf(),
            url: receiver.url("/push").parse().unwrap(),
            format: Format::Webhook,
            secret: SECRET.to_vec(),
            ca_file: None,
            preview: Preview::Text,
            debounce: DEBOUNCE,
            late_max: Duration::from_secs(3_600),
            attempts_max: 50,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            signing_key_file: None,
        }
    }

    pub async fn notifier(&self, config: NotifierConfig) -> Notifier {
        let client = self.kit.connect_as(Component::Notifier).await;
        Notifier::start(client, config)
            .await
            .expect("notifier starts")
    }

    fn id(&self) -> String {
        format!(
            "c{}",
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }

    /// Runs a command; returns (stream_seq, conv_seq) of its last event.
    pub async fn run(&self, conv: &str, actor: &str, action: Action) -> (u64, u64) {
        let cmd = Command {
            actor: actor.into(),
            client_msg_id: self.id(),
            action,
        };
        match self.app.execute(conv, &cmd, "").await.unwrap() {
            AppendOutcome::Stored {
                stream_seq,
                conv_seq,
                ..
            } => (stream_seq, conv_seq),
            other => panic!("{cmd:?}: {other:?}"),
        }
    }

    pub async fn create(&self, conv: &str, owner: &str, members: &[&str]) {
        let mut all: Vec<(String, Role)> = vec![(owner.to_string(), Role::Owner)];
        all.extend(members.iter().map(|u| (u.to_string(), Role::Member)));
        let action = Action::CreateGroup {
            title: format!("title of {conv}"),
            members: all,
        };
        self.run(conv, owner, action).await;
    }

    pub async fn send(&self, conv: &str, actor: &str, text: &str) -> (u64, u64) {
        let action = Action::Send {
            peer: None,
            body: MessageBody::Text(text.into()),
            meta: Default::default(),
        };
        self.run(conv, actor, action).await
    }

    pub async fn read(&self, conv: &str, user: &str, up_to: u64) {
        match self
            .app
            .append_receipt(conv, user, "d1", ReceiptKind::Read, up_to, "")
            .await
            .unwrap()
        {
            ReceiptOutcome::Stored { .. } => {}
            other => panic!("{other:?}"),
        }
    }

    /// Runs a command on the user's own log.
    pub async fn on_own_log(&self, user: &str, action: Action) -> u64 {
        let log = im_streams::ids::user_log_id(user).unwrap();
        self.run(&log, user, action).await.0
    }

    pub async fn register(&self, user: &str, device: &str, token: &str) -> u64 {
        let r = v1::PushRegistered {
            device_id: device.into(),
            platform: "fcm".into(),
            token: token.into(),
            app_id: "im.test".into(),
            lang: "en".into(),
        };
        self.on_own_log(user, Action::RegisterPush(r)).await
    }

    pub async fn mute(&self, user: &str, conv: &str, until_ms: i64) -> u64 {
        let m = v1::NotifyMuted {
            conversation_id: conv.into(),
            until_ms,
        };
        self.on_own_log(user, Action::MuteNotifications(m)).await
    }

    /// Says `user` is connected, as a gateway's presence line does.
    pub async fn online(&self, user: &str) {
        let js = async_nats::jetstream::new(self.kit.connect_as(Component::Gateway).await);
        let kv = js
            .get_key_value(im_streams::definitions::PRESENCE_BUCKET)
            .await
            .unwrap();
        let now = im_notifier::stats::now_ms();
        let entry = std::collections::BTreeMap::from([("gw-test".to_string(), now)]);
        kv.put(user, im_streams::presence::encode(&entry))
            .await
            .unwrap();
    }
}

/// The notification a received webhook carries.
pub fn notification(r: &im_testkit::receiver::Received) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["notification"].clone()
}

/// Waits until `pred` holds of what the receiver took, up to `within`.
pub async fn wait_for(
    receiver: &Receiver,
    within: Duration,
    what: &str,
    pred: impl Fn(&[im_testkit::receiver::Received]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if pred(&receiver.received()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: received {:?}",
            receiver
                .received()
                .iter()
                .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of IM_CONV, in stream order.
pub async fn conv_events(js: &async_nats::jetstream::Context) -> Vec<v1::ConvEvent> {
    let mut stream = js
        .get_stream(im_streams::definitions::CONV_STREAM)
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            if let Ok(e) = im_schema::decode::<v1::ConvEvent>(&m.payload) {
                out.push(e);
            }
        }
    }
    out
}
