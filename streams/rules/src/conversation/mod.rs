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

use im_schema::v1::{self, conv_event::Kind};

use crate::people::{Audience, People};

mod checks;
mod decide;

pub use checks::{check_may_send, check_receipt, invalid};
pub use decide::decide;

/// A sender may recall their own message for this long; admins any time.
pub const RECALL_WINDOW_MS: i64 = 2 * 60 * 1000;

/// Longest message text, in bytes. Long enough for any chat message, short
/// enough that one send cannot make a frame, an event or a fan-out large.
pub const TEXT_BYTES_MAX: usize = 16 * 1024;

/// Longest group title, in bytes.
pub const TITLE_BYTES_MAX: usize = 256;

/// Most members a group may have (a large group or channel). Bounds the
/// state every writer caches (~100 B a member: 10 MB at most) and the
/// member rows of one conversation; a message to it costs per connected
/// member, not per member (ARCHITECTURE.md, large groups).
pub const GROUP_MEMBERS_MAX: usize = 100_000;

/// Members one event names. 500 ids of `ID_LEN_MAX` bytes encode to ~35 KiB,
/// under the streams' 64 KiB message limit with the title and headers.
pub const MEMBERS_PER_EVENT_MAX: usize = 500;

/// Members one command adds (a creation or a bulk add): at most 10
/// events, appended in one request within its time bound.
pub const MEMBERS_PER_COMMAND_MAX: usize = 5_000;

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
    /// A user's own log (`people`): profile and privacy.
    User,
    /// The log of a pair of users (`people`): contacts and blocks.
    Pair,
}

impl ConvKind {
    pub fn from_wire(v: i32) -> ConvKind {
        match v1::ConversationKind::try_from(v) {
            Ok(v1::ConversationKind::Direct) => ConvKind::Direct,
            Ok(v1::ConversationKind::User) => ConvKind::User,
            Ok(v1::ConversationKind::Pair) => ConvKind::Pair,
            _ => ConvKind::Group,
        }
    }

    /// Whether its log holds messages (a direct conversation or a group),
    /// not people.
    pub fn is_chat(self) -> bool {
        matches!(self, ConvKind::Direct | ConvKind::Group)
    }
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
    /// A user's or a pair's log: what the people rules decide on.
    pub people: People,
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
            people: People::default(),
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
    /// Add several members at once (at most `MEMBERS_PER_COMMAND_MAX`):
    /// those already members are skipped; events of at most
    /// `MEMBERS_PER_EVENT_MAX` each.
    AddMembers {
        users: Vec<(String, Role)>,
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
    /// People (`people`), on the actor's own log: the whole profile.
    UpdateProfile {
        display_name: String,
        avatar: Option<v1::MediaRef>,
        status: String,
    },
    SetPrivacy {
        direct_chats: Audience,
        group_adds: Audience,
    },
    /// People, on the log of the actor and `user`.
    RequestContact {
        user: String,
    },
    AcceptContact {
        user: String,
    },
    DeclineContact {
        user: String,
    },
    RemoveContact {
        user: String,
    },
    BlockUser {
        user: String,
    },
    UnblockUser {
        user: String,
    },
    /// Notifications (`people::push`), on the actor's own log: a device
    /// to wake, its end, a mute.
    RegisterPush(v1::PushRegistered),
    UnregisterPush(v1::PushUnregistered),
    MuteNotifications(v1::NotifyMuted),
    /// On the user's own log: their content's keys were destroyed
    /// (`requested_by`: "self" or the operator's name).
    EraseUser {
        requested_by: String,
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
    #[error("not allowed here: blacklisted in this conversation, or a block between you")]
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
    #[error("already contacts")]
    AlreadyContacts,
    #[error("a request is already pending")]
    AlreadyRequested,
    #[error("no pending request from this user")]
    NoRequest,
    #[error("not contacts, and no request of yours is pending")]
    NotContacts,
    #[error("already blocked")]
    AlreadyBlocked,
    #[error("not blocked")]
    NotBlocked,
    #[error("you block this user: unblock them first")]
    UnblockFirst,
    #[error("{user} does not accept this from you")]
    NotAccepting { user: String },
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
            Rejection::AlreadyContacts => "already_contacts",
            Rejection::AlreadyRequested => "already_requested",
            Rejection::NoRequest => "no_request",
            Rejection::NotContacts => "not_contacts",
            Rejection::AlreadyBlocked => "already_blocked",
            Rejection::NotBlocked => "not_blocked",
            Rejection::UnblockFirst => "unblock_first",
            Rejection::NotAccepting { .. } => "not_accepting",
        }
    }
}

impl ConvState {
    /// A member joining with a wire role, unmuted.
    fn join(&mut self, user: &str, role: i32) {
        self.members.insert(
            user.to_string(),
            MemberState {
                role: Role::from_wire(role),
                muted_until_ms: 0,
            },
        );
    }
}

/// Folds one event into the state. Unknown event kinds (from a newer writer)
/// still advance `conv_seq`, so positions stay right.
pub fn apply(state: &mut ConvState, event: &v1::ConvEvent) {
    state.conv_seq = event.conv_seq;
    let Some(kind) = &event.kind else { return };
    match kind {
        Kind::Created(c) => {
            state.kind = Some(ConvKind::from_wire(c.kind));
            state.title = c.title.clone();
            for m in &c.members {
                state.join(&m.user_id, m.role);
            }
        }
        Kind::MemberAdded(a) => state.join(&a.user_id, a.role),
        Kind::MembersAdded(a) => {
            for m in &a.members {
                state.join(&m.user_id, m.role);
            }
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
        Kind::ProfileUpdated(_)
        | Kind::PrivacyChanged(_)
        | Kind::ContactRequested(_)
        | Kind::ContactAccepted(_)
        | Kind::ContactDeclined(_)
        | Kind::ContactRemoved(_)
        | Kind::UserBlocked(_)
        | Kind::UserUnblocked(_)
        | Kind::PushRegistered(_)
        | Kind::PushUnregistered(_)
        | Kind::NotifyMuted(_)
        | Kind::UserErased(_) => crate::people::fold(&mut state.people, event),
    }
}

/// The short name of an event's kind, carried in the `Im-Event-Type` header.
pub fn event_type(event: &v1::ConvEvent) -> &'static str {
    match &event.kind {
        None => "unknown",
        Some(Kind::Created(_)) => "conversation_created",
        Some(Kind::MemberAdded(_)) => "member_added",
        Some(Kind::MembersAdded(_)) => "members_added",
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
        Some(Kind::ProfileUpdated(_)) => "profile_updated",
        Some(Kind::PrivacyChanged(_)) => "privacy_changed",
        Some(Kind::ContactRequested(_)) => "contact_requested",
        Some(Kind::ContactAccepted(_)) => "contact_accepted",
        Some(Kind::ContactDeclined(_)) => "contact_declined",
        Some(Kind::ContactRemoved(_)) => "contact_removed",
        Some(Kind::UserBlocked(_)) => "user_blocked",
        Some(Kind::UserUnblocked(_)) => "user_unblocked",
        Some(Kind::PushRegistered(_)) => "push_registered",
        Some(Kind::PushUnregistered(_)) => "push_unregistered",
        Some(Kind::NotifyMuted(_)) => "notify_muted",
        Some(Kind::UserErased(_)) => "user_erased",
    }
}

#[cfg(test)]
mod tests;
