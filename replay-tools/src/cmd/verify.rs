//! `im-replay verify [--conv ID]`: audits IM_CONV from its first event
//! (see `audit`), printing a chain head per conversation and a digest of
//! the range; names every violation (each event), going on past them as
//! writers and projectors do, and exits 1 if there was any.

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

/// A violation as `--json` lists it.
fn violation_json(v: &audit::Violation) -> serde_json::Value {
    serde_json::json!({
        "stream_seq": v.stream_seq,
        "subject": v.subject,
        "conversation_id": v.conversation_id,
        "conv_seq": v.conv_seq,
        "message": v.to_string(),
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
    let bucket = match keys.in_force_from() {
        Some(from) => {
            eprintln!("verify: signatures required from IM_CONV seq {from}");
            let name = im_streams::signing::WRITER_KEYS_BUCKET;
            Some(js.get_key_value(name).await?)
        }
        None => {
            eprintln!("verify: no writer key is registered: signatures are not checked");
            None
        }
    };
    let mut auditor = Auditor::with_keys(keys);
    let (mut first, mut last) = (0, 0);
    let mut violations = Violations::default();
    while let Some(raw) = reader.next().await? {
        let signer = audit::signature_of(&raw).and_then(im_streams::signing::signer_of);
        if let (Some(kv), Some(signer)) = (&bucket, signer) {
            auditor.keys_mut().learn(kv, signer, raw.seq).await?;
        }
        if first == 0 {
            first = raw.seq;
        }
        last = raw.seq;
        if let Err(v) = auditor.check(&raw) {
            bar.suspend(|| violations.add(v, args.json));
        }
        bar.inc(1);
        bar.set_length(bar.position() + reader.remaining);
    }
    bar.finish_and_clear();
    let (report, unfinished) = auditor.finish_all();
    for v in unfinished {
        violations.add(v, args.json);
    }
    match violations.count {
        0 => {
            print_report(args.json, (stream, first, last), &report);
            Ok(())
        }
        _ => violations.end(args.json),
    }
}

/// Violations printed at most, one line each; past it they are counted.
/// A forger can publish any number: the report must stay readable.
pub const VIOLATIONS_PRINTED_MAX: u64 = 1_000;

/// The violations found so far: the first ones printed as they come.
#[derive(Default)]
struct Violations {
    count: u64,
    listed: Vec<serde_json::Value>,
}

impl Violations {
    fn add(&mut self, v: audit::Violation, json: bool) {
        self.count += 1;
        if self.count > VIOLATIONS_PRINTED_MAX {
            return;
        }
        match json {
            true => self.listed.push(violation_json(&v)),
            false => println!("VIOLATION {v}"),
        }
    }

    /// The summary, and the exit that says a problem was found.
    fn end(self, json: bool) -> anyhow::Result<()> {
        if json {
            let first = self.listed.first().cloned();
            let all = serde_json::json!({
                "ok": false,
                "violations_found": self.count,
                "violation": first,
                "violations": self.listed,
            });
            println!("{all}");
        } else if self.count > VIOLATIONS_PRINTED_MAX {
            println!("... {} more", self.count - VIOLATIONS_PRINTED_MAX);
        }
        let found = format!("the log failed verification: {} violation(s)", self.count);
        Err(im_streams::exit::Found(found).into())
    }
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
