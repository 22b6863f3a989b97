//! The gateway's command line: each setting a flag and an environment
//! variable, `--help`, `--version` and `--check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{GatewayConfig, Limits};
use crate::auth::{TokenConfig, UserIds};
use crate::media::{store::S3Settings, MediaBackend};

/// The WebSocket and HTTP gateway. Every setting is a flag and an
/// environment variable; the environment is how deployments set them.
#[derive(Debug, clap::Parser)]
#[command(name = "im-gateway", version)]
pub struct GatewayArgs {
    /// Address of the public listener (WebSocket and HTTP API).
    #[arg(long, env = "IM_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of `/metrics`, never the public listener; none: not served.
    #[arg(long, env = "IM_GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    #[command(flatten)]
    pub tokens: TokenArgs,
    /// The writer's ed25519 seed (base64url; created if missing): it signs
    /// every event it appends.
    #[arg(long, env = "IM_EVENT_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The deployment's key-encryption key (docs/privacy.md): the writer
    /// seals message content under data keys it wraps.
    #[command(flatten)]
    pub kek: im_streams::content::KekArgs,
    #[command(flatten)]
    pub media: MediaArgs,
    /// Serve the built web app (clients/web/dist) at `/`.
    #[arg(long, env = "IM_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// `POST /v1/dev/token` signs anyone in: local development only (needs
    /// the HS256 secret).
    #[arg(long, env = "IM_DEV_LOGIN")]
    pub dev_login: bool,
    #[command(flatten)]
    pub limits: Limits,
    /// Read and check the configuration (key files, limits, NATS
    /// credentials), print it without secrets, and exit: 0 if the gateway
    /// would start with it, 2 if not. Connects to nothing.
    #[arg(long)]
    pub check_config: bool,
}

/// Which bearer tokens are accepted (`IM_JWT_*`).
#[derive(Clone, Debug, clap::Args)]
pub struct TokenArgs {
    /// HS256 secret for bearer tokens.
    #[arg(
        long = "jwt-hs256-secret",
        env = "IM_JWT_HS256_SECRET",
        hide_env_values = true
    )]
    pub hs256_secret: Option<String>,
    /// PEM file of the RS256 public key.
    #[arg(
        long = "jwt-rs256-public-key-file",
        env = "IM_JWT_RS256_PUBLIC_KEY_FILE"
    )]
    pub rs256_public_key_file: Option<PathBuf>,
    /// PEM file of the ES256 (P-256) public key.
    #[arg(
        long = "jwt-es256-public-key-file",
        env = "IM_JWT_ES256_PUBLIC_KEY_FILE"
    )]
    pub es256_public_key_file: Option<PathBuf>,
    /// PEM file of the EdDSA (Ed25519) public key.
    #[arg(
        long = "jwt-eddsa-public-key-file",
        env = "IM_JWT_EDDSA_PUBLIC_KEY_FILE"
    )]
    pub eddsa_public_key_file: Option<PathBuf>,
    /// An identity provider's JWKS URL (keys by kid, rotated).
    #[arg(long = "jwt-jwks-url", env = "IM_JWT_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// The required `iss`, if set.
    #[arg(long = "jwt-issuer", env = "IM_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// The required `aud`, if set.
    #[arg(long = "jwt-audience", env = "IM_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// The claim holding the user id.
    #[arg(
        long = "jwt-user-claim",
        env = "IM_JWT_USER_CLAIM",
        default_value = "sub"
    )]
    pub user_claim: String,
    /// `strict` (refuse ids outside [A-Za-z0-9_-]) or `hashed` (map them to x_<sha256>).
    #[arg(
        long = "jwt-user-ids",
        env = "IM_JWT_USER_IDS",
        default_value = "strict"
    )]
    pub user_ids: UserIds,
}

impl TokenArgs {
    /// The settings, with the key files read.
    pub fn config(&self) -> Result<TokenConfig, String> {
        let read = |name: &str, path: &Option<PathBuf>| -> Result<Option<String>, String> {
            path.as_ref()
                .map(|p| {
                    std::fs::read_to_string(p).map_err(|e| format!("{name} {}: {e}", p.display()))
                })
                .transpose()
        };
        let defaults = TokenConfig::default();
        Ok(TokenConfig {
            hs256_secret: self.hs256_secret.clone().filter(|s| !s.is_empty()),
            rs256_public_pem: read("IM_JWT_RS256_PUBLIC_KEY_FILE", &self.rs256_public_key_file)?,
            es256_public_pem: read("IM_JWT_ES256_PUBLIC_KEY_FILE", &self.es256_public_key_file)?,
            eddsa_public_pem: read("IM_JWT_EDDSA_PUBLIC_KEY_FILE", &self.eddsa_public_key_file)?,
            jwks_url: self.jwks_url.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            user_claim: self.user_claim.clone(),
            user_ids: self.user_ids,
            jwks_refresh_min: defaults.jwks_refresh_min,
        })
    }
}

/// Where media is kept: a directory, or S3 (`IM_MEDIA_DIR`, `IM_S3_*`).
#[derive(Clone, Debug, clap::Args)]
pub struct MediaArgs {
    /// Keep media on disk in this directory.
    #[arg(long, env = "IM_MEDIA_DIR", conflicts_with = "s3_endpoint")]
    pub media_dir: Option<PathBuf>,
    /// Keep media in S3 at this endpoint.
    #[arg(long, env = "IM_S3_ENDPOINT", requires_all = ["s3_access_key", "s3_secret_key"])]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "IM_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, env = "IM_S3_BUCKET", default_value = "im-media")]
    pub s3_bucket: String,
    #[arg(long, env = "IM_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,
    #[arg(long, env = "IM_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
}

impl MediaArgs {
    pub fn backend(&self) -> Option<MediaBackend> {
        match (&self.s3_endpoint, &self.media_dir) {
            (Some(endpoint), _) => Some(MediaBackend::S3(S3Settings {
                endpoint: endpoint.clone(),
                region: self.s3_region.clone(),
                bucket: self.s3_bucket.clone(),
                access_key: self.s3_access_key.clone().unwrap_or_default(),
                secret_key: self.s3_secret_key.clone().unwrap_or_default(),
            })),
            (None, Some(dir)) => Some(MediaBackend::Disk(dir.clone())),
            (None, None) => None,
        }
    }
}

impl GatewayArgs {
    /// The configuration these arguments describe, validated.
    pub fn config(&self) -> Result<GatewayConfig, String> {
        let config = GatewayConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            nats_url: self.nats.nats_url.clone(),
            nats_auth: self.nats.auth.clone(),
            tokens: self.tokens.config()?,
            signing_key_file: self.signing_key_file.clone(),
            kek: self.kek.clone(),
            limits: self.limits.clone(),
            media: self.media.backend(),
            web: crate::http::web::WebConfig {
                dir: self.web_dir.clone(),
                dev_login: self.dev_login,
            },
        };
        config.validate()?;
        Ok(config)
    }
}
