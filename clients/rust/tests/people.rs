//! People through `im-client` against the real parts: a request and its
//! acceptance reach the other user as people news (never as conversation
//! events), profiles read back in a batch, a retry is a duplicate, and a
//! block stops the direct chat.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use im_client::{Client, ContactVerb, PeopleNews};
use im_schema::v1;

/// People news until one of `event_type` comes (bounded).
async fn news_of(client: &mut Client, event_type: &str) -> v1::Deliver {
    for _ in 0..50 {
        // Reading events is what pumps the socket; none are expected.
        let e = client.next_event(Duration::from_millis(200)).await.unwrap();
        assert!(
            e.is_none(),
            "a people log handed out as a conversation: {e:?}"
        );
        for n in client.take_people() {
            if let PeopleNews::Event(d) = n {
                if d.event_type == event_type {
                    return d;
                }
            }
        }
    }
    panic!("no {event_type} news");
}

#[tokio::test]
async fn contacts_made_through_the_client_and_a_block_stopping_the_chat() {
    let s = stack(im_projectors::DEFAULT_FANOUT_THRESHOLD).await;
    let mut ann = s.client("ann", BTreeMap::new());
    let mut bob = s.client("bob", BTreeMap::new());
    // Both connected first: news reaches devices live (one that was
    // offline reads its contacts instead).
    assert!(bob
        .next_event(Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
    assert!(ann
        .next_event(Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
    ann.set_profile("安妮", "", "ann-name").await.unwrap();
    let asked = ann
        .contact("bob", ContactVerb::Request, "ann-asks")
        .await
        .unwrap();
    let d = news_of(&mut bob, "contact_requested").await;
    assert_eq!(d.event.unwrap().actor, "ann");
    let accepted = bob
        .contact("ann", ContactVerb::Accept, "bob-accepts")
        .await
        .unwrap();
    news_of(&mut ann, "contact_accepted").await;
    let contacts = ann.contacts(accepted.stream_seq).await.unwrap();
    assert_eq!(contacts.entries.len(), 1);
    assert_eq!(contacts.entries[0].user_id, "bob");
    assert_eq!(contacts.entries[0].state(), v1::ContactState::Contact);
    let again = ann
        .contact("bob", ContactVerb::Request, "ann-asks")
        .await
        .unwrap();
    assert!(
        again.duplicate && again.stream_seq == asked.stream_seq,
        "{again:?}"
    );
    let names = bob
        .profiles(&["ann".to_string(), "nobody".to_string()], asked.stream_seq)
        .await
        .unwrap();
    assert_eq!(
        names
            .iter()
            .map(|p| p.display_name.as_str())
            .collect::<Vec<_>>(),
        ["安妮"]
    );

    let first = ann.send(text("", "bob", "hi", "你好")).await.unwrap();
    assert_eq!(first.status(), v1::AckStatus::Stored);
    bob.contact("ann", ContactVerb::Block, "bob-blocks")
        .await
        .unwrap();
    let refused = ann
        .send(text(&first.conversation_id, "", "again", "还在吗"))
        .await
        .unwrap();
    assert_eq!(refused.status(), v1::AckStatus::Rejected, "{refused:?}");
    assert!(refused.reason.starts_with("blacklisted"), "{refused:?}");
}
