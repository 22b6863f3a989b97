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
//!
//! Memory: an audit holds each conversation's rules state and every
//! command's fingerprint. When the stream's conversations and events would
//! take more than `--memory-mb` (`passes_for`), the audit runs in passes
//! (`audit::Pass`), each over the same range of the stream and a share of
//! the conversations, its state taken up from and written to the state
//! file one share at a time (`audit::state_file`): memory stays within the
//! budget up to `PASSES_MAX` passes, for one more read of the stream a
//! pass. What still grows is the report, a head per conversation (~100
//! bytes each). Violations are named pass by pass, each pass's in stream
//! order (so `--json`'s first `violation` is the first pass's first).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use im_streams::signing::WriterKeys;

use crate::audit::state_file::{StateFile, StateWriter};
use crate::audit::{self, state, Auditor, Pass};
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
    /// The memory the audit's state may take, in MB. A log whose
    /// conversations would take more is audited in passes, each over the
    /// whole stream and a share of the conversations (at most 64 passes;
    /// the report, a line per conversation, is held whole).
    #[arg(long, env = "IM_VERIFY_MEMORY_MB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_mb: u64,
    /// Audit in exactly this many passes, whatever `--memory-mb` works out.
    #[arg(long, conflicts_with = "conv",
          value_parser = clap::value_parser!(u32).range(1..=PASSES_MAX as i64))]
    pub passes: Option<u32>,
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

/// What one conversation's audit holds besides its recent messages
/// (members, chain head, the conversation's own bookkeeping), at most for
/// everyday conversations.
const CONV_AUDIT_BASE_BYTES: u64 = 4 * 1024;

/// What each message in a conversation's recent index takes (sender,
/// client_msg_id, time, in the rules state's map): measured at ~177 KB for
/// a conversation of 1,000 events, 512 of them indexed, commands included
/// (BENCHMARKS.md, "Auditor throughput"), rounded up.
const RECENT_MESSAGE_BYTES: u64 = 300;

/// What each command's fingerprint takes in its set (16 bytes, the set's
/// spare room and hash): the part of the state that grows with the log.
const COMMAND_BYTES: u64 = 40;

/// Passes at most: each reads the whole stream again, and past this many
/// the reads cost more than memory is worth (the audit then runs over the
/// budget, and says so).
const PASSES_MAX: u32 = 64;

/// How many passes keep the audit of a stream of `conversations`
/// subjects and `events` events within `memory_mb`: each conversation
/// counted with its share of the events' recent index (at most
/// `MESSAGE_INDEX_MAX`), each event with its command.
fn passes_for(conversations: u64, events: u64, memory_mb: u64) -> u32 {
    let indexed =
        (events / conversations.max(1)).min(im_streams::conversation::MESSAGE_INDEX_MAX as u64);
    let per_conversation = CONV_AUDIT_BASE_BYTES + indexed * RECENT_MESSAGE_BYTES;
    let needed = conversations * per_conversation + events * COMMAND_BYTES;
    let budget = memory_mb.saturating_mul(1_000_000);
    let passes = needed.div_ceil(budget).max(1);
    if passes > u64::from(PASSES_MAX) {
        eprintln!(
            "verify: the audit needs ~{} MB, more than {PASSES_MAX} passes of {memory_mb} MB: it will take more",
            needed / 1_000_000
        );
    }
    passes.min(u64::from(PASSES_MAX)) as u32
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
) -> anyhow::Result<Arc<WriterKeys>> {
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
                return Ok(keys);
            }
        }
    }
    if !chunk.is_empty() {
        let _ = out.send((keys.clone(), chunk)).await;
    }
    Ok(keys)
}

/// What a pass saw of the range: its first and last events and the last
/// one's payload hash (the first pass sees every event).
#[derive(Default)]
struct Run {
    first: u64,
    last: u64,
    last_hash: [u8; 32],
}

/// Checks the events of `reader` that `pass` audits, in order, with
/// `auditor`; the keys learned on the way.
async fn check_pass(
    reader: Reader,
    (keys, bucket): (WriterKeys, Option<async_nats::jetstream::kv::Store>),
    auditor: &mut Auditor,
    pass: Pass,
    violations: &mut Violations,
) -> anyhow::Result<(Run, WriterKeys)> {
    let bar = super::progress_bar(&match pass.of {
        1 => "verify".to_string(),
        of => format!("verify, pass {} of {of}", pass.index + 1),
    });
    bar.set_length(reader.remaining);
    let (tx, rx) = futures::channel::mpsc::channel(READ_AHEAD_CHUNKS);
    let reading = tokio::spawn(read_chunks(reader, Arc::new(keys), bucket, tx));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut prepared = rx
        .map(|(keys, chunk): (Arc<WriterKeys>, Vec<Raw>)| {
            tokio::task::spawn_blocking(move || {
                let steps = audit::prepare_pass(&keys, &chunk, pass);
                (chunk, steps)
            })
        })
        .buffered(cores);
    let mut run = Run::default();
    while let Some(done) = prepared.next().await {
        let (chunk, steps) = done.context("preparing events")?;
        for (raw, step) in chunk.iter().zip(steps) {
            if let Some(hash) = step.hash() {
                run.first = if run.first == 0 { raw.seq } else { run.first };
                (run.last, run.last_hash) = (raw.seq, hash);
            }
            if let Err(v) = auditor.take(raw, step) {
                bar.suspend(|| violations.add(v));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    let keys = reading.await.context("reading the stream")??;
    bar.finish_and_clear();
    Ok((run, Arc::unwrap_or_clone(keys)))
}

/// The saved audit to take up (its file, whose digest held, and where it
/// stood), or None when there is none: no `--state`, or a file that does
/// not exist yet.
async fn open_state(
    args: &VerifyArgs,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<Option<(StateFile, state::Position)>> {
    let Some(path) = &args.state else {
        return Ok(None);
    };
    if !path
        .try_exists()
        .with_context(|| format!("the audit state {}", path.display()))?
    {
        anyhow::ensure!(
            args.expect_state_digest.is_none(),
            "{} does not exist: no state has the digest expected",
            path.display()
        );
        eprintln!(
            "verify: {} does not exist yet: auditing from the first event",
            path.display()
        );
        return Ok(None);
    }
    let (file, head) = StateFile::open(path, args.expect_state_digest.as_deref())
        .with_context(|| format!("the audit state {}", path.display()))?;
    let (_, position) = Auditor::restore(head, WriterKeys::default())?;
    still_holds(js, &position).await?;
    eprintln!(
        "verify: taking the audit up after IM_CONV seq {} ({} events audited before)",
        position.last_seq, position.events
    );
    Ok(Some((file, position)))
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

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let js = args.nats.connect().await?;
    let topology = im_streams::definitions::read_topology(&js).await?;
    let filters = match &args.conv {
        Some(conv) => vec![topology.conv_subject(conv)?],
        None => Vec::new(),
    };
    let stream = im_streams::definitions::CONV_STREAM;
    let (mut keys, bucket) = writer_keys(&js).await?;
    let saved = open_state(&args, &js).await?;
    let position = saved.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
    let from_seq = position.last_seq + 1;
    if let Some(asked) = args.from_seq {
        anyhow::ensure!(
            asked == from_seq,
            "--from-seq {asked}: the saved audit goes on from IM_CONV seq {from_seq}"
        );
    }
    // Every pass reads the same range: up to the last event now.
    let held = js.get_stream(stream).await?.info().await?.state.clone();
    let bounds = Bounds {
        from_seq,
        to_seq: held.last_sequence,
        ..Default::default()
    };
    let passes = match (&args.conv, args.passes) {
        (Some(_), _) => 1,
        (None, Some(n)) => n,
        (None, None) => passes_for(held.subjects_count, held.messages, args.memory_mb),
    };
    if passes > 1 {
        eprintln!(
            "verify: {passes} passes over the stream, each auditing a share of the conversations"
        );
    }
    let mut writer = args.state.as_deref().map(StateWriter::create).transpose()?;
    let mut violations = Violations::new(args.json);
    let (mut run, mut report) = (Run::default(), None);
    let started = Instant::now();
    for index in 0..passes {
        let pass = Pass { index, of: passes };
        let mut auditor = match &saved {
            Some((file, _)) => Auditor::restore(file.read(Some(pass))?, keys.clone())?.0,
            None => Auditor::with_keys(keys.clone()),
        };
        let reader = Reader::open(&js, stream, filters.clone(), &bounds).await?;
        let (seen, learned) = check_pass(
            reader,
            (keys, bucket.clone()),
            &mut auditor,
            pass,
            &mut violations,
        )
        .await?;
        keys = learned;
        let (part, unfinished) = auditor.finish_all();
        unfinished.into_iter().for_each(|v| violations.add(v));
        if index == 0 {
            run = seen;
        }
        report = Some(audit::Report::merged(report, part));
        if let Some(w) = writer.as_mut().filter(|_| violations.count == 0) {
            w.conversations(&auditor)?;
        }
    }
    let report = report.expect("at least one pass");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "verify: {} events in {secs:.1} s ({:.0} events/s)",
        report.events,
        report.events as f64 / secs.max(1e-9)
    );
    if violations.count > 0 {
        return violations.end();
    }
    let saved_digest = match (writer, &args.state) {
        (Some(w), Some(path)) => Some(save(w, path, &position, &report, &run)?),
        _ => None,
    };
    print_report(
        args.json,
        (stream, run.first, run.last),
        &report,
        saved_digest,
    );
    Ok(())
}

/// The state after this run, made durable over the last one; its digest
/// and position.
fn save(
    writer: StateWriter,
    path: &std::path::Path,
    before: &state::Position,
    report: &audit::Report,
    run: &Run,
) -> anyhow::Result<(String, state::Position)> {
    let at = match run.last {
        0 => before.clone(),
        last => before.after(report, last, run.last_hash),
    };
    let digest = writer
        .finish(&at)
        .with_context(|| format!("saving {}", path.display()))?;
    eprintln!(
        "verify: audit state saved to {} up to IM_CONV seq {} (digest {digest})",
        path.display(),
        at.last_seq
    );
    Ok((digest, at))
}

/// Violations printed at most, one line each; past it they are counted.
/// A forger can publish any number: the report must stay readable.
pub const VIOLATIONS_PRINTED_MAX: u64 = 1_000;

/// The violations found so far: the first ones printed as they come.
struct Violations {
    json: bool,
    count: u64,
    listed: Vec<serde_json::Value>,
}

impl Violations {
    fn new(json: bool) -> Self {
        Violations {
            json,
            count: 0,
            listed: Vec::new(),
        }
    }

    fn add(&mut self, v: audit::Violation) {
        self.count += 1;
        if self.count > VIOLATIONS_PRINTED_MAX {
            return;
        }
        match self.json {
            true => self.listed.push(violation_json(&v)),
            false => println!("VIOLATION {v}"),
        }
    }

    /// The summary, and the exit that says a problem was found.
    fn end(self) -> anyhow::Result<()> {
        if self.json {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_follow_what_the_conversations_hold() {
        // The bench's 5M log: 5,000 conversations of 1,000 events.
        assert_eq!(passes_for(5_000, 5_000_000, 256), 4);
        assert_eq!(passes_for(1_000, 1_000_000, 256), 1);
        // 100k direct conversations of 3 events: small states.
        assert_eq!(passes_for(100_000, 300_000, 256), 2);
        assert_eq!(passes_for(0, 0, 256), 1);
        // Past the most passes, the most.
        assert_eq!(passes_for(10_000_000, 10_000_000_000, 1), PASSES_MAX);
        assert_eq!(passes_for(5_000, 5_000_000, u64::MAX), 1);
    }
}
