//! Search against the real stack (nats-server, the projector with its
//! tantivy index, the gateway over HTTP): who finds what (members at the
//! message's position only), edits and recalls reflected at once, Chinese
//! and English, paging without repeats or gaps, conversations and people,
//! and bad queries refused with a reason and nothing changed; with NATS
//! authorization on and two gateways.

mod common;

use common::*;
use im_gateway::Limits;
use im_streams::conversation::{Action, Command, MessageBody, Role};
use im_streams::AppendOutcome;

/// Percent-encodes a query value.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Chat {
    stack: Stack,
    app: std::sync::Arc<im_streams::Appender>,
    n: u32,
    last: u64,
}

impl Chat {
    async fn run(&mut self, conv: &str, actor: &str, action: Action) -> u64 {
        self.n += 1;
        let cmd = Command {
            actor: actor.into(),
            client_msg_id: format!("c{}", self.n),
            action,
        };
        let out = match im_streams::ids::is_people_log(conv) || conv.is_empty() {
            true => self.app.execute_people(&cmd, "").await.unwrap(),
            false => self.app.execute(conv, &cmd, "").await.unwrap(),
        };
        let AppendOutcome::Stored {
            stream_seq,
            conv_seq,
            ..
        } = out
        else {
            panic!("{cmd:?}: {out:?}")
        };
        self.last = stream_seq;
        conv_seq
    }

    async fn send(&mut self, conv: &str, actor: &str, text: &str) -> u64 {
        let body = MessageBody::Text(text.into());
        let action = Action::Send {
            peer: None,
            body,
            meta: Default::default(),
        };
        self.run(conv, actor, action).await
    }

    /// `GET /v1/search/<what>?q=...&<extra>` at the latest write: (status,
    /// body).
    async fn get(&self, user: &str, what: &str, q: &str, extra: &str) -> (u16, serde_json::Value) {
        let path = format!(
            "/v1/search/{what}?q={}&minPosition={}{extra}",
            enc(q),
            self.last
        );
        let gateway = self.stack.gateways[self.n as usize % self.stack.gateways.len()];
        let (status, body) = http_get(gateway, &path, &token(user)).await;
        let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// The texts of a user's message hits, newest first.
    async fn found(&self, user: &str, q: &str) -> Vec<String> {
        let (status, body) = self.get(user, "messages", q, "").await;
        assert_eq!(status, 200, "{q}: {body}");
        texts(&body)
    }
}

fn texts(page: &serde_json::Value) -> Vec<String> {
    page["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .map(|h| {
                    h["snippet"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["text"].as_str().unwrap())
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The shipped NATS authorization on (each part on its own identity,
/// events signed), and two gateways: searches go to one or the other.
async fn chat() -> Chat {
    let mut stack = Stack::start_secured(Limits::default()).await;
    stack.add_gateway(Limits::default()).await;
    let app = appender(&stack).await;
    let mut chat = Chat {
        stack,
        app,
        n: 0,
        last: 0,
    };
    let members = vec![
        ("alice".to_string(), Role::Admin),
        ("bob".to_string(), Role::Member),
    ];
    let title = "Team 项目".into();
    chat.run("team", "owner", Action::CreateGroup { title, members })
        .await;
    chat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_find_only_what_they_could_read_edits_and_recalls_at_once() {
    let mut c = chat().await;
    let m1 = c.send("team", "alice", "今天开会吗？").await;
    let dave = Action::AddMember {
        user: "dave".into(),
        role: Role::Member,
    };
    c.run("team", "owner", dave).await;
    c.send("team", "bob", "Meetings moved to Friday").await;
    let bob = Action::RemoveMember { user: "bob".into() };
    c.run("team", "owner", bob).await;
    c.send("team", "alice", "planning after bob left").await;

    assert_eq!(c.found("alice", "开会 ").await, ["今天开会吗？"]);
    let (_, page) = c.get("alice", "messages", "开会", "").await;
    let marked: Vec<bool> = page["hits"][0]["snippet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["hit"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(marked, [false, true, false], "{page}");
    // Joined later: nothing from before.
    assert!(c.found("dave", "开会 ").await.is_empty());
    assert_eq!(
        c.found("dave", "meeting ").await,
        ["Meetings moved to Friday"]
    );
    // Removed: what came before, nothing after.
    assert_eq!(
        c.found("bob", "meeting ").await,
        ["Meetings moved to Friday"]
    );
    assert!(c.found("bob", "planning ").await.is_empty());
    assert_eq!(c.found("alice", "plan").await, ["planning after bob left"]);
    // Never a member.
    assert!(c.found("mallory", "meeting ").await.is_empty());

    // An edit and a recall, searched right after their writes.
    let edit = Action::Edit {
        conv_seq: m1,
        text: "lunch at noon instead".into(),
    };
    c.run("team", "alice", edit).await;
    assert!(c.found("alice", "开会 ").await.is_empty());
    assert_eq!(c.found("alice", "lunch ").await, ["lunch at noon instead"]);
    let m3 = c.send("team", "alice", "secret budget numbers").await;
    assert_eq!(c.found("dave", "budget ").await, ["secret budget numbers"]);
    c.run("team", "alice", Action::Recall { conv_seq: m3 })
        .await;
    assert!(c.found("dave", "budget ").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_run_newest_first_without_repeats_or_gaps() {
    let mut c = chat().await;
    // Two conversations (two partitions, most likely) interleaved.
    let members = vec![("alice".to_string(), Role::Member)];
    let title = "other".into();
    c.run("side", "bob", Action::CreateGroup { title, members })
        .await;
    for i in 0..40 {
        let conv = if i % 3 == 0 { "side" } else { "team" };
        c.send(conv, "alice", &format!("note number {i}")).await;
    }
    for order in ["", "&order=relevance"] {
        let (mut seen, mut next) = (Vec::new(), String::new());
        for _ in 0..20 {
            let extra = format!(
                "&limit=7{order}{}",
                match next.as_str() {
                    "" => String::new(),
                    n => format!("&before={n}"),
                }
            );
            let (status, page) = c.get("alice", "messages", "note ", &extra).await;
            assert_eq!(status, 200, "{page}");
            seen.extend(texts(&page));
            next = page["next"].as_str().unwrap_or_default().to_string();
            if next.is_empty() {
                break;
            }
        }
        // By relevance too, one conversation's hits page on.
        if !order.is_empty() {
            let (_, page) = c
                .get(
                    "alice",
                    "messages",
                    "note ",
                    &format!("&limit=5{order}&conversationId=side"),
                )
                .await;
            assert_eq!(page["next"], "r5", "{page}");
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((seen.len(), unique.len()), (40, 40), "{order}: {seen:?}");
        if order.is_empty() {
            assert_eq!(seen[0], "note number 39");
            assert_eq!(seen[39], "note number 0");
        }
    }
    // One conversation only.
    let (_, page) = c
        .get("alice", "messages", "note", "&conversationId=side&limit=50")
        .await;
    assert_eq!(texts(&page).len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_by_title_and_people_by_name_or_id() {
    let mut c = chat().await;
    let (status, page) = c.get("alice", "conversations", "项目", "").await;
    assert_eq!(
        (status, texts(&page)),
        (200, vec!["Team 项目".to_string()]),
        "{page}"
    );
    assert!(texts(&c.get("carol", "conversations", "team", "").await.1).is_empty());

    let name = Action::UpdateProfile {
        display_name: "Alice 爱丽丝".into(),
        avatar: None,
        status: String::new(),
    };
    c.run("", "alice", name).await;
    c.run(
        "",
        "bob",
        Action::RequestContact {
            user: "alice".into(),
        },
    )
    .await;
    c.run("", "alice", Action::AcceptContact { user: "bob".into() })
        .await;
    let users = |page: &serde_json::Value| -> Vec<String> {
        page["hits"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|h| h["senderId"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    for q in ["爱丽", "Alice", "ali"] {
        let (status, page) = c.get("bob", "users", q, "").await;
        assert_eq!(
            (status, users(&page)),
            (200, vec!["alice".to_string()]),
            "{q}: {page}"
        );
    }
    // Not a contact: found by the exact id only.
    assert!(users(&c.get("carol", "users", "爱丽", "").await.1).is_empty());
    assert_eq!(
        users(&c.get("carol", "users", "alice", "").await.1),
        ["alice"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_a_clear_400_and_change_nothing() {
    let mut c = chat().await;
    c.send("team", "alice", "hello").await;
    let before = c.stack.conv_messages().await;
    let long = "x".repeat(10_000);
    let cases = [
        ("", "", "no letters or digits"),
        ("  ?! ", "", "no letters or digits"),
        (long.as_str(), "", "longer than 256 bytes"),
        ("\"unbalanced", "", "quote is not closed"),
        ("hello", "&before=zzz", "not a cursor"),
        ("hello", "&before=r10", "not a cursor"),
        ("hello", "&limit=0", "limit"),
        ("hello", "&limit=51", "limit"),
        ("hello", "&order=oldest", "newest or relevance"),
        ("hello", "&conversationId=a%20b", "conversationId"),
        ("hello", "&nonsense=1", "unknown field"),
    ];
    for (q, extra, says) in cases {
        let (status, body) = c.get("alice", "messages", q, extra).await;
        assert_eq!(status, 400, "{q:.20} {extra}: {body}");
        assert!(body.to_string().contains(says), "{q:.20} {extra}: {body}");
    }
    // A position no write produced: past the log's end.
    let path = "/v1/search/messages?q=hello&minPosition=999999";
    let (status, body) = http_get(c.stack.gateways[0], path, &token("alice")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("past the log's end"), "{body}");
    assert_eq!(c.stack.conv_messages().await, before);
    assert_eq!(c.found("alice", "hello").await, ["hello"]);
}
