//! The notifier's settings: every one a flag and an environment variable,
//! checked before it connects.

use std::path::PathBuf;
use std::time::Duration;

use crate::webhook::Format;
use crate::window::Preview;

/// The notifier's instance name unless told otherwise (its consumers,
/// its control subject; what `imctl` and the ops page ask).
pub const DEFAULT_INSTANCE: &str = "notifier";

/// How long a member is left to read before they are woken: long enough
/// that someone reading along (or whose receipt is on its way) gets
/// nothing, short enough to feel immediate.
pub const DEBOUNCE_DEFAULT: Duration = Duration::from_secs(3);
/// A window decided later than this after its last message (the notifier
/// was down, or far behind) wakes nobody: a notification about an hour-old
/// message that the user has not read is news of nothing; they see it in
/// the app.
pub const LATE_MAX_DEFAULT: Duration = Duration::from_secs(3_600);
/// Attempts to hand one notification to the push gateway before it is a
/// dead letter: with the backoff below, 5 to 10 minutes of a gateway down
/// (a restart, a deploy) are ridden out.
pub const ATTEMPTS_MAX_DEFAULT: u32 = 16;
/// The first retry's wait; each next one doubles, up to `BACKOFF_MAX`,
/// each drawn between half and all of it (jitter: a gateway coming back is
/// not hit by every retry at once).
pub const BACKOFF_BASE_DEFAULT: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(60);
/// One request to the push gateway, connection included: a slow gateway
/// holds one of `SENDS_IN_FLIGHT_MAX` slots at most this long.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// What the notifier needs, validated.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// Names its consumers and control subject (`im.notify.<instance>.q`).
    pub instance: String,
    pub data_dir: PathBuf,
    /// The push gateway: https, or http to a loopback address.
    pub url: reqwest::Url,
    pub format: Format,
    /// HMAC-SHA256 key of the signature header.
    pub secret: Vec<u8>,
    /// Extra CA certificates (PEM) the gateway's certificate may chain to.
    pub ca_file: Option<PathBuf>,
    pub preview: Preview,
    pub debounce: Duration,
    pub late_max: Duration,
    pub attempts_max: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub request_timeout: Duration,
    /// Signs the registrations it ends (a 410): a registered writer key.
    pub signing_key_file: Option<PathBuf>,
    /// The deployment's key-encryption key, where it encrypts content:
    /// names and previews are opened with it (docs/privacy.md).
    pub kek: im_streams::content::KekArgs,
}

/// A URL as logs and errors show it: no user, password or query (which
/// may carry a credential).
#[derive(Debug)]
pub struct Shown(pub reqwest::Url);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let u = &self.0;
        let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        write!(
            f,
            "{}://{}{port}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.path()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the push gateway URL {0} is not https (plain http only to a loopback address)")]
    Insecure(Shown),
    #[error("the webhook secret is empty or shorter than 16 bytes")]
    WeakSecret,
    #[error("{0}")]
    Invalid(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NotifierConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        im_streams::ids::validate_id(im_streams::ids::IdKind::User, &self.instance)
            .map_err(|e| ConfigError::Invalid(format!("instance: {e}")))?;
        let loopback = match self.url.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        match self.url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => return Err(ConfigError::Insecure(Shown(self.url.clone()))),
        }
        if self.secret.len() < 16 {
            return Err(ConfigError::WeakSecret);
        }
        let zero = [
            self.debounce,
            self.backoff_base,
            self.late_max,
            self.request_timeout,
        ]
        .iter()
        .any(Duration::is_zero);
        if zero || self.attempts_max == 0 {
            return Err(ConfigError::Invalid(
                "debounce, late max, backoff, request timeout and attempts must be above zero"
                    .into(),
            ));
        }
        if self.backoff_max < self.backoff_base {
            return Err(ConfigError::Invalid(
                "the backoff's limit is below its base".into(),
            ));
        }
        Ok(())
    }
}
