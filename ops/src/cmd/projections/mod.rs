//! `imctl projections ...`: one file per subcommand; the requests they
//! share are here.

use std::time::Duration;

use anyhow::Context;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};

pub mod dead_letters;
pub mod moving;
pub mod partitions;
pub mod rebuild;
pub mod repair;
pub mod status;
pub mod verify;

pub use dead_letters::{dead_letters, DeadLettersArgs};
pub use moving::{move_partition, MoveArgs};
pub use rebuild::{rebuild, RebuildArgs};
pub use repair::{repair, RepairArgs};
pub use status::{status, StatusArgs};
pub use verify::{verify, VerifyArgs};

/// How long one projector may take to answer a status or control query.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a digest may take: it reads every entry of a keyspace (about
/// 10 s per million entries here), so far longer than an answer.
pub(crate) const DIGEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends a query to one projector instance (its own subject, not a
/// partition's) and returns its answer; a query error is an error.
pub(crate) async fn ask_instance(
    client: &async_nats::Client,
    instance: &str,
    query: Query,
    timeout: Duration,
) -> anyhow::Result<R> {
    let req = v1::QueryRequest {
        query: Some(query),
        ..Default::default()
    };
    let request = async_nats::Request::new()
        .payload(im_schema::encode(&req).into())
        .timeout(Some(timeout));
    let reply = match client
        .send_request(im_projectors::query::instance_subject(instance), request)
        .await
    {
        Ok(reply) => reply,
        Err(e) => {
            let answering = match status::answering(client).await {
                Ok(names) if names.is_empty() => "no instance answers".to_string(),
                Ok(names) => format!("instances answering: {}", names.join(", ")),
                Err(_) => "no partition answers".to_string(),
            };
            return Err(e)
                .with_context(|| format!("instance {instance} did not answer ({answering})"));
        }
    };
    match im_schema::decode::<v1::QueryResponse>(&reply.payload)?.result {
        Some(R::Error(e)) => anyhow::bail!("instance {instance}: {}", e.message),
        Some(r) => Ok(r),
        None => anyhow::bail!("instance {instance}: an empty answer"),
    }
}

/// The projection names an argument pair selects: one, or all.
pub(crate) fn selected(name: &Option<String>, all: bool) -> anyhow::Result<Vec<String>> {
    match (name, all) {
        (Some(_), true) => anyhow::bail!("give a projection name or --all, not both"),
        (Some(n), false) if im_projectors::projections::NAMES.contains(&n.as_str()) => {
            Ok(vec![n.clone()])
        }
        (Some(n), false) => anyhow::bail!(
            "no projection {n:?}; one of {:?}",
            im_projectors::projections::NAMES
        ),
        (None, _) => Ok(im_projectors::projections::NAMES
            .iter()
            .map(|s| s.to_string())
            .collect()),
    }
}

/// A key as text: ids and tags as they are, separators as `/`, other bytes
/// (sequences) as `\xNN`.
pub fn printable_key(key: &[u8]) -> String {
    let mut out = String::new();
    for &b in key {
        match b {
            0 => out.push('/'),
            b'!'..=b'~' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// An instance's status with the digests of `projections` (all when
/// empty).
pub(crate) async fn instance_status(
    client: &async_nats::Client,
    instance: &str,
    projections: &[String],
) -> anyhow::Result<v1::StatusResult> {
    let query = Query::Status(v1::StatusQuery {
        digests: true,
        projections: projections.to_vec(),
    });
    match ask_instance(client, instance, query, DIGEST_TIMEOUT).await? {
        R::Status(s) => Ok(s),
        other => anyhow::bail!("instance {instance}: {other:?}"),
    }
}
