//! Answering a search: the words a user typed, parsed into terms of the
//! index's analyzers (`text.rs`), limited to what the user may find (the
//! spans of `projections/search.rs`), and each hit checked against its
//! row before it is shown.

use std::ops::Bound;

use im_schema::v1;
use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, FuzzyTermQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query, RangeQuery,
    TermQuery, TermSetQuery,
};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{DocAddress, DocId, Order, Score, SegmentReader, TantivyDocument, Term};

use im_streams::search::{parse, Part, QueryTextError, LIMIT_MAX, RELEVANCE_DEPTH_MAX};

use super::{doc_hash, text, Fields, Opener, SearchIndex};
use crate::projections::search::{doc_key, spans_key, spans_of};
use crate::store::Keyspace;

/// Conversations of one partition a query covers for one user: two
/// clauses each (more for a member who left and came back).
pub const CONVERSATIONS_PER_QUERY_MAX: usize = 2_000;
/// Clauses of spans one query holds (a conversation and a range each; a
/// member since creation costs none): past it the first conversations by
/// id are searched and the answer says `truncated`.
pub const SPAN_CLAUSES_MAX: usize = 4_000;
/// Characters of a Latin-script word typed before it is also taken as a
/// prefix: one letter would expand to a large part of the dictionary.
pub const PREFIX_CHARS_MIN: usize = 2;
/// Characters of a hit's text shown around its first match.
pub const SNIPPET_CHARS: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(transparent)]
    Query(#[from] QueryTextError),
    #[error("paging deeper than {RELEVANCE_DEPTH_MAX} hits by relevance")]
    TooDeep,
    #[error(transparent)]
    Index(#[from] super::SearchError),
}

impl From<tantivy::TantivyError> for FindError {
    fn from(e: tantivy::TantivyError) -> Self {
        FindError::Index(e.into())
    }
}

impl From<crate::store::StoreError> for FindError {
    fn from(e: crate::store::StoreError) -> Self {
        FindError::Index(e.into())
    }
}

/// A query's clauses and the terms its snippets mark.
pub struct Built {
    pub query: Box<dyn Query>,
    pub exact: Vec<String>,
    pub prefixes: Vec<String>,
}

fn words(field: tantivy::schema::Field, terms: &[String]) -> Option<Box<dyn Query>> {
    let terms: Vec<Term> = terms
        .iter()
        .map(|t| Term::from_field_text(field, t))
        .collect();
    match terms.len() {
        0 => None,
        1 => Some(Box::new(TermQuery::new(
            terms[0].clone(),
            IndexRecordOption::WithFreqs,
        ))),
        _ => Some(Box::new(PhraseQuery::new(terms))),
    }
}

fn prefix_of(field: tantivy::schema::Field, terms: &[String]) -> Option<Box<dyn Query>> {
    let terms: Vec<Term> = terms
        .iter()
        .map(|t| Term::from_field_text(field, t))
        .collect();
    match terms.len() {
        0 => None,
        1 => Some(Box::new(FuzzyTermQuery::new_prefix(
            terms[0].clone(),
            0,
            false,
        ))),
        _ => Some(Box::new(PhrasePrefixQuery::new(terms))),
    }
}

/// The text clauses of a query: every part must match.
pub fn build(f: &Fields, parts: &[Part]) -> Result<Built, QueryTextError> {
    let (mut stemmed, mut raw) = (text::analyzer(text::STEMMED), text::analyzer(text::RAW));
    let mut built = Built {
        query: Box::new(tantivy::query::AllQuery),
        exact: Vec::new(),
        prefixes: Vec::new(),
    };
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    for part in parts {
        let exact = text::terms(&mut stemmed, &part.text);
        let mut either: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        either.extend(words(f.text, &exact).map(|q| (Occur::Should, q)));
        // One CJK character is found as the start of a pair too, typed or
        // not: alone it is indexed only where a run ends.
        let one_cjk = part.text.chars().count() == 1 && part.text.chars().all(text::is_cjk);
        let typed = text::terms(&mut raw, &part.text);
        let long_enough = |t: &String| t.chars().count() >= PREFIX_CHARS_MIN;
        if one_cjk || (part.prefix && typed.last().is_some_and(long_enough)) {
            either.extend(prefix_of(f.raw, &typed).map(|q| (Occur::Should, q)));
            built.prefixes.extend(typed.last().cloned());
        }
        built.exact.extend(exact);
        if !either.is_empty() {
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(either))));
        }
    }
    if clauses.is_empty() {
        return Err(QueryTextError::Empty);
    }
    built.query = Box::new(BooleanQuery::new(clauses));
    Ok(built)
}

fn term_u64(field: tantivy::schema::Field, v: u64) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_u64(field, v),
        IndexRecordOption::Basic,
    ))
}

fn seq_range(field: tantivy::schema::Field, from: u64, to: u64) -> Box<dyn Query> {
    let upper = match to {
        0 => Bound::Unbounded,
        to => Bound::Excluded(Term::from_field_u64(field, to)),
    };
    Box::new(RangeQuery::new(
        Bound::Included(Term::from_field_u64(field, from)),
        upper,
    ))
}

/// Which documents the user may find; None: none at all. `in_scope`
/// says which conversations (and users' own logs) the partition asked
/// covers: an instance serving several answers for each separately.
fn access(
    ks: &dyn Keyspace,
    f: &Fields,
    q: &v1::SearchQuery,
    (kind, in_scope): (v1::SearchDocKind, &dyn Fn(&str) -> bool),
) -> Result<(Option<Box<dyn Query>>, bool), FindError> {
    use v1::SearchDocKind as K;
    if kind == K::User {
        let log = |u: &String| im_streams::ids::user_log_id(u).is_ok_and(|l| in_scope(&l));
        let users: Vec<Term> = q
            .user_ids
            .iter()
            .filter(|u| log(u))
            .map(|u| Term::from_field_text(f.sender, u))
            .collect();
        let found = !users.is_empty();
        let set: Box<dyn Query> = Box::new(TermSetQuery::new(users));
        return Ok((Some(set).filter(|_| found), false));
    }
    let spans = match q.conversation_id.as_str() {
        "" => spans_of(ks, &q.user_id, CONVERSATIONS_PER_QUERY_MAX + 1)?,
        conv => {
            let k = spans_key(&q.user_id, conv);
            let row = ks.get(&k)?;
            let row = row
                .map(|v| crate::store::decode_value(&k, &v))
                .transpose()?;
            row.map(|r| (conv.to_string(), r)).into_iter().collect()
        }
    };
    // Read before the scope is applied: an instance serving several
    // partitions holds all of theirs.
    let mut truncated = spans.len() > CONVERSATIONS_PER_QUERY_MAX;
    let spans: Vec<_> = spans.into_iter().filter(|(c, _)| in_scope(c)).collect();
    let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    // Conversations the user has been in from their creation and still is
    // (most of them) need no range: one set of terms for them all.
    let mut whole: Vec<Term> = Vec::new();
    for (conv, row) in spans.iter().take(CONVERSATIONS_PER_QUERY_MAX) {
        let conv_term = || -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(f.conv, conv),
                IndexRecordOption::Basic,
            ))
        };
        if kind == K::Title {
            // Titles: the conversations the user is in now.
            if row.spans.last().is_some_and(|s| s.to_seq == 0) {
                should.push((Occur::Should, conv_term()));
            }
            continue;
        }
        if let [only] = row.spans.as_slice() {
            if only.from_seq <= 1 && only.to_seq == 0 {
                whole.push(Term::from_field_text(f.conv, conv));
                continue;
            }
        }
        if should.len() + row.spans.len() > SPAN_CLAUSES_MAX {
            truncated = true;
            break;
        }
        for s in &row.spans {
            let both = vec![
                (Occur::Must, conv_term()),
                (Occur::Must, seq_range(f.seq, s.from_seq, s.to_seq)),
            ];
            should.push((Occur::Should, Box::new(BooleanQuery::new(both))));
        }
    }
    if !whole.is_empty() {
        should.push((Occur::Should, Box::new(TermSetQuery::new(whole))));
    }
    let filter: Option<Box<dyn Query>> = match should.is_empty() {
        true => None,
        false => Some(Box::new(BooleanQuery::new(should))),
    };
    Ok((filter, truncated))
}

/// Answers a search over the conversations `in_scope` of an index and
/// its rows.
pub fn run(
    index: &SearchIndex,
    ks: &dyn Keyspace,
    q: &v1::SearchQuery,
    (in_scope, open): (&dyn Fn(&str) -> bool, &Opener),
) -> Result<v1::SearchResult, FindError> {
    let f = &index.fields;
    let kind = v1::SearchDocKind::try_from(q.kind).unwrap_or(v1::SearchDocKind::Message);
    let kind = match kind {
        v1::SearchDocKind::Unspecified => v1::SearchDocKind::Message,
        k => k,
    };
    let built = build(f, &parse(&q.q)?)?;
    let limit = q.limit.clamp(1, LIMIT_MAX);
    if q.by_relevance && q.offset.saturating_add(limit) > RELEVANCE_DEPTH_MAX {
        return Err(FindError::TooDeep);
    }
    let (filter, truncated) = access(ks, f, q, (kind, in_scope))?;
    let Some(filter) = filter else {
        return Ok(v1::SearchResult {
            truncated,
            ..Default::default()
        });
    };
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
        (Occur::Must, built.query.box_clone()),
        (Occur::Must, filter),
        (Occur::Must, term_u64(f.kind, kind as u64)),
    ];
    if q.before_position > 0 && !q.by_relevance {
        clauses.push((Occur::Must, seq_range(f.pos, 0, q.before_position)));
    }
    let query = BooleanQuery::new(clauses);
    let searcher = index.reader.searcher();
    let (candidates, floor): (Vec<(f32, DocAddress)>, u64) = if q.by_relevance {
        // One more than the page: whether more follow.
        let depth = (q.offset + limit) as usize + 1;
        // Ties by position, newest first: the order the gateway merges by,
        // so a deeper page starts with the shallower one.
        let collector = TopDocs::with_limit(depth).tweak_score(|segment: &SegmentReader| {
            let pos = segment.fast_fields().u64("pos").ok();
            move |doc: DocId, score: Score| {
                let at = pos.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
                (score, at)
            }
        });
        let found: Vec<((Score, u64), DocAddress)> = searcher.search(&query, &collector)?;
        (found.into_iter().map(|((s, _), a)| (s, a)).collect(), 0)
    } else {
        let collector =
            TopDocs::with_limit(limit as usize + 1).order_by_fast_field::<u64>("pos", Order::Desc);
        let mut found: Vec<(u64, DocAddress)> = searcher.search(&query, &collector)?;
        let floor = match found.len() > limit as usize {
            true => found[limit as usize - 1].0,
            false => 0,
        };
        found.truncate(limit as usize);
        (found.into_iter().map(|(_, a)| (0.0, a)).collect(), floor)
    };
    let mut hits = Vec::with_capacity(candidates.len());
    for (score, addr) in candidates {
        let doc: TantivyDocument = searcher.doc(addr)?;
        if let Some(hit) = checked_hit(ks, f, &doc, (kind, open), &built)? {
            hits.push(v1::SearchHit { score, ..hit });
        }
    }
    Ok(v1::SearchResult {
        hits,
        truncated,
        floor,
    })
}

/// A hit as its row stands now; None when the row is gone (recalled) or
/// holds another text than the one indexed (edited since).
fn checked_hit(
    ks: &dyn Keyspace,
    f: &Fields,
    doc: &TantivyDocument,
    (kind, open): (v1::SearchDocKind, &Opener),
    built: &Built,
) -> Result<Option<v1::SearchHit>, FindError> {
    let conv = doc
        .get_first(f.conv)
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let seq = doc
        .get_first(f.seq)
        .and_then(|v| v.as_u64())
        .unwrap_or_default();
    let hash = doc.get_first(f.hash).and_then(|v| v.as_u64());
    let k = doc_key(&v1::SearchDoc {
        kind: kind as i32,
        conversation_id: conv.to_string(),
        conv_seq: seq,
        ..Default::default()
    });
    let Some(bytes) = ks.get(&k)? else {
        return Ok(None);
    };
    let row: v1::SearchDoc = crate::store::decode_value(&k, &bytes)?;
    if Some(doc_hash(&row)) != hash {
        return Ok(None);
    }
    // Erased since it was indexed: not shown.
    let Ok(Some(shown)) = open(&row) else {
        return Ok(None);
    };
    let snippet = text::snippet(&shown, &built.exact, &built.prefixes, SNIPPET_CHARS)
        .into_iter()
        .map(|(text, hit)| v1::SnippetPart { text, hit })
        .collect();
    Ok(Some(v1::SearchHit {
        kind: kind as i32,
        conversation_id: row.conversation_id,
        conv_seq: row.conv_seq,
        sender_id: row.sender_id,
        at_ms: row.at_ms,
        stream_seq: row.stream_seq,
        score: 0.0,
        snippet,
    }))
}
