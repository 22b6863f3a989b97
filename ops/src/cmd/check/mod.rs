//! `imctl check`: a Jepsen-style check of the whole system. Members send
//! into groups over two gateways (retrying with the same id across
//! reconnects and after JetStream's duplicate window) while the owner
//! removes and re-adds members and faults are inflicted on a schedule;
//! then the log is read independently of the read models and checked (see
//! `analysis.rs`), and `imctl projections verify` and `im-replay verify`
//! run. Exit 1 on any finding.

mod analysis;
mod deliveries;
mod faults;
pub(crate) mod http;
mod presence;
pub(crate) mod procs;
mod workload;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use analysis::Findings;
use im_streams::identities::Component;
use workload::{Outcome, Records};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Seconds of workload (faults included).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seconds between two faults.
    #[arg(long, default_value_t = 8)]
    pub fault_interval: u64,
    /// A 3-node cluster with R3 streams (faults: the leader killed, a node
    /// stopped) instead of one node.
    #[arg(long)]
    pub cluster: bool,
    /// Projector processes: 1 pinned to every partition (faults: it is
    /// killed); 2 or more in the pool (faults: owners killed past the
    /// lease, SIGTERMed, partitions moved).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub projectors: u8,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How long members keep retrying their unanswered sends after the workload.
const DRAIN: Duration = Duration::from_secs(30);

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let system = procs::System::start(args.cluster, args.projectors.into()).await?;
    let gateways: Vec<_> = system.gateways.iter().map(|(_, a)| *a).collect();
    let urls = system.nats.urls();
    let ids = &system.identities;
    let operator = ids.auth(Component::Operator);
    let verifier_env = [ids.env(Component::Operator), ids.env(Component::Auditor)];
    let pool = system.pool();
    let fanout = im_streams::connect::NatsArgs::new(&urls)
        .with_auth(ids.auth(Component::Gateway))
        .connect("imctl-check-deliveries")
        .await?;
    let fanout = deliveries::count_fanout(fanout).await?;
    workload::setup(&gateways).await?;
    let readers = deliveries::start_readers(&gateways);
    presence::setup(gateways[0]).await?;
    let mut findings = Findings::default();
    findings
        .presence
        .extend(presence::probe(&gateways, "before the faults").await);
    let records = Arc::new(Records::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration);
    let drain = until + DRAIN;
    let mut tasks = Vec::new();
    for m in 0..workload::MEMBERS {
        let r = records.clone();
        tasks.push(tokio::spawn(workload::member_loop(
            workload::member(m),
            gateways.clone(),
            r,
            until,
            drain,
        )));
    }
    tasks.push(tokio::spawn(workload::churn_loop(
        gateways.clone(),
        records.clone(),
        until,
        drain,
    )));
    let system = Arc::new(tokio::sync::Mutex::new(system));
    let log = Arc::new(Mutex::new(faults::Log::default()));
    let every = Duration::from_secs(args.fault_interval.max(1));
    faults::run(system.clone(), every, started, until, log.clone()).await?;
    for t in tasks {
        t.await?;
    }
    findings
        .presence
        .extend(presence::probe(&gateways, "after the faults").await);
    let client = im_streams::connect::NatsArgs::new(&urls)
        .with_auth(operator)
        .connect("imctl-check")
        .await?;
    match pool {
        false => crate::cmd::bench::probe::wait_caught_up_by(&client, procs::INSTANCE).await?,
        true => wait_groups_caught_up(&client).await?,
    }
    let events = im_streams::log::read_conv_events(
        &client,
        "IM_CONV",
        im_streams::subjects::CONV_ALL,
        1,
        usize::MAX,
    )
    .await?;
    let folded = analysis::fold_log(events, &mut findings);
    let js = async_nats::jetstream::new(client.clone());
    let rcpt_last = js
        .get_stream("IM_RCPT")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let at = analysis::At {
        conv: folded.last_seq,
        rcpt: rcpt_last,
    };
    let receipts = analysis::read_receipts(&client, rcpt_last).await?;
    let cursors = analysis::fold_receipts(&receipts, &folded, &mut findings);
    analysis::check_acks(&records, &folded, &mut findings);
    analysis::check_rejections(&records, &mut findings);
    analysis::check_read_models(&client, &folded, at, &mut findings).await?;
    analysis::check_receipts(&client, &folded, &cursors, at, &mut findings).await?;
    let last = folded
        .states
        .iter()
        .map(|(conv, st)| (conv.clone(), st.conv_seq))
        .filter(|(conv, _)| conv.starts_with('g'))
        .collect();
    findings.readers = readers.finish(&last).await;
    // A pool's owners never publish a position twice (I32); one pinned
    // projector killed between a delivery and its commit delivers those
    // events again after its restart (I12), and the readers above hold
    // each once: counted, not a finding.
    let again = deliveries::fanned_out_twice(&fanout);
    eprintln!(
        "check: {} deliveries published again after a projector restart",
        again.len()
    );
    if pool {
        findings.fanned_out_twice = again;
    }
    let instances = match pool {
        false => vec![procs::INSTANCE.to_string()],
        true => owner_units(&js).await?,
    };
    verifiers(&urls, &verifier_env, &instances, &mut findings)?;
    let (faults, problems) = {
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        (log.done.clone(), log.problems.clone())
    };
    findings.fault_problems = problems;
    report(
        &args,
        &records,
        (&folded, receipts.len()),
        &faults,
        &findings,
        started,
    )?;
    drop(system);
    if findings.total() > 0 {
        let found = format!("{} findings", findings.total());
        return Err(im_streams::exit::Found(found).into());
    }
    Ok(())
}

/// How long the pool may take, after the workload, to serve every group
/// at the log's end (a member restarted by the last fault catches up).
const POOL_CATCH_UP_MAX: Duration = Duration::from_secs(120);

/// Until each group's history is served at the log's end (by whichever
/// member owns its partition now).
async fn wait_groups_caught_up(client: &async_nats::Client) -> anyhow::Result<()> {
    let last = crate::cmd::bench::probe::conv_last_seq(client).await?;
    let groups: Vec<String> = (0..workload::GROUPS).map(workload::group).collect();
    crate::cmd::bench::probe::wait_served_at(client, &groups, last, POOL_CATCH_UP_MAX).await
}

/// Every partition's owner unit (`<member>-p<N>`), from the lease bucket.
async fn owner_units(js: &async_nats::jetstream::Context) -> anyhow::Result<Vec<String>> {
    let rows = crate::cmd::projections::partitions::collect(js).await?;
    Ok(rows
        .iter()
        .map(|r| im_projectors::pool::unit_instance(&r.owner, r.partition))
        .collect())
}

/// `imctl projections verify --all` and `im-replay verify`, as an operator
/// and an auditor would run them (each on its own NATS identity: `env`).
fn verifiers(
    urls: &str,
    env: &[Vec<(String, String)>; 2],
    instances: &[String],
    f: &mut Findings,
) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let replay = me.parent().context("imctl's directory")?.join("im-replay");
    let mut runs: Vec<_> = instances
        .iter()
        .map(|instance| {
            let args = ["projections", "verify", "--all", "--instance", instance];
            let args = args.into_iter().chain(["--nats-url", urls]);
            ((me.clone(), args.collect::<Vec<_>>()), &env[0])
        })
        .collect();
    runs.push(((replay, vec!["verify", "--nats-url", urls]), &env[1]));
    for ((bin, args), env) in runs {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let last = text.lines().last().unwrap_or_default();
            f.verifiers
                .push(format!("{} {}: {last}", bin.display(), args[0]));
        }
    }
    Ok(())
}

fn report(
    args: &CheckArgs,
    records: &Records,
    (folded, receipts): (&analysis::Folded, usize),
    faults: &[String],
    findings: &Findings,
    started: Instant,
) -> anyhow::Result<()> {
    let attempts = records.attempts.lock().unwrap_or_else(|e| e.into_inner());
    let count = |pick: fn(&Outcome) -> bool| attempts.iter().filter(|a| pick(&a.outcome)).count();
    let stored = count(|o| matches!(o, Outcome::Stored { .. }));
    let duplicate = count(|o| matches!(o, Outcome::Duplicate { .. }));
    let rejected = count(|o| matches!(o, Outcome::Rejected { .. }));
    let unknown = count(|o| matches!(o, Outcome::Unknown));
    let churn = records
        .churn
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let summary = serde_json::json!({
        "mode": if args.cluster { "3-node cluster, R3" } else { "single node" },
        "projectors": args.projectors,
        "seconds": started.elapsed().as_secs(),
        "attempts": attempts.len(),
        "stored": stored,
        "answered_duplicate": duplicate,
        "rejected": rejected,
        "unanswered_then_retried": unknown,
        "membership_changes": churn,
        "log_events": folded.events.len(),
        "receipts_sent": records.receipts.load(std::sync::atomic::Ordering::Relaxed),
        "log_receipts": receipts,
        "faults": faults,
        "findings": findings,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("check: {} s, {} sends attempted: {stored} stored, {duplicate} answered DUPLICATE, {rejected} rejected, {unknown} unanswered then retried; {churn} membership changes; {} events and {receipts} receipts in the log", started.elapsed().as_secs(), attempts.len(), folded.events.len());
        println!("check: {} faults: {}", faults.len(), faults.join("; "));
        println!("check: {} findings", findings.total());
        for (kind, list) in [
            ("acked but lost", &findings.acked_but_lost),
            ("duplicates", &findings.duplicates),
            ("chain breaks", &findings.chain_breaks),
            (
                "messages from non-members",
                &findings.messages_from_non_members,
            ),
            ("stale rejections", &findings.stale_rejections),
            ("history vs log", &findings.history_vs_log),
            ("members vs log", &findings.members_vs_log),
            ("receipts vs log", &findings.receipts_vs_log),
            ("verifiers", &findings.verifiers),
            ("presence pushes", &findings.presence),
            ("readers' logs", &findings.readers),
            ("fanned out twice", &findings.fanned_out_twice),
            ("faults' problems", &findings.fault_problems),
        ] {
            println!("  {kind}: {}", list.len());
            for item in list.iter().take(10) {
                println!("    {item}");
            }
        }
    }
    Ok(())
}
