//! The conversation aggregate as a pure core: `decide(state, command, now)`
//! turns a command into events or a typed rejection, `apply(state, event)`
//! folds an event into the state. No IO here: the append path (`append/`)
//! loads state, calls `decide`, and publishes with compare-and-set.
//!
//! Replaying `decide` over the log is deterministic: every event records the
//! time its decision used (`at_ms`), and the state is a function of the
//! events alone.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use im_schema::v1::{self, conv_event::Kind, message_sent::Body};

use crate::ids::{validate_id, IdKind};
use crate::subjects::{direct_conversation_id, DIRECT_PREFIX};

/// A sender may recall their own message for this long; admins any time.
pub const RECALL_WINDOW_MS: i64 = 2 * 60 * 1000;

/// Longest message text, in bytes. Long enough for any chat message, short
/// enough that one send cannot make a frame, an event or a fan-out large.
pub const TEXT_BYTES_MAX: usize = 16 * 1024;

/// Longest group title, in bytes.
pub const TITLE_BYTES_MAX: usize = 256;

/// Most members a group may have. Bounds the state every writer caches and
/// the fan-out of one event.
pub const GROUP_MEMBERS_MAX: usize = 5_000;

/// Message metadata entries, and their key/value sizes: metadata is for small
/// client hints (reply-to, mentions), not payloads.
pub const META_ENTRIES_MAX: usize = 16;
pub const META_KEY_BYTES_MAX: usize = 64;
pub const META_VALUE_BYTES_MAX: usize = 512;

/// Recent messages whose sender, time and client id the state keeps, for
/// recall, edit and duplicate detection. Bounds each cached state (~100 B an
/// entry); recall/edit of older messages is refused (`message_out_of_window`).
pub const MESSAGE_INDEX_MAX: usize = 512;

/// A B-tree entry's share of its node, for memory accounting.
const NODE_BYTES: usize = 16;

/// Ordered roles: Owner > Admin > Member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    /// Unknown or unspecified wire values read as the lowest privilege.
    pub fn from_wire(v: i32) -> Role {
        match v1::Role::try_from(v) {
            Ok(v1::Role::Owner) => Role::Owner,
            Ok(v1::Role::Admin) => Role::Admin,
            _ => Role::Member,
        }
    }

    pub fn to_wire(self) -> v1::Role {
        match self {
            Role::Member => v1::Role::Member,
            Role::Admin => v1::Role::Admin,
            Role::Owner => v1::Role::Owner,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    Direct,
    Group,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub role: Role,
    /// Muted while a command's `now` is before this (Unix ms); 0 = not muted.
    pub muted_until_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    pub sender: String,
    pub client_msg_id: String,
    pub sent_at_ms: i64,
    pub recalled: bool,
}

/// What a writer validates against: the conversation as of `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvState {
    pub conv_id: String,
    /// None until the conversation is created.
    pub kind: Option<ConvKind>,
    pub title: String,
    pub members: BTreeMap<String, MemberState>,
    /// Group: users who may not be (re-)added. Direct: users the other
    /// member has blocked.
    pub blacklist: BTreeSet<String>,
    /// conv_seq of the last event; the next event gets `conv_seq + 1`.
    pub conv_seq: u64,
    /// Stream sequence of the last event on the subject (the CAS version).
    pub version: u64,
    /// sha256 of the last event's stored payload; zeros before the first.
    pub last_hash: [u8; 32],
    /// The `MESSAGE_INDEX_MAX` most recent messages by conv_seq.
    pub messages: BTreeMap<u64, MessageMeta>,
}

impl ConvState {
    /// The state of a conversation with no events yet.
    pub fn empty(conv_id: impl Into<String>) -> Self {
        ConvState {
            conv_id: conv_id.into(),
            kind: None,
            title: String::new(),
            members: BTreeMap::new(),
            blacklist: BTreeSet::new(),
            conv_seq: 0,
            version: 0,
            last_hash: [0; 32],
            messages: BTreeMap::new(),
        }
    }

    pub fn exists(&self) -> bool {
        self.kind.is_some()
    }

    pub fn role_of(&self, user: &str) -> Option<Role> {
        self.members.get(user).map(|m| m.role)
    }

    pub fn is_member(&self, user: &str) -> bool {
        self.members.contains_key(user)
    }

    /// The earlier message a sender sent with this client_msg_id, if recent.
    pub fn find_sent(&self, sender: &str, client_msg_id: &str) -> Option<(u64, &MessageMeta)> {
        self.messages
            .iter()
            .rev()
            .find(|(_, m)| m.sender == sender && m.client_msg_id == client_msg_id)
            .map(|(seq, m)| (*seq, m))
    }

    /// The memory its member list and blacklist hold, ids at their actual
    /// length. O(members): callers redo it only when the list changed.
    pub fn membership_bytes(&self) -> usize {
        let id = |s: &String| s.capacity() + std::mem::size_of::<String>() + NODE_BYTES;
        self.members
            .keys()
            .map(|u| id(u) + std::mem::size_of::<MemberState>())
            .sum::<usize>()
            + self.blacklist.iter().map(id).sum::<usize>()
    }

    /// The memory the rest holds (the recent-message index, bounded by
    /// `MESSAGE_INDEX_MAX`). O(that index).
    pub fn index_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.title.capacity()
            + self
                .messages
                .values()
                .map(|m| {
                    std::mem::size_of::<(u64, MessageMeta)>()
                        + NODE_BYTES
                        + m.sender.capacity()
                        + m.client_msg_id.capacity()
                })
                .sum::<usize>()
    }

    /// Records where the last applied event landed (the adapter's part).
    pub fn record_position(&mut self, stream_seq: u64, payload_hash: [u8; 32]) {
        self.version = stream_seq;
        self.last_hash = payload_hash;
    }
}

/// What a message carries.
#[derive(Clone, Debug, PartialEq)]
pub enum MessageBody {
    Text(String),
    Media(v1::MediaRef),
}

/// A user's intent, with the identity from their token.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub actor: String,
    pub client_msg_id: String,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create a group; the actor becomes its owner.
    CreateGroup {
        title: String,
        members: Vec<(String, Role)>,
    },
    /// Send a message. `peer` names the other user of a direct conversation:
    /// the first send creates it.
    Send {
        peer: Option<String>,
        body: MessageBody,
        meta: BTreeMap<String, String>,
    },
    AddMember {
        user: String,
        role: Role,
    },
    RemoveMember {
        user: String,
    },
    Leave,
    ChangeRole {
        user: String,
        role: Role,
    },
    TransferOwnership {
        user: String,
    },
    Mute {
        user: String,
        until_ms: i64,
    },
    Unmute {
        user: String,
    },
    Blacklist {
        user: String,
    },
    Unblacklist {
        user: String,
    },
    Recall {
        conv_seq: u64,
    },
    Edit {
        conv_seq: u64,
        text: String,
    },
}

/// Why a command was refused. `code()` is the stable reason code clients see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("invalid {field}: {detail}")]
    Invalid {
        field: Cow<'static, str>,
        detail: String,
    },
    #[error("{what} is too large ({len} > {max})")]
    TooLarge {
        what: Cow<'static, str>,
        len: usize,
        max: usize,
    },
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("conversation already exists")]
    ConversationExists,
    #[error("not a member of this conversation")]
    NotMember,
    #[error("muted until {until_ms}")]
    Muted { until_ms: i64 },
    #[error("blacklisted")]
    Blacklisted,
    #[error("your role does not allow this")]
    Forbidden,
    #[error("not allowed in a direct conversation")]
    NotInDirect,
    #[error("the owner must transfer ownership first")]
    OwnerMustTransfer,
    #[error("cannot do this to yourself")]
    SelfTarget,
    #[error("already a member")]
    AlreadyMember,
    #[error("not muted")]
    NotMuted,
    #[error("already blacklisted")]
    AlreadyBlacklisted,
    #[error("not blacklisted")]
    NotBlacklisted,
    #[error("the group is full ({max} members)")]
    GroupFull { max: usize },
    #[error("no message at conv_seq {conv_seq}")]
    MessageNotFound { conv_seq: u64 },
    #[error("message {conv_seq} is older than the recall/edit window of recent messages")]
    MessageOutOfWindow { conv_seq: u64 },
    #[error("message already recalled")]
    AlreadyRecalled,
    #[error("only the sender may do this")]
    NotSender,
    #[error("the recall window has passed")]
    RecallWindowPassed,
    #[error("cursor {up_to_seq} is beyond the conversation's last seq {last_seq}")]
    CursorBeyondEnd { up_to_seq: u64, last_seq: u64 },
}

impl Rejection {
    /// The stable reason code (snake_case) carried in acks and error frames.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid { .. } => "invalid_argument",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::ConversationNotFound => "conversation_not_found",
            Rejection::ConversationExists => "conversation_exists",
            Rejection::NotMember => "not_member",
            Rejection::Muted { .. } => "muted",
            Rejection::Blacklisted => "blacklisted",
            Rejection::Forbidden => "forbidden",
            Rejection::NotInDirect => "not_in_direct",
            Rejection::OwnerMustTransfer => "owner_must_transfer",
            Rejection::SelfTarget => "self_target",
            Rejection::AlreadyMember => "already_member",
            Rejection::NotMuted => "not_muted",
            Rejection::AlreadyBlacklisted => "already_blacklisted",
            Rejection::NotBlacklisted => "not_blacklisted",
            Rejection::GroupFull { .. } => "group_full",
            Rejection::MessageNotFound { .. } => "message_not_found",
            Rejection::MessageOutOfWindow { .. } => "message_out_of_window",
            Rejection::AlreadyRecalled => "already_recalled",
            Rejection::NotSender => "not_sender",
            Rejection::RecallWindowPassed => "recall_window_passed",
            Rejection::CursorBeyondEnd { .. } => "cursor_beyond_end",
        }
    }
}

/// An `Invalid` rejection of one field.
pub fn invalid(field: &'static str, detail: impl ToString) -> Rejection {
    Rejection::Invalid {
        field: Cow::Borrowed(field),
        detail: detail.to_string(),
    }
}

fn check_id(kind: IdKind, field: &'static str, id: &str) -> Result<(), Rejection> {
    validate_id(kind, id).map_err(|e| invalid(field, e))
}

fn check_text(text: &str) -> Result<(), Rejection> {
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

fn check_body(body: &MessageBody) -> Result<(), Rejection> {
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

fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), Rejection> {
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
fn require_role(state: &ConvState, actor: &str, min: Role) -> Result<Role, Rejection> {
    let role = state.role_of(actor).ok_or(Rejection::NotMember)?;
    if role < min {
        return Err(Rejection::Forbidden);
    }
    Ok(role)
}

fn require_group(state: &ConvState) -> Result<(), Rejection> {
    match state.kind {
        None => Err(Rejection::ConversationNotFound),
        Some(ConvKind::Direct) => Err(Rejection::NotInDirect),
        Some(ConvKind::Group) => Ok(()),
    }
}

fn require_above(actor_role: Role, state: &ConvState, target: &str) -> Result<(), Rejection> {
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

fn message_target(state: &ConvState, conv_seq: u64) -> Result<&MessageMeta, Rejection> {
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

/// Decides a command against the state at a known version. The events come
/// back without position: `conv_seq`, `prev_hash` and `at_ms` are filled in
/// from `state` and `now_ms` here; the adapter only encodes and publishes.
pub fn decide(
    state: &ConvState,
    cmd: &Command,
    now_ms: i64,
) -> Result<Vec<v1::ConvEvent>, Rejection> {
    check_id(IdKind::User, "actor", &cmd.actor)?;
    check_id(IdKind::ClientMsg, "client_msg_id", &cmd.client_msg_id)?;
    check_id(IdKind::Conversation, "conversation_id", &state.conv_id)?;
    let actor = cmd.actor.as_str();
    let kinds: Vec<Kind> = match &cmd.action {
        Action::CreateGroup { title, members } => {
            if state.exists() {
                return Err(Rejection::ConversationExists);
            }
            if state.conv_id.starts_with(DIRECT_PREFIX) {
                return Err(invalid(
                    "conversation_id",
                    format!("the {DIRECT_PREFIX} prefix is reserved for direct conversations"),
                ));
            }
            if title.len() > TITLE_BYTES_MAX {
                return Err(Rejection::TooLarge {
                    what: Cow::Borrowed("title"),
                    len: title.len(),
                    max: TITLE_BYTES_MAX,
                });
            }
            let mut initial = BTreeMap::new();
            initial.insert(actor.to_string(), Role::Owner);
            for (user, role) in members {
                check_id(IdKind::User, "member", user)?;
                if *role == Role::Owner && user != actor {
                    return Err(invalid("role", "a group has one owner: the creator"));
                }
                initial.entry(user.clone()).or_insert(*role);
            }
            if initial.len() > GROUP_MEMBERS_MAX {
                return Err(Rejection::GroupFull {
                    max: GROUP_MEMBERS_MAX,
                });
            }
            vec![Kind::Created(v1::ConversationCreated {
                kind: v1::ConversationKind::Group as i32,
                title: title.clone(),
                members: initial
                    .into_iter()
                    .map(|(user_id, role)| v1::InitialMember {
                        user_id,
                        role: role.to_wire() as i32,
                    })
                    .collect(),
            })]
        }
        Action::Send { peer, body, meta } => {
            check_body(body)?;
            check_meta(meta)?;
            let sent = Kind::MessageSent(v1::MessageSent {
                body: Some(match body {
                    MessageBody::Text(t) => Body::Text(t.clone()),
                    MessageBody::Media(m) => Body::Media(m.clone()),
                }),
                meta: meta.clone(),
            });
            if state.exists() {
                check_may_send(state, actor, now_ms)?;
                vec![sent]
            } else {
                // Only a direct conversation is created by a send, and only
                // under the id derived from its two members.
                let peer = peer.as_deref().ok_or(Rejection::ConversationNotFound)?;
                check_id(IdKind::User, "to_user_id", peer)?;
                if peer == actor {
                    return Err(Rejection::SelfTarget);
                }
                let expected =
                    direct_conversation_id(actor, peer).map_err(|e| invalid("to_user_id", e))?;
                if expected != state.conv_id {
                    return Err(Rejection::ConversationNotFound);
                }
                let mut pair = [actor.to_string(), peer.to_string()];
                pair.sort();
                let created = Kind::Created(v1::ConversationCreated {
                    kind: v1::ConversationKind::Direct as i32,
                    title: String::new(),
                    members: pair
                        .into_iter()
                        .map(|user_id| v1::InitialMember {
                            user_id,
                            role: v1::Role::Member as i32,
                        })
                        .collect(),
                });
                vec![created, sent]
            }
        }
        Action::AddMember { user, role } => {
            require_group(state)?;
            check_id(IdKind::User, "user_id", user)?;
            let actor_role = require_role(state, actor, Role::Admin)?;
            if state.is_member(user) {
                return Err(Rejection::AlreadyMember);
            }
            if state.blacklist.contains(user) {
                return Err(Rejection::Blacklisted);
            }
            // Granting admin is a role change, which is the owner's alone.
            if *role == Role::Owner || (*role == Role::Admin && actor_role != Role::Owner) {
                return Err(Rejection::Forbidden);
            }
            if state.members.len() >= GROUP_MEMBERS_MAX {
                return Err(Rejection::GroupFull {
                    max: GROUP_MEMBERS_MAX,
                });
            }
            vec![Kind::MemberAdded(v1::MemberAdded {
                user_id: user.clone(),
                role: role.to_wire() as i32,
            })]
        }
        Action::RemoveMember { user } => {
            require_group(state)?;
            check_id(IdKind::User, "user_id", user)?;
            let actor_role = require_role(state, actor, Role::Admin)?;
            if user == actor {
                return Err(Rejection::SelfTarget);
            }
            if !state.is_member(user) {
                return Err(Rejection::NotMember);
            }
            require_above(actor_role, state, user)?;
            vec![Kind::MemberRemoved(v1::MemberRemoved {
                user_id: user.clone(),
            })]
        }
        Action::Leave => {
            require_group(state)?;
            match state.role_of(actor) {
                None => return Err(Rejection::NotMember),
                Some(Role::Owner) => return Err(Rejection::OwnerMustTransfer),
                Some(_) => {}
            }
            vec![Kind::MemberLeft(v1::MemberLeft {})]
        }
        Action::ChangeRole { user, role } => {
            require_group(state)?;
            check_id(IdKind::User, "user_id", user)?;
            require_role(state, actor, Role::Owner)?;
            if user == actor {
                return Err(Rejection::SelfTarget);
            }
            if !state.is_member(user) {
                return Err(Rejection::NotMember);
            }
            if *role == Role::Owner {
                return Err(invalid("role", "use an ownership transfer"));
            }
            vec![Kind::RoleChanged(v1::RoleChanged {
                user_id: user.clone(),
                role: role.to_wire() as i32,
            })]
        }
        Action::TransferOwnership { user } => {
            require_group(state)?;
            check_id(IdKind::User, "user_id", user)?;
            require_role(state, actor, Role::Owner)?;
            if user == actor {
                return Err(Rejection::SelfTarget);
            }
            if !state.is_member(user) {
                return Err(Rejection::NotMember);
            }
            vec![Kind::OwnershipTransferred(v1::OwnershipTransferred {
                user_id: user.clone(),
            })]
        }
        Action::Mute { user, until_ms } => {
            require_group(state)?;
            check_id(IdKind::User, "user_id", user)?;
            let actor_role = require_role(state, actor, Role::Admin)?;
            if user == actor {
                return Err(Rejection::SelfTarget);
            }
            if !state.is_member(user) {
                return Err(Rejection::NotMember);
            }
            require_above(actor_role, state, user)?;
            if *until_ms <= now_ms {
                return Err(invalid("until_ms", "must be in the future"));
            }
            vec![Kind::Muted(v1::MemberMuted {
                user_id: user.clone(),
                until_ms: *until_ms,
            })]
        }
        Action::Unmute { user } => {
            require_group(state)?;
            check_id(IdKind::User, "user_id", user)?;
            let actor_role = require_role(state, actor, Role::Admin)?;
            let member = state.members.get(user).ok_or(Rejection::NotMember)?;
            require_above(actor_role, state, user)?;
            if member.muted_until_ms <= now_ms {
                return Err(Rejection::NotMuted);
            }
            vec![Kind::Unmuted(v1::MemberUnmuted {
                user_id: user.clone(),
            })]
        }
        Action::Blacklist { user } => {
            check_id(IdKind::User, "user_id", user)?;
            match state.kind {
                None => return Err(Rejection::ConversationNotFound),
                // A block: either member may block the other.
                Some(ConvKind::Direct) => {
                    if !state.is_member(actor) {
                        return Err(Rejection::NotMember);
                    }
                    if user == actor {
                        return Err(Rejection::SelfTarget);
                    }
                    if !state.is_member(user) {
                        return Err(Rejection::NotMember);
                    }
                }
                Some(ConvKind::Group) => {
                    let actor_role = require_role(state, actor, Role::Admin)?;
                    if user == actor {
                        return Err(Rejection::SelfTarget);
                    }
                    require_above(actor_role, state, user)?;
                }
            }
            if state.blacklist.contains(user) {
                return Err(Rejection::AlreadyBlacklisted);
            }
            vec![Kind::Blacklisted(v1::MemberBlacklisted {
                user_id: user.clone(),
            })]
        }
        Action::Unblacklist { user } => {
            check_id(IdKind::User, "user_id", user)?;
            match state.kind {
                None => return Err(Rejection::ConversationNotFound),
                Some(ConvKind::Direct) => {
                    if !state.is_member(actor) {
                        return Err(Rejection::NotMember);
                    }
                    // Only the blocker lifts a block, never the blocked.
                    if user == actor {
                        return Err(Rejection::SelfTarget);
                    }
                }
                Some(ConvKind::Group) => {
                    require_role(state, actor, Role::Admin)?;
                }
            }
            if !state.blacklist.contains(user) {
                return Err(Rejection::NotBlacklisted);
            }
            vec![Kind::Unblacklisted(v1::MemberUnblacklisted {
                user_id: user.clone(),
            })]
        }
        Action::Recall { conv_seq } => {
            if !state.exists() {
                return Err(Rejection::ConversationNotFound);
            }
            let role = state.role_of(actor).ok_or(Rejection::NotMember)?;
            let target = message_target(state, *conv_seq)?;
            let is_group_admin = state.kind == Some(ConvKind::Group) && role >= Role::Admin;
            if !is_group_admin {
                if target.sender != actor {
                    return Err(Rejection::NotSender);
                }
                if now_ms - target.sent_at_ms > RECALL_WINDOW_MS {
                    return Err(Rejection::RecallWindowPassed);
                }
            }
            vec![Kind::MessageRecalled(v1::MessageRecalled {
                target_conv_seq: *conv_seq,
            })]
        }
        Action::Edit { conv_seq, text } => {
            if !state.exists() {
                return Err(Rejection::ConversationNotFound);
            }
            check_text(text)?;
            if !state.is_member(actor) {
                return Err(Rejection::NotMember);
            }
            let target = message_target(state, *conv_seq)?;
            if target.sender != actor {
                return Err(Rejection::NotSender);
            }
            vec![Kind::MessageEdited(v1::MessageEdited {
                target_conv_seq: *conv_seq,
                text: text.clone(),
            })]
        }
    };
    Ok(kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| v1::ConvEvent {
            conversation_id: state.conv_id.clone(),
            conv_seq: state.conv_seq + 1 + i as u64,
            actor: actor.to_string(),
            at_ms: now_ms,
            // Only the first event's predecessor is known here; the adapter
            // chains the later ones as it encodes them.
            prev_hash: if i == 0 {
                state.last_hash.to_vec()
            } else {
                Vec::new()
            },
            client_msg_id: cmd.client_msg_id.clone(),
            schema_version: im_schema::SCHEMA_VERSION,
            kind: Some(kind),
        })
        .collect())
}

/// Folds one event into the state. Unknown event kinds (from a newer writer)
/// still advance `conv_seq`, so positions stay right.
pub fn apply(state: &mut ConvState, event: &v1::ConvEvent) {
    state.conv_seq = event.conv_seq;
    let Some(kind) = &event.kind else { return };
    match kind {
        Kind::Created(c) => {
            state.kind = Some(match v1::ConversationKind::try_from(c.kind) {
                Ok(v1::ConversationKind::Direct) => ConvKind::Direct,
                _ => ConvKind::Group,
            });
            state.title = c.title.clone();
            for m in &c.members {
                state.members.insert(
                    m.user_id.clone(),
                    MemberState {
                        role: Role::from_wire(m.role),
                        muted_until_ms: 0,
                    },
                );
            }
        }
        Kind::MemberAdded(a) => {
            state.members.insert(
                a.user_id.clone(),
                MemberState {
                    role: Role::from_wire(a.role),
                    muted_until_ms: 0,
                },
            );
        }
        Kind::MemberRemoved(r) => {
            state.members.remove(&r.user_id);
        }
        Kind::MemberLeft(_) => {
            state.members.remove(&event.actor);
        }
        Kind::RoleChanged(r) => {
            if let Some(m) = state.members.get_mut(&r.user_id) {
                m.role = Role::from_wire(r.role);
            }
        }
        Kind::OwnershipTransferred(t) => {
            if let Some(m) = state.members.get_mut(&event.actor) {
                m.role = Role::Admin;
            }
            if let Some(m) = state.members.get_mut(&t.user_id) {
                m.role = Role::Owner;
            }
        }
        Kind::Muted(m) => {
            if let Some(s) = state.members.get_mut(&m.user_id) {
                s.muted_until_ms = m.until_ms;
            }
        }
        Kind::Unmuted(u) => {
            if let Some(s) = state.members.get_mut(&u.user_id) {
                s.muted_until_ms = 0;
            }
        }
        Kind::Blacklisted(b) => {
            state.blacklist.insert(b.user_id.clone());
            if state.kind == Some(ConvKind::Group) {
                state.members.remove(&b.user_id);
            }
        }
        Kind::Unblacklisted(u) => {
            state.blacklist.remove(&u.user_id);
        }
        Kind::MessageSent(_) => {
            state.messages.insert(
                event.conv_seq,
                MessageMeta {
                    sender: event.actor.clone(),
                    client_msg_id: event.client_msg_id.clone(),
                    sent_at_ms: event.at_ms,
                    recalled: false,
                },
            );
            while state.messages.len() > MESSAGE_INDEX_MAX {
                state.messages.pop_first();
            }
        }
        Kind::MessageRecalled(r) => {
            if let Some(m) = state.messages.get_mut(&r.target_conv_seq) {
                m.recalled = true;
            }
        }
        Kind::MessageEdited(_) => {}
    }
}

/// The short name of an event's kind, carried in the `Im-Event-Type` header.
pub fn event_type(event: &v1::ConvEvent) -> &'static str {
    match &event.kind {
        None => "unknown",
        Some(Kind::Created(_)) => "conversation_created",
        Some(Kind::MemberAdded(_)) => "member_added",
        Some(Kind::MemberRemoved(_)) => "member_removed",
        Some(Kind::MemberLeft(_)) => "member_left",
        Some(Kind::RoleChanged(_)) => "role_changed",
        Some(Kind::OwnershipTransferred(_)) => "ownership_transferred",
        Some(Kind::Muted(_)) => "member_muted",
        Some(Kind::Unmuted(_)) => "member_unmuted",
        Some(Kind::Blacklisted(_)) => "member_blacklisted",
        Some(Kind::Unblacklisted(_)) => "member_unblacklisted",
        Some(Kind::MessageSent(_)) => "message_sent",
        Some(Kind::MessageRecalled(_)) => "message_recalled",
        Some(Kind::MessageEdited(_)) => "message_edited",
    }
}

/// Whether a receipt cursor may be appended: members only, and never past
/// the conversation's last seq.
pub fn check_receipt(state: &ConvState, user: &str, up_to_seq: u64) -> Result<(), Rejection> {
    if !state.exists() {
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

#[cfg(test)]
#[path = "conversation_tests.rs"]
mod tests;
