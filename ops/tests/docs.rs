//! The documents stay true where they name code: every file, constant and
//! item ARCHITECTURE.md names in backticks exists, its invariants are
//! numbered as it says, and the protocol names every token algorithm the
//! gateway takes. Plain reads of the tree: no servers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every file of the tree the documents may name (sources, protos,
/// scripts, docs, configs), as paths from the root.
fn files() -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.')
                || ["target", "node_modules", "dist", "data"].contains(&name.as_str())
            {
                continue;
            }
            if path.is_dir() {
                dirs.push(path.clone());
            }
            let rel = path
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push(rel);
        }
    }
    out
}

/// The Rust sources, concatenated (for item lookups).
fn sources(files: &[String]) -> String {
    files
        .iter()
        .filter(|f| f.ends_with(".rs") || f.ends_with(".proto"))
        .map(|f| std::fs::read_to_string(root().join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The backticked spans of a document.
fn spans(doc: &str) -> Vec<String> {
    doc.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(' '))
        .collect()
}

fn is_path(s: &str) -> bool {
    let ext = [
        ".rs", ".md", ".proto", ".yaml", ".json", ".sh", ".env", ".conf", ".ts",
    ];
    let pathy = s.contains('/') || ext.iter().any(|e| s.ends_with(e));
    let pattern = s.contains(['<', '*', '{', '|', '=']);
    let not_a_file = ["im.", "$", "/", "http", "_INBOX", "@"]
        .iter()
        .any(|p| s.starts_with(p));
    pathy && !pattern && !not_a_file
}

/// Made by a build or the setup, never committed: not checked.
fn generated(path: &str) -> bool {
    [".tools", "target/", "dist", "src/gen"]
        .iter()
        .any(|g| path.contains(g))
}

/// Whether a name appears as a whole word in the sources or the protos (an
/// environment variable, a stream's name, a proto enum value).
fn mentioned(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

/// Whether a path the document names is a file or folder of the tree: as
/// given from the root, or as the tail of one (a crate-relative path).
fn path_exists(files: &[String], named: &str) -> bool {
    let named = named.trim_end_matches('/');
    let (named, _) = named.split_once(" ").unwrap_or((named, ""));
    files
        .iter()
        .any(|f| f == named || f.ends_with(&format!("/{named}")))
}

/// Whether an item of this name is defined in the sources.
fn item_defined(src: &str, name: &str) -> bool {
    [
        "fn ", "struct ", "enum ", "trait ", "const ", "static ", "mod ", "type ", "macro_rules! ",
    ]
    .iter()
    .any(|kw| {
        src.match_indices(&format!("{kw}{name}"))
            .any(|(i, m)| !src[i + m.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))
    })
        // An enum variant or a field of `Limits` (the `limits!` macro).
        || src.contains(&format!("    {name},"))
        || src.contains(&format!("    {name} {{"))
        || src.contains(&format!("    {name}("))
        || src.contains(&format!("    {name}: "))
}

#[test]
fn architecture_names_only_what_exists() {
    let files = files();
    let src = sources(&files);
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut missing = BTreeSet::new();
    for span in spans(&doc) {
        let span = span.trim_end_matches([',', ':', ';']).to_string();
        if is_path(&span) {
            let path = span.split_once(':').map_or(span.as_str(), |(p, _)| p);
            if !generated(path) && !path_exists(&files, path) {
                missing.insert(format!("file {span}"));
            }
            continue;
        }
        let constant = span
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && span.contains('_')
            && !span.ends_with('_');
        let path_item = (span.contains("::") || span.ends_with("()")) && !span.contains('*');
        if constant && !item_defined(&src, &span) && !mentioned(&src, &span) {
            missing.insert(format!("constant {span}"));
        }
        if path_item {
            let last = span
                .trim_end_matches("()")
                .split('(')
                .next()
                .unwrap()
                .rsplit("::")
                .next()
                .unwrap()
                .trim_matches(|c: char| !c.is_alphanumeric() && c != '_');
            let last = last.split(['{', '(']).next().unwrap();
            if !last.is_empty() && !item_defined(&src, last) {
                missing.insert(format!("item {span}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what is not in the tree: {missing:#?}"
    );
}

#[test]
fn the_invariants_are_numbered_as_the_document_says() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let defined: Vec<u32> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("- **I"))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    let n = defined.len() as u32;
    assert_eq!(defined, (1..=n).collect::<Vec<_>>(), "numbered in order");
    assert!(
        doc.contains(&format!("I1…I{n}")),
        "the document says how far they go (I1…I{n})"
    );
}

#[test]
fn the_protocol_names_every_token_algorithm_the_gateway_takes() {
    let doc = std::fs::read_to_string(root().join("docs/protocol.md")).unwrap();
    for alg in im_gateway::auth::ALGORITHMS {
        assert!(doc.contains(alg), "docs/protocol.md does not name {alg}");
    }
}
