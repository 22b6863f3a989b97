//! The pool against a real nats-server (I32): instances share the
//! partitions by leases; an owner killed (its tasks aborted, as kill -9
//! would) is replaced within the lease, one that stops hands over, one
//! that joins takes its share; through each, every message reaches every
//! member exactly once (deliveries counted at `im.deliver.*.e`) and no
//! partition has two owners. On a 3-node R3 cluster, the lease bucket's
//! leader is killed: no lease goes stale meanwhile.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use im_projectors::pool::{Pool, PoolConfig};
use im_streams::identities::Component;
use im_streams::Role;
use tokio::sync::watch;

struct Member {
    task: tokio::task::JoinHandle<Result<(), im_projectors::pool::PoolError>>,
    stop: watch::Sender<bool>,
    owned: watch::Receiver<Vec<u32>>,
    _dir: tempfile::TempDir,
}

async fn join(s: &Stack, name: &str) -> Member {
    join_with(s.kit.connect_as(Component::Projector).await, name).await
}

async fn join_with(client: async_nats::Client, name: &str) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let clients = im_projectors::Clients {
        consume: client.clone(),
        publish: client,
    };
    let config = PoolConfig {
        kek: Default::default(),
        instance: name.into(),
        data_dir: dir.path().to_path_buf(),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        followers: 1,
        // Member b keeps its stores in fjall, the others in sled: every
        // pool here hands partitions between the two engines.
        store_engine: match name {
            "b" => im_projectors::store::Engine::Fjall,
            _ => im_projectors::store::Engine::Sled,
        },
    };
    let pool = Pool::new(clients, config).await.unwrap();
    let owned = pool.owned();
    let (stop, stopping) = watch::channel(false);
    let task = tokio::spawn(pool.run(stopping));
    Member {
        task,
        stop,
        owned,
        _dir: dir,
    }
}

/// Waits until the members own every partition between them, each once.
async fn shared(members: &[&Member], partitions: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lists: Vec<Vec<u32>> = members.iter().map(|m| m.owned.borrow().clone()).collect();
        let all: Vec<u32> = lists.iter().flatten().copied().collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        assert_eq!(
            all.len(),
            distinct.len(),
            "a partition owned twice: {lists:?}"
        );
        if distinct.len() == partitions as usize {
            return;
        }
        assert!(Instant::now() < deadline, "never shared: {lists:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message (conv_seq 2..=last) to both members, exactly once.
async fn all_delivered_once(seen: &Seen, last: u64) {
    let wanted: Vec<(String, u64)> = ["ann", "ben"]
        .iter()
        .flat_map(|u| (2..=last).map(move |seq| (u.to_string(), seq)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<_> = {
            let seen = seen.lock().unwrap();
            wanted
                .iter()
                .filter(|k| !seen.contains_key(*k))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never delivered: {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_owner_is_replaced_within_the_lease_and_nothing_is_delivered_twice() {
    let s = Stack::start().await;
    let seen = count_deliveries(&s.client).await;
    let a = join(&s, "a").await;
    let b = join(&s, "b").await;
    shared(&[&a, &b], s.topology.partitions).await;
    let conv = "g-pool";
    let p = s.topology.partition_of(conv);
    s.create(conv, &[("ann", Role::Admin), ("ben", Role::Member)])
        .await;
    for i in 0..5 {
        s.send(conv, "ann", &format!("m{i}")).await;
    }
    all_delivered_once(&seen, 6).await;
    let a_owns = a.owned.borrow().contains(&p);
    let (dead, alive) = match a_owns {
        true => (a, b),
        false => (b, a),
    };
    let leases = async_nats::jetstream::new(s.client.clone())
        .get_key_value(im_projectors::lease::PARTITION_LEASES_BUCKET)
        .await
        .unwrap();
    let key = im_projectors::lease::lease_key(p);
    let before: im_projectors::lease::Lease =
        serde_json::from_slice(&leases.get(&key).await.unwrap().unwrap()).unwrap();
    dead.task.abort();
    let killed = Instant::now();
    // Sent once the partition is taken over: a message sent while the
    // killed owner's tasks are still being cancelled may be claimed by it
    // and never published (left to sync, I32; counted by
    // `pool_processes.rs`), which this test does not look at.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let raw = leases.get(&key).await.unwrap().unwrap();
        let lease: im_projectors::lease::Lease = serde_json::from_slice(&raw).unwrap();
        if lease.epoch > before.epoch {
            break lease;
        }
        assert!(Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "taken over {:?} after the kill: {after:?}",
        killed.elapsed()
    );
    assert_ne!(before.owner, after.owner, "taken over");
    assert_eq!(after.epoch, before.epoch + 1);
    for i in 5..10 {
        s.send(conv, "ann", &format!("m{i}")).await;
    }
    all_delivered_once(&seen, 11).await;
    println!(
        "failover: every delivery after the kill within {:?}",
        killed.elapsed()
    );
    shared(&[&alive], s.topology.partitions).await;
    drop(dead);
    alive.stop.send_replace(true);
    alive.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_instance_takes_its_share_and_a_stopping_one_hands_over() {
    let s = Stack::start().await;
    let seen = count_deliveries(&s.client).await;
    let a = join(&s, "a").await;
    shared(&[&a], s.topology.partitions).await;
    let conv = "g-pool";
    s.create(conv, &[("ann", Role::Admin), ("ben", Role::Member)])
        .await;
    let mut sent = 1;
    let mut send_some = async |n: u64| {
        for _ in 0..n {
            s.send(conv, "ann", "hi").await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    };
    send_some(5).await;
    let b = join(&s, "b").await;
    // Sends go on while b takes its share.
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.owned.borrow().len() < (s.topology.partitions / 2) as usize {
        assert!(Instant::now() < deadline, "b never took its share");
        send_some(5).await;
    }
    shared(&[&a, &b], s.topology.partitions).await;
    let last = send_some(5).await;
    all_delivered_once(&seen, last).await;
    // a stops: it hands every partition to b before it ends.
    a.stop.send_replace(true);
    let stopping = Instant::now();
    let last = send_some(5).await;
    a.task.await.unwrap().unwrap();
    println!("hand-over on stop took {:?}", stopping.elapsed());
    shared(&[&b], s.topology.partitions).await;
    all_delivered_once(&seen, last).await;
    b.stop.send_replace(true);
    b.task.await.unwrap().unwrap();
}

/// Three members started over a log that already holds conversations in
/// many partitions: each partition's claim starts at its own last event
/// (not the stream's end, which its followers could never reach), so
/// hand-overs to the assigned owners complete, every partition is served
/// at the log's end, and nothing old is fanned out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_started_over_an_existing_log_settles_and_serves_it() {
    let s = Stack::start().await;
    let convs: Vec<String> = (0..12).map(|i| format!("old-{i}")).collect();
    let mut last = 0;
    for conv in &convs {
        s.create(conv, &[("ann", Role::Admin), ("ben", Role::Member)])
            .await;
        last = s.send(conv, "ann", "before the pool").await.0;
    }
    let seen = count_deliveries(&s.client).await;
    let members = [
        join(&s, "a").await,
        join(&s, "b").await,
        join(&s, "c").await,
    ];
    let names = ["a", "b", "c"].map(String::from);
    let kv = async_nats::jetstream::new(s.client.clone())
        .get_key_value(im_projectors::lease::PARTITION_LEASES_BUCKET)
        .await
        .unwrap();
    let assigned = im_projectors::lease::assign(s.topology.partitions, &names, 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut settled = true;
        for (p, (owner, _)) in assigned.iter().enumerate() {
            let raw = kv
                .get(im_projectors::lease::lease_key(p as u32))
                .await
                .unwrap();
            let lease: Option<im_projectors::lease::Lease> =
                raw.and_then(|r| serde_json::from_slice(&r).ok());
            settled &= lease.is_some_and(|l| l.owner == *owner);
            settled &= members
                .iter()
                .any(|m| m.owned.borrow().contains(&(p as u32)));
        }
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool never settled on its assignment"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each served at the log's end (an owner unit may still be starting).
    for conv in &convs {
        let req = im_schema::v1::QueryRequest {
            min_position: last,
            query: Some(im_schema::v1::query_request::Query::History(
                im_schema::v1::HistoryQuery {
                    conversation_id: conv.clone(),
                    limit: 10,
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let subject = im_streams::subjects::query_subject(s.topology.partition_of(conv));
        let page = loop {
            let asked = s
                .client
                .request(subject.clone(), im_schema::encode(&req).into());
            if let Ok(reply) = asked.await {
                let answer: im_schema::v1::QueryResponse =
                    im_schema::decode(&reply.payload).unwrap();
                if let Some(im_schema::v1::query_response::Result::History(page)) = answer.result {
                    break page;
                }
            }
            assert!(Instant::now() < deadline, "{conv} never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(page.entries.len(), 2, "{conv}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "old events fanned out again"
    );
}

/// An owner that claimed a batch and died before publishing it: its
/// successor notifies the members of the batch's conversations (a
/// `Deliver` without the event), so a client connected throughout reads
/// the message from history instead of waiting for the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_claimed_but_never_published_is_notified_by_the_successor() {
    use im_projectors::lease::{Claimed, Leases as Bucket};
    let s = Stack::start().await;
    let (seen, notices) = (
        count_deliveries(&s.client).await,
        count_notices(&s.client).await,
    );
    let conv = "g-ghost";
    let p = s.topology.partition_of(conv);
    let (created, _) = s
        .create(conv, &[("ann", Role::Admin), ("ben", Role::Member)])
        .await;
    // A ghost owner takes the partition, claims the next message's
    // fan-out, and is never heard of again.
    let js = async_nats::jetstream::new(s.client.clone());
    let ghost = Bucket::open(&js, "ghost").await.unwrap();
    let from = Claimed {
        conv: created,
        rcpt: 0,
    };
    let mut held = ghost.take_from(p, None, from).await.unwrap();
    let (pos, seq) = s.send(conv, "ann", "claimed, never published").await;
    ghost.claim(&mut held, pos, 0).await.unwrap();
    let a = join(&s, "a").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = [("ann".to_string(), seq), ("ben".to_string(), seq)];
    while !want.iter().all(|k| notices.lock().unwrap().contains_key(k)) {
        assert!(
            Instant::now() < deadline,
            "never notified: {:?}",
            notices.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.owned.borrow().contains(&p));
    assert!(
        !seen.lock().unwrap().contains_key(&("ann".to_string(), seq)),
        "the claimed event was published by the successor too"
    );
    // What comes after is delivered as usual.
    let (_, next) = s.send(conv, "ann", "after").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen
        .lock()
        .unwrap()
        .contains_key(&("ben".to_string(), next))
    {
        assert!(
            Instant::now() < deadline,
            "the next message never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On a 3-node cluster with the lease bucket R3, kill -9 of the node that
/// leads it: nobody can write the bucket until a new leader is elected
/// (4-9 s, often longer than the lease), so no owner can renew; the
/// members count none of that against the owners (`Trust`): no partition
/// changes owner and every partition answers as soon as the bucket does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_lease_buckets_leader_leaves_no_partition_without_an_owner() {
    use im_projectors::lease::{LEASE_TTL, PARTITION_LEASES_BUCKET};

    let mut cluster = im_testkit::NatsCluster::start(3).await.unwrap();
    let settings = im_streams::StreamSettings {
        replicas: 3,
        ..Default::default()
    };
    let admin = cluster.connect().await;
    let js = async_nats::jetstream::new(admin.clone());
    let topology = im_streams::apply_streams(&js, &settings)
        .await
        .unwrap()
        .topology;
    let list = cluster.urls().join(",");
    let nats = im_streams::connect::NatsArgs::new(&list);
    let client = || nats.connect("pool");
    let (a, b) = (
        join_with(client().await.unwrap(), "a").await,
        join_with(client().await.unwrap(), "b").await,
    );
    shared(&[&a, &b], topology.partitions).await;
    let bucket = format!("KV_{PARTITION_LEASES_BUCKET}");
    let info = js
        .get_stream(&bucket)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let leader = info.cluster.unwrap().leader.unwrap();
    let dead: usize = leader.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    // The observer on a node that lives.
    let alive = (dead + 1) % 3;
    let observer = async_nats::connect(cluster.nodes[alive].url())
        .await
        .unwrap();
    let kv = async_nats::jetstream::new(observer.clone())
        .get_key_value(PARTITION_LEASES_BUCKET)
        .await
        .unwrap();
    // Polled, not watched: a watch's consumer lives on the stream's leader
    // and is recreated only after missed heartbeats.
    let mut leases = Leases::new(topology.partitions);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Balanced (`assign`: a even, b odd) and settled before the kill.
    while !leases.balanced() {
        assert!(
            Instant::now() < deadline,
            "never balanced: {:?}",
            leases.owners
        );
        leases.poll(&kv).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    leases.poll(&kv).await;
    let before = leases.owners.clone();
    cluster.nodes[dead].kill();
    let killed = Instant::now();
    while killed.elapsed() < 3 * LEASE_TTL {
        leases.poll(&kv).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The election (4-9 s in nats-server) stops every write, renewals
    // among them; the members do not count it against the owners.
    println!(
        "leader {leader} killed: leases stood still up to {:?} (partitions {:?} past the lease)",
        leases.longest, leases.stale
    );
    assert_eq!(leases.owners, before, "a partition changed owner");
    for p in 0..topology.partitions {
        let query = im_schema::v1::query_request::Query::Status(Default::default());
        let subject = im_streams::subjects::query_subject(p);
        let answer = query_at(&observer, subject, (0, 0), query).await;
        assert!(
            matches!(answer, im_schema::v1::query_response::Result::Status(_)),
            "{p}: {answer:?}"
        );
    }
    drop((a, b));
}

/// What a poller of the lease bucket saw: each partition's owner and
/// epoch, and how long its revision stood still.
struct Leases {
    seen: Vec<Option<(u64, Instant)>>,
    owners: Vec<Option<(String, u64)>>,
    stale: BTreeSet<usize>,
    longest: Duration,
}

impl Leases {
    fn new(partitions: u32) -> Leases {
        Leases {
            seen: vec![None; partitions as usize],
            owners: vec![None; partitions as usize],
            stale: BTreeSet::new(),
            longest: Duration::ZERO,
        }
    }

    async fn poll(&mut self, kv: &async_nats::jetstream::kv::Store) {
        use im_projectors::lease::{lease_key, Lease, LEASE_TTL};
        let now = Instant::now();
        for p in 0..self.seen.len() {
            let Ok(Some(e)) = kv.entry(lease_key(p as u32)).await else {
                continue;
            };
            let lease: Lease = serde_json::from_slice(&e.value).unwrap();
            self.owners[p] = Some((lease.owner, lease.epoch));
            match self.seen[p] {
                Some((r, since)) if r == e.revision => {
                    self.longest = self.longest.max(now - since);
                    if now - since >= LEASE_TTL {
                        self.stale.insert(p);
                    }
                }
                _ => self.seen[p] = Some((e.revision, now)),
            }
        }
    }

    fn balanced(&self) -> bool {
        self.owners.iter().enumerate().all(|(p, o)| {
            let want = if p % 2 == 0 { "a" } else { "b" };
            o.as_ref().is_some_and(|(owner, _)| owner == want)
        })
    }
}
