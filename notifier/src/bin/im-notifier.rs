//! `im-notifier`: wakes members with no connected device through a push
//! gateway webhook (or a Matrix push gateway).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use im_notifier::config::{
    ATTEMPTS_MAX_DEFAULT, BACKOFF_BASE_DEFAULT, BACKOFF_MAX_DEFAULT, DEBOUNCE_DEFAULT,
    LATE_MAX_DEFAULT, REQUEST_TIMEOUT_DEFAULT,
};
use im_notifier::webhook::Format;
use im_notifier::window::Preview;
use im_notifier::{Notifier, NotifierConfig};

/// Every setting is a flag and an environment variable.
#[derive(Parser)]
#[command(name = "im-notifier", version)]
struct Args {
    #[command(flatten)]
    nats: im_streams::connect::NatsArgs,
    /// Its store (the queue, the outbox, the read models it decides from).
    #[arg(long, env = "IM_NOTIFY_DATA_DIR", default_value = "data/notifier")]
    data_dir: PathBuf,
    /// Names its consumers and control subject; one notifier per name.
    #[arg(long, env = "IM_NOTIFY_INSTANCE", default_value = im_notifier::config::DEFAULT_INSTANCE)]
    instance: String,
    /// The push gateway: https (or http to a loopback address). For the
    /// Matrix format, its `/_matrix/push/v1/notify` URL.
    #[arg(long, env = "IM_NOTIFY_URL")]
    url: reqwest::Url,
    #[arg(long, env = "IM_NOTIFY_FORMAT", value_enum, default_value = "webhook")]
    format: Format,
    /// A file holding the HMAC-SHA256 secret of the signature header (at
    /// least 16 bytes; surrounding white space is ignored).
    #[arg(long, env = "IM_NOTIFY_SECRET_FILE")]
    secret_file: PathBuf,
    /// Extra CA certificates (PEM) the push gateway's certificate may
    /// chain to; the system's roots are trusted anyway.
    #[arg(long, env = "IM_NOTIFY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// How much a notification shows: none, sender, or text.
    #[arg(long, env = "IM_NOTIFY_PREVIEW", value_enum, default_value = "sender")]
    preview: Preview,
    #[arg(long, env = "IM_NOTIFY_DEBOUNCE_MS", default_value_t = DEBOUNCE_DEFAULT.as_millis() as u64)]
    debounce_ms: u64,
    #[arg(long, env = "IM_NOTIFY_LATE_MAX_SECS", default_value_t = LATE_MAX_DEFAULT.as_secs())]
    late_max_secs: u64,
    #[arg(long, env = "IM_NOTIFY_ATTEMPTS_MAX", default_value_t = ATTEMPTS_MAX_DEFAULT)]
    attempts_max: u32,
    #[arg(long, env = "IM_NOTIFY_BACKOFF_BASE_MS", default_value_t = BACKOFF_BASE_DEFAULT.as_millis() as u64)]
    backoff_base_ms: u64,
    #[arg(long, env = "IM_NOTIFY_BACKOFF_MAX_MS", default_value_t = BACKOFF_MAX_DEFAULT.as_millis() as u64)]
    backoff_max_ms: u64,
    #[arg(long, env = "IM_NOTIFY_REQUEST_TIMEOUT_MS", default_value_t = REQUEST_TIMEOUT_DEFAULT.as_millis() as u64)]
    request_timeout_ms: u64,
    /// The writer key it signs the registrations it ends with (a 410),
    /// registered like a gateway's (`imctl signing-key register`).
    #[arg(long, env = "IM_NOTIFY_SIGNING_KEY_FILE")]
    signing_key_file: Option<PathBuf>,
    /// The deployment's key-encryption key, where it encrypts content.
    #[command(flatten)]
    kek: im_streams::content::KekArgs,
    /// Serve `/metrics`, `/healthz` and `/readyz` here.
    #[arg(long, env = "IM_NOTIFY_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

// See the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

impl Args {
    fn config(&self) -> anyhow::Result<NotifierConfig> {
        let secret = std::fs::read(&self.secret_file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.secret_file.display()))?;
        let config = NotifierConfig {
            instance: self.instance.clone(),
            data_dir: self.data_dir.clone(),
            url: self.url.clone(),
            format: self.format,
            secret: secret.trim_ascii().to_vec(),
            ca_file: self.ca_file.clone(),
            preview: self.preview,
            debounce: Duration::from_millis(self.debounce_ms),
            late_max: Duration::from_secs(self.late_max_secs),
            attempts_max: self.attempts_max,
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            signing_key_file: self.signing_key_file.clone(),
            kek: self.kek.clone(),
        };
        config.validate()?;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Err(e) = im_streams::logging::init("info") {
        eprintln!("im-notifier: {e}");
        std::process::exit(2);
    }
    let args = Args::parse();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("im-notifier: {e:#}");
            std::process::exit(2);
        }
    };
    if args.signing_key_file.is_none() {
        tracing::warn!(
            "no signing key: where events must be signed, a token the push gateway refuses keeps its registration"
        );
    }
    let client = args.nats.connect("im-notifier").await?;
    let mut notifier = Notifier::start(client, config).await?;
    if let Some(at) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(at).await?;
        println!("im-notifier: metrics on http://{}", listener.local_addr()?);
        tokio::spawn(im_notifier::metrics::serve(
            listener,
            notifier.stats.clone(),
            notifier.contexts.clone(),
        ));
    }
    println!("im-notifier: ready instance={}", args.instance);
    tokio::select! {
        _ = notifier.wait() => anyhow::bail!("a part of the notifier stopped"),
        _ = im_streams::connect::stop_signal() => {}
    }
    notifier.stop().await;
    println!("im-notifier: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every flag and environment variable is one argument.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
