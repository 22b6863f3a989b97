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

use std::borrow::Cow;
use std::collections::BTreeMap;

use im_schema::v1::{self, write_reply, write_request};

use super::AppendOutcome;
use crate::conversation::{invalid, Action, Command, MessageBody, Rejection, Role};

pub use crate::subjects::writer_subject;

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
        other => Rejection::Invalid {
            field: Cow::Owned("command".into()),
            detail: format!("{other}: {}", d.detail),
        },
    }
}

fn user_role(user_id: &str, role: i32) -> (String, Role) {
    (user_id.to_string(), Role::from_wire(role))
}

/// A command as a forwarded request.
pub fn to_request(conv_id: &str, cmd: &Command, trace_id: &str) -> v1::WriteRequest {
    use write_request::Action as W;
    let action = match &cmd.action {
        Action::CreateGroup { title, members } => W::CreateGroup(v1::ConversationCreated {
            kind: v1::ConversationKind::Group as i32,
            title: title.clone(),
            members: members
                .iter()
                .map(|(u, r)| v1::InitialMember {
                    user_id: u.clone(),
                    role: r.to_wire() as i32,
                })
                .collect(),
        }),
        Action::Send { peer, body, meta } => W::Send(v1::SendMessage {
            conversation_id: conv_id.to_string(),
            to_user_id: peer.clone().unwrap_or_default(),
            client_msg_id: cmd.client_msg_id.clone(),
            body: Some(match body {
                MessageBody::Text(t) => v1::send_message::Body::Text(t.clone()),
                MessageBody::Media(m) => v1::send_message::Body::Media(m.clone()),
            }),
            meta: meta.clone(),
        }),
        Action::AddMember { user, role } => W::AddMember(v1::MemberAdded {
            user_id: user.clone(),
            role: role.to_wire() as i32,
        }),
        Action::RemoveMember { user } => W::RemoveMember(v1::MemberRemoved {
            user_id: user.clone(),
        }),
        Action::Leave => W::Leave(v1::MemberLeft {}),
        Action::ChangeRole { user, role } => W::ChangeRole(v1::RoleChanged {
            user_id: user.clone(),
            role: role.to_wire() as i32,
        }),
        Action::TransferOwnership { user } => W::TransferOwnership(v1::OwnershipTransferred {
            user_id: user.clone(),
        }),
        Action::Mute { user, until_ms } => W::Mute(v1::MemberMuted {
            user_id: user.clone(),
            until_ms: *until_ms,
        }),
        Action::Unmute { user } => W::Unmute(v1::MemberUnmuted {
            user_id: user.clone(),
        }),
        Action::Blacklist { user } => W::Blacklist(v1::MemberBlacklisted {
            user_id: user.clone(),
        }),
        Action::Unblacklist { user } => W::Unblacklist(v1::MemberUnblacklisted {
            user_id: user.clone(),
        }),
        Action::Recall { conv_seq } => W::Recall(v1::MessageRecalled {
            target_conv_seq: *conv_seq,
        }),
        Action::Edit { conv_seq, text } => W::Edit(v1::MessageEdited {
            target_conv_seq: *conv_seq,
            text: text.clone(),
        }),
    };
    v1::WriteRequest {
        conversation_id: conv_id.to_string(),
        actor: cmd.actor.clone(),
        client_msg_id: cmd.client_msg_id.clone(),
        trace_id: trace_id.to_string(),
        action: Some(action),
    }
}

/// A forwarded request as a command; `Err` for one that names no action.
pub fn from_request(req: &v1::WriteRequest) -> Result<Command, Rejection> {
    use write_request::Action as W;
    let action = match req
        .action
        .as_ref()
        .ok_or_else(|| invalid("action", "missing"))?
    {
        W::CreateGroup(c) => Action::CreateGroup {
            title: c.title.clone(),
            members: c
                .members
                .iter()
                .map(|m| user_role(&m.user_id, m.role))
                .collect(),
        },
        W::Send(s) => Action::Send {
            peer: (!s.to_user_id.is_empty()).then(|| s.to_user_id.clone()),
            body: match &s.body {
                Some(v1::send_message::Body::Text(t)) => MessageBody::Text(t.clone()),
                Some(v1::send_message::Body::Media(m)) => MessageBody::Media(m.clone()),
                None => return Err(invalid("body", "missing")),
            },
            meta: s.meta.clone().into_iter().collect::<BTreeMap<_, _>>(),
        },
        W::AddMember(a) => {
            let (user, role) = user_role(&a.user_id, a.role);
            Action::AddMember { user, role }
        }
        W::RemoveMember(r) => Action::RemoveMember {
            user: r.user_id.clone(),
        },
        W::Leave(_) => Action::Leave,
        W::ChangeRole(r) => {
            let (user, role) = user_role(&r.user_id, r.role);
            Action::ChangeRole { user, role }
        }
        W::TransferOwnership(t) => Action::TransferOwnership {
            user: t.user_id.clone(),
        },
        W::Mute(m) => Action::Mute {
            user: m.user_id.clone(),
            until_ms: m.until_ms,
        },
        W::Unmute(u) => Action::Unmute {
            user: u.user_id.clone(),
        },
        W::Blacklist(b) => Action::Blacklist {
            user: b.user_id.clone(),
        },
        W::Unblacklist(u) => Action::Unblacklist {
            user: u.user_id.clone(),
        },
        W::Recall(r) => Action::Recall {
            conv_seq: r.target_conv_seq,
        },
        W::Edit(e) => Action::Edit {
            conv_seq: e.target_conv_seq,
            text: e.text.clone(),
        },
    };
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
    use super::*;

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
