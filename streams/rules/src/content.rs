//! Which parts of an event are personal content (docs/privacy.md): a
//! message's body and meta, an edit's text, a profile's name, avatar and
//! status. A writer that encrypts takes them out of a decided event
//! (`take`) and puts their ciphertext in its `sealed` field before `seal`
//! positions it; a reader with the key puts them back (`restore`).
//! Everything else (ids, positions, kinds, membership, times) stays clear,
//! so the rules, the chain and audits need no key.

use im_schema::v1::{self, conv_event::Kind, message_sent::Body};

/// Moves the personal fields out of `kind`, leaving them empty; None (and
/// nothing changed) for a kind without content.
pub fn take(kind: &mut Kind) -> Option<v1::Content> {
    match kind {
        Kind::MessageSent(m) => Some(v1::Content {
            body: m.body.take().map(|b| match b {
                Body::Text(t) => v1::content::Body::Text(t),
                Body::Media(r) => v1::content::Body::Media(r),
            }),
            meta: std::mem::take(&mut m.meta),
            ..Default::default()
        }),
        Kind::MessageEdited(e) => Some(v1::Content {
            body: Some(v1::content::Body::Text(std::mem::take(&mut e.text))),
            ..Default::default()
        }),
        Kind::ProfileUpdated(p) => Some(v1::Content {
            display_name: std::mem::take(&mut p.display_name),
            avatar: p.avatar.take(),
            status: std::mem::take(&mut p.status),
            ..Default::default()
        }),
        _ => None,
    }
}

/// Opened content's body as a message carries it.
pub fn message_body(body: v1::content::Body) -> Body {
    match body {
        v1::content::Body::Text(t) => Body::Text(t),
        v1::content::Body::Media(r) => Body::Media(r),
    }
}

/// Puts opened content back into `kind` (the reverse of `take`).
pub fn restore(kind: &mut Kind, content: v1::Content) {
    match kind {
        Kind::MessageSent(m) => {
            m.body = content.body.map(message_body);
            m.meta = content.meta;
        }
        Kind::MessageEdited(e) => {
            e.text = match content.body {
                Some(v1::content::Body::Text(t)) => t,
                _ => String::new(),
            }
        }
        Kind::ProfileUpdated(p) => {
            p.display_name = content.display_name;
            p.avatar = content.avatar;
            p.status = content.status;
        }
        _ => {}
    }
}

/// Whether a kind carries personal content (sealed where the deployment
/// encrypts).
pub fn has_content(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::MessageSent(_) | Kind::MessageEdited(_) | Kind::ProfileUpdated(_)
    )
}

/// The `sealed` field of a kind that has content.
pub fn sealed_mut(kind: &mut Kind) -> Option<&mut Option<v1::Sealed>> {
    match kind {
        Kind::MessageSent(m) => Some(&mut m.sealed),
        Kind::MessageEdited(e) => Some(&mut e.sealed),
        Kind::ProfileUpdated(p) => Some(&mut p.sealed),
        _ => None,
    }
}

/// The sealed content of a kind, if it has some.
pub fn sealed(kind: &Kind) -> Option<&v1::Sealed> {
    match kind {
        Kind::MessageSent(m) => m.sealed.as_ref(),
        Kind::MessageEdited(e) => e.sealed.as_ref(),
        Kind::ProfileUpdated(p) => p.sealed.as_ref(),
        _ => None,
    }
}

/// What stands in for sealed content when the rules judge an event
/// without its key: content any command of the kind may carry. The
/// ciphertext's own content was checked by the writer before it sealed it.
fn stand_in(kind: &Kind) -> v1::Content {
    match kind {
        Kind::ProfileUpdated(_) => v1::Content {
            display_name: ".".into(),
            ..Default::default()
        },
        _ => v1::Content {
            body: Some(v1::content::Body::Text(".".into())),
            ..Default::default()
        },
    }
}

/// For a sealed event: the event with stand-in content in place of its
/// sealed one (which the rules can judge), and the sealed content as it
/// must be found again in what the rules produce. None for an event
/// without sealed content.
pub fn judged_as(event: &v1::ConvEvent) -> Option<(v1::ConvEvent, v1::Sealed)> {
    let sealed = sealed(event.kind.as_ref()?)?.clone();
    let mut clear = event.clone();
    let kind = clear.kind.as_mut()?;
    *sealed_mut(kind)? = None;
    let content = stand_in(kind);
    restore(kind, content);
    Some((clear, sealed))
}

/// What the rules produced for a stand-in, made into what a writer stores:
/// the stand-in taken out, the sealed content put in (as a writer writes
/// it: a reader's `state` is never in the log).
pub fn as_stored(mut produced: v1::ConvEvent, sealed: v1::Sealed) -> v1::ConvEvent {
    if let Some(kind) = produced.kind.as_mut() {
        take(kind);
        if let Some(slot) = sealed_mut(kind) {
            *slot = Some(v1::Sealed {
                state: v1::SealedState::Unspecified as i32,
                ..sealed
            });
        }
    }
    produced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(text: &str) -> Kind {
        Kind::MessageSent(v1::MessageSent {
            body: Some(Body::Text(text.into())),
            meta: [("k".to_string(), "v".to_string())].into(),
            sealed: None,
        })
    }

    #[test]
    fn take_then_restore_gives_the_kind_back() {
        let kinds = [
            sent("hi"),
            Kind::MessageEdited(v1::MessageEdited {
                target_conv_seq: 3,
                text: "new".into(),
                sealed: None,
            }),
            Kind::ProfileUpdated(v1::ProfileUpdated {
                display_name: "Ann".into(),
                status: "away".into(),
                ..Default::default()
            }),
        ];
        for original in kinds {
            let mut kind = original.clone();
            let content = take(&mut kind).expect("has content");
            assert_ne!(kind, original, "the personal fields left");
            restore(&mut kind, content);
            assert_eq!(kind, original);
        }
    }

    #[test]
    fn a_kind_without_content_is_left_alone() {
        let mut kind = Kind::MemberLeft(v1::MemberLeft {});
        assert_eq!(take(&mut kind), None);
        assert!(sealed_mut(&mut kind).is_none());
    }

    #[test]
    fn what_stays_clear_after_take_holds_no_text() {
        let mut kind = sent("secret words");
        take(&mut kind);
        let bytes = im_schema::encode(&v1::ConvEvent {
            kind: Some(kind),
            ..Default::default()
        });
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
    }
}
