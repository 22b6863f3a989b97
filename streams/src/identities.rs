//! One NATS identity per component, each allowed the subjects its code
//! uses and nothing more (ARCHITECTURE.md, "Trust boundaries"). The server's
//! `authorization` block is rendered from here (`imctl nats-config`, `imctl
//! up`, the tests' secured stacks), so the permissions follow the subject
//! registry (`subjects.rs`) instead of drifting from it.
//!
//! What no identity may do: delete or purge a stream (I10). What only the
//! operator may do: create or change streams, create durable consumers
//! other than the projector's, write into the streams around the writers
//! (`im-replay restore`, I24).

use crate::content::CONTENT_KEYS_BUCKET;
use crate::definitions::{
    CONV_STREAM, LAST_SEEN_BUCKET, MEDIA_PENDING_BUCKET, MEDIA_QUOTA_BUCKET, MEDIA_STREAM,
    PARTITION_LEASES_BUCKET, PRESENCE_BUCKET, RCPT_STREAM,
};
use crate::signing::WRITER_KEYS_BUCKET;

/// The components that connect to NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Validates and appends commands, reads the log, fans out deliveries.
    Gateway,
    /// Folds the streams into read models, answers queries, publishes
    /// deliveries.
    Projector,
    /// `imctl`: sets up the streams, asks projectors for status, rebuilds,
    /// restores.
    Operator,
    /// `im-replay`: reads the streams, writes nothing.
    Auditor,
    /// `im-notifier`: folds the streams into its own read models, reads
    /// presence, ends the push registrations a push gateway refuses.
    Notifier,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Gateway,
        Component::Projector,
        Component::Operator,
        Component::Auditor,
        Component::Notifier,
    ];

    /// The user name the server knows the component by.
    pub fn user(self) -> &'static str {
        match self {
            Component::Gateway => "im-gateway",
            Component::Projector => "im-projector",
            Component::Operator => "im-operator",
            Component::Auditor => "im-auditor",
            Component::Notifier => "im-notifier",
        }
    }

    /// The environment variable the shipped server config reads the
    /// component's password from.
    pub fn password_env(self) -> &'static str {
        match self {
            Component::Gateway => "IM_NATS_GATEWAY_PASSWORD",
            Component::Projector => "IM_NATS_PROJECTOR_PASSWORD",
            Component::Operator => "IM_NATS_OPERATOR_PASSWORD",
            Component::Auditor => "IM_NATS_AUDITOR_PASSWORD",
            Component::Notifier => "IM_NATS_NOTIFIER_PASSWORD",
        }
    }

    pub fn permissions(self) -> Permissions {
        match self {
            Component::Gateway => gateway(),
            Component::Projector => projector(),
            Component::Operator => operator(),
            Component::Auditor => auditor(),
            Component::Notifier => notifier(),
        }
    }
}

/// Subject permissions as nats-server takes them; a deny wins over an
/// allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe: Vec<String>,
    pub subscribe_deny: Vec<String>,
    /// May answer the requests it receives (their reply subjects only).
    /// Never set: nats-server lets a client publish to the reply subject
    /// of any message it received, including one it sent itself with a
    /// reply of its choosing, which walks around every deny (a gateway
    /// could delete a stream). Answers go to `_INBOX.>` instead.
    pub allow_responses: bool,
}

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Reading a stream by message: its info, a stored message, direct gets.
fn reads(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
    ]
}

/// Ephemeral consumers of a stream, to read it: created with no name in
/// the subject, or with one (`CONSUMER.CREATE.<stream>.<name>[.<filter>]`),
/// which is how an ordered consumer is made again after a disruption (a
/// reconnect, a leader change: the presence watch, async-nats) and how a
/// standard client makes a pull consumer (nats-py). The server cannot tell
/// a named ephemeral from a durable by its subject, so an identity with
/// these may leave a consumer behind; it can read nothing more for it.
fn ephemeral_reads(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
    ]
}

/// A key-value bucket's reads and writes.
fn bucket(name: &str) -> Vec<String> {
    let mut v = reads(&format!("KV_{name}"));
    v.push(format!("$KV.{name}.>"));
    v
}

/// No one deletes or purges a stream, or a message of the log (I10).
fn never() -> Vec<String> {
    let mut v = list(&["$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>"]);
    for stream in [CONV_STREAM, RCPT_STREAM, MEDIA_STREAM] {
        v.push(format!("$JS.API.STREAM.MSG.DELETE.{stream}"));
    }
    v
}

/// No one but the operator deletes a message anywhere: the operator
/// destroys content keys (erasure, retention; I37).
fn never_deletes() -> Vec<String> {
    let mut v = never();
    v.push("$JS.API.STREAM.MSG.DELETE.>".into());
    v
}

/// Reading the content keys and watching the bucket's notices (erasures,
/// the policy), as every component that opens content does.
fn content_keys_reads() -> Vec<String> {
    let stream = format!("KV_{CONTENT_KEYS_BUCKET}");
    let mut v = reads(&stream);
    v.extend(ephemeral_reads(&stream));
    v.push(format!("$JS.FC.{stream}.>"));
    v
}

/// What only the operator writes in the content keys bucket: a writer
/// makes data keys and epoch marks, never a notice, the policy or the
/// KEK's check.
fn content_keys_operator_only() -> Vec<String> {
    ["erased.>", "policy", "kek-check"]
        .iter()
        .map(|k| format!("$KV.{CONTENT_KEYS_BUCKET}.{k}"))
        .collect()
}

fn gateway() -> Permissions {
    let mut publish = list(&[
        "im.conv.>",
        "im.rcpt.>",
        "im.media.>",
        "im.q.*",
        "im.writer.*",
        // Answers to forwarded commands.
        "_INBOX.>",
        // Ephemeral notices (typing); events come from the projector only.
        "im.deliver.*.t",
        "$JS.API.INFO",
    ]);
    for stream in [CONV_STREAM, RCPT_STREAM, MEDIA_STREAM] {
        publish.extend(reads(stream));
    }
    publish.extend(ephemeral_reads(MEDIA_STREAM));
    publish.extend(bucket(MEDIA_QUOTA_BUCKET));
    publish.extend(bucket(MEDIA_PENDING_BUCKET));
    publish.extend(bucket(PRESENCE_BUCKET));
    publish.extend(bucket(LAST_SEEN_BUCKET));
    // The writers' public keys, read only: a writer checks the events
    // other writers appended (`validity.rs`).
    publish.extend(reads(&format!("KV_{WRITER_KEYS_BUCKET}")));
    // Content keys: made on first use, read, their notices watched.
    publish.extend(content_keys_reads());
    publish.push(format!("$KV.{CONTENT_KEYS_BUCKET}.>"));
    // Watching presence: an ordered consumer, with its flow control.
    let presence = format!("KV_{PRESENCE_BUCKET}");
    publish.extend(ephemeral_reads(&presence));
    publish.push(format!("$JS.FC.{presence}.>"));
    let mut publish_deny = list(&["im.deliver.*.e", "im.group.>", "im.projector.>"]);
    publish_deny.extend(content_keys_operator_only());
    publish_deny.extend(never_deletes());
    Permissions {
        publish,
        publish_deny,
        subscribe: list(&[
            "im.deliver.*.*",
            "im.group.*",
            "im.writer.*",
            "im.projector.*.alive",
            "_INBOX.>",
        ]),
        subscribe_deny: Vec::new(),
        allow_responses: false,
    }
}

fn projector() -> Permissions {
    // Answers to queries go to the asker's inbox.
    let mut publish = list(&[
        "im.deliver.*.e",
        "im.group.*",
        "im.projector.*.alive",
        "$JS.API.INFO",
        "_INBOX.>",
    ]);
    // The writers' public keys, read only: the judge checks signatures.
    publish.extend(reads(&format!("KV_{WRITER_KEYS_BUCKET}")));
    // Content keys, read only: deliveries and answers are opened.
    publish.extend(content_keys_reads());
    // Partition leases: claimed, renewed and watched (`lease.rs`).
    publish.extend(bucket(PARTITION_LEASES_BUCKET));
    let leases = format!("KV_{PARTITION_LEASES_BUCKET}");
    publish.extend(ephemeral_reads(&leases));
    publish.push(format!("$JS.FC.{leases}.>"));
    for stream in [CONV_STREAM, RCPT_STREAM] {
        publish.extend(reads(stream));
        publish.extend(ephemeral_reads(stream));
        // Its durable consumers (named `<instance>_<tag>`) and their acks.
        publish.push(format!("$JS.ACK.{stream}.>"));
    }
    let mut publish_deny = list(&["im.conv.>", "im.rcpt.>", "im.media.>", "im.writer.>"]);
    publish_deny.push(format!("$KV.{CONTENT_KEYS_BUCKET}.>"));
    publish_deny.extend(never_deletes());
    Permissions {
        publish,
        publish_deny,
        subscribe: list(&["im.q.*", "im.projector.*.q", "_INBOX.>"]),
        subscribe_deny: Vec::new(),
        allow_responses: false,
    }
}

fn notifier() -> Permissions {
    let mut publish = list(&[
        // Ending a refused registration: an append to the user's log (the
        // rules let it write nothing a user could not), and the writer's
        // questions (`dedupe`, snapshots) and forwarding.
        "im.conv.>",
        "im.q.*",
        "im.writer.*",
        // Its projector's heartbeat (no partitions: it serves no client).
        "im.projector.*.alive",
        "$JS.API.INFO",
        "_INBOX.>",
    ]);
    publish.extend(reads(&format!("KV_{WRITER_KEYS_BUCKET}")));
    // Content keys, read only: names and previews are opened.
    publish.extend(content_keys_reads());
    for stream in [CONV_STREAM, RCPT_STREAM] {
        publish.extend(reads(stream));
        publish.extend(ephemeral_reads(stream));
        publish.push(format!("$JS.ACK.{stream}.>"));
    }
    // Presence, read only: who had a device connected; `im_presence`
    // watched (an ordered consumer, with its flow control).
    for b in [PRESENCE_BUCKET, LAST_SEEN_BUCKET] {
        publish.extend(reads(&format!("KV_{b}")));
    }
    let presence = format!("KV_{PRESENCE_BUCKET}");
    publish.extend(ephemeral_reads(&presence));
    publish.push(format!("$JS.FC.{presence}.>"));
    let mut publish_deny = list(&["im.rcpt.>", "im.media.>", "im.deliver.>", "im.group.>"]);
    publish_deny.push(format!("$KV.{CONTENT_KEYS_BUCKET}.>"));
    publish_deny.extend(never_deletes());
    Permissions {
        publish,
        publish_deny,
        subscribe: list(&[
            "im.writer.*",
            "im.notify.*.q",
            "im.projector.*.q",
            "_INBOX.>",
        ]),
        subscribe_deny: Vec::new(),
        allow_responses: false,
    }
}

fn operator() -> Permissions {
    Permissions {
        publish: list(&[
            "$JS.API.>",
            "$KV.>",
            "im.q.*",
            "im.projector.*.q",
            // `imctl notify dead-letters`.
            "im.notify.*.q",
            // `imctl projections verify` runs a scratch projector (its own
            // control subject only: `Serves::OwnerOnly`).
            "im.projector.*.alive",
            "$JS.ACK.>",
            "_INBOX.>",
            // `imctl erase` appends the erasure as a writer would.
            "im.writer.*",
            // `im-replay restore`, into streams it creates (I24).
            "im.conv.>",
            "im.rcpt.>",
            "im.media.>",
        ]),
        publish_deny: never(),
        subscribe: list(&[
            "_INBOX.>",
            "im.projector.*.alive",
            "im.projector.*.q",
            "im.writer.*",
        ]),
        subscribe_deny: list(&["im.q.*"]),
        allow_responses: false,
    }
}

fn auditor() -> Permissions {
    let mut publish = list(&[
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
    ]);
    // The writers' public keys, read to check signatures.
    let keys = format!("KV_{}", crate::signing::WRITER_KEYS_BUCKET);
    publish.extend(reads(&keys));
    // Content keys, read only (no watch): an auditor given the KEK opens
    // content.
    publish.extend(reads(&format!("KV_{CONTENT_KEYS_BUCKET}")));
    for stream in [CONV_STREAM, RCPT_STREAM, MEDIA_STREAM] {
        publish.extend(reads(stream));
        publish.extend(ephemeral_reads(stream));
    }
    let mut publish_deny = list(&["im.>", "$KV.>", "$JS.API.CONSUMER.DURABLE.>"]);
    publish_deny.extend(never_deletes());
    Permissions {
        publish,
        publish_deny,
        subscribe: list(&["_INBOX.>"]),
        subscribe_deny: Vec::new(),
        allow_responses: false,
    }
}

/// How a user's password appears in the server config.
#[derive(Clone, Debug)]
pub enum Secret {
    /// Written into the file (a generated config in a private data dir).
    Inline(String),
    /// Read by the server from this environment variable.
    Env(&'static str),
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's `authorization` block: every component as a user with
/// its permissions. Connections without a user are refused.
pub fn authorization_block(users: &[(Component, Secret)]) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    for (component, secret) in users {
        let p = component.permissions();
        let password = match secret {
            Secret::Inline(s) => format!("\"{s}\""),
            Secret::Env(var) => format!("${var}"),
        };
        out.push_str(&format!(
            "    {{\n      user: \"{user}\"\n      password: {password}\n      permissions: {{\n        \
             publish: {{ allow: [{pa}], deny: [{pd}] }}\n        \
             subscribe: {{ allow: [{sa}], deny: [{sd}] }}\n        \
             allow_responses: {ar}\n      }}\n    }}\n",
            user = component.user(),
            pa = quoted(&p.publish),
            pd = quoted(&p.publish_deny),
            sa = quoted(&p.subscribe),
            sd = quoted(&p.subscribe_deny),
            ar = p.allow_responses,
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_identity_may_delete_or_purge_and_only_writers_append() {
        for c in Component::ALL {
            let p = c.permissions();
            assert!(
                !p.allow_responses,
                "{c:?}: a reply subject walks around denies"
            );
            for d in never() {
                assert!(p.publish_deny.contains(&d), "{c:?} {d}");
            }
            // Only the operator deletes a message (a content key).
            let deletes = !p
                .publish_deny
                .iter()
                .any(|d| d == "$JS.API.STREAM.MSG.DELETE.>");
            assert_eq!(deletes, c == Component::Operator, "{c:?}");
            let appends = p.publish.iter().any(|s| s == "im.conv.>");
            assert_eq!(
                appends,
                matches!(
                    c,
                    Component::Gateway | Component::Operator | Component::Notifier
                ),
                "{c:?}"
            );
        }
        // The auditor reads through ephemeral consumers (named ones too, as
        // standard clients make them), never the durable API.
        let auditor = Component::Auditor.permissions();
        assert!(auditor.publish.iter().all(|s| s.starts_with("$JS.API.")));
        assert!(!auditor.publish.iter().any(|s| s.contains("DURABLE")));
        assert!(auditor
            .publish_deny
            .iter()
            .any(|s| s.contains("CONSUMER.DURABLE")));
    }

    #[test]
    fn the_block_names_every_user_and_reads_env_secrets() {
        let block = authorization_block(&[
            (Component::Gateway, Secret::Inline("pw".into())),
            (Component::Auditor, Secret::Env("IM_NATS_AUDITOR_PASSWORD")),
        ]);
        assert!(block.contains("user: \"im-gateway\"\n      password: \"pw\""));
        assert!(block.contains("password: $IM_NATS_AUDITOR_PASSWORD"));
        assert!(block.contains("allow_responses: false"));
    }
}
