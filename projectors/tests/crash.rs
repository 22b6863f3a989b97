//! Crash safety: the projector binary SIGKILLed at random points during a
//! 50,000-event ingest and restarted each time; once caught up, every
//! projection's digest equals a fresh rebuild's.

mod common;

use std::process::Command;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use im_streams::{Action, Role};
use rand::{rngs::StdRng, Rng, SeedableRng};

const EVENTS_MIN: u64 = 50_000;
const KILLS_MIN: usize = 20;
const WRITERS: usize = 32;
const CONVERSATIONS: usize = 256;
/// The ingest waits for the next kill after each window, so at least
/// `KILLS_MIN` kills land while it is still running.
const WINDOW: u64 = EVENTS_MIN / (KILLS_MIN as u64 + 1);

async fn spawn_projector(url: &str, dir: &std::path::Path, engine: &'static str) -> Proc {
    let (url, dir) = (url.to_string(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let args = [
            "--nats-url",
            &url,
            "--instance",
            "crashy",
            "--partitions",
            "all",
            "--store-engine",
            engine,
        ];
        spawn_im_projector(&args, &dir, "im-projector: ready")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_points_then_caught_up_equals_a_fresh_rebuild() {
    sigkilled_on("sled").await
}

/// The same on a fjall store (`--store-engine fjall`), compared with a
/// fresh fold on sled: fjall recovers from every kill, and its read
/// models are sled's to the byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_on_a_fjall_store_then_caught_up_equals_a_fresh_fold_on_sled() {
    sigkilled_on("fjall").await
}

async fn sigkilled_on(engine: &'static str) {
    let s = Stack::start().await;
    let url = s.server.url();
    let dir = tempfile::tempdir().unwrap();
    let members = [
        ("a", Role::Admin),
        ("b", Role::Member),
        ("c", Role::Member),
        ("d", Role::Member),
    ];
    for i in 0..CONVERSATIONS {
        s.create(&format!("k{i}"), &members).await;
    }
    let mut child = spawn_projector(&url, dir.path(), engine).await;
    let kills_done = Arc::new(AtomicU64::new(0));

    // The ingest: writers own disjoint conversations (no CAS contention),
    // mostly messages, with reads, recalls and membership changes.
    let events = Arc::new(AtomicU64::new(CONVERSATIONS as u64));
    let ingesting = Arc::new(AtomicBool::new(true));
    let stack = Arc::new(s);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (s, events, kills_done) = (stack.clone(), events.clone(), kills_done.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            let mine: Vec<String> = (w..CONVERSATIONS)
                .step_by(WRITERS)
                .map(|i| format!("k{i}"))
                .collect();
            let mut last_rcpt = 0;
            while events.load(Ordering::Relaxed) < EVENTS_MIN {
                let kills = kills_done.load(Ordering::Relaxed);
                if (kills as usize) < KILLS_MIN
                    && events.load(Ordering::Relaxed) >= (kills + 1) * WINDOW
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let conv = &mine[rng.random_range(0..mine.len())];
                let who = ["a", "b", "c"][rng.random_range(0..3)];
                let (_, conv_seq) = s.send(conv, who, "x").await;
                events.fetch_add(1, Ordering::Relaxed);
                match rng.random_range(0..20) {
                    0..=3 => {
                        last_rcpt = s
                            .read(conv, ["a", "b", "c"][rng.random_range(0..3)], conv_seq)
                            .await
                    }
                    4 => {
                        s.run(conv, who, Action::Recall { conv_seq }).await;
                        events.fetch_add(1, Ordering::Relaxed);
                    }
                    5 => {
                        let role = im_streams::Role::Member;
                        let state = s.app.current_state(conv).await.unwrap();
                        let action = if state.is_member("d") {
                            Action::RemoveMember { user: "d".into() }
                        } else {
                            Action::AddMember {
                                user: "d".into(),
                                role,
                            }
                        };
                        s.run(conv, "a", action).await;
                        events.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            last_rcpt
        }));
    }

    let mut rng = StdRng::seed_from_u64(99);
    let (mut kills, mut kills_mid_ingest) = (0, 0);
    while kills < KILLS_MIN || ingesting.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..250))).await;
        if events.load(Ordering::Relaxed) < EVENTS_MIN {
            kills_mid_ingest += 1;
        } else {
            ingesting.store(false, Ordering::Relaxed);
        }
        drop(child);
        kills += 1;
        kills_done.store(kills as u64, Ordering::Relaxed);
        child = spawn_projector(&url, dir.path(), engine).await;
    }
    let mut rcpt_last = 0;
    for w in writers {
        rcpt_last = rcpt_last.max(w.await.unwrap());
    }
    let s = Arc::try_unwrap(stack).ok().expect("writers done");
    let conv_last = conv_last_seq(&s.client).await;
    let ingested = events.load(Ordering::Relaxed);
    println!("crash: events={ingested} conv_stream_last={conv_last} kills={kills} kills_mid_ingest={kills_mid_ingest}");
    assert!(ingested >= EVENTS_MIN);
    assert!(
        kills_mid_ingest >= KILLS_MIN,
        "only {kills_mid_ingest} kills landed during the ingest"
    );

    wait_caught_up(&s.client, "crashy", conv_last, rcpt_last).await;
    let mut s = s;
    let started = Instant::now();
    let _fresh = s.projector("fresh", None).await;
    wait_caught_up(&s.client, "fresh", conv_last, rcpt_last).await;
    println!(
        "crash: fresh rebuild of {conv_last} conv events took {:?}",
        started.elapsed()
    );
    let (crashed, fresh) = (
        status(&s.client, "crashy").await,
        status(&s.client, "fresh").await,
    );
    for name in im_projectors::projections::NAMES {
        assert_eq!(
            crashed[name].digest, fresh[name].digest,
            "{name} differs after {kills} kills"
        );
        assert_eq!(crashed[name].keys, fresh[name].keys, "{name}");
    }
    drop(child);
}

/// SIGTERM, and how long the process took to exit (it must exit 0).
fn terminate(mut proc: Proc) -> Duration {
    let started = Instant::now();
    let pid = proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let bound = im_projectors::projector::STOP_MAX + Duration::from_secs(10);
    loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            assert!(status.success(), "im-projector exited with {status}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "im-projector still running after {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM in the middle of an ingest, again and again: each time the
/// process exits 0 after the batch in hand, and once caught up every
/// projection equals a fresh rebuild (an acknowledgement past a commit
/// would have lost its events for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_ingest_stops_cleanly_and_loses_nothing() {
    const EVENTS: u64 = 6_000;
    const STOPS: usize = 8;
    let s = Stack::start().await;
    let url = s.server.url();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..16 {
        s.create(&format!("t{i}"), &[("a", Role::Admin), ("b", Role::Member)])
            .await;
    }
    let stack = Arc::new(s);
    let sent = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (s, sent) = (stack.clone(), sent.clone());
        writers.push(tokio::spawn(async move {
            while sent.fetch_add(1, Ordering::Relaxed) < EVENTS {
                let conv = format!("t{}", w * 2 + (sent.load(Ordering::Relaxed) % 2) as usize);
                let (_, conv_seq) = s.send(&conv, "b", "x").await;
                if conv_seq % 7 == 0 {
                    s.read(&conv, "a", conv_seq).await;
                }
            }
        }));
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..STOPS {
        let child = spawn_projector(&url, dir.path(), "sled").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let took = tokio::task::spawn_blocking(move || terminate(child))
            .await
            .unwrap();
        slowest = slowest.max(took);
    }
    for w in writers {
        w.await.unwrap();
    }
    let s = Arc::try_unwrap(stack).ok().expect("writers done");
    let js = async_nats::jetstream::new(s.client.clone());
    let last = |name: &'static str| {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream(name).await.unwrap();
            stream.info().await.unwrap().state.last_sequence
        }
    };
    let (conv_last, rcpt_last) = (last("IM_CONV").await, last("IM_RCPT").await);
    println!(
        "sigterm: {STOPS} stops, the slowest took {slowest:?}; conv {conv_last} rcpt {rcpt_last}"
    );
    let child = spawn_projector(&url, dir.path(), "sled").await;
    wait_caught_up(&s.client, "crashy", conv_last, rcpt_last).await;
    let mut s = s;
    let _fresh = s.projector("fresh", None).await;
    wait_caught_up(&s.client, "fresh", conv_last, rcpt_last).await;
    let (stopped, fresh) = (
        status(&s.client, "crashy").await,
        status(&s.client, "fresh").await,
    );
    for name in im_projectors::projections::NAMES {
        assert_eq!(stopped[name].digest, fresh[name].digest, "{name}");
    }
    drop(child);
}
