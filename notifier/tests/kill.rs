//! `im-notifier` as a process, killed with SIGKILL mid-run and started
//! again on its store: every window's notification arrives, in order per
//! user, each Idempotency-Key once after the receiver's dedupe.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{notification, wait_for, Stack, DEBOUNCE};
use im_streams::identities::Component;
use im_testkit::Receiver;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(stack: &Stack, receiver: &Receiver, secret: &std::path::Path) -> Proc {
    let auth = stack.kit.auth(Component::Notifier);
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-notifier"))
        .args(["--nats-url", &stack.kit.url()])
        .args(["--nats-user", auth.user.as_deref().unwrap()])
        .args(["--nats-password", auth.password.as_deref().unwrap()])
        .arg("--data-dir")
        .arg(stack.dir.path())
        .args(["--url", &receiver.url("/push")])
        .arg("--secret-file")
        .arg(secret)
        .args(["--debounce-ms", &DEBOUNCE.as_millis().to_string()])
        .args(["--backoff-base-ms", "200", "--backoff-max-ms", "1000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn im-notifier");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("ready") => break,
            Some(Ok(_)) => {}
            _ => panic!("im-notifier exited before it was ready"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    proc
}

#[tokio::test]
async fn a_killed_notifier_loses_nothing_and_repeats_only_under_one_key() {
    let stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let secret = stack.dir.path().join("secret");
    std::fs::write(&secret, common::SECRET).unwrap();
    let users = ["bo", "cy", "di"];
    for (i, u) in users.iter().enumerate() {
        stack.create(&format!("g{i}"), "amy", &users).await;
        stack.register(u, "phone", &format!("t-{u}")).await;
    }
    let mut notifier = Some(spawn(&stack, &receiver, &secret));
    // 12 rounds, each a window in each of 3 groups for 3 members: 108
    // notifications; the notifier killed twice on the way.
    let rounds = 12;
    for round in 0..rounds {
        for i in 0..users.len() {
            stack
                .send(&format!("g{i}"), "amy", &format!("r{round}"))
                .await;
        }
        if round == 4 || round == 8 {
            drop(notifier.take());
            tokio::time::sleep(Duration::from_millis(300)).await;
            notifier = Some(spawn(&stack, &receiver, &secret));
        }
        tokio::time::sleep(DEBOUNCE + Duration::from_millis(200)).await;
    }
    let expected = rounds * users.len() * users.len();
    wait_for(
        &receiver,
        Duration::from_secs(60),
        "every notification",
        |_| receiver.taken_once().len() >= expected,
    )
    .await;
    let taken = receiver.taken_once();
    assert_eq!(taken.len(), expected, "no window lost, none made twice");
    let windows: BTreeSet<(String, String, u64)> = taken
        .iter()
        .map(notification)
        .map(|n| {
            (
                n["userId"].as_str().unwrap().to_string(),
                n["conversationId"].as_str().unwrap().to_string(),
                n["firstConvSeq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        windows.len(),
        expected,
        "each (user, conversation, window) once"
    );
    for u in users {
        let times: Vec<u64> = taken
            .iter()
            .map(notification)
            .filter(|n| n["userId"] == u)
            .map(|n| n["atMs"].as_u64().unwrap())
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{u} in order: {times:?}"
        );
    }
    let repeats = receiver.received().len() - taken.len();
    println!("kill -9 twice: {expected} notifications, {repeats} repeats dropped by key");
}
