//! Shared setup for projector tests: a real nats-server, the streams, a
//! writer, projector instances in-process, and queries over NATS.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use im_projectors::Projector;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::{
    Action, AppendOutcome, Appender, Command, MessageBody, ReceiptKind, ReceiptOutcome, Role,
};

/// The testkit's stack, with a writer and the commands these tests run.
pub struct Stack {
    pub kit: im_testkit::Stack,
    pub app: Arc<Appender>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Stack {
    type Target = im_testkit::Stack;
    fn deref(&self) -> &im_testkit::Stack {
        &self.kit
    }
}

impl Stack {
    pub async fn start() -> Stack {
        let kit = im_testkit::Stack::start().await;
        let app = Appender::new(kit.client.clone(), kit.topology)
            .await
            .unwrap();
        Stack {
            kit,
            app,
            next_id: Default::default(),
        }
    }

    pub async fn projector(&mut self, instance: &str, partitions: Option<Vec<u32>>) -> Projector {
        let mut config = self.kit.projector_config(instance);
        config.partitions = partitions;
        self.kit.projector(config).await
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

    pub async fn create(&self, conv: &str, members: &[(&str, Role)]) -> (u64, u64) {
        let members = members.iter().map(|(u, r)| (u.to_string(), *r)).collect();
        self.run(
            conv,
            "owner",
            Action::CreateGroup {
                title: format!("title of {conv}"),
                members,
            },
        )
        .await
    }

    pub async fn send(&self, conv: &str, actor: &str, text: &str) -> (u64, u64) {
        let action = Action::Send {
            peer: None,
            body: MessageBody::Text(text.into()),
            meta: Default::default(),
        };
        self.run(conv, actor, action).await
    }

    /// Appends a read cursor; returns its IM_RCPT stream seq.
    pub async fn read(&self, conv: &str, user: &str, up_to: u64) -> u64 {
        self.receipt(conv, user, ReceiptKind::Read, up_to).await
    }

    pub async fn receipt(&self, conv: &str, user: &str, kind: ReceiptKind, up_to: u64) -> u64 {
        match self
            .app
            .append_receipt(conv, user, "d1", kind, up_to, "")
            .await
            .unwrap()
        {
            ReceiptOutcome::Stored { stream_seq, .. } => stream_seq,
            other => panic!("{other:?}"),
        }
    }

    pub async fn query(&self, conv: &str, pos: (u64, u64), query: Query) -> R {
        let subject = im_projectors::query::partition_subject(self.topology.partition_of(conv));
        query_at(&self.client, subject, pos, query).await
    }
}

pub async fn query_at(
    client: &async_nats::Client,
    subject: String,
    pos: (u64, u64),
    query: Query,
) -> R {
    request(
        client,
        subject,
        v1::QueryRequest {
            min_position: pos.0,
            min_rcpt_position: pos.1,
            query: Some(query),
            after_delivered: false,
        },
    )
    .await
}

/// IM_CONV's last stream sequence now.
pub async fn conv_last_seq(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("IM_CONV").await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

/// A query's answer, whatever it is.
pub async fn request(client: &async_nats::Client, subject: String, req: v1::QueryRequest) -> R {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, im_schema::encode(&req).into()),
    )
    .await
    .expect("query timed out")
    .expect("query answered");
    let resp: v1::QueryResponse = im_schema::decode(&reply.payload).unwrap();
    resp.result.expect("a result")
}

/// Status of one instance with every digest, by projection name.
pub async fn status(
    client: &async_nats::Client,
    instance: &str,
) -> BTreeMap<String, v1::ProjectionStatus> {
    status_of(client, instance, true).await
}

/// Status of one instance, by projection name; digests read every entry.
pub async fn status_of(
    client: &async_nats::Client,
    instance: &str,
    digests: bool,
) -> BTreeMap<String, v1::ProjectionStatus> {
    let subject = im_projectors::query::instance_subject(instance);
    match query_at(
        client,
        subject,
        (0, 0),
        Query::Status(v1::StatusQuery {
            digests,
            ..Default::default()
        }),
    )
    .await
    {
        R::Status(s) => s
            .projections
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Waits until every projection of the instance has applied both streams
/// up to their current last sequence among the instance's partitions.
pub async fn wait_caught_up(
    client: &async_nats::Client,
    instance: &str,
    conv_last: u64,
    rcpt_last: u64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let st = status_of(client, instance, false).await;
        let done = st.values().all(|p| {
            p.conv_checkpoint >= conv_last
                && (!(p.name == "unread" || p.name == "receipts") || p.rcpt_checkpoint >= rcpt_last)
        });
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{instance} never caught up: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last sequence of a stream among the given partitions' subjects.
pub async fn last_seq_in(client: &async_nats::Client, stream: &str, filters: &[String]) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.unwrap();
    let mut last = 0;
    for f in filters {
        if let Ok(m) = stream.get_last_raw_message_by_subject(f).await {
            last = last.max(m.sequence);
        }
    }
    last
}

/// Deliveries seen on `im.deliver.*.e`: (user, conv_seq) -> count.
pub type Seen = Arc<std::sync::Mutex<BTreeMap<(String, u64), u32>>>;

/// Counts every delivery of a conversation event from now on (not the
/// notifications without an event: `count_notices`).
pub async fn count_deliveries(client: &async_nats::Client) -> Seen {
    count_delivers(client, true).await
}

/// Counts every notification (a `Deliver` without its event) from now on.
pub async fn count_notices(client: &async_nats::Client) -> Seen {
    count_delivers(client, false).await
}

async fn count_delivers(client: &async_nats::Client, with_event: bool) -> Seen {
    use futures::StreamExt;
    let seen: Seen = Default::default();
    let mut sub = client.subscribe("im.deliver.*.e").await.unwrap();
    client.flush().await.unwrap();
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let user = msg
                .subject
                .split('.')
                .nth(2)
                .unwrap_or_default()
                .to_string();
            let env: v1::Envelope = im_schema::decode(&msg.payload).unwrap();
            if let Some(v1::envelope::Payload::Deliver(d)) = env.payload {
                if d.event.is_some() == with_event {
                    *into.lock().unwrap().entry((user, d.conv_seq)).or_insert(0) += 1;
                }
            }
        }
    });
    seen
}

/// An `im-projector` process, killed (SIGKILL) on drop, so a failing test
/// leaves no process behind.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `im-projector` with `args` and `--data-dir dir`; returns once it
/// prints a line containing `ready` (within 60 s), its stdout drained
/// from then on so it never blocks on a full pipe.
pub fn spawn_im_projector(args: &[&str], dir: &std::path::Path, ready: &str) -> Proc {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-projector"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn im-projector");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(ready) => break,
            Some(Ok(_)) => {}
            _ => panic!("im-projector exited before {ready:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "im-projector never {ready:?}"
        );
    }
    std::thread::spawn(move || for _ in lines {});
    proc
}

/// `GET path` on a local listener: (status, whole response text).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    sock.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (status.unwrap_or(0), text)
}
