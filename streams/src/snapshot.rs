//! A conversation's rules state as the `members` projection keeps it: a
//! cold writer starts from it and reads only the log's tail after its
//! version, instead of the whole history (design brief, "Writer state").
//! The wire form and its conversions live here, beside the one query
//! that asks for it.

use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

use crate::conversation::{ConvKind, ConvState, MemberState, MessageMeta, Role};
use crate::error::{BoxError, StreamsError};
use crate::subjects::{query_subject, Topology};

/// How long a cold writer waits for a projector's snapshot: a round trip
/// and a batch's commit (the answer is read under the batch lock). Past
/// it, the writer reads the whole subject instead.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// The wire form of a conversation's rules state.
pub fn to_wire(state: &ConvState) -> v1::RulesStateResult {
    v1::RulesStateResult {
        found: true,
        kind: match state.kind {
            Some(ConvKind::Direct) => v1::ConversationKind::Direct as i32,
            Some(ConvKind::User) => v1::ConversationKind::User as i32,
            Some(ConvKind::Pair) => v1::ConversationKind::Pair as i32,
            _ => v1::ConversationKind::Group as i32,
        },
        title: state.title.clone(),
        members: state
            .members
            .iter()
            .map(|(user, m)| v1::MemberRecord {
                user_id: user.clone(),
                role: m.role.to_wire() as i32,
                muted_until_ms: m.muted_until_ms,
                joined_seq: 0,
            })
            .collect(),
        blacklist: state.blacklist.iter().cloned().collect(),
        conv_seq: state.conv_seq,
        version: state.version,
        last_hash: state.last_hash.to_vec(),
        recent: state
            .messages
            .iter()
            .map(|(conv_seq, m)| v1::RecentMessageAt {
                conv_seq: *conv_seq,
                message: Some(v1::RecentMessage {
                    sender: m.sender.clone(),
                    client_msg_id: m.client_msg_id.clone(),
                    sent_at_ms: m.sent_at_ms,
                    recalled: m.recalled,
                }),
            })
            .collect(),
        people: Some(state.people.to_row()),
    }
}

/// The rules state a snapshot carries (None when it has none).
pub fn from_wire(conv_id: &str, wire: v1::RulesStateResult) -> Option<ConvState> {
    if !wire.found {
        return None;
    }
    let mut state = ConvState::empty(conv_id);
    state.kind = Some(ConvKind::from_wire(wire.kind));
    state.people = crate::people::People::from_row(&wire.people.unwrap_or_default());
    state.title = wire.title;
    state.conv_seq = wire.conv_seq;
    state.version = wire.version;
    state.last_hash = wire.last_hash.try_into().ok()?;
    for m in wire.members {
        let member = MemberState {
            role: Role::from_wire(m.role),
            muted_until_ms: m.muted_until_ms,
        };
        state.members.insert(m.user_id, member);
    }
    state.blacklist = wire.blacklist.into_iter().collect();
    for r in wire.recent {
        let m = r.message.unwrap_or_default();
        let meta = MessageMeta {
            sender: m.sender,
            client_msg_id: m.client_msg_id,
            sent_at_ms: m.sent_at_ms,
            recalled: m.recalled,
        };
        state.messages.insert(r.conv_seq, meta);
    }
    Some(state)
}

/// Asks the conversation's projectors for its rules state. None when they
/// have no event of it; an error when none answers in time.
pub async fn fetch(
    client: &async_nats::Client,
    topology: Topology,
    conv_id: &str,
) -> Result<Option<ConvState>, StreamsError> {
    let request = v1::QueryRequest {
        query: Some(Query::RulesState(v1::RulesStateQuery {
            conversation_id: conv_id.to_string(),
        })),
        ..Default::default()
    };
    let subject = query_subject(topology.partition_of(conv_id));
    let unavailable = |why: BoxError| StreamsError::unavailable("conversation snapshot", why);
    let reply = tokio::time::timeout(
        SNAPSHOT_TIMEOUT,
        client.request(subject, im_schema::encode(&request).into()),
    )
    .await
    .map_err(|_| unavailable("no answer in time".into()))?
    .map_err(|e| unavailable(e.into()))?;
    let response: v1::QueryResponse =
        im_schema::decode(&reply.payload).map_err(|e| unavailable(e.into()))?;
    match response.result {
        Some(R::RulesState(wire)) => Ok(from_wire(conv_id, wire)),
        Some(R::Error(e)) => Err(unavailable(e.message.into())),
        other => Err(unavailable(format!("unexpected answer {other:?}").into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{decide, Action, Command, MessageBody};
    use crate::seal::seal;

    #[test]
    fn a_state_survives_its_wire_form() {
        let mut state = ConvState::empty("g");
        let mut run = |actor: &str, action: Action| {
            let cmd = Command {
                actor: actor.into(),
                client_msg_id: format!("c{}", state.conv_seq),
                action,
            };
            for s in seal(&state, decide(&state, &cmd, 1_000).unwrap()) {
                state.extend(&s, state.version + 3);
            }
        };
        let members = vec![("ann".into(), Role::Admin), ("bo".into(), Role::Member)];
        run(
            "own",
            Action::CreateGroup {
                title: "t".into(),
                members,
            },
        );
        let text = MessageBody::Text("hi".into());
        let send = Action::Send {
            peer: None,
            body: text,
            meta: Default::default(),
        };
        run("ann", send);
        run(
            "ann",
            Action::Mute {
                user: "bo".into(),
                until_ms: 9_000,
            },
        );
        run("own", Action::Recall { conv_seq: 2 });
        run("own", Action::Blacklist { user: "cy".into() });
        assert_eq!(from_wire("g", to_wire(&state)), Some(state));
        assert_eq!(from_wire("g", v1::RulesStateResult::default()), None);
    }
}
