//! The pool as deployed: `im-projector` processes (the pool is the
//! default) against a real nats-server, under a steady stream of sends.
//! Two instances: the owner of the conversation's partition is SIGSTOPped
//! past the lease (it wakes fenced) and then SIGKILLed. Three instances: an
//! owner SIGKILLed, another SIGTERMed (it hands over before it exits), both
//! joining again. Through all of it no event is fanned out twice, the new
//! owners keep delivering, and history holds every acked message.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use im_projectors::lease::{lease_key, Lease, LEASE_TTL, PARTITION_LEASES_BUCKET};
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::Role;

fn signal(proc: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn spawn_member(url: &str, name: &str, dir: &std::path::Path) -> Proc {
    let args = ["--nats-url", url, "--instance", name];
    spawn_im_projector(&args, dir, "in the pool as")
}

async fn owner_of(kv: &async_nats::jetstream::kv::Store, p: u32) -> Option<Lease> {
    let raw = kv.get(lease_key(p)).await.ok()??;
    serde_json::from_slice(&raw).ok()
}

/// Every partition's owner now (None: no lease yet).
async fn owners(kv: &async_nats::jetstream::kv::Store, partitions: u32) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        out.push(owner_of(kv, p).await.map(|l| l.owner));
    }
    out
}

/// Waits until every partition is owned by one of `names` and each of them
/// owns at least one.
async fn wait_shared(kv: &async_nats::jetstream::kv::Store, partitions: u32, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = owners(kv, partitions).await;
        let holders: BTreeSet<&str> = now.iter().flatten().map(String::as_str).collect();
        let all_owned = now
            .iter()
            .all(|o| o.as_deref().is_some_and(|o| names.contains(&o)));
        if all_owned && holders.len() == names.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never shared by {names:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `name`'s member key has stood still for `LEASE_TTL` (or is
/// gone): every member's board then counts it as no longer live, so no
/// graceful stop hands it a partition.
async fn wait_not_live(kv: &async_nats::jetstream::kv::Store, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let ttl = im_projectors::lease::LEASE_TTL;
    loop {
        let entry = kv.entry(format!("m.{name}")).await.unwrap();
        let quiet = entry.is_none_or(|e| {
            let age = time::OffsetDateTime::now_utc() - e.created;
            age.as_seconds_f64() > ttl.as_secs_f64() + 1.0
        });
        if quiet {
            return;
        }
        assert!(Instant::now() < deadline, "{name} still beats");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `p` is owned by `who` (any when None); returns the lease.
async fn wait_owner(kv: &async_nats::jetstream::kv::Store, p: u32, who: Option<&str>) -> Lease {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(lease) = owner_of(kv, p).await {
            if who.is_none_or(|w| lease.owner == w) {
                return lease;
            }
        }
        assert!(Instant::now() < deadline, "{p} never owned by {who:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_then_killed_owner_is_replaced_and_nothing_is_fanned_out_twice() {
    let s = Stack::start().await;
    let seen = count_deliveries(&s.client).await;
    let notices = count_notices(&s.client).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = s.url();
    let mut procs = [
        Some(spawn_member(&url, "a", da.path())),
        Some(spawn_member(&url, "b", db.path())),
    ];
    let js = async_nats::jetstream::new(s.client.clone());
    let kv = js.get_key_value(PARTITION_LEASES_BUCKET).await.unwrap();
    let conv = "g-procs";
    let p = s.topology.partition_of(conv);
    wait_owner(&kv, p, None).await;
    s.create(conv, &[("ann", Role::Admin), ("ben", Role::Member)])
        .await;
    // A steady stream of sends, each acked.
    let s = Arc::new(s);
    let (done, last) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(1)),
    );
    let sender = {
        let (s, done, last) = (s.clone(), done.clone(), last.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let (_, seq) = s.send(conv, "ann", "hi").await;
                last.store(seq, Ordering::Relaxed);
                // Receipts too: their stream is claimed and followed apart.
                if seq % 10 == 0 {
                    s.read(conv, "ben", seq).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let index = |name: &str| usize::from(name == "b");
    // SIGSTOP the owner past the lease: the other takes over; the stopped
    // one wakes fenced.
    let first = wait_owner(&kv, p, None).await;
    let stopped = procs[index(&first.owner)].as_ref().unwrap();
    signal(stopped, "STOP");
    let other = if first.owner == "a" { "b" } else { "a" };
    let took = Instant::now();
    let second = wait_owner(&kv, p, Some(other)).await;
    println!(
        "after SIGSTOP: {other} owns {p} in {:?} (epoch {})",
        took.elapsed(),
        second.epoch
    );
    tokio::time::sleep(LEASE_TTL).await;
    signal(stopped, "CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Now SIGKILL whichever owns it now (a rebalance may have handed it
    // back to the woken one): the other takes it.
    let now_owner = wait_owner(&kv, p, None).await.owner;
    let survivor = if now_owner == "a" { "b" } else { "a" };
    procs[index(&now_owner)].take();
    let killed = Instant::now();
    let third = wait_owner(&kv, p, Some(survivor)).await;
    println!(
        "after SIGKILL of {now_owner}: {survivor} owns {p} in {:?} (epoch {})",
        killed.elapsed(),
        third.epoch
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    let last = last.load(Ordering::Relaxed);
    // Every acked message is in history, through the survivor.
    assert_eq!(history_of(&s, conv).await, (1..=last).collect::<Vec<_>>());
    // The new owner delivers what was sent after the kill, and no event
    // reached anyone twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !["ann", "ben"]
        .iter()
        .all(|u| seen.lock().unwrap().contains_key(&(u.to_string(), last)))
    {
        assert!(
            Instant::now() < deadline,
            "the last message never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fanned out twice: {twice:?}");
    let missing: Vec<(String, u64)> = ["ann", "ben"]
        .iter()
        .flat_map(|u| (2..=last).map(move |q| (u.to_string(), q)))
        .filter(|k| !seen.contains_key(k))
        .collect();
    // Each one not delivered (claimed by an owner that died before
    // publishing) is notified: a notification at or past it reached the
    // member, which then reads history.
    let notices = notices.lock().unwrap();
    for (user, q) in &missing {
        assert!(
            notices.keys().any(|(u, n)| u == user && n >= q),
            "{user} neither got {q} nor a notification of it: {notices:?}"
        );
    }
    println!(
        "{last} messages; {} deliveries left to the notifications (claimed by an owner that died before publishing); {} notifications",
        missing.len(),
        notices.len()
    );
}

/// Every acked message of `conv` in its history, in order.
/// A conversation's history as of the log's end now: read with
/// `min_position` at it, so an owner that took the partition over on a
/// store behind it (a killed one folds its last commits again) answers
/// once it has them.
async fn history_of(s: &Stack, conv: &str) -> Vec<u64> {
    let end = conv_last_seq(&s.client).await;
    let mut in_history: Vec<u64> = Vec::new();
    let mut from = 1;
    while from != 0 {
        let query = Query::History(v1::HistoryQuery {
            conversation_id: conv.into(),
            from_seq: from,
            limit: 200,
            ..Default::default()
        });
        let R::History(page) = s.query(conv, (end, 0), query).await else {
            panic!("history")
        };
        let seqs = page.entries.iter().filter_map(|e| e.event.as_ref());
        in_history.extend(seqs.map(|e| e.conv_seq));
        from = page.next_seq;
    }
    in_history
}

/// Conversations in `n` different partitions.
fn spread(s: &Stack, n: usize) -> Vec<(String, u32)> {
    let mut taken = BTreeSet::new();
    (0..)
        .map(|i| format!("g-three-{i}"))
        .filter_map(|c| {
            let p = s.topology.partition_of(&c);
            taken.insert(p).then_some((c, p))
        })
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_survive_a_kill_a_stop_and_rejoins_under_load() {
    let s = Stack::start().await;
    let seen = count_deliveries(&s.client).await;
    let url = s.url();
    let names = ["a", "b", "c"];
    let dirs: BTreeMap<&str, tempfile::TempDir> = names
        .iter()
        .map(|n| (*n, tempfile::tempdir().unwrap()))
        .collect();
    let metrics = format!("127.0.0.1:{}", im_testkit::free_port());
    let start = |name: &str| {
        let mut args = vec!["--nats-url", &url, "--instance", name];
        if name == "a" {
            args.extend(["--metrics-listen", &metrics]);
        }
        spawn_im_projector(&args, dirs[name].path(), "in the pool as")
    };
    let mut procs: BTreeMap<&str, Proc> = names.iter().map(|n| (*n, start(n))).collect();
    let js = async_nats::jetstream::new(s.client.clone());
    let kv = js.get_key_value(PARTITION_LEASES_BUCKET).await.unwrap();
    let partitions = s.topology.partitions;
    wait_shared(&kv, partitions, &names).await;
    let convs = spread(&s, 6);
    // Members of their own per conversation: deliveries are counted by
    // (user, conv_seq).
    let member = |conv: &str, who: &str| format!("{who}-{conv}");
    for (conv, _) in &convs {
        let (ann, ben) = (member(conv, "ann"), member(conv, "ben"));
        s.create(conv, &[(&ann, Role::Admin), (&ben, Role::Member)])
            .await;
    }
    let s = Arc::new(s);
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (s, done, convs) = (s.clone(), done.clone(), convs.clone());
        tokio::spawn(async move {
            let mut last = BTreeMap::new();
            for round in 0.. {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let (conv, _) = &convs[round % convs.len()];
                let (_, seq) = s.send(conv, &format!("ann-{conv}"), "hi").await;
                if seq % 10 == 0 {
                    s.read(conv, &format!("ben-{conv}"), seq).await;
                }
                last.insert(conv.clone(), seq);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            last
        })
    };
    // kill -9 "b" ("a"'s metrics are read at the end), timing the take-over
    // of one of its partitions.
    let killed = "b";
    let p = owners(&kv, partitions)
        .await
        .iter()
        .position(|o| o.as_deref() == Some(killed))
        .expect("b owns a partition") as u32;
    procs.remove(killed);
    let at = Instant::now();
    let lease = wait_owner(&kv, p, None).await;
    let mut took = lease;
    while took.owner == killed {
        tokio::time::sleep(Duration::from_millis(100)).await;
        took = wait_owner(&kv, p, None).await;
    }
    println!(
        "kill -9 {killed}: partition {p} taken by {} in {:?}",
        took.owner,
        at.elapsed()
    );
    let survivors: Vec<&str> = names.iter().copied().filter(|n| *n != killed).collect();
    wait_shared(&kv, partitions, &survivors).await;
    // Once every board counts b as gone (its member key may have beaten
    // after its last lease renewal), SIGTERM the other of b and c: it
    // hands every partition over first, all to a.
    wait_not_live(&kv, killed).await;
    let stopped = "c";
    let mut proc = procs.remove(stopped).unwrap();
    signal(&proc, "TERM");
    let status = tokio::task::spawn_blocking(move || proc.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{stopped} exited with {status}");
    let after = owners(&kv, partitions).await;
    assert!(
        after.iter().all(|o| o.as_deref() == Some("a")),
        "{stopped} exited still owning some of {after:?}"
    );
    // Both join again, on their stores: the partitions are shared again.
    for name in [killed, stopped] {
        procs.insert(name, start(name));
    }
    wait_shared(&kv, partitions, &names).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    let last = sender.await.unwrap();
    for (conv, _) in &convs {
        let n = last.get(conv).copied().unwrap_or(1);
        assert_eq!(
            history_of(&s, conv).await,
            (1..=n).collect::<Vec<_>>(),
            "{conv}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered_last = |seen: &std::sync::MutexGuard<'_, _>| {
        let seen: &BTreeMap<(String, u64), u32> = seen;
        last.iter()
            .all(|(conv, n)| seen.contains_key(&(member(conv, "ben"), *n)))
    };
    while !delivered_last(&seen.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "the last messages never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let twice: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        // The creator, "owner", is in every conversation: its conv_seqs repeat.
        .filter(|((user, _), n)| **n > 1 && user != "owner")
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    assert!(twice.is_empty(), "fanned out twice: {twice:?}");
    // What "a" served through it: ready, with its partitions and changes.
    let addr: std::net::SocketAddr = metrics.parse().unwrap();
    let (status, _) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200);
    let (_, text) = http_get(addr, "/metrics").await;
    for family in [
        "im_projector_partitions{role=\"owner\"}",
        "im_pool_lease_changes_total{kind=\"created\"}",
        "im_pool_failover_seconds_count",
    ] {
        assert!(text.contains(family), "{family} not in {text}");
    }
}
