//! `send`: the command goes through the same append path and rules as every
//! other writer; the ack says STORED only after JetStream's PubAck.

use im_schema::v1::{self, envelope::Payload};
use im_streams::{subjects::direct_conversation_id, Action, AppendOutcome, Command, MessageBody};

use super::reply;
use crate::error::{error_frame, streams_code};
use crate::AppState;

fn ack(
    client_msg_id: &str,
    conv: &str,
    status: v1::AckStatus,
    stream_seq: u64,
    conv_seq: u64,
    reason: &str,
) -> v1::Envelope {
    reply(Payload::SendAck(v1::SendAck {
        client_msg_id: client_msg_id.to_string(),
        server_msg_id: if stream_seq > 0 {
            format!("IM_CONV:{stream_seq}")
        } else {
            String::new()
        },
        conv_seq,
        status: status as i32,
        reason: reason.to_string(),
        conversation_id: conv.to_string(),
        stream_seq,
    }))
}

pub async fn run(
    state: &AppState,
    user: &str,
    send: v1::SendMessage,
    trace_id: &str,
) -> v1::Envelope {
    let cmid = send.client_msg_id.clone();
    let rejected =
        |conv: &str, reason: String| ack(&cmid, conv, v1::AckStatus::Rejected, 0, 0, &reason);
    let (conv, peer) = match (send.conversation_id.is_empty(), send.to_user_id.is_empty()) {
        (false, true) => (send.conversation_id.clone(), None),
        (true, false) => match direct_conversation_id(user, &send.to_user_id) {
            Ok(id) => (id, Some(send.to_user_id.clone())),
            Err(e) => return rejected("", format!("invalid_argument: {e}")),
        },
        _ => {
            return rejected(
                "",
                "invalid_argument: exactly one of conversation_id and to_user_id".into(),
            )
        }
    };
    let body = match send.body {
        Some(v1::send_message::Body::Text(t)) => MessageBody::Text(t),
        Some(v1::send_message::Body::Media(m)) => MessageBody::Media(m),
        None => return rejected(&conv, "invalid_argument: no body".into()),
    };
    let cmd = Command {
        actor: user.to_string(),
        client_msg_id: cmid.clone(),
        action: Action::Send {
            peer,
            body,
            meta: send.meta.into_iter().collect(),
        },
    };
    tracing::debug!(trace_id, user, conv, client_msg_id = cmid, "send");
    let started = std::time::Instant::now();
    let outcome = state.appender.execute(&conv, &cmd, trace_id).await;
    state.metrics.append_took("ws", started);
    match outcome {
        Ok(AppendOutcome::Stored {
            stream_seq,
            conv_seq,
            ..
        }) => {
            state.presence.wrote(user);
            ack(
                &cmid,
                &conv,
                v1::AckStatus::Stored,
                stream_seq,
                conv_seq,
                "",
            )
        }
        Ok(AppendOutcome::Duplicate {
            stream_seq,
            conv_seq,
            ..
        }) => ack(
            &cmid,
            &conv,
            v1::AckStatus::Duplicate,
            stream_seq,
            conv_seq,
            "",
        ),
        Ok(AppendOutcome::Rejected(r)) => rejected(&conv, format!("{}: {r}", r.code())),
        Err(e) => error_frame(streams_code(&e), e.to_string(), &cmid),
    }
}
