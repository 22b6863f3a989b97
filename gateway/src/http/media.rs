//! The media endpoints:
//! - `POST /v1/media/upload` (body = the bytes, `Content-Type` = declared
//!   type): streamed to a temp file while size, sha256 and the leading
//!   bytes are taken; checked; stored; recorded. Returns a `MediaRef`.
//! - `POST /v1/media/sts` `{"mime","size"}`: a presigned PUT (S3), or the
//!   gateway's own `PUT /v1/media/{id}/content` (disk), and the media id.
//! - `POST /v1/media/{id}/complete` `{"size","checksum"}`: checks the stored
//!   object's size, sha256 and type, then records it. Returns a `MediaRef`.
//! - `GET /v1/media/{id}` (`?thumbnail=true`): a presigned GET URL (S3) or
//!   the bytes (disk), for the uploader and members of conversations the
//!   media was sent into.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use im_schema::v1;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{ApiError, AuthUser, ProtoJson};
use crate::media::{self as media_mod, check_sniffed, declared_mime, Digesting, Media};
use crate::AppState;

fn media(state: &AppState) -> Result<Arc<Media>, ApiError> {
    state.media.clone().ok_or_else(|| {
        ApiError(
            v1::ErrorCode::Unavailable,
            "media storage is not configured".into(),
        )
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(v1::ErrorCode::Internal, e.to_string())
}

fn too_large(max: u64) -> ApiError {
    ApiError(v1::ErrorCode::TooLarge, format!("larger than {max} bytes"))
}

/// Streams a request body into a temp file, at most `max` bytes.
async fn spool(body: Body, max: u64) -> Result<(tempfile::TempPath, Digesting), ApiError> {
    let path = tempfile::NamedTempFile::new()
        .map_err(internal)?
        .into_temp_path();
    let mut file = tokio::fs::File::create(&path).await.map_err(internal)?;
    let mut digest = Digesting::default();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError(v1::ErrorCode::BadRequest, e.to_string()))?;
        if digest.size + chunk.len() as u64 > max {
            return Err(too_large(max));
        }
        digest.update(&chunk);
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    Ok((path, digest))
}

/// Bytes that passed every check, in a local file.
struct Checked {
    media_id: String,
    mime: String,
    size: u64,
    checksum: String,
    local: tempfile::TempPath,
    /// Already in the store (a presigned upload) rather than only local.
    stored: bool,
}

/// Stores (unless already there) and records checked bytes, with their
/// dimensions and a thumbnail for images.
async fn finish(media: &Arc<Media>, user: &str, c: Checked) -> Result<v1::MediaRef, ApiError> {
    let Checked {
        media_id,
        mime,
        size,
        checksum,
        local,
        stored,
    } = c;
    let dims = if mime.starts_with("image/") {
        Media::dimensions(&local).await
    } else {
        None
    };
    if !stored {
        media
            .store
            .put_file(&media_id, &local)
            .await
            .map_err(internal)?;
    }
    let (width, height) = dims.unwrap_or((0, 0));
    let thumbnail_url = if dims.is_some() {
        format!("/v1/media/{media_id}?thumbnail=true")
    } else {
        String::new()
    };
    let reference = v1::MediaRef {
        media_id: media_id.clone(),
        url: format!("/v1/media/{media_id}"),
        size,
        checksum,
        checksum_algo: "sha256".into(),
        mime,
        width,
        height,
        thumbnail_url,
        ..Default::default()
    };
    let recorded = media.record(user, reference).await;
    if recorded.is_err() {
        let _ = media.store.delete(&media_id).await;
    }
    if let Some(d) = dims {
        media.thumbnail_later(&media_id, local, d);
    }
    Ok(recorded?)
}

pub async fn upload(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    body: Body,
) -> Result<ProtoJson<v1::MediaRef>, ApiError> {
    let media = media(&state)?;
    let limits = &state.config.limits;
    let mime = declared_mime(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    // A declared length over the limit is refused before a byte is read.
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > limits.media_upload_bytes_max) {
        return Err(too_large(limits.media_upload_bytes_max));
    }
    let (local, digest) = spool(body, limits.media_upload_bytes_max).await?;
    check_sniffed(&mime, &digest.head)?;
    media
        .charge(&user, digest.size, limits.media_quota_bytes_per_day)
        .await?;
    let size = digest.size;
    let id = media_mod::new_media_id();
    let checked = Checked {
        media_id: id,
        mime,
        size,
        checksum: digest.hex(),
        local,
        stored: false,
    };
    let reference = finish(&media, &user, checked).await?;
    tracing::info!(user, media_id = %reference.media_id, size, "media uploaded");
    Ok(ProtoJson(reference))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StsRequest {
    mime: String,
    #[serde(deserialize_with = "super::int64")]
    size: u64,
}

pub async fn sts(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    axum::Json(req): axum::Json<StsRequest>,
) -> Result<Response, ApiError> {
    let media = media(&state)?;
    let limits = &state.config.limits;
    let mime = declared_mime(Some(&req.mime))?;
    if req.size == 0 || req.size > limits.media_large_bytes_max {
        return Err(too_large(limits.media_large_bytes_max));
    }
    let used = media.used_today(&user).await?;
    if used + req.size > limits.media_quota_bytes_per_day {
        return Err(ApiError(
            v1::ErrorCode::RateLimited,
            format!(
                "quota exceeded: {used} of {} bytes used today, this upload is {}",
                limits.media_quota_bytes_per_day, req.size
            ),
        ));
    }
    let id = media_mod::new_media_id();
    let ttl = Duration::from_secs(limits.media_url_ttl_secs);
    let expires_ms = media_mod::now_ms() + ttl.as_millis() as i64;
    let url = match media.store.presign_put(&id, ttl).await.map_err(internal)? {
        Some(url) => url,
        None => format!("/v1/media/{id}/content"),
    };
    media
        .put_pending(
            &id,
            &v1::PendingUpload {
                uploader: user,
                mime,
                size: req.size,
                expires_ms,
            },
        )
        .await?;
    Ok(axum::Json(serde_json::json!({
        "mediaId": id,
        "uploadUrl": url,
        "method": "PUT",
        "expiresAtMs": expires_ms.to_string(),
    }))
    .into_response())
}

/// The upload a user was issued, unexpired.
async fn pending_for(media: &Media, user: &str, id: &str) -> Result<v1::PendingUpload, ApiError> {
    im_streams::ids::validate_id(im_streams::ids::IdKind::ClientMsg, id)
        .map_err(|e| ApiError(v1::ErrorCode::BadRequest, e.to_string()))?;
    match media.take_pending(id).await? {
        Some(p) if p.uploader == user && p.expires_ms > media_mod::now_ms() => Ok(p),
        _ => Err(ApiError(
            v1::ErrorCode::NotFound,
            "no pending upload with this id for you".into(),
        )),
    }
}

/// Disk backend's stand-in for a presigned PUT.
pub async fn put_content(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let media = media(&state)?;
    if !media.proxied {
        return Err(ApiError(
            v1::ErrorCode::BadRequest,
            "upload to the presigned URL".into(),
        ));
    }
    let pending = pending_for(&media, &user, &id).await?;
    let (local, _) = spool(body, pending.size).await?;
    media.store.put_file(&id, &local).await.map_err(internal)?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    #[serde(deserialize_with = "super::int64")]
    size: u64,
    checksum: String,
}

pub async fn complete(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    axum::Json(req): axum::Json<CompleteRequest>,
) -> Result<ProtoJson<v1::MediaRef>, ApiError> {
    let media = media(&state)?;
    let pending = pending_for(&media, &user, &id).await?;
    // Whatever fails from here, the object goes: nothing unchecked stays.
    let refuse = |e: ApiError| {
        let media = media.clone();
        let id = id.clone();
        async move {
            let _ = media.store.delete(&id).await;
            media.forget_pending(&id).await;
            Err(e)
        }
    };
    let stored = media.store.size(&id).await.map_err(internal)?;
    if stored != Some(req.size) || req.size != pending.size {
        return refuse(ApiError(
            v1::ErrorCode::BadRequest,
            format!(
                "size mismatch: declared {}, completed with {}, stored {stored:?}",
                pending.size, req.size
            ),
        ))
        .await;
    }
    // Read back through a local copy (dimensions need a file), hashing.
    let local = tempfile::NamedTempFile::new().map_err(internal)?;
    let mut writer = std::io::BufWriter::new(local.reopen().map_err(internal)?);
    let mut digest = Digesting::default();
    let mut write_error = None;
    media
        .store
        .read(&id, &mut |chunk| {
            digest.update(chunk);
            if let Err(e) = std::io::Write::write_all(&mut writer, chunk) {
                write_error = Some(e);
            }
        })
        .await
        .map_err(internal)?;
    std::io::Write::flush(&mut writer).map_err(internal)?;
    if let Some(e) = write_error {
        return Err(internal(e));
    }
    if let Err(e) = check_sniffed(&pending.mime, &digest.head) {
        return refuse(e.into()).await;
    }
    let checksum = digest.hex();
    if checksum != req.checksum.to_ascii_lowercase() {
        return refuse(ApiError(
            v1::ErrorCode::BadRequest,
            format!("checksum mismatch: stored bytes hash to {checksum}"),
        ))
        .await;
    }
    let limit = state.config.limits.media_quota_bytes_per_day;
    if let Err(e) = media.charge(&user, req.size, limit).await {
        return refuse(e.into()).await;
    }
    media.forget_pending(&id).await;
    let checked = Checked {
        media_id: id,
        mime: pending.mime,
        size: req.size,
        checksum,
        local: local.into_temp_path(),
        stored: true,
    };
    let reference = finish(&media, &user, checked).await?;
    Ok(ProtoJson(reference))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    #[serde(default)]
    thumbnail: bool,
}

pub async fn download(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    Query(p): Query<DownloadParams>,
) -> Result<Response, ApiError> {
    let media = media(&state)?;
    let up = media
        .may_read((&state.client, state.appender.topology()), &user, &id)
        .await?;
    let (key, mime) = if p.thumbnail {
        (media_mod::thumbnail_key(&id), "image/png".to_string())
    } else {
        (id.clone(), up.media.unwrap_or_default().mime)
    };
    let ttl = Duration::from_secs(state.config.limits.media_url_ttl_secs);
    if let Some(url) = media.store.presign_get(&key, ttl).await.map_err(internal)? {
        return Ok(axum::Json(serde_json::json!({
            "url": url,
            "expiresAtMs": (media_mod::now_ms() + ttl.as_millis() as i64).to_string(),
        }))
        .into_response());
    }
    // Disk: the bytes themselves, streamed through a bounded channel.
    if media.store.size(&key).await.map_err(internal)?.is_none() {
        return Err(ApiError(v1::ErrorCode::NotFound, "not stored (yet)".into()));
    }
    let path = media
        .store
        .local_path(&key)
        .ok_or_else(|| internal("a store without URLs must be local"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(
        DOWNLOAD_CHUNKS_BUFFERED,
    );
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok(([(header::CONTENT_TYPE, mime)], body).into_response())
}

/// Chunks queued between the store reader and the client.
const DOWNLOAD_CHUNKS_BUFFERED: usize = 16;

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
