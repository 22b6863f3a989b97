//! `imctl streams apply|status`: the stream configs applied idempotently
//! (defaults, or a JSON file of `StreamSettings`) with a printed diff; and
//! each stream's messages, bytes, sequences, and consumers with what they
//! still have pending.

use std::path::PathBuf;

use anyhow::Context;
use futures::StreamExt;
use im_streams::StreamSettings;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    /// A JSON file of stream settings (fields of `StreamSettings`; unknown
    /// fields are refused). Defaults when absent.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    #[arg(long)]
    pub json: bool,
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let settings: StreamSettings = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => StreamSettings::default(),
    };
    let js = async_nats::jetstream::new(args.nats.connect("imctl").await?);
    let applied = im_streams::apply_streams(&js, &settings).await?;
    for r in &applied.reports {
        if r.created {
            println!("{}: created", r.name);
        } else if r.changes.is_empty() {
            println!("{}: unchanged", r.name);
        } else {
            for c in &r.changes {
                println!("{}: {c}", r.name);
            }
        }
    }
    println!("partitions: {}", applied.topology.partitions);
    Ok(())
}

#[derive(Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub pending: u64,
    pub ack_pending: usize,
    pub delivered_stream_seq: u64,
}

#[derive(Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub consumers: Vec<ConsumerStatus>,
}

/// Consumers listed per stream, at most: a status stays readable.
const CONSUMERS_LISTED_MAX: usize = 1_000;

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(args.nats.connect("imctl").await?);
    let out = collect_status(&js).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for s in &out {
        println!(
            "{:<8} messages={} bytes={} seq={}..{}",
            s.name, s.messages, s.bytes, s.first_seq, s.last_seq
        );
        for c in &s.consumers {
            println!(
                "  {:<40} pending={} ack_pending={} delivered={}",
                c.name, c.pending, c.ack_pending, c.delivered_stream_seq
            );
        }
    }
    Ok(())
}

/// Each stream's state and consumers: what `status` prints and the admin
/// API answers.
pub async fn collect_status(
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<Vec<StreamStatus>> {
    let mut out = Vec::new();
    for name in [
        im_streams::definitions::CONV_STREAM,
        im_streams::definitions::RCPT_STREAM,
    ] {
        let mut stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("stream {name}"))?;
        let info = stream.info().await?.clone();
        let mut consumers = Vec::new();
        let mut list = stream.consumers();
        while let Some(c) = list.next().await {
            let c = c?;
            consumers.push(ConsumerStatus {
                name: c.name.clone(),
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                delivered_stream_seq: c.delivered.stream_sequence,
            });
            if consumers.len() == CONSUMERS_LISTED_MAX {
                break;
            }
        }
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        out.push(StreamStatus {
            name: name.to_string(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            consumers,
        });
    }
    Ok(out)
}
