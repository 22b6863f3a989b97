//! One file per `im-replay` subcommand; what they share is here.

pub mod archive;
pub mod export;
pub mod restore;
pub mod state;
pub mod verify;
pub mod who_could_read;

use anyhow::Context;

/// Every environment variable `im-replay` reads.
pub const ENV_VARS: [(&str, &str); 4] = [
    (
        "IM_NATS_URL",
        "NATS servers, comma-separated (default nats://127.0.0.1:4222)",
    ),
    ("IM_S3_ENDPOINT", "S3 endpoint URL for archive/restore"),
    ("IM_S3_ACCESS_KEY", "S3 access key"),
    ("IM_S3_SECRET_KEY", "S3 secret key"),
];

/// Where the streams are, for every subcommand.
#[derive(Debug, clap::Args)]
pub struct Connection {
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
}

impl Connection {
    pub async fn connect(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(
            self.nats.connect("im-replay").await?,
        ))
    }
}

/// An RFC 3339 time, e.g. 2026-11-23T10:00:00Z.
pub fn parse_time(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{text:?} is not an RFC 3339 time (e.g. 2026-11-23T10:00:00Z)"))
}

pub fn format_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A progress bar on stderr (drawn only on a terminal, so stdout stays a
/// clean pipe and logs stay clean).
pub fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{what} [{{elapsed_precise}}] [{{bar:40}}] {{human_pos}}/{{human_len}} events, {{per_sec}}, eta {{eta}}"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
