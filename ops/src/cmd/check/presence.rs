//! Presence under the faults: two users who share a small group, on the
//! two gateways; one comes online and goes offline, and the other must be
//! told both within `PUSH_WAIT`. Run before the faults and after them, so
//! a watch that a restart or a leader change left dead is a finding.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_schema::v1::{self, envelope::Payload};

use super::http;
use super::procs::SECRET;
use crate::cmd::bench::stack::{decode, frame, Ws};

/// The group the two share (small: its members are each other's contacts).
pub const GROUP: &str = "presence";
const WATCHER: &str = "p-watcher";
const WATCHED: &str = "p-watched";

/// How long a push may take: the bucket watch, plus a gateway's view of
/// who shares a conversation (looked up when the watcher connects).
const PUSH_WAIT: Duration = Duration::from_secs(20);

/// Creates the group the probe's two users share.
pub async fn setup(gateway: std::net::SocketAddr) -> anyhow::Result<()> {
    let token = im_gateway::auth::issue_hs256(SECRET, WATCHER, 3600);
    let body = format!(
        r#"{{"conversationId": "{GROUP}", "title": "presence", "members": [{{"userId": "{WATCHED}"}}], "clientMsgId": "create-presence"}}"#
    );
    let (status, answer) = http::post(gateway, "/v1/conversations", &token, None, &body).await?;
    anyhow::ensure!(status == 200, "creating {GROUP}: {status} {answer}");
    // Contacts are looked up when a user connects: the group must be in
    // the read models by then.
    let path = format!("/v1/conversations/{GROUP}/members");
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    loop {
        if let Ok((200, _)) = http::get(gateway, &path, Some(&token)).await {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{GROUP} never reached the read models"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(addr: std::net::SocketAddr, user: &str) -> Result<Ws, String> {
    let token = im_gateway::auth::issue_hs256(SECRET, user, 3600);
    let opts = im_client::ConnectOptions::new(format!("ws://{addr}"), token).device("presence");
    match im_client::Connection::connect(&opts).await {
        Ok(c) => Ok(c.into_parts().0),
        Err(e) => Err(format!("{user} could not connect to {addr}: {e}")),
    }
}

/// Waits for a push saying `WATCHED` is `online`, heartbeating meanwhile.
async fn told(ws: &mut Ws, online: bool) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    while tokio::time::Instant::now() < deadline {
        let beat = frame(Payload::Heartbeat(v1::Heartbeat { client_time_ms: 1 }));
        ws.send(beat).await.map_err(|e| e.to_string())?;
        let wait = Duration::from_secs(2).min(deadline - tokio::time::Instant::now());
        let Ok(Some(Ok(msg))) = tokio::time::timeout(wait, ws.next()).await else {
            continue;
        };
        let pushed = decode(&msg).into_iter().any(|env| {
            matches!(env.payload, Some(Payload::Presence(p)) if p.user_id == WATCHED && p.online == online)
        });
        if pushed {
            return Ok(());
        }
    }
    Err(format!(
        "{WATCHER} was not told {WATCHED} is {} within {PUSH_WAIT:?}",
        if online { "online" } else { "offline" }
    ))
}

/// One round: the watcher on the first gateway, the watched one coming and
/// going on the second. A finding when a push does not arrive.
pub async fn probe(gateways: &[std::net::SocketAddr], when: &str) -> Option<String> {
    let round = async {
        let mut watcher = connect(gateways[0], WATCHER).await?;
        let watched = connect(gateways[gateways.len() - 1], WATCHED).await?;
        told(&mut watcher, true).await?;
        drop(watched);
        told(&mut watcher, false).await
    };
    round.await.err().map(|e| format!("{when}: {e}"))
}
