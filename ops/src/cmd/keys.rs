//! Content keys (docs/privacy.md), as the operator:
//! - `imctl erase --user U`: destroys every data key of U's content and
//!   records `UserErased` on U's own log (signed with a registered writer
//!   key); every projection then drops what it holds of U.
//! - `imctl keys policy [--epoch-secs N] [--retention-secs N]`: shows or
//!   sets the deployment's epoch length and retention.
//! - `imctl keys expire [--every SECS]`: destroys the keys of epochs past
//!   retention, once or on a schedule.
//!
//! None of them needs the KEK: destroying is the operator's, opening the
//! readers'.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use im_streams::content::{destroy, Policy};

#[derive(Debug, clap::Args)]
pub struct EraseArgs {
    /// The user whose content is erased.
    #[arg(long)]
    pub user: String,
    /// Who asks (recorded in the log: a name, never a reason).
    #[arg(long, env = "IM_OPERATOR_NAME", default_value = "operator")]
    pub requested_by: String,
    /// A writer key registered in `im_writer_keys` (`imctl signing-key
    /// register`) that signs the recorded erasure; `imctl up` keeps one in
    /// `<data dir>/event-signing-key`.
    #[arg(long, env = "IM_EVENT_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// One JSON object instead of a line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
}

/// What an erasure did, as `--json` prints it.
#[derive(serde::Serialize)]
struct Erased<'a> {
    user: &'a str,
    keys_destroyed: u64,
    recorded_at_stream_seq: u64,
}

/// Runs one erasure with an operator's writer.
pub async fn erase_with(
    client: async_nats::Client,
    signing_key_file: Option<&std::path::Path>,
    user: &str,
    requested_by: &str,
) -> anyhow::Result<destroy::Erasure> {
    im_streams::ids::validate_id(im_streams::ids::IdKind::User, user)?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let signer = match signing_key_file {
        Some(path) => {
            anyhow::ensure!(
                path.is_file(),
                "no signing key at {} (a registered writer key signs the erasure)",
                path.display()
            );
            let signer = im_streams::signing::EventSigner::load_or_create(path)?;
            Some(Arc::new(signer))
        }
        None => None,
    };
    let options = im_streams::AppenderOptions {
        signer,
        ..Default::default()
    };
    let writer = im_streams::Appender::with_options(client, topology, options).await?;
    Ok(destroy::erase(&js, &writer, user, requested_by).await?)
}

pub async fn erase(args: EraseArgs) -> anyhow::Result<()> {
    let client = args.nats.connect("imctl-erase").await?;
    let key = args.signing_key_file.as_deref();
    let done = erase_with(client, key, &args.user, &args.requested_by).await?;
    let shown = Erased {
        user: &args.user,
        keys_destroyed: done.keys,
        recorded_at_stream_seq: done.stream_seq,
    };
    if args.json {
        println!("{}", serde_json::to_string(&shown)?);
    } else {
        println!(
            "erased {}: {} data keys destroyed; UserErased at IM_CONV seq {}",
            shown.user, shown.keys_destroyed, shown.recorded_at_stream_seq
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Data keys per epoch of this many seconds (the grain of retention;
    /// applies to keys made from now on).
    #[arg(long)]
    pub epoch_secs: Option<u64>,
    /// Content older than this many seconds is erased; 0 keeps it.
    #[arg(long)]
    pub retention_secs: Option<u64>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
}

pub async fn policy(args: PolicyArgs) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(args.nats.connect("imctl").await?);
    let mut policy: Policy = destroy::policy(&js).await?;
    if args.epoch_secs.is_some() || args.retention_secs.is_some() {
        if let Some(s) = args.epoch_secs {
            anyhow::ensure!(s > 0, "--epoch-secs must be positive");
            policy.epoch_ms = s * 1_000;
        }
        if let Some(s) = args.retention_secs {
            policy.retention_ms = s * 1_000;
        }
        destroy::set_policy(&js, policy).await?;
    }
    match args.json {
        true => println!("{}", serde_json::to_string(&policy)?),
        false => println!(
            "epoch {} s, retention {}",
            policy.epoch_ms / 1_000,
            match policy.retention_ms {
                0 => "none (content kept)".to_string(),
                ms => format!("{} s", ms / 1_000),
            }
        ),
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ExpireArgs {
    /// Keep running, a round every this many seconds (a scheduled task);
    /// without it, one round.
    #[arg(long)]
    pub every: Option<u64>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
}

pub async fn expire(args: ExpireArgs) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(args.nats.connect("imctl").await?);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let done = destroy::expire(&js, now).await?;
        match args.json {
            true => println!(
                "{}",
                serde_json::json!({"epochs": done.epochs, "keys_destroyed": done.keys})
            ),
            false => println!(
                "{} epochs past retention: {} data keys destroyed",
                done.epochs, done.keys
            ),
        }
        let Some(every) = args.every else {
            return Ok(());
        };
        tokio::time::sleep(Duration::from_secs(every.max(1))).await;
    }
}
