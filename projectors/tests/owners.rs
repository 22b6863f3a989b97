//! Units of the pool against a real nats-server: an owner claims each
//! batch's fan-out before publishing it, a follower folds nothing past the
//! claim, and after a take-over the stale owner publishes nothing while the
//! new one publishes exactly what follows the claim: every message reaches
//! every member once.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use im_projectors::lease::{lease_key, Claimed, LeaseRole, Leases, OwnerGate};
use im_projectors::Serves;
use im_streams::Role;

/// The claim on a partition as `leases` watches it.
async fn watch_claim(leases: &Leases, partition: u32) -> tokio::sync::watch::Receiver<Claimed> {
    let (tx, rx) = tokio::sync::watch::channel(Claimed::default());
    let mut watch = leases.watch().await.unwrap();
    let key = lease_key(partition);
    tokio::spawn(async move {
        while let Some(Ok(entry)) = watch.next().await {
            if entry.key == key {
                if let Ok(lease) = serde_json::from_slice(&entry.value) {
                    tx.send_replace(Claimed::of(&lease));
                }
            }
        }
    });
    rx
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_take_over_fences_the_old_owner_and_every_message_reaches_everyone_once() {
    let mut s = Stack::start().await;
    let conv = "g-owners";
    let p = s.topology.partition_of(conv);
    let seen = count_deliveries(&s.client).await;
    let js = async_nats::jetstream::new(s.client.clone());
    let (a, b) = (
        Leases::open(&js, "a").await.unwrap(),
        Leases::open(&js, "b").await.unwrap(),
    );
    let unit = |s: &mut Stack, name: &str, role: LeaseRole| {
        let mut config = s.kit.projector_config(name);
        config.partitions = Some(vec![p]);
        config.fanout = matches!(role, LeaseRole::Owner(_));
        config.serves = match config.fanout {
            true => Serves::Clients,
            false => Serves::OwnerOnly,
        };
        config.lease = Some(role);
        config
    };
    let gate_a = OwnerGate::new(a.clone(), a.take(p, None).await.unwrap());
    let config = unit(&mut s, "a", LeaseRole::Owner(gate_a.clone()));
    let mut owner_a = s.kit.projector(config).await;
    let claim = watch_claim(&b, p).await;
    let follower_config = unit(&mut s, "b", LeaseRole::Follower(claim));
    let follower_dir = follower_config.data_dir.clone();
    let follower = s.kit.projector(follower_config).await;

    s.create(conv, &[("ann", Role::Admin), ("ben", Role::Member)])
        .await;
    let mut last = 0;
    for i in 0..5 {
        last = s.send(conv, "ann", &format!("m{i}")).await.0;
    }
    wait_caught_up(&s.client, "a", last, 0).await;
    wait_caught_up(&s.client, "b", last, 0).await;
    let claimed = gate_a.holding().await.lease;
    assert!(claimed.conv >= last, "the owner claimed what it published");

    // b takes the partition over (a is alive: it learns at its next claim).
    let taken = b
        .take(
            p,
            Some((claimed.clone(), gate_a.holding().await.revision())),
        )
        .await
        .unwrap();
    let mut after = Vec::new();
    for i in 5..8 {
        after.push(s.send(conv, "ann", &format!("m{i}")).await.1);
    }
    let stopped = tokio::time::timeout(Duration::from_secs(20), owner_a.wait())
        .await
        .expect("the fenced owner stops");
    assert!(
        matches!(stopped, Err(im_projectors::RunError::Lease(_))),
        "{stopped:?}"
    );
    // The follower folded nothing past the claim, which did not move.
    let st = status_of(&s.client, "b", false).await;
    assert!(
        st.values().all(|p| p.conv_checkpoint <= claimed.conv),
        "{st:?}"
    );

    // b becomes the owner on the store it kept.
    follower.finish().await.unwrap();
    let mut config = unit(
        &mut s,
        "b",
        LeaseRole::Owner(OwnerGate::new(b.clone(), taken)),
    );
    config.data_dir = follower_dir;
    let _owner_b = s.kit.projector(config).await;
    for i in 8..10 {
        after.push(s.send(conv, "ann", &format!("m{i}")).await.1);
    }
    // Every message (conv_seq 2..=11) to both members, exactly once.
    let wanted: Vec<(String, u64)> = ["ann", "ben"]
        .iter()
        .flat_map(|u| (2..=11).map(move |seq| (u.to_string(), seq)))
        .collect();
    eventually("every delivery", || {
        let seen = seen.lock().unwrap();
        wanted.iter().all(|k| seen.contains_key(k))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(after.last(), Some(&11));
}
