//! People as aggregates of the same log: a user's own log (`us_<hash>`:
//! profile and privacy, its one member the user) and the log of a pair of
//! users (`ct_<hash>`: contact requests, contacts, blocks, its members the
//! two). They are decided by the same `decide`, sealed, chained, signed
//! and judged like conversations, so every guarantee of the append path
//! (compare-and-set per log, idempotency at any delay, validity) holds for
//! them unchanged; they hold no messages.
//!
//! Reaching someone (starting a direct conversation, adding them to a
//! group) depends on two other logs than the conversation's: the target's
//! privacy and the pair's contact and blocks. The writer reads both at
//! their latest version and asks `check_reach` before it appends.

use std::borrow::Cow;
use std::collections::BTreeSet;

use im_schema::v1::{self, conv_event::Kind};
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use crate::conversation::{invalid, Action, ConvKind, ConvState, Rejection, Role};
use crate::ids::{pair_log_id, user_log_id, validate_id, IdKind};

pub mod push;
#[cfg(test)]
mod tests;

/// A display name's length in user-perceived characters (graphemes).
pub const DISPLAY_NAME_GRAPHEMES_MAX: usize = 64;
/// A status line's length in graphemes.
pub const STATUS_GRAPHEMES_MAX: usize = 140;
/// Bytes of a display name or status: 64 graphemes of the longest common
/// emoji sequences (~28 bytes each) fit (stacked marks are bounded per
/// grapheme, `GRAPHEME_CODE_POINTS_MAX`).
pub const PROFILE_TEXT_BYTES_MAX: usize = 2_048;
/// Who asked for an erasure ("self" or an operator's name): a name, not
/// a reason, so the log carries no content about the user.
pub const REQUESTED_BY_BYTES_MAX: usize = 128;

/// Who may reach a user a given way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Audience {
    #[default]
    Everyone,
    Contacts,
}

impl Audience {
    pub fn from_wire(v: i32) -> Audience {
        match v1::Audience::try_from(v) {
            Ok(v1::Audience::Contacts) => Audience::Contacts,
            _ => Audience::Everyone,
        }
    }

    pub fn to_wire(self) -> v1::Audience {
        match self {
            Audience::Everyone => v1::Audience::Everyone,
            Audience::Contacts => v1::Audience::Contacts,
        }
    }
}

/// Where a pair stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Contact {
    #[default]
    None,
    /// `from` asked the other; `hidden` when asked while blocked by them.
    Pending {
        from: String,
        hidden: bool,
    },
    Contacts,
}

/// What the people rules decide on, beside the members of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct People {
    /// A user's log: who may start a direct conversation with the user.
    pub direct_chats: Audience,
    /// A user's log: who may add the user to a group.
    pub group_adds: Audience,
    /// A pair's log.
    pub contact: Contact,
    /// A pair's log: who of the two blocks the other.
    pub blocked_by: BTreeSet<String>,
}

impl People {
    /// The row the `members` projection keeps (and a snapshot carries);
    /// the profile, which no rule reads, is the projection's to add.
    pub fn to_row(&self) -> v1::PeopleRow {
        let (contact, requested_by, request_hidden) = match &self.contact {
            Contact::None => (v1::ContactStatus::None, String::new(), false),
            Contact::Pending { from, hidden } => {
                (v1::ContactStatus::Pending, from.clone(), *hidden)
            }
            Contact::Contacts => (v1::ContactStatus::Contacts, String::new(), false),
        };
        v1::PeopleRow {
            privacy: Some(v1::PrivacyChanged {
                direct_chats: self.direct_chats.to_wire() as i32,
                group_adds: self.group_adds.to_wire() as i32,
            }),
            contact: contact as i32,
            requested_by,
            request_hidden,
            blocked_by: self.blocked_by.iter().cloned().collect(),
            ..Default::default()
        }
    }

    pub fn from_row(row: &v1::PeopleRow) -> People {
        let privacy = row.privacy.unwrap_or_default();
        People {
            direct_chats: Audience::from_wire(privacy.direct_chats),
            group_adds: Audience::from_wire(privacy.group_adds),
            contact: match v1::ContactStatus::try_from(row.contact) {
                Ok(v1::ContactStatus::Pending) => Contact::Pending {
                    from: row.requested_by.clone(),
                    hidden: row.request_hidden,
                },
                Ok(v1::ContactStatus::Contacts) => Contact::Contacts,
                _ => Contact::None,
            },
            blocked_by: row.blocked_by.iter().cloned().collect(),
        }
    }
}

/// What the people actions append, not yet positioned.
type Kinds = Result<Vec<Kind>, Rejection>;

/// Whether an action belongs on a people log.
pub fn is_people_action(action: &Action) -> bool {
    matches!(
        action,
        Action::UpdateProfile { .. }
            | Action::EraseUser { .. }
            | Action::SetPrivacy { .. }
            | Action::RequestContact { .. }
            | Action::AcceptContact { .. }
            | Action::DeclineContact { .. }
            | Action::RemoveContact { .. }
            | Action::BlockUser { .. }
            | Action::UnblockUser { .. }
    ) || push::is_push_action(action)
}

/// The user a pair action names (the other of the two).
pub fn pair_target(action: &Action) -> Option<&str> {
    match action {
        Action::RequestContact { user }
        | Action::AcceptContact { user }
        | Action::DeclineContact { user }
        | Action::RemoveContact { user }
        | Action::BlockUser { user }
        | Action::UnblockUser { user } => Some(user),
        _ => None,
    }
}

/// The log an action by `actor` goes to: the actor's own, or the pair's.
pub fn log_of(actor: &str, action: &Action) -> Result<String, Rejection> {
    match pair_target(action) {
        Some(user) => {
            check_user("user_id", user)?;
            pair_log_id(actor, user).map_err(|e| invalid("user_id", e))
        }
        None => user_log_id(actor).map_err(|e| invalid("actor", e)),
    }
}

fn check_user(field: &'static str, user: &str) -> Result<(), Rejection> {
    validate_id(IdKind::User, user).map_err(|e| invalid(field, e))
}

/// Decides a people action on its log: the log's creation first when it
/// has none yet, then the action's event.
pub fn decide_people(state: &ConvState, actor: &str, action: &Action) -> Kinds {
    let mut kinds = Vec::new();
    let created;
    let state = if state.exists() {
        state
    } else {
        let creation = creation(state, actor, action)?;
        created = {
            let mut s = state.clone();
            crate::conversation::apply(
                &mut s,
                &v1::ConvEvent {
                    conv_seq: state.conv_seq + 1,
                    kind: Some(creation.clone()),
                    ..Default::default()
                },
            );
            s
        };
        kinds.push(creation);
        &created
    };
    kinds.push(match state.kind {
        Some(ConvKind::User) => on_user_log(state, actor, action)?,
        Some(ConvKind::Pair) => on_pair_log(state, actor, action)?,
        _ => return Err(not_a_people_log()),
    });
    Ok(kinds)
}

fn not_a_people_log() -> Rejection {
    invalid(
        "conversation_id",
        "people commands go to a user's or a pair's log",
    )
}

/// The creation of the log an action by `actor` goes to, under the id
/// derived from who it names (no one creates another user's log).
fn creation(state: &ConvState, actor: &str, action: &Action) -> Result<Kind, Rejection> {
    let expected = log_of(actor, action)?;
    if expected != state.conv_id {
        return Err(invalid(
            "conversation_id",
            "not the log this command belongs to",
        ));
    }
    let (kind, mut members) = match pair_target(action) {
        Some(user) if user == actor => return Err(Rejection::SelfTarget),
        Some(user) => (
            v1::ConversationKind::Pair,
            vec![
                (actor.to_string(), Role::Member),
                (user.to_string(), Role::Member),
            ],
        ),
        None => (
            v1::ConversationKind::User,
            vec![(actor.to_string(), Role::Owner)],
        ),
    };
    members.sort();
    Ok(Kind::Created(v1::ConversationCreated {
        kind: kind as i32,
        title: String::new(),
        members: members
            .into_iter()
            .map(|(user_id, role)| v1::InitialMember {
                user_id,
                role: role.to_wire() as i32,
            })
            .collect(),
    }))
}

fn on_user_log(state: &ConvState, actor: &str, action: &Action) -> Result<Kind, Rejection> {
    if state.role_of(actor) != Some(Role::Owner) {
        return Err(Rejection::Forbidden);
    }
    match action {
        Action::UpdateProfile {
            display_name,
            avatar,
            status,
        } => {
            if let Some(a) = avatar {
                if !a.mime.starts_with("image/") {
                    return Err(invalid("avatar", format!("{} is not an image", a.mime)));
                }
            }
            Ok(Kind::ProfileUpdated(v1::ProfileUpdated {
                display_name: display_name_of(display_name)?,
                avatar: avatar.clone(),
                status: profile_text("status", status, 0, STATUS_GRAPHEMES_MAX)?,
                sealed: None,
            }))
        }
        Action::EraseUser { requested_by } => {
            if requested_by.is_empty() || requested_by.len() > REQUESTED_BY_BYTES_MAX {
                return Err(invalid(
                    "requested_by",
                    format!("1..={REQUESTED_BY_BYTES_MAX} bytes"),
                ));
            }
            Ok(Kind::UserErased(v1::UserErased {
                requested_by: requested_by.clone(),
            }))
        }
        Action::SetPrivacy {
            direct_chats,
            group_adds,
        } => Ok(Kind::PrivacyChanged(v1::PrivacyChanged {
            direct_chats: direct_chats.to_wire() as i32,
            group_adds: group_adds.to_wire() as i32,
        })),
        a if push::is_push_action(a) => push::decide_push(a),
        _ => Err(not_a_people_log()),
    }
}

/// A display name as stored (`profile_text`), which must also show: a
/// name of only invisible characters (zero-width ones, fillers, lone
/// combining marks) would read as nobody's.
pub fn display_name_of(text: &str) -> Result<String, Rejection> {
    let name = profile_text("display_name", text, 1, DISPLAY_NAME_GRAPHEMES_MAX)?;
    if !name.chars().any(shows) {
        return Err(invalid("display_name", "nothing in it shows"));
    }
    Ok(name)
}

/// Whether a character shows by itself: not space, not a combining mark,
/// not a joiner or a filler that renders blank.
fn shows(c: char) -> bool {
    !c.is_whitespace()
        && !unicode_normalization::char::is_combining_mark(c)
        && !matches!(
            c,
            '\u{200C}'
                | '\u{200D}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FFA0}'
        )
}

/// Code points one user-perceived character may hold: the longest emoji
/// sequences (a family with skin tones) hold about ten; a letter under a
/// thousand stacked accents is one grapheme of a thousand.
pub const GRAPHEME_CODE_POINTS_MAX: usize = 16;

/// A profile text as stored: NFC, without surrounding white space, of
/// `min..=max` graphemes of at most `GRAPHEME_CODE_POINTS_MAX` code points
/// and at most `PROFILE_TEXT_BYTES_MAX` bytes, with no control character
/// (C0, C1, line and paragraph separators, the bidirectional marks and
/// overrides that make a name read as another, zero-width spaces and
/// joiners that hide text).
pub fn profile_text(
    field: &'static str,
    text: &str,
    min: usize,
    max: usize,
) -> Result<String, Rejection> {
    let text: String = text.trim().nfc().collect();
    if let Some(c) = text.chars().find(|c| is_forbidden_char(*c)) {
        return Err(invalid(
            field,
            format!("contains the control character U+{:04X}", c as u32),
        ));
    }
    if text.len() > PROFILE_TEXT_BYTES_MAX {
        return Err(Rejection::TooLarge {
            what: Cow::Borrowed(field),
            len: text.len(),
            max: PROFILE_TEXT_BYTES_MAX,
        });
    }
    if let Some(g) = text
        .graphemes(true)
        .find(|g| g.chars().count() > GRAPHEME_CODE_POINTS_MAX)
    {
        let n = g.chars().count();
        return Err(invalid(
            field,
            format!("a character of {n} code points (at most {GRAPHEME_CODE_POINTS_MAX})"),
        ));
    }
    let graphemes = text.graphemes(true).count();
    if graphemes < min {
        return Err(invalid(field, "empty"));
    }
    if graphemes > max {
        return Err(Rejection::TooLarge {
            what: Cow::Owned(format!("{field} (characters)")),
            len: graphemes,
            max,
        });
    }
    Ok(text)
}

fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{061C}'
                | '\u{2060}'..='\u{2064}'
                | '\u{180E}'
                | '\u{FEFF}'
        )
}

fn on_pair_log(state: &ConvState, actor: &str, action: &Action) -> Result<Kind, Rejection> {
    let user = pair_target(action).ok_or_else(not_a_people_log)?;
    check_user("user_id", user)?;
    if user == actor {
        return Err(Rejection::SelfTarget);
    }
    if !state.is_member(actor) || !state.is_member(user) {
        return Err(invalid("user_id", "not the pair this log belongs to"));
    }
    let p = &state.people;
    let blocks = |who: &str| p.blocked_by.contains(who);
    let user_id = user.to_string();
    match action {
        Action::RequestContact { .. } => {
            if blocks(actor) {
                return Err(Rejection::UnblockFirst);
            }
            match &p.contact {
                Contact::Contacts => Err(Rejection::AlreadyContacts),
                // Asked by the other: asking back accepts.
                Contact::Pending {
                    from,
                    hidden: false,
                } if from == user => Ok(Kind::ContactAccepted(v1::ContactAccepted { user_id })),
                // A request asked while blocked may be asked again once
                // the block is lifted; until then it reads as any pending one.
                Contact::Pending { from, hidden }
                    if from == actor && (!*hidden || blocks(user)) =>
                {
                    Err(Rejection::AlreadyRequested)
                }
                _ => Ok(Kind::ContactRequested(v1::ContactRequested {
                    user_id,
                    hidden: blocks(user),
                })),
            }
        }
        Action::AcceptContact { .. } | Action::DeclineContact { .. } => {
            let asked =
                matches!(&p.contact, Contact::Pending { from, hidden: false } if from == user);
            if !asked {
                return Err(Rejection::NoRequest);
            }
            if matches!(action, Action::DeclineContact { .. }) {
                return Ok(Kind::ContactDeclined(v1::ContactDeclined { user_id }));
            }
            if blocks(actor) {
                return Err(Rejection::UnblockFirst);
            }
            Ok(Kind::ContactAccepted(v1::ContactAccepted { user_id }))
        }
        Action::RemoveContact { .. } => match &p.contact {
            Contact::Contacts => Ok(Kind::ContactRemoved(v1::ContactRemoved {
                user_id,
                hidden: false,
            })),
            Contact::Pending { from, hidden } if from == actor => {
                let hidden = *hidden;
                Ok(Kind::ContactRemoved(v1::ContactRemoved { user_id, hidden }))
            }
            _ => Err(Rejection::NotContacts),
        },
        Action::BlockUser { .. } if blocks(actor) => Err(Rejection::AlreadyBlocked),
        Action::BlockUser { .. } => Ok(Kind::UserBlocked(v1::UserBlocked { user_id })),
        Action::UnblockUser { .. } if !blocks(actor) => Err(Rejection::NotBlocked),
        Action::UnblockUser { .. } => Ok(Kind::UserUnblocked(v1::UserUnblocked { user_id })),
        _ => Err(not_a_people_log()),
    }
}

/// Folds a people event into its log's people state (what `apply` does
/// for them; the projections fold their rows with it too).
pub fn fold(p: &mut People, event: &v1::ConvEvent) {
    match &event.kind {
        Some(Kind::PrivacyChanged(c)) => {
            p.direct_chats = Audience::from_wire(c.direct_chats);
            p.group_adds = Audience::from_wire(c.group_adds);
        }
        Some(Kind::ContactRequested(r)) => {
            p.contact = Contact::Pending {
                from: event.actor.clone(),
                hidden: r.hidden,
            }
        }
        Some(Kind::ContactAccepted(_)) => p.contact = Contact::Contacts,
        Some(Kind::ContactDeclined(_)) | Some(Kind::ContactRemoved(_)) => p.contact = Contact::None,
        Some(Kind::UserBlocked(_)) => {
            p.blocked_by.insert(event.actor.clone());
        }
        Some(Kind::UserUnblocked(_)) => {
            p.blocked_by.remove(&event.actor);
        }
        _ => {}
    }
}

/// Whether the other user of a pair's log is told of `event` (the actor's
/// own devices always are): not of a block or its lifting, which the
/// blocked is never told, nor of a hidden request or its withdrawal.
pub fn other_is_told(event: &v1::ConvEvent) -> bool {
    match &event.kind {
        Some(Kind::UserBlocked(_)) | Some(Kind::UserUnblocked(_)) => false,
        Some(Kind::ContactRequested(r)) => !r.hidden,
        Some(Kind::ContactRemoved(r)) => !r.hidden,
        _ => true,
    }
}

/// How a command reaches another user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Starting a direct conversation with them.
    DirectChat,
    /// Adding them to a group (a creation with them, an add).
    GroupAdd,
}

/// Whom a command reaches in a way the targets' privacy governs: the peer
/// of a send that creates a direct conversation, the members a group
/// creation or an add brings in (not those already members). None for
/// every other command, which needs no other log.
pub fn reach_of(state: &ConvState, actor: &str, action: &Action) -> Option<(Reach, Vec<String>)> {
    let others = |users: &mut dyn Iterator<Item = &String>| -> Vec<String> {
        let mut v: Vec<String> = users
            .filter(|u| u.as_str() != actor && !state.is_member(u))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (reach, users) = match action {
        Action::Send { peer: Some(p), .. } if !state.exists() => {
            (Reach::DirectChat, vec![p.clone()])
        }
        Action::CreateGroup { members, .. } => {
            (Reach::GroupAdd, others(&mut members.iter().map(|(u, _)| u)))
        }
        Action::AddMember { user, .. } => (Reach::GroupAdd, others(&mut std::iter::once(user))),
        Action::AddMembers { users } => {
            (Reach::GroupAdd, others(&mut users.iter().map(|(u, _)| u)))
        }
        _ => return None,
    };
    (!users.is_empty()).then_some((reach, users))
}

/// Whether `actor` may reach `target` this way, given the target's own log
/// and the pair's (either the default when it has no events). The refusal is
/// the same whether the target's privacy or a block by the target stands
/// in the way, so a block cannot be told apart by trying.
pub fn check_reach(
    actor: &str,
    target: &str,
    reach: Reach,
    target_log: &People,
    pair: &People,
) -> Result<(), Rejection> {
    if pair.blocked_by.contains(actor) {
        return Err(Rejection::UnblockFirst);
    }
    let audience = match reach {
        Reach::DirectChat => target_log.direct_chats,
        Reach::GroupAdd => target_log.group_adds,
    };
    let contacts = pair.contact == Contact::Contacts;
    if pair.blocked_by.contains(target) || (audience == Audience::Contacts && !contacts) {
        return Err(Rejection::NotAccepting {
            user: target.to_string(),
        });
    }
    Ok(())
}

/// The stand-in command a people log's creation is checked as: the
/// creation does not depend on the command that made it (its event is
/// checked on its own as the next one), so any command allowed on an
/// empty log of that kind decides it.
pub(crate) fn creation_stand_in(event: &v1::ConvEvent) -> Option<Action> {
    let Some(Kind::Created(c)) = &event.kind else {
        return None;
    };
    match v1::ConversationKind::try_from(c.kind) {
        Ok(v1::ConversationKind::User) => Some(Action::SetPrivacy {
            direct_chats: Audience::Everyone,
            group_adds: Audience::Everyone,
        }),
        Ok(v1::ConversationKind::Pair) => {
            let other = c.members.iter().find(|m| m.user_id != event.actor)?;
            Some(Action::BlockUser {
                user: other.user_id.clone(),
            })
        }
        _ => None,
    }
}
