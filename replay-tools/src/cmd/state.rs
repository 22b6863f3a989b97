//! `im-replay state --conv ID --at-seq N | --at TIME`: the conversation's
//! members (with roles) and history as of that point, folded by the same
//! projections the projector runs, printed as JSON in the projector's own
//! answer types, so they compare one to one with a query at that checkpoint.

use im_projectors::fold::{fold_one, Delivered, Target, Verdicts};
use im_projectors::judge::Judge;
use im_projectors::members_cache::MembersCache;
use im_projectors::projections::{history::History, members::Members, FoldCtx};
use im_projectors::runner::{Applied, Source};
use im_projectors::store::{Keyspace, MemKeyspace};
use im_streams::signing::KeyRing;

use crate::read::{Bounds, Reader};

#[derive(Debug, clap::Args)]
pub struct StateArgs {
    #[arg(long)]
    pub conv: String,
    /// The last IM_CONV stream sequence to include.
    #[arg(long, conflicts_with = "at", required_unless_present = "at")]
    pub at_seq: Option<u64>,
    /// The last store time to include (RFC 3339).
    #[arg(long)]
    pub at: Option<String>,
    #[command(flatten)]
    pub nats: super::Connection,
}

/// The conversation as of `bounds`: (members, history, last stream seq
/// folded).
pub async fn state_at(
    js: &async_nats::jetstream::Context,
    conv: &str,
    to_seq: u64,
    at_time: Option<time::OffsetDateTime>,
) -> anyhow::Result<(
    im_schema::v1::MembersResult,
    Vec<im_schema::v1::HistoryEntry>,
    u64,
)> {
    let topology = im_streams::definitions::read_topology(js).await?;
    let filters = vec![topology.conv_subject(conv)?];
    let bounds = Bounds {
        to_seq,
        ..Default::default()
    };
    let mut reader =
        Reader::open(js, im_streams::definitions::CONV_STREAM, filters, &bounds).await?;
    // A keyspace each, as the projector keeps them: both fold the
    // membership rows, and sharing them would make the second see every
    // change as already made (a removal not counted, say).
    let (history_ks, members_ks) = (MemKeyspace::default(), MemKeyspace::default());
    let mut last = 0;
    // Folded as the projector folds: what is not part of the conversation
    // is left out, as it is of every read model.
    let mut cache = MembersCache::default();
    // Judged as the projector judges: signatures and the rules.
    let mut judge = Judge::default();
    let mut ring = KeyRing::new(js.clone(), std::time::Duration::MAX);
    let mut at = [Applied::default(); 2];
    while let Some(raw) = reader.next().await? {
        let named = vec![(raw.seq, crate::audit::signature_of(&raw))];
        let keys = std::sync::Arc::new(ring.prepare(named).await?.clone());
        judge.set_keys(keys, Default::default());
        if at_time.is_some_and(|t| raw.time > t) {
            break;
        }
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in &raw.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        let delivered = Delivered {
            source: Source::Conv,
            stream_seq: raw.seq,
            subject: &raw.subject,
            headers: Some(&headers),
            payload: &raw.payload,
        };
        let mut targets = [
            Target::new(&History, &history_ks, at[0])?,
            Target::new(&Members, &members_ks, at[1])?,
        ];
        let mut ctx = FoldCtx {
            members: &mut cache,
            effects: false,
            large_above: usize::MAX,
        };
        let mut verdicts = Verdicts::Judge(&mut judge);
        fold_one(
            &mut targets,
            &delivered,
            &mut verdicts,
            &mut ctx,
            &mut Vec::new(),
        )?;
        let [history, members] = targets;
        at = [history.at, members.at];
        let (h, m) = (history.tx.into_writes(), members.tx.into_writes());
        history_ks.commit(h)?;
        members_ks.commit(m)?;
        last = raw.seq;
    }
    let members = all_members(&members_ks, conv)?;
    let mut history = Vec::new();
    let mut from = 0;
    // Bounded by the conversation's length: each page moves `from` on.
    loop {
        let page =
            im_projectors::projections::history::page(&history_ks, conv, from, u32::MAX, false)?;
        history.extend(page.entries);
        if page.next_seq == 0 {
            break;
        }
        from = page.next_seq;
    }
    Ok((members, history, last))
}

/// Every member of `conv`, page by page, in one answer.
fn all_members(ks: &dyn Keyspace, conv: &str) -> anyhow::Result<im_schema::v1::MembersResult> {
    use im_projectors::projections::members::{members_of, MEMBERS_PAGE_MAX};
    let none = || anyhow::anyhow!("conversation {conv} has no events by then");
    let mut all = members_of(ks, conv, "", MEMBERS_PAGE_MAX)?.ok_or_else(none)?;
    // Bounded by the group's size: each page moves `after` on.
    while !all.next_after.is_empty() {
        let page = members_of(ks, conv, &all.next_after, MEMBERS_PAGE_MAX)?.ok_or_else(none)?;
        all.members.extend(page.members);
        all.next_after = page.next_after;
    }
    Ok(all)
}

pub async fn run(args: StateArgs) -> anyhow::Result<()> {
    im_streams::ids::validate_id(im_streams::ids::IdKind::Conversation, &args.conv)?;
    let at = args.at.as_deref().map(super::parse_time).transpose()?;
    let js = args.nats.connect().await?;
    let (members, history, last) = state_at(&js, &args.conv, args.at_seq.unwrap_or(0), at).await?;
    let as_value =
        |text: String| -> anyhow::Result<serde_json::Value> { Ok(serde_json::from_str(&text)?) };
    let history: Vec<serde_json::Value> = history
        .iter()
        .map(|h| as_value(im_schema::to_json(h)))
        .collect::<anyhow::Result<_>>()?;
    let out = serde_json::json!({
        "conversation_id": args.conv,
        "stream_seq": last,
        "members": as_value(im_schema::to_json(&members))?,
        "history": history,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
