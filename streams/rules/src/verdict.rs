//! Whether the rules produce an event where it stands, in one place for
//! writers, projectors and auditors: it must extend the conversation
//! (`chain::check_link`), and it must be exactly what `decide` — the
//! writers' own code — produces for the command it records, against the
//! state before it, at the time it records. A non-member's message, a
//! non-admin's removal or an edited body all fail here, whoever signed it.
//!
//! A direct conversation's creation and the first message that made it
//! come from one command: the creation is checked as the first event of
//! that send (whatever its text), the message as a send into the new
//! conversation, which is what the rules make of it.

use im_schema::v1::{self, conv_event::Kind};

use crate::chain::{check_link, LinkError};
use crate::conversation::{decide, ConvState, Rejection};
use crate::mapping::command_of;
use crate::seal::seal;

/// Why the rules would not have produced an event where it stands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("no command produces this event")]
    NoCommand,
    #[error("not allowed by the rules: {code} ({0})", code = .0.code())]
    NotAllowed(#[source] Rejection),
    #[error("differs from what the rules produce: {detail}")]
    NotProduced { detail: String },
}

impl EventError {
    /// A stable short code, for counting and filtering.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::Link(_) => "chain",
            EventError::NoCommand => "no_command",
            EventError::NotAllowed(r) => r.code(),
            EventError::NotProduced { .. } => "not_produced",
        }
    }
}

/// Stands in for the text of the send that created a direct conversation:
/// the creation does not depend on it, and its message is checked on its
/// own as the next event.
fn any_text() -> v1::MessageSent {
    v1::MessageSent {
        sealed: None,
        body: Some(v1::message_sent::Body::Text(".".into())),
        meta: Default::default(),
    }
}

/// Whether `event` is what the rules produce after `state`.
pub fn check_event(state: &ConvState, event: &v1::ConvEvent) -> Result<(), EventError> {
    check_link(state.conv_seq, &state.last_hash, event)?;
    let stored = event;
    // Sealed content is judged by what stands in for it: the ciphertext
    // must be where the rules put content, and only there.
    let (judged, sealed) = match crate::content::judged_as(stored) {
        Some((clear, sealed)) => (std::borrow::Cow::Owned(clear), Some(sealed)),
        None => (std::borrow::Cow::Borrowed(stored), None),
    };
    let event: &v1::ConvEvent = &judged;
    let direct_creation = matches!(&event.kind, Some(Kind::Created(c))
        if c.kind == v1::ConversationKind::Direct as i32);
    let sent_with = direct_creation.then(any_text);
    let cmd = command_of(event, sent_with.as_ref()).ok_or(EventError::NoCommand)?;
    let decided = decide(state, &cmd, event.at_ms).map_err(EventError::NotAllowed)?;
    // Its first event; an older writer's event carries its own version.
    let first = decided
        .into_iter()
        .next()
        .map(|e| v1::ConvEvent {
            schema_version: event.schema_version,
            ..e
        })
        .ok_or(EventError::NoCommand)?;
    let produced = seal(state, vec![first]).remove(0).event;
    let produced = match sealed {
        Some(sealed) => crate::content::as_stored(produced, sealed),
        None => produced,
    };
    if &produced == stored {
        Ok(())
    } else {
        Err(EventError::NotProduced {
            detail: format!(
                "stored {}, rules give {}",
                im_schema::to_json(stored),
                im_schema::to_json(&produced)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{apply, Action, Command, MessageBody, Role};
    use crate::ids::direct_conversation_id;

    /// Runs a command through the rules and applies its events.
    fn run(state: &mut ConvState, actor: &str, id: &str, action: Action) -> Vec<v1::ConvEvent> {
        let cmd = Command {
            actor: actor.into(),
            client_msg_id: id.into(),
            action,
        };
        let sealed = seal(state, decide(state, &cmd, 5_000).expect("allowed"));
        let mut out = Vec::new();
        for (i, s) in sealed.into_iter().enumerate() {
            assert_eq!(check_event(state, &s.event), Ok(()), "event {i}");
            state.extend(&s, state.version + 1);
            out.push(s.event);
        }
        out
    }

    fn group() -> ConvState {
        let mut state = ConvState::empty("g");
        let members = vec![("ann".to_string(), Role::Member)];
        let create = Action::CreateGroup {
            title: "t".into(),
            members,
        };
        run(&mut state, "own", "c1", create);
        state
    }

    fn text(t: &str) -> Action {
        Action::Send {
            peer: None,
            body: MessageBody::Text(t.into()),
            meta: Default::default(),
        }
    }

    /// The next event as a writer would chain it, whatever the rules say.
    fn forged(state: &ConvState, actor: &str, kind: Kind) -> v1::ConvEvent {
        let ev = v1::ConvEvent {
            conversation_id: state.conv_id.clone(),
            actor: actor.into(),
            at_ms: 5_000,
            client_msg_id: "f".into(),
            schema_version: im_schema::SCHEMA_VERSION,
            kind: Some(kind),
            ..Default::default()
        };
        seal(state, vec![ev]).remove(0).event
    }

    #[test]
    fn what_the_rules_produce_passes_in_order() {
        let mut state = group();
        run(&mut state, "ann", "m1", text("hi"));
        run(
            &mut state,
            "own",
            "e1",
            Action::RemoveMember { user: "ann".into() },
        );
        let conv = direct_conversation_id("amy", "bo").unwrap();
        let mut direct = ConvState::empty(conv);
        let first = Action::Send {
            peer: Some("bo".into()),
            body: MessageBody::Text("hello".into()),
            meta: Default::default(),
        };
        assert_eq!(run(&mut direct, "amy", "d1", first).len(), 2);
        run(&mut direct, "bo", "d2", text("back"));
    }

    /// A decided event with its content sealed, as an encrypting writer
    /// stores it (the ciphertext is opaque to the rules).
    fn sealed_like_a_writer(
        state: &ConvState,
        actor: &str,
        id: &str,
        action: Action,
    ) -> v1::ConvEvent {
        let cmd = Command {
            actor: actor.into(),
            client_msg_id: id.into(),
            action,
        };
        let mut ev = decide(state, &cmd, 5_000).expect("allowed").remove(0);
        let kind = ev.kind.as_mut().unwrap();
        crate::content::take(kind).expect("has content");
        *crate::content::sealed_mut(kind).unwrap() = Some(v1::Sealed {
            epoch: 7,
            key_rev: 3,
            nonce: vec![1; 24],
            ciphertext: vec![9; 40],
            state: 0,
        });
        seal(state, vec![ev]).remove(0).event
    }

    #[test]
    fn sealed_content_passes_where_the_rules_put_content() {
        let mut state = group();
        let sent = sealed_like_a_writer(&state, "ann", "m1", text("hi"));
        assert_eq!(check_event(&state, &sent), Ok(()));
        apply(&mut state, &sent);
        state.last_hash = crate::seal::payload_hash(&im_schema::encode(&sent));
        let edit = Action::Edit {
            conv_seq: sent.conv_seq,
            text: "hello".into(),
        };
        let edited = sealed_like_a_writer(&state, "ann", "e1", edit);
        assert_eq!(check_event(&state, &edited), Ok(()));
    }

    #[test]
    fn sealed_content_beside_clear_content_or_with_a_readers_state_is_not_produced() {
        let state = group();
        let sent = sealed_like_a_writer(&state, "ann", "m1", text("hi"));
        let mut both = sent.clone();
        if let Some(Kind::MessageSent(m)) = both.kind.as_mut() {
            m.body = Some(v1::message_sent::Body::Text("clear".into()));
        }
        let err = check_event(&state, &both).unwrap_err();
        assert_eq!(err.code(), "not_produced");
        let mut marked = sent;
        if let Some(Kind::MessageSent(m)) = marked.kind.as_mut() {
            m.sealed.as_mut().unwrap().state = v1::SealedState::Erased as i32;
        }
        assert_eq!(
            check_event(&state, &marked).unwrap_err().code(),
            "not_produced"
        );
    }

    #[test]
    fn a_non_members_sealed_message_is_not_allowed() {
        let state = group();
        let mut ev = sealed_like_a_writer(&state, "ann", "m1", text("hi"));
        ev.actor = "eve".into();
        let err = check_event(&state, &ev).unwrap_err();
        assert_eq!(err, EventError::NotAllowed(Rejection::NotMember));
    }

    #[test]
    fn a_non_members_message_is_not_allowed() {
        let state = group();
        let sent = Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Text("x".into())),
            meta: Default::default(),
        });
        let err = check_event(&state, &forged(&state, "eve", sent)).unwrap_err();
        assert_eq!(err, EventError::NotAllowed(Rejection::NotMember));
        assert_eq!(err.code(), "not_member");
    }

    #[test]
    fn a_members_removal_of_the_owner_is_not_allowed() {
        let state = group();
        let removal = Kind::MemberRemoved(v1::MemberRemoved {
            user_id: "own".into(),
        });
        let err = check_event(&state, &forged(&state, "ann", removal)).unwrap_err();
        assert_eq!(err, EventError::NotAllowed(Rejection::Forbidden));
    }

    #[test]
    fn an_event_unlike_what_the_rules_produce_is_refused() {
        let state = ConvState::empty("g2");
        // A group whose creator is not its owner: no command makes it.
        let created = Kind::Created(v1::ConversationCreated {
            kind: v1::ConversationKind::Group as i32,
            title: "t".into(),
            members: vec![v1::InitialMember {
                user_id: "own".into(),
                role: v1::Role::Member as i32,
            }],
        });
        let err = check_event(&state, &forged(&state, "own", created)).unwrap_err();
        assert!(matches!(err, EventError::NotProduced { .. }), "{err}");
        // A message one past where it belongs.
        let state = group();
        let mut late = forged(&state, "ann", Kind::MemberLeft(v1::MemberLeft {}));
        late.conv_seq += 1;
        assert!(matches!(
            check_event(&state, &late),
            Err(EventError::Link(LinkError::Position { .. }))
        ));
    }

    #[test]
    fn a_direct_creation_must_name_its_creator_and_the_derived_id() {
        let conv = direct_conversation_id("amy", "bo").unwrap();
        let state = ConvState::empty(conv);
        let created = |members: &[&str]| {
            Kind::Created(v1::ConversationCreated {
                kind: v1::ConversationKind::Direct as i32,
                title: String::new(),
                members: members
                    .iter()
                    .map(|u| v1::InitialMember {
                        user_id: u.to_string(),
                        role: v1::Role::Member as i32,
                    })
                    .collect(),
            })
        };
        assert_eq!(
            check_event(&state, &forged(&state, "amy", created(&["amy", "bo"]))),
            Ok(())
        );
        // Someone else making the pair's conversation, or a third member.
        assert!(check_event(&state, &forged(&state, "eve", created(&["amy", "bo"]))).is_err());
        assert!(check_event(
            &state,
            &forged(&state, "amy", created(&["amy", "bo", "eve"]))
        )
        .is_err());
        let mut applied = state.clone();
        apply(
            &mut applied,
            &forged(&state, "amy", created(&["amy", "bo"])),
        );
        assert!(applied.is_member("bo"));
    }
}
