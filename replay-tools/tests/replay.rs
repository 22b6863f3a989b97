//! `im-replay` as a process against real servers: a real history written
//! through the append path, then export, verify, state, who-could-read,
//! archive and restore, and verify again after events forged around the
//! append path.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::{Action, AppendOutcome, Appender, Command as Cmd, MessageBody, Role};

/// (success, stdout, stderr).
fn replay(args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = replay_code(args);
    (code == 0, out, err)
}

/// (exit code, stdout, stderr).
fn replay_code(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_im-replay"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completions_for_each_shell_name_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = replay_code(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("who-could-read") && out.contains("restore"),
            "{shell}"
        );
    }
}

/// 2 when it could not run: bad arguments, or no server to read.
#[test]
fn could_not_run_is_exit_code_two() {
    let (code, _, err) = replay_code(&["verify", "--nats-url", "nats://127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = replay_code(&["verify", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = replay(args);
    assert!(ok, "im-replay {args:?} failed:\n{out}\n{err}");
    out
}

fn lines(jsonl: &str) -> Vec<serde_json::Value> {
    jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn run(app: &Appender, conv: &str, actor: &str, id: &str, action: Action) -> u64 {
    let cmd = Cmd {
        actor: actor.into(),
        client_msg_id: id.into(),
        action,
    };
    match app.execute(conv, &cmd, "").await.unwrap() {
        AppendOutcome::Stored { stream_seq, .. } => stream_seq,
        other => panic!("{id}: {other:?}"),
    }
}

fn text(t: &str) -> Action {
    Action::Send {
        peer: None,
        body: MessageBody::Text(t.into()),
        meta: Default::default(),
    }
}

fn verify_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("range IM_CONV "))
        .and_then(|l| l.split("digest ").nth(1))
        .unwrap_or_else(|| panic!("no range digest in {out}"))
        .to_string()
}

/// The JSON of a proto as `im-replay` prints it.
fn json_of<M: serde::Serialize>(m: &M) -> serde_json::Value {
    serde_json::from_str(&im_schema::to_json(m)).unwrap()
}

/// A text message by `actor` chained onto `state` as a writer would
/// chain it, whatever the rules say of it.
fn chained_text(
    state: &im_streams::ConvState,
    actor: &str,
    id: &str,
    text: &str,
) -> im_streams::seal::Sealed {
    let event = v1::ConvEvent {
        conversation_id: state.conv_id.clone(),
        actor: actor.into(),
        at_ms: 1,
        client_msg_id: id.into(),
        schema_version: im_schema::SCHEMA_VERSION,
        kind: Some(v1::conv_event::Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Text(text.into())),
            meta: Default::default(),
        })),
        ..Default::default()
    };
    im_streams::seal::seal(state, vec![event]).remove(0)
}

/// Publishes a conversation event straight to its subject, around the
/// append path, with the headers a writer would set.
async fn forge(client: &async_nats::Client, ev: &v1::ConvEvent) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let subject = im_streams::Topology::new(16)
        .conv_subject(&ev.conversation_id)
        .unwrap();
    let headers = im_streams::codec::conv_headers(ev, "", "forger");
    js.publish_with_headers(subject, headers, im_schema::encode(ev).into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_tools_on_a_real_history() {
    let mut stack = im_testkit::Stack::start().await;
    let (url, client, topo) = (stack.url(), stack.client.clone(), stack.topology);
    let mut config = stack.projector_config("audit");
    config.fanout = false;
    let projector = stack.projector(config).await;
    let app = stack.appender().await;

    // Phase A: a group, a direct conversation, messages, an edit, receipts.
    let create = Action::CreateGroup {
        title: "team".into(),
        members: vec![("amy".into(), Role::Admin), ("bo".into(), Role::Member)],
    };
    run(&app, "team", "olga", "c1", create).await;
    run(&app, "team", "amy", "a1", text("hello team")).await;
    let dm = im_streams::subjects::direct_conversation_id("amy", "bo").unwrap();
    let first_dm = Action::Send {
        peer: Some("bo".into()),
        body: MessageBody::Text("hi bo".into()),
        meta: Default::default(),
    };
    run(&app, &dm, "amy", "d1", first_dm).await;
    run(&app, "team", "bo", "b1", text("hi all")).await;
    let edit = Action::Edit {
        conv_seq: 3,
        text: "hi everyone".into(),
    };
    run(&app, "team", "bo", "b2", edit).await;
    let phase_a_seq = run(&app, &dm, "bo", "d2", text("hi amy")).await;
    app.append_receipt("team", "bo", "phone", im_streams::ReceiptKind::Read, 2, "")
        .await
        .unwrap();
    // Team holds 4 events (created, hello, hi all, edit): the projection at
    // phase A's last position, as a client would see it.
    let at_a = |q: Query| v1::QueryRequest {
        min_position: phase_a_seq,
        query: Some(q),
        ..Default::default()
    };
    let ask = |req: v1::QueryRequest| {
        let client = client.clone();
        async move {
            let subject = im_projectors::query::partition_subject(topo.partition_of("team"));
            let reply = client
                .request(subject, im_schema::encode(&req).into())
                .await
                .unwrap();
            im_schema::decode::<v1::QueryResponse>(&reply.payload)
                .unwrap()
                .result
                .unwrap()
        }
    };
    let R::Members(members_a) = ask(at_a(Query::Members(v1::MembersQuery {
        conversation_id: "team".into(),
        ..Default::default()
    })))
    .await
    else {
        panic!("members")
    };
    let R::History(history_a) = ask(at_a(Query::History(v1::HistoryQuery {
        conversation_id: "team".into(),
        limit: 200,
        ..Default::default()
    })))
    .await
    else {
        panic!("history")
    };
    assert_eq!(history_a.entries.len(), 4);

    // A time between the phases, with a margin on both sides.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let between = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // Phase B: bo is removed, the group goes on, bo reads the dm.
    run(
        &app,
        "team",
        "amy",
        "a2",
        Action::RemoveMember { user: "bo".into() },
    )
    .await;
    run(&app, "team", "olga", "c2", text("bo has left")).await;
    let receipt = app
        .append_receipt(&dm, "bo", "phone", im_streams::ReceiptKind::Read, 2, "")
        .await
        .unwrap();
    assert!(
        matches!(
            receipt,
            im_streams::ReceiptOutcome::Stored {
                duplicate: false,
                ..
            }
        ),
        "{receipt:?}"
    );
    // conv events: team 6 (seqs), dm 3; receipts: 2.

    // --- verify: passes, with a head per conversation and a digest.
    let verified = ok(&["verify", "--nats-url", &url]);
    assert!(
        verified.contains("conversation team: 6 events"),
        "{verified}"
    );
    assert!(
        verified.contains(&format!("conversation {dm}: 3 events")),
        "{verified}"
    );
    assert!(
        verified.contains("range IM_CONV 1-9: 9 events"),
        "{verified}"
    );
    let digest = verify_digest(&verified);
    // The same as one JSON object, for scripts.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["verify", "--json", "--nats-url", &url])).unwrap();
    assert_eq!(
        (json["ok"].as_bool(), json["events"].as_u64()),
        (Some(true), Some(9))
    );
    assert_eq!(json["conversations"]["team"]["events"], 6);
    assert_eq!(json["range_digest"].as_str(), Some(digest.as_str()));

    // --- export: each filter returns exactly the expected events.
    let all = lines(&ok(&["export", "--nats-url", &url]));
    let got: Vec<(String, u64)> = all
        .iter()
        .map(|e| {
            (
                e["stream"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(all.len(), 11, "{got:?}");
    assert_eq!(
        all.iter().filter(|e| e["stream"] == "IM_RCPT").count(),
        2,
        "conversation events first, then receipts"
    );
    let team = lines(&ok(&[
        "export",
        "--stream",
        "conv",
        "--conv",
        "team",
        "--nats-url",
        &url,
    ]));
    let team_seqs: Vec<u64> = team
        .iter()
        .map(|e| e["event"]["convSeq"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(team_seqs, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(team[1]["event"]["messageSent"]["text"], "hello team");
    assert_eq!(team[1]["headers"]["Im-Event-Type"], "message_sent");
    assert!(team
        .iter()
        .all(|e| e["subject"] == topo.conv_subject("team").unwrap()));
    // bo: in the creation, his two team commands, his removal, his dm send
    // and the dm's creation (he is a member), and both his receipts.
    let bo = lines(&ok(&["export", "--user", "bo", "--nats-url", &url]));
    let bo_kinds: Vec<(String, u64)> = bo
        .iter()
        .map(|e| {
            (
                e["stream"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(bo.len(), 8, "{bo_kinds:?}");
    let range = lines(&ok(&[
        "export",
        "--stream",
        "conv",
        "--from-seq",
        "3",
        "--to-seq",
        "5",
        "--nats-url",
        &url,
    ]));
    let seqs: Vec<u64> = range.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    let (refused, _, err) = replay(&["export", "--from-seq", "3", "--nats-url", &url]);
    assert!(!refused && err.contains("--stream"), "{err}");
    let before = lines(&ok(&["export", "--until", &between, "--nats-url", &url]));
    let after = lines(&ok(&["export", "--since", &between, "--nats-url", &url]));
    assert_eq!((before.len(), after.len()), (8, 3));
    assert!(after
        .iter()
        .all(|e| e["time"].as_str().unwrap() > between.as_str()));
    let csv_out = ok(&[
        "export",
        "--stream",
        "conv",
        "--conv",
        "team",
        "--format",
        "csv",
        "--nats-url",
        &url,
    ]);
    let mut rows = csv::Reader::from_reader(csv_out.as_bytes());
    let rows: Vec<csv::StringRecord> = rows.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(
        (&rows[4][5], &rows[4][6], &rows[4][7]),
        ("5", "amy", "member_removed")
    );

    // --- state at phase A's last position equals the projection then.
    let state: serde_json::Value = serde_json::from_str(&ok(&[
        "state",
        "--conv",
        "team",
        "--at-seq",
        &phase_a_seq.to_string(),
        "--nats-url",
        &url,
    ]))
    .unwrap();
    assert_eq!(state["members"], json_of(&members_a));
    assert_eq!(
        state["history"],
        serde_json::Value::Array(history_a.entries.iter().map(json_of).collect())
    );
    let now: serde_json::Value = serde_json::from_str(&ok(&[
        "state",
        "--conv",
        "team",
        "--at",
        &between,
        "--nats-url",
        &url,
    ]))
    .unwrap();
    assert_eq!(now, state, "--at a time between the phases is phase A");

    // --- who could read: bo read "hello team", not "bo has left".
    let users = |out: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap().to_string())
            .collect()
    };
    let early = ok(&[
        "who-could-read",
        "--conv",
        "team",
        "--seq",
        "2",
        "--nats-url",
        &url,
    ]);
    assert_eq!(users(&early), vec!["amy", "bo", "olga"]);
    let late = ok(&[
        "who-could-read",
        "--conv",
        "team",
        "--seq",
        "6",
        "--nats-url",
        &url,
    ]);
    assert_eq!(users(&late), vec!["amy", "olga"]);
    let (found, _, _) = replay(&[
        "who-could-read",
        "--conv",
        "team",
        "--seq",
        "60",
        "--nats-url",
        &url,
    ]);
    assert!(!found);

    // --- archive to a real S3-protocol server, restore into a fresh
    // server, verify there: the same digest.
    let s3 = im_testkit::S3Server::start().await.unwrap();
    let endpoint = s3.endpoint();
    let s3_args = [
        "--s3-endpoint",
        endpoint.as_str(),
        "--s3-access-key",
        im_testkit::S3_ACCESS_KEY,
        "--s3-secret-key",
        im_testkit::S3_SECRET_KEY,
    ];
    let mut args = vec!["archive", "--to", "s3://audit/run1", "--nats-url", &url];
    args.extend(s3_args);
    let archived = ok(&args);
    assert!(
        archived.contains(&format!(
            "archived IM_CONV 1-9: 9 messages, digest {digest}"
        )),
        "{archived}"
    );
    let fresh = im_testkit::NatsServer::start().await.unwrap();
    let fresh_url = fresh.url();
    let mut args = vec![
        "restore",
        "--from",
        "s3://audit/run1",
        "--nats-url",
        &fresh_url,
    ];
    args.extend(s3_args);
    let restored = ok(&args);
    assert!(
        restored.contains("restored IM_RCPT 1-2: 2 messages"),
        "{restored}"
    );
    let again = ok(&["verify", "--nats-url", &fresh_url]);
    assert_eq!(verify_digest(&again), digest);
    let restored_export = lines(&ok(&["export", "--nats-url", &fresh_url]));
    // The same events, subjects, sequences and headers, but the store
    // times (a restore's own) and the headers the server acted on at the
    // original append (dedupe id, expected sequence), which are not
    // replayable.
    let strip_time = |v: &[serde_json::Value]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|e| {
                let mut e = e.clone();
                e["time"] = serde_json::Value::Null;
                let headers = e["headers"].as_object_mut().unwrap();
                headers.retain(|k, _| !k.starts_with("Nats-"));
                e
            })
            .collect()
    };
    assert_eq!(strip_time(&restored_export), strip_time(&all));
    // A second restore onto the same server is refused, changing nothing.
    let (twice, _, err) = replay(&args);
    assert!(!twice && err.contains("fresh stream"), "{err}");

    // --- forged events, appended around the append path, are named.
    // A bad chain link in team:
    let forged = v1::ConvEvent {
        conversation_id: "team".into(),
        conv_seq: 7,
        actor: "olga".into(),
        at_ms: 1,
        prev_hash: vec![9; 32],
        client_msg_id: "forged1".into(),
        schema_version: 1,
        kind: Some(v1::conv_event::Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Text("rewritten history".into())),
            meta: Default::default(),
        })),
    };
    let forged_seq = forge(&client, &forged).await;
    let (code, out, _) = replay_code(&["verify", "--conv", "team", "--nats-url", &url]);
    assert_eq!(code, 1, "a problem found: {out}");
    assert!(
        out.contains(&format!("VIOLATION event at IM_CONV seq {forged_seq} "))
            && out.contains("conv_seq 7")
            && out.contains("broken hash chain"),
        "{out}"
    );
    let args = ["verify", "--conv", "team", "--json", "--nats-url", &url];
    let (code, out, _) = replay_code(&args);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((code, json["ok"].as_bool()), (1, Some(false)), "{out}");
    assert_eq!(json["violation"]["stream_seq"], forged_seq);
    // A message from a non-member with a correct link, in the dm's place
    // of a group: bo, removed from team, writes into a fresh group.
    run(
        &app,
        "club",
        "olga",
        "k1",
        Action::CreateGroup {
            title: "club".into(),
            members: vec![("amy".into(), Role::Member)],
        },
    )
    .await;
    let last = app.current_state("club").await.unwrap();
    let intruder = v1::ConvEvent {
        conversation_id: "club".into(),
        conv_seq: 2,
        actor: "bo".into(),
        at_ms: 1,
        prev_hash: last.last_hash.to_vec(),
        client_msg_id: "x1".into(),
        schema_version: 1,
        kind: Some(v1::conv_event::Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Text("let me in".into())),
            meta: Default::default(),
        })),
    };
    let intruder_seq = forge(&client, &intruder).await;
    let (passed, out, _) = replay(&["verify", "--conv", "club", "--nats-url", &url]);
    assert!(!passed, "{out}");
    assert!(
        out.contains(&format!("VIOLATION event at IM_CONV seq {intruder_seq} "))
            && out.contains("not_member"),
        "{out}"
    );
    // The whole log fails at the first of the two.
    let (passed, out, _) = replay(&["verify", "--nats-url", &url]);
    assert!(
        !passed && out.contains(&format!("seq {forged_seq} ")),
        "{out}"
    );
    drop(projector);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_counts_members_as_the_live_projection_after_removals_leaves_and_blacklists() {
    let mut stack = im_testkit::Stack::start().await;
    let (url, client, topo) = (stack.url(), stack.client.clone(), stack.topology);
    let mut config = stack.projector_config("audit");
    config.fanout = false;
    let _projector = stack.projector(config).await;
    let app = stack.appender().await;
    let members = ["amy", "bo", "cy", "dee", "eve"]
        .map(|u| (u.to_string(), Role::Member))
        .to_vec();
    let create = Action::CreateGroup {
        title: "churn".into(),
        members,
    };
    run(&app, "churn", "olga", "c1", create).await;
    let remove = |u: &str| Action::RemoveMember { user: u.into() };
    run(&app, "churn", "olga", "c2", remove("amy")).await;
    run(&app, "churn", "bo", "b1", Action::Leave).await;
    run(
        &app,
        "churn",
        "olga",
        "c3",
        Action::Blacklist { user: "cy".into() },
    )
    .await;
    run(
        &app,
        "churn",
        "olga",
        "c4",
        Action::AddMember {
            user: "fay".into(),
            role: Role::Member,
        },
    )
    .await;
    let last = run(&app, "churn", "olga", "c5", remove("dee")).await;

    let request = v1::QueryRequest {
        min_position: last,
        query: Some(Query::Members(v1::MembersQuery {
            conversation_id: "churn".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let subject = im_projectors::query::partition_subject(topo.partition_of("churn"));
    let reply = client
        .request(subject, im_schema::encode(&request).into())
        .await
        .unwrap();
    let Some(R::Members(live)) = im_schema::decode::<v1::QueryResponse>(&reply.payload)
        .unwrap()
        .result
    else {
        panic!("members")
    };
    assert_eq!(live.members.len(), 3, "olga, eve, fay: {live:?}");
    let state: serde_json::Value = serde_json::from_str(&ok(&[
        "state",
        "--conv",
        "churn",
        "--at-seq",
        &last.to_string(),
        "--nats-url",
        &url,
    ]))
    .unwrap();
    assert_eq!(state["members"], json_of(&live));
}

/// Signed events: once a writer key is registered, the writer's signed
/// events verify and `verify` names an event published around the writers
/// (the chain is right, the signature is missing). Unknown keys and
/// changed bytes: `audit_tests.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_unsigned_and_unknown_signers() {
    use im_streams::signing::{register, EventSigner};
    let stack = im_testkit::Stack::start().await;
    let url = stack.url();
    let plain = stack.appender().await;
    // Before any key: unsigned events are what every writer wrote.
    run(
        &plain,
        "club",
        "olga",
        "k0",
        Action::CreateGroup {
            title: "club".into(),
            members: vec![("amy".into(), Role::Member)],
        },
    )
    .await;
    let signer = Arc::new(EventSigner::from_seed([3; 32]));
    register(&stack.js, &signer.public()).await.unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let topology = stack.topology;
    let options = im_streams::AppenderOptions {
        signer: Some(signer.clone()),
        ..Default::default()
    };
    let app = Appender::with_options(client.clone(), topology, options)
        .await
        .unwrap();
    run(&app, "club", "amy", "k1", text("signed")).await;
    let (_, out, err) = replay(&["verify", "--nats-url", &url]);
    assert!(out.contains("range IM_CONV 1-2"), "{out}");
    assert!(
        err.contains("signatures required from IM_CONV seq 2"),
        "{err}"
    );

    // Around the writers: the right link, no signature.
    let next = |state: &im_streams::ConvState, id: &str| chained_text(state, "amy", id, "forged");
    let state = app.current_state("club").await.unwrap();
    let forged = next(&state, "f1");
    let seq = forge(&client, &forged.event).await;
    let (passed, out, _) = replay(&["verify", "--nats-url", &url]);
    assert!(!passed);
    assert!(
        out.contains(&format!("VIOLATION event at IM_CONV seq {seq} "))
            && out.contains("signature: unsigned"),
        "{out}"
    );
}

/// A group created larger than one event holds (its creation split into
/// `Created` and `MembersAdded` events) and grown in bulk verifies: the
/// auditor's rules are the writer's, at 100,000 members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_created_in_parts_and_grown_in_bulk_verifies() {
    let stack = im_testkit::Stack::start().await;
    let url = stack.url();
    let app = stack.appender().await;
    let members = |from: usize, n: usize| -> Vec<(String, Role)> {
        (from..from + n)
            .map(|i| (format!("u{i:06}"), Role::Member))
            .collect()
    };
    let create = Action::CreateGroup {
        title: "big".into(),
        members: members(0, 5_000),
    };
    run(&app, "big", "olga", "c1", create).await;
    let add = Action::AddMembers {
        users: members(5_000, 5_000),
    };
    run(&app, "big", "olga", "c2", add).await;
    run(&app, "big", "u000001", "m1", text("hello, 10,001")).await;
    let verified = ok(&["verify", "--nats-url", &url]);
    // 5,000 + 1 in a creation split at 500 a piece (11 events), 10 adds of
    // 500, a message.
    assert!(
        verified.contains("conversation big: 22 events"),
        "{verified}"
    );
}

/// People logs under the auditor's tools: `state --user` at a position
/// equals the projector's answers there (profile, privacy, contacts,
/// requests, blocks), `export --user` holds the user's people events, and
/// `verify` names a forged people event: a request shown to a blocker,
/// chained correctly, that the rules would have hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_logs_are_stated_exported_and_verified() {
    use im_streams::people::Audience;
    let mut stack = im_testkit::Stack::start().await;
    let (url, client, topo) = (stack.url(), stack.client.clone(), stack.topology);
    let mut config = stack.projector_config("audit");
    config.fanout = false;
    let _projector = stack.projector(config).await;
    let app = stack.appender().await;
    let people = |actor: &str, id: &str, action: Action| {
        let cmd = Cmd {
            actor: actor.into(),
            client_msg_id: id.into(),
            action,
        };
        let app = app.clone();
        async move {
            match app.execute_people(&cmd, "").await.unwrap() {
                AppendOutcome::Stored { stream_seq, .. } => stream_seq,
                other => panic!("{other:?}"),
            }
        }
    };
    let name = Action::UpdateProfile {
        display_name: "李雷 👩‍👩‍👧".into(),
        avatar: None,
        status: "在开会".into(),
    };
    people("li", "p1", name).await;
    let closed = Action::SetPrivacy {
        direct_chats: Audience::Contacts,
        group_adds: Audience::Everyone,
    };
    people("li", "p2", closed).await;
    let req = |u: &str| Action::RequestContact { user: u.into() };
    people("han", "h1", req("li")).await;
    people("li", "l1", Action::AcceptContact { user: "han".into() }).await;
    people("mei", "m1", req("li")).await;
    people("li", "l2", Action::BlockUser { user: "eve".into() }).await;
    let last = people("eve", "e1", req("li")).await;

    let mut answers = Vec::new();
    for p in 0..topo.partitions {
        let request = v1::QueryRequest {
            min_position: last,
            query: Some(Query::Contacts(v1::ContactsQuery {
                user_id: "li".into(),
            })),
            ..Default::default()
        };
        let subject = im_projectors::query::partition_subject(p);
        let reply = client
            .request(subject, im_schema::encode(&request).into())
            .await
            .unwrap();
        match im_schema::decode::<v1::QueryResponse>(&reply.payload)
            .unwrap()
            .result
        {
            Some(R::Contacts(c)) => answers.extend(c.entries),
            other => panic!("{other:?}"),
        }
    }
    answers.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let live = v1::ContactsResult {
        entries: answers,
        truncated: false,
    };
    assert_eq!(
        live.entries.len(),
        3,
        "han, mei, eve (blocked; its request hidden): {live:?}"
    );
    let at = last.to_string();
    let state: serde_json::Value = serde_json::from_str(&ok(&[
        "state",
        "--user",
        "li",
        "--at-seq",
        &at,
        "--nats-url",
        &url,
    ]))
    .unwrap();
    assert_eq!(state["contacts"], json_of(&live));
    assert_eq!(state["profile"]["displayName"], "李雷 👩‍👩‍👧");
    assert_eq!(state["privacy"]["directChats"], "AUDIENCE_CONTACTS");
    // Before the block, eve is nowhere.
    let before: serde_json::Value = serde_json::from_str(&ok(&[
        "state",
        "--user",
        "li",
        "--at-seq",
        &(last - 2).to_string(),
        "--nats-url",
        &url,
    ]))
    .unwrap();
    assert_eq!(
        before["contacts"]["entries"].as_array().unwrap().len(),
        2,
        "{before}"
    );

    let export = lines(&ok(&["export", "--user", "li", "--nats-url", &url]));
    let types: Vec<&str> = export
        .iter()
        .filter_map(|r| r["headers"]["Im-Event-Type"].as_str())
        .collect();
    for t in [
        "profile_updated",
        "privacy_changed",
        "contact_accepted",
        "user_blocked",
        "contact_requested",
    ] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    ok(&["verify", "--nats-url", &url]);

    // A request shown to its blocker: the link is right, the rules hide it.
    let pair = im_streams::ids::pair_log_id("eve", "li").unwrap();
    let state = app.current_state(&pair).await.unwrap();
    let shown = v1::ConvEvent {
        conversation_id: pair.clone(),
        conv_seq: state.conv_seq + 1,
        actor: "eve".into(),
        at_ms: 1,
        prev_hash: state.last_hash.to_vec(),
        client_msg_id: "e2".into(),
        schema_version: im_schema::SCHEMA_VERSION,
        kind: Some(v1::conv_event::Kind::ContactRequested(
            v1::ContactRequested {
                user_id: "li".into(),
                hidden: false,
            },
        )),
    };
    let forged = forge(&client, &shown).await;
    let (code, out, _) = replay_code(&["verify", "--conv", &pair, "--nats-url", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("VIOLATION event at IM_CONV seq {forged} ")),
        "{out}"
    );
}

/// A nightly audit: `verify --state FILE` saves where it got to, the next
/// run reads only the events after it (with the same heads a whole run
/// finds), a forged event after the saved position is still named, and a
/// state changed, replaced, or resumed at the wrong sequence is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_takes_the_audit_up_from_its_saved_state() {
    let stack = im_testkit::Stack::start().await;
    let url = stack.url();
    let app = stack.appender().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.state");
    let state_arg = file.to_str().unwrap();
    let create = Action::CreateGroup {
        title: "night".into(),
        members: vec![("amy".into(), Role::Member)],
    };
    run(&app, "night", "olga", "c1", create).await;
    for i in 0..20 {
        run(&app, "night", "amy", &format!("m{i}"), text("day one")).await;
    }
    let first: serde_json::Value = serde_json::from_str(&ok(&[
        "verify",
        "--json",
        "--state",
        state_arg,
        "--nats-url",
        &url,
    ]))
    .unwrap();
    assert_eq!(
        (first["events"].as_u64(), first["last"].as_u64()),
        (Some(21), Some(21))
    );
    let digest = first["state"]["digest"].as_str().unwrap().to_string();

    for i in 20..30 {
        run(&app, "night", "amy", &format!("m{i}"), text("day two")).await;
    }
    run(
        &app,
        "eve",
        "amy",
        "e1",
        Action::CreateGroup {
            title: "eve".into(),
            members: vec![],
        },
    )
    .await;
    // Resumed at another sequence than the one after the saved one: refused.
    let (code, _, err) = replay_code(&[
        "verify",
        "--state",
        state_arg,
        "--from-seq",
        "5",
        "--nats-url",
        &url,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("goes on from IM_CONV seq 22"), "{err}");
    let second: serde_json::Value = serde_json::from_str(&ok(&[
        "verify",
        "--json",
        "--state",
        state_arg,
        "--from-seq",
        "22",
        "--expect-state-digest",
        &digest,
        "--nats-url",
        &url,
    ]))
    .unwrap();
    assert_eq!(
        second["events"].as_u64(),
        Some(11),
        "only the new events are read"
    );
    assert_eq!(second["first"].as_u64(), Some(22));
    assert_eq!(second["state"]["events"].as_u64(), Some(32));
    let whole: serde_json::Value =
        serde_json::from_str(&ok(&["verify", "--json", "--nats-url", &url])).unwrap();
    assert_eq!(second["conversations"], whole["conversations"]);

    // The first run's digest no longer names the file: refused.
    let (code, _, err) = replay_code(&[
        "verify",
        "--state",
        state_arg,
        "--expect-state-digest",
        &digest,
        "--nats-url",
        &url,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not the"), "{err}");

    // One byte of the state changed: refused, and the file is left as it was.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let (code, _, err) = replay_code(&["verify", "--state", state_arg, "--nats-url", &url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not match its contents"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    bytes[10] ^= 1;
    std::fs::write(&file, &bytes).unwrap();

    // A forged event after the saved position is named by the next run,
    // which then leaves the state where it was.
    let state = app.current_state("night").await.unwrap();
    let ev = chained_text(&state, "mallory", "x", "not a member").event;
    let client = async_nats::connect(&url).await.unwrap();
    let seq = forge(&client, &ev).await;
    let (code, out, _) = replay_code(&["verify", "--state", state_arg, "--nats-url", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("VIOLATION event at IM_CONV seq {seq} ")),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "the state is not moved past a violation"
    );
}

/// `verify --json` as a value.
fn verify_json(url: &str, more: &[&str]) -> serde_json::Value {
    let mut args = vec!["verify", "--json", "--nats-url", url];
    args.extend_from_slice(more);
    serde_json::from_str(&ok(&args)).unwrap()
}

/// A log audited in passes, each over a share of the conversations (as
/// one too large for `--memory-mb` is): the answer is one pass's, to the
/// digest; a
/// state saved in passes is taken up in one and the other way round; a
/// forged event is named and the state not moved past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_in_passes_answers_as_one_pass_does() {
    let stack = im_testkit::Stack::start().await;
    let url = stack.url();
    let app = stack.appender().await;
    let groups: Vec<String> = (0..16).map(|i| format!("g{i}")).collect();
    let create = || Action::CreateGroup {
        title: "g".into(),
        members: vec![("amy".into(), Role::Member)],
    };
    for g in &groups {
        run(&app, g, "olga", &format!("c{g}"), create()).await;
        run(&app, g, "amy", &format!("m0{g}"), text("first")).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (in_passes, in_one) = (dir.path().join("passes"), dir.path().join("one"));
    let (in_passes, in_one) = (in_passes.to_str().unwrap(), in_one.to_str().unwrap());

    let whole = verify_json(&url, &[]);
    let (code, out, err) = replay_code(&[
        "verify",
        "--json",
        "--passes",
        "4",
        "--state",
        in_passes,
        "--nats-url",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("verify: 4 passes over the stream"), "{err}");
    let mut passes: serde_json::Value = serde_json::from_str(&out).unwrap();
    passes.as_object_mut().unwrap().remove("state");
    assert_eq!(passes, whole);
    verify_json(&url, &["--state", in_one]);

    for g in &groups[..10] {
        run(&app, g, "amy", &format!("m1{g}"), text("later")).await;
    }
    let whole = verify_json(&url, &[]);
    // Taken up the other way round: each run reads only the new events.
    let one = verify_json(&url, &["--state", in_passes]);
    let passes = verify_json(&url, &["--state", in_one, "--passes", "3"]);
    for taken_up in [&one, &passes] {
        assert_eq!(taken_up["events"].as_u64(), Some(10));
        assert_eq!(taken_up["conversations"], whole["conversations"]);
        assert_eq!(taken_up["state"]["events"], whole["events"]);
    }
    assert_eq!(
        one["state"]["chain_digest"],
        passes["state"]["chain_digest"]
    );

    // In a conversation a pass after the first audits.
    let later = groups
        .iter()
        .find(|g| !im_replay::audit::Pass { index: 0, of: 4 }.audits_conversation(g))
        .unwrap();
    let state = app.current_state(later).await.unwrap();
    let ev = chained_text(&state, "mallory", "x", "not a member").event;
    let client = async_nats::connect(&url).await.unwrap();
    let seq = forge(&client, &ev).await;
    let before = std::fs::read(in_one).unwrap();
    let (code, out, _) = replay_code(&[
        "verify",
        "--passes",
        "4",
        "--state",
        in_one,
        "--nats-url",
        &url,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("VIOLATION event at IM_CONV seq {seq} ")),
        "{out}"
    );
    assert_eq!(
        std::fs::read(in_one).unwrap(),
        before,
        "the state is not moved"
    );
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 2, "no unfinished state file is left behind");
}
