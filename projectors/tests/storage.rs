//! When the disk refuses writes: the projector stops acknowledging at the
//! first storage error, says so (heartbeat, so `/readyz`; log; metric),
//! answers queries from what it committed, and recovers by itself when the
//! disk takes writes again; a store whose files cannot be trusted is
//! quarantined and rebuilt from the log. Each ends equal to a fresh fold.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use im_projectors::store::StoreFaults;
use im_projectors::{supervisor, Clients, ProjectorConfig};
use im_schema::v1::{self, query_request::Query, query_response::Result as R};
use im_streams::Role;

fn config(dir: &std::path::Path, faults: Option<Arc<StoreFaults>>) -> ProjectorConfig {
    ProjectorConfig {
        kek: Default::default(),
        instance: "main".into(),
        partitions: None,
        data_dir: dir.to_path_buf(),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        fanout: true,
        store_faults: faults,
        store_engine: Default::default(),
        serves: im_projectors::Serves::Clients,
        lease: None,
        projections: None,
    }
}

/// Starts a supervised projector; returns its task once it runs.
async fn supervised(
    s: &Stack,
    config: ProjectorConfig,
) -> tokio::task::JoinHandle<Result<(), im_projectors::ProjectorError>> {
    let clients = Clients {
        consume: s.client.clone(),
        publish: s.client.clone(),
    };
    let (current, mut started) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(supervisor::run(
        clients,
        config,
        current,
        tokio::sync::watch::channel(false).1,
    ));
    tokio::time::timeout(Duration::from_secs(30), started.wait_for(Option::is_some))
        .await
        .expect("started in time")
        .expect("running");
    task
}

/// Every projection's digest of instance `main` equals that of a fresh
/// instance folding the whole log.
async fn assert_equal_to_a_fresh_fold(s: &mut Stack, last: u64) {
    let _fresh = s.projector("fresh", None).await;
    wait_caught_up(&s.client, "fresh", last, 0).await;
    let (live, fresh) = (
        status(&s.client, "main").await,
        status(&s.client, "fresh").await,
    );
    for name in im_projectors::projections::NAMES {
        assert_eq!(live[name].digest, fresh[name].digest, "{name}");
        assert!(live[name].keys > 0, "{name}");
    }
}

/// The conv seqs of the deliveries waiting on `sub`, until none comes for
/// two seconds.
async fn delivered_seqs(sub: &mut async_nats::Subscriber) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        let env: v1::Envelope = im_schema::decode(&msg.payload).unwrap();
        if let Some(v1::envelope::Payload::Deliver(d)) = env.payload {
            seqs.push(d.conv_seq);
        }
    }
    seqs
}

/// The next heartbeat of `main` whose problem satisfies `pick`.
async fn heartbeat_until(
    beats: &mut async_nats::Subscriber,
    pick: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, beats.next())
            .await
            .expect("a heartbeat in time")
            .unwrap();
        let beat: v1::ProjectorHeartbeat = im_schema::decode(&msg.payload).unwrap();
        if pick(&beat.problem) {
            return beat.problem;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_stops_acks_is_reported_and_passes_by_itself() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("im_projectors=info")
        .try_init();
    let mut s = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(StoreFaults::default());
    let _p = supervised(&s, config(dir.path(), Some(faults.clone()))).await;
    s.create("g1", &[("bob", Role::Member)]).await;
    let mut before = 0;
    for i in 0..20 {
        before = s.send("g1", "bob", &format!("before {i}")).await.0;
    }
    wait_caught_up(&s.client, "main", before, 0).await;
    let mut beats = s.client.subscribe("im.projector.main.alive").await.unwrap();
    let mut to_bob = s.client.subscribe("im.deliver.bob.>").await.unwrap();

    faults.set_full(true);
    let mut last = 0;
    for i in 0..30 {
        last = s.send("g1", "bob", &format!("while full {i}")).await.0;
    }
    let problem = heartbeat_until(&mut beats, |p| !p.is_empty()).await;
    assert!(
        problem.contains("storage") && problem.contains("no space"),
        "{problem}"
    );
    // Deliveries leave before the commit (I12), once each however often
    // the failed commit is tried again; a sync never answers without them.
    let delivered = delivered_seqs(&mut to_bob).await;
    assert!(!delivered.is_empty(), "delivered while full");
    let mut unique = delivered.clone();
    unique.dedup();
    assert_eq!(unique, delivered, "delivered once each");
    let sync = |after_delivered| v1::QueryRequest {
        after_delivered,
        query: Some(Query::ConvList(v1::ConvListQuery {
            user_id: "bob".into(),
            limit: 10,
            ..Default::default()
        })),
        ..Default::default()
    };
    let subject = im_projectors::query::partition_subject(s.topology.partition_of("g1"));
    // While the store cannot commit, a sync waits for what was delivered,
    // then answers from what the store holds (not refused for as long as
    // the disk stays full).
    let waited = std::time::Instant::now();
    let R::ConvList(stale) = request(&s.client, subject.clone(), sync(true)).await else {
        panic!("a sync refused while the disk is full")
    };
    assert!(
        waited.elapsed() >= im_projectors::query::MIN_POSITION_WAIT,
        "it waited"
    );
    let held = stale.items[0].entry.as_ref().unwrap().last_seq;
    assert!(held < *delivered.last().unwrap(), "{held}");
    // Queries are answered from what was committed; nothing past it is
    // acknowledged, so the server still holds the rest for it.
    let st = status_of(&s.client, "main", false).await;
    assert!(st.values().all(|p| p.conv_checkpoint < last), "{st:?}");
    let js = async_nats::jetstream::new(s.client.clone());
    let stream = js.get_stream("IM_CONV").await.unwrap();
    let consumer = stream.consumer_info("main_conv").await.unwrap().clone();
    assert!(
        consumer.ack_floor.stream_sequence <= st["history"].conv_checkpoint,
        "acked past the commit: {consumer:?}"
    );

    faults.set_full(false);
    wait_caught_up(&s.client, "main", last, 0).await;
    heartbeat_until(&mut beats, str::is_empty).await;
    let R::ConvList(list) = request(&s.client, subject, sync(true)).await else {
        panic!("the sync is answered once committed")
    };
    let entry = list.items[0].entry.as_ref().unwrap();
    assert!(entry.last_seq >= *delivered.last().unwrap(), "{entry:?}");
    assert!(
        im_projectors::projector::STORAGE_ERRORS.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "counted"
    );
    assert_equal_to_a_fresh_fold(&mut s, last).await;
}

/// A storage error is never a verdict: while reading the conversations'
/// chain heads fails, no event is dead-lettered and no checkpoint moves;
/// once they can be read again every event is applied, equal to a fresh
/// fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_read_dead_letters_nothing_and_moves_no_checkpoint() {
    let mut s = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(StoreFaults::default());
    let _p = supervised(&s, config(dir.path(), Some(faults.clone()))).await;
    s.create("g1", &[("bob", Role::Member)]).await;
    let (before, _) = s.send("g1", "bob", "before").await;
    wait_caught_up(&s.client, "main", before, 0).await;
    let mut beats = s.client.subscribe("im.projector.main.alive").await.unwrap();
    faults.set_unreadable(Some(&[im_projectors::chain::HEAD]));
    s.create("g2", &[("bob", Role::Member)]).await;
    let mut last = 0;
    for i in 0..10 {
        last = s
            .send("g1", "bob", &format!("while unreadable {i}"))
            .await
            .0;
    }
    let problem = heartbeat_until(&mut beats, |p| !p.is_empty()).await;
    assert!(problem.contains("storage"), "{problem}");
    // Nothing was judged: the store says so once it can be read (and the
    // supervisor has started the instance again).
    faults.set_unreadable(None);
    heartbeat_until(&mut beats, str::is_empty).await;
    wait_caught_up(&s.client, "main", last, 0).await;
    let st = status(&s.client, "main").await;
    for name in im_projectors::projections::NAMES {
        assert_eq!(st[name].dead_letters, 0, "{name}");
    }
    assert_equal_to_a_fresh_fold(&mut s, last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_will_not_open_is_quarantined_and_rebuilt_from_the_log() {
    let mut s = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let first = supervised(&s, config(&store, None)).await;
    s.create("g1", &[("bob", Role::Member)]).await;
    let mut last = 0;
    for i in 0..20 {
        last = s.send("g1", "bob", &format!("m{i}")).await.0;
    }
    wait_caught_up(&s.client, "main", last, 0).await;
    first.abort();
    let _ = first.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Its files are garbage now, as a crash on a full disk left them.
    for entry in walk(&store) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0xA5; len.max(64)]).unwrap();
    }
    let _p = supervised(&s, config(&store, None)).await;
    wait_caught_up(&s.client, "main", last, 0).await;
    let quarantined: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("store.quarantined-"))
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_equal_to_a_fresh_fold(&mut s, last).await;
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A tmpfs mounted for the test (None where the machine does not allow
/// it), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A store that is a mount point cannot be renamed aside: it is moved
/// into a folder of its own, taking no room (a full disk too); where not
/// even that folder can be made (no inode left) it is deleted. A fresh
/// store opens there.
#[test]
fn a_quarantine_takes_no_room_even_on_a_mount_point_or_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let Some(_disk) = Tmpfs::mount(&store, "1m") else {
        eprintln!("storage: this machine does not let a test mount a tmpfs");
        return;
    };
    std::fs::write(store.join("db"), vec![0xA5; 200 * 1024]).unwrap();
    let aside = im_projectors::projector::quarantine(&store).unwrap();
    assert!(
        aside.starts_with(&store),
        "moved inside the mount: {aside:?}"
    );
    assert!(aside.join("db").is_file());
    assert!(!store.join("db").exists());
    // Full of data, a folder still takes no room.
    let _ = std::fs::write(store.join("filler"), vec![0u8; 2 * 1024 * 1024]);
    let again = im_projectors::projector::quarantine(&store).unwrap();
    assert!(again.join("filler").is_file(), "{again:?}");
    drop(_disk);
    im_projectors::store::Store::open(&store).unwrap();
    // Out of inodes: not even a folder can be made; the store goes.
    let tight = dir.path().join("tight");
    std::fs::create_dir(&tight).unwrap();
    let Some(_tight) = Tmpfs::mount(&tight, "1m,nr_inodes=3") else {
        return;
    };
    std::fs::write(tight.join("db"), b"x").unwrap();
    std::fs::write(tight.join("conf"), b"x").unwrap();
    let gone = im_projectors::projector::quarantine(&tight).unwrap();
    assert_eq!(gone, tight);
    let left: Vec<_> = std::fs::read_dir(&tight).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A store still held by another handle (the last instance's, on its way
/// out) is waited for, not taken for a disk error: the instance starts as
/// soon as the handle goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_still_held_is_waited_for_and_then_opened() {
    let s = Stack::start().await;
    s.create("g1", &[("bob", Role::Member)]).await;
    let (last, _) = s.send("g1", "bob", "hi").await;
    let dir = tempfile::tempdir().unwrap();
    let held = im_projectors::store::Store::open(dir.path()).unwrap();
    let clients = Clients {
        consume: s.client.clone(),
        publish: s.client.clone(),
    };
    let (current, mut started) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(supervisor::run(
        clients,
        config(dir.path(), None),
        current,
        tokio::sync::watch::channel(false).1,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(started.borrow().is_none(), "started on a held store");
    assert!(!task.is_finished(), "gave up at once");
    drop(held);
    tokio::time::timeout(Duration::from_secs(30), started.wait_for(Option::is_some))
        .await
        .expect("started once the handle went")
        .unwrap();
    wait_caught_up(&s.client, "main", last, 0).await;
    task.abort();
}
