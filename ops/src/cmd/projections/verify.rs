//! `imctl projections verify`: a scratch rebuild in-process, compared with
//! the live instance by digest, and key by key on a mismatch.

use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

use super::{instance_status, printable_key};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// One projection to verify; all when absent (or with --all).
    pub name: Option<String>,
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    /// The live projector instance to check.
    #[arg(long, env = "IM_PROJECTOR_INSTANCE", default_value = im_projectors::DEFAULT_INSTANCE)]
    pub instance: String,
    /// One JSON object (`projections`, `mismatches`) instead of lines.
    #[arg(long)]
    pub json: bool,
    /// How long the scratch rebuild may take to reach the live checkpoints.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
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
            let keys = Query::Keys(v1::KeysQuery {
                projection: name.into(),
                after: after_live.clone(),
                limit: 1_000,
            });
            match super::ask_instance(client, instance, keys, super::ANSWER_TIMEOUT).await? {
                R::Keys(k) => {
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
    let client = args.nats.connect("imctl").await?;
    let names = super::selected(&args.name, args.all)?;
    let live = instance_status(&client, &args.instance, &names).await?;
    let dir = tempfile::tempdir()?;
    let scratch_name = format!("verify{}", std::process::id());
    let projector = im_projectors::Projector::start(
        client.clone(),
        im_projectors::ProjectorConfig {
            kek: Default::default(),
            instance: scratch_name.clone(),
            partitions: Some(live.partitions.clone()),
            data_dir: dir.path().to_path_buf(),
            fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
            fanout: false,
            store_faults: None,
            store_engine: Default::default(),
            serves: im_projectors::Serves::OwnerOnly,
            lease: None,
            projections: None,
        },
    )
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let outcome = async {
        at_live_checkpoints(&client, &args.instance, &projector, &names, deadline).await?;
        compare(&client, &args.instance, &projector, &names).await
    }
    .await;
    // Stopped first (its pumps gone), then its consumers deleted: deleted
    // under a running pump, each would be reported as an error.
    if let Err(e) = projector.finish().await {
        tracing::debug!(error = %e, "the scratch projector stopped with an error");
    }
    drop_scratch_consumers(&client, &scratch_name).await;
    let verdicts = outcome?;
    let mismatches = verdicts.iter().filter(|v| !v.ok).count();
    match args.json {
        true => {
            let all = serde_json::json!({"instance": args.instance, "mismatches": mismatches, "projections": verdicts});
            println!("{all}");
        }
        false => verdicts.iter().for_each(|v| println!("{}", v.line())),
    }
    if mismatches > 0 {
        let found = format!("{mismatches} projection(s) differ from a fresh rebuild");
        return Err(im_streams::exit::Found(found).into());
    }
    Ok(())
}

/// Waits until the scratch rebuild and the live instance stand at the same
/// checkpoints (a live store that keeps moving is caught at a quiet moment,
/// or the deadline says so). Digests are read only after this: a plain
/// status costs nothing, a digest reads every entry.
async fn at_live_checkpoints(
    client: &async_nats::Client,
    instance: &str,
    projector: &im_projectors::Projector,
    names: &[String],
    deadline: std::time::Instant,
) -> anyhow::Result<()> {
    let at = |s: &v1::StatusResult, n: &str| {
        s.projections
            .iter()
            .find(|p| p.name == n)
            .map(|p| (p.conv_checkpoint, p.rcpt_checkpoint))
    };
    loop {
        let query = Query::Status(v1::StatusQuery::default());
        let live = match super::ask_instance(client, instance, query, super::ANSWER_TIMEOUT).await?
        {
            R::Status(s) => s,
            other => anyhow::bail!("instance {instance}: {other:?}"),
        };
        let scratch = projector.context.status(None)?;
        if names
            .iter()
            .all(|n| at(&live, n).is_some() && at(&live, n) == at(&scratch, n))
        {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the rebuild did not reach the live checkpoints in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One projection's comparison.
#[derive(serde::Serialize)]
struct Verdict {
    projection: String,
    ok: bool,
    live_digest: String,
    rebuild_digest: String,
    /// The first key whose value differs, when the stores differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_difference: Option<String>,
    /// What the live projection keeps beside its store and does not agree
    /// with it (the search index), if anything.
    #[serde(skip_serializing_if = "String::is_empty")]
    problem: String,
}

impl Verdict {
    fn line(&self) -> String {
        let name = &self.projection;
        if !self.problem.is_empty() {
            return format!("{name}: MISMATCH {}", self.problem);
        }
        match (
            &self.first_difference,
            self.live_digest == self.rebuild_digest,
        ) {
            (Some(key), _) => format!(
                "{name}: MISMATCH live {} rebuild {}; first differing key: {key}",
                self.live_digest, self.rebuild_digest
            ),
            (None, true) => format!("{name}: ok {}", self.live_digest),
            // Every key's hash matches: the stores are equal, and a digest
            // was read in the middle of a commit.
            (None, false) => format!(
                "{name}: ok {} (every key equal; the digests were read mid-commit)",
                self.live_digest
            ),
        }
    }
}

/// Compares each projection's digest with the scratch rebuild's, key by
/// key where they differ.
async fn compare(
    client: &async_nats::Client,
    instance: &str,
    projector: &im_projectors::Projector,
    names: &[String],
) -> anyhow::Result<Vec<Verdict>> {
    let live = instance_status(client, instance, names).await?;
    let scratch_states = projector
        .context
        .projections
        .iter()
        .filter(|p| names.iter().any(|n| n == p.projection.name()))
        .cloned()
        .collect();
    let scratch = projector.context.status(Some(scratch_states))?;
    let mut verdicts = Vec::new();
    for name in names {
        let of = |s: &v1::StatusResult| {
            s.projections
                .iter()
                .find(|p| &p.name == name)
                .map(|p| (p.digest.clone(), p.problem.clone()))
                .unwrap_or_default()
        };
        let ((live_digest, problem), (rebuild_digest, _)) = (of(&live), of(&scratch));
        let first_difference = match live_digest == rebuild_digest {
            true => None,
            false => {
                let ks = projector
                    .context
                    .projections
                    .iter()
                    .find(|p| p.projection.name() == name)
                    .map(|p| p.ks())
                    .expect("every projection runs");
                first_difference(client, instance, name, ks.as_ref())
                    .await?
                    .map(|key| printable_key(&key))
            }
        };
        verdicts.push(Verdict {
            projection: name.clone(),
            ok: first_difference.is_none() && problem.is_empty(),
            live_digest,
            rebuild_digest,
            first_difference,
            problem,
        });
    }
    Ok(verdicts)
}

/// The scratch instance's durable consumers go with its store.
async fn drop_scratch_consumers(client: &async_nats::Client, scratch_name: &str) {
    use im_projectors::runner::{consumer_name, Source};
    let js = async_nats::jetstream::new(client.clone());
    for source in [Source::Conv, Source::Rcpt] {
        if let Ok(s) = js.get_stream(source.stream()).await {
            let _ = s
                .delete_consumer(&consumer_name(scratch_name, source))
                .await;
        }
    }
}
