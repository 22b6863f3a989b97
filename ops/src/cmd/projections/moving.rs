//! `imctl projections move --partition N --to INSTANCE`: hands a partition
//! of the pool to another live member on purpose (draining an instance,
//! spreading a hot partition). The move is kept in the lease bucket
//! (`x.<N>`) and holds while that instance lives; `--auto` gives the
//! partition back to the even share. The owner hands over once the new
//! one has caught up, as in a rebalance; this waits for it (bounded).

use std::time::{Duration, Instant};

use im_projectors::lease::{set_move, LEASE_TTL};

use super::partitions;

/// How long `move` waits for the new owner: it catches up to the claim
/// first (seconds of log for a follower, the partition's whole history for
/// an instance that never folded it).
const MOVE_WAIT_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    #[arg(long)]
    pub partition: u32,
    /// The live pool member to own it.
    #[arg(long, required_unless_present = "auto", conflicts_with = "auto")]
    pub to: Option<String>,
    /// Undo a move: the partition goes back to the even share.
    #[arg(long)]
    pub auto: bool,
    /// Return once the move is recorded, without waiting for the hand-over.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn move_partition(args: MoveArgs) -> anyhow::Result<()> {
    let client = args.nats.connect("imctl").await?;
    let js = async_nats::jetstream::new(client);
    let rows = partitions::collect(&js).await?;
    let Some(row) = rows.iter().find(|r| r.partition == args.partition) else {
        let held: Vec<u32> = rows.iter().map(|r| r.partition).collect();
        anyhow::bail!(
            "partition {} has no lease (partitions in the pool: {held:?}; pinned instances cannot be moved)",
            args.partition
        );
    };
    if let Some(to) = &args.to {
        let mut live: Vec<&str> = row.followers.iter().map(|f| f.instance.as_str()).collect();
        live.extend(
            rows.iter()
                .flat_map(|r| r.followers.iter().map(|f| f.instance.as_str())),
        );
        live.extend(rows.iter().filter(|r| !r.stale).map(|r| r.owner.as_str()));
        live.sort();
        live.dedup();
        anyhow::ensure!(
            live.contains(&to.as_str()),
            "{to} is not a live member of the pool (live: {})",
            live.join(", ")
        );
    }
    set_move(&js, args.partition, args.to.as_deref()).await?;
    let started = Instant::now();
    let owner = match (&args.to, args.no_wait) {
        (Some(to), false) => wait_owner(&js, args.partition, to).await?,
        _ => row.owner.clone(),
    };
    let took_ms = started.elapsed().as_millis() as u64;
    if args.json {
        let out = serde_json::json!({"partition": args.partition, "owner": owner, "movedTo": args.to, "tookMs": took_ms});
        println!("{out}");
    } else {
        match &args.to {
            Some(to) if owner == *to => {
                println!("partition {} owned by {to} ({took_ms} ms)", args.partition)
            }
            Some(to) => println!(
                "partition {} moving to {to} (owner now {owner})",
                args.partition
            ),
            None => println!("partition {}: back to the even share", args.partition),
        }
    }
    Ok(())
}

/// Until `to` owns the partition with a fresh lease.
async fn wait_owner(
    js: &async_nats::jetstream::Context,
    partition: u32,
    to: &str,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + MOVE_WAIT_MAX;
    loop {
        let rows = partitions::collect(js).await?;
        let row = rows.iter().find(|r| r.partition == partition);
        if let Some(r) = row.filter(|r| r.owner == to && !r.stale) {
            return Ok(r.owner.clone());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "partition {partition} not owned by {to} within {MOVE_WAIT_MAX:?} (owner {:?}); the move stays recorded",
            row.map(|r| r.owner.clone())
        );
        tokio::time::sleep(LEASE_TTL / 12).await;
    }
}
