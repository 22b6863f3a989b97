//! `decide`: a command against the state at a known version, answered with
//! the events it appends or the rule that refuses it. The top checks the
//! ids, hands the action to its own function, and positions the events.

use std::borrow::Cow;
use std::collections::BTreeMap;

use im_schema::v1::{self, conv_event::Kind};

use super::checks::{
    check_body, check_id, check_may_send, check_meta, check_text, invalid, message_target,
    require_above, require_group, require_role,
};
use super::{
    Action, Command, ConvKind, ConvState, MessageBody, Rejection, Role, GROUP_MEMBERS_MAX,
    MEMBERS_PER_COMMAND_MAX, MEMBERS_PER_EVENT_MAX, RECALL_WINDOW_MS, TITLE_BYTES_MAX,
};
use crate::ids::{direct_conversation_id, IdKind, RESERVED_PREFIXES};

/// What an action appends, not yet positioned.
type Kinds = Result<Vec<Kind>, Rejection>;

/// Decides a command against the state at a known version. The events come
/// back stamped with `now_ms` but not yet positioned: `seal` gives them
/// their `conv_seq` and `prev_hash`.
pub fn decide(
    state: &ConvState,
    cmd: &Command,
    now_ms: i64,
) -> Result<Vec<v1::ConvEvent>, Rejection> {
    check_id(IdKind::User, "actor", &cmd.actor)?;
    check_id(IdKind::ClientMsg, "client_msg_id", &cmd.client_msg_id)?;
    check_id(IdKind::Conversation, "conversation_id", &state.conv_id)?;
    let actor = cmd.actor.as_str();
    let people_log = crate::ids::is_people_log(&state.conv_id);
    if crate::people::is_people_action(&cmd.action) {
        let kinds = crate::people::decide_people(state, actor, &cmd.action)?;
        return Ok(stamp(state, cmd, now_ms, kinds));
    }
    // A group creation under such an id is told of the reserved prefix.
    if people_log && !matches!(cmd.action, Action::CreateGroup { .. }) {
        return Err(invalid(
            "conversation_id",
            "a user's or a pair's log takes no conversation commands",
        ));
    }
    let kinds = match &cmd.action {
        Action::CreateGroup { title, members } => create_group(state, actor, title, members),
        Action::Send { peer, body, meta } => {
            send(state, actor, peer.as_deref(), body, meta, now_ms)
        }
        Action::AddMember { user, role } => add_member(state, actor, user, *role),
        Action::AddMembers { users } => add_members(state, actor, users),
        Action::RemoveMember { user } => remove_member(state, actor, user),
        Action::Leave => leave(state, actor),
        Action::ChangeRole { user, role } => change_role(state, actor, user, *role),
        Action::TransferOwnership { user } => transfer_ownership(state, actor, user),
        Action::Mute { user, until_ms } => mute(state, actor, user, *until_ms, now_ms),
        Action::Unmute { user } => unmute(state, actor, user, now_ms),
        Action::Blacklist { user } => blacklist(state, actor, user),
        Action::Unblacklist { user } => unblacklist(state, actor, user),
        Action::Recall { conv_seq } => recall(state, actor, *conv_seq, now_ms),
        Action::Edit { conv_seq, text } => edit(state, actor, *conv_seq, text),
        _ => unreachable!("people actions are decided above"),
    }?;
    Ok(stamp(state, cmd, now_ms, kinds))
}

/// The decided events, stamped; `seal` positions them.
fn stamp(state: &ConvState, cmd: &Command, now_ms: i64, kinds: Vec<Kind>) -> Vec<v1::ConvEvent> {
    kinds
        .into_iter()
        .map(|kind| v1::ConvEvent {
            conversation_id: state.conv_id.clone(),
            actor: cmd.actor.clone(),
            at_ms: now_ms,
            client_msg_id: cmd.client_msg_id.clone(),
            schema_version: im_schema::SCHEMA_VERSION,
            kind: Some(kind),
            ..Default::default()
        })
        .collect()
}

fn create_group(state: &ConvState, actor: &str, title: &str, members: &[(String, Role)]) -> Kinds {
    if state.exists() {
        return Err(Rejection::ConversationExists);
    }
    if let Some(prefix) = RESERVED_PREFIXES
        .iter()
        .find(|p| state.conv_id.starts_with(**p))
    {
        return Err(invalid(
            "conversation_id",
            format!("the {prefix} prefix is reserved for logs whose ids are derived"),
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
    if initial.len() > MEMBERS_PER_COMMAND_MAX + 1 {
        return Err(Rejection::TooLarge {
            what: Cow::Borrowed("members of one command"),
            len: initial.len() - 1,
            max: MEMBERS_PER_COMMAND_MAX,
        });
    }
    let whole = v1::ConversationCreated {
        kind: v1::ConversationKind::Group as i32,
        title: title.to_string(),
        members: wire_members(initial.clone()),
    };
    // One event when it fits (as every creation before bulk adds did, so
    // those replay to themselves); past it, the owner and the first others,
    // and the rest in events of their own, so no event outgrows the
    // stream's limit. Each event, replayed alone as its own command,
    // decides to itself.
    if im_schema::encode(&whole).len() <= CREATED_WHOLE_BYTES_MAX {
        return Ok(vec![Kind::Created(whole)]);
    }
    initial.remove(actor);
    let mut rest = initial.into_iter();
    let mut first: BTreeMap<String, Role> = rest.by_ref().take(MEMBERS_PER_EVENT_MAX - 1).collect();
    first.insert(actor.to_string(), Role::Owner);
    let mut kinds = vec![Kind::Created(v1::ConversationCreated {
        kind: v1::ConversationKind::Group as i32,
        title: title.to_string(),
        members: wire_members(first),
    })];
    kinds.extend(in_events(rest.collect()));
    Ok(kinds)
}

fn wire_members(members: impl IntoIterator<Item = (String, Role)>) -> Vec<v1::InitialMember> {
    members
        .into_iter()
        .map(|(user_id, role)| v1::InitialMember {
            user_id,
            role: role.to_wire() as i32,
        })
        .collect()
}

/// The largest creation kept as one event (bytes of its encoding): under
/// the streams' 64 KiB message limit with headers and envelope to spare.
const CREATED_WHOLE_BYTES_MAX: usize = 60 * 1024;

/// Members to add (sorted by id) as events of at most
/// `MEMBERS_PER_EVENT_MAX` each.
fn in_events(members: Vec<(String, Role)>) -> Vec<Kind> {
    members
        .chunks(MEMBERS_PER_EVENT_MAX)
        .map(|chunk| {
            Kind::MembersAdded(v1::MembersAdded {
                members: wire_members(chunk.iter().cloned()),
            })
        })
        .collect()
}

/// A bulk add: every id checked, the same permissions as one add, those
/// already members skipped (a retried bulk add completes what a failed one
/// began); refused when none is left to add or the group would be full.
fn add_members(state: &ConvState, actor: &str, users: &[(String, Role)]) -> Kinds {
    require_group(state)?;
    let actor_role = require_role(state, actor, Role::Admin)?;
    if users.len() > MEMBERS_PER_COMMAND_MAX {
        return Err(Rejection::TooLarge {
            what: Cow::Borrowed("members of one command"),
            len: users.len(),
            max: MEMBERS_PER_COMMAND_MAX,
        });
    }
    let mut new = BTreeMap::new();
    for (user, role) in users {
        check_id(IdKind::User, "user_id", user)?;
        if state.blacklist.contains(user.as_str()) {
            return Err(Rejection::Blacklisted);
        }
        if *role == Role::Owner || (*role == Role::Admin && actor_role != Role::Owner) {
            return Err(Rejection::Forbidden);
        }
        if !state.is_member(user) {
            new.entry(user.clone()).or_insert(*role);
        }
    }
    if new.is_empty() {
        return Err(Rejection::AlreadyMember);
    }
    if state.members.len() + new.len() > GROUP_MEMBERS_MAX {
        return Err(Rejection::GroupFull {
            max: GROUP_MEMBERS_MAX,
        });
    }
    Ok(in_events(new.into_iter().collect()))
}

fn send(
    state: &ConvState,
    actor: &str,
    peer: Option<&str>,
    body: &MessageBody,
    meta: &BTreeMap<String, String>,
    now_ms: i64,
) -> Kinds {
    check_body(body)?;
    check_meta(meta)?;
    let sent = Kind::MessageSent(v1::MessageSent {
        sealed: None,
        body: Some(body.to_wire()),
        meta: meta.clone(),
    });
    if state.exists() {
        check_may_send(state, actor, now_ms)?;
        return Ok(vec![sent]);
    }
    // Only a direct conversation is created by a send, and only under the
    // id derived from its two members.
    let peer = peer.ok_or(Rejection::ConversationNotFound)?;
    check_id(IdKind::User, "to_user_id", peer)?;
    if peer == actor {
        return Err(Rejection::SelfTarget);
    }
    let expected = direct_conversation_id(actor, peer).map_err(|e| invalid("to_user_id", e))?;
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
    Ok(vec![created, sent])
}

fn add_member(state: &ConvState, actor: &str, user: &str, role: Role) -> Kinds {
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
    if role == Role::Owner || (role == Role::Admin && actor_role != Role::Owner) {
        return Err(Rejection::Forbidden);
    }
    if state.members.len() >= GROUP_MEMBERS_MAX {
        return Err(Rejection::GroupFull {
            max: GROUP_MEMBERS_MAX,
        });
    }
    Ok(vec![Kind::MemberAdded(v1::MemberAdded {
        user_id: user.to_string(),
        role: role.to_wire() as i32,
    })])
}

/// The checks removing, muting and role changes share: a group, a valid
/// target who is a member and not the actor, an actor of at least `min`.
fn acting_on_member(
    state: &ConvState,
    actor: &str,
    user: &str,
    min: Role,
) -> Result<Role, Rejection> {
    require_group(state)?;
    check_id(IdKind::User, "user_id", user)?;
    let actor_role = require_role(state, actor, min)?;
    if user == actor {
        return Err(Rejection::SelfTarget);
    }
    if !state.is_member(user) {
        return Err(Rejection::NotMember);
    }
    Ok(actor_role)
}

fn remove_member(state: &ConvState, actor: &str, user: &str) -> Kinds {
    let actor_role = acting_on_member(state, actor, user, Role::Admin)?;
    require_above(actor_role, state, user)?;
    Ok(vec![Kind::MemberRemoved(v1::MemberRemoved {
        user_id: user.to_string(),
    })])
}

fn leave(state: &ConvState, actor: &str) -> Kinds {
    require_group(state)?;
    match state.role_of(actor) {
        None => Err(Rejection::NotMember),
        Some(Role::Owner) => Err(Rejection::OwnerMustTransfer),
        Some(_) => Ok(vec![Kind::MemberLeft(v1::MemberLeft {})]),
    }
}

fn change_role(state: &ConvState, actor: &str, user: &str, role: Role) -> Kinds {
    acting_on_member(state, actor, user, Role::Owner)?;
    if role == Role::Owner {
        return Err(invalid("role", "use an ownership transfer"));
    }
    Ok(vec![Kind::RoleChanged(v1::RoleChanged {
        user_id: user.to_string(),
        role: role.to_wire() as i32,
    })])
}

fn transfer_ownership(state: &ConvState, actor: &str, user: &str) -> Kinds {
    acting_on_member(state, actor, user, Role::Owner)?;
    Ok(vec![Kind::OwnershipTransferred(v1::OwnershipTransferred {
        user_id: user.to_string(),
    })])
}

fn mute(state: &ConvState, actor: &str, user: &str, until_ms: i64, now_ms: i64) -> Kinds {
    let actor_role = acting_on_member(state, actor, user, Role::Admin)?;
    require_above(actor_role, state, user)?;
    if until_ms <= now_ms {
        return Err(invalid("until_ms", "must be in the future"));
    }
    Ok(vec![Kind::Muted(v1::MemberMuted {
        user_id: user.to_string(),
        until_ms,
    })])
}

fn unmute(state: &ConvState, actor: &str, user: &str, now_ms: i64) -> Kinds {
    require_group(state)?;
    check_id(IdKind::User, "user_id", user)?;
    let actor_role = require_role(state, actor, Role::Admin)?;
    let member = state.members.get(user).ok_or(Rejection::NotMember)?;
    require_above(actor_role, state, user)?;
    if member.muted_until_ms <= now_ms {
        return Err(Rejection::NotMuted);
    }
    Ok(vec![Kind::Unmuted(v1::MemberUnmuted {
        user_id: user.to_string(),
    })])
}

fn blacklist(state: &ConvState, actor: &str, user: &str) -> Kinds {
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
        Some(_) => {
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
    Ok(vec![Kind::Blacklisted(v1::MemberBlacklisted {
        user_id: user.to_string(),
    })])
}

fn unblacklist(state: &ConvState, actor: &str, user: &str) -> Kinds {
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
        Some(_) => {
            require_role(state, actor, Role::Admin)?;
        }
    }
    if !state.blacklist.contains(user) {
        return Err(Rejection::NotBlacklisted);
    }
    Ok(vec![Kind::Unblacklisted(v1::MemberUnblacklisted {
        user_id: user.to_string(),
    })])
}

fn recall(state: &ConvState, actor: &str, conv_seq: u64, now_ms: i64) -> Kinds {
    if !state.exists() {
        return Err(Rejection::ConversationNotFound);
    }
    let role = state.role_of(actor).ok_or(Rejection::NotMember)?;
    let target = message_target(state, conv_seq)?;
    let is_group_admin = state.kind == Some(ConvKind::Group) && role >= Role::Admin;
    if !is_group_admin {
        if target.sender != actor {
            return Err(Rejection::NotSender);
        }
        if now_ms - target.sent_at_ms > RECALL_WINDOW_MS {
            return Err(Rejection::RecallWindowPassed);
        }
    }
    Ok(vec![Kind::MessageRecalled(v1::MessageRecalled {
        target_conv_seq: conv_seq,
    })])
}

fn edit(state: &ConvState, actor: &str, conv_seq: u64, text: &str) -> Kinds {
    if !state.exists() {
        return Err(Rejection::ConversationNotFound);
    }
    check_text(text)?;
    if !state.is_member(actor) {
        return Err(Rejection::NotMember);
    }
    let target = message_target(state, conv_seq)?;
    if target.sender != actor {
        return Err(Rejection::NotSender);
    }
    Ok(vec![Kind::MessageEdited(v1::MessageEdited {
        sealed: None,
        target_conv_seq: conv_seq,
        text: text.to_string(),
    })])
}
