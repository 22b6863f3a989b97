//! `imctl notify dead-letters [--replay] [--json]`: the notifications the
//! notifier gave up (the push gateway refused them, or failed past its
//! attempts), and sending them again. Exit 1 while any remains.

use std::time::Duration;

use im_schema::v1;

#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    /// Move every dead letter back to its user's queue (behind what waits
    /// there), attempts counted afresh.
    #[arg(long)]
    pub replay: bool,
    /// At most this many listed (up to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// One JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    /// The notifier instance (`im-notifier --instance`).
    #[arg(long, env = "IM_NOTIFY_INSTANCE", default_value = im_notifier::config::DEFAULT_INSTANCE)]
    pub instance: String,
}

/// The notifier answers between two of its rounds (`CONTROL_TIMEOUT`).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Asks notifier `instance` on its control subject, within `within`.
pub async fn ask(
    client: &async_nats::Client,
    instance: &str,
    cmd: v1::NotifyControl,
    within: Duration,
) -> anyhow::Result<v1::NotifyControlResult> {
    let subject = im_notifier::control::control_subject(instance);
    let asked = client.request(subject, im_schema::encode(&cmd).into());
    let answer = tokio::time::timeout(within, asked)
        .await
        .map_err(|_| anyhow::anyhow!("notifier {instance}: no answer within {within:?}"))?
        .map_err(|e| anyhow::anyhow!("notifier {instance}: {e} (is it running?)"))?;
    let result: v1::NotifyControlResult = im_schema::decode(&answer.payload)?;
    if !result.error.is_empty() {
        anyhow::bail!("notifier {instance}: {}", result.error);
    }
    Ok(result)
}

pub async fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<()> {
    let client = args.nats.connect("imctl").await?;
    let cmd = v1::NotifyControl {
        replay: args.replay,
        limit: args.limit,
    };
    let result = ask(&client, &args.instance, cmd, ANSWER_TIMEOUT).await?;
    match args.json {
        true => println!("{}", im_schema::to_json(&result)),
        false => print_lines(&result),
    }
    let left = result.total - result.replayed;
    if left > 0 {
        return Err(im_streams::exit::Found(format!("{left} dead notification(s)")).into());
    }
    Ok(())
}

fn print_lines(result: &v1::NotifyControlResult) {
    println!("{} dead notifications", result.total);
    if result.replayed > 0 {
        println!("{} replayed", result.replayed);
    }
    for d in &result.dead_letters {
        let n = d.notification.clone().unwrap_or_default();
        println!(
            "  {} user={} conversation={} seq={}..{} attempts={}: {}",
            n.id,
            n.user_id,
            n.conversation_id,
            n.first_conv_seq,
            n.last_conv_seq,
            d.attempts,
            d.last_error
        );
    }
}
