//! Subjects and partitioning.
//!
//! `partition = xxh3_64_with_seed(conv_id, PARTITION_HASH_SEED) mod P`: a fixed
//! algorithm and seed (never std's randomized hasher), so every process and
//! every replay agrees. P is fixed when IM_CONV is created and recorded in its
//! metadata (`im.partitions`); processes read it from there.

use crate::ids::{validate_id, IdError, IdKind};

pub use im_rules::ids::{direct_conversation_id, DIRECT_PREFIX};

/// Seed of the partition hash. Changing it moves every conversation: never.
pub const PARTITION_HASH_SEED: u64 = 0x1A5E_ED00_C0DE_0001;

/// Default partition count: enough for a handful of projector instances to
/// split the work, few enough that each partition's consumer stays busy.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// Upper bound on P: partitions are a subject token and a consumer each.
pub const PARTITIONS_MAX: u32 = 1024;

/// The partition layout in force, as read from the stream's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub partitions: u32,
}

impl Topology {
    pub fn new(partitions: u32) -> Self {
        assert!(
            (1..=PARTITIONS_MAX).contains(&partitions),
            "partitions must be 1..={PARTITIONS_MAX}"
        );
        Topology { partitions }
    }

    /// The partition a conversation belongs to.
    pub fn partition_of(&self, conv_id: &str) -> u32 {
        (xxhash_rust::xxh3::xxh3_64_with_seed(conv_id.as_bytes(), PARTITION_HASH_SEED)
            % u64::from(self.partitions)) as u32
    }

    /// `im.conv.<p>.<conv_id>`: every event of one conversation.
    pub fn conv_subject(&self, conv_id: &str) -> Result<String, IdError> {
        validate_id(IdKind::Conversation, conv_id)?;
        Ok(format!("im.conv.{}.{conv_id}", self.partition_of(conv_id)))
    }

    /// `im.rcpt.<p>.<conv_id>`: delivery and read cursors of one conversation.
    pub fn rcpt_subject(&self, conv_id: &str) -> Result<String, IdError> {
        validate_id(IdKind::Conversation, conv_id)?;
        Ok(format!("im.rcpt.{}.{conv_id}", self.partition_of(conv_id)))
    }

    /// `im.conv.<p>.*`: one partition's conversations (a consumer filter).
    pub fn conv_partition_filter(&self, partition: u32) -> String {
        format!("im.conv.{partition}.*")
    }

    /// `im.rcpt.<p>.*`.
    pub fn rcpt_partition_filter(&self, partition: u32) -> String {
        format!("im.rcpt.{partition}.*")
    }
}

/// What reaches a user through `im.deliver.<user_id>.<kind>` (core NATS):
/// one subscription per user (`deliveries_of`) takes both kinds, and each
/// kind has its own publisher, so NATS permissions keep them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    /// `e`: a committed event, from the projector (I12).
    Event,
    /// `t`: an ephemeral notice (typing), from a gateway; never in the log.
    Notice,
}

impl DeliveryKind {
    fn token(self) -> &'static str {
        match self {
            DeliveryKind::Event => "e",
            DeliveryKind::Notice => "t",
        }
    }
}

/// `im.deliver.<user_id>.e`: an event for the user.
pub fn deliver_subject(user_id: &str) -> Result<String, IdError> {
    kind_subject(user_id, DeliveryKind::Event)
}

/// `im.deliver.<user_id>.t`: an ephemeral notice for the user.
pub fn notice_subject(user_id: &str) -> Result<String, IdError> {
    kind_subject(user_id, DeliveryKind::Notice)
}

fn kind_subject(user_id: &str, kind: DeliveryKind) -> Result<String, IdError> {
    validate_id(IdKind::User, user_id)?;
    Ok(format!("im.deliver.{user_id}.{}", kind.token()))
}

/// `im.deliver.<user_id>.*`: everything for the user (a gateway's
/// subscription).
pub fn deliveries_of(user_id: &str) -> Result<String, IdError> {
    validate_id(IdKind::User, user_id)?;
    Ok(format!("im.deliver.{user_id}.*"))
}

/// The user and kind of a delivery subject (the inverse of
/// `deliver_subject` and `notice_subject`).
pub fn user_of_deliver_subject(subject: &str) -> Option<(&str, DeliveryKind)> {
    let (user, kind) = subject.strip_prefix("im.deliver.")?.rsplit_once('.')?;
    let kind = match kind {
        "e" => DeliveryKind::Event,
        "t" => DeliveryKind::Notice,
        _ => return None,
    };
    validate_id(IdKind::User, user).ok()?;
    Some((user, kind))
}

/// `im.group.<conv_id>`: a large group's deliveries, published once by the
/// projector; gateways subscribe while one of their users is a connected
/// member (never `im.deliver.*`, whose user ids share the charset).
pub fn group_subject(conv_id: &str) -> Result<String, IdError> {
    validate_id(IdKind::Conversation, conv_id)?;
    Ok(format!("im.group.{conv_id}"))
}

/// The conversation of a group subject (the inverse of `group_subject`).
pub fn conv_of_group_subject(subject: &str) -> Option<&str> {
    let conv = subject.strip_prefix("im.group.")?;
    validate_id(IdKind::Conversation, conv).ok()?;
    Some(conv)
}

/// `im.q.<partition>`: the projectors' queries about that partition's
/// conversations (request/reply, queue group `im-projectors`).
pub fn query_subject(partition: u32) -> String {
    format!("im.q.{partition}")
}

/// The partition a query subject is about (the inverse of `query_subject`).
pub fn partition_of_query_subject(subject: &str) -> Option<u32> {
    subject.strip_prefix("im.q.")?.parse().ok()
}

/// `im.projector.<instance>.q`: queries for one projector instance (status,
/// digests, rebuilds, repairs).
pub fn projector_query_subject(instance: &str) -> String {
    format!("im.projector.{instance}.q")
}

/// `im.writer.<writer_id>`: where a writer takes forwarded commands.
pub fn writer_subject(writer_id: &str) -> String {
    format!("im.writer.{writer_id}")
}

/// `im.media.up.<media_id>`: the one record of an upload.
pub fn media_uploaded_subject(media_id: &str) -> Result<String, IdError> {
    validate_id(IdKind::ClientMsg, media_id)?;
    Ok(format!("im.media.up.{media_id}"))
}

/// `im.media.sent.<media_id>`: a message that carries the media.
pub fn media_sent_subject(media_id: &str) -> Result<String, IdError> {
    validate_id(IdKind::ClientMsg, media_id)?;
    Ok(format!("im.media.sent.{media_id}"))
}

/// Every conversation event (`im.conv.<p>.<conv>`), every receipt, every
/// media record: the streams' subjects.
pub const CONV_ALL: &str = "im.conv.>";
pub const RCPT_ALL: &str = "im.rcpt.>";
pub const MEDIA_ALL: &str = "im.media.>";

/// `im.projector.<instance>.alive`: a projector instance's heartbeat.
pub fn projector_alive_subject(instance: &str) -> Result<String, IdError> {
    validate_id(IdKind::Device, instance)?;
    Ok(format!("im.projector.{instance}.alive"))
}

/// Every projector instance's heartbeat.
pub const PROJECTOR_ALIVE_ALL: &str = "im.projector.*.alive";

/// The conversation id named by a subject `im.conv.<p>.<conv_id>` (or rcpt).
pub fn conv_id_of_subject(subject: &str) -> Option<&str> {
    let mut parts = subject.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("im"), Some("conv" | "rcpt"), Some(_), Some(id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_stable_across_builds() {
        // Golden values: if these change, every stored conversation moved.
        let t = Topology::new(16);
        let got: Vec<u32> = ["general", "dm_abc", "c1", "c2"]
            .iter()
            .map(|c| t.partition_of(c))
            .collect();
        assert_eq!(got, GOLDEN_PARTITIONS);
    }
    const GOLDEN_PARTITIONS: [u32; 4] = [0, 5, 3, 0];

    #[test]
    fn partitions_spread() {
        let t = Topology::new(16);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[t.partition_of(&format!("conv-{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn subjects_refuse_bad_ids() {
        let t = Topology::new(16);
        assert!(t.conv_subject("a.b").is_err());
        assert!(t.rcpt_subject(">").is_err());
        assert!(deliver_subject("*").is_err());
        let d = deliver_subject("alice").unwrap();
        assert_eq!(
            user_of_deliver_subject(&d),
            Some(("alice", DeliveryKind::Event))
        );
        let n = notice_subject("alice").unwrap();
        assert_eq!(
            user_of_deliver_subject(&n),
            Some(("alice", DeliveryKind::Notice))
        );
        assert_eq!(user_of_deliver_subject("im.deliver.a.b"), None);
        assert_eq!(user_of_deliver_subject("im.deliver.a"), None);
        assert_eq!(user_of_deliver_subject("im.deliver.a.b.e"), None);
        let s = t.conv_subject("general").unwrap();
        assert!(s.starts_with("im.conv.") && s.ends_with(".general"));
        assert_eq!(conv_id_of_subject(&s), Some("general"));
    }

    /// The subjects are a wire contract (clients of NATS, permissions):
    /// every one the system uses, as it is spelled.
    #[test]
    fn every_subject_golden() {
        let t = Topology::new(16);
        assert_eq!(t.conv_subject("general").unwrap(), "im.conv.0.general");
        assert_eq!(t.rcpt_subject("general").unwrap(), "im.rcpt.0.general");
        assert_eq!(t.conv_partition_filter(3), "im.conv.3.*");
        assert_eq!(t.rcpt_partition_filter(3), "im.rcpt.3.*");
        assert_eq!(deliver_subject("ann").unwrap(), "im.deliver.ann.e");
        assert_eq!(notice_subject("ann").unwrap(), "im.deliver.ann.t");
        assert_eq!(deliveries_of("ann").unwrap(), "im.deliver.ann.*");
        assert_eq!(query_subject(7), "im.q.7");
        assert_eq!(partition_of_query_subject("im.q.7"), Some(7));
        assert_eq!(partition_of_query_subject("im.q.x"), None);
        assert_eq!(projector_query_subject("main"), "im.projector.main.q");
        assert_eq!(
            projector_alive_subject("main").unwrap(),
            "im.projector.main.alive"
        );
        assert_eq!(PROJECTOR_ALIVE_ALL, "im.projector.*.alive");
        assert_eq!(writer_subject("w1"), "im.writer.w1");
        assert_eq!(media_uploaded_subject("m1").unwrap(), "im.media.up.m1");
        assert_eq!(media_sent_subject("m1").unwrap(), "im.media.sent.m1");
        assert!(media_sent_subject("m.1").is_err());
        assert_eq!(
            (CONV_ALL, RCPT_ALL, MEDIA_ALL),
            ("im.conv.>", "im.rcpt.>", "im.media.>")
        );
    }
}
