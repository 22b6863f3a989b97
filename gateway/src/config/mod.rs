//! Gateway configuration: every setting a flag and an environment variable
//! (`im-gateway --help` lists them), gathered into one `GatewayConfig`,
//! validated at start.

mod args;
mod limits;

use std::net::SocketAddr;

pub use args::{GatewayArgs, MediaArgs, TokenArgs};
pub use limits::Limits;

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
    /// The key-encryption key, if the deployment encrypts content.
    pub kek: im_streams::content::KekArgs,
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
        self.kek.load().map_err(|e| e.to_string())?;
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
}

/// What `--check-config` prints: every setting, no secret.
pub fn summary(c: &GatewayConfig) -> String {
    let t = &c.tokens;
    let keys: Vec<&str> = [
        ("hs256", t.hs256_secret.is_some()),
        ("rs256", t.rs256_public_pem.is_some()),
        ("es256", t.es256_public_pem.is_some()),
        ("eddsa", t.eddsa_public_pem.is_some()),
        ("jwks", t.jwks_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let media = match &c.media {
        Some(crate::media::MediaBackend::Disk(dir)) => format!("disk {}", dir.display()),
        Some(crate::media::MediaBackend::S3(s)) => format!("s3 {} bucket {}", s.endpoint, s.bucket),
        None => "none".into(),
    };
    let mut out = vec![
        format!("listen {}", c.listen),
        format!("metrics {:?}", c.metrics_listen),
        format!(
            "nats {} as {:?}",
            c.nats_url,
            c.nats_auth.user.as_deref().unwrap_or("(no user)")
        ),
        format!(
            "tokens {} iss {:?} aud {:?} claim {} ids {:?}",
            keys.join(","),
            t.issuer,
            t.audience,
            t.user_claim,
            t.user_ids
        ),
        format!("signing key {:?}", c.signing_key_file),
        c.kek.describe(),
        format!("media {media}"),
        format!("web {:?} dev sign-in {}", c.web.dir, c.web.dev_login),
    ];
    out.extend(
        c.limits
            .to_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    format!("ok: the gateway would start with\n  {}", out.join("\n  "))
}
