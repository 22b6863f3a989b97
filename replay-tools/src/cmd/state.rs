//! `im-replay state --conv ID | --user U, --at-seq N | --at TIME`: a
//! conversation's members (with roles) and history, or a user's profile,
//! privacy, contacts, requests and blocks, as of that point, folded by the
//! same projections the projector runs, printed as JSON in the projector's
//! own answer types, so they compare one to one with a query at that
//! checkpoint.

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
    #[arg(long, required_unless_present = "user", conflicts_with = "user")]
    pub conv: Option<String>,
    /// A user's people logs (their own and every pair's) instead.
    #[arg(long)]
    pub user: Option<String>,
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
    let (history_ks, members_ks, last) =
        fold_log(js, filters, (to_seq, at_time), &|_| true).await?;
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

/// The keyspaces of `history` and `members` folded from the messages of
/// `filters` up to `to_seq` or `at_time` whose conversation `keep` keeps,
/// and the last stream sequence read.
async fn fold_log(
    js: &async_nats::jetstream::Context,
    filters: Vec<String>,
    (to_seq, at_time): (u64, Option<time::OffsetDateTime>),
    keep: &dyn Fn(&str) -> bool,
) -> anyhow::Result<(MemKeyspace, MemKeyspace, u64)> {
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
        last = raw.seq;
        if !keep(raw.subject.rsplit('.').next().unwrap_or_default()) {
            continue;
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
    }
    Ok((history_ks, members_ks, last))
}

/// A user's people as of `to_seq` or `at_time`: profile and privacy (from
/// their own log), contacts, requests both ways and blocks (from every
/// pair log), and the last stream sequence read. Reads the whole log:
/// pair logs have no subject of their own to filter on.
pub async fn user_at(
    js: &async_nats::jetstream::Context,
    user: &str,
    to_seq: u64,
    at_time: Option<time::OffsetDateTime>,
) -> anyhow::Result<serde_json::Value> {
    use im_projectors::projections::people;
    let all = vec![im_streams::subjects::CONV_ALL.to_string()];
    let keep = |conv: &str| im_streams::ids::is_people_log(conv);
    let (_, members_ks, last) = fold_log(js, all, (to_seq, at_time), &keep).await?;
    let found = people::profiles(&members_ks, &[user.to_string()])?;
    let contacts = people::contacts_of(&members_ks, user, None)?;
    Ok(serde_json::json!({
        "user_id": user,
        "stream_seq": last,
        "profile": found.profiles.first().map(as_json).transpose()?,
        "privacy": found.privacy.first().map(as_json).transpose()?,
        // Where the user could be woken then, and what they had muted.
        "notify": found.notify.first().map(as_json).transpose()?,
        "contacts": as_json(&contacts)?,
    }))
}

fn as_json<M: serde::Serialize>(m: &M) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&im_schema::to_json(m))?)
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
    use im_streams::ids::{validate_id, IdKind};
    let at = args.at.as_deref().map(super::parse_time).transpose()?;
    let to_seq = args.at_seq.unwrap_or(0);
    let conv = match (args.conv, args.user) {
        (Some(conv), _) => conv,
        (None, Some(user)) => {
            validate_id(IdKind::User, &user)?;
            let js = args.nats.connect().await?;
            let out = user_at(&js, &user, to_seq, at).await?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        (None, None) => anyhow::bail!("--conv or --user"),
    };
    validate_id(IdKind::Conversation, &conv)?;
    let js = args.nats.connect().await?;
    let (members, history, last) = state_at(&js, &conv, to_seq, at).await?;
    let as_value =
        |text: String| -> anyhow::Result<serde_json::Value> { Ok(serde_json::from_str(&text)?) };
    let history: Vec<serde_json::Value> = history
        .iter()
        .map(|h| as_value(im_schema::to_json(h)))
        .collect::<anyhow::Result<_>>()?;
    let out = serde_json::json!({
        "conversation_id": conv,
        "stream_seq": last,
        "members": as_value(im_schema::to_json(&members))?,
        "history": history,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
