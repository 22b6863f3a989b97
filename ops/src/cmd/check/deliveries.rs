//! The delivery check: what members connected through the whole run hold
//! at the end, and what the projectors fanned out.
//! - Readers: each member that stays in every group (`CHURNED`.. of the
//!   workload's members) runs the recovering client (`im_client::Client`:
//!   reconnects, sync, gap filling from history, notifications answered)
//!   on a device of its own through the faults. At the end it must hold
//!   every event of every group exactly once, in order (conv_seq 1..=last).
//! - Fan-out: every event delivery published on `im.deliver.*.e` (event
//!   included; notifications are not deliveries) is counted per (user,
//!   conversation, conv_seq): one published twice means two projectors
//!   fanned out the same position (I32).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_schema::v1;

use super::procs::SECRET;
use super::workload::{self, CHURNED, GROUPS, MEMBERS};

/// Events a reader keeps at most: far above a 30-minute run's (~100k).
const READER_EVENTS_MAX: usize = 2_000_000;

/// Deliveries counted at most (distinct keys): a 30-minute run publishes a
/// few hundred thousand.
const COUNTED_MAX: usize = 4_000_000;

/// How long, after the log is read, readers may take to hold all of it
/// (a reconnect's backoff, history pages).
pub const READERS_CATCH_UP_MAX: Duration = Duration::from_secs(120);

type Held = Arc<Mutex<Vec<(String, u64)>>>;

/// The readers, running until `stop`.
pub struct Readers {
    held: Vec<(String, Held)>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn start_readers(gateways: &[std::net::SocketAddr]) -> Readers {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (mut held, mut tasks) = (Vec::new(), Vec::new());
    for (i, m) in (CHURNED..MEMBERS).enumerate() {
        let user = workload::member(m);
        let into: Held = Default::default();
        let gw = gateways[i % gateways.len()];
        let cfg = im_client::ClientConfig {
            url: format!("http://{gw}"),
            token: im_gateway::auth::issue_hs256(SECRET, &user, 24 * 3600),
            device_id: "reader".into(),
            wire: im_client::Wire::Proto,
            backoff: im_client::Backoff {
                attempts_max: u32::MAX,
                ..Default::default()
            },
        };
        tasks.push(tokio::spawn(read(cfg, into.clone(), stopping.clone())));
        held.push((user, into));
    }
    Readers { held, stop, tasks }
}

async fn read(
    cfg: im_client::ClientConfig,
    into: Held,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut client = im_client::Client::new(cfg, BTreeMap::new());
    while !*stop.borrow() {
        tokio::select! {
            _ = stop.changed() => return,
            next = client.next_event(Duration::from_secs(1)) => match next {
                Ok(Some(e)) => {
                    let mut held = into.lock().unwrap_or_else(|e| e.into_inner());
                    if held.len() < READER_EVENTS_MAX {
                        held.push((e.conversation_id, e.seq));
                    }
                }
                Ok(None) => {}
                // A gateway down: the client reconnects on its next call.
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            },
        }
    }
}

impl Readers {
    /// Waits until every reader holds each group up to `last[group]` (or
    /// the bound passes), stops them, and returns the findings.
    pub async fn finish(self, last: &BTreeMap<String, u64>) -> Vec<String> {
        let deadline = Instant::now() + READERS_CATCH_UP_MAX;
        while Instant::now() < deadline && !self.all_hold(last) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut findings = Vec::new();
        for (user, held) in &self.held {
            let held = held.lock().unwrap_or_else(|e| e.into_inner());
            for g in 0..GROUPS {
                let conv = workload::group(g);
                let got: Vec<u64> = held
                    .iter()
                    .filter(|(c, _)| *c == conv)
                    .map(|(_, s)| *s)
                    .collect();
                let want = last.get(&conv).copied().unwrap_or(0);
                if got != (1..=want).collect::<Vec<_>>() {
                    findings.push(describe(user, &conv, &got, want));
                }
            }
        }
        findings
    }

    fn all_hold(&self, last: &BTreeMap<String, u64>) -> bool {
        self.held.iter().all(|(_, held)| {
            let held = held.lock().unwrap_or_else(|e| e.into_inner());
            last.iter().all(|(conv, n)| {
                held.iter()
                    .filter(|(c, _)| c == conv)
                    .map(|(_, s)| *s)
                    .max()
                    >= Some(*n)
            })
        })
    }
}

/// What a reader holds of a conversation, against 1..=want.
fn describe(user: &str, conv: &str, got: &[u64], want: u64) -> String {
    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    for s in got {
        *counts.entry(*s).or_default() += 1;
    }
    let missing: Vec<u64> = (1..=want)
        .filter(|s| !counts.contains_key(s))
        .take(10)
        .collect();
    let twice: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .take(10)
        .collect();
    let ordered = got.windows(2).all(|w| w[0] < w[1]);
    format!(
        "{user} {conv}: holds {} of {want} (missing {missing:?}, twice {twice:?}, in order: {ordered})",
        got.len()
    )
}

/// Event deliveries seen on `im.deliver.*.e`: (user, conversation,
/// conv_seq) -> times.
pub type Counted = Arc<Mutex<BTreeMap<(String, String, u64), u32>>>;

/// Counts every event delivery from now on (the subscriber connects with
/// the gateways' identity, which subscribes to deliveries).
pub async fn count_fanout(client: async_nats::Client) -> anyhow::Result<Counted> {
    let mut sub = client.subscribe("im.deliver.*.e").await?;
    client.flush().await?;
    let counted: Counted = Default::default();
    let into = counted.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(msg) = sub.next().await {
            let user = msg
                .subject
                .split('.')
                .nth(2)
                .unwrap_or_default()
                .to_string();
            let Ok(env) = im_schema::decode::<v1::Envelope>(&msg.payload) else {
                continue;
            };
            let Some(v1::envelope::Payload::Deliver(d)) = env.payload else {
                continue;
            };
            if d.event.is_none() {
                continue;
            }
            let mut c = into.lock().unwrap_or_else(|e| e.into_inner());
            let key = (user, d.conversation_id, d.conv_seq);
            if c.len() < COUNTED_MAX || c.contains_key(&key) {
                *c.entry(key).or_default() += 1;
            }
        }
    });
    Ok(counted)
}

/// Positions fanned out more than once.
pub fn fanned_out_twice(counted: &Counted) -> Vec<String> {
    let c = counted.lock().unwrap_or_else(|e| e.into_inner());
    c.iter()
        .filter(|(_, n)| **n > 1)
        .map(|((user, conv, seq), n)| format!("{conv} #{seq} delivered to {user} {n} times"))
        .collect()
}
