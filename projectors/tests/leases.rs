//! Partition leases against a real nats-server: one owner at a time, a
//! claim after a take-over is refused (fencing), a paused owner is
//! stopped by nothing but a take, a hand-over is adopted, and a watch keeps a board.

use std::time::{Duration, Instant};

use futures::StreamExt;
use im_projectors::lease::{apply_entry, Board, LeaseError, Leases, Member, LEASE_TTL};

async fn two() -> (im_testkit::Stack, Leases, Leases) {
    let kit = im_testkit::Stack::start().await;
    let js = async_nats::jetstream::new(kit.client.clone());
    let a = Leases::open(&js, "a").await.unwrap();
    let b = Leases::open(&js, "b").await.unwrap();
    (kit, a, b)
}

#[tokio::test]
async fn of_two_takers_of_a_free_partition_one_wins() {
    let (_kit, a, b) = two().await;
    let (ta, tb) = tokio::join!(a.take(3, None), b.take(3, None));
    let won = [ta.is_ok(), tb.is_ok()];
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{ta:?} {tb:?}");
    let loser = if won[0] { tb } else { ta };
    assert!(matches!(loser, Err(LeaseError::Lost { partition: 3, .. })));
}

#[tokio::test]
async fn a_claim_after_a_take_over_is_refused_and_positions_carry_over() {
    let (_kit, a, b) = two().await;
    let mut held = a.take(0, None).await.unwrap();
    a.claim(&mut held, 40, 7).await.unwrap();
    assert_eq!(
        (held.lease.conv, held.lease.rcpt, held.lease.epoch),
        (40, 7, 1)
    );
    // b took it over from the revision it saw standing.
    let taken = b
        .take(0, Some((held.lease.clone(), held.revision())))
        .await
        .unwrap();
    let l = &taken.lease;
    assert_eq!((l.owner.as_str(), l.epoch, l.conv, l.rcpt), ("b", 2, 40, 7));
    // a's next claim is refused: it publishes nothing more.
    match a.claim(&mut held, 41, 7).await {
        Err(LeaseError::Lost { partition: 0, .. }) => {}
        other => panic!("a stale owner's claim: {other:?}"),
    }
    // A take from a revision that moved since is refused too.
    assert!(matches!(
        a.take(0, Some((held.lease.clone(), held.revision()))).await,
        Err(LeaseError::Lost { .. })
    ));
}

/// No clock makes an owner stop: its claim after a pause (or an election
/// of the bucket's leader) lands when nobody took the partition meanwhile,
/// and is refused when somebody did.
#[tokio::test]
async fn a_claim_after_a_pause_lands_unless_the_partition_was_taken() {
    let (_kit, a, b) = two().await;
    let mut held = a.take(1, None).await.unwrap();
    tokio::time::sleep(LEASE_TTL).await;
    a.claim(&mut held, 1, 0).await.unwrap();
    let seen = (held.lease.clone(), held.revision());
    b.take(1, Some(seen)).await.unwrap();
    assert!(matches!(
        a.claim(&mut held, 2, 0).await,
        Err(LeaseError::Lost { partition: 1, .. })
    ));
}

#[tokio::test]
async fn a_hand_over_is_adopted_by_its_successor_only() {
    let (kit, a, b) = two().await;
    let js = async_nats::jetstream::new(kit.client.clone());
    let c = Leases::open(&js, "c").await.unwrap();
    let mut held = a.take(2, None).await.unwrap();
    a.claim(&mut held, 9, 0).await.unwrap();
    let revision = held.revision();
    let given = a.hand_over(held.clone(), "b").await.unwrap();
    assert_eq!((given.owner.as_str(), given.epoch, given.conv), ("b", 2, 9));
    // a can no longer claim; c cannot adopt what was given to b.
    assert!(a.claim(&mut held, 10, 0).await.is_err());
    assert!(c.adopt(2, given.clone(), revision + 1).await.is_err());
    let mut adopted = b.adopt(2, given, revision + 1).await.unwrap();
    b.claim(&mut adopted, 10, 0).await.unwrap();
    assert_eq!(adopted.lease.epoch, 2);
}

/// Under the shipped authorization, as the projector identity: its
/// permissions cover taking, claiming, announcing and watching.
#[tokio::test]
async fn a_watch_keeps_a_board_of_owners_and_members() {
    let kit = im_testkit::Stack::start_secured().await;
    let js = async_nats::jetstream::new(
        kit.connect_as(im_streams::identities::Component::Projector)
            .await,
    );
    let a = Leases::open(&js, "a").await.unwrap();
    let b = Leases::open(&js, "b").await.unwrap();
    let mut watch = a.watch().await.unwrap();
    let mut held = a.take(5, None).await.unwrap();
    a.claim(&mut held, 3, 0).await.unwrap();
    a.announce(&Member {
        applied: vec![(5, 3, 0)],
    })
    .await
    .unwrap();
    b.announce(&Member::default()).await.unwrap();
    b.leave().await.unwrap();
    let mut board = Board::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    // take, claim, two announces, one leave.
    for _ in 0..5 {
        let entry = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .expect("the watch")
            .unwrap()
            .unwrap();
        apply_entry(&mut board, &entry, Instant::now());
    }
    let now = Instant::now();
    let (lease, revision, stale) = board.lease(5, now).unwrap().unwrap();
    assert_eq!((lease.owner.as_str(), lease.conv, stale), ("a", 3, false));
    assert_eq!(revision, held.revision());
    assert_eq!(board.live_members(now), vec!["a".to_string()]);
    assert_eq!(board.member("a").unwrap().unwrap().applied, vec![(5, 3, 0)]);
}
