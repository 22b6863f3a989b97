//! Media: uploads (small ones through the gateway, streamed; large ones
//! straight to storage with a presigned URL, then checked), downloads for
//! the uploader and the members of conversations the media was sent into,
//! per-user daily quotas, and the IM_MEDIA trail (`im_streams::media`).

pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use im_schema::v1;
use im_streams::definitions::{open_bucket, MEDIA_PENDING_BUCKET, MEDIA_QUOTA_BUCKET};
use im_streams::error::BoxError;
use rand::Rng;
use sha2::{Digest, Sha256};

use store::MediaStore;

/// Declared types accepted, each checked against the bytes.
pub const ALLOWED_MIME: [&str; 7] = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "video/mp4",
    "audio/mpeg",
    "application/pdf",
];

/// Thumbnails made at once; an upload arriving when all are busy gets
/// none rather than queueing CPU work behind the request path.
pub const THUMBNAILS_INFLIGHT_MAX: usize = 2;

/// Largest image decoded for a thumbnail (pixels): decoding costs memory in
/// proportion, and a small file can claim a huge canvas.
pub const THUMBNAIL_SOURCE_PIXELS_MAX: u64 = 40_000_000;

/// Thumbnail bounding box, pixels.
pub const THUMBNAIL_EDGE: u32 = 256;

/// Compare-and-set attempts on a quota counter before giving up: each
/// failure means another upload of the same user landed in between.
pub const QUOTA_CAS_RETRIES_MAX: u32 = 16;

/// Bytes sniffed for the content type.
const SNIFF_BYTES: usize = 64;

/// Where media bytes go.
#[derive(Clone, Debug)]
pub enum MediaBackend {
    Disk(PathBuf),
    S3(store::S3Settings),
}

pub struct Media {
    pub store: Arc<dyn MediaStore>,
    /// Disk: the gateway serves uploads and downloads itself.
    pub proxied: bool,
    js: jetstream::Context,
    quota: kv::Store,
    pending: kv::Store,
    thumbnails: Arc<tokio::sync::Semaphore>,
}

/// What a media operation refuses or fails with; the HTTP layer turns it
/// into a status (`MediaError::code`).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{0}")]
    BadRequest(String),
    #[error("not a media id")]
    BadId(#[source] im_streams::ids::IdError),
    #[error("no such media")]
    NotFound,
    #[error("not the uploader, nor a member of a conversation this media was sent into")]
    Forbidden,
    #[error("quota exceeded: {used} of {limit} bytes used today, this upload is {bytes}")]
    QuotaExceeded { used: u64, limit: u64, bytes: u64 },
    #[error("quota counter busy; retry")]
    QuotaBusy,
    /// The buckets or the media trail did not answer as they should.
    #[error("media bookkeeping: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl MediaError {
    pub fn code(&self) -> v1::ErrorCode {
        match self {
            MediaError::BadRequest(_) | MediaError::BadId(_) => v1::ErrorCode::BadRequest,
            MediaError::NotFound => v1::ErrorCode::NotFound,
            MediaError::Forbidden => v1::ErrorCode::Forbidden,
            MediaError::QuotaExceeded { .. } => v1::ErrorCode::RateLimited,
            MediaError::QuotaBusy => v1::ErrorCode::Unavailable,
            MediaError::Backend(_) => v1::ErrorCode::Internal,
        }
    }
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> MediaError {
    MediaError::Backend(Box::new(e))
}

fn bad(message: impl Into<String>) -> MediaError {
    MediaError::BadRequest(message.into())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh media id: 22 random base62 characters.
pub fn new_media_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The declared type, refused unless allowed.
pub fn declared_mime(content_type: Option<&str>) -> Result<String, MediaError> {
    let mime = content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if ALLOWED_MIME.contains(&mime.as_str()) {
        Ok(mime)
    } else {
        Err(bad(format!(
            "unsupported media type {mime:?}; allowed: {}",
            ALLOWED_MIME.join(", ")
        )))
    }
}

/// Refuses bytes whose sniffed type is not the declared one.
pub fn check_sniffed(declared: &str, head: &[u8]) -> Result<(), MediaError> {
    match infer::get(head) {
        Some(t) if t.mime_type() == declared => Ok(()),
        Some(t) => Err(bad(format!(
            "declared {declared} but the content is {}",
            t.mime_type()
        ))),
        None => Err(bad(format!(
            "declared {declared} but the content is not recognisably that"
        ))),
    }
}

/// Running size, checksum and leading bytes of a byte stream.
#[derive(Default)]
pub struct Digesting {
    pub size: u64,
    sha: Sha256,
    pub head: Vec<u8>,
}

impl Digesting {
    pub fn update(&mut self, chunk: &[u8]) {
        if self.head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.sha.update(chunk);
        self.size += chunk.len() as u64;
    }

    pub fn hex(self) -> String {
        hex::encode(self.sha.finalize())
    }
}

fn utc_day(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

impl Media {
    pub async fn open(
        backend: &MediaBackend,
        client: &async_nats::Client,
    ) -> Result<Self, crate::GatewayError> {
        let (store, proxied): (Arc<dyn MediaStore>, bool) = match backend {
            MediaBackend::Disk(dir) => (Arc::new(store::DiskStore::new(dir)?), true),
            MediaBackend::S3(s) => (Arc::new(store::S3Store::open(s).await?), false),
        };
        let js = jetstream::new(client.clone());
        let quota = open_bucket(&js, MEDIA_QUOTA_BUCKET).await?;
        let pending = open_bucket(&js, MEDIA_PENDING_BUCKET).await?;
        Ok(Media {
            store,
            proxied,
            js,
            quota,
            pending,
            thumbnails: Arc::new(tokio::sync::Semaphore::new(THUMBNAILS_INFLIGHT_MAX)),
        })
    }

    /// Bytes the user has had accepted today (UTC).
    pub async fn used_today(&self, user: &str) -> Result<u64, MediaError> {
        let key = format!("{user}.{}", utc_day(now_ms()));
        Ok(self
            .quota
            .get(&key)
            .await
            .map_err(internal)?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// Adds `bytes` to the user's day, refusing past `limit`.
    pub async fn charge(&self, user: &str, bytes: u64, limit: u64) -> Result<(), MediaError> {
        let key = format!("{user}.{}", utc_day(now_ms()));
        for _ in 0..QUOTA_CAS_RETRIES_MAX {
            let entry = self.quota.entry(&key).await.map_err(internal)?;
            let (used, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0),
                    Some(e.revision),
                ),
                _ => (0, None),
            };
            if used + bytes > limit {
                return Err(MediaError::QuotaExceeded { used, limit, bytes });
            }
            let value = (used + bytes).to_string().into_bytes().into();
            let done = match revision {
                Some(r) => self.quota.update(&key, value, r).await.is_ok(),
                None => self.quota.create(&key, value).await.is_ok(),
            };
            if done {
                return Ok(());
            }
        }
        Err(MediaError::QuotaBusy)
    }

    /// Width and height of an image file, when it is one we read.
    pub async fn dimensions(path: &Path) -> Option<(u32, u32)> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            image::ImageReader::open(&path)
                .ok()?
                .with_guessed_format()
                .ok()?
                .into_dimensions()
                .ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// Makes a thumbnail in the background when a slot is free; the
    /// MediaRef names its URL either way (absent until made).
    pub fn thumbnail_later(
        self: &Arc<Self>,
        media_id: &str,
        source: tempfile::TempPath,
        dims: (u32, u32),
    ) {
        if (dims.0 as u64) * (dims.1 as u64) > THUMBNAIL_SOURCE_PIXELS_MAX {
            return;
        }
        let Ok(permit) = self.thumbnails.clone().try_acquire_owned() else {
            tracing::info!(media_id, "thumbnail skipped: all slots busy");
            return;
        };
        let (this, key) = (self.clone(), thumbnail_key(media_id));
        tokio::spawn(async move {
            let _permit = permit;
            let made =
                tokio::task::spawn_blocking(move || -> Result<tempfile::TempPath, BoxError> {
                    let img = image::ImageReader::open(&source)?
                        .with_guessed_format()?
                        .decode()?;
                    let thumb = img.thumbnail(THUMBNAIL_EDGE, THUMBNAIL_EDGE);
                    let out = tempfile::Builder::new()
                        .suffix(".png")
                        .tempfile()?
                        .into_temp_path();
                    thumb.save(&out)?;
                    Ok(out)
                })
                .await;
            match made {
                Ok(Ok(path)) => {
                    if let Err(e) = this.store.put_file(&key, &path).await {
                        tracing::warn!(key, error = %e, "thumbnail upload failed");
                    }
                }
                Ok(Err(e)) => tracing::info!(key, error = %e, "no thumbnail"),
                Err(e) => tracing::warn!(key, error = %e, "thumbnail task failed"),
            }
        });
    }

    /// Deletes every object `user` uploaded (and its thumbnail) from the
    /// store: their erasure (docs/privacy.md). Returns how many uploads.
    pub async fn erase_uploads_of(&self, user: &str) -> Result<u64, MediaError> {
        let uploads = im_streams::media::uploads_of(&self.js, user)
            .await
            .map_err(internal)?;
        for up in &uploads {
            let id = up.media.as_ref().map_or("", |m| m.media_id.as_str());
            for key in [up.object_key.clone(), thumbnail_key(id)] {
                if let Err(e) = self.store.delete(&key).await {
                    tracing::warn!(error = %e, "an erased user's media object not deleted");
                    return Err(internal(e));
                }
            }
        }
        Ok(uploads.len() as u64)
    }

    /// Records a completed upload (the trail) and returns its reference.
    pub async fn record(
        &self,
        uploader: &str,
        media: v1::MediaRef,
    ) -> Result<v1::MediaRef, MediaError> {
        im_streams::media::record_upload(
            &self.js,
            &v1::MediaUploaded {
                media: Some(media.clone()),
                uploader: uploader.to_string(),
                at_ms: now_ms(),
                object_key: media.media_id.clone(),
            },
        )
        .await
        .map_err(internal)?;
        Ok(media)
    }

    /// May `user` fetch `media_id`: its uploader, a member of a
    /// conversation it was sent into, anyone while it is an avatar.
    pub async fn may_read(
        &self,
        (client, topology): (&async_nats::Client, im_streams::Topology),
        user: &str,
        media_id: &str,
    ) -> Result<v1::MediaUploaded, MediaError> {
        im_streams::ids::validate_id(im_streams::ids::IdKind::ClientMsg, media_id)
            .map_err(MediaError::BadId)?;
        let up = im_streams::media::uploaded(&self.js, media_id)
            .await
            .map_err(internal)?
            .ok_or(MediaError::NotFound)?;
        if up.uploader == user {
            return Ok(up);
        }
        let convs = im_streams::media::sent_conversations(&self.js, media_id)
            .await
            .map_err(internal)?;
        // An avatar (set on its uploader's own log) is public to users
        // while it is their avatar.
        let user_log = |c: &String| c.starts_with(im_streams::ids::USER_LOG_PREFIX);
        if convs.iter().any(user_log) && is_avatar(client, topology, &up.uploader, media_id).await {
            return Ok(up);
        }
        for conv in convs {
            let p = topology.partition_of(&conv);
            let q = im_schema::v1::query_request::Query::Role(v1::RoleQuery {
                conversation_id: conv,
                user_id: user.to_string(),
            });
            if let Ok(im_schema::v1::query_response::Result::Role(r)) =
                crate::query::ask(client, p, (0, 0), q).await
            {
                if r.member {
                    return Ok(up);
                }
            }
        }
        Err(MediaError::Forbidden)
    }

    pub async fn put_pending(
        &self,
        media_id: &str,
        p: &v1::PendingUpload,
    ) -> Result<(), MediaError> {
        self.pending
            .put(media_id, im_schema::encode(p).into())
            .await
            .map_err(internal)?;
        Ok(())
    }

    pub async fn take_pending(
        &self,
        media_id: &str,
    ) -> Result<Option<v1::PendingUpload>, MediaError> {
        let Some(v) = self.pending.get(media_id).await.map_err(internal)? else {
            return Ok(None);
        };
        Ok(im_schema::decode(&v).ok())
    }

    pub async fn forget_pending(&self, media_id: &str) {
        let _ = self.pending.purge(media_id).await;
    }
}

/// Whether `media_id` is `user`'s avatar now (their profile, asked of the
/// projector of their log; not known is not).
async fn is_avatar(
    client: &async_nats::Client,
    topology: im_streams::Topology,
    user: &str,
    media_id: &str,
) -> bool {
    use im_schema::v1::{query_request::Query as Q, query_response::Result as R};
    let Ok(log) = im_streams::ids::user_log_id(user) else {
        return false;
    };
    let q = Q::Profiles(v1::ProfilesQuery {
        user_ids: vec![user.to_string()],
        with_notify: false,
    });
    match crate::query::ask(client, topology.partition_of(&log), (0, 0), q).await {
        Ok(R::Profiles(p)) => p
            .profiles
            .iter()
            .any(|p| p.avatar.as_ref().is_some_and(|a| a.media_id == media_id)),
        _ => false,
    }
}

pub fn thumbnail_key(media_id: &str) -> String {
    format!("{media_id}_thumb")
}
