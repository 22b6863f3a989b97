//! The workload: members send into groups over two gateways, retrying with
//! the same id across reconnects and after the duplicate window; the owner
//! removes and re-adds members, racing their sends. Every command's outcome
//! is recorded with when it was sent and answered.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use im_schema::v1::{self, envelope::Payload};
use rand::Rng;
use tokio_tungstenite::tungstenite::Message;

use super::http;
use super::procs::{DUPLICATE_WINDOW_MS, SECRET};
use crate::cmd::bench::stack::{decode, frame, Ws};

pub const GROUPS: usize = 3;
/// Members of every group: `m0`..; the first `CHURNED` are removed and
/// re-added again and again.
pub const MEMBERS: usize = 6;
pub const CHURNED: usize = 2;
pub const OWNER: &str = "owner";

/// How long a command may go unanswered before the client gives up on its
/// connection: past the gateway's own 10 s bound.
const ANSWER_WAIT: Duration = Duration::from_secs(12);

/// Attempts recorded at most (a 30-minute run makes ~100k).
const ATTEMPTS_MAX: usize = 2_000_000;

/// Share of stored sends sent again, as by a client whose ack was lost:
/// the answer must be DUPLICATE with the first answer's positions (faults
/// alone rarely cut a connection between the store and the ack).
const RESEND_SHARE: f64 = 0.01;

pub fn group(i: usize) -> String {
    format!("g{i}")
}

pub fn member(i: usize) -> String {
    format!("m{i}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored {
        stream_seq: u64,
        conv_seq: u64,
    },
    Duplicate {
        stream_seq: u64,
        conv_seq: u64,
    },
    Rejected {
        reason: String,
    },
    /// No definite answer (an error, a timeout, a connection lost).
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Attempt {
    pub user: String,
    pub conv: String,
    pub id: String,
    pub sent: Instant,
    pub answered: Instant,
    pub outcome: Outcome,
}

/// A removal or an addition, with its first request's time and its
/// definite answer's.
#[derive(Clone, Debug)]
pub struct Churn {
    pub conv: String,
    pub user: String,
    pub add: bool,
    pub first_sent: Instant,
    pub answered: Instant,
    pub ok: bool,
}

#[derive(Default)]
pub struct Records {
    pub attempts: Mutex<Vec<Attempt>>,
    pub churn: Mutex<Vec<Churn>>,
    /// Delivery and read receipts written to a connection.
    pub receipts: std::sync::atomic::AtomicU64,
}

impl Records {
    fn attempt(&self, a: Attempt) {
        let mut all = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() < ATTEMPTS_MAX {
            all.push(a);
        }
    }
}

async fn connect(addr: std::net::SocketAddr, user: &str) -> anyhow::Result<Ws> {
    let token = im_gateway::auth::issue_hs256(SECRET, user, 24 * 3600);
    let opts = im_client::ConnectOptions::new(format!("ws://{addr}"), token).device("check");
    Ok(im_client::Connection::connect(&opts).await?.into_parts().0)
}

/// Sends one command and waits for its answer (deliveries are skipped).
async fn send_one(ws: &mut Ws, conv: &str, id: &str) -> Option<Outcome> {
    let send = frame(Payload::Send(v1::SendMessage {
        conversation_id: conv.to_string(),
        client_msg_id: id.to_string(),
        body: Some(v1::send_message::Body::Text(format!("check {id}"))),
        ..Default::default()
    }));
    ws.send(send).await.ok()?;
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        if matches!(msg, Message::Close(_)) {
            return None;
        }
        for env in decode(&msg) {
            match env.payload {
                Some(Payload::SendAck(a)) if a.client_msg_id == id => {
                    return Some(match a.status() {
                        v1::AckStatus::Stored => Outcome::Stored {
                            stream_seq: a.stream_seq,
                            conv_seq: a.conv_seq,
                        },
                        v1::AckStatus::Duplicate => Outcome::Duplicate {
                            stream_seq: a.stream_seq,
                            conv_seq: a.conv_seq,
                        },
                        _ => Outcome::Rejected { reason: a.reason },
                    })
                }
                Some(Payload::Error(e)) if e.client_msg_id == id => return Some(Outcome::Unknown),
                _ => {}
            }
        }
    }
}

/// Now and then a delivery or read receipt up to a message just stored
/// (answered only when refused, so nothing is awaited); whether one was sent.
async fn send_receipt(ws: &mut Ws, conv: &str, up_to_seq: u64) -> bool {
    let conversation_id = conv.to_string();
    let payload = match rand::rng().random_range(0..4) {
        0 => Payload::DeliveryAck(v1::DeliveryAck {
            conversation_id,
            up_to_seq,
            ..Default::default()
        }),
        1 => Payload::Read(v1::ReadAck {
            conversation_id,
            up_to_seq,
        }),
        _ => return false,
    };
    ws.send(frame(payload)).await.is_ok()
}

/// A member's sends until `until`, then its unanswered ones until `drain`.
pub async fn member_loop(
    user: String,
    gateways: Vec<std::net::SocketAddr>,
    records: std::sync::Arc<Records>,
    until: Instant,
    drain: Instant,
) {
    let mut conn: Option<Ws> = None;
    let mut retries: VecDeque<(String, String, Instant)> = VecDeque::new();
    let mut n = 0usize;
    loop {
        let now = Instant::now();
        let due = retries.front().is_some_and(|(_, _, at)| *at <= now);
        let (conv, id) = if due {
            let (conv, id, _) = retries.pop_front().expect("due");
            (conv, id)
        } else if now < until {
            n += 1;
            (group(n % GROUPS), format!("{user}-{n}"))
        } else if now < drain && !retries.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        } else {
            return;
        };
        if conn.is_none() {
            let addr = gateways[rand::rng().random_range(0..gateways.len())];
            conn = connect(addr, &user).await.ok();
        }
        let sent = Instant::now();
        let outcome = match conn.as_mut() {
            Some(ws) => send_one(ws, &conv, &id).await,
            None => None,
        };
        let outcome = outcome.unwrap_or_else(|| {
            conn = None;
            Outcome::Unknown
        });
        let resend =
            matches!(outcome, Outcome::Stored { .. }) && rand::rng().random_bool(RESEND_SHARE);
        if outcome == Outcome::Unknown || resend {
            // Mostly at once, sometimes past JetStream's duplicate window.
            let wait = if rand::rng().random_bool(0.3) {
                Duration::from_millis(DUPLICATE_WINDOW_MS + 500)
            } else {
                Duration::from_millis(200)
            };
            retries.push_back((conv.clone(), id.clone(), Instant::now() + wait));
        }
        if let (Some(ws), Outcome::Stored { conv_seq, .. } | Outcome::Duplicate { conv_seq, .. }) =
            (conn.as_mut(), &outcome)
        {
            if send_receipt(ws, &conv, *conv_seq).await {
                records
                    .receipts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        records.attempt(Attempt {
            user: user.clone(),
            conv,
            id,
            sent,
            answered: Instant::now(),
            outcome,
        });
        let pause = rand::rng().random_range(5..40);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// An HTTP command retried (same key) until it has a definite answer.
async fn definite(
    gateways: &[std::net::SocketAddr],
    path: &str,
    key: &str,
    until: Instant,
) -> Option<(Instant, Instant, bool)> {
    let token = im_gateway::auth::issue_hs256(SECRET, OWNER, 24 * 3600);
    let first = Instant::now();
    while Instant::now() < until {
        let addr = gateways[rand::rng().random_range(0..gateways.len())];
        match http::post(addr, path, &token, Some(key), "{}").await {
            Ok((200, _)) => return Some((first, Instant::now(), true)),
            Ok((s, _)) if (400..500).contains(&s) && s != 429 => {
                return Some((first, Instant::now(), false))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

/// The owner removes and re-adds the churned members until `until`.
pub async fn churn_loop(
    gateways: Vec<std::net::SocketAddr>,
    records: std::sync::Arc<Records>,
    until: Instant,
    drain: Instant,
) {
    let mut round = 0usize;
    while Instant::now() < until {
        round += 1;
        let (conv, user) = (group(round % GROUPS), member(round % CHURNED));
        for add in [false, true] {
            let verb = if add { "add-member" } else { "remove-member" };
            let path = format!("/v1/conversations/{conv}/{verb}/{user}");
            let key = format!("churn-{round}-{verb}");
            let Some((first_sent, answered, ok)) = definite(&gateways, &path, &key, drain).await
            else {
                return;
            };
            records
                .churn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Churn {
                    conv: conv.clone(),
                    user: user.clone(),
                    add,
                    first_sent,
                    answered,
                    ok,
                });
            let pause = rand::rng().random_range(20..300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// Creates the groups (the owner, every member).
pub async fn setup(gateways: &[std::net::SocketAddr]) -> anyhow::Result<()> {
    let token = im_gateway::auth::issue_hs256(SECRET, OWNER, 3600);
    let members: Vec<String> = (0..MEMBERS)
        .map(|m| format!(r#"{{"userId": "{}"}}"#, member(m)))
        .collect();
    for g in 0..GROUPS {
        let body = format!(
            r#"{{"conversationId": "{}", "title": "check", "members": [{}], "clientMsgId": "create-{g}"}}"#,
            group(g),
            members.join(",")
        );
        let (status, answer) =
            http::post(gateways[0], "/v1/conversations", &token, None, &body).await?;
        anyhow::ensure!(status == 200, "creating {}: {status} {answer}", group(g));
    }
    Ok(())
}
