//! The checks the rules share: ids, sizes, roles, who may send, and which
//! receipt cursors may be appended.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{
    ConvKind, ConvState, MessageBody, MessageMeta, Rejection, Role, MESSAGE_INDEX_MAX,
    META_ENTRIES_MAX, META_KEY_BYTES_MAX, META_VALUE_BYTES_MAX, TEXT_BYTES_MAX,
};
use crate::ids::{validate_id, IdKind};

/// An `Invalid` rejection of one field.
pub fn invalid(field: &'static str, detail: impl ToString) -> Rejection {
    Rejection::Invalid {
        field: Cow::Borrowed(field),
        detail: detail.to_string(),
    }
}

pub(super) fn check_id(kind: IdKind, field: &'static str, id: &str) -> Result<(), Rejection> {
    validate_id(kind, id).map_err(|e| invalid(field, e))
}

pub(super) fn check_text(text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() {
        return Err(invalid("text", "empty"));
    }
    if text.len() > TEXT_BYTES_MAX {
        return Err(Rejection::TooLarge {
            what: Cow::Borrowed("text"),
            len: text.len(),
            max: TEXT_BYTES_MAX,
        });
    }
    Ok(())
}

pub(super) fn check_body(body: &MessageBody) -> Result<(), Rejection> {
    match body {
        MessageBody::Text(t) => check_text(t),
        MessageBody::Media(m) => {
            check_id(IdKind::ClientMsg, "media_id", &m.media_id)?;
            if m.mime.is_empty() || m.mime.len() > 255 {
                return Err(invalid("mime", "empty or longer than 255 bytes"));
            }
            Ok(())
        }
    }
}

pub(super) fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), Rejection> {
    if meta.len() > META_ENTRIES_MAX {
        return Err(Rejection::TooLarge {
            what: Cow::Borrowed("meta entries"),
            len: meta.len(),
            max: META_ENTRIES_MAX,
        });
    }
    for (k, v) in meta {
        if k.is_empty() || k.len() > META_KEY_BYTES_MAX {
            return Err(invalid("meta key", "empty or too long"));
        }
        if v.len() > META_VALUE_BYTES_MAX {
            return Err(Rejection::TooLarge {
                what: Cow::Borrowed("meta value"),
                len: v.len(),
                max: META_VALUE_BYTES_MAX,
            });
        }
    }
    Ok(())
}

/// Who may act on whom: the actor must be a member with at least `min`, and
/// strictly above the target's role.
pub(super) fn require_role(state: &ConvState, actor: &str, min: Role) -> Result<Role, Rejection> {
    let role = state.role_of(actor).ok_or(Rejection::NotMember)?;
    if role < min {
        return Err(Rejection::Forbidden);
    }
    Ok(role)
}

pub(super) fn require_group(state: &ConvState) -> Result<(), Rejection> {
    match state.kind {
        None => Err(Rejection::ConversationNotFound),
        Some(ConvKind::Direct) => Err(Rejection::NotInDirect),
        Some(ConvKind::Group) => Ok(()),
        Some(_) => Err(Rejection::ConversationNotFound),
    }
}

pub(super) fn require_above(
    actor_role: Role,
    state: &ConvState,
    target: &str,
) -> Result<(), Rejection> {
    match state.role_of(target) {
        Some(r) if r >= actor_role => Err(Rejection::Forbidden),
        _ => Ok(()),
    }
}

/// The sender-may-send rule, shared by `decide` and the auditor's replay.
pub fn check_may_send(state: &ConvState, sender: &str, now_ms: i64) -> Result<(), Rejection> {
    // Blacklist first: in a group it also removed the member, and the
    // reason the sender should see is the blacklist, not the removal.
    if state.blacklist.contains(sender) {
        return Err(Rejection::Blacklisted);
    }
    let member = state.members.get(sender).ok_or(Rejection::NotMember)?;
    if state.kind == Some(ConvKind::Direct) && !state.blacklist.is_empty() {
        // The other member blocked... or was blocked by the sender: either way
        // neither side may send until the block is lifted.
        return Err(Rejection::Blacklisted);
    }
    if member.muted_until_ms > now_ms {
        return Err(Rejection::Muted {
            until_ms: member.muted_until_ms,
        });
    }
    Ok(())
}

pub(super) fn message_target(state: &ConvState, conv_seq: u64) -> Result<&MessageMeta, Rejection> {
    if conv_seq == 0 || conv_seq > state.conv_seq {
        return Err(Rejection::MessageNotFound { conv_seq });
    }
    match state.messages.get(&conv_seq) {
        Some(m) if m.recalled => Err(Rejection::AlreadyRecalled),
        Some(m) => Ok(m),
        None => match state.messages.keys().next() {
            Some(oldest) if conv_seq < *oldest && state.messages.len() >= MESSAGE_INDEX_MAX => {
                Err(Rejection::MessageOutOfWindow { conv_seq })
            }
            _ => Err(Rejection::MessageNotFound { conv_seq }),
        },
    }
}

/// Whether a receipt cursor may be appended: members only, and never past
/// the conversation's last seq.
pub fn check_receipt(state: &ConvState, user: &str, up_to_seq: u64) -> Result<(), Rejection> {
    // A people log holds no messages to receive or read.
    if !state.kind.is_some_and(ConvKind::is_chat) {
        return Err(Rejection::ConversationNotFound);
    }
    if !state.is_member(user) {
        return Err(Rejection::NotMember);
    }
    if up_to_seq == 0 {
        return Err(invalid("up_to_seq", "must be at least 1"));
    }
    if up_to_seq > state.conv_seq {
        return Err(Rejection::CursorBeyondEnd {
            up_to_seq,
            last_seq: state.conv_seq,
        });
    }
    Ok(())
}
