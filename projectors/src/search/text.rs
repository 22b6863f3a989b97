//! How texts become terms: Latin-script words (lowercased, ASCII-folded,
//! and in the `text` field stemmed as English) and, for Chinese, Japanese
//! and Korean, overlapping character pairs ("bigrams") of each run of
//! those characters: `今天开会吗` is `今天 天开 开会 会吗`, so any two or more
//! characters of it are found as a phrase of pairs (`开会` finds it) with
//! no dictionary to ship or keep current. A run of one character is that
//! character. Measured against a word segmenter in `tests::recall`.

use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, Stemmer, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The analyzer of the `text` field: whole words, stemmed.
pub const STEMMED: &str = "im_stemmed";
/// The analyzer of the `raw` field: whole words as typed (lowercased), for
/// prefixes (`meeti` is no prefix of the stem `meet`).
pub const RAW: &str = "im_raw";

/// Bytes of one word kept: a longer "word" (a hash, a URL's path) is cut
/// here; tantivy refuses terms past 65,530 bytes, and nobody types more.
pub const WORD_BYTES_MAX: usize = 64;

/// Whether a character is written without spaces between words (Han,
/// kana, Hangul): such runs are cut into pairs.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF       // hiragana, katakana
        | 0x3400..=0x4DBF     // Han extension A
        | 0x4E00..=0x9FFF     // Han
        | 0xAC00..=0xD7AF     // Hangul syllables
        | 0xF900..=0xFAFF     // Han compatibility
        | 0x20000..=0x2FA1F) // Han extensions B..
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() && !is_cjk(c)
}

/// Splits a text into words and CJK pairs, with byte offsets and
/// positions (consecutive pairs of a run take consecutive positions).
/// Indexed texts (`ends`) also give the last character of each run of two
/// or more as a token of its own, at the position of the run's last pair:
/// a one-character query is found as that character or as the start of a
/// pair. (A query's
/// own words never get it: `开会吗` must stay the phrase of its pairs to
/// be found inside `开会吗好`.)
#[derive(Clone, Default)]
pub struct MixedTokenizer {
    pub ends: bool,
}

pub struct MixedStream {
    tokens: Vec<Token>,
    at: usize,
}

impl TokenStream for MixedStream {
    fn advance(&mut self) -> bool {
        self.at += 1;
        self.at <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.at - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.at - 1]
    }
}

impl Tokenizer for MixedTokenizer {
    type TokenStream<'a> = MixedStream;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> MixedStream {
        MixedStream {
            tokens: tokens_with(text, self.ends),
            at: 0,
        }
    }
}

/// Appends a token at the next position.
fn push(out: &mut Vec<Token>, text: &str, from: usize, to: usize) {
    let position = out.last().map_or(0, |t| t.position + 1);
    push_at(out, text, (from, to), position);
}

fn push_at(out: &mut Vec<Token>, text: &str, (from, to): (usize, usize), position: usize) {
    out.push(Token {
        offset_from: from,
        offset_to: to,
        position,
        text: text[from..to].to_string(),
        position_length: 1,
    });
}

/// The raw tokens of a text as a query reads it (before lowercasing and
/// stemming).
pub fn tokens(text: &str) -> Vec<Token> {
    tokens_with(text, false)
}

/// The raw tokens of a text; with `ends`, as indexed.
pub fn tokens_with(text: &str, ends: bool) -> Vec<Token> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |(o, _)| *o);
    let mut i = 0;
    while i < chars.len() {
        let (from, c) = chars[i];
        let mut j = i + 1;
        if is_cjk(c) {
            while j < chars.len() && is_cjk(chars[j].1) {
                j += 1;
            }
            if j - i == 1 {
                push(&mut out, text, from, end_of(j));
            }
            for (k, (at, _)) in chars.iter().enumerate().take(j.saturating_sub(1)).skip(i) {
                push(&mut out, text, *at, end_of(k + 2));
            }
            // At the last pair's position (as a synonym would be): a
            // phrase reaching past the run keeps its positions.
            if ends && j - i > 1 {
                let position = out.last().map_or(0, |t| t.position);
                push_at(&mut out, text, (chars[j - 1].0, end_of(j)), position);
            }
        } else if is_word(c) {
            while j < chars.len() && is_word(chars[j].1) {
                j += 1;
            }
            let mut to = end_of(j);
            if to - from > WORD_BYTES_MAX {
                to = (from..=from + WORD_BYTES_MAX)
                    .rev()
                    .find(|b| text.is_char_boundary(*b))
                    .unwrap_or(from);
            }
            push(&mut out, text, from, to);
        }
        i = j;
    }
    out
}

/// The analyzer a query's terms come from.
pub fn analyzer(name: &str) -> TextAnalyzer {
    analyzer_with(name, false)
}

/// The analyzer a field's indexed terms come from.
pub fn index_analyzer(name: &str) -> TextAnalyzer {
    analyzer_with(name, true)
}

fn analyzer_with(name: &str, ends: bool) -> TextAnalyzer {
    let base = TextAnalyzer::builder(MixedTokenizer { ends })
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter);
    match name {
        STEMMED => base.filter(Stemmer::new(Language::English)).build(),
        _ => base.build(),
    }
}

/// The terms of a text under an analyzer, in order.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// A text cut into pieces, `true` where a token's term is one of `exact`
/// (under the stemmed analyzer) or starts with one of `prefixes` (under
/// the raw one); at most about `window` characters around the first match.
pub fn snippet(
    text: &str,
    exact: &[String],
    prefixes: &[String],
    window: usize,
) -> Vec<(String, bool)> {
    let mut stemmed = analyzer(STEMMED);
    let mut raw = analyzer(RAW);
    let mut marks: Vec<(usize, usize)> = Vec::new();
    for t in tokens_with(text, true) {
        let piece = &text[t.offset_from..t.offset_to];
        let hit = terms(&mut stemmed, piece).iter().any(|s| exact.contains(s))
            || terms(&mut raw, piece)
                .iter()
                .any(|s| prefixes.iter().any(|p| s.starts_with(p.as_str())));
        if hit {
            match marks.last_mut() {
                Some(last) if t.offset_from <= last.1 => last.1 = last.1.max(t.offset_to),
                _ => marks.push((t.offset_from, t.offset_to)),
            }
        }
    }
    let (from, to) = around(text, marks.first().map_or(0, |m| m.0), window);
    let mut parts = Vec::new();
    // Where the text goes on beyond the piece shown, an ellipsis says so.
    if from > 0 {
        parts.push(("…".to_string(), false));
    }
    let mut at = from;
    for (s, e) in marks {
        let (s, e) = (s.max(from), e.min(to));
        if s >= e {
            continue;
        }
        if s > at {
            parts.push((text[at..s].to_string(), false));
        }
        parts.push((text[s..e].to_string(), true));
        at = e;
    }
    if at < to {
        parts.push((text[at..to].to_string(), false));
    }
    if to < text.len() {
        parts.push(("…".to_string(), false));
    }
    parts
}

/// A byte range of about `window` characters holding `focus`, starting a
/// little before it: the whole text when it is that short.
fn around(text: &str, focus: usize, window: usize) -> (usize, usize) {
    let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    if starts.len() <= window {
        return (0, text.len());
    }
    let at = starts.partition_point(|i| *i < focus);
    let first = at
        .saturating_sub(window / 4)
        .min(starts.len().saturating_sub(window));
    let last = (first + window).min(starts.len());
    let from = starts.get(first).copied().unwrap_or(text.len());
    let to = starts.get(last).copied().unwrap_or(text.len());
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_terms(text: &str) -> Vec<String> {
        terms(&mut analyzer(RAW), text)
    }

    #[test]
    fn cjk_runs_become_pairs_and_words_stay_whole() {
        assert_eq!(raw_terms("今天开会吗？"), ["今天", "天开", "开会", "会吗"]);
        assert_eq!(raw_terms("会"), ["会"]);
        let indexed = terms(&mut index_analyzer(RAW), "今天开会吗？");
        assert_eq!(indexed, ["今天", "天开", "开会", "会吗", "吗"]);
        assert_eq!(
            raw_terms("Meetings moved 到明天, Café!"),
            ["meetings", "moved", "到明", "明天", "cafe"]
        );
        assert_eq!(
            terms(&mut analyzer(STEMMED), "Meetings moved"),
            ["meet", "move"]
        );
        let long = "x".repeat(200);
        assert_eq!(raw_terms(&long)[0].len(), WORD_BYTES_MAX);
    }

    #[test]
    fn snippets_mark_matches_around_the_first() {
        let parts = snippet("今天开会吗？", &["开会".into()], &[], 40);
        assert_eq!(
            parts,
            [
                ("今天".into(), false),
                ("开会".into(), true),
                ("吗？".into(), false)
            ]
        );
        let parts = snippet("The meetings moved", &["meet".into()], &["mov".into()], 40);
        assert_eq!(
            parts,
            [
                ("The ".into(), false),
                ("meetings".into(), true),
                (" ".into(), false),
                ("moved".into(), true)
            ]
        );
        let long = format!("{} needle {}", "a ".repeat(200), "b ".repeat(200));
        let parts = snippet(&long, &["needl".into()], &[], 40);
        let shown: String = parts.iter().map(|p| p.0.as_str()).collect();
        assert!(
            shown.chars().count() <= 42 && shown.contains("needle"),
            "{shown}"
        );
        assert!(shown.starts_with('…') && shown.ends_with('…'), "{shown}");
        // A short text is shown whole.
        let parts = snippet(
            "giraffe saxophone updated yakplan2",
            &[],
            &["yakplan".into()],
            40,
        );
        assert_eq!(parts[0], ("giraffe saxophone updated ".into(), false));
    }

    /// A CJK run as the engine's default tokenizer leaves it (one token),
    /// or cut into single characters: the alternatives measured.
    fn cut(text: &str, how: &str) -> Vec<String> {
        let mut stemmed = analyzer(STEMMED);
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let cjk = rest.starts_with(is_cjk);
            let end = rest.find(|c: char| is_cjk(c) != cjk).unwrap_or(rest.len());
            let (piece, tail) = rest.split_at(end);
            match (cjk, how) {
                (true, "run") => out.push(piece.to_string()),
                (true, _) => out.extend(piece.chars().map(String::from)),
                (false, _) => out.extend(terms(&mut stemmed, piece)),
            }
            rest = tail;
        }
        out
    }

    fn cut_by(text: &str, how: &str) -> Vec<String> {
        match how {
            "pairs" => terms(&mut analyzer(STEMMED), text),
            other => cut(text, other),
        }
    }

    /// Whether every word of the query is found as a phrase of its terms.
    fn matches(doc: &str, query: &str, how: &str) -> bool {
        let doc = cut_by(doc, how);
        query.split_whitespace().all(|part| {
            let q = cut_by(part, how);
            !q.is_empty() && doc.windows(q.len()).any(|w| w == q.as_slice())
        })
    }

    /// Recall and precision, over a small mixed corpus judged by hand, of
    /// the three ways to cut Chinese: a run as one token (the engine's
    /// default), single characters, and pairs (ours). Pairs and single
    /// characters find the same (any two or more characters as typed);
    /// pairs keep far fewer, more selective postings and phrase queries
    /// over them. A dictionary segmenter (jieba) was not linked (its
    /// dictionary alone is 5 MB in the build): it would drop the false
    /// hit below (`公开会议` for `开会`) and also miss what it segments
    /// otherwise than the user typed.
    #[test]
    fn recall_on_a_small_mixed_corpus() {
        let corpus = [
            "今天开会吗？",
            "明天下午三点开会，记得带报告",
            "会议室已经订好了",
            "我们召开了一次全体会议",
            "开会的时候别玩手机",
            "Meetings moved to Friday",
            "The meeting is at 3pm",
            "项目预算需要重新讨论",
            "预算已经批了",
            "下周出差去上海",
            "上海的客户明天来访",
            "客户反馈很好",
            "明天见",
            "我明天不在，请假一天",
            "budget review 预算评审 on Monday",
            "Let's grab lunch 一起吃午饭",
            "午饭吃什么？",
            "会开完了吗",
            "他在开车",
            "公开会议记录",
        ];
        let judged: [(&str, &[usize]); 10] = [
            ("开会", &[0, 1, 4]),
            ("会议", &[2, 3, 19]),
            ("预算", &[7, 8, 14]),
            ("明天", &[1, 10, 12, 13]),
            ("上海", &[9, 10]),
            ("客户", &[10, 11]),
            ("午饭", &[15, 16]),
            ("meeting", &[5, 6]),
            ("budget 预算", &[14]),
            ("预算评审", &[14]),
        ];
        let mut figures = Vec::new();
        for how in ["run", "chars", "pairs"] {
            let (mut found, mut relevant, mut returned) = (0, 0, 0);
            for (q, want) in judged {
                let hits: Vec<usize> = (0..corpus.len())
                    .filter(|i| matches(corpus[*i], q, how))
                    .collect();
                relevant += want.len();
                returned += hits.len();
                found += hits.iter().filter(|h| want.contains(h)).count();
            }
            let recall = found as f64 / relevant as f64;
            let precision = found as f64 / returned.max(1) as f64;
            println!("{how}: recall {recall:.2}, precision {precision:.2}");
            figures.push((how, recall, precision));
        }
        let (run, chars, pairs) = (figures[0], figures[1], figures[2]);
        assert!(run.1 < 0.5, "{run:?}");
        assert_eq!(pairs.1, 1.0, "{pairs:?}");
        assert_eq!((pairs.1, pairs.2), (chars.1, chars.2));
        assert!(pairs.2 > 0.9, "{pairs:?}");
    }
}
