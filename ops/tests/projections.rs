//! `imctl projections status` as a process, against a real projector.

mod common;

use std::time::{Duration, Instant};

use common::imctl;
use std::process::Command;

use im_projectors::store::Engine;
use im_streams::{Action, Appender, Command as Cmd, MessageBody};

/// `imctl projections verify --all` of instance "main": (exit code, stdout).
fn verify_all_code(url: &str) -> (i32, String) {
    let args = [
        "projections",
        "verify",
        "--all",
        "--instance",
        "main",
        "--nats-url",
        url,
    ];
    common::imctl_code(&args, &[])
}

fn verify_all(url: &str) -> (bool, String) {
    let (code, out) = verify_all_code(url);
    (code == 0, out)
}

/// One default instance name everywhere: `imctl` finds the usual projector
/// without `--instance`; a name no one answers to is told who does (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_instance_is_found_and_a_wrong_name_is_told_who_answers() {
    let (kit, _projector, _, _) = stack(3).await;
    let url = kit.url();
    let (code, out) = common::imctl_code(
        &["projections", "rebuild", "members", "--nats-url", &url],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args([
            "projections",
            "rebuild",
            "members",
            "--instance",
            "nope",
            "--nats-url",
            &url,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("instance nope did not answer (instances answering: main)"),
        "{err}"
    );
}

/// 2 when it could not run: no server to ask.
#[test]
fn verify_that_cannot_run_exits_two() {
    assert_eq!(verify_all_code("nats://127.0.0.1:1").0, 2);
}

/// A real server with the streams, a projector instance "main" and a
/// writer; `sends` messages between ann and ben. Returns the stack and the
/// last stream seq.
async fn stack(sends: usize) -> (im_testkit::Stack, im_projectors::Projector, String, u64) {
    stack_on(sends, Engine::Sled).await
}

/// The same, the projector's store kept by `engine`.
async fn stack_on(
    sends: usize,
    engine: Engine,
) -> (im_testkit::Stack, im_projectors::Projector, String, u64) {
    let mut kit = im_testkit::Stack::start().await;
    let mut config = kit.projector_config(im_projectors::DEFAULT_INSTANCE);
    config.store_engine = engine;
    let projector = kit.projector(config).await;
    let app = kit.appender().await;
    let conv = im_streams::subjects::direct_conversation_id("ann", "ben").unwrap();
    // People logs beside the chat, so every check below covers them too.
    let people = [
        ("ann", Action::RequestContact { user: "ben".into() }),
        ("ben", Action::AcceptContact { user: "ann".into() }),
        ("ann", Action::BlockUser { user: "cat".into() }),
        ("cat", Action::RequestContact { user: "ann".into() }),
        (
            "ben",
            Action::UpdateProfile {
                display_name: "Ben 本".into(),
                avatar: None,
                status: String::new(),
            },
        ),
    ];
    for (i, (actor, action)) in people.into_iter().enumerate() {
        let cmd = Cmd {
            actor: actor.into(),
            client_msg_id: format!("p{i}"),
            action,
        };
        let outcome = app.execute_people(&cmd, "").await.unwrap();
        assert!(
            matches!(outcome, im_streams::AppendOutcome::Stored { .. }),
            "{outcome:?}"
        );
    }
    let mut last = 0;
    for i in 0..sends {
        let (from, to) = if i % 2 == 0 {
            ("ann", "ben")
        } else {
            ("ben", "ann")
        };
        let cmd = Cmd {
            actor: from.into(),
            client_msg_id: format!("m{i}"),
            action: Action::Send {
                peer: Some(to.into()),
                body: MessageBody::Text(format!("message {i}")),
                meta: Default::default(),
            },
        };
        if let im_streams::AppendOutcome::Stored { stream_seq, .. } =
            app.execute(&conv, &cmd, "").await.unwrap()
        {
            last = stream_seq;
        }
    }
    (kit, projector, conv, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_projection_caught_up_with_its_digest() {
    let (kit, _projector, _conv, last) = stack(10).await;
    let server = &kit.server;
    let url = server.url();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let (ok, out) = imctl(&[
            "projections",
            "status",
            "--nats-url",
            &url,
            "--json",
            "--interval-ms",
            "100",
        ]);
        assert!(ok, "{out}");
        let out: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            out["partitions"],
            serde_json::json!([]),
            "pinned: no leases"
        );
        let rows = out["projections"].as_array().unwrap().clone();
        if rows.iter().all(|r| r["lag"] == 0) {
            break rows;
        }
        assert!(Instant::now() < deadline, "never caught up: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["projection"].as_str().unwrap())
        .collect();
    assert_eq!(names, im_projectors::projections::NAMES);
    for r in &rows {
        assert_eq!(
            (r["instance"].as_str(), r["checkpoint"].as_u64()),
            (Some("main"), Some(last)),
            "{r}"
        );
        assert_eq!(r["dead_letters"], 0);
        assert_eq!(r["digest"], "", "a plain status reads no entry");
    }
    let (ok, out) = imctl(&[
        "projections",
        "status",
        "--nats-url",
        &url,
        "--json",
        "--digest",
        "--interval-ms",
        "100",
    ]);
    assert!(ok, "{out}");
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    for r in out["projections"].as_array().unwrap() {
        assert_eq!(r["digest"].as_str().unwrap().len(), 64, "{r}");
        assert!(r["keys"].as_u64().unwrap() > 0, "{r}");
    }
    let (ok, table) = imctl(&[
        "projections",
        "status",
        "--nats-url",
        &url,
        "--interval-ms",
        "100",
    ]);
    assert!(
        ok && table.contains("history") && table.contains("LAG"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_an_intact_store_and_names_a_corrupted_key() {
    let (kit, projector, conv, last) = stack(20).await;
    let server = &kit.server;
    let url = server.url();
    let deadline = Instant::now() + Duration::from_secs(30);
    while projector
        .context
        .status_with_digests()
        .unwrap()
        .projections
        .iter()
        .any(|p| p.conv_checkpoint < last)
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (ok, out) = verify_all(&url);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(": ok ")).count(),
        7,
        "{out}"
    );
    // The scratch instance's consumers went with it: only "main"'s remain.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    for stream in ["IM_CONV", "IM_RCPT"] {
        let mut s = js.get_stream(stream).await.unwrap();
        let mut names = s.consumer_names();
        let mut left = Vec::new();
        while let Some(n) = futures::StreamExt::next(&mut names).await {
            left.push(n.unwrap());
        }
        assert!(
            left.iter().all(|n| n.starts_with("main_")),
            "{stream}: {left:?}"
        );
        let _ = s.info().await;
    }

    // One read-model entry goes bad behind the projector's back.
    let history = projector
        .context
        .projections
        .iter()
        .find(|p| p.projection.name() == "history")
        .unwrap();
    let bad_key = im_projectors::keys::key(b'h', &[conv.as_bytes(), &im_projectors::keys::seq(5)]);
    history
        .ks()
        .commit(vec![(bad_key.clone(), Some(b"garbage".to_vec()))])
        .unwrap();
    let (code, out) = verify_all_code(&url);
    assert_eq!(code, 1, "a problem found: {out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("history: MISMATCH"))
        .unwrap_or_else(|| panic!("{out}"));
    let expected = im_ops::cmd::projections::printable_key(&bad_key);
    assert!(
        line.ends_with(&format!("first differing key: {expected}")),
        "{line}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(": ok ")).count(),
        6,
        "{out}"
    );
    // The same as one JSON object, for scripts.
    let args = [
        "projections",
        "verify",
        "--all",
        "--json",
        "--nats-url",
        &url,
    ];
    let (code, out) = common::imctl_code(&args, &[]);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["mismatches"], 1);
    let bad = v["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["ok"] == false)
        .unwrap();
    assert_eq!(
        (bad["projection"].as_str(), bad["first_difference"].as_str()),
        (Some("history"), Some(expected.as_str()))
    );

    // The search index loses a document its rows hold: the rows match a
    // fresh fold, the index does not match the rows.
    let search = projector
        .context
        .projections
        .iter()
        .find(|p| p.projection.name() == "search")
        .unwrap();
    let mut doc = None;
    search
        .ks()
        .visit(&mut |k, _| {
            if doc.is_none() && im_projectors::projections::search::is_doc_key(k) {
                doc = Some(im_projectors::projections::search::doc_id_of_key(k));
            }
        })
        .unwrap();
    let (_, index) = projector.context.search.serving(search).unwrap();
    index
        .sync(&doc.unwrap(), None, &im_projectors::search::clear_only())
        .unwrap();
    index.commit(last).unwrap();
    let (code, out) = verify_all_code(&url);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("search: MISMATCH the search index (")),
        "{out}"
    );
}

/// Asks the partition of `conv`, waiting for `min_position`; any error is
/// returned as text.
async fn ask(
    client: &async_nats::Client,
    conv: &str,
    (min_position, min_rcpt_position): (u64, u64),
    query: im_schema::v1::query_request::Query,
) -> Result<im_schema::v1::query_response::Result, String> {
    use im_schema::v1::{self, query_response::Result as R};
    let topo = im_streams::Topology::new(16);
    let req = v1::QueryRequest {
        min_position,
        min_rcpt_position,
        query: Some(query),
        after_delivered: false,
    };
    let reply = client
        .request(
            im_projectors::query::partition_subject(topo.partition_of(conv)),
            im_schema::encode(&req).into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    match im_schema::decode::<v1::QueryResponse>(&reply.payload)
        .map_err(|e| e.to_string())?
        .result
    {
        Some(R::Error(e)) => Err(format!("{e:?}")),
        Some(r) => Ok(r),
        None => Err("empty answer".into()),
    }
}

/// Sends from ann to ben and, after each send, checks that history, unread,
/// dedupe and members answer at the send's position with exactly what the
/// log holds: a query that fails, or answers with an older state, panics.
/// Returns the sends and queries made, when `stop` is set.
async fn chat_and_check(
    client: async_nats::Client,
    conv: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64) {
    use im_schema::v1::{self, query_request::Query, query_response::Result as R};
    let js = async_nats::jetstream::new(client.clone());
    let topo = im_streams::definitions::read_topology(&js).await.unwrap();
    let app = Appender::new(client.clone(), topo).await.unwrap();
    let (mut sends, mut queries) = (0u64, 0u64);
    // ben reads as he goes, so his unread count stays under the cap (99)
    // where it is exact: (conv_seq read up to, its IM_RCPT position).
    let mut read = (0u64, 0u64);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let id = format!("load{sends}");
        let cmd = Cmd {
            actor: "ann".into(),
            client_msg_id: id.clone(),
            action: Action::Send {
                peer: Some("ben".into()),
                body: MessageBody::Text(format!("load {sends}")),
                meta: Default::default(),
            },
        };
        let im_streams::AppendOutcome::Stored {
            stream_seq,
            conv_seq,
            ..
        } = app.execute(&conv, &cmd, "").await.unwrap()
        else {
            panic!("send not stored")
        };
        sends += 1;
        let history = Query::History(v1::HistoryQuery {
            conversation_id: conv.clone(),
            user_id: "ben".into(),
            limit: 1,
            direction: v1::Direction::Backward as i32,
            ..Default::default()
        });
        if conv_seq - read.0 >= 90 || read.0 == 0 {
            let upto = conv_seq - 1;
            let outcome = app
                .append_receipt(&conv, "ben", "d1", im_streams::ReceiptKind::Read, upto, "")
                .await
                .unwrap();
            let im_streams::ReceiptOutcome::Stored { stream_seq, .. } = outcome else {
                panic!("read not stored: {outcome:?}")
            };
            read = (upto, stream_seq);
        }
        let at = (stream_seq, read.1);
        match ask(&client, &conv, at, history).await {
            Ok(R::History(page)) => assert_eq!(
                page.entries[0].event.as_ref().unwrap().conv_seq,
                conv_seq,
                "history answered an older state"
            ),
            other => panic!("history query failed: {other:?}"),
        }
        let unread = Query::Unread(v1::UnreadQuery {
            user_id: "ben".into(),
            conversation_id: conv.clone(),
        });
        match ask(&client, &conv, at, unread).await {
            // Every message since ben's read is ann's.
            Ok(R::Unread(u)) => assert_eq!(
                (u.total, u.total_capped),
                (conv_seq - read.0, false),
                "unread answered an older state"
            ),
            other => panic!("unread query failed: {other:?}"),
        }
        let dedupe = Query::Dedupe(v1::DedupeQuery {
            sender: "ann".into(),
            client_msg_id: id,
            conversation_id: conv.clone(),
        });
        match ask(&client, &conv, at, dedupe).await {
            Ok(R::Dedupe(d)) => assert!(d.found, "dedupe answered an older state"),
            other => panic!("dedupe query failed: {other:?}"),
        }
        let members = Query::Members(v1::MembersQuery {
            conversation_id: conv.clone(),
            user_id: "ann".into(),
            ..Default::default()
        });
        match ask(&client, &conv, at, members).await {
            Ok(R::Members(m)) => assert_eq!(m.members.len(), 2),
            other => panic!("members query failed: {other:?}"),
        }
        queries += 4;
    }
    (sends, queries)
}

fn generations(projector: &im_projectors::Projector) -> Vec<u64> {
    projector
        .context
        .status_with_digests()
        .unwrap()
        .projections
        .iter()
        .map(|p| p.generation)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_all_under_load_never_answers_older_state_and_matches_verify() {
    rebuilt_under_load_on(Engine::Sled).await
}

/// The same on a fjall store; verify folds afresh on sled, so the digests
/// it matches are sled's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fjall_store_rebuilt_under_load_matches_a_fold_on_sled() {
    rebuilt_under_load_on(Engine::Fjall).await
}

async fn rebuilt_under_load_on(engine: Engine) {
    let (kit, projector, conv, _) = stack_on(2_000, engine).await;
    let server = &kit.server;
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(chat_and_check(client, conv.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let u = url.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        imctl(&[
            "projections",
            "rebuild",
            "--all",
            "--instance",
            "main",
            "--nats-url",
            &u,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    eprintln!("{out}");
    // The load kept going through the whole rebuild and its swap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sends, queries) = load.await.expect("a query failed or answered older state");
    eprintln!("during the rebuild: {sends} sends, {queries} queries, none failed or went back");
    assert!(sends > 0 && queries > 0);
    for name in im_projectors::projections::NAMES {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{name}: rebuilt generation 1 at conv "))),
            "{name}: {out}"
        );
    }
    assert_eq!(generations(&projector), vec![1; 7]);

    let (ok, verified) = verify_all(&url);
    assert!(ok, "{verified}");
    let live = projector.context.status_with_digests().unwrap();
    for p in &live.projections {
        assert!(
            verified.contains(&format!("{}: ok {}", p.name, p.digest)),
            "{}: {verified}",
            p.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_rebuild_leaves_the_serving_keyspaces_alone() {
    use std::io::BufRead;
    let (kit, projector, _conv, _) = stack(3_000).await;
    let server = &kit.server;
    let url = server.url();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args([
            "projections",
            "rebuild",
            "--all",
            "--instance",
            "main",
            "--nats-url",
            &url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("rebuilding ") {
            break;
        }
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{rest:?}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": cancelled")).count(),
        7,
        "{stdout}"
    );
    assert_eq!(generations(&projector), vec![0; 7]);
    let (ok, verified) = verify_all(&url);
    assert!(ok, "the serving keyspaces changed: {verified}");
    // And the next rebuild runs to its swap.
    let (ok, out) = imctl(&[
        "projections",
        "rebuild",
        "history",
        "--instance",
        "main",
        "--nats-url",
        &url,
    ]);
    assert!(ok && out.contains("history: rebuilt generation 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_rewrites_one_conversation_from_its_subject() {
    use im_projectors::keys::{key, seq};
    let (kit, projector, conv, last) = stack(20).await;
    let server = &kit.server;
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    // Caught up, then two entries go bad behind the projector's back: one
    // overwritten, one stray.
    let members = im_schema::v1::query_request::Query::Members(im_schema::v1::MembersQuery {
        conversation_id: conv.clone(),
        ..Default::default()
    });
    ask(&client, &conv, (last, 0), members).await.unwrap();
    let history = projector
        .context
        .projections
        .iter()
        .find(|p| p.projection.name() == "history")
        .unwrap();
    let (bad, stray) = (
        key(b'h', &[conv.as_bytes(), &seq(5)]),
        key(b'h', &[conv.as_bytes(), &seq(999)]),
    );
    history
        .ks()
        .commit(vec![
            (bad, Some(b"garbage".to_vec())),
            (stray, Some(b"stray".to_vec())),
        ])
        .unwrap();

    let (ok, _) = imctl(&[
        "projections",
        "repair",
        "--conv",
        "not valid",
        "--nats-url",
        &url,
        "--instance",
        "main",
    ]);
    assert!(!ok, "an invalid conversation id was accepted");
    let (ok, out) = imctl(&[
        "projections",
        "repair",
        "--conv",
        &conv,
        "--nats-url",
        &url,
        "--instance",
        "main",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("history: 21 events replayed, 1 entries written, 1 deleted"),
        "{out}"
    );
    assert!(
        out.contains("members: 21 events replayed, 0 entries written, 0 deleted"),
        "{out}"
    );
    let (ok, verified) = verify_all(&url);
    assert!(ok, "{verified}");

    // Control queries act on one instance's store: a partition subject,
    // which any replica may answer, refuses them.
    let repair = im_schema::v1::query_request::Query::Repair(im_schema::v1::RepairQuery {
        conversation_id: conv.clone(),
    });
    let refused = ask(&client, &conv, (0, 0), repair).await.unwrap_err();
    assert!(refused.contains("instance subject"), "{refused}");
}

/// `imctl projections dead-letters`: listed per projection (exit 1 while
/// any remains); `--replay` removes those whose events fold now and keeps
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_and_replayed() {
    let (kit, projector, conv, last) = stack(3).await;
    let url = kit.url();
    // Bytes that are no event: a dead letter for good.
    let js = async_nats::jetstream::new(kit.client.clone());
    let junk = kit.topology.conv_subject("junk").unwrap();
    let junk_seq = js
        .publish(junk, "not protobuf".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    // A good event an older build could not read: recorded as a letter.
    let history = projector
        .context
        .projections
        .iter()
        .find(|p| p.projection.name() == "history")
        .unwrap();
    let letter = im_schema::v1::DeadLetter {
        stream: "IM_CONV".into(),
        stream_seq: last,
        subject: kit.topology.conv_subject(&conv).unwrap(),
        code: "schema_too_new".into(),
        reason: "schema version 2 is newer than 1".into(),
    };
    let key = im_projectors::runner::dead_letter_key(im_projectors::runner::Source::Conv, last);
    history
        .ks()
        .commit(vec![(key, Some(im_schema::encode(&letter)))])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = |args: &[&str]| {
        let mut all = vec!["projections", "dead-letters", "--json", "--nats-url", &url];
        all.extend_from_slice(args);
        let (code, out) = common::imctl_code(&all, &[]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        (code, v)
    };
    let letters_of = |v: &serde_json::Value, name: &str| -> Vec<String> {
        let p = v["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        p["letters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| l["streamSeq"].as_str().unwrap().to_string())
            .collect()
    };
    let (code, v) = loop {
        let (code, v) = list(&[]);
        // Each projection's store takes the batch in turn: wait for all.
        let junk = junk_seq.to_string();
        let everywhere = im_projectors::projections::NAMES
            .iter()
            .all(|name| letters_of(&v, name).contains(&junk));
        if everywhere || Instant::now() > deadline {
            break (code, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, 1, "letters left: a problem found");
    assert_eq!(
        letters_of(&v, "history"),
        [last.to_string(), junk_seq.to_string()]
    );
    assert_eq!(letters_of(&v, "members"), [junk_seq.to_string()]);
    let (code, v) = list(&["history", "--replay"]);
    assert_eq!(code, 1, "the junk stays: {v}");
    let history_now = &v["projections"][0];
    assert_eq!(
        (
            history_now["name"].as_str(),
            history_now["replayed"].as_u64()
        ),
        (Some("history"), Some(1))
    );
    assert_eq!(letters_of(&v, "history"), [junk_seq.to_string()]);
    let (code, _) = common::imctl_code(
        &["projections", "dead-letters", "nope", "--nats-url", &url],
        &[],
    );
    assert_eq!(code, 2, "no such projection: could not run");
}

/// `imctl projections rebuild --attach` follows a rebuild already running
/// (here one started from the ops page's API, the instance's query), to
/// its swap; with none running it says so and exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_rebuild_can_be_followed_from_another_terminal() {
    let (kit, projector, _conv, _) = stack(300).await;
    let url = kit.url();
    let attach = [
        "projections",
        "rebuild",
        "--all",
        "--attach",
        "--nats-url",
        &url,
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(attach)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no rebuild of"), "{err}");
    // Started elsewhere; followed from here. Its swap waits for the
    // projection's batch lock, held here until the follower is attached.
    let history = projector
        .context
        .projections
        .iter()
        .find(|p| p.projection.name() == "history")
        .unwrap();
    let held = history.batch_lock.lock().await;
    let client = kit.client.clone();
    let started =
        im_ops::cmd::projections::rebuild::start(&client, "main", vec!["history".into()], 0)
            .await
            .unwrap();
    assert_eq!(started.len(), 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args([
            "projections",
            "rebuild",
            "history",
            "--attach",
            "--nats-url",
            &url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let attached = std::io::BufRead::lines(stderr)
        .map_while(Result::ok)
        .find(|l| l.starts_with("following the rebuild of history"));
    assert!(attached.is_some(), "never attached");
    drop(held);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("history: rebuilt generation 1"), "{stdout}");
}

/// A command's output is what it says: no connection chatter from the NATS
/// client, and no warning from verify's own scratch projector going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_print_their_answer_and_no_noise() {
    let (kit, projector, _conv, last) = stack(5).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while projector
        .context
        .status_with_digests()
        .unwrap()
        .projections
        .iter()
        .any(|p| p.conv_checkpoint < last)
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = kit.url();
    for args in [
        &["projections", "verify", "--all", "--nats-url", &url][..],
        &["projections", "status", "--nats-url", &url][..],
        &["streams", "status", "--nats-url", &url][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imctl"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        for noise in ["INFO", "WARN", "async_nats", "consumer deleted"] {
            assert!(
                !stderr.contains(noise),
                "{args:?} printed {noise:?}: {stderr}"
            );
        }
    }
}
