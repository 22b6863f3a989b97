//! The check's plain HTTP/1.1 client: one request per connection, bounded
//! in time (a killed gateway must not stall the check).

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

async fn exchange(addr: std::net::SocketAddr, request: String) -> anyhow::Result<(u16, String)> {
    let talk = async {
        let mut sock = tokio::net::TcpStream::connect(addr).await?;
        sock.write_all(request.as_bytes()).await?;
        let mut raw = String::new();
        sock.read_to_string(&mut raw).await?;
        let (head, body) = raw.split_once("\r\n\r\n").context("an HTTP answer")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .context("a status")?
            .parse()?;
        anyhow::Ok((status, body.to_string()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, talk)
        .await
        .context("the request timed out")?
}

pub async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: check\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await
}

/// A JSON POST, with an idempotency key if one is given.
pub async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: &str,
    key: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let key = key
        .map(|k| format!("Idempotency-Key: {k}\r\n"))
        .unwrap_or_default();
    exchange(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: check\r\nAuthorization: Bearer {bearer}\r\n{key}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// Until `/readyz` at `addr` answers 200 (an error past `deadline`); how
/// long that took.
pub async fn ready(
    addr: std::net::SocketAddr,
    deadline: tokio::time::Instant,
) -> anyhow::Result<std::time::Duration> {
    let started = tokio::time::Instant::now();
    loop {
        let answer = get(addr, "/readyz", None).await;
        if let Ok((200, _)) = answer {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{addr} never became ready (last answer: {answer:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
