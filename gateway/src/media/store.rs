//! Where media bytes live, behind one small trait: S3 (any S3-protocol
//! server, through the `minio` crate) or a local directory (the embedded
//! stack's default). Objects move as files and chunk streams, never as
//! whole buffers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use minio::s3::creds::StaticProvider;
use minio::s3::http::BaseUrl;
use minio::s3::types::minio_error_response::MinioErrorCode;
use minio::s3::types::S3Api;
use minio::s3::{MinioClient, MinioClientBuilder};
use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object storage: {0}")]
    Backend(#[source] im_streams::error::BoxError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn backend(e: impl Into<im_streams::error::BoxError>) -> StoreError {
    StoreError::Backend(e.into())
}

/// Chunks read at a time from a local file.
const READ_CHUNK_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
pub trait MediaStore: Send + Sync {
    /// Stores the file's bytes under `key`.
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError>;
    /// The object's size, None when there is none.
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Feeds the object's bytes to `sink`, chunk by chunk; returns the size.
    async fn read(
        &self,
        key: &str,
        sink: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<u64, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// A URL that accepts a PUT of the object's bytes for `ttl`, when the
    /// backend signs its own (S3); None when the gateway must (disk).
    async fn presign_put(&self, key: &str, ttl: Duration) -> Result<Option<String>, StoreError>;
    /// The same for a GET.
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>, StoreError>;
    /// The object's file, for a local backend the gateway serves from.
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}

/// Objects as files under one directory. Keys are validated by the caller
/// (`media_id`s: `[A-Za-z0-9_-]`), so they never leave it.
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(DiskStore { dir })
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }
}

#[async_trait::async_trait]
impl MediaStore for DiskStore {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        // Copy to a temp name, then rename: a reader never sees half a file.
        let tmp = self.dir.join(format!(".{key}.part"));
        tokio::fs::copy(path, &tmp).await?;
        tokio::fs::rename(&tmp, self.path(key)).await?;
        Ok(())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(
        &self,
        key: &str,
        sink: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<u64, StoreError> {
        let mut file = tokio::fs::File::open(self.path(key)).await?;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(total);
            }
            sink(&buf[..n]);
            total += n as u64;
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn presign_put(&self, _key: &str, _ttl: Duration) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    async fn presign_get(&self, _key: &str, _ttl: Duration) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }
}

/// S3 settings (see `config.rs` for their environment variables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

pub struct S3Store {
    client: MinioClient,
    bucket: String,
}

impl S3Store {
    /// Connects and creates the bucket when missing.
    pub async fn open(s: &S3Settings) -> Result<Self, StoreError> {
        let mut base: BaseUrl = s.endpoint.parse().map_err(backend)?;
        base.region =
            minio::s3::types::typed_parameters::Region::new(&s.region).map_err(backend)?;
        let client = MinioClientBuilder::new(base)
            .provider(Some(StaticProvider::new(
                &s.access_key,
                &s.secret_key,
                None,
            )))
            .skip_region_lookup(true)
            .build()
            .map_err(backend)?;
        let exists = client
            .bucket_exists(s.bucket.as_str())
            .map_err(backend)?
            .build()
            .send()
            .await
            .map_err(backend)?
            .exists();
        if !exists {
            client
                .create_bucket(s.bucket.as_str())
                .map_err(backend)?
                .build()
                .send()
                .await
                .map_err(backend)?;
        }
        Ok(S3Store {
            client,
            bucket: s.bucket.clone(),
        })
    }

    async fn presign(
        &self,
        key: &str,
        ttl: Duration,
        method: axum::http::Method,
    ) -> Result<String, StoreError> {
        Ok(self
            .client
            .get_presigned_object_url(self.bucket.as_str(), key, method)
            .map_err(backend)?
            .expiry_seconds(ttl.as_secs().clamp(1, 7 * 24 * 3600) as u32)
            .build()
            .send()
            .await
            .map_err(backend)?
            .url)
    }
}

fn is_missing(e: &minio::s3::error::Error) -> bool {
    matches!(
        e,
        minio::s3::error::Error::S3Server(minio::s3::error::S3ServerError::S3Error(r))
            if matches!(r.code(), MinioErrorCode::NoSuchKey)
    )
}

#[async_trait::async_trait]
impl MediaStore for S3Store {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        self.client
            .put_object_content(self.bucket.as_str(), key, path)
            .map_err(backend)?
            .build()
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let sent = self
            .client
            .stat_object(self.bucket.as_str(), key)
            .map_err(backend)?
            .build()
            .send()
            .await;
        match sent {
            Ok(r) => Ok(Some(r.size().map_err(backend)?)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn read(
        &self,
        key: &str,
        sink: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<u64, StoreError> {
        let resp = self
            .client
            .get_object(self.bucket.as_str(), key)
            .map_err(backend)?
            .build()
            .send()
            .await
            .map_err(backend)?;
        let (mut chunks, _) = resp.content().map_err(backend)?.to_stream().await?;
        let mut total = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            sink(&chunk);
            total += chunk.len() as u64;
        }
        Ok(total)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object(self.bucket.as_str(), key)
            .map_err(backend)?
            .build()
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn presign_put(&self, key: &str, ttl: Duration) -> Result<Option<String>, StoreError> {
        self.presign(key, ttl, axum::http::Method::PUT)
            .await
            .map(Some)
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>, StoreError> {
        self.presign(key, ttl, axum::http::Method::GET)
            .await
            .map(Some)
    }
}
