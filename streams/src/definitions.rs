//! Stream definitions, applied idempotently: create if missing, update what
//! can change in place, refuse what cannot, never delete data.

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};
use serde::{Deserialize, Serialize};

use crate::error::{OrUnavailable, StreamsError};
use crate::subjects::{Topology, DEFAULT_PARTITIONS, PARTITIONS_MAX};

pub const CONV_STREAM: &str = "IM_CONV";
pub const RCPT_STREAM: &str = "IM_RCPT";
pub const MEDIA_STREAM: &str = "IM_MEDIA";

/// Stream metadata key recording P, fixed when IM_CONV is created.
pub const META_PARTITIONS: &str = "im.partitions";
/// Stream metadata key recording the schema version that created the stream.
pub const META_SCHEMA: &str = "im.schema";

/// Operator-tunable stream settings. The defaults suit one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// 1 on a single server; 3 in a cluster (a write is acked once a
    /// majority stored it, so one node can be lost without losing acks).
    pub replicas: usize,
    /// Longer than any client's retry horizon (reconnect + resend takes
    /// seconds), short enough that the server's msg-id table stays small.
    /// Retries after it are answered by the dedupe projection.
    pub duplicate_window_ms: u64,
    /// Largest event: a 16 KiB text plus headers, meta and a media ref fit
    /// with room; anything near this is a bug or an attack.
    pub max_msg_bytes: i32,
    /// Total bytes per stream; -1 = unlimited. The log is the database, so the
    /// default never discards: when a limit is set, new writes are refused
    /// (discard new) rather than old history dropped.
    pub max_bytes: i64,
    /// P for a new IM_CONV. Ignored for an existing stream: P is whatever its
    /// metadata records, since changing it would move every conversation.
    pub partitions: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            replicas: 1,
            duplicate_window_ms: 120_000,
            max_msg_bytes: 64 * 1024,
            max_bytes: -1,
            partitions: DEFAULT_PARTITIONS,
        }
    }
}

impl StreamSettings {
    pub fn validate(&self) -> Result<(), StreamsError> {
        let bad = |m: String| Err(StreamsError::Config(m));
        if !(1..=5).contains(&self.replicas) {
            return bad(format!("replicas must be 1..=5, got {}", self.replicas));
        }
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return bad(format!(
                "partitions must be 1..={PARTITIONS_MAX}, got {}",
                self.partitions
            ));
        }
        if self.duplicate_window_ms < 1_000 {
            return bad("duplicate_window_ms must be at least 1000".into());
        }
        if self.max_msg_bytes < 4 * 1024 {
            return bad("max_msg_bytes must be at least 4096".into());
        }
        Ok(())
    }

    fn config(&self, name: &str, subjects: &str, description: &str) -> Config {
        let mut metadata = HashMap::new();
        metadata.insert(
            META_SCHEMA.to_string(),
            im_schema::SCHEMA_VERSION.to_string(),
        );
        if name == CONV_STREAM {
            metadata.insert(META_PARTITIONS.to_string(), self.partitions.to_string());
        }
        Config {
            name: name.to_string(),
            description: Some(description.to_string()),
            subjects: vec![subjects.to_string()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: Duration::from_millis(self.duplicate_window_ms),
            max_message_size: self.max_msg_bytes,
            max_bytes: self.max_bytes,
            discard: DiscardPolicy::New,
            // Auditors must be able to trust the log: nothing is removed.
            deny_delete: true,
            deny_purge: true,
            // Writers read a subject's tail with direct gets.
            allow_direct: true,
            metadata,
            ..Default::default()
        }
    }

    /// The definitions of every stream the system uses.
    pub fn definitions(&self) -> Vec<Config> {
        vec![
            self.config(
                CONV_STREAM,
                crate::subjects::CONV_ALL,
                "conversation events, one subject per conversation",
            ),
            self.config(
                RCPT_STREAM,
                crate::subjects::RCPT_ALL,
                "delivery and read cursors, one subject per conversation",
            ),
            self.config(
                MEDIA_STREAM,
                crate::subjects::MEDIA_ALL,
                "media uploads and where they were sent",
            ),
        ]
    }
}

/// Per user and UTC day, the bytes of media accepted (compare-and-set
/// counters).
pub const MEDIA_QUOTA_BUCKET: &str = "im_media_quota";
/// Presigned uploads waiting for their completion.
pub const MEDIA_PENDING_BUCKET: &str = "im_media_pending";

/// The writers' public keys (`signing.rs`): kept for good, every event
/// from a key's registration on is checked against it.
pub const WRITER_KEYS_BUCKET: &str = crate::signing::WRITER_KEYS_BUCKET;

/// Who is online: a key per user, `{gateway id: last refresh ms}`, kept by
/// the gateways the user is connected to. Never in the log (ephemeral).
pub const PRESENCE_BUCKET: &str = "im_presence";
/// When each user was last connected, kept past the presence entry.
pub const LAST_SEEN_BUCKET: &str = "im_last_seen";
/// How long a presence entry lives unrefreshed: a gateway refreshes its
/// users every third of it, so a crashed gateway's users are offline
/// within this (the server's expiry writes a marker that every gateway's
/// watch sees, and they push "offline"). Short enough for a chat's "online"
/// dot; three refreshes per window ride out one late one.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);

/// Who owns each partition of the projectors' pool, and who is in the
/// pool (`im-projectors`' `lease.rs`): every write a compare-and-set on
/// the key's revision, liveness judged by whether revisions move, so no
/// server-side expiry (which would lose the positions an owner claimed).
pub const PARTITION_LEASES_BUCKET: &str = "im_partition_leases";

/// The key-value buckets the system uses, with the same replicas as the
/// streams: a bucket on one node would make uploads fail (and a gateway
/// starting then stall) while that node is down.
pub fn bucket_definitions(replicas: usize) -> Vec<jetstream::kv::Config> {
    [MEDIA_QUOTA_BUCKET, MEDIA_PENDING_BUCKET]
        .into_iter()
        .map(|name| jetstream::kv::Config {
            bucket: name.to_string(),
            history: 1,
            // A day's counters and pending uploads are small and short-lived.
            max_age: Duration::from_secs(2 * 86_400),
            num_replicas: replicas,
            ..Default::default()
        })
        .chain(std::iter::once(jetstream::kv::Config {
            bucket: WRITER_KEYS_BUCKET.to_string(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        }))
        .chain(std::iter::once(jetstream::kv::Config {
            bucket: PRESENCE_BUCKET.to_string(),
            history: 1,
            max_age: PRESENCE_TTL,
            // An entry aging out leaves a delete marker (for this long), so
            // watchers learn of a crashed gateway's users going offline.
            limit_markers: Some(PRESENCE_TTL),
            num_replicas: replicas,
            ..Default::default()
        }))
        .chain(std::iter::once(jetstream::kv::Config {
            bucket: PARTITION_LEASES_BUCKET.to_string(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        }))
        .chain(std::iter::once(jetstream::kv::Config {
            bucket: LAST_SEEN_BUCKET.to_string(),
            history: 1,
            // "Last seen" older than a year says little; the bucket stays
            // bounded by the users active within it.
            max_age: Duration::from_secs(365 * 86_400),
            num_replicas: replicas,
            ..Default::default()
        }))
        .collect()
}

/// Creates a missing bucket; gives an existing one the replicas wanted.
async fn apply_bucket(
    js: &jetstream::Context,
    desired: jetstream::kv::Config,
) -> Result<StreamReport, StreamsError> {
    let stream_name = format!("KV_{}", desired.bucket);
    match js.get_stream(&stream_name).await {
        Ok(mut stream) => {
            let info = stream.info().await.or_unavailable("stream setup")?;
            let mut changes = Vec::new();
            if info.config.num_replicas != desired.num_replicas {
                changes.push(format!(
                    "num_replicas: {} -> {}",
                    info.config.num_replicas, desired.num_replicas
                ));
                let mut next = info.config.clone();
                next.num_replicas = desired.num_replicas;
                js.update_stream(&next)
                    .await
                    .or_unavailable("stream setup")?;
            }
            Ok(StreamReport {
                name: stream_name,
                created: false,
                changes,
            })
        }
        Err(e) if is_not_found(&e) => {
            js.create_key_value(desired)
                .await
                .or_unavailable("stream setup")?;
            Ok(StreamReport {
                name: stream_name,
                created: true,
                changes: Vec::new(),
            })
        }
        Err(e) => Err(StreamsError::unavailable("stream setup", e)),
    }
}

/// A bucket, created (with IM_CONV's replicas) if a deployment older than
/// `apply_streams`'s buckets lacks it.
pub async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
) -> Result<jetstream::kv::Store, StreamsError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let mut conv = js
        .get_stream(CONV_STREAM)
        .await
        .or_unavailable("stream setup")?;
    let replicas = conv
        .info()
        .await
        .or_unavailable("stream setup")?
        .config
        .num_replicas;
    let desired = bucket_definitions(replicas)
        .into_iter()
        .find(|b| b.bucket == name)
        .ok_or_else(|| StreamsError::Config(format!("no bucket {name} is defined")))?;
    apply_bucket(js, desired).await?;
    js.get_key_value(name).await.or_unavailable("stream setup")
}

/// What applying one stream definition did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamReport {
    pub name: String,
    pub created: bool,
    /// Human-readable `field: old -> new` lines for fields updated in place.
    pub changes: Vec<String>,
}

/// The result of applying every definition.
#[derive(Clone, Debug)]
pub struct Applied {
    pub topology: Topology,
    pub reports: Vec<StreamReport>,
}

fn diff(current: &Config, desired: &Config) -> Result<(Config, Vec<String>), StreamsError> {
    let refuse = |field: &str, from: String, to: String| {
        Err(StreamsError::IncompatibleStream {
            stream: current.name.clone(),
            field: field.to_string(),
            detail: format!("{from} -> {to} cannot change in place"),
        })
    };
    if current.storage != desired.storage {
        return refuse(
            "storage",
            format!("{:?}", current.storage),
            format!("{:?}", desired.storage),
        );
    }
    if current.retention != desired.retention {
        return refuse(
            "retention",
            format!("{:?}", current.retention),
            format!("{:?}", desired.retention),
        );
    }
    if current.subjects != desired.subjects {
        return refuse(
            "subjects",
            format!("{:?}", current.subjects),
            format!("{:?}", desired.subjects),
        );
    }
    let mut next = current.clone();
    let mut changes = Vec::new();
    macro_rules! field {
        ($f:ident) => {
            if current.$f != desired.$f {
                changes.push(format!(
                    "{}: {:?} -> {:?}",
                    stringify!($f),
                    current.$f,
                    desired.$f
                ));
                next.$f = desired.$f.clone();
            }
        };
    }
    field!(description);
    field!(num_replicas);
    field!(duplicate_window);
    field!(max_message_size);
    field!(max_bytes);
    field!(discard);
    field!(allow_direct);
    field!(deny_delete);
    field!(deny_purge);
    // The partition count of an existing stream is never changed.
    let mut metadata = desired.metadata.clone();
    if let Some(p) = current.metadata.get(META_PARTITIONS) {
        metadata.insert(META_PARTITIONS.to_string(), p.clone());
    }
    for (k, v) in &metadata {
        if current.metadata.get(k) != Some(v) {
            changes.push(format!(
                "metadata.{k}: {:?} -> {v:?}",
                current.metadata.get(k)
            ));
        }
    }
    next.metadata = metadata;
    Ok((next, changes))
}

fn topology_of(config: &Config) -> Result<Topology, StreamsError> {
    let p = config
        .metadata
        .get(META_PARTITIONS)
        .ok_or_else(|| StreamsError::Config(format!("{} has no {META_PARTITIONS}", config.name)))?;
    let p: u32 = p
        .parse()
        .ok()
        .filter(|p| (1..=PARTITIONS_MAX).contains(p))
        .ok_or_else(|| StreamsError::Config(format!("{META_PARTITIONS} is {p:?}")))?;
    Ok(Topology::new(p))
}

/// Creates missing streams and updates compatible changes. Never deletes.
/// Returns the partition topology recorded in IM_CONV.
pub async fn apply_streams(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Applied, StreamsError> {
    settings.validate()?;
    let mut reports = Vec::new();
    let mut topology = None;
    for desired in settings.definitions() {
        let (config, report) = match js.get_stream(&desired.name).await {
            Ok(mut stream) => {
                let info = stream.info().await.or_unavailable("stream setup")?;
                let (next, changes) = diff(&info.config, &desired)?;
                let config = if changes.is_empty() {
                    info.config.clone()
                } else {
                    js.update_stream(&next)
                        .await
                        .map_err(|e| StreamsError::IncompatibleStream {
                            stream: desired.name.clone(),
                            field: "update".into(),
                            detail: e.to_string(),
                        })?
                        .config
                };
                let report = StreamReport {
                    name: desired.name.clone(),
                    created: false,
                    changes,
                };
                (config, report)
            }
            Err(e) if is_not_found(&e) => {
                let mut stream = js
                    .create_stream(desired.clone())
                    .await
                    .or_unavailable("stream setup")?;
                let info = stream.info().await.or_unavailable("stream setup")?;
                let report = StreamReport {
                    name: desired.name.clone(),
                    created: true,
                    changes: Vec::new(),
                };
                (info.config.clone(), report)
            }
            Err(e) => return Err(StreamsError::unavailable("stream setup", e)),
        };
        if config.name == CONV_STREAM {
            topology = Some(topology_of(&config)?);
        }
        reports.push(report);
    }
    for bucket in bucket_definitions(settings.replicas) {
        reports.push(apply_bucket(js, bucket).await?);
    }
    Ok(Applied {
        topology: topology.expect("IM_CONV is among the definitions"),
        reports,
    })
}

/// Reads the topology of an existing IM_CONV without changing anything.
pub async fn read_topology(js: &jetstream::Context) -> Result<Topology, StreamsError> {
    let mut stream = js
        .get_stream(CONV_STREAM)
        .await
        .or_unavailable("stream setup")?;
    let info = stream.info().await.or_unavailable("stream setup")?;
    topology_of(&info.config)
}

pub(crate) fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}
