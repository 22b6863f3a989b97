//! Actions and the events that carry them, in one place: the event an
//! action asks for (what a forwarded command carries between writers) and
//! the command that produced stored events (what the auditor replays
//! through `decide`); and a refusal's wire form.

use std::borrow::Cow;

use im_schema::v1::{self, conv_event::Kind, message_sent::Body};

use crate::conversation::{Action, Command, MessageBody, Rejection, Role};
use crate::people::Audience;

impl MessageBody {
    pub fn to_wire(&self) -> Body {
        match self {
            MessageBody::Text(t) => Body::Text(t.clone()),
            MessageBody::Media(m) => Body::Media(m.clone()),
        }
    }

    /// A missing body reads as empty text, which the rules refuse.
    pub fn from_wire(body: Option<&Body>) -> MessageBody {
        match body {
            Some(Body::Text(t)) => MessageBody::Text(t.clone()),
            Some(Body::Media(m)) => MessageBody::Media(m.clone()),
            None => MessageBody::Text(String::new()),
        }
    }
}

fn initial_member(user_id: &str, role: Role) -> v1::InitialMember {
    v1::InitialMember {
        user_id: user_id.to_string(),
        role: role.to_wire() as i32,
    }
}

/// The event an action asks for. A send asks for its message (a first
/// direct send also creates the conversation; its peer travels beside it).
pub fn kind_of(action: &Action) -> Kind {
    let user_id = |u: &String| u.clone();
    match action {
        Action::CreateGroup { title, members } => Kind::Created(v1::ConversationCreated {
            kind: v1::ConversationKind::Group as i32,
            title: title.clone(),
            members: members.iter().map(|(u, r)| initial_member(u, *r)).collect(),
        }),
        Action::Send { body, meta, .. } => Kind::MessageSent(v1::MessageSent {
            body: Some(body.to_wire()),
            meta: meta.clone(),
            sealed: None,
        }),
        Action::AddMember { user, role } => Kind::MemberAdded(v1::MemberAdded {
            user_id: user_id(user),
            role: role.to_wire() as i32,
        }),
        Action::AddMembers { users } => Kind::MembersAdded(v1::MembersAdded {
            members: users.iter().map(|(u, r)| initial_member(u, *r)).collect(),
        }),
        Action::RemoveMember { user } => Kind::MemberRemoved(v1::MemberRemoved {
            user_id: user_id(user),
        }),
        Action::Leave => Kind::MemberLeft(v1::MemberLeft {}),
        Action::ChangeRole { user, role } => Kind::RoleChanged(v1::RoleChanged {
            user_id: user_id(user),
            role: role.to_wire() as i32,
        }),
        Action::TransferOwnership { user } => {
            Kind::OwnershipTransferred(v1::OwnershipTransferred {
                user_id: user_id(user),
            })
        }
        Action::Mute { user, until_ms } => Kind::Muted(v1::MemberMuted {
            user_id: user_id(user),
            until_ms: *until_ms,
        }),
        Action::Unmute { user } => Kind::Unmuted(v1::MemberUnmuted {
            user_id: user_id(user),
        }),
        Action::Blacklist { user } => Kind::Blacklisted(v1::MemberBlacklisted {
            user_id: user_id(user),
        }),
        Action::Unblacklist { user } => Kind::Unblacklisted(v1::MemberUnblacklisted {
            user_id: user_id(user),
        }),
        Action::Recall { conv_seq } => Kind::MessageRecalled(v1::MessageRecalled {
            target_conv_seq: *conv_seq,
        }),
        Action::Edit { conv_seq, text } => Kind::MessageEdited(v1::MessageEdited {
            target_conv_seq: *conv_seq,
            text: text.clone(),
            sealed: None,
        }),
        Action::UpdateProfile {
            display_name,
            avatar,
            status,
        } => Kind::ProfileUpdated(v1::ProfileUpdated {
            display_name: display_name.clone(),
            avatar: avatar.clone(),
            status: status.clone(),
            sealed: None,
        }),
        Action::SetPrivacy {
            direct_chats,
            group_adds,
        } => Kind::PrivacyChanged(v1::PrivacyChanged {
            direct_chats: direct_chats.to_wire() as i32,
            group_adds: group_adds.to_wire() as i32,
        }),
        Action::RegisterPush(r) => Kind::PushRegistered(r.clone()),
        Action::UnregisterPush(u) => Kind::PushUnregistered(u.clone()),
        Action::MuteNotifications(m) => Kind::NotifyMuted(m.clone()),
        Action::EraseUser { requested_by } => Kind::UserErased(v1::UserErased {
            requested_by: requested_by.clone(),
        }),
        Action::RequestContact { user } => Kind::ContactRequested(v1::ContactRequested {
            user_id: user_id(user),
            hidden: false,
        }),
        Action::AcceptContact { user } => Kind::ContactAccepted(v1::ContactAccepted {
            user_id: user_id(user),
        }),
        Action::DeclineContact { user } => Kind::ContactDeclined(v1::ContactDeclined {
            user_id: user_id(user),
        }),
        Action::RemoveContact { user } => Kind::ContactRemoved(v1::ContactRemoved {
            user_id: user_id(user),
            hidden: false,
        }),
        Action::BlockUser { user } => Kind::UserBlocked(v1::UserBlocked {
            user_id: user_id(user),
        }),
        Action::UnblockUser { user } => Kind::UserUnblocked(v1::UserUnblocked {
            user_id: user_id(user),
        }),
    }
}

/// The action an event asks for; `peer` names the other member of a first
/// direct send. `None` for a direct conversation's creation, which no
/// action asks for (a send makes it).
pub fn action_of(kind: &Kind, peer: Option<&str>) -> Option<Action> {
    let user = |u: &str| u.to_string();
    Some(match kind {
        Kind::Created(c)
            if c.kind == v1::ConversationKind::Direct as i32
                || c.kind == v1::ConversationKind::User as i32
                || c.kind == v1::ConversationKind::Pair as i32 =>
        {
            return None
        }
        Kind::Created(c) => Action::CreateGroup {
            title: c.title.clone(),
            members: c
                .members
                .iter()
                .map(|m| (m.user_id.clone(), Role::from_wire(m.role)))
                .collect(),
        },
        Kind::MessageSent(s) => Action::Send {
            peer: peer.map(user),
            body: MessageBody::from_wire(s.body.as_ref()),
            meta: s.meta.clone(),
        },
        Kind::MemberAdded(a) => Action::AddMember {
            user: user(&a.user_id),
            role: Role::from_wire(a.role),
        },
        Kind::MembersAdded(a) => Action::AddMembers {
            users: a
                .members
                .iter()
                .map(|m| (m.user_id.clone(), Role::from_wire(m.role)))
                .collect(),
        },
        Kind::MemberRemoved(r) => Action::RemoveMember {
            user: user(&r.user_id),
        },
        Kind::MemberLeft(_) => Action::Leave,
        Kind::RoleChanged(r) => Action::ChangeRole {
            user: user(&r.user_id),
            role: Role::from_wire(r.role),
        },
        Kind::OwnershipTransferred(t) => Action::TransferOwnership {
            user: user(&t.user_id),
        },
        Kind::Muted(m) => Action::Mute {
            user: user(&m.user_id),
            until_ms: m.until_ms,
        },
        Kind::Unmuted(m) => Action::Unmute {
            user: user(&m.user_id),
        },
        Kind::Blacklisted(b) => Action::Blacklist {
            user: user(&b.user_id),
        },
        Kind::Unblacklisted(b) => Action::Unblacklist {
            user: user(&b.user_id),
        },
        Kind::MessageRecalled(r) => Action::Recall {
            conv_seq: r.target_conv_seq,
        },
        Kind::MessageEdited(e) => Action::Edit {
            conv_seq: e.target_conv_seq,
            text: e.text.clone(),
        },
        Kind::ProfileUpdated(p) => Action::UpdateProfile {
            display_name: p.display_name.clone(),
            avatar: p.avatar.clone(),
            status: p.status.clone(),
        },
        Kind::PrivacyChanged(c) => Action::SetPrivacy {
            direct_chats: Audience::from_wire(c.direct_chats),
            group_adds: Audience::from_wire(c.group_adds),
        },
        Kind::PushRegistered(r) => Action::RegisterPush(r.clone()),
        Kind::PushUnregistered(u) => Action::UnregisterPush(u.clone()),
        Kind::NotifyMuted(m) => Action::MuteNotifications(m.clone()),
        Kind::UserErased(e) => Action::EraseUser {
            requested_by: e.requested_by.clone(),
        },
        // Whether a request (or its withdrawal) is hidden is the rules' to
        // say, not the command's.
        Kind::ContactRequested(r) => Action::RequestContact {
            user: user(&r.user_id),
        },
        Kind::ContactAccepted(a) => Action::AcceptContact {
            user: user(&a.user_id),
        },
        Kind::ContactDeclined(d) => Action::DeclineContact {
            user: user(&d.user_id),
        },
        Kind::ContactRemoved(r) => Action::RemoveContact {
            user: user(&r.user_id),
        },
        Kind::UserBlocked(b) => Action::BlockUser {
            user: user(&b.user_id),
        },
        Kind::UserUnblocked(u) => Action::UnblockUser {
            user: user(&u.user_id),
        },
    })
}

/// The command that produced a stored event: for a direct conversation's
/// creation, the send whose message (`sent_with`) was stored beside it.
pub fn command_of(ev: &v1::ConvEvent, sent_with: Option<&v1::MessageSent>) -> Option<Command> {
    let action = match ev.kind.as_ref()? {
        Kind::Created(c) if c.kind == v1::ConversationKind::Direct as i32 => {
            let peer = c.members.iter().find(|m| m.user_id != ev.actor)?;
            action_of(&Kind::MessageSent(sent_with?.clone()), Some(&peer.user_id))?
        }
        // A people log's creation: any command allowed on an empty log of
        // its kind decides it (its own event is checked as the next one).
        Kind::Created(_) if crate::people::creation_stand_in(ev).is_some() => {
            crate::people::creation_stand_in(ev)?
        }
        kind => action_of(kind, None)?,
    };
    Some(Command {
        actor: ev.actor.clone(),
        client_msg_id: ev.client_msg_id.clone(),
        action,
    })
}

impl From<&Rejection> for v1::RejectionDetail {
    fn from(r: &Rejection) -> Self {
        let mut d = v1::RejectionDetail {
            code: r.code().to_string(),
            detail: r.to_string(),
            ..Default::default()
        };
        match r {
            Rejection::Invalid { field, detail } => {
                d.field = field.to_string();
                d.detail = detail.clone();
            }
            Rejection::TooLarge { what, len, max } => {
                d.field = what.to_string();
                d.len = *len as u64;
                d.max = *max as u64;
            }
            Rejection::Muted { until_ms } => d.until_ms = *until_ms,
            Rejection::NotAccepting { user } => d.field = user.clone(),
            Rejection::GroupFull { max } => d.max = *max as u64,
            Rejection::MessageNotFound { conv_seq }
            | Rejection::MessageOutOfWindow { conv_seq } => d.seq = *conv_seq,
            Rejection::CursorBeyondEnd {
                up_to_seq,
                last_seq,
            } => {
                d.seq = *up_to_seq;
                d.last_seq = *last_seq;
            }
            _ => {}
        }
        d
    }
}

/// Rebuilds a typed rejection from its wire form. An unknown code (from a
/// newer writer) is reported as an invalid request with its text.
pub fn rejection_from_detail(d: &v1::RejectionDetail) -> Rejection {
    match d.code.as_str() {
        "invalid_argument" => Rejection::Invalid {
            field: Cow::Owned(d.field.clone()),
            detail: d.detail.clone(),
        },
        "too_large" => Rejection::TooLarge {
            what: Cow::Owned(d.field.clone()),
            len: d.len as usize,
            max: d.max as usize,
        },
        "conversation_not_found" => Rejection::ConversationNotFound,
        "conversation_exists" => Rejection::ConversationExists,
        "not_member" => Rejection::NotMember,
        "muted" => Rejection::Muted {
            until_ms: d.until_ms,
        },
        "blacklisted" => Rejection::Blacklisted,
        "forbidden" => Rejection::Forbidden,
        "not_in_direct" => Rejection::NotInDirect,
        "owner_must_transfer" => Rejection::OwnerMustTransfer,
        "self_target" => Rejection::SelfTarget,
        "already_member" => Rejection::AlreadyMember,
        "not_muted" => Rejection::NotMuted,
        "already_blacklisted" => Rejection::AlreadyBlacklisted,
        "not_blacklisted" => Rejection::NotBlacklisted,
        "group_full" => Rejection::GroupFull {
            max: d.max as usize,
        },
        "message_not_found" => Rejection::MessageNotFound { conv_seq: d.seq },
        "message_out_of_window" => Rejection::MessageOutOfWindow { conv_seq: d.seq },
        "already_recalled" => Rejection::AlreadyRecalled,
        "not_sender" => Rejection::NotSender,
        "recall_window_passed" => Rejection::RecallWindowPassed,
        "cursor_beyond_end" => Rejection::CursorBeyondEnd {
            up_to_seq: d.seq,
            last_seq: d.last_seq,
        },
        "already_contacts" => Rejection::AlreadyContacts,
        "already_requested" => Rejection::AlreadyRequested,
        "no_request" => Rejection::NoRequest,
        "not_contacts" => Rejection::NotContacts,
        "already_blocked" => Rejection::AlreadyBlocked,
        "not_blocked" => Rejection::NotBlocked,
        "unblock_first" => Rejection::UnblockFirst,
        "not_accepting" => Rejection::NotAccepting {
            user: d.field.clone(),
        },
        other => Rejection::Invalid {
            field: Cow::Owned("command".into()),
            detail: format!("{other}: {}", d.detail),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{decide, ConvState};
    use crate::seal::seal;

    /// One of every action, with the state it is allowed in.
    fn every_action() -> Vec<Action> {
        let text = |t: &str| MessageBody::Text(t.into());
        vec![
            Action::CreateGroup {
                title: "t".into(),
                members: vec![("m".into(), Role::Admin), ("o".into(), Role::Owner)],
            },
            Action::Send {
                peer: None,
                body: text("hi"),
                meta: [("k".to_string(), "v".to_string())].into(),
            },
            Action::AddMember {
                user: "n".into(),
                role: Role::Admin,
            },
            Action::RemoveMember { user: "n".into() },
            Action::ChangeRole {
                user: "m".into(),
                role: Role::Member,
            },
            Action::Mute {
                user: "m".into(),
                until_ms: i64::MAX,
            },
            Action::Unmute { user: "m".into() },
            Action::Blacklist { user: "x".into() },
            Action::Unblacklist { user: "x".into() },
            Action::Edit {
                conv_seq: 2,
                text: "edited".into(),
            },
            Action::Recall { conv_seq: 2 },
            Action::TransferOwnership { user: "m".into() },
            Action::Leave,
        ]
    }

    #[test]
    fn an_action_and_its_event_map_back_and_forth() {
        for action in every_action() {
            let peer = matches!(action, Action::Send { .. }).then_some("p");
            let back = action_of(&kind_of(&action), peer).expect("asked for");
            match (&back, &action) {
                (Action::Send { peer, .. }, Action::Send { .. }) => {
                    assert_eq!(peer.as_deref(), Some("p"))
                }
                _ => assert_eq!(back, action),
            }
        }
    }

    #[test]
    fn every_stored_command_is_found_again_from_its_events() {
        let mut state = ConvState::empty("g");
        for (i, action) in every_action().into_iter().enumerate() {
            let cmd = Command {
                actor: "o".into(),
                client_msg_id: format!("c{i}"),
                action,
            };
            let sealed = seal(&state, decide(&state, &cmd, 1_000).expect("allowed"));
            assert_eq!(command_of(&sealed[0].event, None).as_ref(), Some(&cmd));
            state.extend(&sealed[0], i as u64 + 1);
        }
    }

    /// Each people action, with the user whose log it goes to.
    fn people_actions() -> Vec<(&'static str, Action)> {
        let user = |u: &str| u.to_string();
        vec![
            (
                "amy",
                Action::UpdateProfile {
                    display_name: "艾米".into(),
                    avatar: None,
                    status: "here".into(),
                },
            ),
            (
                "amy",
                Action::SetPrivacy {
                    direct_chats: Audience::Contacts,
                    group_adds: Audience::Everyone,
                },
            ),
            (
                "amy",
                Action::RegisterPush(v1::PushRegistered {
                    device_id: "phone".into(),
                    platform: "fcm".into(),
                    token: "tok".into(),
                    app_id: "im.app".into(),
                    lang: "en".into(),
                }),
            ),
            (
                "amy",
                Action::MuteNotifications(v1::NotifyMuted {
                    conversation_id: "g1".into(),
                    until_ms: 5_000,
                }),
            ),
            (
                "amy",
                Action::UnregisterPush(v1::PushUnregistered {
                    device_id: "phone".into(),
                    token: "tok".into(),
                    reason: v1::PushUnregisterReason::Gone as i32,
                }),
            ),
            ("amy", Action::RequestContact { user: user("bo") }),
            ("bo", Action::AcceptContact { user: user("amy") }),
            ("bo", Action::RemoveContact { user: user("amy") }),
            ("amy", Action::BlockUser { user: user("bo") }),
            ("amy", Action::UnblockUser { user: user("bo") }),
            ("bo", Action::RequestContact { user: user("amy") }),
            ("amy", Action::DeclineContact { user: user("bo") }),
        ]
    }

    #[test]
    fn people_commands_are_found_again_from_their_events_creations_included() {
        let mut logs: std::collections::BTreeMap<String, ConvState> = Default::default();
        for (i, (actor, action)) in people_actions().into_iter().enumerate() {
            assert_eq!(action_of(&kind_of(&action), None).as_ref(), Some(&action));
            let log = crate::people::log_of(actor, &action).unwrap();
            let state = logs
                .entry(log.clone())
                .or_insert_with(|| ConvState::empty(log));
            let cmd = Command {
                actor: actor.into(),
                client_msg_id: format!("p{i}"),
                action,
            };
            let sealed = seal(state, decide(state, &cmd, 1_000).expect("allowed"));
            let last = sealed.last().unwrap();
            assert_eq!(command_of(&last.event, None).as_ref(), Some(&cmd));
            if sealed.len() == 2 {
                // A log's creation stands for a command of its kind, not this one.
                assert!(command_of(&sealed[0].event, None).is_some());
            }
            for (j, s) in sealed.iter().enumerate() {
                assert_eq!(
                    crate::verdict::check_event(state, &s.event),
                    Ok(()),
                    "{i}.{j}"
                );
                state.extend(s, (i * 2 + j) as u64 + 1);
            }
        }
    }

    #[test]
    fn a_first_direct_send_is_found_from_its_creation_and_message() {
        let conv = crate::ids::direct_conversation_id("amy", "bo").unwrap();
        let cmd = Command {
            actor: "amy".into(),
            client_msg_id: "c".into(),
            action: Action::Send {
                peer: Some("bo".into()),
                body: MessageBody::Text("hi".into()),
                meta: Default::default(),
            },
        };
        let events = decide(&ConvState::empty(conv), &cmd, 1).unwrap();
        let Some(Kind::MessageSent(sent)) = &events[1].kind else {
            panic!("{events:?}")
        };
        assert_eq!(command_of(&events[0], Some(sent)), Some(cmd));
        assert_eq!(command_of(&events[0], None), None);
    }
}
