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

use im_gateway::media::MediaBackend;
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
    /// Where the gateways keep media: the user's uploads are deleted from
    /// it. None given: media objects are left (and the output says so).
    #[command(flatten)]
    pub media: im_gateway::config::MediaArgs,
}

/// What an erasure did, as `--json` prints it.
#[derive(serde::Serialize)]
struct Erased<'a> {
    user: &'a str,
    keys_destroyed: u64,
    recorded_at_stream_seq: u64,
    /// Uploads deleted from the media store; null when none was given.
    media_deleted: Option<u64>,
}

/// What `erase_with` did.
pub struct ErasedAll {
    pub erasure: destroy::Erasure,
    /// Uploads deleted, when a media store was given.
    pub media_deleted: Option<u64>,
}

/// Runs one erasure with an operator's writer: the keys, the record, and
/// the user's uploads when the media store is given.
pub async fn erase_with(
    client: async_nats::Client,
    (signing_key_file, media): (Option<&std::path::Path>, Option<&MediaBackend>),
    user: &str,
    requested_by: &str,
) -> anyhow::Result<ErasedAll> {
    im_streams::ids::validate_id(im_streams::ids::IdKind::User, user)?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    // Where events must be signed an unsigned erasure would be set aside
    // by every projection (I30) while the keys are gone: refused first.
    let signed = im_streams::signing::registered(&js)
        .await?
        .in_force_from()
        .is_some();
    anyhow::ensure!(
        !signed || signing_key_file.is_some(),
        "events are signed here: give a registered writer key (--signing-key-file) to record the erasure"
    );
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
    let writer = im_streams::Appender::with_options(client.clone(), topology, options).await?;
    let erasure = destroy::erase(&js, &writer, user, requested_by).await?;
    let media_deleted = match media {
        Some(backend) => {
            let media = im_gateway::media::Media::open(backend, &client).await?;
            Some(media.erase_uploads_of(user).await?)
        }
        None => None,
    };
    Ok(ErasedAll {
        erasure,
        media_deleted,
    })
}

pub async fn erase(args: EraseArgs) -> anyhow::Result<()> {
    let client = args.nats.connect("imctl-erase").await?;
    let backend = args.media.backend();
    let given = (args.signing_key_file.as_deref(), backend.as_ref());
    let done = erase_with(client, given, &args.user, &args.requested_by).await?;
    let shown = Erased {
        user: &args.user,
        keys_destroyed: done.erasure.keys,
        recorded_at_stream_seq: done.erasure.stream_seq,
        media_deleted: done.media_deleted,
    };
    if args.json {
        println!("{}", serde_json::to_string(&shown)?);
        return Ok(());
    }
    println!(
        "erased {}: {} data keys destroyed; UserErased at IM_CONV seq {}; {}",
        shown.user,
        shown.keys_destroyed,
        shown.recorded_at_stream_seq,
        match shown.media_deleted {
            Some(n) => format!("{n} uploads deleted"),
            None => "media left (no media store given: --media-dir or --s3-endpoint)".into(),
        }
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The deployment's key-encryption key (64 hex digits), checked
    /// against the bucket when it exists.
    #[command(flatten)]
    pub kek: im_streams::content::KekArgs,
    /// Data keys per epoch of this many seconds.
    #[arg(long, default_value_t = im_streams::content::EPOCH_MS_DEFAULT / 1_000)]
    pub epoch_secs: u64,
    /// Content older than this many seconds is erased; 0 keeps it.
    #[arg(long, default_value_t = 0)]
    pub retention_secs: u64,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
}

/// `imctl keys init`: the content keys bucket (with IM_CONV's replicas),
/// its KEK check and policy; the deployment encrypts from now on. Run
/// again, it checks the KEK and leaves the bucket as it is.
pub async fn init(args: InitArgs) -> anyhow::Result<()> {
    let kek = args
        .kek
        .load()?
        .ok_or_else(|| anyhow::anyhow!("give the key-encryption key: --kek-file or IM_KEK"))?;
    anyhow::ensure!(args.epoch_secs > 0, "--epoch-secs must be positive");
    let js = async_nats::jetstream::new(args.nats.connect("imctl").await?);
    let wanted = Policy {
        epoch_ms: args.epoch_secs * 1_000,
        retention_ms: args.retention_secs * 1_000,
    };
    im_streams::content::ContentKeys::open(&js, Some(kek), wanted).await?;
    let policy = destroy::policy(&js).await?;
    println!(
        "{} ready: the key-encryption key opens it; epoch {} s, retention {} s",
        im_streams::content::CONTENT_KEYS_BUCKET,
        policy.epoch_ms / 1_000,
        policy.retention_ms / 1_000
    );
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
