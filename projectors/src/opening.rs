//! Opening sealed content before it leaves a projector (docs/privacy.md):
//! deliveries, history, conversation previews and profiles. The store
//! keeps what the log keeps (ciphertext); what a client gets is opened
//! here with the data keys, or marked erased (or unreadable) with no
//! ciphertext. Without keys (a deployment that keeps content clear)
//! everything passes unchanged.

use im_schema::v1::{self, conv_event::Kind};
use im_streams::content::{self, ContentKeys, Unopened};
use im_streams::StreamsError;

/// Opens an event's sealed content in place.
pub async fn open_event(
    keys: Option<&ContentKeys>,
    ev: &mut v1::ConvEvent,
) -> Result<(), StreamsError> {
    match keys {
        Some(keys) => content::open_event(keys, ev).await,
        None => Ok(()),
    }
}

/// The content sealed as `sender`'s in `conv`, or why not (the reason as
/// the `Sealed` to show, with no ciphertext).
async fn open_one(
    keys: &ContentKeys,
    conv: &str,
    sender: &str,
    sealed: &v1::Sealed,
) -> Result<Result<v1::Content, v1::Sealed>, StreamsError> {
    match content::open_sealed(keys, conv, sender, sealed).await {
        Ok(c) => Ok(Ok(c)),
        Err(Unopened::Erased) => Ok(Err(content::unopened(sealed, v1::SealedState::Erased))),
        Err(Unopened::Unreadable) => {
            tracing::warn!(conv, epoch = sealed.epoch, "sealed content does not open");
            Ok(Err(content::unopened(sealed, v1::SealedState::Unreadable)))
        }
        Err(Unopened::Unavailable(e)) => Err(e),
    }
}

/// Opens a history page: each message, and an edit's latest text.
pub async fn open_history(
    keys: Option<&ContentKeys>,
    page: &mut v1::HistoryPage,
) -> Result<(), StreamsError> {
    let Some(keys) = keys else { return Ok(()) };
    for entry in &mut page.entries {
        let Some(ev) = entry.event.as_mut() else {
            continue;
        };
        content::open_event(keys, ev).await?;
        let Some(edit) = entry.edited_sealed.take() else {
            continue;
        };
        let opened = open_one(keys, &ev.conversation_id, &ev.actor, &edit).await?;
        if let Some(Kind::MessageSent(m)) = ev.kind.as_mut() {
            match opened {
                Ok(c) => {
                    if let Some(v1::content::Body::Text(t)) = c.body {
                        m.body = Some(v1::message_sent::Body::Text(t));
                    }
                }
                Err(shown) => {
                    m.body = None;
                    m.meta.clear();
                    m.sealed = Some(shown);
                }
            }
        }
    }
    Ok(())
}

/// Opens a conversation list entry's preview.
pub async fn open_preview(
    keys: Option<&ContentKeys>,
    entry: &mut v1::ConvListEntry,
) -> Result<(), StreamsError> {
    let (Some(keys), Some(sealed)) = (keys, entry.preview_sealed.take()) else {
        return Ok(());
    };
    let sender = entry.preview_sender.clone();
    match open_one(keys, &entry.conversation_id, &sender, &sealed).await? {
        Ok(c) => {
            let body = c.body.map(im_streams::content::message_body);
            entry.preview = crate::projections::convlist::preview_of_body(body.as_ref());
        }
        Err(shown) => {
            entry.preview.clear();
            entry.preview_sealed = Some(shown);
        }
    }
    Ok(())
}

/// Opens profiles (each sealed on its user's own log).
pub async fn open_profiles(
    keys: Option<&ContentKeys>,
    found: &mut v1::ProfilesResult,
) -> Result<(), StreamsError> {
    let Some(keys) = keys else { return Ok(()) };
    for p in &mut found.profiles {
        let Some(sealed) = p.sealed.take() else {
            continue;
        };
        let Ok(log) = im_streams::ids::user_log_id(&p.user_id) else {
            continue;
        };
        match open_one(keys, &log, &p.user_id, &sealed).await? {
            Ok(c) => {
                p.display_name = c.display_name;
                p.avatar = c.avatar;
                p.status = c.status;
            }
            Err(shown) => p.sealed = Some(shown),
        }
    }
    Ok(())
}

/// Opens the search rows' sealed text for the indexer and for answers
/// (both synchronous: the indexer's thread, a search's blocking thread).
pub fn search_opener(keys: Option<std::sync::Arc<ContentKeys>>) -> crate::search::Opener {
    let Some(keys) = keys else {
        return crate::search::clear_only();
    };
    let handle = tokio::runtime::Handle::current();
    std::sync::Arc::new(move |doc: &v1::SearchDoc| {
        let Some(sealed) = &doc.sealed else {
            return Ok(Some(doc.text.clone()));
        };
        let opening = content::open_sealed(&keys, &doc.conversation_id, &doc.sender_id, sealed);
        match blocking(&handle, opening) {
            Ok(c) => Ok(Some(crate::projections::search::content_text(&c))),
            Err(Unopened::Unavailable(e)) => Err(e),
            Err(_) => Ok(None),
        }
    })
}

/// Runs blocking work from a runtime's worker: handed off
/// (`block_in_place`) on a multi-threaded runtime, so the runtime's other
/// tasks (the I/O the search opener waits for) go on; run in place
/// elsewhere.
pub fn blocking_section<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs a future to its end from synchronous code: a plain thread (the
/// indexer), a blocking thread, or a worker of a multi-threaded runtime
/// (a status asked with digests). A single-threaded runtime's own thread
/// cannot wait for itself (panics: never the projector's).
fn blocking<F: std::future::Future>(handle: &tokio::runtime::Handle, f: F) -> F::Output {
    blocking_section(|| handle.block_on(f))
}
