//! People commands: appended to their log (the actor's own, or the pair's)
//! by the same command loop as any conversation's; and a block carried
//! onto the pair's direct conversation, whose own rules then stop both
//! sides' messages (a direct conversation's blacklist is a block).

use sha2::{Digest, Sha256};

use super::{AppendOutcome, Appender};
use crate::conversation::{Action, Command};
use crate::error::StreamsError;
use crate::ids::direct_conversation_id;
use crate::people::log_of;

/// The client id of the block a user-level block carries onto the direct
/// conversation: derived from the block's own, so a retry of the block
/// carries the same one (and is answered DUPLICATE there too).
fn carried_id(client_msg_id: &str) -> String {
    let digest = Sha256::digest(client_msg_id.as_bytes());
    format!("blk-{}", hex::encode(&digest[..16]))
}

impl Appender {
    /// Decides and appends a people command on its log. A block (or its
    /// lifting) that is stored, now or before, is then carried onto the
    /// pair's direct conversation if it has one; an error there is
    /// returned, so the client's retry completes it.
    pub async fn execute_people(
        &self,
        cmd: &Command,
        trace_id: &str,
    ) -> Result<AppendOutcome, StreamsError> {
        let log = match log_of(&cmd.actor, &cmd.action) {
            Ok(log) => log,
            Err(rejection) => return Ok(AppendOutcome::Rejected(rejection)),
        };
        let outcome = self.execute(&log, cmd, trace_id).await?;
        if !matches!(outcome, AppendOutcome::Rejected(_)) {
            self.carry_block(cmd, trace_id).await?;
        }
        Ok(outcome)
    }

    async fn carry_block(&self, cmd: &Command, trace_id: &str) -> Result<(), StreamsError> {
        let (user, block) = match &cmd.action {
            Action::BlockUser { user } => (user, true),
            Action::UnblockUser { user } => (user, false),
            _ => return Ok(()),
        };
        let Ok(dm) = direct_conversation_id(&cmd.actor, user) else {
            return Ok(());
        };
        let state = self.current_state(&dm).await?;
        if !state.exists() || state.blacklist.contains(user.as_str()) == block {
            return Ok(());
        }
        let action = if block {
            Action::Blacklist { user: user.clone() }
        } else {
            Action::Unblacklist { user: user.clone() }
        };
        let carried = Command {
            actor: cmd.actor.clone(),
            client_msg_id: carried_id(&cmd.client_msg_id),
            action,
        };
        if let AppendOutcome::Rejected(r) = self.execute(&dm, &carried, trace_id).await? {
            tracing::debug!(conv_id = %dm, code = r.code(), trace_id, "block not carried");
        }
        Ok(())
    }
}
