//! `scale`: the projector pool, on a nats-server of its own with
//! `im-projector` processes (built beside imctl).
//! - Scale-out: the same seeded log folded from empty stores by one pinned
//!   instance (the baseline: every partition in one store), then by 1, 2
//!   and 3 pool members without followers, then 3 with one follower per
//!   partition (the default): wall time until every partition is served
//!   at the log's end → events/s, and the members' CPU time per event
//!   (the sum over members, and per member). nats-server, the members and
//!   this load generator share the box's cores.
//! - Failover: two members, a group receiving a message every
//!   `SEND_EVERY`; `kill -9` of the owner of its partition, again and
//!   again: time from the kill to the first delivery after it (the
//!   successor's), p50/p99 (the lease, `LEASE_TTL`, is the baseline); the
//!   killed member started again each time, and the time it takes to own
//!   its share again (join).

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_projectors::lease::{lease_key, Lease, LEASE_TTL, PARTITION_LEASES_BUCKET};
use im_schema::v1;

use super::probe::{cpu_us, wait_served_at};
use super::{percentile, Figures, Size};

/// Events per seeded conversation: many conversations, spread over every
/// partition.
const EVENTS_PER_CONV: u64 = 100;

/// How long a pool may take to fold the seeded log.
const FOLD_MAX: Duration = Duration::from_secs(1_800);

/// The failover phase's message rate: one every 50 ms, so a delivery after
/// a take-over is seen within 50 ms of the successor serving.
const SEND_EVERY: Duration = Duration::from_millis(50);

/// How long one failover or one join may take before the run fails.
const FAILOVER_MAX: Duration = Duration::from_secs(60);

/// A pool member or pinned instance, killed on drop.
struct Member {
    name: String,
    dir: std::path::PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    fn start(url: &str, name: &str, dir: &std::path::Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut m = Member {
            name: name.into(),
            dir: dir.join(name),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        m.spawn(url)?;
        Ok(m)
    }

    fn spawn(&mut self, url: &str) -> anyhow::Result<()> {
        let exe = crate::cmd::check::procs::sibling("im-projector")?;
        let child = Command::new(exe)
            .args(["--nats-url", url, "--instance", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args(&self.args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let (server, client, js) = super::bare_server().await?;
    let url = server.url();
    let events = (size.events / 5).max(2_000);
    eprintln!("scale: seeding {events} events");
    super::rebuild::seed_with(&js, events, EVENTS_PER_CONV).await?;
    let last = super::probe::conv_last_seq(&client).await?;
    let topology = im_streams::definitions::read_topology(&js).await?;
    let probes = one_per_partition(topology, events.div_ceil(EVENTS_PER_CONV));
    let mut figures = Figures::default();
    let mut baseline = 0.0;
    for run in RUNS {
        let (rate, cpu) = fold(&url, &js, &run, (&probes, last)).await?;
        eprintln!(
            "scale: {}: {} instance(s) fold {last} events at {rate:.0}/s, {cpu:.1} CPU-µs per event in all ({:.1} per instance)",
            run.label,
            run.instances,
            cpu / run.instances as f64
        );
        if run.label == "pinned" {
            baseline = rate;
        }
        figures.add(run.rate_figure, rate);
        figures.add(run.cpu_figure, cpu);
        if let Some(name) = run.vs_pinned_figure {
            figures.add(name, rate / baseline);
        }
    }
    failover(&url, &client, size, &mut figures).await?;
    Ok(figures)
}

/// One fold of the seeded log: who folds it, and its figures' names
/// (events/s, CPU-µs per event summed over instances, events/s relative
/// to the pinned instance).
struct Run {
    label: &'static str,
    instances: usize,
    args: &'static [&'static str],
    rate_figure: &'static str,
    cpu_figure: &'static str,
    vs_pinned_figure: Option<&'static str>,
}

const RUNS: [Run; 5] = [
    Run {
        label: "pinned",
        instances: 1,
        args: &["--partitions", "all"],
        rate_figure: "scale_pinned_events_per_s",
        cpu_figure: "scale_pinned_cpu_us_per_event",
        vs_pinned_figure: None,
    },
    Run {
        label: "pool1",
        instances: 1,
        args: &["--followers", "0"],
        rate_figure: "scale_pool1_events_per_s",
        cpu_figure: "scale_pool1_cpu_us_per_event",
        vs_pinned_figure: Some("scale_pool1_vs_pinned"),
    },
    Run {
        label: "pool2",
        instances: 2,
        args: &["--followers", "0"],
        rate_figure: "scale_pool2_events_per_s",
        cpu_figure: "scale_pool2_cpu_us_per_event",
        vs_pinned_figure: Some("scale_pool2_vs_pinned"),
    },
    Run {
        label: "pool3",
        instances: 3,
        args: &["--followers", "0"],
        rate_figure: "scale_pool3_events_per_s",
        cpu_figure: "scale_pool3_cpu_us_per_event",
        vs_pinned_figure: Some("scale_pool3_vs_pinned"),
    },
    Run {
        label: "pool3f1",
        instances: 3,
        args: &["--followers", "1"],
        rate_figure: "scale_pool3f1_events_per_s",
        cpu_figure: "scale_pool3f1_cpu_us_per_event",
        vs_pinned_figure: Some("scale_pool3f1_vs_pinned"),
    },
];

/// One seeded conversation in each partition (`rb<c>`, as `seed_with`
/// names them).
fn one_per_partition(topology: im_streams::Topology, conversations: u64) -> Vec<String> {
    let mut found = std::collections::BTreeMap::new();
    for c in 0..conversations {
        let conv = format!("rb{c}");
        found.entry(topology.partition_of(&conv)).or_insert(conv);
    }
    found.into_values().collect()
}

/// A run's fresh instances fold the log: (events/s, CPU-µs per event,
/// summed over the instances).
async fn fold(
    url: &str,
    js: &async_nats::jetstream::Context,
    run: &Run,
    (probes, last): (&[String], u64),
) -> anyhow::Result<(f64, f64)> {
    // A pool of its own: no leases or moves left by the last one.
    let _ = js.delete_key_value(PARTITION_LEASES_BUCKET).await;
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let members = (1..=run.instances)
        .map(|i| Member::start(url, &format!("{}-{i}", run.label), dir.path(), run.args))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = async_nats::connect(url).await?;
    wait_served_at(&client, probes, last, FOLD_MAX).await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu: u64 = members.iter().map(|m| cpu_us(m.pid()).unwrap_or(0)).sum();
    drop(members);
    Ok((last as f64 / wall, cpu as f64 / last as f64))
}

/// Every partition's owner now.
async fn owners(kv: &async_nats::jetstream::kv::Store, partitions: u32) -> Vec<String> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let lease = match kv.get(lease_key(p)).await {
            Ok(Some(raw)) => serde_json::from_slice::<Lease>(&raw).ok(),
            _ => None,
        };
        out.push(lease.map(|l| l.owner).unwrap_or_default());
    }
    out
}

/// Until `name` owns `share` partitions.
async fn wait_share(
    kv: &async_nats::jetstream::kv::Store,
    partitions: u32,
    name: &str,
    share: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + FAILOVER_MAX;
    while owners(kv, partitions)
        .await
        .iter()
        .filter(|o| *o == name)
        .count()
        < share
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} never owned {share} partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Deliveries to `user`: (conv_seq, when it arrived).
async fn deliveries_to(
    client: &async_nats::Client,
    user: &str,
) -> anyhow::Result<Arc<Mutex<Vec<(u64, Instant)>>>> {
    let mut sub = client
        .subscribe(im_streams::subjects::deliver_subject(user)?)
        .await?;
    client.flush().await?;
    let seen: Arc<Mutex<Vec<(u64, Instant)>>> = Default::default();
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Ok(env) = im_schema::decode::<v1::Envelope>(&msg.payload) else {
                continue;
            };
            if let Some(v1::envelope::Payload::Deliver(d)) = env.payload {
                if d.event.is_some() {
                    into.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((d.conv_seq, Instant::now()));
                }
            }
        }
    });
    Ok(seen)
}

/// Kills the owner of a group's partition again and again (two members,
/// a message every `SEND_EVERY`): failover and join times.
async fn failover(
    url: &str,
    client: &async_nats::Client,
    size: &Size,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let _ = js.delete_key_value(PARTITION_LEASES_BUCKET).await;
    let dir = tempfile::tempdir()?;
    let mut members = [
        Member::start(url, "fo-1", dir.path(), &[])?,
        Member::start(url, "fo-2", dir.path(), &[])?,
    ];
    let topology = im_streams::definitions::read_topology(&js).await?;
    // The members create the bucket as they start.
    let deadline = Instant::now() + FAILOVER_MAX;
    let kv = loop {
        if let Ok(kv) = js.get_key_value(PARTITION_LEASES_BUCKET).await {
            break kv;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no lease bucket within {FAILOVER_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let app = super::appender(client).await?;
    let conv = "fo-group";
    let p = topology.partition_of(conv);
    super::create_group(
        &app,
        conv,
        "fo-owner",
        &["fo-owner".into(), "fo-reader".into()],
    )
    .await?;
    let seen = deliveries_to(client, "fo-reader").await?;
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = tokio::spawn(send_steadily(app, conv, acked.clone(), stop.clone()));
    let share = topology.partitions as usize / 2;
    let kills = if size.measure < Duration::from_secs(5) {
        3
    } else {
        20
    };
    let (mut failovers, mut joins) = (Vec::new(), Vec::new());
    for _ in 0..kills {
        for m in &members {
            wait_share(&kv, topology.partitions, &m.name, share).await?;
        }
        let owner = owners(&kv, topology.partitions).await[p as usize].clone();
        let i = members.iter().position(|m| m.name == owner).unwrap_or(0);
        // One send may be in flight (published by the old owner just now).
        let after = acked.load(std::sync::atomic::Ordering::SeqCst) + 1;
        members[i].kill();
        let killed = Instant::now();
        let deadline = killed + FAILOVER_MAX;
        let first = loop {
            let got = seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(s, at)| *s > after && *at > killed)
                .map(|(_, at)| *at);
            if let Some(at) = got {
                break at;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no delivery within {FAILOVER_MAX:?} of a kill"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        failovers.push((first - killed).as_micros() as u64);
        members[i].spawn(url)?;
        let joined = Instant::now();
        wait_share(&kv, topology.partitions, &members[i].name, share).await?;
        joins.push(joined.elapsed().as_micros() as u64);
        eprintln!(
            "scale: kill -9 {owner}: delivering again after {:.2} s; back to its share in {:.2} s",
            (first - killed).as_secs_f64(),
            joined.elapsed().as_secs_f64()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.await??;
    figures.add(
        "scale_failover_p50_ms",
        super::ms(percentile(&mut failovers, 50.0)),
    );
    figures.add(
        "scale_failover_p99_ms",
        super::ms(percentile(&mut failovers, 99.0)),
    );
    figures.add("scale_failover_kills", failovers.len() as f64);
    figures.add("scale_failover_lease_ms", LEASE_TTL.as_millis() as f64);
    figures.add("scale_join_p50_ms", super::ms(percentile(&mut joins, 50.0)));
    Ok(())
}

/// Sends into `conv` every `SEND_EVERY` until `stop`; the last acked
/// conv_seq in `acked`.
async fn send_steadily(
    app: Arc<im_streams::Appender>,
    conv: &'static str,
    acked: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(SEND_EVERY);
    for n in 0u64.. {
        tick.tick().await;
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let cmd = im_streams::Command {
            actor: "fo-owner".into(),
            client_msg_id: format!("fo-{n}"),
            action: im_streams::Action::Send {
                peer: None,
                body: im_streams::MessageBody::Text(format!("m{n}")),
                meta: Default::default(),
            },
        };
        if let im_streams::AppendOutcome::Stored { conv_seq, .. } =
            app.execute(conv, &cmd, "bench").await?
        {
            acked.store(conv_seq, std::sync::atomic::Ordering::SeqCst);
        }
    }
    Ok(())
}
