//! `audit`: the auditor's tools over a seeded log beside the raw ordered
//! read of the same stream on the same server. `im-replay verify` (chain,
//! signatures, rules, uniqueness) and `im-replay export --format jsonl`
//! run as child processes, as an auditor runs them, their peak RSS read
//! from /proc while they run; then the log grows by a hundredth and
//! `verify --state` reads only the new events.
//!
//! No stack: a bare nats-server with the streams applied, so no projector
//! folds the log while it is read (the figures are the tools' alone).

use std::time::{Duration, Instant};

use anyhow::Context;

use super::rebuild::{raw_read, seed, seed_plan, Seeding};
use super::{Figures, Size};

/// How often a child's peak RSS is read while it runs (`VmHWM` is a
/// peak already: a sample misses only what grows after the last one).
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The peak resident set of a running process (`VmHWM`), bytes.
pub(super) fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs `work` to its end, reading `read(pid)` (a memory figure) at once
/// and every `RSS_SAMPLE_EVERY`: its output and the largest figure read
/// (a process that ends before the first tick still gives one).
pub(super) async fn sampled<T>(
    work: impl std::future::Future<Output = T>,
    pid: u32,
    read: fn(u32) -> Option<u64>,
) -> (T, u64) {
    tokio::pin!(work);
    let mut peak = read(pid).unwrap_or(0);
    loop {
        tokio::select! {
            out = &mut work => return (out, peak),
            _ = tokio::time::sleep(RSS_SAMPLE_EVERY) => {
                peak = read(pid).unwrap_or(peak).max(peak);
            }
        }
    }
}

/// Runs `im-replay <args>` to its end, output discarded; its seconds and
/// peak RSS (bytes, as last read before it ended).
pub(super) async fn timed_replay(url: &str, args: &[&str]) -> anyhow::Result<(f64, u64)> {
    let exe = crate::cmd::check::procs::sibling("im-replay")?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .arg("--nats-url")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running im-replay {}", args.join(" ")))?;
    let pid = child.id().context("im-replay's pid")?;
    let mut stderr = child.stderr.take().context("im-replay's stderr")?;
    let said = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let (status, peak) = sampled(child.wait(), pid, peak_rss_bytes).await;
    let status = status?;
    let secs = started.elapsed().as_secs_f64();
    let said = said.await.unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "im-replay {}: {status}\n{said}",
        args.join(" ")
    );
    eprintln!("audit: im-replay {}: {}", args.join(" "), said.trim());
    Ok((secs, peak))
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let (server, client, js) = super::bare_server().await?;
    let url = server.url();
    let started = Instant::now();
    seed(&js, size.events).await?;
    let last = super::probe::conv_last_seq(&client).await?;
    eprintln!(
        "audit: seeded {last} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let read = raw_read(&js, last).await?;
    let raw_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(read == last, "the raw read saw {read} of {last} events");
    eprintln!("audit: raw ordered read {read} in {raw_secs:.2} s");

    let dir = tempfile::tempdir()?;
    let state = dir.path().join("audit.state");
    let state = state.to_str().context("a UTF-8 temporary path")?;
    let (verify_secs, verify_rss) = timed_replay(&url, &["verify", "--state", state]).await?;
    let export = ["export", "--stream", "conv", "--format", "jsonl"];
    let (export_secs, export_rss) = timed_replay(&url, &export).await?;

    // A night's new events: a hundredth more, in conversations of their own.
    let more = (size.events / 100).max(1_000);
    let members = |c: u64| (0..3).map(|m| format!("n{c}x{m}")).collect();
    let text = |n: u64| super::ingest::stamped_text(n as u128);
    let plan = Seeding {
        prefix: "night",
        per_conv: 1_000,
        members: &members,
        text: &text,
    };
    seed_plan(&js, more, &plan).await?;
    let (incremental_secs, _) = timed_replay(&url, &["verify", "--state", state]).await?;
    drop(server);

    let mut f = Figures::default();
    let raw = last as f64 / raw_secs;
    let (verify, export) = (last as f64 / verify_secs, last as f64 / export_secs);
    f.add("audit_events", last as f64);
    f.add("audit_raw_read_per_s", raw);
    f.add("verify_events_per_s", verify);
    f.add("verify_ratio", verify / raw);
    f.add("verify_peak_rss_mb", verify_rss as f64 / 1e6);
    f.add("export_events_per_s", export);
    f.add("export_ratio", export / raw);
    f.add("export_peak_rss_mb", export_rss as f64 / 1e6);
    f.add("verify_incremental_events", more as f64);
    f.add("verify_incremental_secs", incremental_secs);
    Ok(f)
}
