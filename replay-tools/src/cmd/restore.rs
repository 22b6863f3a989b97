//! `im-replay restore --from s3://bucket/prefix`: loads archived segments
//! into fresh streams (absent on the target server), at their original
//! sequences, checking each segment's sha256 and digest first and each
//! message's acknowledged sequence after. `verify` on the restored stream
//! then gives the archive's digest.

use std::collections::VecDeque;

use bytes::Buf;
use prost::Message as _;

use crate::audit::RangeDigest;
use crate::objects::{Location, Objects, S3Args};

/// Publishes awaiting their acknowledgement at once: enough to keep the
/// server busy, few enough that a failure stops the restore promptly.
pub const RESTORE_INFLIGHT_MAX: usize = 256;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Where the archive is: s3://bucket/prefix.
    #[arg(long)]
    pub from: String,
    /// The first sequence the archive holds (where its first segment
    /// starts).
    #[arg(long, default_value_t = 1)]
    pub from_seq: u64,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub nats: super::Connection,
}

/// Headers the server acted on at the original append; replayed, they
/// would deduplicate or refuse what is being restored.
fn replayable(name: &str) -> bool {
    !(name.eq_ignore_ascii_case("Nats-Msg-Id")
        || name.to_ascii_lowercase().starts_with("nats-expected-"))
}

fn decode_segment(mut bytes: bytes::Bytes) -> anyhow::Result<Vec<im_schema::v1::ArchivedMessage>> {
    let mut out = Vec::new();
    while bytes.has_remaining() {
        out.push(im_schema::v1::ArchivedMessage::decode_length_delimited(
            &mut bytes,
        )?);
    }
    Ok(out)
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let at: Location = args.from.parse()?;
    let js = args.nats.connect().await?;
    let objects = Objects::open(&args.s3, &at.bucket).await?;
    let mut restored_any = false;
    for stream in super::archive::Streams::All.names() {
        let manifests = manifests_of(&objects, &at, stream, args.from_seq).await?;
        let Some(first) = manifests.first() else {
            continue;
        };
        anyhow::ensure!(
            js.get_stream(stream).await.is_err(),
            "{stream} exists on the target: restore goes into a fresh stream"
        );
        let settings = im_streams::definitions::StreamSettings {
            partitions: first.partitions,
            ..Default::default()
        };
        let mut config = settings
            .definitions()
            .into_iter()
            .find(|c| c.name == stream)
            .expect("every stream has a definition");
        config.first_sequence = Some(first.first_seq);
        js.create_stream(config).await?;
        for m in &manifests {
            let messages = checked_segment(&objects, m).await?;
            publish_in_order(&js, stream, messages).await?;
            println!(
                "restored {stream} {}-{}: {} messages, digest {}",
                m.first_seq, m.last_seq, m.messages, m.range_digest
            );
        }
        restored_any = true;
    }
    anyhow::ensure!(restored_any, "no archive under {}", args.from);
    Ok(())
}

/// A stream's segment manifests from `from_seq` on, in order: each names
/// where the next one starts.
async fn manifests_of(
    objects: &Objects,
    at: &Location,
    stream: &str,
    from_seq: u64,
) -> anyhow::Result<Vec<im_schema::v1::ArchiveManifest>> {
    let mut manifests = Vec::new();
    let mut next = from_seq;
    loop {
        let (_, key) = super::archive::segment_keys(at, stream, next);
        let Some(text) = objects.get_if_present(&key).await? else {
            return Ok(manifests);
        };
        let m: im_schema::v1::ArchiveManifest = im_schema::from_json(std::str::from_utf8(&text)?)
            .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        anyhow::ensure!(
            m.format <= super::archive::ARCHIVE_FORMAT,
            "{key}: archive format {} is newer than this tool's",
            m.format
        );
        anyhow::ensure!(
            m.stream == stream && m.first_seq == next && m.last_seq >= next,
            "{key}: the manifest describes {} {}-{}",
            m.stream,
            m.first_seq,
            m.last_seq
        );
        next = m.last_seq + 1;
        manifests.push(m);
    }
}

/// A segment's messages, once its bytes, sequences and digest match its
/// manifest.
async fn checked_segment(
    objects: &Objects,
    m: &im_schema::v1::ArchiveManifest,
) -> anyhow::Result<Vec<im_schema::v1::ArchivedMessage>> {
    use sha2::Digest as _;
    let bytes = objects.get(&m.segment_key).await?;
    anyhow::ensure!(
        hex::encode(sha2::Sha256::digest(&bytes)) == m.segment_sha256,
        "{}: the segment's sha256 differs from its manifest's",
        m.segment_key
    );
    let messages = decode_segment(bytes)?;
    let mut digest = RangeDigest::default();
    for (i, msg) in messages.iter().enumerate() {
        anyhow::ensure!(
            msg.stream_seq == m.first_seq + i as u64,
            "{}: sequence {} is not {}: the range has a gap a restore cannot reproduce",
            m.segment_key,
            msg.stream_seq,
            m.first_seq + i as u64
        );
        digest.add(msg.stream_seq, &msg.subject, &msg.payload);
    }
    anyhow::ensure!(
        messages.len() as u64 == m.messages && digest.hex() == m.range_digest,
        "{}: its messages do not match the manifest's count and digest",
        m.segment_key
    );
    Ok(messages)
}

/// Publishes a segment's messages in order, `RESTORE_INFLIGHT_MAX` acks
/// outstanding at most, each landing at its archived sequence.
async fn publish_in_order(
    js: &async_nats::jetstream::Context,
    stream: &str,
    messages: Vec<im_schema::v1::ArchivedMessage>,
) -> anyhow::Result<()> {
    let mut inflight = VecDeque::new();
    for msg in messages {
        let mut headers = async_nats::HeaderMap::new();
        for h in msg.headers.iter().filter(|h| replayable(&h.name)) {
            headers.append(h.name.as_str(), h.value.as_str());
        }
        let ack = js
            .publish_with_headers(msg.subject, headers, msg.payload.into())
            .await?;
        inflight.push_back((msg.stream_seq, ack));
        if inflight.len() >= RESTORE_INFLIGHT_MAX {
            check_ack(stream, inflight.pop_front()).await?;
        }
    }
    while !inflight.is_empty() {
        check_ack(stream, inflight.pop_front()).await?;
    }
    Ok(())
}

async fn check_ack(
    stream: &str,
    next: Option<(u64, async_nats::jetstream::context::PublishAckFuture)>,
) -> anyhow::Result<()> {
    let Some((want, ack)) = next else {
        return Ok(());
    };
    let got = ack.await?.sequence;
    anyhow::ensure!(
        got == want,
        "{stream}: restored message {want} landed at {got}"
    );
    Ok(())
}
