//! `imctl bench [ingest|fanout|rebuild|audit|connections|latency|cold|scale|biggroup|search|notify|content|large|all] [--quick]`:
//! the load generator. Each sub-benchmark starts its own stack (`imctl up`
//! as a child process, see `stack.rs`), measures the system and, in the same
//! run against the same nats-server, the raw baseline it is compared with.
//!
//! Progress and detail go to stderr; stdout carries only the figures, one
//! `name value` line each, after the sub-benchmark that measured them.
//! Every figure is expected to be positive: a zero or non-finite one fails
//! the run (which is what `--quick` in CI checks).

pub mod audit;
pub mod biggroup;
pub mod cas;
pub mod cold;
pub mod connections;
pub mod content;
pub mod fanout;
pub mod ingest;
pub mod large;
pub mod latency;
pub mod notify;
pub mod pipeline;
pub mod probe;
pub mod rebuild;
pub mod scale;
pub mod search;
pub mod stack;
pub mod trace;

use std::time::Duration;

use anyhow::Context;
use im_streams::{Action, AppendOutcome, Appender, Command, Role};

pub use stack::{Stack, StackOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Ingest,
    Fanout,
    Rebuild,
    Audit,
    Connections,
    Latency,
    Cold,
    Scale,
    Biggroup,
    Search,
    Notify,
    Content,
    /// Not in `all`: a large log through every operation (`--events`).
    Large,
    All,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(value_enum, default_value = "all")]
    pub which: Which,
    /// Every sub-benchmark small (under 2 minutes in all): checks that each
    /// completes with non-zero figures.
    #[arg(long)]
    pub quick: bool,
    /// Concurrent senders (ingest, latency) [default: 64, quick 8].
    #[arg(long)]
    pub clients: Option<usize>,
    /// Seconds each measured phase runs [default: 10, quick 2].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Members of the fan-out group [default: 1000, quick 100].
    #[arg(long)]
    pub members: Option<usize>,
    /// Messages sent into the fan-out group, as fast as its members drain
    /// them [default: 2000, quick 50].
    #[arg(long)]
    pub fanout_messages: Option<u64>,
    /// Events in the log the rebuild folds and the audit reads [default:
    /// 1000000, quick 20000].
    #[arg(long)]
    pub events: Option<u64>,
    /// Events in the conversation a cold writer takes up [default: 200000,
    /// quick 20000].
    #[arg(long)]
    pub cold_events: Option<u64>,
    /// Idle WebSocket connections [default: 20000, quick 500].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Messages per second of ingest's paced phase (direct chats).
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Prints every figure as one JSON object (with the commit measured)
    /// instead of `name value` lines.
    #[arg(long)]
    pub json: bool,
}

/// A bare nats-server of the benchmark's own with the streams applied (no
/// stack: nothing folds what is written there), its client and context.
pub async fn bare_server() -> anyhow::Result<(
    im_testkit::NatsServer,
    async_nats::Client,
    async_nats::jetstream::Context,
)> {
    let server = im_testkit::NatsServer::start().await?;
    let client = async_nats::connect(&server.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    im_streams::apply_streams(&js, &Default::default()).await?;
    Ok((server, client, js))
}

/// The sizes of one run, from the flags.
#[derive(Clone, Debug)]
pub struct Size {
    pub clients: usize,
    pub measure: Duration,
    pub warmup: Duration,
    pub members: usize,
    pub fanout_messages: u64,
    pub events: u64,
    pub cold_events: u64,
    pub connections: usize,
    pub rate: u64,
}

impl Size {
    fn from_args(a: &BenchArgs) -> Size {
        let q = a.quick;
        Size {
            clients: a.clients.unwrap_or(if q { 8 } else { 64 }),
            measure: Duration::from_secs(a.seconds.unwrap_or(if q { 2 } else { 10 })),
            warmup: Duration::from_millis(if q { 500 } else { 2000 }),
            members: a.members.unwrap_or(if q { 100 } else { 1000 }),
            fanout_messages: a.fanout_messages.unwrap_or(if q { 50 } else { 2000 }),
            events: a.events.unwrap_or(if q { 20_000 } else { 1_000_000 }),
            cold_events: a.cold_events.unwrap_or(if q { 20_000 } else { 200_000 }),
            connections: a.connections.unwrap_or(if q { 500 } else { 20_000 }),
            rate: a.rate.max(1),
        }
    }
}

/// A sub-benchmark's figures, in the order they are printed: (name, value,
/// whether zero is a valid value).
#[derive(Default)]
pub struct Figures(Vec<(&'static str, f64, bool)>);

impl Figures {
    /// A figure that must be positive (a rate, a latency, a size).
    pub fn add(&mut self, name: &'static str, value: f64) {
        self.0.push((name, value, false));
    }

    /// A count that may be zero (a backlog).
    pub fn add_count(&mut self, name: &'static str, value: f64) {
        self.0.push((name, value, true));
    }

    fn print(&self) {
        for (name, value, _) in &self.0 {
            if value.fract() == 0.0 && value.abs() >= 1.0 {
                println!("{name} {value:.0}");
            } else {
                println!("{name} {value:.3}");
            }
        }
    }

    /// The first figure that is not what it must be.
    fn check(&self) -> Result<(), String> {
        let bad = |(_, v, zero_ok): &&(&str, f64, bool)| {
            !(v.is_finite() && (*v > 0.0 || (*zero_ok && *v == 0.0)))
        };
        match self.0.iter().find(bad) {
            Some((name, v, _)) => Err(format!("{name} is {v}, not a valid figure")),
            None => Ok(()),
        }
    }
}

/// The commit measured, when run from a checkout.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let size = Size::from_args(&args);
    let which = match args.which {
        Which::All => vec![
            Which::Ingest,
            Which::Fanout,
            Which::Rebuild,
            Which::Audit,
            Which::Connections,
            Which::Latency,
            Which::Cold,
            Which::Scale,
            Which::Biggroup,
            Which::Search,
            Which::Notify,
            Which::Content,
        ],
        one => vec![one],
    };
    let mut failures = Vec::new();
    let mut all = serde_json::Map::new();
    for w in which {
        let started = std::time::Instant::now();
        eprintln!("bench: {w:?} starting ({size:?})");
        let figures = match w {
            Which::Ingest => ingest::run(&size).await,
            Which::Fanout => fanout::run(&size).await,
            Which::Rebuild => rebuild::run(&size).await,
            Which::Audit => audit::run(&size).await,
            Which::Connections => connections::run(&size).await,
            Which::Latency => latency::run(&size).await,
            Which::Cold => cold::run(&size).await,
            Which::Scale => scale::run(&size).await,
            Which::Biggroup => biggroup::run(&size).await,
            Which::Search => search::run(&size).await,
            Which::Notify => notify::run(&size).await,
            Which::Content => content::run(&size).await,
            Which::Large => large::run(&size).await,
            Which::All => unreachable!("expanded above"),
        }
        .with_context(|| format!("bench {w:?}"))?;
        eprintln!(
            "bench: {w:?} done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        if args.json {
            for (name, value, _) in &figures.0 {
                all.insert(name.to_string(), serde_json::json!(value));
            }
        } else {
            figures.print();
        }
        if let Err(e) = figures.check() {
            failures.push(format!("{w:?}: {e}"));
        }
    }
    if args.json {
        let out = serde_json::json!({
            "commit": commit(),
            "quick": args.quick,
            "size": format!("{size:?}"),
            "figures": all,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Limits that let a sub-benchmark measure the engine rather than the
/// per-connection policies: the send rate limit is a product rule (20/s per
/// connection), not a cost of the path, and a load generator's few
/// connections send far more than any one phone.
pub fn bench_limits(connections: usize) -> im_gateway::Limits {
    im_gateway::Limits {
        sends_per_sec: 1_000_000,
        send_burst: 1_000_000,
        user_sends_per_sec: 1_000_000,
        user_send_burst: 1_000_000,
        // An open-loop sender may run ahead of its acks (the fan-out's).
        commands_queued_max: 1_000_000,
        // Headroom over the measured connections for the senders; all of
        // them come from this one address.
        connections_max: connections + 1_000,
        connections_per_ip_max: connections + 1_000,
        ..Default::default()
    }
}

/// Descriptors each process keeps besides the measured connections: nats
/// connections, sled files, the runtime, the senders.
pub const FD_MARGIN: u64 = 512;

/// Raises the open-file limit for `connections` sockets (each end of a
/// connection is a descriptor, in the load generator and in the stack,
/// which inherits the limit) and returns how many connections fit: all of
/// them, or fewer where the hard limit cannot be raised (no privilege).
pub fn raise_fd_limit(connections: usize) -> anyhow::Result<usize> {
    use rlimit::Resource;
    let wanted = connections as u64 + FD_MARGIN;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft < wanted {
        // Raising the hard limit needs privileges; the soft one up to the
        // hard one does not.
        if rlimit::setrlimit(Resource::NOFILE, wanted, wanted.max(hard)).is_err() {
            rlimit::setrlimit(Resource::NOFILE, hard.min(wanted), hard)?;
        }
    }
    let (soft, _) = Resource::NOFILE.get()?;
    let fit = soft.saturating_sub(FD_MARGIN) as usize;
    anyhow::ensure!(
        fit > 0,
        "the open-file limit is {soft}: no room for connections"
    );
    Ok(fit.min(connections))
}

/// Creates a group through the append path (the rules, the CAS) with
/// `owner` as its owner.
pub async fn create_group(
    appender: &Appender,
    conv: &str,
    owner: &str,
    members: &[String],
) -> anyhow::Result<()> {
    let cmd = Command {
        actor: owner.to_string(),
        client_msg_id: format!("create-{conv}"),
        action: Action::CreateGroup {
            title: conv.to_string(),
            members: members
                .iter()
                .filter(|m| m.as_str() != owner)
                .map(|m| (m.clone(), Role::Member))
                .collect(),
        },
    };
    match appender.execute(conv, &cmd, "bench").await? {
        AppendOutcome::Stored { .. } | AppendOutcome::Duplicate { .. } => Ok(()),
        AppendOutcome::Rejected(r) => anyhow::bail!("creating {conv}: {r}"),
    }
}

/// An appender of the bench's own, on the stack's streams, signing with a
/// key it registers (the bench runs as the operator): an unsigned event
/// would be dead-lettered (I30).
pub async fn appender(client: &async_nats::Client) -> anyhow::Result<std::sync::Arc<Appender>> {
    appender_with(client, Default::default()).await
}

/// `appender`, with these options besides its signer.
pub async fn appender_with(
    client: &async_nats::Client,
    options: im_streams::AppenderOptions,
) -> anyhow::Result<std::sync::Arc<Appender>> {
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let signer = im_streams::signing::EventSigner::from_seed(rand::random());
    im_streams::signing::register(&js, &signer.public()).await?;
    let options = im_streams::AppenderOptions {
        signer: Some(std::sync::Arc::new(signer)),
        ..options
    };
    Ok(Appender::with_options(client.clone(), topology, options).await?)
}

/// The p-th percentile (0..=100) of unsorted samples, in the samples' unit.
pub fn percentile(samples: &mut [u64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)] as f64
}

/// Microseconds to milliseconds.
pub fn ms(us: f64) -> f64 {
    us / 1000.0
}

/// Runs `n` futures with at most `limit` at a time, in order of completion.
pub async fn bounded<F, T>(futures: Vec<F>, limit: usize) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    use futures::StreamExt;
    futures::stream::iter(futures)
        .buffer_unordered(limit)
        .collect()
        .await
}
