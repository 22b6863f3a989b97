//! The user id a token proves, from a configurable claim. Ids become NATS
//! subject tokens, so they are `[A-Za-z0-9_-]{1,64}` (I7). Identity
//! providers often use other ids (an email, a URL, a UUID with braces):
//! `Hashed` maps those to `x_` and the first 40 hex digits of their sha256,
//! the same every time and for every gateway; an id already in the charset
//! stays as it is, unless it starts with `x_` (hashed too, so no one can
//! claim another's mapped id by choosing it as their own).

use sha2::{Digest, Sha256};

use im_streams::ids::{validate_id, IdKind};

use super::AuthError;

/// What to do with a claim value outside the id charset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UserIds {
    /// Refuse the token.
    #[default]
    Strict,
    /// Map it: `x_` + hex(sha256(value))[..40].
    Hashed,
}

impl std::str::FromStr for UserIds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(UserIds::Strict),
            "hashed" => Ok(UserIds::Hashed),
            other => Err(format!("{other:?}: strict or hashed")),
        }
    }
}

fn hashed(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    format!("x_{}", &hex::encode(digest)[..40])
}

/// The user id for `value` of `claim`.
pub fn user_id(claim: &str, value: &str, ids: UserIds) -> Result<String, AuthError> {
    let mapped_form = ids == UserIds::Hashed && value.starts_with("x_");
    match (validate_id(IdKind::User, value), ids) {
        (Ok(()), _) if !mapped_form => Ok(value.to_string()),
        (Ok(()), _) => Ok(hashed(value)),
        (Err(_), UserIds::Hashed) if !value.is_empty() => Ok(hashed(value)),
        (Err(reason), _) => Err(AuthError::BadUserId {
            claim: claim.to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_the_charset_stay_and_others_map_or_are_refused() {
        assert_eq!(user_id("sub", "alice", UserIds::Strict).unwrap(), "alice");
        assert_eq!(user_id("sub", "alice", UserIds::Hashed).unwrap(), "alice");
        let email = "alice@example.com";
        assert!(matches!(
            user_id("email", email, UserIds::Strict),
            Err(AuthError::BadUserId { .. })
        ));
        let mapped = user_id("email", email, UserIds::Hashed).unwrap();
        assert!(mapped.starts_with("x_") && mapped.len() == 42, "{mapped}");
        assert_eq!(mapped, user_id("email", email, UserIds::Hashed).unwrap());
        assert!(validate_id(IdKind::User, &mapped).is_ok());
        assert!(user_id("sub", "", UserIds::Hashed).is_err());
        // Choosing someone's mapped id as one's own gets a different one.
        let forged = user_id("preferred_username", &mapped, UserIds::Hashed).unwrap();
        assert_ne!(forged, mapped);
        assert_eq!(user_id("sub", "x_1", UserIds::Strict).unwrap(), "x_1");
    }
}
