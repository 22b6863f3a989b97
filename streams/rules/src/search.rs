//! What a search query may be, and how it is read: words (every one must
//! match) and "quoted phrases"; the last unquoted word of a query that
//! does not end in a space or a quote is also a prefix (the user is still
//! typing it). Checked the same way by the gateway (a clear 400 before
//! anything is asked) and by the projector that runs it.

/// Bytes of a query: a search box's worth; longer is refused, not cut (a
/// cut query would find something else than asked).
pub const QUERY_BYTES_MAX: usize = 256;

/// Words and phrases of a query: each is a clause every hit must match.
pub const PARTS_MAX: usize = 16;

/// Hits per page: a screenful or two.
pub const LIMIT_MAX: u32 = 50;

/// By relevance, how deep a user may page (offset + limit): each page
/// asks every partition for that many.
pub const RELEVANCE_DEPTH_MAX: u32 = 500;

/// Why a query was refused: the user's to mend.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryTextError {
    #[error("nothing to search for: the query has no letters or digits")]
    Empty,
    #[error("the query is longer than {QUERY_BYTES_MAX} bytes")]
    TooLong,
    #[error("a quote is not closed")]
    Unbalanced,
    #[error("more than {PARTS_MAX} words or phrases")]
    TooManyParts,
}

/// A word or a quoted phrase.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    pub text: String,
    pub phrase: bool,
    /// The last word, still being typed: its last term is a prefix.
    pub prefix: bool,
}

pub fn parse(q: &str) -> Result<Vec<Part>, QueryTextError> {
    if q.len() > QUERY_BYTES_MAX {
        return Err(QueryTextError::TooLong);
    }
    if q.matches('"').count() % 2 == 1 {
        return Err(QueryTextError::Unbalanced);
    }
    if !q.chars().any(char::is_alphanumeric) {
        return Err(QueryTextError::Empty);
    }
    let mut parts = Vec::new();
    for (i, piece) in q.split('"').enumerate() {
        let words = piece.split_whitespace();
        match i % 2 {
            1 if !piece.trim().is_empty() => parts.push(Part {
                text: piece.to_string(),
                phrase: true,
                prefix: false,
            }),
            1 => {}
            _ => parts.extend(words.map(|w| Part {
                text: w.to_string(),
                phrase: false,
                prefix: false,
            })),
        }
    }
    let typing = !q.ends_with(char::is_whitespace) && !q.ends_with('"');
    if let Some(last) = parts.last_mut().filter(|p| typing && !p.phrase) {
        last.prefix = true;
    }
    if parts.len() > PARTS_MAX {
        return Err(QueryTextError::TooManyParts);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(text: &str, phrase: bool, prefix: bool) -> Part {
        Part {
            text: text.into(),
            phrase,
            prefix,
        }
    }

    #[test]
    fn words_phrases_and_the_word_being_typed() {
        assert_eq!(
            parse(r#"lunch "next week" mee"#),
            Ok(vec![
                part("lunch", false, false),
                part("next week", true, false),
                part("mee", false, true)
            ])
        );
        assert_eq!(parse("开会 "), Ok(vec![part("开会", false, false)]));
        assert_eq!(parse(r#""a b""#), Ok(vec![part("a b", true, false)]));
    }

    #[test]
    fn bad_queries_are_refused_with_a_reason() {
        assert_eq!(parse(""), Err(QueryTextError::Empty));
        assert_eq!(parse("  ?! "), Err(QueryTextError::Empty));
        assert_eq!(parse(r#""open"#), Err(QueryTextError::Unbalanced));
        assert_eq!(parse(&"a".repeat(10_000)), Err(QueryTextError::TooLong));
        let many = vec!["w"; PARTS_MAX + 1].join(" ");
        assert_eq!(parse(&many), Err(QueryTextError::TooManyParts));
    }
}
