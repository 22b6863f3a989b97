//! People over the client: profiles, privacy, contacts and blocks over
//! HTTP (docs/protocol.md "People"), and the people news the WebSocket
//! brings (a contact request or its answer, a block of one's own, a
//! contact's new profile), kept apart from the conversations' events.

use im_schema::v1;

use crate::client::Client;
use crate::error::ClientError;

/// People news kept until taken: a client that never takes them keeps the
/// latest (each is a hint to read contacts or profiles again, never the
/// only record).
pub const PEOPLE_NEWS_MAX: usize = 1_024;

/// Ids of a user's own log and of a pair's: people, not conversations.
pub fn is_people_log(conversation_id: &str) -> bool {
    conversation_id.starts_with("us_") || conversation_id.starts_with("ct_")
}

/// What the WebSocket said about people.
#[derive(Clone, Debug, PartialEq)]
pub enum PeopleNews {
    /// An event of the user's own log or of one of their pairs' logs.
    Event(v1::Deliver),
    /// A contact's profile changed.
    Profile(v1::Profile),
}

/// A contact command's verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactVerb {
    Request,
    Accept,
    Decline,
    Remove,
    Block,
    Unblock,
}

impl ContactVerb {
    fn path(self) -> &'static str {
        match self {
            ContactVerb::Request => "request",
            ContactVerb::Accept => "accept",
            ContactVerb::Decline => "decline",
            ContactVerb::Remove => "remove",
            ContactVerb::Block => "block",
            ContactVerb::Unblock => "unblock",
        }
    }
}

/// A stored command's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandResult {
    pub conversation_id: String,
    pub conv_seq: u64,
    pub stream_seq: u64,
    pub duplicate: bool,
}

impl Client {
    /// The people news received so far, oldest first.
    pub fn take_people(&mut self) -> Vec<PeopleNews> {
        self.people.drain(..).collect()
    }

    /// Replaces the user's profile (`key`: its idempotency key).
    pub async fn set_profile(
        &self,
        display_name: &str,
        status: &str,
        key: &str,
    ) -> Result<CommandResult, ClientError> {
        let body = serde_json::json!({ "displayName": display_name, "status": status });
        self.command(reqwest::Method::PUT, "/v1/me/profile", body, key)
            .await
    }

    /// Who may start a direct conversation with the user, and add them to
    /// groups: `everyone` or `contacts`.
    pub async fn set_privacy(
        &self,
        direct_chats: &str,
        group_adds: &str,
        key: &str,
    ) -> Result<CommandResult, ClientError> {
        let body = serde_json::json!({ "directChats": direct_chats, "groupAdds": group_adds });
        self.command(reqwest::Method::PUT, "/v1/me/privacy", body, key)
            .await
    }

    /// `verb` on the pair of the user and `user`.
    pub async fn contact(
        &self,
        user: &str,
        verb: ContactVerb,
        key: &str,
    ) -> Result<CommandResult, ClientError> {
        let path = format!("/v1/contacts/{user}/{}", verb.path());
        let body = serde_json::json!({});
        self.command(reqwest::Method::POST, &path, body, key).await
    }

    /// The user's contacts, requests both ways and blocks, at `min_position`.
    pub async fn contacts(&self, min_position: u64) -> Result<v1::ContactsResult, ClientError> {
        let body = self
            .read(&format!("/v1/me/contacts?minPosition={min_position}"))
            .await?;
        im_schema::from_json(&body).map_err(ClientError::Decode)
    }

    /// The profiles of `users` (at most 100 a request; asked in batches).
    pub async fn profiles(
        &self,
        users: &[String],
        min_position: u64,
    ) -> Result<Vec<v1::Profile>, ClientError> {
        let mut out = Vec::new();
        for batch in users.chunks(100) {
            let path = format!(
                "/v1/users/profiles?ids={}&minPosition={min_position}",
                batch.join(",")
            );
            let page: v1::ProfilesResult =
                im_schema::from_json(&self.read(&path).await?).map_err(ClientError::Decode)?;
            out.extend(page.profiles);
        }
        Ok(out)
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
        key: &str,
    ) -> Result<CommandResult, ClientError> {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.cfg.url))
            .bearer_auth(&self.cfg.token)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        if status != 200 {
            return Err(ClientError::HttpStatus { status, body: text });
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| ClientError::HttpStatus {
                status,
                body: text.clone(),
            })?;
        let num = |k: &str| v[k].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(CommandResult {
            conversation_id: v["conversationId"].as_str().unwrap_or_default().to_string(),
            conv_seq: num("convSeq"),
            stream_seq: num("streamSeq"),
            duplicate: v["duplicate"].as_bool().unwrap_or(false),
        })
    }
}
