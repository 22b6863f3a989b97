//! The stack's content encryption (docs/privacy.md): a key-encryption key
//! kept in `<data dir>/kek` (made on first start), the content keys bucket
//! with the policy the flags give, and the retention task. With
//! `--plain-content` content stays clear.

use std::time::Duration;

use im_streams::content::{destroy, ContentKeys, Kek, KekArgs, Policy};

use super::UpArgs;

/// How often the retention task looks for epochs past retention: within
/// an epoch of them (for short test epochs), and at least once a minute.
fn retention_every(policy: Policy) -> Duration {
    Duration::from_millis(policy.epoch_ms / 2)
        .clamp(Duration::from_millis(250), Duration::from_secs(60))
}

/// The KEK every component is given, the bucket made (or its policy set
/// to the flags'), and the retention task started when retention is on.
pub async fn prepare(
    js: &async_nats::jetstream::Context,
    args: &UpArgs,
) -> anyhow::Result<KekArgs> {
    if args.plain_content {
        return Ok(KekArgs::default());
    }
    let path = args.data_dir.join("kek");
    let kek = Kek::load_or_create(&path)?;
    let wanted = Policy {
        epoch_ms: args.content_epoch_secs.max(1) * 1_000,
        retention_ms: args.retention_secs * 1_000,
    };
    ContentKeys::open(js, Some(kek), wanted).await?;
    let wanted = match destroy::set_policy(js, wanted).await {
        Ok(()) => wanted,
        // Keys exist under another epoch length, which stays; the
        // retention is the flag's.
        Err(e) => {
            let stored = destroy::policy(js).await?;
            println!(
                "imctl: {e}; keeping epochs of {} s",
                stored.epoch_ms / 1_000
            );
            let kept = Policy {
                retention_ms: wanted.retention_ms,
                ..stored
            };
            destroy::set_policy(js, kept).await?;
            kept
        }
    };
    if wanted.retention_ms > 0 {
        tokio::spawn(retention(js.clone(), wanted));
    }
    println!(
        "imctl: content encrypted (key-encryption key in {}; epoch {} s, retention {})",
        path.display(),
        wanted.epoch_ms / 1_000,
        match wanted.retention_ms {
            0 => "none".to_string(),
            ms => format!("{} s", ms / 1_000),
        }
    );
    Ok(KekArgs::from_file(path))
}

/// Destroys the keys of epochs past retention, for as long as the stack runs.
async fn retention(js: async_nats::jetstream::Context, policy: Policy) {
    let mut tick = tokio::time::interval(retention_every(policy));
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if let Err(e) = destroy::expire(&js, now).await {
            tracing::warn!(error = %e, "retention run failed; tried again next round");
        }
    }
}
