//! Object storage through the `minio` crate: the few calls archives need.

use minio::s3::creds::StaticProvider;
use minio::s3::http::BaseUrl;
use minio::s3::types::minio_error_response::MinioErrorCode;
use minio::s3::types::S3Api;
use minio::s3::{MinioClient, MinioClientBuilder};

use crate::ReplayError;

/// `s3://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl std::str::FromStr for Location {
    type Err = ReplayError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| {
            ReplayError::Invalid(format!("{s:?} is not an s3://bucket/prefix URL"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ReplayError::Invalid(format!("{s:?} names no bucket")));
        }
        Ok(Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl Location {
    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct S3Args {
    /// The S3 endpoint, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "IM_S3_ENDPOINT")]
    pub s3_endpoint: String,
    #[arg(long, env = "IM_S3_ACCESS_KEY")]
    pub s3_access_key: String,
    #[arg(long, env = "IM_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: String,
}

fn storage(e: impl Into<im_streams::error::BoxError>) -> ReplayError {
    ReplayError::Storage(e.into())
}

pub struct Objects {
    client: MinioClient,
    bucket: String,
}

impl Objects {
    /// A client for `bucket`, created when missing.
    pub async fn open(args: &S3Args, bucket: &str) -> Result<Objects, ReplayError> {
        let base: BaseUrl = args.s3_endpoint.parse().map_err(storage)?;
        let client = MinioClientBuilder::new(base)
            .provider(Some(StaticProvider::new(
                &args.s3_access_key,
                &args.s3_secret_key,
                None,
            )))
            // One region for every S3-protocol server we target; a lookup is
            // a round trip some servers do not answer.
            .skip_region_lookup(true)
            .build()
            .map_err(storage)?;
        let exists = client
            .bucket_exists(bucket)
            .map_err(storage)?
            .build()
            .send()
            .await
            .map_err(storage)?
            .exists();
        if !exists {
            client
                .create_bucket(bucket)
                .map_err(storage)?
                .build()
                .send()
                .await
                .map_err(storage)?;
        }
        Ok(Objects {
            client,
            bucket: bucket.to_string(),
        })
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), ReplayError> {
        self.client
            .put_object_content(self.bucket.as_str(), key, bytes)
            .map_err(storage)?
            .build()
            .send()
            .await
            .map_err(storage)?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<bytes::Bytes, ReplayError> {
        self.get_if_present(key)
            .await?
            .ok_or_else(|| ReplayError::NoObject {
                key: key.to_string(),
            })
    }

    /// The object, or None when there is no such key (other failures are
    /// errors, never taken for absence).
    pub async fn get_if_present(&self, key: &str) -> Result<Option<bytes::Bytes>, ReplayError> {
        let sent = self
            .client
            .get_object(self.bucket.as_str(), key)
            .map_err(storage)?
            .build()
            .send()
            .await;
        let resp =
            match sent {
                Ok(resp) => resp,
                Err(minio::s3::error::Error::S3Server(
                    minio::s3::error::S3ServerError::S3Error(e),
                )) if matches!(e.code(), MinioErrorCode::NoSuchKey) => return Ok(None),
                Err(e) => return Err(storage(e)),
            };
        let content = resp.content().map_err(storage)?;
        Ok(Some(
            content
                .to_segmented_bytes()
                .await
                .map_err(storage)?
                .to_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l: Location = "s3://audit/im/2026".parse().unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.key("a").as_str()),
            ("audit", "im/2026/a")
        );
        let l: Location = "s3://audit".parse().unwrap();
        assert_eq!(l.key("a"), "a");
        assert!("http://audit/x".parse::<Location>().is_err());
        assert!("s3:///x".parse::<Location>().is_err());
    }
}
