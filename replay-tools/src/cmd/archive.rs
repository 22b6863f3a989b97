//! `im-replay archive --to s3://bucket/prefix [--from-seq N]`: copies a
//! stream range to object storage as segments (the messages exactly as
//! stored) each with a manifest beside it (range, count, digest, the
//! segment's sha256). A manifest is written after its segment, so one that
//! exists describes a complete segment. Segments are named by their first
//! sequence, so a reader finds each next one from the last one's manifest
//! without listing the bucket.

use prost::Message as _;

use crate::audit::RangeDigest;
use crate::objects::{Location, Objects, S3Args};
use crate::read::{Bounds, Raw, Reader};

/// The archive format this tool writes and the newest it reads.
pub const ARCHIVE_FORMAT: u32 = 1;

/// A segment is cut at this size: it is built in memory before upload, and
/// this keeps the tool's memory flat however long the range.
pub const SEGMENT_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Streams {
    Conv,
    Rcpt,
    Media,
    All,
}

impl Streams {
    pub fn names(self) -> Vec<&'static str> {
        let (conv, rcpt, media) = (
            im_streams::definitions::CONV_STREAM,
            im_streams::definitions::RCPT_STREAM,
            im_streams::definitions::MEDIA_STREAM,
        );
        match self {
            Streams::Conv => vec![conv],
            Streams::Rcpt => vec![rcpt],
            Streams::Media => vec![media],
            Streams::All => vec![conv, rcpt, media],
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    /// Where: s3://bucket/prefix.
    #[arg(long)]
    pub to: String,
    #[arg(long, value_enum, default_value = "all")]
    pub stream: Streams,
    /// First stream sequence to archive (0 = the stream's first).
    #[arg(long, default_value_t = 0)]
    pub from_seq: u64,
    /// Last stream sequence (0 = the stream's last when the run began).
    #[arg(long, default_value_t = 0)]
    pub to_seq: u64,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub nats: super::Connection,
}

/// The object keys of the segment starting at `first`, and its manifest.
pub fn segment_keys(at: &Location, stream: &str, first: u64) -> (String, String) {
    let base = at.key(&format!("{stream}/{first:020}"));
    (format!("{base}.seg"), format!("{base}.manifest.json"))
}

fn archived(raw: &Raw) -> im_schema::v1::ArchivedMessage {
    im_schema::v1::ArchivedMessage {
        stream_seq: raw.seq,
        subject: raw.subject.clone(),
        headers: raw
            .headers
            .iter()
            .map(|(name, value)| im_schema::v1::ArchivedHeader {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        payload: raw.payload.to_vec(),
        time_ns: raw.time.unix_timestamp_nanos() as i64,
    }
}

struct Segment {
    bytes: Vec<u8>,
    first: u64,
    last: u64,
    messages: u64,
    digest: RangeDigest,
}

impl Segment {
    fn new() -> Self {
        Segment {
            bytes: Vec::new(),
            first: 0,
            last: 0,
            messages: 0,
            digest: RangeDigest::default(),
        }
    }

    fn add(&mut self, raw: &Raw) {
        if self.messages == 0 {
            self.first = raw.seq;
        }
        self.last = raw.seq;
        self.messages += 1;
        self.digest.add(raw.seq, &raw.subject, &raw.payload);
        archived(raw)
            .encode_length_delimited(&mut self.bytes)
            .expect("a Vec grows");
    }

    async fn upload(
        self,
        objects: &Objects,
        at: &Location,
        stream: &str,
        partitions: u32,
    ) -> anyhow::Result<im_schema::v1::ArchiveManifest> {
        use sha2::Digest as _;
        let (seg_key, manifest_key) = segment_keys(at, stream, self.first);
        let manifest = im_schema::v1::ArchiveManifest {
            format: ARCHIVE_FORMAT,
            stream: stream.to_string(),
            partitions,
            first_seq: self.first,
            last_seq: self.last,
            messages: self.messages,
            range_digest: self.digest.hex(),
            segment_sha256: hex::encode(sha2::Sha256::digest(&self.bytes)),
            segment_key: seg_key.clone(),
            created_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        };
        objects.put(&seg_key, self.bytes).await?;
        objects
            .put(&manifest_key, im_schema::to_json(&manifest).into_bytes())
            .await?;
        Ok(manifest)
    }
}

pub async fn run(args: ArchiveArgs) -> anyhow::Result<()> {
    let at: Location = args.to.parse()?;
    let js = args.nats.connect().await?;
    let partitions = im_streams::definitions::read_topology(&js)
        .await?
        .partitions;
    let objects = Objects::open(&args.s3, &at.bucket).await?;
    let bounds = Bounds {
        from_seq: args.from_seq,
        to_seq: args.to_seq,
        since: None,
    };
    let bar = super::progress_bar("archive");
    for stream in args.stream.names() {
        let mut reader = Reader::open(&js, stream, Vec::new(), &bounds).await?;
        bar.set_length(bar.position() + reader.remaining);
        let mut segment = Segment::new();
        let mut manifests = Vec::new();
        while let Some(raw) = reader.next().await? {
            segment.add(&raw);
            bar.inc(1);
            if segment.bytes.len() >= SEGMENT_BYTES_MAX {
                let full = std::mem::replace(&mut segment, Segment::new());
                manifests.push(full.upload(&objects, &at, stream, partitions).await?);
            }
        }
        if segment.messages > 0 {
            manifests.push(segment.upload(&objects, &at, stream, partitions).await?);
        }
        bar.suspend(|| {
            for m in &manifests {
                println!(
                    "archived {} {}-{}: {} messages, digest {} -> s3://{}/{}",
                    m.stream,
                    m.first_seq,
                    m.last_seq,
                    m.messages,
                    m.range_digest,
                    at.bucket,
                    m.segment_key
                );
            }
            if manifests.is_empty() {
                println!("archived {stream}: nothing in range");
            }
        });
    }
    bar.finish_and_clear();
    Ok(())
}
