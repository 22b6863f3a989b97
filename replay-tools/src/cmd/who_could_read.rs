//! `im-replay who-could-read --conv ID --seq N`: the members of the
//! conversation when its event N (a conv_seq) was appended, folded with the
//! writers' own `apply`.

use im_streams::conversation::{apply, ConvState};

use crate::read::{Bounds, Reader};

#[derive(Debug, clap::Args)]
pub struct WhoCouldReadArgs {
    #[arg(long)]
    pub conv: String,
    /// The message's conv_seq.
    #[arg(long)]
    pub seq: u64,
    #[command(flatten)]
    pub nats: super::Connection,
}

pub async fn run(args: WhoCouldReadArgs) -> anyhow::Result<()> {
    im_streams::ids::validate_id(im_streams::ids::IdKind::Conversation, &args.conv)?;
    anyhow::ensure!(args.seq > 0, "--seq is a conv_seq, from 1");
    let js = args.nats.connect().await?;
    let topology = im_streams::definitions::read_topology(&js).await?;
    let filters = vec![topology.conv_subject(&args.conv)?];
    let mut reader = Reader::open(
        &js,
        im_streams::definitions::CONV_STREAM,
        filters,
        &Bounds::default(),
    )
    .await?;
    let mut state = ConvState::empty(args.conv.clone());
    let mut found = None;
    while let Some(raw) = reader.next().await? {
        let ev: im_schema::v1::ConvEvent = im_schema::decode(&raw.payload)?;
        apply(&mut state, &ev);
        if ev.conv_seq == args.seq {
            found = Some((raw.seq, im_streams::conversation::event_type(&ev)));
            break;
        }
    }
    let Some((stream_seq, event_type)) = found else {
        anyhow::bail!("conversation {} has no event {}", args.conv, args.seq);
    };
    let members: Vec<serde_json::Value> = state
        .members
        .iter()
        .map(|(user, m)| {
            serde_json::json!({
                "user_id": user,
                "role": m.role.to_wire().as_str_name(),
            })
        })
        .collect();
    let out = serde_json::json!({
        "conversation_id": args.conv,
        "conv_seq": args.seq,
        "stream_seq": stream_seq,
        "event_type": event_type,
        "members": members,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
