//! `search`: a log of mixed English and Chinese messages (`events` of
//! them over conversations of 1,000), one user a member of 100 of those
//! conversations; then:
//! - how fast the live projector makes the seeded log searchable;
//! - query latency through the gateway for that user, per kind of query
//!   (a common word, a rare word, a Chinese two-character word, a phrase);
//! - `imctl projections rebuild search` until the new index answers,
//!   beside the baseline of tantivy indexing the same texts directly
//!   (the projection's own index, in-process, one commit at the end).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use im_streams::definitions::CONV_STREAM;

use super::rebuild::{caught_up, seed_plan, timed_imctl, Seeding};
use super::{Figures, Size, StackOptions};
use crate::cmd::bench::stack::Stack;

/// Events per conversation.
const EVENTS_PER_CONV: u64 = 1_000;
/// Conversations the searching user is in.
const READER_CONVERSATIONS: u64 = 100;
/// The searching user.
const READER: &str = "reader";
/// Times each kind of query is asked (sequentially).
const QUERIES_PER_KIND: usize = 200;
/// How long the index may take to catch up with the log.
const INDEXED_MAX: Duration = Duration::from_secs(1_800);

const WORDS: [&str; 48] = [
    "meeting",
    "project",
    "deadline",
    "review",
    "lunch",
    "coffee",
    "client",
    "design",
    "report",
    "update",
    "launch",
    "schedule",
    "team",
    "office",
    "travel",
    "invoice",
    "contract",
    "release",
    "testing",
    "feedback",
    "weekend",
    "morning",
    "tomorrow",
    "friday",
    "monday",
    "call",
    "document",
    "slides",
    "numbers",
    "sales",
    "marketing",
    "hiring",
    "interview",
    "budget",
    "plan",
    "roadmap",
    "support",
    "customer",
    "server",
    "deploy",
    "bug",
    "fix",
    "question",
    "answer",
    "thanks",
    "please",
    "today",
    "later",
];

const CHINESE: [&str; 24] = [
    "开会",
    "项目",
    "预算",
    "明天",
    "讨论",
    "客户",
    "报告",
    "设计",
    "午饭",
    "周末",
    "合同",
    "发布",
    "测试",
    "反馈",
    "出差",
    "面试",
    "计划",
    "服务器",
    "部署",
    "问题",
    "谢谢",
    "今天",
    "下午",
    "会议室",
];

/// A deterministic mix: 6 to 13 English words, a Chinese phrase in every
/// third message, "quarterly budget" in one of 50, "zyzzyva" in one of
/// 20,000.
pub fn text(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let count = 6 + next() % 8;
    let mut words: Vec<&str> = (0..count).map(|_| WORDS[(next() % 48) as usize]).collect();
    if n.is_multiple_of(3) {
        let at = (next() % count) as usize;
        words.insert(at, CHINESE[(next() % 24) as usize]);
    }
    if n % 50 == 7 {
        words.extend(["quarterly", "budget"]);
    }
    if n % 20_000 == 19_050 {
        words.push("zyzzyva");
    }
    words.join(" ")
}

fn members(c: u64) -> Vec<String> {
    match c < READER_CONVERSATIONS {
        true => vec![format!("s{c}a"), READER.to_string(), format!("s{c}b")],
        false => vec![format!("s{c}a"), format!("s{c}b"), format!("s{c}c")],
    }
}

/// One search through the gateway: (status, body).
async fn get(stack: &Stack, token: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(stack.gateway).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    sock.read_to_string(&mut raw).await?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, raw))
}

fn path(q: &str, position: u64) -> String {
    let q: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/v1/search/messages?q={q}&minPosition={position}")
}

/// Waits until a search covers the log's last event (the index with it).
async fn searchable(stack: &Stack, token: &str, last: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + INDEXED_MAX;
    loop {
        let (status, body) = get(stack, token, &path("zyzzyva ", last)).await?;
        match status {
            200 => return Ok(()),
            503 => {}
            _ => anyhow::bail!("search answered {status}: {body:.300}"),
        }
        anyhow::ensure!(Instant::now() < deadline, "the index did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (p50, p99) in ms of one query asked `QUERIES_PER_KIND` times.
async fn latency(stack: &Stack, token: &str, q: &str) -> anyhow::Result<(f64, f64, usize)> {
    let mut took = Vec::with_capacity(QUERIES_PER_KIND);
    let mut hits = 0;
    for _ in 0..QUERIES_PER_KIND {
        let started = Instant::now();
        let (status, body) = get(stack, token, &path(q, 0)).await?;
        took.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(status == 200, "{q}: {status} {body:.300}");
        hits = body.matches("\"streamSeq\"").count();
    }
    took.sort_by(f64::total_cmp);
    Ok((percentile(&took, 0.5), percentile(&took, 0.99), hits))
}

/// Documents per second of the projection's own index fed the texts
/// directly (no log, no rows): the baseline of a rebuild.
fn direct_index(events: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let index = im_projectors::search::SearchIndex::open(dir.path())?;
    let started = Instant::now();
    let clear = im_projectors::search::clear_only();
    for n in 0..events {
        let doc = im_schema::v1::SearchDoc {
            sealed: None,
            kind: im_schema::v1::SearchDocKind::Message as i32,
            conversation_id: format!("sr{}", n % 1_000),
            conv_seq: n / 1_000 + 2,
            sender_id: "someone".into(),
            at_ms: n as i64,
            stream_seq: n + 1,
            text: text(n),
        };
        let id = format!("sr{}/{}", n % 1_000, n / 1_000 + 2);
        index.sync(&id, Some(&doc), &clear)?;
    }
    index.commit(events)?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let stack = Stack::start(StackOptions::plain()).await?;
    let js = jetstream::new(stack.nats().await?);
    let events = size.events.max(READER_CONVERSATIONS * 10);
    let plan = Seeding {
        prefix: "sr",
        per_conv: EVENTS_PER_CONV.min(events / READER_CONVERSATIONS),
        members: &members,
        text: &text,
    };
    let started = Instant::now();
    seed_plan(&js, events, &plan).await?;
    let seeded = started.elapsed().as_secs_f64();
    let last = js
        .get_stream(CONV_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    eprintln!("search: seeded {last} events in {seeded:.1} s; waiting for the live projector and its index");
    let token = stack.token(READER);
    let started = Instant::now();
    caught_up(&js).await?;
    searchable(&stack, &token, last).await?;
    let live_secs = started.elapsed().as_secs_f64();
    eprintln!("search: folded and indexed in {live_secs:.1} s after the seed");

    let mut f = Figures::default();
    let (mut p50_worst, mut p99_worst) = (0f64, 0f64);
    let kinds: [(&'static str, &'static str, &str); 4] = [
        ("search_common_p99_ms", "search_common_p50_ms", "meeting "),
        ("search_rare_p99_ms", "search_rare_p50_ms", "zyzzyva "),
        ("search_chinese_p99_ms", "search_chinese_p50_ms", "开会 "),
        (
            "search_phrase_p99_ms",
            "search_phrase_p50_ms",
            "\"quarterly budget\"",
        ),
    ];
    for (p99_name, p50_name, q) in kinds {
        let (p50, p99, hits) = latency(&stack, &token, q).await?;
        eprintln!("search: {q:?} p50 {p50:.2} ms, p99 {p99:.2} ms ({hits} hits on the first page)");
        anyhow::ensure!(hits > 0, "{q:?} found nothing");
        f.add(p50_name, p50);
        f.add(p99_name, p99);
        p50_worst = p50_worst.max(p50);
        p99_worst = p99_worst.max(p99);
    }

    let rebuild_started = Instant::now();
    timed_imctl(
        &stack,
        &[
            "projections",
            "rebuild",
            "search",
            "--instance",
            im_projectors::DEFAULT_INSTANCE,
        ],
    )
    .await?;
    let swapped = rebuild_started.elapsed().as_secs_f64();
    searchable(&stack, &token, last).await?;
    let rebuild_secs = rebuild_started.elapsed().as_secs_f64();
    eprintln!("search: rebuilt in {swapped:.1} s, its index complete at {rebuild_secs:.1} s");
    stack.stop().await;
    let direct = direct_index(events)?;
    eprintln!("search: tantivy fed the same {events} texts directly: {direct:.0} documents/s");

    let rebuild_rate = last as f64 / rebuild_secs;
    f.add("search_query_p50_ms", p50_worst);
    f.add("search_query_p99_ms", p99_worst);
    f.add("search_events", last as f64);
    f.add("search_live_indexed_per_s", last as f64 / live_secs);
    f.add("search_rebuild_secs", rebuild_secs);
    f.add("search_rebuild_per_s", rebuild_rate);
    f.add("search_direct_index_per_s", direct);
    f.add("search_rebuild_ratio", rebuild_rate / direct);
    Ok(f)
}
