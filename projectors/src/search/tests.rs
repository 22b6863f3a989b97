//! The search projection folded from events made by the real rules, its
//! index drained from the rows, and queries run against both: who finds
//! what (the spans), what edits and recalls leave, the languages.

use im_schema::v1;
use im_streams::conversation::{Action, MessageBody, Role};

use super::find::{self, FindError};
use super::indexer::drain_all;
use super::{rows_digest, SearchIndex};
use crate::projections::search::Search;
use crate::projections::testing::{fold_all, scenario, MemKeyspace, Sim};

struct Fixture {
    ks: MemKeyspace,
    index: SearchIndex,
    _dir: tempfile::TempDir,
}

fn indexed(sim: &Sim) -> Fixture {
    let ks = MemKeyspace::default();
    fold_all(&Search, &ks, &sim.log);
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    drain_all(&ks, &index, &super::clear_only()).unwrap();
    Fixture {
        ks,
        index,
        _dir: dir,
    }
}

fn ask(fx: &Fixture, user: &str, q: &str) -> Result<v1::SearchResult, FindError> {
    find::run(
        &fx.index,
        &fx.ks,
        &v1::SearchQuery {
            user_id: user.into(),
            q: q.into(),
            limit: 50,
            ..Default::default()
        },
        (&|_| true, &super::clear_only()),
    )
}

/// The texts a user finds, newest first.
fn found(fx: &Fixture, user: &str, q: &str) -> Vec<String> {
    ask(fx, user, q)
        .unwrap()
        .hits
        .iter()
        .map(|h| h.snippet.iter().map(|p| p.text.as_str()).collect())
        .collect()
}

#[test]
fn members_find_what_they_could_read_and_nothing_else() {
    // g1: owner, alice, bob, carol; "hello" "hi" "typo"->"fixed"; dave
    // added; "welcome dave" recalled; carol removed; "bye carol"; dave
    // blacklisted (removed); "last".
    let fx = indexed(&scenario());
    assert_eq!(found(&fx, "alice", "hello "), ["hello"]);
    // A member who joined later does not find what came before.
    assert!(found(&fx, "dave", "hello ").is_empty());
    // A removed member keeps what came before, and nothing after.
    assert_eq!(found(&fx, "carol", "hello "), ["hello"]);
    assert!(found(&fx, "carol", "bye ").is_empty());
    assert_eq!(found(&fx, "alice", "bye "), ["bye carol"]);
    assert_eq!(found(&fx, "dave", "bye "), ["bye carol"]);
    // Blacklisted (removed from the group): nothing after.
    assert!(found(&fx, "dave", "last ").is_empty());
    assert_eq!(found(&fx, "bob", "last "), ["last"]);
    // Never a member: nothing.
    assert!(found(&fx, "mallory", "hello ").is_empty());
}

#[test]
fn edits_replace_the_text_and_recalls_remove_it() {
    let fx = indexed(&scenario());
    assert!(found(&fx, "alice", "typo ").is_empty());
    assert_eq!(found(&fx, "alice", "fixed "), ["fixed"]);
    assert!(found(&fx, "alice", "welcome ").is_empty());
    assert_eq!(
        fx.index.digest().unwrap(),
        rows_digest(&fx.ks, &super::clear_only()).unwrap()
    );
}

#[test]
fn a_recall_folded_but_not_yet_indexed_is_never_shown() {
    let mut sim = scenario();
    let fx = indexed(&sim);
    let m = sim.send("g1", "alice", "secret plan");
    fold_all(&Search, &fx.ks, &sim.log[sim.log.len() - 1..]);
    drain_all(&fx.ks, &fx.index, &super::clear_only()).unwrap();
    assert_eq!(found(&fx, "bob", "secret "), ["secret plan"]);
    let before = sim.log.len();
    sim.run("g1", "alice", Action::Recall { conv_seq: m });
    fold_all(&Search, &fx.ks, &sim.log[before..]);
    // The index still holds it; the row is gone, so the hit is dropped.
    assert!(found(&fx, "bob", "secret ").is_empty());
}

fn chat(texts: &[&str]) -> Fixture {
    let mut sim = Sim::default();
    let members = vec![("bob".to_string(), Role::Member)];
    let title = "项目 Planning".into();
    sim.run("g", "ann", Action::CreateGroup { title, members });
    for t in texts {
        sim.send("g", "ann", t);
    }
    indexed(&sim)
}

#[test]
fn chinese_and_english_words_phrases_and_prefixes() {
    let fx = chat(&[
        "今天开会吗？",
        "Meetings moved to Friday",
        "我们召开会议",
        "the quick brown fox",
        "brown quick fox",
        "你好，世界 hello",
    ]);
    assert_eq!(found(&fx, "bob", "开会 "), ["我们召开会议", "今天开会吗？"]);
    assert_eq!(found(&fx, "bob", "今天开会 "), ["今天开会吗？"]);
    assert_eq!(found(&fx, "bob", "meeting "), ["Meetings moved to Friday"]);
    assert_eq!(found(&fx, "bob", "MOVE "), ["Meetings moved to Friday"]);
    // As typed: the last word is a prefix.
    assert_eq!(found(&fx, "bob", "Fri"), ["Meetings moved to Friday"]);
    assert_eq!(found(&fx, "bob", "meeti"), ["Meetings moved to Friday"]);
    assert_eq!(found(&fx, "bob", "召"), ["我们召开会议"]);
    // One character: also where a run ends, typed or not.
    assert_eq!(found(&fx, "bob", "吗 "), ["今天开会吗？"]);
    assert_eq!(found(&fx, "bob", "议"), ["我们召开会议"]);
    assert_eq!(found(&fx, "bob", "开会吗").len(), 1);
    // Phrases reaching past a run of CJK characters.
    assert_eq!(found(&fx, "bob", "你好，世界 "), ["你好，世界 hello"]);
    assert_eq!(found(&fx, "bob", "\"世界 hello\""), ["你好，世界 hello"]);
    assert_eq!(
        found(&fx, "bob", "\"quick brown\""),
        ["the quick brown fox"]
    );
    assert_eq!(found(&fx, "bob", "brown quick ").len(), 2);
    let hits = ask(&fx, "bob", "开会 ").unwrap().hits;
    let parts = &hits.last().unwrap().snippet;
    let marked: Vec<(&str, bool)> = parts.iter().map(|p| (p.text.as_str(), p.hit)).collect();
    assert_eq!(marked, [("今天", false), ("开会", true), ("吗？", false)]);
}

#[test]
fn groups_are_found_by_title_by_their_members_only() {
    let fx = chat(&[]);
    let title = |user: &str, q: &str| {
        find::run(
            &fx.index,
            &fx.ks,
            &v1::SearchQuery {
                user_id: user.into(),
                q: q.into(),
                kind: v1::SearchDocKind::Title as i32,
                limit: 10,
                ..Default::default()
            },
            (&|_| true, &super::clear_only()),
        )
        .unwrap()
        .hits
        .len()
    };
    assert_eq!(title("bob", "项目"), 1);
    assert_eq!(title("bob", "plan"), 1);
    assert_eq!(title("eve", "项目"), 0);
}

#[test]
fn pages_newest_first_without_repeats_or_gaps() {
    let texts: Vec<String> = (0..23).map(|i| format!("note number {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let fx = chat(&refs);
    let mut before = 0;
    let mut seen = Vec::new();
    loop {
        let page = find::run(
            &fx.index,
            &fx.ks,
            &v1::SearchQuery {
                user_id: "bob".into(),
                q: "note ".into(),
                limit: 5,
                before_position: before,
                ..Default::default()
            },
            (&|_| true, &super::clear_only()),
        )
        .unwrap();
        seen.extend(page.hits.iter().map(|h| h.stream_seq));
        if page.floor == 0 {
            break;
        }
        before = page.hits.last().unwrap().stream_seq;
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 23);
}

#[test]
fn bad_queries_are_refused() {
    let fx = chat(&["x"]);
    for q in ["", "  ", "\"open", &"w".repeat(10_000)] {
        assert!(
            matches!(ask(&fx, "bob", q), Err(FindError::Query(_))),
            "{q:?}"
        );
    }
}

#[test]
fn media_messages_are_found_by_name_and_caption() {
    let mut sim = Sim::default();
    let members = vec![("bob".to_string(), Role::Member)];
    sim.run(
        "g",
        "ann",
        Action::CreateGroup {
            title: "g".into(),
            members,
        },
    );
    let media = v1::MediaRef {
        media_id: "m1".into(),
        mime: "application/pdf".into(),
        ..Default::default()
    };
    sim.run(
        "g",
        "ann",
        Action::Send {
            peer: None,
            body: MessageBody::Media(media),
            meta: [
                ("name".to_string(), "budget-2027.pdf".to_string()),
                ("caption".to_string(), "季度预算".to_string()),
            ]
            .into(),
        },
    );
    let fx = indexed(&sim);
    assert_eq!(found(&fx, "bob", "budget ").len(), 1);
    assert_eq!(found(&fx, "bob", "预算 ").len(), 1);
}

#[test]
fn an_erased_users_words_leave_the_index_files() {
    let mut sim = scenario();
    sim.send("g1", "alice", "zqxalicewords here");
    sim.send("g1", "owner", "zqxownerwords here");
    // A group alice made: its title is no content of hers.
    let titled = Action::CreateGroup {
        title: "zqxtitleword".into(),
        members: vec![("owner".into(), Role::Member)],
    };
    sim.run("ga", "alice", titled);
    let fx = indexed(&sim);
    assert_eq!(found(&fx, "owner", "zqxalicewords").len(), 1);
    let log = im_streams::ids::user_log_id("alice").unwrap();
    let erase = Action::EraseUser {
        requested_by: "operator".into(),
    };
    sim.run(&log, "alice", erase);
    fold_all(&Search, &fx.ks, &sim.log);
    drain_all(&fx.ks, &fx.index, &super::clear_only()).unwrap();
    assert!(found(&fx, "owner", "zqxalicewords").is_empty());
    assert_eq!(found(&fx, "alice", "zqxownerwords").len(), 1, "others stay");
    let titles = find::run(
        &fx.index,
        &fx.ks,
        &v1::SearchQuery {
            user_id: "owner".into(),
            q: "zqxtitleword".into(),
            kind: v1::SearchDocKind::Title as i32,
            limit: 10,
            ..Default::default()
        },
        (&|_| true, &super::clear_only()),
    )
    .unwrap();
    assert_eq!(titles.hits.len(), 1, "the title she made stays");
    let searcher = fx.index.reader.searcher();
    for segment in searcher.segment_readers() {
        assert_eq!(segment.num_deleted_docs(), 0, "merged away");
        for field in [fx.index.fields.raw, fx.index.fields.text] {
            let terms = segment.inverted_index(field).unwrap();
            let term = terms.terms().get(b"zqxalicewords").unwrap();
            assert!(term.is_none(), "the word is gone from the segment");
        }
    }
}
