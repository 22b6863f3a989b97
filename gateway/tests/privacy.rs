//! Content encryption and erasure through the whole stack (docs/privacy.md):
//! NATS authorization on, a KEK, a projector and a gateway. Clients see
//! plaintext over WebSocket and HTTP while the log holds ciphertext;
//! after an erasure the user's messages show as erased to every member,
//! search forgets them, their profile is gone, other users' messages are
//! untouched, and no byte of their text is left in the data directories.

mod common;

use common::*;
use im_gateway::Limits;
use im_schema::v1::{self, conv_event::Kind};
use im_streams::content::{destroy, Policy};
use im_streams::conversation::{Action, Command, Role};
use im_streams::AppendOutcome;

/// A unique word of ann's: searched for, then grepped for after erasure.
const MARKER: &str = "zqxmarkerann";
/// In the group's title, which stays clear: proves the grep can see.
const CLEAR: &str = "zqxcleartitle";

async fn run(app: &im_streams::Appender, conv: &str, actor: &str, id: &str, action: Action) -> u64 {
    let cmd = Command {
        actor: actor.into(),
        client_msg_id: id.into(),
        action,
    };
    let out = match conv.is_empty() {
        true => app.execute_people(&cmd, "").await.unwrap(),
        false => app.execute(conv, &cmd, "").await.unwrap(),
    };
    let AppendOutcome::Stored { stream_seq, .. } = out else {
        panic!("{out:?}")
    };
    stream_seq
}

fn history_texts(body: &str) -> Vec<(String, Result<String, v1::SealedState>)> {
    let page: v1::HistoryPage = im_schema::from_json(body).unwrap();
    page.entries
        .into_iter()
        .filter_map(|e| {
            let ev = e.event?;
            let Some(Kind::MessageSent(m)) = ev.kind else {
                return None;
            };
            let shown = match (m.body, m.sealed) {
                (Some(v1::message_sent::Body::Text(t)), None) => Ok(t),
                (_, Some(s)) => Err(s.state()),
                other => panic!("{other:?}"),
            };
            Some((ev.actor, shown))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shows_erased_to_every_member_and_leaves_no_plaintext_anywhere() {
    let s = Stack::start_encrypted(Limits::default(), Policy::default()).await;
    let gw = s.gateways[0];
    let app = s.states[0].appender.clone();
    let title = format!("team {CLEAR}");
    let members = vec![
        ("ann".to_string(), Role::Member),
        ("bob".to_string(), Role::Member),
    ];
    run(
        &app,
        "team",
        "own",
        "c1",
        Action::CreateGroup { title, members },
    )
    .await;
    let name = Action::UpdateProfile {
        display_name: "Ann Example".into(),
        avatar: None,
        status: "around".into(),
    };
    run(&app, "", "ann", "p1", name).await;

    let mut bob = connect(gw, "bob", Wire::Json).await;
    let mut ann = connect(gw, "ann", Wire::Proto).await;
    ann.send(text_send_in("team", "m1", &format!("hello {MARKER} there")))
        .await;
    let ack = ann.recv_until(ack_of).await;
    assert_eq!(ack.status, v1::AckStatus::Stored as i32, "{ack:?}");
    // Bob's device gets it opened.
    let delivered = bob.recv_until(deliver_of).await;
    let Some(Kind::MessageSent(m)) = delivered.event.and_then(|e| e.kind) else {
        panic!()
    };
    assert_eq!(
        m.body,
        Some(v1::message_sent::Body::Text(format!(
            "hello {MARKER} there"
        )))
    );
    assert!(m.sealed.is_none());
    bob.send(text_send_in("team", "m2", "bob stays")).await;
    let pos = bob.recv_until(ack_of).await.stream_seq;
    wait_projected(&s, "team", pos).await;

    // The log holds ciphertext only.
    for stored in s.log_of("team").await {
        assert!(!stored
            .payload
            .windows(MARKER.len())
            .any(|w| w == MARKER.as_bytes()));
    }
    let bob_token = token("bob");
    let (status, body) = http_get(
        gw,
        &format!("/v1/history?conversationId=team&minPosition={pos}"),
        &bob_token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        history_texts(&body),
        [
            ("ann".to_string(), Ok(format!("hello {MARKER} there"))),
            ("bob".to_string(), Ok("bob stays".to_string())),
        ]
    );
    let search = format!("/v1/search/messages?q={MARKER}&minPosition={pos}");
    let (status, body) = http_get(gw, &search, &bob_token).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(MARKER), "found before: {body}");
    let profiles = format!("/v1/users/profiles?ids=ann&minPosition={pos}");
    let (_, body) = http_get(gw, &profiles, &bob_token).await;
    assert!(body.contains("Ann Example"), "{body}");

    // The operator erases ann.
    let js = async_nats::jetstream::new(
        s.kit
            .connect_as(im_streams::identities::Component::Operator)
            .await,
    );
    let done = destroy::erase(&js, &app, "ann", "operator test")
        .await
        .unwrap();
    assert_eq!(done.keys, 2, "her messages' key and her profile's");
    let after = done.stream_seq;
    wait_projected(&s, "team", after).await;

    let history = format!("/v1/history?conversationId=team&minPosition={after}");
    for user in ["bob", "own"] {
        let (status, body) = http_get(gw, &history, &token(user)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            history_texts(&body),
            [
                ("ann".to_string(), Err(v1::SealedState::Erased)),
                ("bob".to_string(), Ok("bob stays".to_string())),
            ],
            "{user}"
        );
    }
    let search = format!("/v1/search/messages?q={MARKER}&minPosition={after}");
    let (status, body) = http_get(gw, &search, &bob_token).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains(MARKER) && !body.contains("\"conversationId\""),
        "forgotten: {body}"
    );
    let (_, body) = http_get(
        gw,
        &format!("/v1/users/profiles?ids=ann&minPosition={after}"),
        &bob_token,
    )
    .await;
    assert!(!body.contains("Ann Example"), "{body}");
    let (_, body) = http_get(gw, "/v1/conversations", &bob_token).await;
    assert!(body.contains("bob stays"), "the preview is bob's: {body}");

    // No byte of ann's text in the NATS files, the projector's store or
    // its index; the clear title is found, so the grep sees.
    let mut dirs = s.kit.store_dirs();
    dirs.push(s.kit.server.store_dir());
    assert!(!im_testkit::files_containing(&dirs, CLEAR.as_bytes()).is_empty());
    let left = im_testkit::files_containing(&dirs, MARKER.as_bytes());
    assert!(left.is_empty(), "plaintext left in {left:?}");

    // What ann writes now is hers again, readable.
    ann.send(text_send_in("team", "m3", "after erasure")).await;
    let pos = ann.recv_until(ack_of).await.stream_seq;
    wait_projected(&s, "team", pos).await;
    let (_, body) = http_get(
        gw,
        &format!("/v1/history?conversationId=team&minPosition={pos}"),
        &bob_token,
    )
    .await;
    assert_eq!(
        history_texts(&body)[2],
        ("ann".to_string(), Ok("after erasure".to_string()))
    );
}
