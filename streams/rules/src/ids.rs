//! The one id validator. User ids, conversation ids and client message ids
//! become NATS subject tokens or header values, so every entry point checks
//! them here: `[A-Za-z0-9_-]`, 1..=`ID_LEN_MAX` bytes. A `.`, `*`, `>`, space,
//! `:` or control character is refused before it can reach a subject.

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest id accepted. Subjects stay short (they are stored with every
/// message) and ids fit comfortably in a header and a log line.
pub const ID_LEN_MAX: usize = 64;

/// What an id names; used in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    User,
    Conversation,
    ClientMsg,
    Device,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::User => "user id",
            IdKind::Conversation => "conversation id",
            IdKind::ClientMsg => "client_msg_id",
            IdKind::Device => "device id",
        })
    }
}

/// Why an id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: IdKind },
    #[error("{kind} is {len} bytes, longer than {ID_LEN_MAX}")]
    TooLong { kind: IdKind, len: usize },
    #[error("{kind} contains {ch:?}; only A-Z a-z 0-9 _ - are allowed")]
    BadChar { kind: IdKind, ch: char },
}

/// Checks an id against the strict charset and length bound.
pub fn validate_id(kind: IdKind, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if id.len() > ID_LEN_MAX {
        return Err(IdError::TooLong {
            kind,
            len: id.len(),
        });
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(ch) => Err(IdError::BadChar { kind, ch }),
        None => Ok(()),
    }
}

/// Prefix reserved for direct conversations; group ids may not use it.
pub const DIRECT_PREFIX: &str = "dm_";

/// The conversation id of the direct conversation between two users: derived
/// from the sorted pair, so A-B and B-A are one conversation. A hash keeps it
/// within the id bound and unambiguous whatever `_`/`-` the user ids contain.
pub fn direct_conversation_id(a: &str, b: &str) -> Result<String, IdError> {
    pair_id(DIRECT_PREFIX, a, b)
}

/// Prefix of a user's own log (profile, privacy; `people`).
pub const USER_LOG_PREFIX: &str = "us_";

/// Prefix of the log of a pair of users (contact requests, contacts,
/// blocks; `people`).
pub const PAIR_LOG_PREFIX: &str = "ct_";

/// Prefixes group ids may not take: each names logs whose ids are derived.
pub const RESERVED_PREFIXES: [&str; 3] = [DIRECT_PREFIX, USER_LOG_PREFIX, PAIR_LOG_PREFIX];

/// The id of `user`'s own log: a hash, since `us_` and a 64-byte user id
/// would not fit the id bound.
pub fn user_log_id(user: &str) -> Result<String, IdError> {
    validate_id(IdKind::User, user)?;
    let digest = Sha256::digest(user.as_bytes());
    Ok(format!("{USER_LOG_PREFIX}{}", hex::encode(&digest[..16])))
}

/// The id of the log of the pair `a`, `b` (either order).
pub fn pair_log_id(a: &str, b: &str) -> Result<String, IdError> {
    pair_id(PAIR_LOG_PREFIX, a, b)
}

fn pair_id(prefix: &str, a: &str, b: &str) -> Result<String, IdError> {
    validate_id(IdKind::User, a)?;
    validate_id(IdKind::User, b)?;
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(lo.as_bytes());
    h.update([0u8]);
    h.update(hi.as_bytes());
    let digest = h.finalize();
    Ok(format!("{prefix}{}", hex::encode(&digest[..16])))
}

/// Whether an id names a people log (a user's or a pair's), not a chat.
pub fn is_people_log(id: &str) -> bool {
    id.starts_with(USER_LOG_PREFIX) || id.starts_with(PAIR_LOG_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_strict_charset() {
        for ok in ["a", "Alice_01", "conv-9", &"x".repeat(ID_LEN_MAX)] {
            assert_eq!(validate_id(IdKind::User, ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_subject_injection_and_bounds() {
        for bad in ["a.b", "*", ">", "a b", "a\tb", "a:b", "a\r\nb", "ü", "a/b"] {
            assert!(
                matches!(
                    validate_id(IdKind::Conversation, bad),
                    Err(IdError::BadChar { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_id(IdKind::User, ""),
            Err(IdError::Empty { kind: IdKind::User })
        );
        assert!(matches!(
            validate_id(IdKind::User, &"x".repeat(ID_LEN_MAX + 1)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn direct_id_is_symmetric_and_unambiguous() {
        let ab = direct_conversation_id("alice", "bob").unwrap();
        assert_eq!(ab, direct_conversation_id("bob", "alice").unwrap());
        assert!(ab.starts_with(DIRECT_PREFIX));
        assert!(validate_id(IdKind::Conversation, &ab).is_ok());
        assert_ne!(
            direct_conversation_id("a_b", "c").unwrap(),
            direct_conversation_id("a", "b_c").unwrap()
        );
        assert!(direct_conversation_id("a.b", "c").is_err());
    }

    #[test]
    fn people_log_ids_are_distinct_from_chats_and_fit_the_bound() {
        let pair = pair_log_id("alice", "bob").unwrap();
        assert_eq!(pair, pair_log_id("bob", "alice").unwrap());
        let user = user_log_id(&"u".repeat(ID_LEN_MAX)).unwrap();
        for id in [&pair, &user] {
            assert!(validate_id(IdKind::Conversation, id).is_ok());
            assert!(is_people_log(id));
        }
        assert!(!is_people_log(
            &direct_conversation_id("alice", "bob").unwrap()
        ));
        assert_ne!(user_log_id("a").unwrap(), user_log_id("b").unwrap());
    }
}
