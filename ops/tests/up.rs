//! `imctl up` as a real process: a clean data dir comes up with the streams,
//! SIGINT stops it and its nats-server, and a second `up` keeps the data.

mod common;

use common::http_get;
use common::up::*;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use im_ops::cmd::nats_identities;
use im_streams::connect::NatsArgs;
use im_streams::identities::Component;
use im_streams::{Action, AppendOutcome, Appender, Command as Cmd, MessageBody};

/// A connection to `up`'s server as `component` (authorization is on).
async fn connect_as(url: &str, data: &std::path::Path, c: Component) -> async_nats::Client {
    NatsArgs::new(url)
        .with_auth(nats_identities::auth(data, c).unwrap())
        .connect(c.user())
        .await
        .unwrap()
}

fn start_listening(data: &std::path::Path, port: u16, gateway: &str) -> (Child, Vec<String>) {
    start_as(data, port, gateway, |_| {})
}

/// The conversation's history as the projector serves it, waiting for `pos`.
async fn history_texts(url: &str, data: &std::path::Path, pos: u64) -> Vec<String> {
    use im_schema::v1::{self, query_request::Query, query_response::Result as R};
    let client = connect_as(url, data, Component::Gateway).await;
    let topo = im_streams::definitions::read_topology(&async_nats::jetstream::new(client.clone()))
        .await
        .unwrap();
    let conv = im_streams::subjects::direct_conversation_id("alice", "bob").unwrap();
    let req = v1::QueryRequest {
        min_position: pos,
        query: Some(Query::History(v1::HistoryQuery {
            conversation_id: conv.clone(),
            user_id: "bob".into(),
            limit: 50,
            ..Default::default()
        })),
        ..Default::default()
    };
    let subject = im_projectors::query::partition_subject(topo.partition_of(&conv));
    let reply = client
        .request(subject, im_schema::encode(&req).into())
        .await
        .unwrap();
    let resp: v1::QueryResponse = im_schema::decode(&reply.payload).unwrap();
    let Some(R::History(page)) = resp.result else {
        panic!("{resp:?}")
    };
    page.entries
        .iter()
        .filter_map(|e| match e.event.as_ref()?.kind.as_ref()? {
            v1::conv_event::Kind::MessageSent(m) => match m.body.as_ref()? {
                v1::message_sent::Body::Text(t) => Some(t.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

async fn send_one(url: &str, data: &std::path::Path, id: &str) -> AppendOutcome {
    let client = connect_as(url, data, Component::Gateway).await;
    let topo = im_streams::definitions::read_topology(&async_nats::jetstream::new(client.clone()))
        .await
        .unwrap();
    // A writer beside the stack's gateway signs with the key `up` registered.
    let signer =
        im_streams::signing::EventSigner::load_or_create(&data.join("event-signing-key")).unwrap();
    // And seals with the KEK `up` keeps, as the stack encrypts content.
    let js = async_nats::jetstream::new(client.clone());
    let kek = im_streams::content::KekArgs::from_file(data.join("kek"));
    let content = im_streams::content::open_keys(&js, &kek).await.unwrap();
    let options = im_streams::AppenderOptions {
        signer: Some(std::sync::Arc::new(signer)),
        content,
        ..Default::default()
    };
    let app = Appender::with_options(client, topo, options).await.unwrap();
    let conv = im_streams::subjects::direct_conversation_id("alice", "bob").unwrap();
    let cmd = Cmd {
        actor: "alice".into(),
        client_msg_id: id.into(),
        action: Action::Send {
            peer: Some("bob".into()),
            body: MessageBody::Text(format!("hello {id}")),
            meta: Default::default(),
        },
    };
    app.execute(&conv, &cmd, "").await.unwrap()
}

/// Anyone may sign in as anyone through development sign-in: `up` offers
/// it only while its gateway listens on loopback.
#[tokio::test]
async fn up_turns_development_sign_in_off_beyond_loopback() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = tempfile::tempdir().unwrap();
    let (child, lines) = start_listening(data.path(), im_testkit::free_port(), "0.0.0.0:0");
    let _reaper = Reaper(child.id());
    let port = gateway_addr(&lines).port();
    let body = r#"{"userId": "mallory"}"#;
    let request = format!(
        "POST /v1/dev/token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer).await.unwrap();
    // Stopped before asserting: a failed assertion must not leave the stack running.
    interrupt_and_wait(child);
    assert!(
        lines.iter().any(|l| l.contains("development sign-in off")),
        "{lines:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

#[tokio::test]
async fn up_serves_stops_on_sigint_and_keeps_data() {
    let data = tempfile::tempdir().unwrap();
    let port = im_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");

    let (child, lines) = start(data.path(), port);
    let _reaper = Reaper(child.id());
    assert!(
        lines.iter().any(|l| l.contains("stream IM_CONV created")),
        "{lines:?}"
    );
    let first = send_one(&url, data.path(), "m1").await;
    let AppendOutcome::Stored {
        conv_seq: 2,
        stream_seq,
        ..
    } = first
    else {
        panic!("{first:?}")
    };
    // The projector serves what was appended.
    assert_eq!(
        history_texts(&url, data.path(), stream_seq).await,
        ["hello m1"]
    );
    interrupt_and_wait(child);
    assert!(
        async_nats::connect(&url).await.is_err(),
        "nats-server stopped with imctl"
    );

    let (child, lines) = start(data.path(), port);
    let _reaper = Reaper(child.id());
    assert!(
        lines.iter().any(|l| l.contains("stream IM_CONV unchanged")),
        "{lines:?}"
    );
    // The earlier history is there: the same send is a duplicate, the next
    // one continues the sequence.
    let again = send_one(&url, data.path(), "m1").await;
    assert!(
        matches!(again, AppendOutcome::Duplicate { conv_seq: 2, .. }),
        "{again:?}"
    );
    let next = send_one(&url, data.path(), "m2").await;
    let AppendOutcome::Stored {
        conv_seq: 3,
        stream_seq,
        ..
    } = next
    else {
        panic!("{next:?}")
    };
    // Its store kept the earlier history and goes on from there.
    assert_eq!(
        history_texts(&url, data.path(), stream_seq).await,
        ["hello m1", "hello m2"]
    );
    interrupt_and_wait(child);
}

/// The admin API answers the operator token only, from the same code as
/// `imctl streams status` and `imctl projections status`.
async fn admin_answers_the_operator_only(
    lines: &[String],
    data: &std::path::Path,
    user_token: &str,
) {
    let admin = addr_after(lines, "imctl: ops page http://");
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    for bearer in [None, Some(user_token), Some("x".repeat(43).as_str())] {
        let (status, body) = common::http_get_as(admin, "/admin/v1/status", bearer).await;
        assert_eq!(status, 401, "{bearer:?}: {body}");
        assert!(
            body.contains(r#""code":"ERROR_CODE_UNAUTHORIZED""#),
            "{body}"
        );
    }
    let (status, body) =
        common::http_get_as(admin, "/admin/v1/status", Some(operator.trim())).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let streams: Vec<&str> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["IM_CONV", "IM_RCPT"]);
    let history = v["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["projection"] == "history")
        .expect("history");
    assert_eq!(history["instance"], "main");
    assert!(history["checkpoint"].as_u64().unwrap() >= 2, "{history}");
}

/// Every component on its own NATS identity (`up`'s default): a chat with
/// typing, history over HTTP, the operator's verify and rebuild, the
/// auditor's verify and export; and no connection without an identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_each_component_on_its_own_identity_and_carries_a_chat() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let data = tempfile::tempdir().unwrap();
    let port = im_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (child, lines) = start(data.path(), port);
    let _reaper = Reaper(child.id());
    let gw = gateway_addr(&lines);
    for wanted in [
        "imctl token issue",
        "NATS authorization on",
        "im-auditor.env",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(wanted)),
            "{wanted}: {lines:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a second gateway") && l.contains("im-gateway.env")),
        "{lines:?}"
    );
    assert!(NatsArgs::new(&url).connect("anonymous").await.is_err());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(gw, "/readyz").await;
        if status == 200 {
            assert_eq!(body, r#"{"status":"ready"}"#);
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut alice = ws_connect(gw, &token(data.path(), "alice")).await;
    let mut bob = ws_connect(gw, &token(data.path(), "bob")).await;
    next_with(&mut alice, "connected").await;
    next_with(&mut bob, "connected").await;
    let send =
        r#"{"send": {"toUserId": "bob", "clientMsgId": "hello-1", "text": "hi from imctl up"}}"#;
    alice.send(Message::Text(send.into())).await.unwrap();
    let ack = next_with(&mut alice, "sendAck").await;
    assert!(ack.contains("ACK_STATUS_STORED"), "{ack}");
    let delivered = next_with(&mut bob, "hi from imctl up").await;
    assert!(delivered.contains("deliver"), "{delivered}");
    let conv = im_streams::subjects::direct_conversation_id("alice", "bob").unwrap();
    let typing = format!(r#"{{"typing": {{"conversationId": "{conv}", "typing": true}}}}"#);
    alice.send(Message::Text(typing.into())).await.unwrap();
    assert!(next_with(&mut bob, "typingNotice").await.contains("alice"));
    let bob = token(data.path(), "bob");
    let history = format!("/v1/history?conversationId={conv}&minPosition=2");
    let (status, body) = common::http_get_as(gw, &history, Some(&bob)).await;
    assert!(
        status == 200 && body.contains("hi from imctl up"),
        "{status} {body}"
    );

    admin_answers_the_operator_only(&lines, data.path(), &bob).await;
    for args in [
        &["projections", "verify", "--all"][..],
        &["projections", "rebuild", "--all"][..],
    ] {
        let (ok, out) = imctl_as_operator(data.path(), &url, args);
        assert!(ok, "imctl {args:?}: {out}");
    }
    let auditor = im_streams::connect::NatsArgs::new(&url)
        .with_auth(nats_identities::auth(data.path(), Component::Auditor).unwrap());
    let connection = || im_replay::cmd::Connection {
        nats: auditor.clone(),
    };
    // `up` registered the gateway's signing key: verify checks every event.
    let js = async_nats::jetstream::new(auditor.connect("auditor").await.unwrap());
    let keys = im_streams::signing::registered(&js).await.unwrap();
    assert_eq!(keys.in_force_from(), Some(1));
    // Twice with a saved state, in passes: the second run takes the audit
    // up from it, which reads the saved last event back as the auditor
    // identity.
    let audit_dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        im_replay::cmd::verify::run(im_replay::cmd::verify::VerifyArgs {
            conv: None,
            json: false,
            state: Some(audit_dir.path().join("audit.state")),
            from_seq: None,
            expect_state_digest: None,
            memory_mb: 256,
            // In passes: each is a read of its own under the identity.
            passes: Some(2),
            nats: connection(),
        })
        .await
        .expect("the auditor verifies the log");
    }
    im_replay::cmd::export::run(im_replay::cmd::export::ExportArgs {
        kek: Default::default(),
        stream: im_replay::cmd::export::StreamChoice::All,
        conv: Some(conv.clone()),
        user: None,
        since: None,
        until: None,
        from_seq: None,
        to_seq: None,
        format: im_replay::cmd::export::Format::Jsonl,
        nats: connection(),
    })
    .await
    .expect("the auditor exports");
    interrupt_and_wait(child);
    // No component tried anything its identity may not do.
    let log = std::fs::read_to_string(data.path().join("nats").join("nats.log")).unwrap();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(refused.is_empty(), "{refused:#?}");
}

/// `IM_LOG_FORMAT=json`: every log line is a JSON object, and one send's
/// trace id is on the gateway's, the writer's and the projector's lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_trace_id_from_gateway_to_projector() {
    let data = tempfile::tempdir().unwrap();
    let port = im_testkit::free_port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (child, lines) = start_as(data.path(), port, "127.0.0.1:0", |cmd| {
        cmd.env("IM_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                "warn,im_gateway=debug,im_streams=debug,im_projectors=debug",
            )
            .stderr(Stdio::piped());
    });
    let mut child = child;
    let _reaper = Reaper(child.id());
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let gw = gateway_addr(&lines);
    let mut ws = ws_connect(gw, &token(data.path(), "alice")).await;
    let send = r#"{"header": {"traceId": "trace-e2e-1"}, "send": {"toUserId": "bob", "clientMsgId": "c1", "text": "hi"}}"#;
    futures::SinkExt::send(&mut ws, send.into()).await.unwrap();
    next_with(&mut ws, "sendAck").await;
    let want = [
        "im_gateway::cmd::send",
        "im_streams::append::cas",
        "im_projectors::fold",
    ];
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < want.len() && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["trace_id"] == "trace-e2e-1" {
            seen.insert(v["target"].as_str().unwrap_or("").to_string());
        }
    }
    interrupt_and_wait(child);
    for target in want {
        assert!(
            seen.contains(target),
            "no line of {target} with the trace id: {seen:?}"
        );
    }
}

/// A process group, killed when dropped.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        // `-s KILL -- -PGID`: procps' kill takes `-KILL -PGID` for two
        // options, answers 0 and kills nothing (a gateway left running held
        // the test run's output open until CI's time ran out).
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0)])
            .status();
    }
}

/// The second gateway `up` tells how to start runs as printed (the built
/// binary, a free port), shares the first's media, and serves an image
/// uploaded through the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_gateway_up_prints_runs_and_shares_media() {
    let data = tempfile::tempdir().unwrap();
    let (child, lines) = start(data.path(), im_testkit::free_port());
    let _reaper = Reaper(child.id());
    let gw = gateway_addr(&lines);
    let command = lines
        .iter()
        .find_map(|l| l.strip_prefix("imctl: a second gateway: "))
        .expect("the second gateway's command")
        .to_string();
    let listen: std::net::SocketAddr = command
        .split_whitespace()
        .find_map(|w| w.strip_prefix("IM_GATEWAY_LISTEN="))
        .unwrap()
        .parse()
        .unwrap();
    // Its own process group: the shell and the gateway it starts go
    // together.
    let second = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("RUST_LOG", "error")
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let group = Group(second.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let ok = tokio::net::TcpStream::connect(listen).await.is_ok()
            && http_get(listen, "/readyz").await.0 == 200;
        if ok || Instant::now() > deadline {
            break ok;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let alice = token(data.path(), "alice");
    let upload = format!(
        "POST /v1/media/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        PNG.len()
    );
    let (status, body) = exchange(gw, upload, &PNG).await;
    let reference: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = reference["mediaId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let download = format!(
        "GET /v1/media/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\nConnection: close\r\n\r\n"
    );
    let fetched = match ready {
        true => Some(exchange(listen, download, b"").await),
        false => None,
    };
    drop(group);
    interrupt_and_wait(child);
    // The second gateway went with its group (a leftover keeps the test
    // run's output open).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(listen).await.is_ok() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "the second gateway outlived its process group"
    );
    assert!(
        !command.contains("cargo run"),
        "the built binary: {command}"
    );
    assert!(ready, "the second gateway never became ready: {command}");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, bytes) = fetched.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert!(
        bytes.ends_with(&PNG) || bytes.windows(PNG.len()).any(|w| w == PNG),
        "the same bytes"
    );
}

/// Outside the checkout and without a data dir, `imctl token issue` makes
/// no secret of its own (it would sign tokens no stack takes): it says
/// where it looked and how to point it at the stack's data dir.
#[test]
fn a_token_is_never_signed_with_a_secret_made_on_the_spot() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args([
            "token",
            "issue",
            "--user",
            "alice",
            "--data-dir",
            "no-stack-here",
        ])
        .current_dir(elsewhere.path())
        .env_remove("IM_JWT_HS256_SECRET")
        .env_remove("IM_DATA_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("dev-jwt-secret") && stderr.contains("--data-dir"),
        "{stderr}"
    );
    assert!(
        !elsewhere.path().join("no-stack-here").exists(),
        "nothing made"
    );
}

/// The admin port without a built ops page says so (404), instead of
/// asking for the operator's token (401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_without_an_ops_page_says_it_is_not_built() {
    let data = tempfile::tempdir().unwrap();
    let (child, lines) = start_as(data.path(), im_testkit::free_port(), "127.0.0.1:0", |c| {
        c.args(["--web-dir", "/nonexistent/web"]);
    });
    let admin = addr_after(&lines, "imctl: ops page http://");
    let (status, body) = http_get(admin, "/ops.html").await;
    interrupt_and_wait(child);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("no web app in /nonexistent/web")),
        "{lines:?}"
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not built"), "{body}");
}

/// The pid `up` printed for a pool member.
fn member_pid(lines: &[String], name: &str) -> u32 {
    let prefix = format!("imctl: projector {name} pid ");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid for {name}: {lines:?}"))
}

/// The partitions as `imctl projections status --json` shows them.
fn partitions(data: &std::path::Path, url: &str) -> Vec<serde_json::Value> {
    let args = ["projections", "status", "--json", "--interval-ms", "0"];
    // Exit 1 while a partition's owner is starting: the table is printed.
    let (_, out) = imctl_as_operator(data, url, &args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["partitions"].as_array().unwrap().clone()
}

/// `up --projectors 2`: two `im-projector` processes share the partitions;
/// the operator moves the chat's partition from one to the other, then the
/// new owner is killed (kill -9): the other takes over, a message sent
/// meanwhile reaches the reader, and history holds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_two_projectors_moves_a_partition_and_survives_a_kill() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let data = tempfile::tempdir().unwrap();
    let port = im_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (child, lines) = start_as(data.path(), port, "127.0.0.1:0", |c| {
        c.args(["--projectors", "2"]);
    });
    let _reaper = Reaper(child.id());
    let gw = gateway_addr(&lines);
    wait_ready(gw).await;
    let owners: std::collections::BTreeSet<String> = partitions(data.path(), &url)
        .iter()
        .map(|p| p["owner"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(owners, ["up-1".to_string(), "up-2".to_string()].into());
    let conv = im_streams::subjects::direct_conversation_id("alice", "bob").unwrap();
    let p = im_streams::Topology { partitions: 16 }.partition_of(&conv);
    let owner_of =
        |rows: &[serde_json::Value]| rows[p as usize]["owner"].as_str().unwrap().to_string();
    let before = owner_of(&partitions(data.path(), &url));
    let other = if before == "up-1" { "up-2" } else { "up-1" };
    let partition = p.to_string();
    let move_to = |to: &str| {
        let args = ["projections", "move", "--partition", &partition, "--to", to];
        imctl_as_operator(data.path(), &url, &args)
    };
    let (ok, out) = move_to(other);
    assert!(ok && out.contains(&format!("owned by {other}")), "{out}");
    let (ok, out) = move_to("nobody");
    // Refused (not a live member: the reason is on stderr); nothing moved.
    assert!(!ok, "{out}");
    assert_eq!(owner_of(&partitions(data.path(), &url)), other);
    // The admin API (the ops page's source) shows the same table.
    let admin = addr_after(&lines, "imctl: ops page http://");
    let operator = std::fs::read_to_string(data.path().join("operator-token")).unwrap();
    let (status, body) =
        common::http_get_as(admin, "/admin/v1/status", Some(operator.trim())).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = v["partitions"].as_array().unwrap();
    assert_eq!(rows.len(), 16, "{body}");
    assert_eq!(rows[p as usize]["owner"], other, "{body}");
    assert_eq!(rows[p as usize]["moved_to"], other, "{body}");
    wait_ready(gw).await;
    let mut alice = ws_connect(gw, &token(data.path(), "alice")).await;
    let mut bob = ws_connect(gw, &token(data.path(), "bob")).await;
    next_with(&mut alice, "connected").await;
    next_with(&mut bob, "connected").await;
    let send = |id: &str| {
        format!(r#"{{"send": {{"toUserId": "bob", "clientMsgId": "{id}", "text": "text {id}"}}}}"#)
    };
    alice.send(Message::Text(send("m1").into())).await.unwrap();
    assert!(next_with(&mut alice, "sendAck")
        .await
        .contains("ACK_STATUS_STORED"));
    next_with(&mut bob, "text m1").await;
    // kill -9 the partition's owner: the other member takes it over.
    let epochs: Vec<(String, u64)> = partitions(data.path(), &url)
        .iter()
        .map(|r| {
            (
                r["owner"].as_str().unwrap().into(),
                r["epoch"].as_u64().unwrap(),
            )
        })
        .collect();
    let killed = member_pid(&lines, other);
    let status = std::process::Command::new("kill")
        .args(["-s", "KILL", &killed.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    alice.send(Message::Text(send("m2").into())).await.unwrap();
    assert!(next_with(&mut alice, "sendAck")
        .await
        .contains("ACK_STATUS_STORED"));
    // Delivered by the successor once it serves (the lease, 6 s, and its
    // catching up), or by sync: it is in history either way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let bob_token = token(data.path(), "bob");
    let history = format!("/v1/history?conversationId={conv}");
    loop {
        let (status, body) = common::http_get_as(gw, &history, Some(&bob_token)).await;
        if status == 200 && body.contains("text m1") && body.contains("text m2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m2 never in history: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every partition ends with the survivor (the move named a dead member).
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let after = partitions(data.path(), &url);
        if after.iter().all(|r| r["owner"] == before) {
            break after;
        }
        assert!(Instant::now() < deadline, "not all taken over: {after:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Each of the dead member's partitions taken once, never handed back
    // to it (it looked live for a moment after its leases went stale).
    for (r, (owner, epoch)) in after.iter().zip(&epochs) {
        let taken = u64::from(owner == other);
        assert_eq!(
            r["epoch"].as_u64(),
            Some(epoch + taken),
            "{r} was {owner} {epoch}"
        );
    }
    wait_ready(gw).await;
    interrupt_and_wait(child);
    let log = std::fs::read_to_string(data.path().join("nats").join("nats.log")).unwrap();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(refused.is_empty(), "{refused:#?}");
}
