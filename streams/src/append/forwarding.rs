//! Forwarding a command to the writer that keeps winning a conversation,
//! and serving the commands other writers forward here.

use std::sync::{atomic::Ordering::Relaxed, Arc, Weak};

use futures::StreamExt;

use im_schema::v1;

use super::forward;
use crate::conversation::Command;

use super::{AppendOutcome, Appender, FORWARDED_INFLIGHT_MAX, FORWARD_TIMEOUT};

/// Serves commands other writers forward to this one, each through the
/// normal (never re-forwarding) path, at most `FORWARDED_INFLIGHT_MAX` at once.
pub(super) async fn serve_forwarded(
    me: Weak<Appender>,
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(FORWARDED_INFLIGHT_MAX));
    while let Some(msg) = requests.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Some(app) = me.upgrade() else { break };
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            let busy = im_schema::encode(&forward::declined("busy"));
            let _ = client.publish(reply_to, busy.into()).await;
            continue;
        };
        let client = client.clone();
        app.counters.forwarded_in.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let reply = match im_schema::decode::<v1::WriteRequest>(&msg.payload) {
                Err(e) => forward::declined(e),
                Ok(req) => match forward::from_request(&req) {
                    Err(r) => forward::to_reply(&AppendOutcome::Rejected(r)),
                    // The forwarder stops waiting after `FORWARD_TIMEOUT`;
                    // so does this, releasing the conversation.
                    Ok(cmd) => match tokio::time::timeout(
                        FORWARD_TIMEOUT,
                        app.execute_inner(&req.conversation_id, &cmd, &req.trace_id, false),
                    )
                    .await
                    {
                        Ok(Ok(outcome)) => forward::to_reply(&outcome),
                        Ok(Err(e)) => forward::declined(e),
                        Err(_) => forward::declined("timed out"),
                    },
                },
            };
            let _ = client
                .publish(reply_to, im_schema::encode(&reply).into())
                .await;
        });
    }
}

impl Appender {
    /// Hands a command to another writer; `None` when it is gone, busy,
    /// slow or declines (the caller carries on by itself).
    pub(super) async fn forward(
        &self,
        writer: &str,
        conv_id: &str,
        cmd: &Command,
        trace_id: &str,
    ) -> Option<AppendOutcome> {
        let request = forward::to_request(conv_id, cmd, trace_id);
        let reply = tokio::time::timeout(
            FORWARD_TIMEOUT,
            self.client.request(
                forward::writer_subject(writer),
                im_schema::encode(&request).into(),
            ),
        )
        .await;
        let msg = match reply {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => {
                tracing::debug!(conv_id, writer, error = %e, "forward failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(conv_id, writer, "forward timed out");
                return None;
            }
        };
        let reply: v1::WriteReply = im_schema::decode(&msg.payload).ok()?;
        forward::from_reply(conv_id, &reply)
    }
}
