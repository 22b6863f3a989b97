//! `typing`: ephemeral, core NATS only, never in the log; members only.

use im_schema::v1::{self, envelope::Payload};

use super::reply;
use crate::error::{error_frame, rejection_frame};
use crate::AppState;

pub async fn run(state: &AppState, user: &str, typing: v1::Typing) -> Option<v1::Envelope> {
    let conv_state = match state.appender.current_state(&typing.conversation_id).await {
        Ok(s) => s,
        Err(e) => return Some(error_frame(v1::ErrorCode::BadRequest, e.to_string(), "")),
    };
    // A user's or a pair's log is no conversation to type in.
    if !conv_state.is_member(user) || im_streams::ids::is_people_log(&typing.conversation_id) {
        return Some(rejection_frame(&im_streams::Rejection::NotMember, ""));
    }
    let notice = im_schema::encode(&reply(Payload::TypingNotice(v1::TypingNotice {
        conversation_id: typing.conversation_id.clone(),
        user_id: user.to_string(),
        typing: typing.typing,
    })));
    let notice = bytes::Bytes::from(notice);
    for member in conv_state.members.keys().filter(|m| *m != user) {
        if let Ok(subject) = im_streams::subjects::notice_subject(member) {
            let _ = state.client.publish(subject, notice.clone()).await;
        }
    }
    None
}
