//! The recovery algorithm of docs/protocol.md over a [`Connection`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use im_schema::v1::{self, envelope::Payload};

use crate::{ClientError, ConnectOptions, Connection, ConversationLog, Wire};

/// One event of a conversation's log.
#[derive(Clone, Debug)]
pub struct LogEvent {
    pub conversation_id: String,
    pub seq: u64,
    /// IM_CONV stream sequence: a read position (`minPosition`).
    pub stream_seq: u64,
    pub event: v1::ConvEvent,
}

/// Reconnect delays: full jitter in [ceiling/2, ceiling], the ceiling
/// doubling from `initial` to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Connection attempts before `GaveUp`: a client that cannot reach any
    /// gateway for this long reports it rather than spinning forever.
    pub attempts_max: u32,
}

impl Default for Backoff {
    /// 0.2 s doubling to 5 s, 30 attempts (about two minutes).
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            attempts_max: 30,
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1 << attempt.min(16))
            .min(self.max);
        ceiling / 2 + ceiling.mul_f64(rand::random::<f64>() / 2.0)
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The gateway's base URL, `http://host:port`.
    pub url: String,
    pub token: String,
    pub device_id: String,
    pub wire: Wire,
    pub backoff: Backoff,
}

/// A history page's size while filling: the gateway's cap on one page.
pub const FILL_PAGE: u32 = 100;
/// Tries per send (reconnects and retryable errors together).
pub const SEND_ATTEMPTS_MAX: u32 = 20;
/// How long an answer may take: the gateway answers every command within
/// its 10 s command bound; more than that means the connection is gone.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// "Not yet" (503) answers to a history read retried before giving up.
const NOT_YET_RETRIES: u32 = 20;
/// Answers to other sends read while waiting for one: kept for their callers.
const ANSWERS_KEPT_MAX: usize = 1_000;
/// Events paged in and not yet taken by `next_event`: a fill stops here and
/// goes on once the caller has taken them (a long history is not buffered
/// whole).
pub const READY_MAX: usize = 10_000;

/// What the client did to recover, for callers and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections opened after the first.
    pub reconnects: u64,
    /// Sends sent again after a retryable error or a lost connection.
    pub resends: u64,
    /// History pages read.
    pub pages: u64,
    /// Deliveries of events already held, dropped (a projector that lost
    /// a commit in a crash publishes its deliveries again).
    pub duplicates: u64,
}

pub struct Client {
    pub(crate) cfg: ClientConfig,
    conn: Option<Connection>,
    pub(crate) http: reqwest::Client,
    /// People news not taken yet (`take_people`), the oldest dropped past
    /// `PEOPLE_NEWS_MAX`.
    pub(crate) people: VecDeque<crate::people::PeopleNews>,
    logs: BTreeMap<String, ConversationLog>,
    ready: VecDeque<LogEvent>,
    answers: BTreeMap<String, Result<v1::SendAck, (v1::ErrorCode, String)>>,
    /// Conversations whose fill stopped at `READY_MAX`: continued later.
    behind: std::collections::BTreeSet<String>,
    connected_once: bool,
    stats: ClientStats,
}

impl Client {
    /// A client holding `known` (conversation -> last seq held, from an
    /// earlier `known()`); it connects on first use.
    pub fn new(cfg: ClientConfig, known: BTreeMap<String, u64>) -> Client {
        Client {
            cfg,
            conn: None,
            http: reqwest::Client::new(),
            logs: known
                .into_iter()
                .map(|(c, s)| (c, ConversationLog::new(s)))
                .collect(),
            ready: VecDeque::new(),
            people: VecDeque::new(),
            answers: BTreeMap::new(),
            behind: Default::default(),
            connected_once: false,
            stats: ClientStats::default(),
        }
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Last conv_seq held per conversation: persist it, pass it to `new`.
    pub fn known(&self) -> BTreeMap<String, u64> {
        self.logs
            .iter()
            .filter(|(_, l)| l.known > 0)
            .map(|(c, l)| (c.clone(), l.known))
            .collect()
    }

    /// Drops the connection; the next call reconnects and syncs.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Sends until answered: the same `client_msg_id` across reconnects
    /// and retryable errors, so the message is stored exactly once.
    /// REJECTED is an answer (`Ok`); a non-retryable error frame is `Command`.
    pub async fn send(&mut self, msg: v1::SendMessage) -> Result<v1::SendAck, ClientError> {
        let id = msg.client_msg_id.clone();
        assert!(!id.is_empty(), "a send needs its client_msg_id");
        for attempt in 0..SEND_ATTEMPTS_MAX {
            if attempt > 0 {
                self.stats.resends += 1;
            }
            let conn = self.connected().await?;
            if conn.send(Payload::Send(msg.clone())).await.is_err() {
                self.conn = None;
                continue;
            }
            match self.answer_to(&id).await {
                Ok(Ok(ack)) => return Ok(ack),
                Ok(Err((code, _))) if retryable(code) => {
                    tokio::time::sleep(self.cfg.backoff.delay(attempt)).await;
                }
                Ok(Err((code, message))) => return Err(ClientError::Command { code, message }),
                Err(_) => self.conn = None,
            }
        }
        Err(ClientError::GaveUp(SEND_ATTEMPTS_MAX))
    }

    /// The next conversation event, once and in order per conversation;
    /// `Ok(None)` when none came within `wait`. Reconnects (and syncs) as
    /// needed.
    pub async fn next_event(&mut self, wait: Duration) -> Result<Option<LogEvent>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(Some(e));
            }
            if let Some(conv) = self.behind.pop_first() {
                self.fill(&conv, 0).await?;
                continue;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let conn = self.connected().await?;
            match conn.recv(left).await {
                Ok(Some(env)) => self.absorb(env).await?,
                Ok(None) => {}
                Err(_) => self.conn = None,
            }
        }
    }

    async fn answer_to(
        &mut self,
        id: &str,
    ) -> Result<Result<v1::SendAck, (v1::ErrorCode, String)>, ClientError> {
        loop {
            if let Some(a) = self.answers.remove(id) {
                return Ok(a);
            }
            let conn = self.conn.as_mut().ok_or(ClientError::Closed(None))?;
            match conn.recv(ANSWER_WAIT).await? {
                Some(env) => self.absorb(env).await?,
                None => return Err(ClientError::Timeout(ANSWER_WAIT)),
            }
        }
    }

    /// The connection, opened (with backoff) and synced if there is none.
    async fn connected(&mut self) -> Result<&mut Connection, ClientError> {
        if self.conn.is_none() {
            let opts = ConnectOptions::new(&self.cfg.url, &self.cfg.token)
                .device(&self.cfg.device_id)
                .wire(self.cfg.wire);
            let mut attempt = 0;
            let conn = loop {
                match Connection::connect(&opts).await {
                    Ok(c) => break c,
                    Err(ClientError::Refused(401)) => return Err(ClientError::Refused(401)),
                    Err(_) if attempt + 1 < self.cfg.backoff.attempts_max => {
                        tokio::time::sleep(self.cfg.backoff.delay(attempt)).await;
                        attempt += 1;
                    }
                    Err(_) => return Err(ClientError::GaveUp(self.cfg.backoff.attempts_max)),
                }
            };
            self.conn = Some(conn);
            if self.connected_once {
                self.stats.reconnects += 1;
            }
            self.connected_once = true;
            self.sync().await?;
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    /// Step 1: tell the gateway what is held; the answer lists what changed.
    async fn sync(&mut self) -> Result<(), ClientError> {
        let known = self.known().into_iter().collect();
        let conn = self.conn.as_mut().expect("connected");
        conn.send(Payload::Sync(v1::SyncRequest { known })).await
    }

    /// One envelope from the gateway, folded into the logs and answers.
    async fn absorb(&mut self, env: v1::Envelope) -> Result<(), ClientError> {
        match env.payload {
            // The link to the delivery bus came back: deliveries may be missed.
            Some(Payload::Connected(_)) => self.sync().await?,
            Some(Payload::SyncResponse(r)) => {
                for c in r.changed {
                    let known = self.logs.get(&c.conversation_id).map_or(0, |l| l.known);
                    if c.last_seq > known {
                        self.fill(&c.conversation_id, 0).await?;
                    }
                }
            }
            Some(Payload::Deliver(d)) if crate::people::is_people_log(&d.conversation_id) => {
                self.keep_news(crate::people::PeopleNews::Event(d))
            }
            Some(Payload::Profile(p)) => self.keep_news(crate::people::PeopleNews::Profile(p)),
            Some(Payload::Deliver(d)) => self.on_deliver(d).await?,
            Some(Payload::SendAck(a)) => self.keep_answer(a.client_msg_id.clone(), Ok(a)),
            Some(Payload::Error(e)) if !e.client_msg_id.is_empty() => {
                let answer = Err((e.code(), e.message));
                self.keep_answer(e.client_msg_id, answer);
            }
            _ => {}
        }
        Ok(())
    }

    fn keep_news(&mut self, news: crate::people::PeopleNews) {
        if self.people.len() >= crate::people::PEOPLE_NEWS_MAX {
            self.people.pop_front();
        }
        self.people.push_back(news);
    }

    fn keep_answer(&mut self, id: String, a: Result<v1::SendAck, (v1::ErrorCode, String)>) {
        if self.answers.len() >= ANSWERS_KEPT_MAX {
            self.answers.pop_first();
        }
        self.answers.insert(id, a);
    }

    async fn on_deliver(&mut self, d: v1::Deliver) -> Result<(), ClientError> {
        let conv = d.conversation_id.clone();
        // A notification (a large group) carries no event: page it (step 3).
        let Some(event) = d.event else {
            return self.fill(&conv, d.stream_seq).await;
        };
        let e = LogEvent {
            conversation_id: conv.clone(),
            seq: d.conv_seq,
            stream_seq: d.stream_seq,
            event,
        };
        let log = self.logs.entry(conv.clone()).or_default();
        if e.seq <= log.known {
            self.stats.duplicates += 1;
        }
        let ready = log.offer(e);
        let gap = log.has_gap();
        self.ready.extend(ready);
        if gap {
            self.fill(&conv, 0).await?;
        }
        Ok(())
    }

    /// Step 2: pages history forward from the first missing seq to the end
    /// (`min_position` and what is held reached), deduplicating (step 4).
    async fn fill(&mut self, conv: &str, min_position: u64) -> Result<(), ClientError> {
        loop {
            let log = self.logs.entry(conv.to_string()).or_default();
            let (from, position) = (log.known + 1, min_position.max(log.held_position()));
            let page = self.history(conv, from, position).await?;
            self.stats.pages += 1;
            let log = self.logs.get_mut(conv).expect("just made");
            for h in &page.entries {
                let Some(event) = h.event.clone() else {
                    continue;
                };
                let e = LogEvent {
                    conversation_id: conv.to_string(),
                    seq: event.conv_seq,
                    stream_seq: h.stream_seq,
                    event,
                };
                let ready = log.offer(e);
                self.ready.extend(ready);
            }
            if page.next_seq == 0 || page.entries.is_empty() {
                return Ok(());
            }
            if self.ready.len() >= READY_MAX {
                self.behind.insert(conv.to_string());
                return Ok(());
            }
        }
    }

    async fn history(
        &self,
        conv: &str,
        from: u64,
        min_position: u64,
    ) -> Result<v1::HistoryPage, ClientError> {
        let path = format!(
            "/v1/history?conversationId={conv}&fromSeq={from}&limit={FILL_PAGE}&minPosition={min_position}"
        );
        im_schema::from_json(&self.read(&path).await?).map_err(ClientError::Decode)
    }

    /// A read of the HTTP API: its body once 200; a "not yet" (503: not
    /// projected up to the position) is asked again, `NOT_YET_RETRIES` times.
    pub(crate) async fn read(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.cfg.url);
        for _ in 0..NOT_YET_RETRIES {
            let resp = self
                .http
                .get(&url)
                .bearer_auth(&self.cfg.token)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body = resp.text().await?;
            match status {
                200 => return Ok(body),
                503 => tokio::time::sleep(Duration::from_millis(500)).await,
                _ => return Err(ClientError::HttpStatus { status, body }),
            }
        }
        Err(ClientError::GaveUp(NOT_YET_RETRIES))
    }
}

/// Error codes after which a send is retried with its id: the outcome is
/// unknown or was not reached (docs/protocol.md "Sending").
fn retryable(code: v1::ErrorCode) -> bool {
    matches!(
        code,
        v1::ErrorCode::Unavailable
            | v1::ErrorCode::Conflict
            | v1::ErrorCode::Timeout
            | v1::ErrorCode::RateLimited
    )
}
