//! A message may carry only media its sender uploaded, as recorded.

use im_schema::v1;

use crate::conversation::Rejection;
use crate::error::StreamsError;
use crate::ids::{validate_id, IdKind};

use super::Appender;

impl Appender {
    /// A message may carry only media uploaded by its sender, exactly as
    /// recorded at upload.
    pub(super) async fn check_media(
        &self,
        actor: &str,
        m: &v1::MediaRef,
    ) -> Result<Option<Rejection>, StreamsError> {
        if validate_id(IdKind::ClientMsg, &m.media_id).is_err() {
            return Ok(Some(crate::conversation::invalid(
                "media_id",
                "not a valid id",
            )));
        }
        let Some(up) = crate::media::uploaded(&self.js, &m.media_id).await? else {
            return Ok(Some(crate::conversation::invalid(
                "media_id",
                "no upload has this id",
            )));
        };
        if up.uploader != actor {
            return Ok(Some(crate::conversation::invalid(
                "media_id",
                "this media was not uploaded by the sender",
            )));
        }
        let issued = up.media.unwrap_or_default();
        if (issued.size, &issued.checksum, &issued.mime) != (m.size, &m.checksum, &m.mime) {
            return Ok(Some(crate::conversation::invalid(
                "media",
                "size, checksum or mime differ from the upload",
            )));
        }
        Ok(None)
    }
}
