//! `cold`: what the first command into a long conversation costs a writer
//! that does not hold it (after a restart, or an eviction). One
//! conversation of `cold_events` events (200,000; quick 20,000) is seeded
//! and folded by the live projector; then fresh writers each send once.
//!
//! Figures: `cold_first_send_ms` (median over `TRIALS` fresh writers: the
//! `members` snapshot and the tail, I31); in the same run, the baseline
//! `cold_first_send_full_read_ms` (one fresh writer told to read the whole
//! subject, as before snapshots) and `warm_send_ms` (the next send of a
//! writer that holds the conversation).

use std::time::Instant;

use async_nats::jetstream;
use im_streams::{Action, AppendOutcome, Appender, AppenderOptions, Command, MessageBody};

use super::{Figures, Size, StackOptions};
use crate::cmd::bench::stack::Stack;

/// Fresh writers timed (the median is reported).
const TRIALS: usize = 5;

/// The one conversation the seeder fills (`rebuild::seed_with`'s first).
const CONV: &str = "rb0";

/// A member of it (`rebuild::seed_with`'s naming).
const SENDER: &str = "u0x1";

async fn send_once(app: &Appender, id: &str) -> anyhow::Result<f64> {
    let cmd = Command {
        actor: SENDER.into(),
        client_msg_id: id.into(),
        action: Action::Send {
            peer: None,
            body: MessageBody::Text("cold".into()),
            meta: Default::default(),
        },
    };
    let started = Instant::now();
    match app.execute(CONV, &cmd, "bench").await? {
        AppendOutcome::Stored { .. } => Ok(started.elapsed().as_secs_f64() * 1e3),
        other => anyhow::bail!("cold send: {other:?}"),
    }
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let stack = Stack::start(StackOptions::plain()).await?;
    let client = stack.nats().await?;
    let js = jetstream::new(client.clone());
    let events = size.cold_events;
    super::rebuild::seed_with(&js, events, events).await?;
    super::rebuild::caught_up(&js).await?;
    eprintln!("cold: {events} events in {CONV}, folded by the projector");
    let mut cold = Vec::with_capacity(TRIALS);
    let mut read = 0;
    for trial in 0..TRIALS {
        let app = super::appender(&client).await?;
        cold.push(send_once(&app, &format!("cold-{trial}")).await?);
        read = read.max(app.stats().events_read);
        let warm = send_once(&app, &format!("warm-{trial}")).await?;
        eprintln!(
            "cold: trial {trial}: first send {:.1} ms, next {warm:.1} ms",
            cold[trial]
        );
    }
    let warm_app = super::appender(&client).await?;
    send_once(&warm_app, "warm-up").await?;
    let warm = send_once(&warm_app, "warm").await?;
    let full = AppenderOptions {
        no_snapshots: true,
        ..Default::default()
    };
    let reader = super::appender_with(&client, full).await?;
    let full_ms = send_once(&reader, "full-read").await?;
    eprintln!(
        "cold: a writer reading the whole subject: {full_ms:.0} ms ({} events read); with the snapshot at most {read} read",
        reader.stats().events_read
    );
    stack.stop().await;
    cold.sort_by(f64::total_cmp);
    let mut f = Figures::default();
    f.add("cold_conversation_events", events as f64);
    f.add("cold_first_send_ms", cold[TRIALS / 2]);
    f.add("cold_first_send_full_read_ms", full_ms);
    f.add("warm_send_ms", warm);
    Ok(f)
}
