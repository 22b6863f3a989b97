//! `imctl projections repair --conv ID`: the live projector replays one
//! conversation's subjects into its store, at its current checkpoints.

use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

use super::ask_instance;

#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The conversation to replay.
    #[arg(long = "conv")]
    pub conversation_id: String,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    /// The projector instance whose store is repaired.
    #[arg(long, env = "IM_PROJECTOR_INSTANCE", default_value = im_projectors::DEFAULT_INSTANCE)]
    pub instance: String,
}

/// A repair reads the conversation's whole subject under the projection's
/// batch lock; a long conversation takes a while.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn repair(args: RepairArgs) -> anyhow::Result<()> {
    im_streams::ids::validate_id(im_streams::ids::IdKind::Conversation, &args.conversation_id)?;
    let client = args.nats.connect("imctl").await?;
    let query = Query::Repair(v1::RepairQuery {
        conversation_id: args.conversation_id.clone(),
    });
    let R::Repair(result) = ask_instance(&client, &args.instance, query, REPAIR_TIMEOUT).await?
    else {
        anyhow::bail!("instance {}: not a repair result", args.instance);
    };
    for p in result.projections {
        println!(
            "{}: {} events replayed, {} entries written, {} deleted",
            p.name, p.events, p.written, p.deleted
        );
    }
    Ok(())
}
