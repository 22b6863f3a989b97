//! `large`: a large log run through every operation an operator and an
//! auditor meet, on one stack (issue 31): seeding, the live projector
//! catching up, `imctl projections status`, both `/readyz`, `im-replay
//! verify` and `export`, `imctl projections rebuild --all`, and a rebuild
//! cancelled halfway, after which the serving generations must answer the
//! digests they answered before it. Peak memory of each is reported.
//!
//! Not in `all` (a 5M log takes most of an hour on two cores):
//! `imctl bench large --events 5000000`, with `IM_STORE_ENGINE=fjall` for
//! the projector's store on fjall. CI runs it `--quick`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use tokio::io::AsyncBufReadExt;

use super::audit::{peak_rss_bytes, sampled, timed_replay};
use super::rebuild::{caught_up, seed, timed_imctl};
use super::stack::{Stack, StackOptions};
use super::{Figures, Size};

/// How long a `/readyz` may take to answer 200 once the projector has
/// caught up (its heartbeat runs every second).
const READY_MAX: Duration = Duration::from_secs(30);

/// The smallest log whose rebuild is interrupted halfway; a smaller one's
/// (`--quick`) as soon as it starts, since half of a rebuild of seconds
/// may already be its end.
const CANCEL_HALFWAY_FROM_EVENTS: u64 = 1_000_000;

/// Each projection's (generation, digest) as the instance answers them.
async fn served(client: &async_nats::Client) -> anyhow::Result<BTreeMap<String, (u64, String)>> {
    let status =
        crate::cmd::projections::instance_status(client, im_projectors::DEFAULT_INSTANCE, &[])
            .await?;
    Ok(status
        .projections
        .into_iter()
        .map(|p| (p.name, (p.generation, p.digest)))
        .collect())
}

/// Until `/readyz` at `addr` answers 200; how long that took.
async fn ready(addr: std::net::SocketAddr) -> anyhow::Result<f64> {
    let deadline = tokio::time::Instant::now() + READY_MAX;
    Ok(crate::cmd::check::http::ready(addr, deadline)
        .await?
        .as_secs_f64())
}

/// `imctl projections rebuild --all` to its end: its seconds and the
/// stack's highest resident memory while it ran (bytes).
async fn rebuild(stack: &Stack) -> anyhow::Result<(f64, u64)> {
    let run = timed_imctl(stack, &["projections", "rebuild", "--all"]);
    let (secs, max) = sampled(run, stack.pid(), |pid| super::stack::rss_bytes(pid).ok()).await;
    Ok((secs?, max))
}

/// `imctl projections rebuild --all`, interrupted (SIGINT) `after` its
/// start; it must exit 130 with every projection cancelled.
async fn cancelled_rebuild(stack: &Stack, after: Duration) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["projections", "rebuild", "--all", "--nats-url"])
        .arg(&stack.nats_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running imctl projections rebuild")?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
    while let Some(line) = lines.next_line().await? {
        if line.starts_with("rebuilding ") {
            break;
        }
    }
    let said = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest.join("\n")
    });
    tokio::time::sleep(after).await;
    anyhow::ensure!(
        crate::cmd::check::procs::signal("-INT", child.id()),
        "the rebuild ended before it was interrupted"
    );
    let out = child.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = said.await.unwrap_or_default();
    anyhow::ensure!(
        out.status.code() == Some(130),
        "the interrupted rebuild exited {}: {stdout}\n{said}",
        out.status
    );
    let cancelled = stdout.lines().filter(|l| l.contains(": cancelled")).count();
    anyhow::ensure!(
        cancelled == im_projectors::projections::NAMES.len(),
        "{cancelled} projections cancelled: {stdout}\n{said}"
    );
    Ok(())
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let engine = std::env::var("IM_STORE_ENGINE").unwrap_or_else(|_| "sled".into());
    let stack = Stack::start(StackOptions::plain()).await?;
    let client = stack.nats().await?;
    let js = jetstream::new(client.clone());
    let mut f = Figures::default();
    let started = Instant::now();
    seed(&js, size.events).await?;
    let last = super::probe::conv_last_seq(&client).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    eprintln!("large: seeded {last} events in {seed_secs:.1} s; projector store on {engine}");
    caught_up(&js).await?;
    let live_secs = started.elapsed().as_secs_f64();
    let fold_rss = peak_rss_bytes(stack.pid()).unwrap_or(0);
    eprintln!(
        "large: the live projector caught up {live_secs:.1} s after the seeding began, stack peak RSS {} MB",
        fold_rss / 1_000_000
    );
    f.add("large_events", last as f64);
    f.add("large_seed_secs", seed_secs);
    f.add("large_caught_up_secs", live_secs);
    f.add("large_stack_peak_rss_mb_fold", fold_rss as f64 / 1e6);
    operate(&stack, &mut f).await?;
    audit(&stack.nats_url, &mut f).await?;
    rebuilds(&stack, &client, last, &mut f).await?;
    stack.stop().await;
    Ok(f)
}

/// What an operator looks at first: status and both `/readyz`.
async fn operate(stack: &Stack, f: &mut Figures) -> anyhow::Result<()> {
    let status_secs = timed_imctl(stack, &["projections", "status", "--interval-ms", "0"]).await?;
    let gateway = ready(stack.gateway).await?;
    let projector = ready(stack.projector_metrics).await?;
    eprintln!(
        "large: projections status in {:.0} ms; /readyz 200 from the gateway in {:.0} ms, the projector in {:.0} ms",
        status_secs * 1e3,
        gateway * 1e3,
        projector * 1e3
    );
    f.add("large_status_ms", status_secs * 1e3);
    f.add("large_readyz_ms", (gateway + projector) * 1e3);
    Ok(())
}

/// The auditor's two tools over the whole log.
async fn audit(url: &str, f: &mut Figures) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("audit.state");
    let state = state.to_str().context("a UTF-8 temporary path")?;
    let (verify_secs, verify_rss) = timed_replay(url, &["verify", "--state", state]).await?;
    let export = ["export", "--stream", "conv", "--format", "jsonl"];
    let (export_secs, export_rss) = timed_replay(url, &export).await?;
    f.add("large_verify_secs", verify_secs);
    f.add("large_verify_peak_rss_mb", verify_rss as f64 / 1e6);
    f.add("large_export_secs", export_secs);
    f.add("large_export_peak_rss_mb", export_rss as f64 / 1e6);
    Ok(())
}

/// A whole rebuild, then one cancelled halfway: the generations it left
/// serving answer what they answered before it.
async fn rebuilds(
    stack: &Stack,
    client: &async_nats::Client,
    events: u64,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let (rebuild_secs, rebuild_rss) = rebuild(stack).await?;
    eprintln!(
        "large: projections rebuild --all in {rebuild_secs:.1} s, stack RSS at most {} MB",
        rebuild_rss / 1_000_000
    );
    let before = served(client).await?;
    let after = match events >= CANCEL_HALFWAY_FROM_EVENTS {
        true => Duration::from_secs_f64(rebuild_secs / 2.0),
        false => Duration::ZERO,
    };
    cancelled_rebuild(stack, after).await?;
    let after = served(client).await?;
    anyhow::ensure!(
        before == after,
        "a cancelled rebuild changed what is served: {before:?} then {after:?}"
    );
    eprintln!(
        "large: a rebuild cancelled halfway left every serving generation and digest as it was"
    );
    f.add("large_rebuild_secs", rebuild_secs);
    f.add("large_rebuild_stack_rss_mb", rebuild_rss as f64 / 1e6);
    Ok(())
}
