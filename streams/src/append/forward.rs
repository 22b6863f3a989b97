//! Writer-to-writer forwarding ("follow the winner"), the conversions only.
//!
//! Compare-and-set alone is safe but not fair: a writer whose next publish
//! always follows its previous ack closely wins every race against a writer
//! that must first refresh. So a writer that loses `FORWARD_AFTER_CONFLICTS`
//! races in a row hands the command to the writer of the conversation's
//! latest event, named in that event's `Im-Writer` header, over core NATS
//! request/reply on `im.writer.<writer_id>`. That writer runs it through its
//! own serialized queue, where it cannot conflict with itself. If the winner
//! is gone, busy or slow, the forwarder carries on by itself: CAS still
//! decides, forwarding only changes who tries.

use im_schema::v1::{self, conv_event::Kind, message_sent::Body, write_reply};
use v1::write_request::Action as W;

use super::outcome::AppendOutcome;
use crate::conversation::{invalid, Action, Command, Rejection};
use crate::mapping::{action_of, kind_of, rejection_from_detail};

pub use crate::subjects::writer_subject;

/// Pairs each forwarded action with the event kind carrying the same
/// message: every action but a send (which carries its own `SendMessage`).
macro_rules! same_message {
    ($($w:ident <=> $k:ident),* $(,)?) => {
        fn request_action(kind: Kind) -> Option<W> {
            match kind {
                $(Kind::$k(m) => Some(W::$w(m)),)*
                Kind::MessageSent(_) => None,
            }
        }

        fn request_kind(action: &W) -> Option<Kind> {
            match action {
                $(W::$w(m) => Some(Kind::$k(m.clone())),)*
                W::Send(_) => None,
            }
        }
    };
}

same_message!(
    CreateGroup <=> Created,
    AddMember <=> MemberAdded,
    RemoveMember <=> MemberRemoved,
    Leave <=> MemberLeft,
    ChangeRole <=> RoleChanged,
    TransferOwnership <=> OwnershipTransferred,
    Mute <=> Muted,
    Unmute <=> Unmuted,
    Blacklist <=> Blacklisted,
    Unblacklist <=> Unblacklisted,
    Recall <=> MessageRecalled,
    Edit <=> MessageEdited,
    AddMembers <=> MembersAdded,
    UpdateProfile <=> ProfileUpdated,
    SetPrivacy <=> PrivacyChanged,
    RequestContact <=> ContactRequested,
    AcceptContact <=> ContactAccepted,
    DeclineContact <=> ContactDeclined,
    RemoveContact <=> ContactRemoved,
    BlockUser <=> UserBlocked,
    UnblockUser <=> UserUnblocked,
    RegisterPush <=> PushRegistered,
    UnregisterPush <=> PushUnregistered,
    MuteNotifications <=> NotifyMuted,
    EraseUser <=> UserErased,
);

/// A command as a forwarded request: the event its action asks for
/// (`mapping::kind_of`), a send as its client message.
pub fn to_request(conv_id: &str, cmd: &Command, trace_id: &str) -> v1::WriteRequest {
    let action = match (&cmd.action, kind_of(&cmd.action)) {
        (Action::Send { peer, .. }, Kind::MessageSent(sent)) => W::Send(v1::SendMessage {
            conversation_id: conv_id.to_string(),
            to_user_id: peer.clone().unwrap_or_default(),
            client_msg_id: cmd.client_msg_id.clone(),
            body: sent.body.map(|b| match b {
                Body::Text(t) => v1::send_message::Body::Text(t),
                Body::Media(m) => v1::send_message::Body::Media(m),
            }),
            meta: sent.meta,
        }),
        (_, kind) => request_action(kind).expect("only a send asks for a message"),
    };
    v1::WriteRequest {
        conversation_id: conv_id.to_string(),
        actor: cmd.actor.clone(),
        client_msg_id: cmd.client_msg_id.clone(),
        trace_id: trace_id.to_string(),
        action: Some(action),
    }
}

/// A forwarded request as a command (`mapping::action_of`); `Err` for one
/// that names no action or a send without a body.
pub fn from_request(req: &v1::WriteRequest) -> Result<Command, Rejection> {
    let action = req
        .action
        .as_ref()
        .ok_or_else(|| invalid("action", "missing"))?;
    let (kind, peer) = match action {
        W::Send(s) => {
            let body = match s.body.clone().ok_or_else(|| invalid("body", "missing"))? {
                v1::send_message::Body::Text(t) => Body::Text(t),
                v1::send_message::Body::Media(m) => Body::Media(m),
            };
            let sent = v1::MessageSent {
                sealed: None,
                body: Some(body),
                meta: s.meta.clone().into_iter().collect(),
            };
            (Kind::MessageSent(sent), Some(s.to_user_id.as_str()))
        }
        other => (request_kind(other).expect("not a send"), None),
    };
    let peer = peer.filter(|p| !p.is_empty());
    let action = action_of(&kind, peer).ok_or_else(|| invalid("action", "not a command"))?;
    Ok(Command {
        actor: req.actor.clone(),
        client_msg_id: req.client_msg_id.clone(),
        action,
    })
}

/// An outcome as a reply.
pub fn to_reply(outcome: &AppendOutcome) -> v1::WriteReply {
    let result = match outcome {
        AppendOutcome::Stored {
            stream_seq,
            conv_seq,
            ..
        } => write_reply::Result::Stored(v1::Positions {
            stream_seq: *stream_seq,
            conv_seq: *conv_seq,
        }),
        AppendOutcome::Duplicate {
            stream_seq,
            conv_seq,
            ..
        } => write_reply::Result::Duplicate(v1::Positions {
            stream_seq: *stream_seq,
            conv_seq: *conv_seq,
        }),
        AppendOutcome::Rejected(r) => write_reply::Result::Rejected(r.into()),
    };
    v1::WriteReply {
        result: Some(result),
    }
}

/// A declined request: the forwarder carries on by itself.
pub fn declined(why: impl ToString) -> v1::WriteReply {
    v1::WriteReply {
        result: Some(write_reply::Result::Declined(why.to_string())),
    }
}

/// A reply as an outcome; `None` when the writer declined.
pub fn from_reply(conv_id: &str, reply: &v1::WriteReply) -> Option<AppendOutcome> {
    match reply.result.as_ref()? {
        write_reply::Result::Stored(p) => Some(AppendOutcome::Stored {
            conv_id: conv_id.to_string(),
            stream_seq: p.stream_seq,
            conv_seq: p.conv_seq,
        }),
        write_reply::Result::Duplicate(p) => Some(AppendOutcome::Duplicate {
            conv_id: conv_id.to_string(),
            stream_seq: p.stream_seq,
            conv_seq: p.conv_seq,
        }),
        write_reply::Result::Rejected(d) => Some(AppendOutcome::Rejected(rejection_from_detail(d))),
        write_reply::Result::Declined(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use super::*;
    use crate::conversation::{MessageBody, Role};

    fn all_actions() -> Vec<Action> {
        let mut meta = BTreeMap::new();
        meta.insert("reply_to".to_string(), "7".to_string());
        vec![
            Action::CreateGroup {
                title: "t".into(),
                members: vec![("a".into(), Role::Admin), ("m".into(), Role::Member)],
            },
            Action::Send {
                peer: Some("bob".into()),
                body: MessageBody::Text("hi".into()),
                meta: meta.clone(),
            },
            Action::Send {
                peer: None,
                body: MessageBody::Media(v1::MediaRef {
                    media_id: "m1".into(),
                    mime: "image/png".into(),
                    width: 3,
                    ..Default::default()
                }),
                meta,
            },
            Action::AddMember {
                user: "n".into(),
                role: Role::Admin,
            },
            Action::RemoveMember { user: "n".into() },
            Action::Leave,
            Action::ChangeRole {
                user: "n".into(),
                role: Role::Member,
            },
            Action::TransferOwnership { user: "n".into() },
            Action::Mute {
                user: "n".into(),
                until_ms: 99,
            },
            Action::Unmute { user: "n".into() },
            Action::Blacklist { user: "n".into() },
            Action::Unblacklist { user: "n".into() },
            Action::Recall { conv_seq: 4 },
            Action::Edit {
                conv_seq: 4,
                text: "e".into(),
            },
            Action::UpdateProfile {
                display_name: "名".into(),
                avatar: Some(v1::MediaRef {
                    media_id: "a1".into(),
                    mime: "image/png".into(),
                    ..Default::default()
                }),
                status: "s".into(),
            },
            Action::SetPrivacy {
                direct_chats: crate::people::Audience::Contacts,
                group_adds: crate::people::Audience::Everyone,
            },
            Action::RequestContact { user: "n".into() },
            Action::AcceptContact { user: "n".into() },
            Action::DeclineContact { user: "n".into() },
            Action::RemoveContact { user: "n".into() },
            Action::BlockUser { user: "n".into() },
            Action::UnblockUser { user: "n".into() },
            Action::RegisterPush(v1::PushRegistered {
                device_id: "d".into(),
                platform: "apns".into(),
                token: "t".into(),
                app_id: "a".into(),
                lang: String::new(),
            }),
            Action::UnregisterPush(v1::PushUnregistered {
                device_id: "d".into(),
                ..Default::default()
            }),
            Action::MuteNotifications(v1::NotifyMuted {
                conversation_id: String::new(),
                until_ms: 9,
            }),
        ]
    }

    #[test]
    fn every_action_survives_the_wire() {
        for action in all_actions() {
            let cmd = Command {
                actor: "alice".into(),
                client_msg_id: "c-1".into(),
                action,
            };
            let req = to_request("g1", &cmd, "tr");
            let bytes = im_schema::encode(&req);
            let back: v1::WriteRequest = im_schema::decode(&bytes).unwrap();
            assert_eq!(back.trace_id, "tr");
            assert_eq!(from_request(&back).unwrap(), cmd);
        }
    }

    #[test]
    fn every_rejection_survives_the_wire() {
        let all = [
            invalid("client_msg_id", "bad"),
            Rejection::TooLarge {
                what: Cow::Borrowed("text"),
                len: 9,
                max: 8,
            },
            Rejection::ConversationNotFound,
            Rejection::ConversationExists,
            Rejection::NotMember,
            Rejection::Muted { until_ms: 5 },
            Rejection::Blacklisted,
            Rejection::Forbidden,
            Rejection::NotInDirect,
            Rejection::OwnerMustTransfer,
            Rejection::SelfTarget,
            Rejection::AlreadyMember,
            Rejection::NotMuted,
            Rejection::AlreadyBlacklisted,
            Rejection::NotBlacklisted,
            Rejection::GroupFull { max: 3 },
            Rejection::MessageNotFound { conv_seq: 2 },
            Rejection::MessageOutOfWindow { conv_seq: 2 },
            Rejection::AlreadyRecalled,
            Rejection::NotSender,
            Rejection::RecallWindowPassed,
            Rejection::CursorBeyondEnd {
                up_to_seq: 9,
                last_seq: 3,
            },
            Rejection::AlreadyContacts,
            Rejection::AlreadyRequested,
            Rejection::NoRequest,
            Rejection::NotContacts,
            Rejection::AlreadyBlocked,
            Rejection::NotBlocked,
            Rejection::UnblockFirst,
            Rejection::NotAccepting { user: "bo".into() },
        ];
        for r in all {
            let outcome = AppendOutcome::Rejected(r.clone());
            let reply = to_reply(&outcome);
            let back: v1::WriteReply = im_schema::decode(&im_schema::encode(&reply)).unwrap();
            assert_eq!(from_reply("g1", &back), Some(outcome), "{r}");
        }
        let stored = AppendOutcome::Stored {
            conv_id: "g1".into(),
            stream_seq: 9,
            conv_seq: 3,
        };
        assert_eq!(from_reply("g1", &to_reply(&stored)), Some(stored));
        assert_eq!(from_reply("g1", &declined("busy")), None);
        assert!(from_request(&v1::WriteRequest::default()).is_err());
    }
}
