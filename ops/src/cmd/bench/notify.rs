//! `imctl bench notify`: offline notifications. Groups of 10 offline
//! members, every member with a push device (1,000 groups, 10,000 members;
//! quick: 100 and 1,000), owners sending paced messages over WebSocket.
//! The same paced window is measured with no notifier, then with an
//! `im-notifier` process (built beside imctl) posting to a real HTTP
//! receiver: the send path's CPU per message (nats-server and the stack)
//! both ways, the notifier's own, the notifications that arrive per
//! message; then a burst (one message into every group at once) measures
//! the notifications per second the notifier sustains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use im_streams::{Action, AppendOutcome, Appender, Command};
use im_testkit::Receiver;
use tokio::process::Child;

use super::ingest::{measure_senders, paced_senders, Ingest, Window};
use super::probe::{self, cpu_us};
use super::stack::{Stack, StackOptions, Ws};
use super::{bench_limits, bounded, create_group, Figures, Size};

/// Offline members per group.
const MEMBERS_PER_GROUP: usize = 10;
/// How long the burst's notifications may take to arrive.
const DRAIN_MAX: Duration = Duration::from_secs(300);
/// The notifier's debounce in the bench (its default).
const DEBOUNCE: Duration = im_notifier::config::DEBOUNCE_DEFAULT;

fn group(g: usize) -> String {
    format!("ng{g}")
}

fn owner(g: usize, senders: usize) -> String {
    format!("ns{}", g % senders)
}

/// Groups, their members, and a push device for each member.
async fn seed(appender: &Appender, groups: usize, senders: usize) -> anyhow::Result<()> {
    let creates: Vec<_> = (0..groups)
        .map(|g| async move {
            let members: Vec<String> = (0..MEMBERS_PER_GROUP)
                .map(|j| format!("nm{g}x{j}"))
                .collect();
            create_group(appender, &group(g), &owner(g, senders), &members).await
        })
        .collect();
    for r in bounded(creates, 64).await {
        r?;
    }
    let registrations: Vec<_> = (0..groups * MEMBERS_PER_GROUP)
        .map(|i| async move {
            let user = format!("nm{}x{}", i / MEMBERS_PER_GROUP, i % MEMBERS_PER_GROUP);
            let cmd = Command {
                actor: user.clone(),
                client_msg_id: "push".into(),
                action: Action::RegisterPush(im_schema::v1::PushRegistered {
                    device_id: "phone".into(),
                    platform: "fcm".into(),
                    token: format!("token-{user}"),
                    app_id: "bench".into(),
                    lang: "en".into(),
                }),
            };
            let log = im_streams::ids::user_log_id(&user)?;
            match appender.execute(&log, &cmd, "bench").await? {
                AppendOutcome::Stored { .. } | AppendOutcome::Duplicate { .. } => Ok(()),
                AppendOutcome::Rejected(r) => anyhow::bail!("registering {user}: {r}"),
            }
        })
        .collect();
    for r in bounded(registrations, 64).await {
        r?;
    }
    Ok(())
}

/// The paced senders: each owner, with the groups it owns.
async fn senders(
    stack: &Stack,
    groups: usize,
    count: usize,
) -> anyhow::Result<Vec<(Ws, Vec<String>)>> {
    let mut out = Vec::new();
    for k in 0..count {
        let convs: Vec<String> = (0..groups).filter(|g| g % count == k).map(group).collect();
        out.push((stack.connect(&owner(k, count), "bench").await?, convs));
    }
    Ok(out)
}

/// `im-notifier` against the stack and the receiver, until it has folded
/// the log.
async fn start_notifier(
    stack: &Stack,
    receiver: &Receiver,
    dir: &std::path::Path,
) -> anyhow::Result<Child> {
    let secret = dir.join("secret");
    std::fs::write(&secret, "a bench secret of some length")?;
    let exe = crate::cmd::check::procs::sibling("im-notifier")?;
    let child = tokio::process::Command::new(exe)
        .args(["--nats-url", &stack.nats_url])
        .arg("--data-dir")
        .arg(dir.join("store"))
        .args(["--url", &receiver.url("/push")])
        .arg("--secret-file")
        .arg(&secret)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting im-notifier (cargo build -p im-notifier)")?;
    probe::wait_caught_up_by(&stack.nats().await?, im_notifier::config::DEFAULT_INSTANCE).await?;
    Ok(child)
}

/// Waits until nothing more arrives for two debounces: the notifier has
/// sent what it found in the log when it started (the paced window
/// without it), so the window with it measures only its own messages.
async fn settled(receiver: &Receiver) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_MAX;
    let mut last = (receiver.taken_once().len(), Instant::now());
    while last.1.elapsed() < DEBOUNCE * 2 {
        anyhow::ensure!(Instant::now() < deadline, "the notifier never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = receiver.taken_once().len();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    Ok(())
}

/// Waits until the receiver has taken `n` notifications (or `DRAIN_MAX`).
async fn drained(receiver: &Receiver, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_MAX;
    while receiver.taken_once().len() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {n} notifications arrived",
            receiver.taken_once().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The burst: one message into every group at once; the notifications a
/// second the notifier then sustains, from the first to the last arrival.
async fn burst(
    appender: &Arc<Appender>,
    receiver: &Receiver,
    groups: usize,
    senders: usize,
) -> anyhow::Result<f64> {
    let from = receiver.taken_once().len();
    let sends: Vec<_> = (0..groups)
        .map(|g| {
            let appender = appender.clone();
            async move {
                let cmd = Command {
                    actor: owner(g, senders),
                    client_msg_id: format!("burst-{g}"),
                    action: Action::Send {
                        peer: None,
                        body: im_streams::MessageBody::Text("burst".into()),
                        meta: Default::default(),
                    },
                };
                appender.execute(&group(g), &cmd, "bench").await
            }
        })
        .collect();
    for r in bounded(sends, 64).await {
        r?;
    }
    let burst = groups * MEMBERS_PER_GROUP;
    drained(receiver, from + burst).await?;
    let arrivals: Vec<Instant> = receiver.taken_once()[from..].iter().map(|r| r.at).collect();
    let first = *arrivals.iter().min().context("a burst")?;
    let last = *arrivals.iter().max().context("a burst")?;
    Ok(burst as f64 / (last - first).as_secs_f64().max(0.001))
}

/// The baseline of the burst: `n` POSTs of a notification's size to the
/// same receiver from `SENDERS_RAW` loops at once, each a new connection
/// (the receiver closes each, as it does the notifier's): requests/s.
async fn raw_posts(receiver: &Receiver, n: usize) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SENDERS_RAW: usize = im_notifier::send::SENDS_IN_FLIGHT_MAX;
    let body = format!(
        r#"{{"notification":{{"id":"raw","text":"{}"}}}}"#,
        "x".repeat(400)
    );
    let started = Instant::now();
    let loops: Vec<_> = (0..SENDERS_RAW)
        .map(|i| {
            let (addr, body) = (receiver.addr, body.clone());
            async move {
                for j in (i..n).step_by(SENDERS_RAW) {
                    let head = format!(
                        "POST /raw HTTP/1.1\r\nHost: r\r\nIdempotency-Key: raw-{j}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let mut sock = tokio::net::TcpStream::connect(addr).await?;
                    sock.write_all(head.as_bytes()).await?;
                    sock.write_all(body.as_bytes()).await?;
                    let mut answer = Vec::new();
                    sock.read_to_end(&mut answer).await?;
                }
                anyhow::Ok(())
            }
        })
        .collect();
    for r in futures::future::join_all(loops).await {
        r?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The paced window with the notifier: the send path's figures, the
/// notifier's CPU per message, and its notifications per message.
async fn paced_with_notifier(
    stack: &Stack,
    size: &Size,
    receiver: &Receiver,
    (groups, count): (usize, usize),
    pid: u32,
) -> anyhow::Result<(Ingest, Window, f64, f64)> {
    let client = stack.nats().await?;
    let pace = Duration::from_secs_f64(count as f64 / size.rate as f64);
    let before = receiver.taken_once().len();
    let (seq0, cpu0) = (probe::conv_last_seq(&client).await?, cpu_us(pid)?);
    let senders = senders(stack, groups, count).await?;
    let (on, window) = measure_senders(stack, senders, size, "non", Some(pace)).await?;
    let cpu1 = cpu_us(pid)?;
    // Every message of the run, warm-up too (what the log grew by).
    let sent = probe::conv_last_seq(&client)
        .await?
        .saturating_sub(seq0)
        .max(1) as f64;
    tokio::time::sleep(DEBOUNCE * 2).await;
    let notified = (receiver.taken_once().len() - before) as f64;
    Ok((on, window, (cpu1 - cpu0) as f64 / sent, notified / sent))
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let (groups, count) = (size.members, paced_senders(size.rate));
    let stack = Stack::start(StackOptions {
        limits: bench_limits(count),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        encrypt: false,
    })
    .await?;
    let client = stack.nats().await?;
    let appender = super::appender(&client).await?;
    seed(&appender, groups, count).await?;
    probe::wait_caught_up(&client).await?;
    let pace = Duration::from_secs_f64(count as f64 / size.rate as f64);
    let senders_off = senders(&stack, groups, count).await?;
    let (off, off_window) = measure_senders(&stack, senders_off, size, "noff", Some(pace)).await?;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir()?;
    let notifier = start_notifier(&stack, &receiver, dir.path()).await?;
    let pid = notifier.id().context("the notifier's pid")?;
    settled(&receiver).await?;
    let (on, on_window, notifier_cpu, per_message) =
        paced_with_notifier(&stack, size, &receiver, (groups, count), pid).await?;
    let burst_per_s = burst(&appender, &receiver, groups, count).await?;
    let raw_per_s = raw_posts(&receiver, groups * MEMBERS_PER_GROUP).await?;
    // Without it again: the stack's first window pays for what the seeding
    // left (an index round, a flush), so the two windows without it are
    // averaged around the one with it.
    drop(notifier);
    probe::wait_caught_up(&client).await?;
    let senders_off = senders(&stack, groups, count).await?;
    let (off2, off2_window) =
        measure_senders(&stack, senders_off, size, "noff2", Some(pace)).await?;
    let server = |w: &Window| w.cpu_us.0 + w.cpu_us.1;
    let off_cpu = (server(&off_window) + server(&off2_window)) / 2.0;
    let on_cpu = server(&on_window);
    eprintln!(
        "notify: {groups} groups of {MEMBERS_PER_GROUP} offline members, paced {:.0}/s: send path CPU {off_cpu:.0} µs/msg without the notifier ({:.0} before, {:.0} after), {on_cpu:.0} with it ({:+.1}%); the notifier {notifier_cpu:.0} µs/msg; {per_message:.2} notifications per message; a burst of {}: {burst_per_s:.0}/s, raw POSTs to the receiver {raw_per_s:.0}/s",
        off.acks_per_s,
        server(&off_window),
        server(&off2_window),
        (on_cpu / off_cpu - 1.0) * 100.0,
        groups * MEMBERS_PER_GROUP,
    );
    let mut f = Figures::default();
    f.add("notify_paced_rate_per_s", on.acks_per_s);
    f.add("notify_send_path_cpu_us_per_msg_off", off_cpu);
    f.add("notify_send_path_cpu_us_per_msg_on", on_cpu);
    f.add("notify_send_path_cpu_ratio", on_cpu / off_cpu);
    f.add(
        "notify_nats_cpu_us_per_msg_off",
        (off_window.cpu_us.0 + off2_window.cpu_us.0) / 2.0,
    );
    f.add("notify_nats_cpu_us_per_msg_on", on_window.cpu_us.0);
    f.add("notify_notifier_cpu_us_per_msg", notifier_cpu);
    f.add("notify_notifications_per_msg", per_message);
    f.add("notify_burst_per_s", burst_per_s);
    f.add("notify_raw_posts_per_s", raw_per_s);
    f.add("notify_burst_ratio", burst_per_s / raw_per_s);
    f.add(
        "notify_paced_ack_p99_ms_off",
        super::ms(off.p99_us.max(off2.p99_us)),
    );
    f.add("notify_paced_ack_p99_ms_on", super::ms(on.p99_us));
    stack.stop().await;
    Ok(f)
}
