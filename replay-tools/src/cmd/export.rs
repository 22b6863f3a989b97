//! `im-replay export`: decoded events with their stream, sequence, store
//! time, subject and headers, as JSON lines or CSV on stdout (progress on
//! stderr). Filters combine (all must match).

use std::io::Write;
use std::sync::Arc;

use futures::StreamExt;

use im_schema::v1::{self, conv_event::Kind};
use serde_json::json;

use crate::read::{Bounds, Raw, Reader};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamChoice {
    Conv,
    Rcpt,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Which stream(s); `all` writes IM_CONV's events, then IM_RCPT's.
    #[arg(long, value_enum, default_value = "all")]
    pub stream: StreamChoice,
    /// One conversation's events.
    #[arg(long)]
    pub conv: Option<String>,
    /// Events by the user (actor, or receipt owner) or naming them (added,
    /// removed, muted, ...).
    #[arg(long)]
    pub user: Option<String>,
    /// Stored at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Stored at or before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// First stream sequence (of the one stream chosen with --stream).
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Last stream sequence (of the one stream chosen with --stream).
    #[arg(long)]
    pub to_seq: Option<u64>,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    #[command(flatten)]
    pub nats: super::Connection,
    /// The deployment's key-encryption key: content is shown opened where
    /// its key exists (docs/privacy.md). Without it content shows sealed.
    #[command(flatten)]
    pub kek: im_streams::content::KekArgs,
}

/// Whether a conversation event is by or about `user`.
fn conv_event_names(ev: &v1::ConvEvent, user: &str) -> bool {
    if ev.actor == user {
        return true;
    }
    match &ev.kind {
        Some(Kind::Created(c)) => c.members.iter().any(|m| m.user_id == user),
        Some(Kind::MemberAdded(x)) => x.user_id == user,
        Some(Kind::MembersAdded(x)) => x.members.iter().any(|m| m.user_id == user),
        Some(Kind::MemberRemoved(x)) => x.user_id == user,
        Some(Kind::RoleChanged(x)) => x.user_id == user,
        Some(Kind::OwnershipTransferred(x)) => x.user_id == user,
        Some(Kind::Muted(x)) => x.user_id == user,
        Some(Kind::Unmuted(x)) => x.user_id == user,
        Some(Kind::Blacklisted(x)) => x.user_id == user,
        Some(Kind::Unblacklisted(x)) => x.user_id == user,
        Some(Kind::ContactRequested(x)) => x.user_id == user,
        Some(Kind::ContactAccepted(x)) => x.user_id == user,
        Some(Kind::ContactDeclined(x)) => x.user_id == user,
        Some(Kind::ContactRemoved(x)) => x.user_id == user,
        Some(Kind::UserBlocked(x)) => x.user_id == user,
        Some(Kind::UserUnblocked(x)) => x.user_id == user,
        _ => false,
    }
}

/// One exported row: the decoded event and the columns CSV shows.
struct Row {
    conversation_id: String,
    conv_seq: Option<u64>,
    actor: String,
    event_type: String,
    client_msg_id: String,
    event: serde_json::Value,
}

/// What an auditor is shown of an event's sealed content: always the
/// ciphertext's digest and key; `opened` (the content put back in the
/// event), `erased` (its key is gone), `unreadable` (its key does not open
/// it) or `sealed` (no KEK given). The ciphertext itself is left out.
async fn open_for_export(
    keys: Option<&im_streams::content::ContentKeys>,
    ev: &mut v1::ConvEvent,
) -> anyhow::Result<Option<serde_json::Value>> {
    use sha2::Digest as _;
    let Some(kind) = ev.kind.as_ref() else {
        return Ok(None);
    };
    let Some(sealed) = im_streams::content::sealed_of(kind).cloned() else {
        return Ok(None);
    };
    let digest = hex::encode(sha2::Sha256::digest(&sealed.ciphertext));
    let state = match keys {
        None => "sealed",
        Some(keys) => {
            im_streams::content::open_event(keys, ev).await?;
            match ev.kind.as_ref().and_then(im_streams::content::sealed_of) {
                None => "opened",
                Some(s) if s.state() == v1::SealedState::Erased => "erased",
                Some(_) => "unreadable",
            }
        }
    };
    let slot = ev.kind.as_mut().and_then(im_streams::content::sealed_slot);
    if let Some(Some(s)) = slot {
        s.nonce.clear();
        s.ciphertext.clear();
    }
    Ok(Some(json!({
        "state": state,
        "ciphertextSha256": digest,
        "epoch": sealed.epoch,
        "keyRev": sealed.key_rev,
    })))
}

async fn decode(
    raw: &Raw,
    keys: Option<&im_streams::content::ContentKeys>,
) -> anyhow::Result<Result<(Row, Option<v1::ConvEvent>), String>> {
    let as_json = |text: String| serde_json::from_str(&text).map_err(|e| e.to_string());
    if raw.stream == im_streams::definitions::CONV_STREAM {
        let ev: v1::ConvEvent = match im_schema::decode(&raw.payload) {
            Ok(ev) => ev,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let mut shown = ev.clone();
        let content = open_for_export(keys, &mut shown).await?;
        let mut event: serde_json::Value = match as_json(im_schema::to_json(&shown)) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(content) = content {
            event["content"] = content;
        }
        let row = Row {
            conversation_id: ev.conversation_id.clone(),
            conv_seq: Some(ev.conv_seq),
            actor: ev.actor.clone(),
            event_type: im_streams::conversation::event_type(&ev).to_string(),
            client_msg_id: ev.client_msg_id.clone(),
            event,
        };
        Ok(Ok((row, Some(ev))))
    } else {
        let ev: v1::ReceiptEvent = match im_schema::decode(&raw.payload) {
            Ok(ev) => ev,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let event_type = match ev.kind {
            Some(v1::receipt_event::Kind::Delivered(_)) => "delivered",
            Some(v1::receipt_event::Kind::Read(_)) => "read",
            None => "unknown",
        };
        let row = Row {
            conversation_id: ev.conversation_id.clone(),
            conv_seq: None,
            actor: ev.user_id.clone(),
            event_type: event_type.into(),
            client_msg_id: String::new(),
            event: match as_json(im_schema::to_json(&ev)) {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            },
        };
        Ok(Ok((row, None)))
    }
}

/// The CSV columns, in order.
const CSV_HEADER: [&str; 10] = [
    "stream",
    "seq",
    "time",
    "subject",
    "conversation_id",
    "conv_seq",
    "actor",
    "event_type",
    "client_msg_id",
    "event",
];

/// Appends one row, as a JSON line or a CSV record, to `out`.
fn write_row(format: Format, out: &mut Vec<u8>, raw: &Raw, row: Row) -> anyhow::Result<()> {
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record([
                raw.stream.clone(),
                raw.seq.to_string(),
                super::format_time(raw.time),
                raw.subject.clone(),
                row.conversation_id,
                row.conv_seq.map(|s| s.to_string()).unwrap_or_default(),
                row.actor,
                row.event_type,
                row.client_msg_id,
                row.event.to_string(),
            ])?;
            w.flush()?;
        }
        Format::Jsonl => {
            let headers: serde_json::Map<String, serde_json::Value> = raw
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let line = json!({
                "stream": raw.stream,
                "seq": raw.seq,
                "time": super::format_time(raw.time),
                "subject": raw.subject,
                "headers": headers,
                "event": row.event,
            });
            serde_json::to_writer(&mut *out, &line)?;
            out.push(b'\n');
        }
    }
    Ok(())
}

/// Events formatted per task: enough to spread over the cores, few
/// enough that the chunks in flight stay small (~1 MB each read, a few
/// MB written).
pub const FORMAT_CHUNK: usize = 1_024;

/// What every chunk is formatted with.
struct Formatting {
    format: Format,
    until: Option<time::OffsetDateTime>,
    user: Option<String>,
    keys: Option<Arc<im_streams::content::ContentKeys>>,
}

/// A chunk's rows, ready to write in stream order, and what did not
/// decode.
struct Formatted {
    bytes: Vec<u8>,
    written: u64,
    undecodable: Vec<String>,
}

/// Formats a chunk of events (on any worker: chunks run side by side).
async fn format_chunk(chunk: Vec<Raw>, with: Arc<Formatting>) -> anyhow::Result<Formatted> {
    let mut out = Formatted {
        bytes: Vec::with_capacity(chunk.len() * 512),
        written: 0,
        undecodable: Vec::new(),
    };
    for raw in &chunk {
        if with.until.is_some_and(|u| raw.time > u) {
            continue;
        }
        let (row, conv_event) = match decode(raw, with.keys.as_deref()).await? {
            Ok(r) => r,
            Err(e) => {
                let what = format!(
                    "export: {} seq {} does not decode: {e}",
                    raw.stream, raw.seq
                );
                out.undecodable.push(what);
                continue;
            }
        };
        if about(with.user.as_ref(), &row, conv_event.as_ref()) {
            out.written += 1;
            write_row(with.format, &mut out.bytes, raw, row)?;
        }
    }
    Ok(out)
}

/// Whether a decoded row is about `user` (when the export is limited to
/// one): an event naming them, or a receipt of theirs.
fn about(user: Option<&String>, row: &Row, event: Option<&v1::ConvEvent>) -> bool {
    let Some(user) = user else { return true };
    match event {
        Some(ev) => conv_event_names(ev, user),
        None => row.actor == *user,
    }
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    run_to(args, std::io::stdout()).await
}

/// `run`, writing the rows to `to`.
pub async fn run_to(args: ExportArgs, to: impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.stream != StreamChoice::All || (args.from_seq.is_none() && args.to_seq.is_none()),
        "--from-seq/--to-seq need --stream conv or --stream rcpt: each stream numbers its own messages"
    );
    if let Some(conv) = &args.conv {
        im_streams::ids::validate_id(im_streams::ids::IdKind::Conversation, conv)?;
    }
    if let Some(user) = &args.user {
        im_streams::ids::validate_id(im_streams::ids::IdKind::User, user)?;
    }
    let since = args.since.as_deref().map(super::parse_time).transpose()?;
    let until = args.until.as_deref().map(super::parse_time).transpose()?;
    let js = args.nats.connect().await?;
    let topology = im_streams::definitions::read_topology(&js).await?;
    let keys = match args.kek.load()? {
        Some(kek) => {
            im_streams::content::ContentKeys::open_unwatched(&js, Some(kek), Default::default())
                .await?
        }
        None => None,
    };
    let mut streams = Vec::new();
    if args.stream != StreamChoice::Rcpt {
        streams.push(im_streams::definitions::CONV_STREAM);
    }
    if args.stream != StreamChoice::Conv {
        streams.push(im_streams::definitions::RCPT_STREAM);
    }
    let bounds = Bounds {
        from_seq: args.from_seq.unwrap_or(0),
        to_seq: args.to_seq.unwrap_or(0),
        since,
    };
    let mut out = std::io::BufWriter::new(to);
    if args.format == Format::Csv {
        let mut w = csv::Writer::from_writer(&mut out);
        w.write_record(CSV_HEADER)?;
        w.flush()?;
    }
    let with = Arc::new(Formatting {
        format: args.format,
        until,
        user: args.user.clone(),
        keys,
    });
    let bar = super::progress_bar("export");
    let started = std::time::Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut pending = futures::stream::FuturesOrdered::new();
    let (mut read, mut written) = (0u64, 0u64);
    for stream in streams {
        let filters = match &args.conv {
            Some(conv) if stream == im_streams::definitions::CONV_STREAM => {
                vec![topology.conv_subject(conv)?]
            }
            Some(conv) => vec![topology.rcpt_subject(conv)?],
            None => Vec::new(),
        };
        let mut reader = Reader::open(&js, stream, filters, &bounds).await?;
        bar.set_length(bar.position() + reader.remaining);
        loop {
            let mut chunk = Vec::with_capacity(FORMAT_CHUNK);
            while chunk.len() < FORMAT_CHUNK {
                let Some(raw) = reader.next().await? else {
                    break;
                };
                chunk.push(raw);
            }
            if chunk.is_empty() {
                break;
            }
            read += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
            pending.push_back(tokio::spawn(format_chunk(chunk, with.clone())));
            // One chunk per core formats while the next is read.
            while pending.len() > cores {
                written += write_formatted(&mut out, &bar, pending.next().await)?;
            }
        }
    }
    while !pending.is_empty() {
        written += write_formatted(&mut out, &bar, pending.next().await)?;
    }
    out.flush()?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "export: {written} of {read} events read in {secs:.1} s ({:.0} events/s)",
        read as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Writes a formatted chunk (the next in stream order); its rows.
fn write_formatted(
    out: &mut impl Write,
    bar: &indicatif::ProgressBar,
    done: Option<Result<anyhow::Result<Formatted>, tokio::task::JoinError>>,
) -> anyhow::Result<u64> {
    let formatted = done.expect("a chunk is pending")??;
    for what in &formatted.undecodable {
        bar.suspend(|| eprintln!("{what}"));
    }
    out.write_all(&formatted.bytes)?;
    Ok(formatted.written)
}
