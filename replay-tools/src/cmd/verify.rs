//! `im-replay verify [--conv ID] [--state FILE]`: audits IM_CONV (see
//! `audit`), printing a chain head per conversation and a digest of the
//! range; names every violation (each event), going on past them as
//! writers and projectors do, and exits 1 if there was any. With
//! `--state`, the audit is taken up from where the last run saved it and
//! saved again, so a nightly audit reads only the new events.
//!
//! Read and check run side by side: the reader hands the events on in
//! chunks; each chunk is decoded, its signatures verified (one by one, as
//! writers verify them) and its payloads hashed on the blocking pool
//! (`audit::prepare`, one chunk per core at once); the ordered checks
//! (chain, rules, commands) take the chunks in stream order.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use im_streams::signing::WriterKeys;

use crate::audit::{self, state, Auditor};
use crate::read::{Bounds, Raw, Reader};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// One conversation only.
    #[arg(long, conflicts_with = "state")]
    pub conv: Option<String>,
    /// One JSON object (`ok`, the range and its digest, each
    /// conversation's head, or the violation) instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Take the audit up from this file (saved by an earlier run) and save
    /// it there again once the run finds nothing: the run reads only the
    /// events after the saved one. A file that does not exist yet starts
    /// from the first event.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// With --state: the sequence the run must start at (the one after the
    /// saved state's); any other is refused, as it would skip events or
    /// read some twice.
    #[arg(long, requires = "state")]
    pub from_seq: Option<u64>,
    /// With --state: the state file's digest as the last run printed it;
    /// a file with another digest is refused (it was replaced).
    #[arg(long, requires = "state")]
    pub expect_state_digest: Option<String>,
    #[command(flatten)]
    pub nats: super::Connection,
}

/// Events decoded, verified and hashed per job on the blocking pool:
/// enough that a job's hand-off costs nothing beside its work, few
/// enough that a job is tens of milliseconds.
pub const PREPARE_CHUNK: usize = 1_024;

/// Chunks read ahead of the checks, besides those being prepared: the
/// reader never holds more than this many (~1 MB each at 1 KB an event).
const READ_AHEAD_CHUNKS: usize = 2;

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

/// The writers' keys, and their bucket when signatures are in force.
async fn writer_keys(
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<(WriterKeys, Option<async_nats::jetstream::kv::Store>)> {
    let keys = im_streams::signing::registered(js).await?;
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
    Ok((keys, bucket))
}

/// Reads every event of the read, learning the keys they name, and hands
/// them on in chunks with the keys that check them.
async fn read_chunks(
    mut reader: Reader,
    mut keys: Arc<WriterKeys>,
    bucket: Option<async_nats::jetstream::kv::Store>,
    mut out: futures::channel::mpsc::Sender<(Arc<WriterKeys>, Vec<Raw>)>,
) -> anyhow::Result<()> {
    let mut chunk = Vec::with_capacity(PREPARE_CHUNK);
    while let Some(raw) = reader.next().await? {
        let signer = audit::signature_of(&raw).and_then(im_streams::signing::signer_of);
        if let (Some(kv), Some(signer)) = (&bucket, signer) {
            if !keys.settled(signer, raw.seq) {
                Arc::make_mut(&mut keys).learn(kv, signer, raw.seq).await?;
            }
        }
        chunk.push(raw);
        if chunk.len() == PREPARE_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(PREPARE_CHUNK));
            if out.send((keys.clone(), full)).await.is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = out.send((keys, chunk)).await;
    }
    Ok(())
}

/// What a run saw: its range, the last event's payload hash, and its
/// violations.
struct Run {
    first: u64,
    last: u64,
    last_hash: [u8; 32],
    violations: Violations,
}

/// Checks every event of `reader`, in order, with `auditor`.
async fn check_all(
    reader: Reader,
    keys: WriterKeys,
    bucket: Option<async_nats::jetstream::kv::Store>,
    auditor: &mut Auditor,
    json: bool,
) -> anyhow::Result<Run> {
    let bar = super::progress_bar("verify");
    bar.set_length(reader.remaining);
    let (tx, rx) = futures::channel::mpsc::channel(READ_AHEAD_CHUNKS);
    let reading = tokio::spawn(read_chunks(reader, Arc::new(keys), bucket, tx));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut prepared = rx
        .map(|(keys, chunk): (Arc<WriterKeys>, Vec<Raw>)| {
            tokio::task::spawn_blocking(move || {
                let prepared = audit::prepare(&keys, &chunk);
                (chunk, prepared)
            })
        })
        .buffered(cores);
    let mut run = Run {
        first: 0,
        last: 0,
        last_hash: [0; 32],
        violations: Violations::default(),
    };
    while let Some(done) = prepared.next().await {
        let (chunk, prepared) = done.context("preparing events")?;
        for (raw, p) in chunk.iter().zip(prepared) {
            if run.first == 0 {
                run.first = raw.seq;
            }
            (run.last, run.last_hash) = (raw.seq, p.hash());
            if let Err(v) = auditor.check_prepared(raw, p) {
                bar.suspend(|| run.violations.add(v, json));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    reading.await.context("reading the stream")??;
    bar.finish_and_clear();
    Ok(run)
}

/// The saved audit to take up, and where it stood (a fresh one when the
/// file does not exist yet).
async fn load_state(
    args: &VerifyArgs,
    js: &async_nats::jetstream::Context,
    keys: WriterKeys,
) -> anyhow::Result<(Auditor, state::Position)> {
    let Some(path) = &args.state else {
        return Ok((Auditor::with_keys(keys), state::Position::default()));
    };
    let file = match std::fs::read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::ensure!(
                args.expect_state_digest.is_none(),
                "{} does not exist: no state has the digest expected",
                path.display()
            );
            eprintln!(
                "verify: {} does not exist yet: auditing from the first event",
                path.display()
            );
            return Ok((Auditor::with_keys(keys), state::Position::default()));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let saved = state::from_file(&file, args.expect_state_digest.as_deref())
        .with_context(|| format!("the audit state {}", path.display()))?;
    let (auditor, position) = Auditor::restore(saved, keys)?;
    still_holds(js, &position).await?;
    eprintln!(
        "verify: taking the audit up after IM_CONV seq {} ({} events audited before)",
        position.last_seq, position.events
    );
    Ok((auditor, position))
}

/// Whether IM_CONV still holds the event the saved audit ended at, as it
/// was: a stream purged, replaced or rewritten under it is not the log the
/// state describes.
async fn still_holds(
    js: &async_nats::jetstream::Context,
    position: &state::Position,
) -> anyhow::Result<()> {
    if position.last_seq == 0 {
        return Ok(());
    }
    let stream = js.get_stream(im_streams::definitions::CONV_STREAM).await?;
    let held = stream
        .get_raw_message(position.last_seq)
        .await
        .with_context(|| {
            format!(
                "IM_CONV no longer holds seq {}, where the saved audit ends",
                position.last_seq
            )
        })?;
    let hash = im_streams::codec::payload_hash(&held.payload);
    anyhow::ensure!(
        hash == position.last_payload_hash,
        "IM_CONV seq {} is not the event the saved audit ends at: the stream was rewritten",
        position.last_seq
    );
    Ok(())
}

/// Writes the state beside its file (a name of this process's own), makes
/// it durable, then moves it over: a run stopped or crashed halfway leaves
/// the last state whole. Its digest.
fn save_state(path: &std::path::Path, file: Vec<u8>) -> anyhow::Result<String> {
    use std::io::Write as _;
    let name = path.file_name().context("a state file name")?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut out =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    out.write_all(&file)?;
    out.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(state::file_digest(&file))
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let js = args.nats.connect().await?;
    let topology = im_streams::definitions::read_topology(&js).await?;
    let filters = match &args.conv {
        Some(conv) => vec![topology.conv_subject(conv)?],
        None => Vec::new(),
    };
    let stream = im_streams::definitions::CONV_STREAM;
    let (keys, bucket) = writer_keys(&js).await?;
    let (mut auditor, position) = load_state(&args, &js, keys.clone()).await?;
    let from_seq = position.last_seq + 1;
    if let Some(asked) = args.from_seq {
        anyhow::ensure!(
            asked == from_seq,
            "--from-seq {asked}: the saved audit goes on from IM_CONV seq {from_seq}"
        );
    }
    let bounds = Bounds {
        from_seq,
        ..Default::default()
    };
    let reader = Reader::open(&js, stream, filters, &bounds).await?;
    let started = Instant::now();
    let run = check_all(reader, keys, bucket, &mut auditor, args.json).await?;
    let secs = started.elapsed().as_secs_f64();
    let (report, unfinished) = auditor.finish_all();
    let mut violations = run.violations;
    for v in unfinished {
        violations.add(v, args.json);
    }
    eprintln!(
        "verify: {} events in {secs:.1} s ({:.0} events/s)",
        report.events,
        report.events as f64 / secs.max(1e-9)
    );
    if violations.count > 0 {
        return violations.end(args.json);
    }
    let mut saved_digest = None;
    if let Some(path) = &args.state {
        let at = match run.last {
            0 => position.clone(),
            last => position.after(&report, last, run.last_hash),
        };
        let digest = save_state(path, auditor.save_to_file(&at))?;
        eprintln!(
            "verify: audit state saved to {} up to IM_CONV seq {} (digest {digest})",
            path.display(),
            at.last_seq
        );
        saved_digest = Some((digest, at));
    }
    print_report(
        args.json,
        (stream, run.first, run.last),
        &report,
        saved_digest,
    );
    Ok(())
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

/// The verified range: a head per conversation and the range's digest (and
/// where a saved audit now stands), as lines or (`json`) one object.
fn print_report(
    json: bool,
    (stream, first, last): (&str, u64, u64),
    report: &audit::Report,
    saved: Option<(String, state::Position)>,
) {
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
        let mut all = serde_json::json!({
            "ok": true,
            "stream": stream,
            "first": first,
            "last": last,
            "events": report.events,
            "range_digest": report.range_digest,
            "conversations": conversations,
        });
        if let Some((digest, at)) = saved {
            all["state"] = serde_json::json!({
                "digest": digest,
                "last_seq": at.last_seq,
                "events": at.events,
                "chain_digest": at.chain_digest,
            });
        }
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
    if let Some((digest, at)) = saved {
        println!(
            "state through {stream} seq {}: {} events, chain digest {}, file digest {digest}",
            at.last_seq, at.events, at.chain_digest
        );
    }
    println!("ok");
}
