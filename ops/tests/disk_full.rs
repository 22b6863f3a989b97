//! A real full disk, as an operator meets it: `imctl up` with its projector
//! store on a small tmpfs (where the machine lets a test mount one), a log
//! larger than the disk, then more room. The gateway's `/readyz` says what
//! is wrong while it is full, nothing is lost, and once there is room the
//! projector catches up by itself and `imctl projections verify` passes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Kills a process when dropped: a failing test leaves no stack behind
/// (which would also hold the test run's output open).
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// `imctl up` on `url`, its data under `data`; returns it and its gateway.
fn up(url: &str, data: &std::path::Path) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args([
            "up",
            "--nats-url",
            url,
            "--gateway-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("IM_JWT_HS256_SECRET", "disk-full-test-secret-of-32-bytes!!")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut gateway = None;
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("imctl: gateway http://") {
            gateway = rest.split_whitespace().next().map(|a| a.parse().unwrap());
        }
        if line.contains("imctl: ready") {
            break;
        }
    }
    // What it prints later (its shutdown) still has a reader.
    std::thread::spawn(move || lines.for_each(drop));
    (child, gateway.expect("a gateway address"))
}

async fn readyz(gw: std::net::SocketAddr) -> (u16, String) {
    common::http_get(gw, "/readyz").await
}

/// Polls `/readyz` until `want` holds of its answer.
async fn readyz_until(gw: std::net::SocketAddr, what: &str, want: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (status, body) = readyz(gw).await;
        if want(status, &body) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_recovered_from_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path(), "4m") else {
        eprintln!("disk_full: this machine does not let a test mount a tmpfs; the fault-injected storage test covers the logic");
        return;
    };
    let server = im_testkit::NatsServer::start().await.unwrap();
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    im_streams::apply_streams(&js, &Default::default())
        .await
        .unwrap();
    let (mut stack, gw) = up(&url, dir.path());
    let _reaper = Reaper(stack.id());
    readyz_until(gw, "ready", |s, _| s == 200).await;

    // More log than 4 MiB of read models hold.
    im_ops::cmd::bench::rebuild::seed(&js, 30_000)
        .await
        .unwrap();
    readyz_until(gw, "reporting the full disk", |s, b| {
        s == 503 && b.contains("storage") && b.contains("No space left")
    })
    .await;

    disk.resize("512m");
    readyz_until(gw, "ready again", |s, _| s == 200).await;
    verify_all(&url);
    let _ = stack.kill();
    let _ = stack.wait();
}

/// `imctl projections verify --all` passes against `url`.
fn verify_all(url: &str) {
    let verify = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args([
            "projections",
            "verify",
            "--all",
            "--instance",
            "main",
            "--nats-url",
            url,
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(out.matches(": ok").count(), 7, "{out}");
}

/// Stopped (SIGTERM) while its disk is full, the projector leaves a store
/// that opens: started again once there is room, it goes on from its last
/// commit (nothing quarantined, nothing folded again) and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_on_a_full_disk_leaves_a_store_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path(), "4m") else {
        eprintln!("disk_full: this machine does not let a test mount a tmpfs");
        return;
    };
    let server = im_testkit::NatsServer::start().await.unwrap();
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    im_streams::apply_streams(&js, &Default::default())
        .await
        .unwrap();
    let (mut stack, gw) = up(&url, dir.path());
    let _reaper = Reaper(stack.id());
    readyz_until(gw, "ready", |s, _| s == 200).await;
    im_ops::cmd::bench::rebuild::seed(&js, 30_000)
        .await
        .unwrap();
    readyz_until(gw, "reporting the full disk", |s, b| {
        s == 503 && b.contains("storage")
    })
    .await;
    Command::new("kill")
        .arg("-TERM")
        .arg(stack.id().to_string())
        .status()
        .unwrap();
    let stopped = stack.wait().unwrap();
    assert!(stopped.success(), "{stopped}");
    // What sled leaves when its shutdown snapshot meets the full disk (seen
    // with a stop under load): an empty, unfinished snapshot, which sled
    // 0.34 takes for a corrupt store. Planted, so it is there every time.
    let store = dir.path().join("projector");
    std::fs::write(store.join("snap.0000000000FFFFFF.generating"), b"").unwrap_or(());
    disk.resize("512m");
    let (mut stack, gw) = up(&url, dir.path());
    let _reaper = Reaper(stack.id());
    readyz_until(gw, "ready again", |s, _| s == 200).await;
    let quarantined: Vec<String> = walk_names(dir.path())
        .into_iter()
        .filter(|n| n.contains("quarantined"))
        .collect();
    verify_all(&url);
    let _ = stack.kill();
    let _ = stack.wait();
    assert!(quarantined.is_empty(), "folded again: {quarantined:?}");
}

/// The names of everything under `dir`.
fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.path().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    out
}
