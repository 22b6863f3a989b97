//! `imctl projections rebuild NAME|--all [--from-seq N]`: asks the live
//! projector to build new generations while the current ones keep serving,
//! shows their progress, and reports the swap. Ctrl-C cancels: the serving
//! generations stay as they were.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use im_schema::v1::{self, query_request::Query, query_response::Result as R, RebuildPhase};

use super::{ask_instance, instance_status, ANSWER_TIMEOUT};

#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The projection to rebuild (or --all).
    pub name: Option<String>,
    #[arg(long)]
    pub all: bool,
    /// First stream sequence folded into the new keyspace; earlier events
    /// are left out (for streams whose head was archived). 0 = the start.
    #[arg(long, default_value_t = 0)]
    pub from_seq: u64,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    /// The projector instance whose store is rebuilt.
    #[arg(long, env = "IM_PROJECTOR_INSTANCE", default_value = im_projectors::DEFAULT_INSTANCE)]
    pub instance: String,
    /// Follow rebuilds already running (started by another `imctl`, the
    /// ops page, or a run whose terminal went away) instead of starting
    /// one; Ctrl-C then leaves them running.
    #[arg(long, conflicts_with = "from_seq")]
    pub attach: bool,
}

/// How often progress is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often a plain progress line goes to a stderr that is not a terminal
/// (logs, CI), where the bar is not drawn.
const PLAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// The rebuilds this run started, as the projector reports them now.
async fn poll(
    client: &async_nats::Client,
    instance: &str,
    ours: &[(String, u64)],
) -> anyhow::Result<Vec<v1::RebuildProgress>> {
    Ok(progress(client, instance)
        .await?
        .into_iter()
        .filter(|r| ours.contains(&(r.projection.clone(), r.generation)))
        .collect())
}

/// Every rebuild the instance reports (running, and recently ended).
pub async fn progress(
    client: &async_nats::Client,
    instance: &str,
) -> anyhow::Result<Vec<v1::RebuildProgress>> {
    let query = Query::RebuildStatus(v1::RebuildStatusQuery {});
    let R::RebuildStatus(st) = ask_instance(client, instance, query, ANSWER_TIMEOUT).await? else {
        anyhow::bail!("instance {instance}: not a rebuild status");
    };
    Ok(st.rebuilds)
}

/// The rebuilds of `names` running on `instance`, to follow.
async fn running(
    client: &async_nats::Client,
    instance: &str,
    names: &[String],
) -> anyhow::Result<Vec<v1::RebuildProgress>> {
    let now: Vec<_> = progress(client, instance)
        .await?
        .into_iter()
        .filter(|r| !ended(r) && names.contains(&r.projection))
        .collect();
    anyhow::ensure!(
        !now.is_empty(),
        "no rebuild of {} is running on instance {instance}",
        names.join(", ")
    );
    Ok(now)
}

/// Asks `instance` to rebuild `names` from `from_seq`; returns the rebuilds started.
pub async fn start(
    client: &async_nats::Client,
    instance: &str,
    names: Vec<String>,
    from_seq: u64,
) -> anyhow::Result<Vec<v1::RebuildProgress>> {
    let start = Query::Rebuild(v1::RebuildRequest {
        projections: names,
        from_seq,
    });
    let R::RebuildStatus(started) = ask_instance(client, instance, start, ANSWER_TIMEOUT).await?
    else {
        anyhow::bail!("instance {instance}: not a rebuild status");
    };
    Ok(started.rebuilds)
}

/// The rebuilds this run follows: those it starts, or (`--attach`) those
/// already running.
async fn begin(
    client: &async_nats::Client,
    args: &RebuildArgs,
    names: Vec<String>,
) -> anyhow::Result<Vec<v1::RebuildProgress>> {
    match args.attach {
        true => running(client, &args.instance, &names).await,
        false => start(client, &args.instance, names, args.from_seq)
            .await
            .context("starting the rebuild (one already running? follow it with --attach)"),
    }
}

fn ended(r: &v1::RebuildProgress) -> bool {
    r.phase() != RebuildPhase::Building
}

pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.name.is_some() || args.all,
        "name a projection, or --all"
    );
    let names = super::selected(&args.name, args.all)?;
    let client = args.nats.connect("imctl").await?;
    // Registered before the rebuild starts (and before "rebuilding" is
    // printed), so a Ctrl-C at any moment cancels rather than kills.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let started = begin(&client, &args, names).await?;
    let ours: Vec<(String, u64)> = started
        .iter()
        .map(|r| (r.projection.clone(), r.generation))
        .collect();
    let names: Vec<String> = started.iter().map(|r| r.projection.clone()).collect();
    eprintln!(
        "{} {} on instance {} (generation {})",
        if args.attach {
            "following the rebuild of"
        } else {
            "rebuilding"
        },
        names.join(", "),
        args.instance,
        started.first().map_or(0, |r| r.generation)
    );
    let bar = progress_bar()?;
    let plain = !std::io::stderr().is_terminal();
    let began = Instant::now();
    let mut last_plain = Instant::now();
    let mut interrupted = false;
    // Bounded by the projector: every rebuild ends swapped, cancelled or
    // failed, and a projector that stops answering ends this with an error.
    let last = loop {
        tokio::select! {
            _ = interrupt.recv(), if !interrupted => {
                if args.attach {
                    bar.suspend(|| eprintln!("detached: the rebuild goes on (follow it again with --attach)"));
                    std::process::exit(130);
                }
                interrupted = true;
                bar.suspend(|| eprintln!("interrupted: cancelling; the serving keyspaces stay"));
                let cancel = Query::RebuildCancel(v1::RebuildCancel { projections: names.clone() });
                ask_instance(&client, &args.instance, cancel, ANSWER_TIMEOUT).await?;
            }
            _ = tokio::time::sleep(POLL_INTERVAL) => {
                let now = poll(&client, &args.instance, &ours).await?;
                let folded: u64 = now.iter().map(|r| r.folded).sum();
                let remaining: u64 = now.iter().filter(|r| !ended(r)).map(|r| r.remaining).sum();
                bar.set_length(folded + remaining);
                bar.set_position(folded);
                if plain && last_plain.elapsed() >= PLAIN_PROGRESS_INTERVAL {
                    last_plain = Instant::now();
                    eprintln!("progress: {folded}/{} events", folded + remaining);
                }
                if now.len() == ours.len() && now.iter().all(ended) {
                    break now;
                }
            }
        }
    };
    bar.finish_and_clear();
    let secs = began.elapsed().as_secs_f64().max(0.001);
    let rebuilt: Vec<String> = last.iter().map(|r| r.projection.clone()).collect();
    let status = instance_status(&client, &args.instance, &rebuilt).await?;
    let failed = report(&last, &status, secs);
    if interrupted {
        // The shell's convention for a run ended by SIGINT.
        std::process::exit(130);
    }
    anyhow::ensure!(failed == 0, "{failed} rebuild(s) did not complete");
    Ok(())
}

fn progress_bar() -> anyhow::Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:40}] {human_pos}/{human_len} events, {per_sec}, eta {eta}",
        )?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// One line per rebuild: swapped (with its digest and rate) or how it
/// ended; how many did not complete.
fn report(last: &[v1::RebuildProgress], status: &v1::StatusResult, secs: f64) -> usize {
    let mut failed = 0;
    for r in last {
        match r.phase() {
            RebuildPhase::Swapped => {
                let digest = status
                    .projections
                    .iter()
                    .find(|p| p.name == r.projection)
                    .map(|p| p.digest.clone())
                    .unwrap_or_default();
                println!(
                    "{}: rebuilt generation {} at conv {} rcpt {}: {} events in {secs:.1} s ({:.0} events/s), digest {digest}",
                    r.projection,
                    r.generation,
                    r.conv_position,
                    r.rcpt_position,
                    r.folded,
                    r.folded as f64 / secs,
                );
            }
            phase => {
                failed += 1;
                println!(
                    "{}: {} {}",
                    r.projection,
                    phase
                        .as_str_name()
                        .trim_start_matches("REBUILD_PHASE_")
                        .to_lowercase(),
                    r.error
                );
            }
        }
    }
    failed
}
