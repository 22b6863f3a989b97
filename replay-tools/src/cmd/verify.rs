//! `im-replay verify [--conv ID]`: audits IM_CONV from its first event
//! (see `audit`), printing a chain head per conversation and a digest of
//! the range; exits non-zero at the first violation, naming the event.

use crate::audit::{self, Auditor};
use crate::read::{Bounds, Reader};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// One conversation only.
    #[arg(long)]
    pub conv: Option<String>,
    /// One JSON object (`ok`, the range and its digest, each
    /// conversation's head, or the violation) instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: super::Connection,
}

/// A violation as `--json` prints it.
fn violation_json(v: &audit::Violation) -> serde_json::Value {
    serde_json::json!({
        "ok": false,
        "violation": {
            "stream_seq": v.stream_seq,
            "subject": v.subject,
            "conversation_id": v.conversation_id,
            "conv_seq": v.conv_seq,
            "message": v.to_string(),
        }
    })
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let js = args.nats.connect().await?;
    let topology = im_streams::definitions::read_topology(&js).await?;
    let filters = match &args.conv {
        Some(conv) => vec![topology.conv_subject(conv)?],
        None => Vec::new(),
    };
    let stream = im_streams::definitions::CONV_STREAM;
    let mut reader = Reader::open(&js, stream, filters, &Bounds::default()).await?;
    let bar = super::progress_bar("verify");
    bar.set_length(reader.remaining);
    let keys = im_streams::signing::registered(&js).await?;
    match keys.in_force_from() {
        Some(from) => eprintln!("verify: signatures required from IM_CONV seq {from}"),
        None => eprintln!("verify: no writer key is registered: signatures are not checked"),
    }
    let mut auditor = Auditor::with_keys(keys);
    let (mut first, mut last) = (0, 0);
    while let Some(raw) = reader.next().await? {
        if let Some(signer) = audit::signature_of(&raw).and_then(im_streams::signing::signer_of) {
            auditor.keys_mut().learn(&js, signer).await?;
        }
        if first == 0 {
            first = raw.seq;
        }
        last = raw.seq;
        if let Err(v) = auditor.check(&raw) {
            bar.finish_and_clear();
            match args.json {
                true => println!("{}", violation_json(&v)),
                false => println!("VIOLATION {v}"),
            }
            let found = format!(
                "the log failed verification at IM_CONV seq {}",
                v.stream_seq
            );
            return Err(im_streams::exit::Found(found).into());
        }
        bar.inc(1);
        bar.set_length(bar.position() + reader.remaining);
    }
    bar.finish_and_clear();
    let report = match auditor.finish() {
        Ok(r) => r,
        Err(v) => {
            match args.json {
                true => println!("{}", violation_json(&v)),
                false => println!("VIOLATION {v}"),
            }
            let found = "the log failed verification".to_string();
            return Err(im_streams::exit::Found(found).into());
        }
    };
    print_report(args.json, (stream, first, last), &report);
    Ok(())
}

/// The verified range: a head per conversation and the range's digest, as
/// lines or (`json`) one object.
fn print_report(json: bool, (stream, first, last): (&str, u64, u64), report: &audit::Report) {
    if json {
        let conversations: serde_json::Map<String, serde_json::Value> = report
            .conversations
            .iter()
            .map(|(c, d)| {
                (
                    c.clone(),
                    serde_json::json!({"events": d.events, "head": d.head}),
                )
            })
            .collect();
        let all = serde_json::json!({
            "ok": true,
            "stream": stream,
            "first": first,
            "last": last,
            "events": report.events,
            "range_digest": report.range_digest,
            "conversations": conversations,
        });
        println!("{all}");
        return;
    }
    for (conv, d) in &report.conversations {
        println!("conversation {conv}: {} events, head {}", d.events, d.head);
    }
    println!(
        "range {stream} {first}-{last}: {} events, digest {}",
        report.events, report.range_digest
    );
    println!("ok");
}
