//! What a notification shows, where content is encrypted
//! (docs/privacy.md): the queue, the people rows and the outbox hold the
//! log's sealed text and names (`v1::SealedText`); the sender opens them
//! with the data keys of the notifier's projector just before a request,
//! so no plaintext is ever stored, and a notification waiting when its
//! sender is erased goes without their text and name.

use im_schema::v1;
use im_streams::content::{open_sealed, ContentKeys, Unopened};
use im_streams::StreamsError;

/// A sender's display name as a profile holds it: clear, or sealed on
/// their own log.
pub fn name_of(
    user: &str,
    profile: Option<v1::ProfileUpdated>,
) -> (String, Option<v1::SealedText>) {
    let Some(p) = profile else {
        return (String::new(), None);
    };
    let Some(sealed) = p.sealed else {
        return (p.display_name, None);
    };
    let sealed_text = im_streams::ids::user_log_id(user)
        .ok()
        .map(|log| v1::SealedText {
            conversation_id: log,
            sender: user.to_string(),
            sealed: Some(sealed),
        });
    (String::new(), sealed_text)
}

/// Opened content, or none where it cannot be opened (erased, corrupt,
/// no keys); an error only when the keys did not answer.
async fn opened(
    keys: Option<&ContentKeys>,
    t: &v1::SealedText,
) -> Result<Option<v1::Content>, StreamsError> {
    let (Some(keys), Some(sealed)) = (keys, &t.sealed) else {
        return Ok(None);
    };
    match open_sealed(keys, &t.conversation_id, &t.sender, sealed).await {
        Ok(c) => Ok(Some(c)),
        Err(Unopened::Unavailable(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

/// Fills a notification's text and sender name from their sealed forms.
pub async fn open_notification(
    keys: Option<&ContentKeys>,
    n: &mut v1::Notification,
) -> Result<(), StreamsError> {
    if let Some(t) = n.text_sealed.take() {
        let content = opened(keys, &t).await?;
        n.text = content
            .map(|c| crate::queue::preview_of_content(&c).0)
            .unwrap_or_default();
    }
    if let Some(t) = n.sender_name_sealed.take() {
        n.sender_name = opened(keys, &t)
            .await?
            .map(|c| c.display_name)
            .unwrap_or_default();
    }
    Ok(())
}
