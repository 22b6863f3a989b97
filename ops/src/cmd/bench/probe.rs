//! What a benchmark reads off the running stack besides its own timings:
//! each process's CPU time (from /proc), how far the projector has folded,
//! and whether it has caught up.

use std::time::{Duration, Instant};

use anyhow::Context;
use im_schema::v1::{self, query_request::Query, query_response::Result as R};

use super::stack::Stack;

/// /proc reports CPU time in ticks of 1/100 s (USER_HZ, fixed by Linux's
/// ABI whatever the kernel's own tick).
const TICKS_PER_S: u64 = 100;

/// How long the projector may take to catch up before a measurement.
const CATCH_UP_MAX: Duration = Duration::from_secs(600);

/// CPU time (µs) a process has used, user and system.
pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(") ").context("a /proc stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields[11].parse()?, fields[12].parse()?);
    Ok((utime + stime) * 1_000_000 / TICKS_PER_S)
}

/// CPU time of nats-server, the stack and this load generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub nats_us: u64,
    pub stack_us: u64,
    pub load_us: u64,
}

impl Cpu {
    pub fn sample(stack: &Stack) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            nats_us: cpu_us(stack.nats_pid)?,
            stack_us: cpu_us(stack.pid())?,
            load_us: cpu_us(std::process::id())?,
        })
    }

    /// CPU per message between two samples: (nats, stack, load) µs.
    pub fn per_message(&self, later: &Cpu, messages: u64) -> (f64, f64, f64) {
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / messages.max(1) as f64;
        (
            per(self.nats_us, later.nats_us),
            per(self.stack_us, later.stack_us),
            per(self.load_us, later.load_us),
        )
    }
}

/// Events the stack's projector has folded so far (its `members`
/// projection's count since it started, which every instance runs, the
/// notifier's too) and its checkpoint.
pub async fn projected(client: &async_nats::Client) -> anyhow::Result<(u64, u64)> {
    projected_by(client, im_projectors::DEFAULT_INSTANCE).await
}

/// `projected` of any instance.
pub async fn projected_by(
    client: &async_nats::Client,
    instance: &str,
) -> anyhow::Result<(u64, u64)> {
    let req = v1::QueryRequest {
        query: Some(Query::Status(v1::StatusQuery::default())),
        ..Default::default()
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(
            im_projectors::query::instance_subject(instance),
            im_schema::encode(&req).into(),
        ),
    )
    .await
    .context("the projector did not answer")??;
    match im_schema::decode::<v1::QueryResponse>(&reply.payload)?.result {
        Some(R::Status(s)) => {
            let h = s
                .projections
                .iter()
                .find(|p| p.name == im_projectors::projections::members::NAME)
                .context("no members projection")?;
            Ok((h.applied, h.conv_checkpoint))
        }
        other => anyhow::bail!("status: {other:?}"),
    }
}

/// IM_CONV's last stream sequence.
pub async fn conv_last_seq(client: &async_nats::Client) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(im_streams::definitions::CONV_STREAM).await?;
    Ok(stream.info().await?.state.last_sequence)
}

/// Waits until the stack's projector has folded everything in IM_CONV.
pub async fn wait_caught_up(client: &async_nats::Client) -> anyhow::Result<()> {
    wait_caught_up_by(client, im_projectors::DEFAULT_INSTANCE).await
}

/// `wait_caught_up` of any instance (one that does not answer yet is waited
/// for too).
pub async fn wait_caught_up_by(client: &async_nats::Client, instance: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_MAX;
    loop {
        let last = conv_last_seq(client).await?;
        if projected_by(client, instance)
            .await
            .is_ok_and(|(_, cp)| cp >= last)
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the projector did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until each of `convs` has its history served at `position` by whichever
/// instance owns its partition (the query waits for its `minPosition`, so
/// an answer means the owner has folded the partition to there).
pub async fn wait_served_at(
    client: &async_nats::Client,
    convs: &[String],
    position: u64,
    bound: Duration,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let deadline = Instant::now() + bound;
    for conv in convs {
        let req = v1::QueryRequest {
            min_position: position,
            query: Some(Query::History(v1::HistoryQuery {
                conversation_id: conv.clone(),
                limit: 1,
                ..Default::default()
            })),
            ..Default::default()
        };
        let subject = im_streams::subjects::query_subject(topology.partition_of(conv));
        loop {
            let asked = client.request(subject.clone(), im_schema::encode(&req).into());
            if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), asked).await {
                let answer = im_schema::decode::<v1::QueryResponse>(&reply.payload)?;
                if matches!(answer.result, Some(R::History(_))) {
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{conv} not served at {position} within {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
