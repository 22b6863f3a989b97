//! `imctl projections status`: every projector instance that answers for a
//! partition, and per projection its checkpoint, the stream's last sequence,
//! lag, apply rate (two samples `--interval-ms` apart), digest and dead
//! letters.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, env = crate::cmd::up::ENV_NATS_URL, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[arg(long)]
    pub json: bool,
    /// Time between the two samples the apply rate is measured over.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
}

#[derive(Serialize)]
struct Row {
    instance: String,
    projection: String,
    checkpoint: u64,
    stream_last_seq: u64,
    lag: u64,
    events_per_s: f64,
    digest: String,
    keys: u64,
    dead_letters: u64,
}

/// How long one partition's projector may take to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// instance -> its status, from every partition's answer.
async fn sample(
    client: &async_nats::Client,
    partitions: u32,
) -> anyhow::Result<BTreeMap<String, v1::StatusResult>> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let req = v1::QueryRequest {
            query: Some(Query::Status(v1::StatusQuery {})),
            ..Default::default()
        };
        let reply = tokio::time::timeout(
            STATUS_TIMEOUT,
            client.request(format!("im.q.{p}"), im_schema::encode(&req).into()),
        )
        .await
        .with_context(|| format!("partition {p}: no projector answered"))?
        .with_context(|| format!("partition {p}: no projector answered"))?;
        let resp: v1::QueryResponse = im_schema::decode(&reply.payload)?;
        if let Some(R::Status(s)) = resp.result {
            out.insert(s.instance.clone(), s);
        }
    }
    Ok(out)
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = async_nats::connect(&args.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let first = sample(&client, topology.partitions).await?;
    tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    let second = sample(&client, topology.partitions).await?;
    let last = js
        .get_stream(im_streams::definitions::CONV_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let secs = args.interval_ms.max(1) as f64 / 1000.0;
    let mut rows = Vec::new();
    for (instance, st) in &second {
        for p in &st.projections {
            let before = first
                .get(instance)
                .and_then(|s| s.projections.iter().find(|q| q.name == p.name))
                .map_or(p.applied, |q| q.applied);
            rows.push(Row {
                instance: instance.clone(),
                projection: p.name.clone(),
                checkpoint: p.conv_checkpoint,
                stream_last_seq: last,
                lag: last.saturating_sub(p.conv_checkpoint),
                events_per_s: p.applied.saturating_sub(before) as f64 / secs,
                digest: p.digest.clone(),
                keys: p.keys,
                dead_letters: p.dead_letters,
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<10} {:>12} {:>12} {:>8} {:>10} {:>8} {:<16}",
        "INSTANCE", "PROJECTION", "CHECKPOINT", "STREAM_LAST", "LAG", "EVENTS/S", "DEAD", "DIGEST"
    );
    for r in rows {
        println!(
            "{:<12} {:<10} {:>12} {:>12} {:>8} {:>10.0} {:>8} {:<16}",
            r.instance,
            r.projection,
            r.checkpoint,
            r.stream_last_seq,
            r.lag,
            r.events_per_s,
            r.dead_letters,
            &r.digest[..16.min(r.digest.len())]
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// One projection to verify; all when absent (or with --all).
    pub name: Option<String>,
    #[arg(long)]
    pub all: bool,
    #[arg(long, env = crate::cmd::up::ENV_NATS_URL, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The live projector instance to check.
    #[arg(long, default_value = "local")]
    pub instance: String,
    /// How long the scratch rebuild may take to reach the live checkpoints.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
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

async fn instance_status(
    client: &async_nats::Client,
    instance: &str,
) -> anyhow::Result<v1::StatusResult> {
    let req = v1::QueryRequest {
        query: Some(Query::Status(v1::StatusQuery {})),
        ..Default::default()
    };
    let reply = tokio::time::timeout(
        STATUS_TIMEOUT,
        client.request(
            format!("im.projector.{instance}.q"),
            im_schema::encode(&req).into(),
        ),
    )
    .await
    .with_context(|| format!("instance {instance} did not answer"))??;
    match im_schema::decode::<v1::QueryResponse>(&reply.payload)?.result {
        Some(R::Status(s)) => Ok(s),
        other => anyhow::bail!("instance {instance}: {other:?}"),
    }
}

/// The first key where the live store and the rebuild differ.
async fn first_difference(
    client: &async_nats::Client,
    instance: &str,
    name: &str,
    scratch: &dyn im_projectors::store::Keyspace,
) -> anyhow::Result<Option<Vec<u8>>> {
    let (mut after_live, mut after_scratch) = (Vec::new(), Vec::new());
    let (mut live, mut mine): (Vec<v1::KeyHash>, Vec<v1::KeyHash>) = (Vec::new(), Vec::new());
    let (mut live_done, mut scratch_done) = (false, false);
    // Bounded by the stores' sizes: each round consumes at least one key.
    loop {
        if live.is_empty() && !live_done {
            let req = v1::QueryRequest {
                query: Some(Query::Keys(v1::KeysQuery {
                    projection: name.into(),
                    after: after_live.clone(),
                    limit: 1_000,
                })),
                ..Default::default()
            };
            let reply = client
                .request(
                    format!("im.projector.{instance}.q"),
                    im_schema::encode(&req).into(),
                )
                .await?;
            match im_schema::decode::<v1::QueryResponse>(&reply.payload)?.result {
                Some(R::Keys(k)) => {
                    live_done = k.entries.is_empty();
                    live = k.entries;
                    live.reverse();
                }
                other => anyhow::bail!("keys of {name}: {other:?}"),
            }
        }
        if mine.is_empty() && !scratch_done {
            let k = im_projectors::query::key_hashes(scratch, &after_scratch, 1_000)?;
            scratch_done = k.entries.is_empty();
            mine = k.entries;
            mine.reverse();
        }
        match (live.last(), mine.last()) {
            (None, None) => return Ok(None),
            (Some(a), None) => return Ok(Some(a.key.clone())),
            (None, Some(b)) => return Ok(Some(b.key.clone())),
            (Some(a), Some(b)) => {
                if a.key != b.key {
                    return Ok(Some(a.key.clone().min(b.key.clone())));
                }
                if a.value_hash != b.value_hash {
                    return Ok(Some(a.key.clone()));
                }
                after_live = a.key.clone();
                after_scratch = b.key.clone();
                live.pop();
                mine.pop();
            }
        }
    }
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let client = async_nats::connect(&args.nats_url).await?;
    let names: Vec<String> = match (&args.name, args.all) {
        (Some(n), false) if im_projectors::projections::NAMES.contains(&n.as_str()) => {
            vec![n.clone()]
        }
        (Some(n), false) => anyhow::bail!(
            "no projection {n:?}; one of {:?}",
            im_projectors::projections::NAMES
        ),
        _ => im_projectors::projections::NAMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let live = instance_status(&client, &args.instance).await?;
    let dir = tempfile::tempdir()?;
    let scratch_name = format!("verify{}", std::process::id());
    let projector = im_projectors::Projector::start(
        client.clone(),
        im_projectors::ProjectorConfig {
            instance: scratch_name.clone(),
            partitions: Some(live.partitions.clone()),
            data_dir: dir.path().to_path_buf(),
            fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
            fanout: false,
        },
    )
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    // Compare when both stand at the same checkpoints (a live store that
    // keeps moving is caught at a quiet moment, or the timeout says so).
    let (live, scratch) = loop {
        let live = instance_status(&client, &args.instance).await?;
        let scratch = projector.context.status()?;
        let at = |s: &v1::StatusResult, n: &str| {
            s.projections
                .iter()
                .find(|p| p.name == n)
                .map(|p| (p.conv_checkpoint, p.rcpt_checkpoint))
        };
        if names
            .iter()
            .all(|n| at(&live, n).is_some() && at(&live, n) == at(&scratch, n))
        {
            break (live, scratch);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the rebuild did not reach the live checkpoints in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut mismatches = 0;
    for name in &names {
        let digest = |s: &v1::StatusResult| {
            s.projections
                .iter()
                .find(|p| &p.name == name)
                .map(|p| p.digest.clone())
                .unwrap_or_default()
        };
        let (a, b) = (digest(&live), digest(&scratch));
        if a == b {
            println!("{name}: ok {a}");
            continue;
        }
        mismatches += 1;
        let ks = projector
            .context
            .projections
            .iter()
            .find(|p| p.projection.name() == name)
            .map(|p| p.ks.clone())
            .expect("every projection runs");
        match first_difference(&client, &args.instance, name, ks.as_ref()).await? {
            Some(key) => println!(
                "{name}: MISMATCH live {a} rebuild {b}; first differing key: {}",
                printable_key(&key)
            ),
            None => println!("{name}: MISMATCH live {a} rebuild {b}"),
        }
    }
    drop(projector);
    // The scratch consumers go with the scratch store.
    let js = async_nats::jetstream::new(client);
    for stream in [
        im_streams::definitions::CONV_STREAM,
        im_streams::definitions::RCPT_STREAM,
    ] {
        if let Ok(s) = js.get_stream(stream).await {
            for name in im_projectors::projections::NAMES {
                for tag in ["conv", "rcpt"] {
                    let _ = s
                        .delete_consumer(&format!("{scratch_name}_{name}_{tag}"))
                        .await;
                }
            }
        }
    }
    anyhow::ensure!(
        mismatches == 0,
        "{mismatches} projection(s) differ from a fresh rebuild"
    );
    Ok(())
}
