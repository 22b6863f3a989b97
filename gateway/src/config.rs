//! Gateway configuration: one struct, validated at start. Every environment
//! variable the gateway reads is listed in `ENV_VARS`.

use std::net::SocketAddr;

use serde::Deserialize;

/// Every environment variable the gateway reads.
pub const ENV_VARS: [(&str, &str); 27] = [
    ("IM_WEB_DIR", "serve the built web app (clients/web/dist) at /"),
    (
        "IM_DEV_LOGIN",
        "1: POST /v1/dev/token signs anyone in (local development only; needs IM_JWT_HS256_SECRET)",
    ),
    ("IM_MEDIA_DIR", "keep media on disk in this directory"),
    (
        "IM_S3_ENDPOINT",
        "keep media in S3 at this endpoint (instead of IM_MEDIA_DIR)",
    ),
    ("IM_S3_REGION", "S3 region (default us-east-1)"),
    ("IM_S3_BUCKET", "S3 bucket for media (default im-media)"),
    ("IM_S3_ACCESS_KEY", "S3 access key"),
    ("IM_S3_SECRET_KEY", "S3 secret key"),
    (
        "IM_GATEWAY_LISTEN",
        "address to listen on (default 127.0.0.1:8080)",
    ),
    (
        "IM_GATEWAY_METRICS_LISTEN",
        "address of the /metrics listener (default: none; never the public one)",
    ),
    (
        "IM_NATS_URL",
        "NATS servers, comma-separated (default nats://127.0.0.1:4222)",
    ),
    ("IM_NATS_USER", "NATS user name (with IM_NATS_PASSWORD)"),
    ("IM_NATS_PASSWORD", "NATS password"),
    (
        "IM_NATS_CREDS",
        "NATS credentials file (user JWT and nkey seed)",
    ),
    ("IM_NATS_NKEY", "file holding an NATS nkey seed"),
    (
        "IM_NATS_TLS_CA",
        "CA certificate (PEM) for the NATS servers; TLS is then required",
    ),
    (
        "IM_EVENT_SIGNING_KEY_FILE",
        "the writer's ed25519 seed (base64url; created if missing): it signs every event it appends",
    ),
    ("IM_JWT_HS256_SECRET", "HS256 secret for bearer tokens"),
    (
        "IM_JWT_RS256_PUBLIC_KEY_FILE",
        "PEM file of the RS256 public key",
    ),
    (
        "IM_JWT_ES256_PUBLIC_KEY_FILE",
        "PEM file of the ES256 (P-256) public key",
    ),
    (
        "IM_JWT_EDDSA_PUBLIC_KEY_FILE",
        "PEM file of the EdDSA (Ed25519) public key",
    ),
    (
        "IM_JWT_JWKS_URL",
        "an identity provider's JWKS URL (keys by kid, rotated)",
    ),
    ("IM_JWT_ISSUER", "the required `iss`, if set"),
    ("IM_JWT_AUDIENCE", "the required `aud`, if set"),
    (
        "IM_JWT_USER_CLAIM",
        "the claim holding the user id (default sub)",
    ),
    (
        "IM_JWT_USER_IDS",
        "strict (refuse ids outside [A-Za-z0-9_-]) or hashed (map them to x_<sha256>)",
    ),
    (
        "IM_GATEWAY_LIMITS_JSON",
        "JSON object overriding `Limits` fields",
    ),
];

/// Per-connection and per-gateway limits (I18).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket frame/message. A send carries at most 16 KiB of
    /// text plus metadata; 64 KiB leaves room and stops abuse early.
    pub frame_bytes_max: usize,
    /// Envelopes in one binary frame.
    pub envelopes_per_frame_max: usize,
    /// Sends per second per connection (token bucket refill) and burst.
    pub sends_per_sec: u32,
    pub send_burst: u32,
    /// Sends per second per user across all their devices and HTTP on this
    /// gateway, and burst: twice one connection's, so two devices in use
    /// at once are not cut short, while a user with sixteen devices cannot
    /// send sixteen times as fast. (Per gateway: a user spread over N
    /// gateways gets N times this.)
    pub user_sends_per_sec: u32,
    pub user_send_burst: u32,
    /// Frames waiting to be written to one client; a client that lets it
    /// fill is closed with `CLOSE_RESYNC` and must resync.
    pub outbound_queue_max: usize,
    /// Every command (send, receipt, sync, HTTP command) is answered within
    /// this: with its outcome, or with a `timeout` error the client retries
    /// with the same id. Longer than a command's worst honest path (a few
    /// conflict rounds, one forward, an index lookup), short enough that a
    /// person waiting sees an answer.
    pub command_timeout_ms: u64,
    /// Commands read from one connection and waiting for their turn (they
    /// run one at a time, in order). Past it a command is refused at once
    /// (`rate_limited`), so a client that pipelines faster than its
    /// commands complete hears back instead of waiting on TCP. Two full
    /// frames: bounds a connection's queued input to 2 x `frame_bytes_max`.
    pub commands_queued_max: usize,
    /// A connection silent this long is closed.
    pub heartbeat_window_ms: u64,
    pub connections_max: usize,
    pub connections_per_user_max: usize,
    /// WebSocket connections from one client address: a NAT'd office or
    /// campus shares one, so generous; past it a flood must come from
    /// many addresses.
    pub connections_per_ip_max: usize,
    /// tungstenite's read buffer, resident for the connection's life: a
    /// client frame is a few hundred bytes (a send, an ack, a heartbeat),
    /// and a larger one grows the buffer for itself only, so 1 KiB keeps an
    /// idle connection small without a syscall per few bytes.
    pub ws_read_buffer_bytes: usize,
    /// Bytes tungstenite gathers before it writes (the writer flushes each
    /// batch anyway): not allocated up front.
    pub ws_write_buffer_bytes: usize,
    /// Largest upload through the gateway (streamed to a temp file).
    pub media_upload_bytes_max: u64,
    /// Largest presigned upload (straight to storage).
    pub media_large_bytes_max: u64,
    /// Bytes a user may have accepted per UTC day, both paths together.
    pub media_quota_bytes_per_day: u64,
    /// Lifetime of presigned URLs and pending uploads.
    pub media_url_ttl_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 64 * 1024,
            envelopes_per_frame_max: 64,
            sends_per_sec: 20,
            send_burst: 40,
            user_sends_per_sec: 40,
            user_send_burst: 80,
            outbound_queue_max: 256,
            command_timeout_ms: 10_000,
            commands_queued_max: 128,
            heartbeat_window_ms: 45_000,
            connections_max: 20_000,
            connections_per_user_max: 16,
            connections_per_ip_max: 1_000,
            ws_read_buffer_bytes: 1024,
            ws_write_buffer_bytes: 4 * 1024,
            media_upload_bytes_max: 16 * 1024 * 1024,
            media_large_bytes_max: 1024 * 1024 * 1024,
            media_quota_bytes_per_day: 2 * 1024 * 1024 * 1024,
            media_url_ttl_secs: 900,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub nats_url: String,
    /// Who the gateway is to NATS (`identities::Component::Gateway`), for
    /// both its connections.
    pub nats_auth: im_streams::connect::NatsAuth,
    /// Which bearer tokens are accepted.
    pub tokens: crate::auth::TokenConfig,
    /// The seed the gateway signs its events with; none: unsigned.
    pub signing_key_file: Option<std::path::PathBuf>,
    pub limits: Limits,
    /// None: the media endpoints answer `unavailable`.
    pub media: Option<crate::media::MediaBackend>,
    /// The web app at `/` and development sign-in.
    pub web: crate::http::web::WebConfig,
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.tokens.validate()?;
        if self.web.dev_login && self.tokens.hs256_secret.is_none() {
            return Err("IM_DEV_LOGIN needs IM_JWT_HS256_SECRET to sign tokens with".into());
        }
        self.nats_auth.identity().map_err(|e| e.to_string())?;
        let l = &self.limits;
        if l.frame_bytes_max < 1024
            || l.outbound_queue_max == 0
            || l.send_burst == 0
            || l.sends_per_sec == 0
            || l.user_sends_per_sec == 0
            || l.user_send_burst == 0
            || l.connections_per_ip_max == 0
            || l.command_timeout_ms == 0
            || l.commands_queued_max == 0
        {
            return Err(format!("limits out of range: {l:?}"));
        }
        Ok(())
    }

    /// Reads the environment (see `ENV_VARS`).
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());

        let limits = match var("IM_GATEWAY_LIMITS_JSON") {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| format!("IM_GATEWAY_LIMITS_JSON: {e}"))?
            }
            None => Limits::default(),
        };
        let config = GatewayConfig {
            listen: var("IM_GATEWAY_LISTEN")
                .unwrap_or_else(|| "127.0.0.1:8080".into())
                .parse()
                .map_err(|e| format!("IM_GATEWAY_LISTEN: {e}"))?,
            metrics_listen: var("IM_GATEWAY_METRICS_LISTEN")
                .map(|a| a.parse())
                .transpose()
                .map_err(|e| format!("IM_GATEWAY_METRICS_LISTEN: {e}"))?,
            nats_url: var("IM_NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            nats_auth: im_streams::connect::NatsAuth {
                user: var("IM_NATS_USER"),
                password: var("IM_NATS_PASSWORD"),
                creds: var("IM_NATS_CREDS").map(Into::into),
                nkey: var("IM_NATS_NKEY").map(Into::into),
                tls_ca: var("IM_NATS_TLS_CA").map(Into::into),
            },
            tokens: tokens_from_env(&var)?,
            signing_key_file: var("IM_EVENT_SIGNING_KEY_FILE").map(Into::into),
            limits,
            media: media_from_env(&var)?,
            web: crate::http::web::WebConfig {
                dir: var("IM_WEB_DIR").map(Into::into),
                dev_login: var("IM_DEV_LOGIN").is_some_and(|v| v == "1" || v == "true"),
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// The token settings (`IM_JWT_*`).
pub fn tokens_from_env(
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::auth::TokenConfig, String> {
    let file = |name: &str| -> Result<Option<String>, String> {
        var(name)
            .map(|path| std::fs::read_to_string(&path).map_err(|e| format!("{name} {path}: {e}")))
            .transpose()
    };
    let defaults = crate::auth::TokenConfig::default();
    Ok(crate::auth::TokenConfig {
        hs256_secret: var("IM_JWT_HS256_SECRET"),
        rs256_public_pem: file("IM_JWT_RS256_PUBLIC_KEY_FILE")?,
        es256_public_pem: file("IM_JWT_ES256_PUBLIC_KEY_FILE")?,
        eddsa_public_pem: file("IM_JWT_EDDSA_PUBLIC_KEY_FILE")?,
        jwks_url: var("IM_JWT_JWKS_URL"),
        issuer: var("IM_JWT_ISSUER"),
        audience: var("IM_JWT_AUDIENCE"),
        user_claim: var("IM_JWT_USER_CLAIM").unwrap_or(defaults.user_claim),
        user_ids: match var("IM_JWT_USER_IDS") {
            Some(v) => v.parse().map_err(|e| format!("IM_JWT_USER_IDS: {e}"))?,
            None => defaults.user_ids,
        },
        jwks_refresh_min: defaults.jwks_refresh_min,
    })
}

fn media_from_env(
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<crate::media::MediaBackend>, String> {
    use crate::media::{store::S3Settings, MediaBackend};
    match (var("IM_S3_ENDPOINT"), var("IM_MEDIA_DIR")) {
        (Some(_), Some(_)) => Err("set IM_S3_ENDPOINT or IM_MEDIA_DIR, not both".into()),
        (Some(endpoint), None) => Ok(Some(MediaBackend::S3(S3Settings {
            endpoint,
            region: var("IM_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
            bucket: var("IM_S3_BUCKET").unwrap_or_else(|| "im-media".into()),
            access_key: var("IM_S3_ACCESS_KEY")
                .ok_or("IM_S3_ACCESS_KEY is required with IM_S3_ENDPOINT")?,
            secret_key: var("IM_S3_SECRET_KEY")
                .ok_or("IM_S3_SECRET_KEY is required with IM_S3_ENDPOINT")?,
        }))),
        (None, Some(dir)) => Ok(Some(MediaBackend::Disk(dir.into()))),
        (None, None) => Ok(None),
    }
}
