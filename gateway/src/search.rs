//! Search across partitions: every partition's projector is asked at once
//! and the answers merged. Newest first, hits are ordered by their stream
//! position, unique across partitions, so a page ends at a position and
//! the next starts below it: no repeats, no gaps. By relevance, each
//! partition gives its best `offset + limit` and the merge takes the
//! slice (BM25 scores are each partition's own: an approximation).

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

/// What a search looks for and for whom.
pub struct Ask {
    pub user: String,
    pub q: String,
    pub kind: v1::SearchDocKind,
    pub conversation: Option<String>,
    pub cursor: Cursor,
    pub limit: u32,
    pub by_relevance: bool,
    /// USER: who may be found.
    pub users: Vec<String>,
    pub pos: u64,
}

/// Where a page starts: below a stream position (newest first) or after
/// a number of hits (by relevance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    Start,
    Below(u64),
    Skip(u32),
}

impl Cursor {
    /// The cursor of a `next` the gateway gave; None for any other text.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (tag, n) = text.split_at_checked(1)?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        match tag {
            "n" => n.parse().ok().filter(|p| *p > 0).map(Cursor::Below),
            "r" => n.parse().ok().map(Cursor::Skip),
            _ => None,
        }
    }

    pub fn text(self) -> String {
        match self {
            Cursor::Start => String::new(),
            Cursor::Below(p) => format!("n{p}"),
            Cursor::Skip(n) => format!("r{n}"),
        }
    }
}

fn query(a: &Ask, users: Vec<String>) -> Query {
    let (before_position, offset) = match a.cursor {
        Cursor::Below(p) => (p, 0),
        Cursor::Skip(n) => (0, n),
        Cursor::Start => (0, 0),
    };
    Query::Search(v1::SearchQuery {
        user_id: a.user.clone(),
        q: a.q.clone(),
        kind: a.kind as i32,
        conversation_id: a.conversation.clone().unwrap_or_default(),
        before_position,
        offset,
        limit: a.limit,
        by_relevance: a.by_relevance,
        user_ids: users,
    })
}

/// The partitions to ask, each with the users it may find (USER: the
/// partition of each user's own log).
fn targets(state: &crate::AppState, a: &Ask) -> Vec<(u32, Vec<String>)> {
    let topology = state.appender.topology();
    if let Some(conv) = &a.conversation {
        return vec![(topology.partition_of(conv), Vec::new())];
    }
    if a.kind != v1::SearchDocKind::User {
        return (0..topology.partitions).map(|p| (p, Vec::new())).collect();
    }
    let mut by: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for u in &a.users {
        if let Ok(log) = im_streams::ids::user_log_id(u) {
            by.entry(topology.partition_of(&log))
                .or_default()
                .push(u.clone());
        }
    }
    by.into_iter().collect()
}

/// Asks every partition concerned and merges their hits into one page.
pub async fn search(state: &crate::AppState, a: &Ask) -> Result<v1::SearchPage, v1::ErrorCode> {
    let asks = targets(state, a)
        .into_iter()
        .map(|(p, users)| crate::query::ask(&state.client, p, (a.pos, 0), query(a, users)));
    let started = std::time::Instant::now();
    let answers = futures::future::join_all(asks).await;
    state.metrics.query_took("search", started);
    let mut results = Vec::with_capacity(answers.len());
    for answer in answers {
        // A position past the log's end is the caller's mistake (400).
        match crate::query::past_end(state, a.pos, answer).await? {
            R::Search(r) => results.push(r),
            _ => return Err(v1::ErrorCode::Internal),
        }
    }
    Ok(match a.by_relevance {
        true => by_relevance(results, a),
        false => newest_first(results, a.limit as usize),
    })
}

/// Newest first: below the highest partition floor, some partition was
/// not examined, so the page stops there.
pub fn newest_first(results: Vec<v1::SearchResult>, limit: usize) -> v1::SearchPage {
    let floor = results.iter().map(|r| r.floor).max().unwrap_or(0);
    let truncated = results.iter().any(|r| r.truncated);
    let mut hits: Vec<v1::SearchHit> = results
        .into_iter()
        .flat_map(|r| r.hits)
        .filter(|h| h.stream_seq >= floor)
        .collect();
    hits.sort_by_key(|h| std::cmp::Reverse(h.stream_seq));
    let next = if hits.len() > limit {
        hits.truncate(limit);
        hits.last().map(|h| Cursor::Below(h.stream_seq))
    } else {
        (floor > 0).then_some(Cursor::Below(floor))
    };
    v1::SearchPage {
        hits,
        next: next.map(Cursor::text).unwrap_or_default(),
        truncated,
    }
}

fn by_relevance(results: Vec<v1::SearchResult>, a: &Ask) -> v1::SearchPage {
    let offset = match a.cursor {
        Cursor::Skip(n) => n as usize,
        _ => 0,
    };
    let truncated = results.iter().any(|r| r.truncated);
    let mut hits: Vec<v1::SearchHit> = results.into_iter().flat_map(|r| r.hits).collect();
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.stream_seq.cmp(&a.stream_seq))
    });
    let end = offset + a.limit as usize;
    let more = hits.len() > end;
    let hits: Vec<_> = hits
        .into_iter()
        .skip(offset)
        .take(a.limit as usize)
        .collect();
    v1::SearchPage {
        hits,
        next: match more {
            true => Cursor::Skip(end as u32).text(),
            false => String::new(),
        },
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(pos: u64) -> v1::SearchHit {
        v1::SearchHit {
            stream_seq: pos,
            ..Default::default()
        }
    }

    fn result(positions: &[u64], floor: u64) -> v1::SearchResult {
        v1::SearchResult {
            hits: positions.iter().map(|p| hit(*p)).collect(),
            truncated: false,
            floor,
        }
    }

    #[test]
    fn cursors_read_back_and_refuse_anything_else() {
        for c in [Cursor::Below(17), Cursor::Skip(40)] {
            assert_eq!(Cursor::parse(&c.text()), Some(c));
        }
        for bad in ["", "n", "n0", "x5", "n-1", "n1a", "r99999999999", "🙂"] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_page_stops_where_a_partition_stopped_looking() {
        // Partition A looked at 9, 7 and has more below 7; B is done.
        let page = newest_first(vec![result(&[9, 7], 7), result(&[8, 3, 1], 0)], 5);
        let got: Vec<u64> = page.hits.iter().map(|h| h.stream_seq).collect();
        assert_eq!(got, [9, 8, 7]);
        assert_eq!(page.next, "n7");
        // The next page: A below 7 (5, 2), B below 7 (3, 1).
        let page = newest_first(vec![result(&[5, 2], 0), result(&[3, 1], 0)], 3);
        let got: Vec<u64> = page.hits.iter().map(|h| h.stream_seq).collect();
        assert_eq!(got, [5, 3, 2]);
        assert_eq!(page.next, "n2");
        let page = newest_first(vec![result(&[1], 0)], 3);
        assert_eq!(page.next, "");
    }
}
