//! `imctl projections status`: every projector instance that answers for a
//! partition, and per projection its checkpoint, the stream's last sequence,
//! lag, apply rate (two samples `--interval-ms` apart) and dead letters: all
//! from counters, so it answers at once whatever the store's size. With
//! `--digest`, each projection's digest too (a read of every entry), one
//! projection at a time with a progress bar. Then, for a pool, each
//! partition's owner, epoch, lease age, claim, lag and followers
//! (`partitions.rs`). `--json`: `{"projections": [...], "partitions": [...]}`.

use std::collections::BTreeMap;
use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    #[arg(long)]
    pub json: bool,
    /// Time between the two samples the apply rate is measured over.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Also each projection's digest (reads every entry of every keyspace).
    #[arg(long)]
    pub digest: bool,
}

/// One projection of one instance.
#[derive(Serialize)]
pub struct Row {
    pub instance: String,
    pub projection: String,
    pub checkpoint: u64,
    pub stream_last_seq: u64,
    pub lag: u64,
    pub events_per_s: f64,
    pub digest: String,
    pub keys: u64,
    pub dead_letters: u64,
}

/// instance -> its status, from every partition's answer (asked at once),
/// and the partitions nobody answered for (an owner starting, a pool
/// taking over, no instance at all).
async fn sample(
    client: &async_nats::Client,
    partitions: u32,
) -> anyhow::Result<(BTreeMap<String, v1::StatusResult>, Vec<u32>)> {
    let asks = (0..partitions).map(|p| async move {
        let req = v1::QueryRequest {
            query: Some(Query::Status(v1::StatusQuery::default())),
            ..Default::default()
        };
        let subject = im_streams::subjects::query_subject(p);
        let asked = client.request(subject, im_schema::encode(&req).into());
        match tokio::time::timeout(super::ANSWER_TIMEOUT, asked).await {
            Ok(Ok(reply)) => Ok((
                p,
                Some(im_schema::decode::<v1::QueryResponse>(&reply.payload)?),
            )),
            Ok(Err(e)) if e.kind() != async_nats::RequestErrorKind::NoResponders => {
                Err(anyhow::Error::new(e).context(format!("partition {p}")))
            }
            _ => anyhow::Ok((p, None)),
        }
    });
    let (mut out, mut unanswered) = (BTreeMap::new(), Vec::new());
    for answer in futures::future::join_all(asks).await {
        match answer? {
            (
                _,
                Some(v1::QueryResponse {
                    result: Some(R::Status(s)),
                    ..
                }),
            ) => {
                out.insert(s.instance.clone(), s);
            }
            (p, _) => unanswered.push(p),
        }
    }
    Ok((out, unanswered))
}

/// The names of the instances answering now, from one status round.
pub(crate) async fn answering(client: &async_nats::Client) -> anyhow::Result<Vec<String>> {
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    Ok(sample(client, topology.partitions)
        .await?
        .0
        .into_keys()
        .collect())
}

/// (instance, projection) -> (digest, keys), one projection at a time.
async fn digests(
    client: &async_nats::Client,
    instances: &BTreeMap<String, v1::StatusResult>,
) -> anyhow::Result<BTreeMap<(String, String), (String, u64)>> {
    let steps: Vec<(String, String)> = instances
        .iter()
        .flat_map(|(i, st)| st.projections.iter().map(|p| (i.clone(), p.name.clone())))
        .collect();
    let bar = indicatif::ProgressBar::new(steps.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("digests {bar:30} {pos}/{len} {msg} ({elapsed})")?,
    );
    let mut out = BTreeMap::new();
    for (instance, name) in steps {
        bar.set_message(format!("{instance}/{name}"));
        let st = super::instance_status(client, &instance, std::slice::from_ref(&name)).await?;
        if let Some(p) = st.projections.iter().find(|p| p.name == name) {
            out.insert((instance, name), (p.digest.clone(), p.keys));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Exit 1 when a partition has no instance answering for it.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.nats.connect("imctl").await?;
    let collected = collect(&client, args.interval_ms, args.digest).await?;
    let js = async_nats::jetstream::new(client);
    let partitions = super::partitions::collect(&js).await?;
    if args.json {
        let out = serde_json::json!({
            "projections": collected.rows,
            "unanswered": collected.unanswered,
            "partitions": partitions,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print(&collected.rows);
        super::partitions::print(&partitions);
    }
    if !collected.unanswered.is_empty() {
        eprintln!(
            "imctl: no projector answered for partitions {:?}",
            collected.unanswered
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Every answering instance's rows, and the partitions nobody answered for.
pub struct Collected {
    pub rows: Vec<Row>,
    pub unanswered: Vec<u32>,
}

/// Every instance's projections: two samples `interval_ms` apart (the
/// apply rate), with digests if asked. What `status` prints and the admin
/// API answers.
pub async fn collect(
    client: &async_nats::Client,
    interval_ms: u64,
    with_digests: bool,
) -> anyhow::Result<Collected> {
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let (first, _) = sample(client, topology.partitions).await?;
    tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    let (second, unanswered) = sample(client, topology.partitions).await?;
    let digests = if with_digests {
        digests(client, &second).await?
    } else {
        BTreeMap::new()
    };
    let last = js
        .get_stream(im_streams::definitions::CONV_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let secs = interval_ms.max(1) as f64 / 1000.0;
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
                digest: digests
                    .get(&(instance.clone(), p.name.clone()))
                    .map(|d| d.0.clone())
                    .unwrap_or_default(),
                keys: digests
                    .get(&(instance.clone(), p.name.clone()))
                    .map_or(0, |d| d.1),
                dead_letters: p.dead_letters,
            });
        }
    }
    Ok(Collected { rows, unanswered })
}

fn print(rows: &[Row]) {
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
}
