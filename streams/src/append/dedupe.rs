//! Whether a command is already in the log: the writer's own index, the
//! `dedupe` projection, or its own bounded scan.

use std::sync::atomic::Ordering::Relaxed;

use crate::codec::decode_conv;
use crate::conversation::Command;
use crate::dedupe_index;
use crate::error::{OrUnavailable, StreamsError};
use crate::seen::{Known, SeenCommands};

use super::{rejected_id, AppendOutcome, Appender};

impl Appender {
    /// The original's positions when the command is already in the log up
    /// to the writer's version. Asks the `dedupe` projection only for what
    /// the writer cannot rule out itself and has not asked about yet.
    pub(super) async fn known_original(
        &self,
        conv_id: &str,
        cmd: &Command,
        msg_id: &str,
        seen: &SeenCommands,
        asked_upto: &mut u64,
    ) -> Result<Option<AppendOutcome>, StreamsError> {
        match seen.lookup(msg_id) {
            Known::Stored {
                stream_seq,
                conv_seq,
            } => Ok(Some(AppendOutcome::Duplicate {
                conv_id: conv_id.to_string(),
                stream_seq,
                conv_seq,
            })),
            Known::Ask { upto } if upto > *asked_upto => {
                let original = self.ask_index(conv_id, cmd, upto).await?;
                *asked_upto = upto;
                Ok(original)
            }
            Known::Ask { .. } | Known::New => Ok(None),
        }
    }

    /// Whether the command is among the conversation's events up to `upto`,
    /// as an outcome: the `dedupe` projection's answer, or, when it cannot
    /// answer, the writer's own bounded scan of the subject.
    pub(super) async fn ask_index(
        &self,
        conv_id: &str,
        cmd: &Command,
        upto: u64,
    ) -> Result<Option<AppendOutcome>, StreamsError> {
        self.counters.index_lookups.fetch_add(1, Relaxed);
        let (sender, cmid) = (&cmd.actor, &cmd.client_msg_id);
        let found = match dedupe_index::lookup(
            &self.client,
            self.topology,
            conv_id,
            sender,
            cmid,
            upto,
        )
        .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(conv_id, error = %e, "dedupe index unavailable: scanning the subject");
                self.counters.index_scans.fetch_add(1, Relaxed);
                let subject = self.topology.conv_subject(conv_id).expect("validated");
                dedupe_index::scan(&self.client, &subject, &self.keys, (sender, cmid), upto).await?
            }
        };
        Ok(
            found.map(|(stream_seq, conv_seq)| AppendOutcome::Duplicate {
                conv_id: conv_id.to_string(),
                stream_seq,
                conv_seq,
            }),
        )
    }

    /// The original ids of a duplicate, from the stored event itself.
    pub(super) async fn original(
        &self,
        conv_id: &str,
        subject: &str,
        stream_seq: u64,
    ) -> Result<AppendOutcome, StreamsError> {
        let msg = self
            .conv_stream
            .get_raw_message(stream_seq)
            .await
            .or_unavailable("checking for a duplicate")?;
        if msg.subject.as_str() != subject {
            // The same client_msg_id was used for another conversation.
            return Ok(AppendOutcome::Rejected(rejected_id(
                "client_msg_id",
                "already used for another conversation",
            )));
        }
        let stored = decode_conv(&msg)?;
        Ok(AppendOutcome::Duplicate {
            conv_id: conv_id.to_string(),
            stream_seq,
            conv_seq: stored.event.conv_seq,
        })
    }
}
