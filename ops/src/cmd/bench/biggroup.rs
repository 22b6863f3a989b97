//! `biggroup`: what a message into a large group costs the servers when
//! few of its members are connected. One stack (fan-out threshold 500),
//! `--members` members connected over WebSocket (1,000; quick 100), and
//! three groups they are all in: one of 100,000 members, one of 10,000
//! (quick: 10,000 and 2,000), and one of exactly the connected ones. Into each in turn the owner sends `RATE` messages a
//! second for the measured window; nats-server's and the stack's CPU per
//! message and per delivered message are read from /proc.
//! `biggroup_cpu_ratio` = per message in the 100,000-member group over the
//! same in the group whose members are all connected: 1 means a message
//! costs per connected member, not per member.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use im_schema::v1::envelope::Payload;
use im_streams::{Action, AppendOutcome, Appender, Command, Role};

use super::stack::{self, Stack, Ws};
use super::{bench_limits, bounded, probe, Figures, Size, StackOptions};

/// Messages a second into each group: an active large group.
const RATE: u64 = 20;

/// Members added per command (the rules' bulk limit).
const PER_COMMAND: usize = im_streams::conversation::MEMBERS_PER_COMMAND_MAX;

/// The groups' names: the largest, the middle one, the one whose members
/// are all connected.
const GROUPS: [&str; 3] = ["biglarge", "bigmid", "bigall"];

/// Deliveries heard per group (by index in `GROUPS`).
type Heard = Arc<[AtomicU64; 3]>;

/// The members of each group (the owner included) for `connected`
/// connected members.
fn sizes(size: &Size, connected: usize) -> [usize; 3] {
    if size.members < 1_000 {
        [10_000, 2_000, connected + 1]
    } else {
        [100_000, 10_000, connected + 1]
    }
}

/// A group of `members`: the `connected` readers, then fillers.
async fn create(
    appender: &Appender,
    conv: &str,
    members: usize,
    connected: usize,
) -> anyhow::Result<()> {
    let ids: Vec<(String, Role)> = (0..members - 1)
        .map(|i| {
            let id = if i < connected {
                format!("r{i}")
            } else {
                format!("{conv}-f{i}")
            };
            (id, Role::Member)
        })
        .collect();
    for (n, chunk) in ids.chunks(PER_COMMAND).enumerate() {
        let action = if n == 0 {
            Action::CreateGroup {
                title: conv.to_string(),
                members: chunk.to_vec(),
            }
        } else {
            Action::AddMembers {
                users: chunk.to_vec(),
            }
        };
        let cmd = Command {
            actor: "owner".into(),
            client_msg_id: format!("{conv}-{n}"),
            action,
        };
        if let AppendOutcome::Rejected(r) = appender.execute(conv, &cmd, "bench").await? {
            anyhow::bail!("creating {conv}: {r}");
        }
    }
    Ok(())
}

/// Counts the events delivered to a reader, per group (notifications,
/// which carry none, are not deliveries of a message).
async fn read(ws: Ws, heard: Heard) {
    let (_sink, mut stream) = ws.split();
    while let Some(Ok(msg)) = stream.next().await {
        for env in stack::decode(&msg) {
            if let Some(Payload::Deliver(d)) = env
                .payload
                .filter(|p| matches!(p, Payload::Deliver(d) if d.event.is_some()))
            {
                if let Some(i) = GROUPS.iter().position(|c| *c == d.conversation_id) {
                    heard[i].fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// Server CPU (nats, stack) µs over one paced window into `conv`, and the
/// messages sent.
async fn paced_into<S>(
    stack: &Stack,
    owner: &mut S,
    conv: &str,
    size: &Size,
) -> anyhow::Result<(f64, u64)>
where
    S: futures::Sink<
            tokio_tungstenite::tungstenite::Message,
            Error = tokio_tungstenite::tungstenite::Error,
        > + Unpin,
{
    let before = probe::Cpu::sample(stack)?;
    let started = tokio::time::Instant::now();
    let every = Duration::from_secs_f64(1.0 / RATE as f64);
    let mut sent = 0;
    while started.elapsed() < size.measure {
        let text = format!("{conv} {sent}");
        stack::send_on(owner, stack::send(conv, format!("{conv}-m{sent}"), text)).await?;
        sent += 1;
        tokio::time::sleep_until(started + every * sent as u32).await;
    }
    // The last deliveries' work inside the window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = probe::Cpu::sample(stack)?;
    let (nats, stack_us, _) = before.per_message(&after, 1);
    Ok((nats + stack_us, sent))
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let connected = size.members;
    let members = sizes(size, connected);
    super::raise_fd_limit(connected + 64)?;
    let stack = Stack::start(StackOptions {
        limits: bench_limits(connected + 1),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        encrypt: false,
    })
    .await?;
    let nats = stack.nats().await?;
    let appender = super::appender(&nats).await?;
    for (conv, n) in GROUPS.iter().zip(members) {
        create(&appender, conv, n, connected).await?;
    }
    probe::wait_caught_up(&nats).await?;
    eprintln!("biggroup: groups of {members:?} created and projected; connecting {connected}");
    let heard: Heard = Arc::new(Default::default());
    let connects = (0..connected)
        .map(|i| {
            let stack = &stack;
            async move { stack.connect(&format!("r{i}"), "bench").await }
        })
        .collect();
    for ws in bounded(connects, 64).await {
        tokio::spawn(read(ws?, heard.clone()));
    }
    // The owner's acks and its own deliveries are read and dropped.
    let (mut owner, mut owner_in) = stack.connect("owner", "bench").await?.split();
    tokio::spawn(async move { while let Some(Ok(_)) = owner_in.next().await {} });
    let mut per_message = [0.0; 3];
    let mut per_delivery = [0.0; 3];
    for (i, conv) in GROUPS.iter().enumerate() {
        let (cpu_us, sent) = paced_into(&stack, &mut owner, conv, size).await?;
        let delivered = heard[i].load(Relaxed);
        per_message[i] = cpu_us / sent as f64;
        per_delivery[i] = cpu_us / delivered.max(1) as f64;
        eprintln!(
            "biggroup: {conv} ({} members, {connected} connected): {sent} messages at {RATE}/s, {delivered} delivered; server CPU {:.0} µs/msg, {:.2} µs/delivery",
            members[i], per_message[i], per_delivery[i]
        );
        anyhow::ensure!(
            delivered == sent * connected as u64,
            "{conv}: {delivered} of {} delivered",
            sent * connected as u64
        );
    }
    stack.stop().await;
    let mut f = Figures::default();
    f.add("biggroup_large_members", members[0] as f64);
    f.add("biggroup_connected", connected as f64);
    f.add("biggroup_large_cpu_us_per_msg", per_message[0]);
    f.add("biggroup_large_cpu_us_per_delivery", per_delivery[0]);
    f.add("biggroup_mid_cpu_us_per_msg", per_message[1]);
    f.add("biggroup_all_connected_cpu_us_per_msg", per_message[2]);
    f.add(
        "biggroup_all_connected_cpu_us_per_delivery",
        per_delivery[2],
    );
    f.add("biggroup_cpu_ratio", per_message[0] / per_message[2]);
    f.add("biggroup_mid_cpu_ratio", per_message[1] / per_message[2]);
    Ok(f)
}
