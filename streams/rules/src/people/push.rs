//! Where the notifier may wake a user, and when it must not: push
//! registrations per device and notification mutes, on the user's own log.
//! The rules check each command's fields; the row (`PeopleRow`) keeps at
//! most `PUSH_DEVICES_MAX` devices and `MUTED_CONVERSATIONS_MAX` mutes,
//! dropping the oldest, so no sequence of commands grows it without bound.

use std::borrow::Cow;

use im_schema::v1::{self, conv_event::Kind};

use crate::conversation::{invalid, Action, Rejection};
use crate::ids::{validate_id, IdKind};

/// Devices one user's registrations name at once: phones, tablets and
/// browsers of one person; a newer device's registration drops the oldest.
pub const PUSH_DEVICES_MAX: usize = 16;
/// A push token: APNs device tokens are 64 hex characters, FCM tokens
/// about 160, a Web Push subscription (endpoint and keys as JSON) about
/// 500; four times the largest leaves room.
pub const PUSH_TOKEN_BYTES_MAX: usize = 4_096;
/// A platform or app id: short names ("apns", "com.example.chat").
pub const PUSH_NAME_BYTES_MAX: usize = 128;
/// A language tag (BCP 47: "en", "zh-Hans-CN").
pub const LANG_BYTES_MAX: usize = 35;
/// Conversations one user mutes at once; past it the mute that ends first
/// goes.
pub const MUTED_CONVERSATIONS_MAX: usize = 1_000;

/// Whether an action is one of these (on the actor's own log).
pub fn is_push_action(action: &Action) -> bool {
    matches!(
        action,
        Action::RegisterPush(_) | Action::UnregisterPush(_) | Action::MuteNotifications(_)
    )
}

fn bounded(field: &'static str, text: &str, min: usize, max: usize) -> Result<(), Rejection> {
    if text.len() > max {
        return Err(Rejection::TooLarge {
            what: Cow::Borrowed(field),
            len: text.len(),
            max,
        });
    }
    if text.len() < min {
        return Err(invalid(field, "empty"));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(invalid(field, "contains a control character"));
    }
    Ok(())
}

fn language(lang: &str) -> Result<(), Rejection> {
    bounded("lang", lang, 0, LANG_BYTES_MAX)?;
    let ok = lang.split('-').all(|part| {
        (1..=8).contains(&part.len()) && part.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if !lang.is_empty() && !ok {
        return Err(invalid("lang", "not a language tag such as en or zh-Hans"));
    }
    Ok(())
}

/// The event a push action appends, its fields checked.
pub fn decide_push(action: &Action) -> Result<Kind, Rejection> {
    match action {
        Action::RegisterPush(r) => {
            validate_id(IdKind::Device, &r.device_id).map_err(|e| invalid("device_id", e))?;
            bounded("platform", &r.platform, 1, PUSH_NAME_BYTES_MAX)?;
            bounded("token", &r.token, 1, PUSH_TOKEN_BYTES_MAX)?;
            bounded("app_id", &r.app_id, 1, PUSH_NAME_BYTES_MAX)?;
            language(&r.lang)?;
            Ok(Kind::PushRegistered(r.clone()))
        }
        Action::UnregisterPush(u) => {
            validate_id(IdKind::Device, &u.device_id).map_err(|e| invalid("device_id", e))?;
            bounded("token", &u.token, 0, PUSH_TOKEN_BYTES_MAX)?;
            if v1::PushUnregisterReason::try_from(u.reason).is_err() {
                return Err(invalid("reason", "unknown"));
            }
            Ok(Kind::PushUnregistered(u.clone()))
        }
        Action::MuteNotifications(m) => {
            if !m.conversation_id.is_empty() {
                validate_id(IdKind::Conversation, &m.conversation_id)
                    .map_err(|e| invalid("conversation_id", e))?;
            }
            if m.until_ms < 0 {
                return Err(invalid("until_ms", "negative"));
            }
            Ok(Kind::NotifyMuted(m.clone()))
        }
        _ => Err(invalid("action", "not a notification setting")),
    }
}

/// Folds a push event of a user's log into its row, at the event's time
/// (`at_ms`): pure and bounded, so every projection and replay agrees.
pub fn fold_row(row: &mut v1::PeopleRow, kind: &Kind, at_ms: i64) {
    match kind {
        Kind::PushRegistered(r) => {
            row.push.retain(|d| {
                d.registration
                    .as_ref()
                    .is_some_and(|x| x.device_id != r.device_id)
            });
            row.push.push(v1::PushDevice {
                registration: Some(r.clone()),
                registered_ms: at_ms,
            });
            // Oldest first: the first ones go.
            let excess = row.push.len().saturating_sub(PUSH_DEVICES_MAX);
            row.push.drain(..excess);
        }
        Kind::PushUnregistered(u) => row.push.retain(|d| {
            let Some(x) = &d.registration else {
                return false;
            };
            x.device_id != u.device_id || (!u.token.is_empty() && x.token != u.token)
        }),
        Kind::NotifyMuted(m) if m.conversation_id.is_empty() => row.dnd_until_ms = m.until_ms,
        Kind::NotifyMuted(m) => {
            row.muted.retain(|_, until| *until > at_ms);
            if m.until_ms > at_ms {
                row.muted.insert(m.conversation_id.clone(), m.until_ms);
            } else {
                row.muted.remove(&m.conversation_id);
            }
            while row.muted.len() > MUTED_CONVERSATIONS_MAX {
                let first = row
                    .muted
                    .iter()
                    .min_by_key(|(conv, until)| (**until, (*conv).clone()))
                    .map(|(conv, _)| conv.clone());
                if let Some(conv) = first {
                    row.muted.remove(&conv);
                }
            }
        }
        _ => {}
    }
}

/// Whether a user whose row is `row` is to be left alone about `conv` at
/// `now_ms`: do not disturb, or the conversation muted.
pub fn is_quiet(row: &v1::PeopleRow, conv: &str, now_ms: i64) -> bool {
    row.dnd_until_ms > now_ms || row.muted.get(conv).is_some_and(|until| *until > now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(device: &str, token: &str) -> v1::PushRegistered {
        v1::PushRegistered {
            device_id: device.into(),
            platform: "fcm".into(),
            token: token.into(),
            app_id: "im.app".into(),
            lang: "en".into(),
        }
    }

    fn devices(row: &v1::PeopleRow) -> Vec<(String, String)> {
        row.push
            .iter()
            .map(|d| {
                let r = d.registration.clone().unwrap();
                (r.device_id, r.token)
            })
            .collect()
    }

    #[test]
    fn fields_are_checked() {
        assert!(decide_push(&Action::RegisterPush(reg("phone", "t"))).is_ok());
        let refused = |r: v1::PushRegistered| decide_push(&Action::RegisterPush(r)).unwrap_err();
        assert_eq!(refused(reg("a.b", "t")).code(), "invalid_argument");
        assert_eq!(refused(reg("phone", "")).code(), "invalid_argument");
        let long = "x".repeat(PUSH_TOKEN_BYTES_MAX + 1);
        assert_eq!(refused(reg("phone", &long)).code(), "too_large");
        let mut bad_lang = reg("phone", "t");
        bad_lang.lang = "en_US!".into();
        assert_eq!(refused(bad_lang).code(), "invalid_argument");
        let mut zh = reg("phone", "t");
        zh.lang = "zh-Hans-CN".into();
        assert!(decide_push(&Action::RegisterPush(zh)).is_ok());
        let mute = |conv: &str, until_ms| {
            decide_push(&Action::MuteNotifications(v1::NotifyMuted {
                conversation_id: conv.into(),
                until_ms,
            }))
        };
        assert!(mute("", 0).is_ok());
        assert_eq!(mute("a b", 1).unwrap_err().code(), "invalid_argument");
        assert_eq!(mute("g", -1).unwrap_err().code(), "invalid_argument");
    }

    #[test]
    fn a_device_has_one_registration_and_the_oldest_device_goes() {
        let mut row = v1::PeopleRow::default();
        fold_row(&mut row, &Kind::PushRegistered(reg("phone", "t1")), 1);
        fold_row(&mut row, &Kind::PushRegistered(reg("phone", "t2")), 2);
        assert_eq!(devices(&row), vec![("phone".into(), "t2".into())]);
        for i in 0..PUSH_DEVICES_MAX {
            fold_row(
                &mut row,
                &Kind::PushRegistered(reg(&format!("d{i}"), "t")),
                3,
            );
        }
        assert_eq!(row.push.len(), PUSH_DEVICES_MAX);
        assert!(!devices(&row).iter().any(|(d, _)| d == "phone"));
    }

    #[test]
    fn a_refused_token_removes_only_itself() {
        let mut row = v1::PeopleRow::default();
        fold_row(&mut row, &Kind::PushRegistered(reg("phone", "new")), 1);
        let gone = |token: &str| {
            Kind::PushUnregistered(v1::PushUnregistered {
                device_id: "phone".into(),
                token: token.into(),
                reason: v1::PushUnregisterReason::Gone as i32,
            })
        };
        // The gateway refused the old token after the device registered anew.
        fold_row(&mut row, &gone("old"), 2);
        assert_eq!(devices(&row), vec![("phone".into(), "new".into())]);
        fold_row(&mut row, &gone("new"), 3);
        assert!(row.push.is_empty());
    }

    #[test]
    fn mutes_expire_and_are_bounded() {
        let mut row = v1::PeopleRow::default();
        let mute = |conv: &str, until_ms| {
            Kind::NotifyMuted(v1::NotifyMuted {
                conversation_id: conv.into(),
                until_ms,
            })
        };
        fold_row(&mut row, &mute("g", 100), 10);
        assert!(is_quiet(&row, "g", 50));
        assert!(!is_quiet(&row, "g", 100));
        assert!(!is_quiet(&row, "h", 50));
        fold_row(&mut row, &mute("", i64::MAX), 10);
        assert!(is_quiet(&row, "h", 50));
        fold_row(&mut row, &mute("", 0), 11);
        fold_row(&mut row, &mute("g", 0), 12);
        assert!(!is_quiet(&row, "g", 50));
        for i in 0..MUTED_CONVERSATIONS_MAX + 5 {
            fold_row(&mut row, &mute(&format!("c{i}"), 1_000 + i as i64), 20);
        }
        assert_eq!(row.muted.len(), MUTED_CONVERSATIONS_MAX);
        assert!(!row.muted.contains_key("c0"), "the one ending first went");
    }
}
